"""The ``run`` action: an argv whose arguments are templates filled when the rule fires.

Each argument is rendered on its own (sandboxed Jinja2) and must come out as one line of
printable text; the argv goes to ``execve`` as a list — never through a shell — so a value
such as ``1.2.3.4; rm -rf /`` stays one literal argument.
"""

from __future__ import annotations

import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from agent.errors import UsageError
from agent.playbook.templating import has_template, render

OUTPUT_CAP = 4096


@dataclass(frozen=True)
class RunOutcome:
    argv: list[str]
    returncode: int | None  # None: it timed out and was killed
    output: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0


def render_argv(argv: Sequence[str], variables: Mapping[str, Any]) -> list[str]:
    out: list[str] = []
    for i, arg in enumerate(argv):
        value = str(render(arg, variables)) if has_template(arg) else arg
        if any(c in value for c in "\0\n\r"):
            raise UsageError(f"argument {i} rendered to a value with a NUL or newline: "
                             f"{value[:60]!r}")
        out.append(value)
    return out


def run(argv: Sequence[str], variables: Mapping[str, Any], timeout: float) -> RunOutcome:
    cmd = render_argv(argv, variables)
    try:
        res = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as e:
        out = (e.output or b"")[-OUTPUT_CAP:].decode("utf-8", "replace")
        return RunOutcome(cmd, None, out)
    except OSError as e:
        return RunOutcome(cmd, 127, f"cannot run {cmd[0]}: {e.strerror or e}")
    return RunOutcome(cmd, res.returncode, res.stdout[-OUTPUT_CAP:].decode("utf-8", "replace"))
