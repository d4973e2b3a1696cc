#!/usr/bin/env python3
"""500 health checks every 10 s in one agent: CPU % and PSS, beside Monit doing the same.

usage: checks.py [--checks 500] [--interval 10] [--seconds 60] [--settle 20] [--runs 3]
                 [--peers monit|none]

The same checks for both tools, against local targets the bench itself serves (a threaded
HTTP server on 127.0.0.1, in this process, not counted):
  30 %  HTTP GET, expect 200            (monit: check host ... if failed port P protocol http)
  30 %  TCP connect                     (monit: check host ... if failed port P)
  20 %  disk used % of /                (monit: check filesystem ... if space usage > 95 %)
  10 %  process by command line         (monit: check process ... matching)
  10 %  memory % / load per core        (monit: check program? no: check system is one per
                                          monitrc, so these are disk checks for monit)
opsagent: `opsagent run` with one playbook of those checks (interval 10s), plus 20 thresholds
reading their metrics; monit: `set daemon 10`. Each tool is started, given --settle seconds,
then sampled every second for --seconds: Pss (smaps_rollup) of the process, and its CPU
(utime+stime, threads included; plus reaped children) across the window. The run is
repeated --runs times per tool; medians are printed, opsagent's over monit's.
Everything runs in a private network namespace with only loopback.
Environment: BENCH_ROOT (default /tmp/bench), OPSAGENT_VENV (default <repo>/.venv).
"""
import argparse
import http.server
import os
import shutil
import signal
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
VENV = os.environ.get("OPSAGENT_VENV") or os.path.join(REPO, ".venv")
CLK_TCK = os.sysconf("SC_CLK_TCK")
MARK = "opsagent-bench-target"




class Quiet(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"

    def do_GET(self):  # noqa: N802
        body = b'{"status": "healthy"}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *a):
        pass


def serve():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv.server_address[1]


def mix(n):
    """(kind, index) for n checks in the proportions of the docstring."""
    kinds = (["http"] * 3 + ["tcp"] * 3 + ["disk"] * 2 + ["process"] + ["system"])
    return [(kinds[i % 10], i) for i in range(n)]


def write_opsagent(work, n, interval, port):
    pb = os.path.join(work, "pb")
    os.makedirs(pb)
    lines = ["name: bench-checks", "checks:"]
    for kind, i in mix(n):
        name = f"c{i:03d}"
        if kind == "http":
            probe = f"http: {{url: 'http://127.0.0.1:{port}/health', timeout: 5s}}"
        elif kind == "tcp":
            probe = f"tcp: {{host: 127.0.0.1, port: {port}}}"
        elif kind == "disk":
            probe = "disk: {path: /, max_used_percent: 99}"
        elif kind == "process":
            probe = f"process: {{match: {{cmdline: {MARK}}}}}"
        else:
            probe = ("memory: {max_percent: 99}" if i % 20 < 10
                     else "load: {max_per_core: 50}")
        lines.append(f"  - {{name: {name}, interval: {interval}s, {probe}}}")
    probed = [m for m in mix(n) if m[0] in ("http", "tcp")][:20]
    lines.append("thresholds:" if probed else "")
    for j, (_kind, i) in enumerate(probed):
        lines.append(f"  - {{name: t{j:02d}, metric: check.c{i:03d}.latency_ms, above: 1000, "
                     "for: 1m}")
    with open(os.path.join(pb, "checks.yaml"), "w") as f:
        f.write("\n".join(lines) + "\n")
    cfg = os.path.join(work, "agent.yaml")
    with open(cfg, "w") as f:
        f.write(f"host: bench\nplaybooks: [{pb}]\nstate_dir: {work}/state\n"
                "reconcile_interval: 60s\nlog_level: warning\n"
                f"health_listen: 127.0.0.1:{port + 1 if port < 65000 else port - 1}\n")
    subprocess.run([os.path.join(VENV, "bin", "opsagent"), "validate", pb], check=True,
                   stdout=subprocess.DEVNULL)
    return [os.path.join(VENV, "bin", "opsagent"), "run", "--config", cfg]


def write_monit(work, n, interval, port):
    rc = os.path.join(work, "monitrc")
    with open(rc, "w") as fh:
        fh.write(f"set daemon {interval}\nset log {work}/monit.log\nset pidfile {work}/monit.pid\n"
                 f"set idfile {work}/monit.id\nset statefile {work}/monit.state\n")
        for kind, i in mix(n):
            name = f"c{i:03d}"
            if kind == "http":
                fh.write(f"check host {name} with address 127.0.0.1\n"
                         f"  if failed port {port} protocol http request \"/health\" "
                         "with timeout 5 seconds then alert\n")
            elif kind == "tcp":
                fh.write(f"check host {name} with address 127.0.0.1\n"
                         f"  if failed port {port} with timeout 5 seconds then alert\n")
            elif kind == "process":
                fh.write(f"check process {name} matching \"{MARK}\"\n"
                         "  if does not exist then alert\n")
            else:
                fh.write(f"check filesystem {name} with path /\n"
                         "  if space usage > 99% then alert\n")
    os.chmod(rc, 0o600)
    return [shutil.which("monit") or "monit", "-c", rc, "-I"]


def cpu_ticks(pid):
    with open(f"/proc/{pid}/stat") as fh:
        f = fh.read().rsplit(")", 1)[1].split()
    return int(f[11]) + int(f[12]) + int(f[13]) + int(f[14])


def pss_kib(pid):
    with open(f"/proc/{pid}/smaps_rollup") as fh:
        for line in fh:
            if line.startswith("Pss:"):
                return int(line.split()[1])
    return 0


def measure(argv, work, seconds, settle):
    with open(os.path.join(work, "tool.log"), "ab") as log:
        p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd="/")
    try:
        time.sleep(settle)
        if p.poll() is not None:
            raise SystemExit(f"{argv[0]} exited rc={p.returncode}; see {work}/tool.log")
        pss = []
        t0, c0 = time.monotonic(), cpu_ticks(p.pid)
        for _ in range(seconds):
            time.sleep(1)
            pss.append(pss_kib(p.pid))
        t1, c1 = time.monotonic(), cpu_ticks(p.pid)
        if p.poll() is not None:
            raise SystemExit(f"{argv[0]} died during the window; see {work}/tool.log")
    finally:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(20)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    return 100.0 * (c1 - c0) / CLK_TCK / (t1 - t0), statistics.median(pss) / 1024


