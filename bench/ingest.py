"""Collector ingest: reports/s and request latency from simulated agents on loopback.

Starts PostgreSQL (its own data directory, Debian's package) and/or a SQLite file, a real
`opsagent server` on each, and N simulated agents (separate processes) posting gzipped
batches of realistic run reports with their own host tokens, as fast as the server answers.
Every report is unique; at the end the stored count is checked against what was sent.
Prints RESULT lines: reports/s and request latency p50/p99, medians over --runs, and how
much of the machine's CPU other processes took meanwhile (it is shared: what they take
shows in the latency, and a figure means little without it).

PostgreSQL runs as production would on this machine (PG_SETTINGS: memory sized for it,
checkpoints spread out), durable as shipped: fsync, full_page_writes and
synchronous_commit on, so every acknowledged batch has been flushed to disk.

    python3 bench/ingest.py --backends postgresql,sqlite --runs 3
"""

from __future__ import annotations

import argparse
import gzip
import json
import multiprocessing as mp
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.harness.collector import CollectorProc  # noqa: E402
from tests.harness.reports import run_report  # noqa: E402

# pgtune's "web application" profile for 24 GB and 2 cores on SSD, which this machine is.
# The tests' throw-away clusters have 128 MB of shared_buffers, less than a sitting writes
# (a run of 60,000 reports: about 115 MB of tables and indexes), and checkpoint every 5 min.
PG_SETTINGS = {
    "shared_buffers": "6GB", "effective_cache_size": "18GB", "maintenance_work_mem": "1GB",
    "work_mem": "16MB", "wal_buffers": "16MB", "min_wal_size": "1GB", "max_wal_size": "4GB",
    "checkpoint_timeout": "15min", "checkpoint_completion_target": "0.9",
    "random_page_cost": "1.1", "effective_io_concurrency": "200",
    "fsync": "on", "full_page_writes": "on", "synchronous_commit": "on",
}


def bodies_for(host: str, batches: int, batch: int) -> list[bytes]:
    """Pre-built gzipped batches: 12 resources per run, one with a corrective change."""
    out = []
    now = time.time()
    for b in range(batches):
        reports = []
        for i in range(batch):
            n = b * batch + i
            results = [("files", f"/etc/app/conf{k}.yaml", "ok", None) for k in range(8)]
            results += [("services", "nginx", "ok", None), ("containers", "api", "ok", None),
                        ("processes", "worker", "ok", None),
                        ("files", "/etc/nginx/nginx.conf", "changed", "corrective")]
            reports.append(json.loads(run_report(host, results, at=now + n * 0.001
                                                 ).model_dump_json()))
        out.append(gzip.compress(json.dumps({"reports": reports}).encode(), 5))
    return out


def agent(url: str, token: str, bodies: list[bytes], interval: float, start: float,
          q: mp.Queue) -> None:  # type: ignore[type-arg]
    """Send one batch every ``interval`` seconds from ``start`` (0: back to back). Latency is
    measured from when the batch was due, so a server falling behind shows in it."""
    import httpx

    lat = []
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json",
               "Content-Encoding": "gzip"}
    with httpx.Client(base_url=url, headers=headers, timeout=30) as client:
        for k, body in enumerate(bodies):
            due = start + k * interval
            now = time.time()
            if interval and due > now:
                time.sleep(due - now)
            t0 = time.perf_counter() - max(0.0, time.time() - due) if interval else \
                time.perf_counter()
            r = client.post("/api/v1/reports", content=body)
            lat.append(time.perf_counter() - t0)
            if r.status_code != 200:
                q.put(("error", f"{r.status_code} {r.text[:200]}"))
                return
    q.put(("ok", lat))


def _busy() -> tuple[int, int]:
    """(busy, all) clock ticks of the whole machine so far."""
    with open("/proc/stat") as f:
        ticks = [int(v) for v in f.readline().split()[1:]]
    return sum(ticks) - ticks[3] - ticks[4], sum(ticks)  # idle and iowait are not busy


