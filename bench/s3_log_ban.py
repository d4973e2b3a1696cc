#!/usr/bin/env python3
"""S3 log-ban throughput with opsagent beside fail2ban-regex, in one sitting.

usage: s3_log_ban.py [--lines 1000000] [--runs 5] [--log /tmp/bench/auth.log]
                     [--filter /etc/fail2ban/filter.d/sshd.conf] [--tools opsagent,fail2ban]

Same input as the peer kit's S3 (../shared/bench/peers/s3_log_ban.py, imported by path): the
deterministic 1,000,000-line auth.log of gen_authlog.py (seed 20261122) and the stock sshd
filter. fail2ban-regex is measured by the peer script itself; opsagent runs
`opsagent watch test LOG PLAYBOOK --json` on a playbook whose one watch loads the same filter
unchanged (key ip, threshold 5 within 10m), timed as a whole process by the same timer
(wholeproc.py: wall, CPU, peak RSS of the largest process), RUNS counted runs after one
warm-up. Every run's JSON is checked: LINES lines, the generator's failure count matched, and
the 5,000 attacking addresses found. Prints RESULT lines and the ratios of medians.
Environment: PEERS_DIR, OPSAGENT_VENV, BENCH_ROOT, BENCH_TIMER as in s1_converge_files.py.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from netns import isolate_network  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
PEERS_DIR = os.path.abspath(os.environ.get("PEERS_DIR")
                            or os.path.join(REPO, "..", "shared", "bench", "peers"))
if not os.path.isfile(os.path.join(PEERS_DIR, "s3_log_ban.py")):
    sys.exit(f"peer kit not found in {PEERS_DIR} (set PEERS_DIR)")
_spec = importlib.util.spec_from_file_location("peer_s3_log_ban",
                                               os.path.join(PEERS_DIR, "s3_log_ban.py"))
assert _spec and _spec.loader
peer = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = peer
_spec.loader.exec_module(peer)

SCENARIO = "S3-log-ban"
RESULT = re.compile(r"^RESULT scenario=S3-log-ban tool=(\S+) metric=(\S+) value=([\d.]+)", re.M)


def opsagent_bin() -> str:
    venv = os.environ.get("OPSAGENT_VENV") or os.path.join(REPO, ".venv")
    return os.path.join(venv, "bin", "opsagent")


def run_fail2ban(a: argparse.Namespace) -> dict[str, float]:
    out = subprocess.run([sys.executable, os.path.join(PEERS_DIR, "s3_log_ban.py"),
                          "--lines", str(a.lines), "--runs", str(a.runs), "--log", a.log,
                          "--filter", a.filter], stdout=subprocess.PIPE, text=True,
                         check=True).stdout
    sys.stdout.write(out)
    return {m.group(2): float(m.group(3)) for m in RESULT.finditer(out)
            if m.group(1) == "fail2ban-regex"}


def run_opsagent(a: argparse.Namespace, n_fail: int, work: str) -> dict[str, float]:
    pb = os.path.join(work, "s3.yaml")
    with open(pb, "w") as fh:
        fh.write("name: s3-log-ban\nwatches:\n  - name: sshd\n    log: /var/log/auth.log\n"
                 f"    pattern: {{fail2ban_filter: {json.dumps(a.filter)}}}\n"
                 "    key: ip\n    threshold: 5\n    within: 10m\n")
    results = os.path.join(os.environ.get("BENCH_ROOT", "/tmp/bench"), "results")
    os.makedirs(results, exist_ok=True)
    out_log = os.path.join(results, "s3-opsagent.runs.log")
    if os.path.exists(out_log):
        os.remove(out_log)
    cmd = ["sh", "-c", f"exec {shlex.quote(opsagent_bin())} watch test {shlex.quote(a.log)} "
                       f"{shlex.quote(pb)} --json >>{shlex.quote(out_log)} 2>&1"]
    argv = peer.timer_argv() + ["-n", str(a.runs), "--warmup", "1", "--timeout", "3600",
                                "--"] + cmd
    p = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    with open(os.path.join(results, "s3-opsagent.txt"), "w") as fh:
        fh.write(p.stdout)
    rows = {m.group(1): tuple(float(x) for x in m.group(2, 3, 4))
            for m in peer.ROW.finditer(p.stdout)}
    if p.returncode != 0 or "wall s" not in rows:
        sys.stderr.write(p.stdout)
        raise SystemExit(f"timer failed rc={p.returncode}")
    with open(out_log) as fh:
        docs = [json.loads(chunk) for chunk in _json_docs(fh.read())]
    if len(docs) != a.runs + 1:
        raise SystemExit(f"S3 verify: {len(docs)} opsagent outputs, want {a.runs + 1}")
    for doc in docs:
        w = doc[0]
        if (w["lines"], w["matched"], w["keys"]) != (a.lines, n_fail, min(5000, n_fail)):
            raise SystemExit(f"S3 verify: opsagent saw lines={w['lines']} matched="
                             f"{w['matched']} keys={w['keys']}; want {a.lines}, {n_fail}, 5000")
    tag = f"scenario={SCENARIO} tool=opsagent"
    figures: dict[str, float] = {}
    for row, metric, unit in (("wall s", "wall_median", "s"), ("cpu s", "cpu_median", "s"),
                              ("peak MiB", "peak_rss_median", "MiB")):
        mn, med, mx = rows[row]
        figures[metric] = med
        print(f"RESULT {tag} metric={metric} value={med} unit={unit} min={mn} max={mx} "
              f"runs={a.runs}")
    mn, med, mx = rows["wall s"]
    figures["lines_per_s"] = a.lines / med
    print(f"RESULT {tag} metric=lines_per_s value={a.lines / med:.0f} unit=lines/s "
          f"min={a.lines / mx:.0f} max={a.lines / mn:.0f} runs={a.runs}")
    print(f"RESULT {tag} metric=matched value={docs[-1][0]['matched']} unit=lines "
          f"total={a.lines} prefilter={docs[-1][0]['prefilter']}")
    return figures


def _json_docs(text: str) -> list[str]:
    """The --json outputs appended one after another (each a top-level list)."""
    out, depth, start = [], 0, None
    for i, ch in enumerate(text):
        if ch == "[" and depth == 0:
            start = i
        if ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
            if depth == 0 and start is not None:
                out.append(text[start:i + 1])
                start = None
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lines", type=int, default=1_000_000)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--log", default="/tmp/bench/auth.log")
    ap.add_argument("--filter", default="/etc/fail2ban/filter.d/sshd.conf")
    ap.add_argument("--tools", default="opsagent,fail2ban")
    a = ap.parse_args()
    isolate_network(__file__)
    digest, n_fail, how = peer.ensure_log(a.log, a.lines)
    print(f"# log {a.log} {how}: sha256={digest} failures={n_fail}", file=sys.stderr,
          flush=True)
    tools = a.tools.split(",")
    f2b = run_fail2ban(a) if "fail2ban" in tools else {}
    with tempfile.TemporaryDirectory(prefix="s3-opsagent-") as work:
        ops = run_opsagent(a, n_fail, work) if "opsagent" in tools else {}
    if f2b and ops:
        print(f"RESULT scenario={SCENARIO} tool=opsagent metric=lines_per_s_ratio_vs_fail2ban "
              f"value={ops['lines_per_s'] / f2b['lines_per_s']:.1f}")
        print(f"RESULT scenario={SCENARIO} tool=opsagent metric=cpu_ratio_vs_fail2ban "
              f"value={ops['cpu_median'] / f2b['cpu_median']:.3f}")
        print(f"RESULT scenario={SCENARIO} tool=opsagent metric=peak_rss_ratio_vs_fail2ban "
              f"value={ops['peak_rss_median'] / f2b['peak_rss_median']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