def verify_opsagent(work, n):
    """Every check ran and is healthy: the figures are for real work."""
    import json

    with open(os.path.join(work, "state", "status.json")) as f:
        doc = json.load(f)
    checks = doc.get("checks") or {}
    bad = {k: v["message"] for k, v in checks.items() if v["status"] != "healthy"}
    oldest = min((v["at"] or 0 for v in checks.values()), default=0)
    age = doc["updated_at"] - oldest  # every check ran within its interval (+ a tick)
    if len(checks) != n or bad or age > 15:
        raise SystemExit(f"verify: {len(checks)}/{n} checks, {len(bad)} not healthy "
                         f"({list(bad.items())[:3]}), oldest result {age:.1f}s old")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checks", type=int, default=500)
    ap.add_argument("--interval", type=int, default=10)
    ap.add_argument("--seconds", type=int, default=60)
    ap.add_argument("--settle", type=int, default=20)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--peers", default="monit")
    args = ap.parse_args()
    isolate_network(__file__)
    port = serve()
    target = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(10**6)", MARK])
    root = os.environ.get("BENCH_ROOT", "/tmp/bench")
    os.makedirs(root, exist_ok=True)
    results = {}
    tools = ["opsagent"] + (["monit"] if args.peers == "monit" and shutil.which("monit") else [])
    try:
        for run in range(args.runs):
            for tool in tools:
                work = tempfile.mkdtemp(prefix=f"checks-{tool}-", dir=root)
                argv = (write_opsagent if tool == "opsagent" else write_monit)(
                    work, args.checks, args.interval, port)
                cpu, pss = measure(argv, work, args.seconds, args.settle)
                if tool == "opsagent":
                    verify_opsagent(work, args.checks)
                results.setdefault(tool, []).append((cpu, pss))
                print(f"# run {run} {tool}: cpu {cpu:.2f} % of a core, pss {pss:.1f} MiB",
                      file=sys.stderr, flush=True)
                shutil.rmtree(work, ignore_errors=True)
    finally:
        target.kill()
    med = {}
    for tool, rows in results.items():
        cpu = statistics.median(r[0] for r in rows)
        pss = statistics.median(r[1] for r in rows)
        med[tool] = (cpu, pss)
        tag = (f"scenario=checks-500 tool={tool} checks={args.checks} "
               f"interval_s={args.interval} window_s={args.seconds} runs={len(rows)}")
        print(f"RESULT {tag} metric=cpu_percent value={cpu:.3f} unit=% "
              f"min={min(r[0] for r in rows):.3f} max={max(r[0] for r in rows):.3f}")
        print(f"RESULT {tag} metric=pss_median value={pss:.2f} unit=MiB "
              f"min={min(r[1] for r in rows):.2f} max={max(r[1] for r in rows):.2f}")
    if "monit" in med:
        cpu_ratio = med["opsagent"][0] / max(med["monit"][0], 1e-9)
        print(f"RATIO scenario=checks-500 opsagent/monit cpu={cpu_ratio:.2f} "
              f"pss={med['opsagent'][1] / med['monit'][1]:.2f}")


if __name__ == "__main__":
    main()
