#!/usr/bin/env python3
"""S2 restart latency and S4 idle footprint of `opsagent run`, beside Monit (and salt-minion).

usage: s2_s4_service.py [--parts latency,idle] [--peers monit,salt|none] [--kills 10]
                        [--idle-checks 50] [--idle-seconds 60] [--settle 15]

The scenarios, inputs and measuring code are the peer kit's (../shared/bench/peers/
s2_restart_latency.py and s4_idle_footprint.py, imported by path): the same dummy daemon
(`python3 -c 'import time; time.sleep(10**9)' s2-dummy-daemon NAME`), the same pidfile, the
same seeded kill schedule (1 s + a random fraction of one 1 s cycle, seed 20261122), the
same 10 ms poll for "the pidfile names a different, live dummy daemon", the same idle
sampling (VmRSS and Pss every second; utime+stime+cutime+cstime over the window), the same
network isolation (unshare --net, loopback only). The peers run first via their own
scripts, in this sitting; then opsagent:

  latency  one `processes:` resource (match by pidfile, the agent writes the pidfile,
           restart budget {max: 100, within: 1m, backoff: 0s} — Monit has no budget, so the
           default 3-in-10m with 5 s backoff would only measure the budget), agent started
           as `opsagent run --config`, 10 kill -9s;
  idle     50 such resources, the default reconcile_interval (60 s): the window holds one
           full reconcile of all 50, as Monit's holds 60 polls. The agent's own process is
           sampled (the dummies are its children but are not part of it).

Prints the peers' RESULT lines, then opsagent's in the same form, then ratio lines.
Environment: BENCH_ROOT (default /tmp/bench), PEERS_DIR, OPSAGENT_VENV (default <repo>/.venv).
"""
import argparse
import importlib.util
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from netns import isolate_network  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
PEERS_DIR = os.path.abspath(os.environ.get("PEERS_DIR")
                            or os.path.join(REPO, "..", "shared", "bench", "peers"))
_spec = importlib.util.spec_from_file_location(
    "peer_s2", os.path.join(PEERS_DIR, "s2_restart_latency.py"))
peer = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = peer
_spec.loader.exec_module(peer)

VENV = os.environ.get("OPSAGENT_VENV") or os.path.join(REPO, ".venv")
SEED = 20261122




def write_agent(work, n):
    pb = os.path.join(work, "pb")
    os.makedirs(pb)
    lines = ["name: s2-dummies", "processes:"]
    for i in range(n):
        name = f"dummy{i:02d}"
        pid = os.path.join(work, name + ".pid")
        lines += [f"  - name: {name}",
                  f"    match: {{pidfile: {pid}}}",
                  "    start: [python3, -c, 'import time; time.sleep(10**9)', "
                  f"{peer.MARK}, {name}]",
                  f"    pidfile: {pid}",
                  "    cwd: /",
                  "    restart: {max: 100, within: 1m, backoff: 0s}"]
    with open(os.path.join(pb, "dummies.yaml"), "w") as f:
        f.write("\n".join(lines) + "\n")
    cfg = os.path.join(work, "agent.yaml")
    with open(cfg, "w") as f:
        f.write(f"host: bench\nplaybooks: [{pb}]\nstate_dir: {work}/state\n"
                "reconcile_interval: 60s\nlog_level: warning\n")
    return cfg


def start_agent(work, n):
    cfg = write_agent(work, n)
    with open(os.path.join(work, "agent.log"), "w") as log:
        p = subprocess.Popen([os.path.join(VENV, "bin", "opsagent"), "run", "--config", cfg],
                             stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                             cwd="/")
    names = [f"dummy{i:02d}" for i in range(n)]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if p.poll() is not None:
            raise SystemExit(f"opsagent exited rc={p.returncode}; see {work}/agent.log")
        if all(peer.is_dummy_alive(peer.read_pid(os.path.join(work, x + ".pid"))) for x in names):
            return p
        time.sleep(0.05)
    raise SystemExit(f"opsagent did not start all {n} daemons in 60 s")


def stop_agent(p, work, n):
    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(20)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    for i in range(n):  # the agent leaves supervised programs running when it stops
        pid = peer.read_pid(os.path.join(work, f"dummy{i:02d}.pid"))
        if peer.is_dummy_alive(pid):
            os.kill(pid, signal.SIGKILL)
    time.sleep(0.1)
    peer.reap_orphans(set())


def part_latency(work, kills):
    p = start_agent(work, 1)
    pidfile = os.path.join(work, "dummy00.pid")
    rng = random.Random(SEED)
    lats = []
    try:
        for k in range(kills):
            time.sleep(1.0 + rng.random() * 1)
            old = peer.read_pid(pidfile)
            if not peer.is_dummy_alive(old):
                raise SystemExit(f"kill {k}: dummy daemon not alive before kill")
            os.kill(old, signal.SIGKILL)
            t0 = time.perf_counter()
            while True:
                time.sleep(0.01)
                peer.reap_orphans({p.pid})
                new = peer.read_pid(pidfile)
                if new != old and peer.is_dummy_alive(new):
                    t1 = time.perf_counter()
                    break
                if time.perf_counter() > t0 + 60:
                    raise SystemExit(f"kill {k}: no restart within 60 s")
            lats.append(t1 - t0)
            print(f"# kill {k}: pid {old} -> {new} in {t1 - t0:.3f} s", file=sys.stderr, flush=True)
    finally:
        stop_agent(p, work, 1)
    print(f"RESULT scenario=S2-restart-latency tool=opsagent metric=restart_latency_median "
          f"value={statistics.median(lats):.3f} unit=s min={min(lats):.3f} max={max(lats):.3f} "
          f"n={len(lats)} poll_ms=10 events=pidfd", flush=True)
    print("RESULT scenario=S2-restart-latency tool=opsagent metric=restart_latency_all value="
          + ",".join(f"{x:.3f}" for x in lats) + " unit=s", flush=True)
    return statistics.median(lats)