def _ticks_of(roots: list[int]) -> int:
    """CPU clock ticks used so far by ``roots`` and all their descendants."""
    parent, ticks = {}, {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        parent[int(pid)] = int(fields[1])
        ticks[int(pid)] = int(fields[11]) + int(fields[12])
    ours = set(roots)
    for pid in parent:  # walk up from each process until one of ours or the top
        chain, up = [], pid
        while up not in ours and up in parent and len(chain) < 64:
            chain.append(up)
            up = parent[up]
        if up in ours:
            ours.update(chain)
    return sum(ticks.get(pid, 0) for pid in ours)


def one_run(db: str, args: argparse.Namespace, log: Path, roots: list[int]
            ) -> tuple[float, float, float, float]:
    """reports/s, p50, p99, and the share of the machine's CPU that processes other than
    ours (``roots``: this bench and PostgreSQL; the collector; the agents) took."""
    server = CollectorProc(db, log, workers=args.workers).start()
    try:
        tokens = [server.token(f"bench{i:03d}") for i in range(args.agents)]
        per_agent = args.reports // args.agents // args.batch
        work = [bodies_for(f"bench{i:03d}", per_agent, args.batch) for i in range(args.agents)]
        q: mp.Queue = mp.Queue()  # type: ignore[type-arg]
        # --rate R: the agents together offer R reports/s, evenly spread; 0: as fast as it goes
        interval = args.agents * args.batch / args.rate if args.rate else 0.0
        start = time.time() + 1.0
        procs = [mp.Process(target=agent, args=(server.url, tokens[i], work[i], interval,
                                                start + i * interval / args.agents, q))
                 for i in range(args.agents)]
        roots = [*roots, server.proc.pid] if server.proc else roots
        busy0, all0 = _busy()
        ours0 = _ticks_of(roots)
        t0 = time.perf_counter()
        for p in procs:
            p.start()
        lats: list[float] = []
        for _ in procs:
            kind, value = q.get(timeout=600)
            if kind == "error":
                raise SystemExit(f"ingest failed: {value}")
            lats.extend(value)
        elapsed = time.perf_counter() - t0 - (1.0 if interval else 0.0)
        ours = _ticks_of(roots) - ours0  # the agents are done but not reaped: still counted
        busy, every = (b - a for a, b in zip((busy0, all0), _busy(), strict=True))
        for p in procs:
            p.join()
        sent = per_agent * args.batch * args.agents
        from agent.collector.store import Store

        store = Store(db)
        stored = store.counts()["reports"]
        store.close()
        if stored != sent:
            raise SystemExit(f"{sent} reports sent, {stored} stored")
        lats.sort()
        p99 = lats[min(len(lats) - 1, int(len(lats) * 0.99))]
        return sent / elapsed, statistics.median(lats), p99, max(0, busy - ours) / every
    finally:
        server.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backends", default="postgresql,sqlite")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--agents", type=int, default=8, help="simulated agents (processes)")
    ap.add_argument("--batch", type=int, default=50, help="reports per request")
    ap.add_argument("--reports", type=int, default=40000, help="reports per run")
    ap.add_argument("--workers", type=int, default=2, help="collector worker processes")
    ap.add_argument("--rate", type=float, default=0.0,
                    help="offered reports/s (0: each agent sends back to back)")
    args = ap.parse_args()
    import tempfile

    from tests.harness.postgres import Postgres

    tmp = Path(tempfile.mkdtemp(prefix="opsagent-bench-"))
    pg = None
    try:
        for backend in args.backends.split(","):
            rates, p50s, p99s, others = [], [], [], []
            for run in range(args.runs):
                if backend == "postgresql":
                    pg = pg or Postgres(PG_SETTINGS).start()
                    db = pg.new_database()
                else:
                    db = str(tmp / f"run{run}.db")
                roots = [os.getpid()] + ([pg.pid()] if backend == "postgresql" and pg else [])
                rate, p50, p99, other = one_run(db, args, tmp / f"{backend}{run}.log", roots)
                print(f"# {backend} run {run}: {rate:.0f} reports/s, p50 {p50 * 1000:.1f} ms, "
                      f"p99 {p99 * 1000:.1f} ms; other processes took {other:.0%} of the CPU",
                      file=sys.stderr, flush=True)
                rates.append(rate)
                p50s.append(p50)
                p99s.append(p99)
                others.append(other)
            common = (f"runs={args.runs} rate={args.rate:g} agents={args.agents} "
                      f"batch={args.batch} "
                      f"reports={args.reports} workers={args.workers}")
            print(f"RESULT scenario=ingest backend={backend} metric=reports_per_s_median "
                  f"value={statistics.median(rates):.0f} min={min(rates):.0f} "
                  f"max={max(rates):.0f} {common}")
            for name, vals in (("request_p50", p50s), ("request_p99", p99s)):
                print(f"RESULT scenario=ingest backend={backend} metric={name}_median "
                      f"value={statistics.median(vals) * 1000:.1f} unit=ms "
                      f"min={min(vals) * 1000:.1f} max={max(vals) * 1000:.1f} {common}")
            print(f"RESULT scenario=ingest backend={backend} metric=other_cpu_median "
                  f"value={statistics.median(others) * 100:.0f} unit=% "
                  f"min={min(others) * 100:.0f} max={max(others) * 100:.0f} {common}")
    finally:
        if pg:
            pg.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
