#!/usr/bin/env python3
"""Live log-ban latency: a line appended to a followed log → the address in the nftables set.

usage: watch_latency.py [--lines 40] [--gap 0.25] [--runs 3]

A real `opsagent run` follows LOG with a watch (the stock sshd filter, threshold 1, block_ip
1h) and blocks through nftables inside a network namespace this script creates (never the
host's rules). `nft monitor` in that namespace timestamps every element the agent adds. For
each of LINES failed-login lines, each from its own address, written GAP seconds apart, the
latency is the time from the write to the monitor's event for that address. RUNS fresh
agents; prints RESULT lines with the median, p90 and max over all lines (target: median
≤ 50 ms). Environment: OPSAGENT_VENV as in s1_converge_files.py.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from netns import isolate_network  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)


def opsagent_python() -> str:
    venv = os.environ.get("OPSAGENT_VENV") or os.path.join(REPO, ".venv")
    return os.path.join(venv, "bin", "python")


class Monitor:
    """`nft monitor` in the namespace: when each address first appeared in an element."""

    def __init__(self, ns: str) -> None:
        self.seen: dict[str, float] = {}
        self.proc = subprocess.Popen(["ip", "netns", "exec", ns, "nft", "monitor", "elements"],
                                     stdout=subprocess.PIPE, text=True, bufsize=1)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            now = time.monotonic()
            if line.startswith("add element"):
                for word in line.replace("{", " ").replace("}", " ").split():
                    if word.count(".") == 3 and word[0].isdigit():
                        self.seen.setdefault(word, now)

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


def _read(path: str) -> str:
    with open(path) as fh:
        return fh.read()


def one_run(work: str, ns: str, lines: int, gap: float, run: int) -> list[float]:
    log = os.path.join(work, f"auth-{run}.log")
    with open(log, "w"):
        pass
    pb = os.path.join(work, "pb")
    os.makedirs(pb, exist_ok=True)
    with open(os.path.join(pb, "sec.yaml"), "w") as fh:
        fh.write("name: sec\nwatches:\n  - name: ssh\n    log: " + json.dumps(log) +
                 "\n    pattern: {fail2ban_filter: /etc/fail2ban/filter.d/sshd.conf}\n"
                 "    key: ip\n    threshold: 1\n    within: 1m\n"
                 "    budget: {firings: 1000, per: 1m}\n"
                 "    actions: [{block_ip: {ip: '{{ ip }}', duration: 1h}}]\n")
    cfg = os.path.join(work, "agent.yaml")
    with open(cfg, "w") as fh:
        fh.write(f"host: bench\nplaybooks: [pb]\nstate_dir: state-{run}\n"
                 f"reconcile_interval: 60s\nlog_level: warning\n"
                 f"firewall: {{nft: {json.dumps(['ip', 'netns', 'exec', ns, 'nft'])}}}\n")
    monitor = Monitor(ns)
    with open(os.path.join(work, f"agent-{run}.log"), "w") as agent_log:
        agent = subprocess.Popen([opsagent_python(), "-m", "agent.cli", "run", "--config",
                                  cfg], cwd=REPO, stdout=subprocess.DEVNULL, stderr=agent_log)
    try:
        status = os.path.join(work, f"state-{run}", "status.json")
        deadline = time.monotonic() + 30
        while not (os.path.exists(status) and "ssh" in _read(status)):
            if time.monotonic() > deadline or agent.poll() is not None:
                raise SystemExit("the agent did not start watching (see agent log)")
            time.sleep(0.1)
        time.sleep(1.0)
        out: list[float] = []
        with open(log, "a") as fh:
            for i in range(lines):
                ip = f"198.18.{run}.{i + 1}"
                stamp = time.strftime("%b %d %H:%M:%S")
                text = (f"{stamp} bench sshd[{1000 + i}]: Failed password for invalid user "
                        f"u{i} from {ip} port 4{i:04d} ssh2\n")
                t0 = time.monotonic()
                fh.write(text)
                fh.flush()
                while ip not in monitor.seen:
                    if time.monotonic() - t0 > 10:
                        raise SystemExit(f"{ip} was not blocked within 10 s")
                    time.sleep(0.001)
                out.append(monitor.seen[ip] - t0)
                time.sleep(gap)
        return out
    finally:
        agent.terminate()
        agent.wait(20)
        monitor.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lines", type=int, default=40)
    ap.add_argument("--gap", type=float, default=0.25)
    ap.add_argument("--runs", type=int, default=3)
    a = ap.parse_args()
    isolate_network(__file__)
    if shutil.which("nft") is None:
        sys.exit("nft (nftables) is required")
    ns = f"oa-bench-{secrets.token_hex(3)}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        with tempfile.TemporaryDirectory(prefix="watch-latency-") as work:
            lat: list[float] = []
            for run in range(a.runs):
                lat += one_run(work, ns, a.lines, a.gap, run)
                subprocess.run(["ip", "netns", "exec", ns, "nft", "delete", "table", "inet",
                                "opsagent"], capture_output=True)
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
    ms = sorted(x * 1000 for x in lat)
    tag = "scenario=watch-live-block tool=opsagent"
    p90 = ms[int(0.9 * (len(ms) - 1))]
    print(f"RESULT {tag} metric=latency_median value={statistics.median(ms):.1f} unit=ms "
          f"p90={p90:.1f} max={ms[-1]:.1f} min={ms[0]:.1f} lines={len(ms)} runs={a.runs}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