def part_idle(work, n, seconds, settle):
    p = start_agent(work, n)
    try:
        time.sleep(settle)
        rss, pss = [], []
        t0, c0 = time.monotonic(), peer.cpu_ticks(p.pid)
        for _ in range(seconds):
            time.sleep(1)
            r, _hwm, ps = peer.mem_kib(p.pid)
            rss.append(r)
            pss.append(ps)
        t1, c1 = time.monotonic(), peer.cpu_ticks(p.pid)
        _r, hwm, _p = peer.mem_kib(p.pid)
        alive = sum(peer.is_dummy_alive(peer.read_pid(os.path.join(work, f"dummy{i:02d}.pid")))
                    for i in range(n))
        if p.poll() is not None or alive != n:
            raise SystemExit(f"idle: agent alive={p.poll() is None}, daemons alive={alive}/{n}")
    finally:
        stop_agent(p, work, n)
    cpu_s = (c1 - c0) / peer.CLK_TCK
    tag = (f"scenario=S4-idle-footprint tool=opsagent checks={n} reconcile_interval_s=60 "
           f"window_s={t1 - t0:.1f}")
    print(f"RESULT {tag} metric=idle_rss_median value={statistics.median(rss) / 1024:.2f} "
          f"unit=MiB min={min(rss) / 1024:.2f} max={max(rss) / 1024:.2f} "
          f"vmhwm={hwm / 1024:.2f}", flush=True)
    print(f"RESULT {tag} metric=idle_pss_median value={statistics.median(pss) / 1024:.2f} "
          f"unit=MiB min={min(pss) / 1024:.2f} max={max(pss) / 1024:.2f}", flush=True)
    print(f"RESULT {tag} metric=idle_cpu_percent value={100 * cpu_s / (t1 - t0):.3f} unit=% "
          f"cpu_s={cpu_s:.2f} (one core = 100%)", flush=True)
    return statistics.median(pss) / 1024, 100 * cpu_s / (t1 - t0)


def run_peer(argv):
    r = subprocess.run([sys.executable, *argv], stdout=subprocess.PIPE, text=True)
    values = {}
    for line in r.stdout.splitlines():
        if line.startswith("RESULT"):
            print(line, flush=True)
            fields = dict(f.split("=", 1) for f in line.split()[1:] if "=" in f)
            values[(fields.get("tool"), fields.get("metric"))] = fields.get("value")
    if r.returncode != 0:
        print(f"# peer run failed rc={r.returncode}: {argv}", file=sys.stderr)
    return values


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parts", default="latency,idle")
    ap.add_argument("--peers", default="monit,salt")
    ap.add_argument("--kills", type=int, default=10)
    ap.add_argument("--idle-checks", type=int, default=50)
    ap.add_argument("--idle-seconds", type=int, default=60)
    ap.add_argument("--settle", type=int, default=15)
    a = ap.parse_args()
    isolate_network(__file__)
    peer.become_subreaper()
    peers = set(a.peers.split(",")) - {"none"}
    parts = a.parts.split(",")
    vals = {}
    if "latency" in parts and "monit" in peers:
        vals.update(run_peer([os.path.join(PEERS_DIR, "s2_restart_latency.py"), "--parts",
                              "latency", "--kills", str(a.kills)]))
    if "idle" in parts and peers:
        vals.update(run_peer([os.path.join(PEERS_DIR, "s4_idle_footprint.py"), "--tools",
                              ",".join(sorted(peers)), "--seconds", str(a.idle_seconds),
                              "--checks", str(a.idle_checks), "--settle", str(a.settle)]))
    root = os.environ.get("BENCH_ROOT", "/tmp/bench")
    os.makedirs(root, exist_ok=True)
    work = tempfile.mkdtemp(prefix="s2s4-opsagent-", dir=root)
    try:
        if "latency" in parts:
            os.makedirs(os.path.join(work, "latency"))
            med = part_latency(os.path.join(work, "latency"), a.kills)
            monit = vals.get(("monit", "restart_latency_median"))
            if monit:
                print(f"RESULT scenario=S2-restart-latency tool=opsagent "
                      f"metric=latency_ratio_vs_monit value={med / float(monit):.4f}", flush=True)
        if "idle" in parts:
            os.makedirs(os.path.join(work, "idle"))
            pss, cpu = part_idle(os.path.join(work, "idle"), a.idle_checks, a.idle_seconds,
                                 a.settle)
            for tool, metric in (("monit", "idle_pss_median"),
                                 ("salt-minion", "idle_pss_tree_median")):
                if (v := vals.get((tool, metric))) and v != "skipped":
                    print(f"RESULT scenario=S4-idle-footprint tool=opsagent "
                          f"metric=pss_ratio_vs_{tool} value={pss / float(v):.4f}", flush=True)
            for tool in ("monit", "salt-minion"):
                if (v := vals.get((tool, "idle_cpu_percent"))) and float(v) > 0:
                    print(f"RESULT scenario=S4-idle-footprint tool=opsagent "
                          f"metric=cpu_ratio_vs_{tool} value={cpu / float(v):.4f}", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
