"""Load and check a playbook revision in a child process; the result comes back pickled.

Playbooks are operator input: YAML with anchors, Jinja templates, big files. Reading them
in a short-lived child bounds what a bad revision can do to the agent (its address space
is capped, a crash is a refused revision), and the agent itself never builds the
validators of the playbook models — which keeps the long-running process small.

    python -m agent.service.loadchild < pickle of {"paths": [...], "variables": {...},
                                                   "revision": "..."}
"""

from __future__ import annotations

import os
import pickle
import resource
import subprocess
import sys
from typing import Any

from agent.service.sources import Revision, RevisionRejected, load_tree_here

MEMORY_CAP = 2 * 2**30  # address space of the loader: far above any sane set of playbooks
TIMEOUT_S = 120.0


def load_tree_in_child(paths: list[str], variables: dict[str, Any], revision: str) -> Revision:
    request = pickle.dumps({"paths": [os.path.abspath(p) for p in paths],
                            "variables": variables, "revision": revision})
    try:
        p = subprocess.run([sys.executable, "-m", "agent.service.loadchild"],
                           input=request, capture_output=True, timeout=TIMEOUT_S,
                           cwd="/", check=False)
    except subprocess.TimeoutExpired:
        raise RevisionRejected(revision, f"loading took longer than {TIMEOUT_S:g}s") from None
    if p.returncode != 0 or not p.stdout:
        tail = p.stderr.decode(errors="replace").strip().splitlines()[-3:]
        raise RevisionRejected(revision, f"the playbook loader failed (exit {p.returncode}): "
                               + " / ".join(tail))
    result = pickle.loads(p.stdout)  # our own child's answer on a private pipe
    if isinstance(result, RevisionRejected):
        raise result
    assert isinstance(result, Revision)
    return result


def main() -> int:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_CAP, MEMORY_CAP))
    req = pickle.loads(sys.stdin.buffer.read())  # from the agent that started us
    try:
        result: Revision | RevisionRejected = load_tree_here(
            req["paths"], req["variables"], req["revision"])
    except RevisionRejected as e:
        result = e
    except MemoryError:
        result = RevisionRejected(req["revision"], "loading the playbooks ran out of memory "
                                  f"({MEMORY_CAP >> 20} MiB)")
    out = pickle.dumps(result, protocol=pickle.HIGHEST_PROTOCOL)
    sys.stdout.buffer.write(out)
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
