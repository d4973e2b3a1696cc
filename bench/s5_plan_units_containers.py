#!/usr/bin/env python3
"""S5 plan-units-containers: a no-drift `opsagent plan` of 50 systemd units and 50 containers.

usage: s5_plan_units_containers.py [--units 50] [--containers 50] [--runs 5]

A systemd test host (tests/harness/testhost.py: real systemd as PID 1) gets 50 units
(`bench-uNN.service`, /bin/sleep) and the machine's Docker socket; one `opsagent apply`
converges the units (enabled, running) and 50 busybox containers (`bench-cNN`). Then the
no-drift plan is timed inside the host as a whole process, start-up included, with the peer
kit's wholeproc.py (RUNS runs after 1 warm-up); every timed run must exit 0 (no drift) and
print `ok=100 changed=0 failed=0`. Target (issue): median wall under 1 s.
Prints `RESULT scenario=S5-plan-units-containers tool=opsagent metric=... value=...` lines.
"""

from __future__ import annotations

import argparse
import os
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)
PEERS_DIR = os.path.abspath(os.environ.get("PEERS_DIR")
                            or os.path.join(REPO, "..", "shared", "bench", "peers"))
ROW = re.compile(r"^\s*A\s+(user s|sys s|cpu s|wall s|peak MiB)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)",
                 re.M)
SOCK = "/opsagent-bench-docker.sock"


def playbook(units: int, containers: int, image: str) -> str:
    lines = ["name: s5-plan-units-containers", "services:"]
    lines += [f"  - {{name: bench-u{i:02d}, state: running, enabled: true}}" for i in range(units)]
    lines.append("containers:")
    lines += [f"  - {{name: bench-c{i:02d}, image: '{image}', command: [sleep, '1000000'], "
              "state: running}" for i in range(containers)]
    return "\n".join(lines) + "\n"


def unit(i: int) -> str:
    return (f"[Unit]\nDescription=bench unit {i}\n[Service]\nExecStart=/bin/sleep infinity\n"
            "[Install]\nWantedBy=multi-user.target\n")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--units", type=int, default=50)
    ap.add_argument("--containers", type=int, default=50)
    ap.add_argument("--runs", type=int, default=5)
    a = ap.parse_args()
    from tests.harness.docker import ensure_busybox_image, ensure_docker
    from tests.harness.testhost import TestHost

    client = ensure_docker()
    image = ensure_busybox_image(client)
    host = TestHost(client).start(volumes={"/var/run/docker.sock": {"bind": SOCK, "mode": "rw"}})
    env = {"DOCKER_HOST": f"unix://{SOCK}", "OPSAGENT_STATE_DIR": "/var/lib/opsagent-bench"}
    try:
        for i in range(a.units):
            host.write_file(f"/etc/systemd/system/bench-u{i:02d}.service", unit(i))
        host.write_file("/bench/pb.yaml", playbook(a.units, a.containers, image))
        with open(os.path.join(PEERS_DIR, "wholeproc.py")) as fh:
            host.write_file("/bench/wholeproc.py", fh.read())
        opsagent = os.path.join(REPO, ".venv", "bin", "opsagent")
        host.exec(["systemctl", "daemon-reload"])
        first = host.exec([opsagent, "apply", "/bench/pb.yaml"], env=env, timeout=600)
        if first.exit_code != 0:
            print(first.output[-4000:], file=sys.stderr)
            raise SystemExit(f"S5 setup: apply exited {first.exit_code}")
        n = a.units + a.containers
        check = host.exec([opsagent, "plan", "/bench/pb.yaml"], env=env)
        if check.exit_code != 0 or f"ok={n} changed=0 failed=0" not in check.output:
            raise SystemExit(f"S5 verify: plan after apply is not clean:\n{check.output[-3000:]}")
        log = "/bench/plan.log"
        timed = host.exec(["python3", "/bench/wholeproc.py", "-n", str(a.runs), "--warmup", "1",
                           "--timeout", "600", "--", "sh", "-c",
                           f"exec {opsagent} plan /bench/pb.yaml >>{log} 2>&1"],
                          env=env, timeout=900)
        rows = {m[1]: (float(m[2]), float(m[3]), float(m[4])) for m in ROW.finditer(timed.output)}
        if timed.exit_code != 0 or "wall s" not in rows or "exit codes: [" + \
                ", ".join(["0"] * a.runs) + "]" not in timed.output:
            raise SystemExit(f"S5 timer failed:\n{timed.output}")
        out = host.exec(["cat", log]).output
        recaps = re.findall(r"ok=(\d+) changed=(\d+) failed=(\d+)", out)
        if len(recaps) != a.runs + 1 or any(r != (str(n), "0", "0") for r in recaps):
            raise SystemExit(f"S5 verify: recaps {recaps}")
        for key, metric, unit_ in (("wall s", "wall", "s"), ("cpu s", "cpu", "s"),
                                   ("peak MiB", "peak_rss", "MiB")):
            mn, med, mx = rows[key]
            print(f"RESULT scenario=S5-plan-units-containers tool=opsagent units={a.units} "
                  f"containers={a.containers} metric={metric}_median value={med} unit={unit_} "
                  f"min={mn} max={mx} runs={a.runs} warmup=1", flush=True)
    finally:
        for c in client.containers.list(all=True, filters={"name": "bench-c"}):
            c.remove(force=True)
        host.remove()
    return 0


if __name__ == "__main__":
    sys.exit(main())
