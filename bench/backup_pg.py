#!/usr/bin/env python3
"""Backup + verify of a ~1 GiB PostgreSQL database vs a plain `pg_dump -Fc | zstd` pipeline.

usage: backup_pg.py [--scale 70] [--runs 3]

Starts a throw-away PostgreSQL (tests/harness/postgres.py), fills it with `pgbench -i -s
SCALE` (scale 70 ≈ 1 GiB), then alternates, RUNS times each, in the same sitting:

* plain: `pg_dump -Fc DB | zstd -3 -T0 -q -o FILE` (what teams script), then `zstd -t FILE`
  (the check such scripts do, if any);
* opsagent: `opsagent backup run db -p PLAYBOOK` with `verify: {}` (checksums of every
  artefact and a full decompression) — dump, compression, manifest, atomic rename,
  verification, whole process timed.

Each opsagent run is checked (exit 0, manifest, verified). Prints RESULT lines with the wall
medians and the ratio (target: opsagent ≤ 1.2× the plain pipeline), and the stored sizes.
Add `--restore-verify` to also time `verify: {restore: true, query: ...}` (a scratch restore
and a query), which the plain pipeline has no equivalent of.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))


def pg_bin(name: str) -> str:
    for d in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (d / name).exists():
            return str(d / name)
    found = shutil.which(name)
    if not found:
        raise SystemExit(f"{name} not found")
    return found


def timed(argv: list[str], **kw: object) -> float:
    t0 = time.perf_counter()
    subprocess.run(argv, check=True, **kw)  # type: ignore[call-overload]
    return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", type=int, default=70)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--restore-verify", action="store_true")
    a = ap.parse_args()
    if shutil.which("zstd") is None:
        raise SystemExit("the zstd command is required for the plain pipeline (apt-get "
                         "install zstd)")
    from tests.harness.postgres import Postgres

    pg = Postgres().start()
    work = Path(tempfile.mkdtemp(prefix="opsagent-backup-bench-"))
    try:
        url = pg.new_database()
        db = url.rsplit("/", 1)[1]
        env = {**os.environ, "PGHOST": "127.0.0.1", "PGPORT": str(pg.port), "PGUSER": "postgres"}
        t = timed([pg_bin("pgbench"), "-i", "-q", "-s", str(a.scale), db], env=env,
                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        size = subprocess.run([pg_bin("psql"), "-Atc", f"SELECT pg_database_size('{db}')", db],
                              env=env, capture_output=True, text=True, check=True).stdout
        print(f"# pgbench scale {a.scale}: {int(size) / 2**30:.2f} GiB in {t:.0f} s",
              file=sys.stderr, flush=True)
        (work / "dsn").write_text(url + "\n")
        verify = '{restore: true, query: "SELECT count(*) > 0 FROM pgbench_accounts"}' \
            if a.restore_verify else "{}"
        (work / "pb.yaml").write_text(
            f"name: bench\nbackups:\n  - name: db\n    schedule: '0 2 * * *'\n"
            f"    source: {{postgres: {{dsn_file: {work / 'dsn'}, databases: [{db}], "
            f"globals: false}}}}\n    destination: {work / 'dest'}\n    verify: {verify}\n")
        plain, ours, plain_bytes, our_bytes = [], [], 0, 0
        for run in range(a.runs):
            out = work / f"plain-{run}.dump.zst"
            t0 = time.perf_counter()
            dump = subprocess.Popen([pg_bin("pg_dump"), "-Fc", db], env=env,
                                    stdout=subprocess.PIPE)
            subprocess.run(["zstd", "-3", "-T0", "-q", "-o", str(out)], stdin=dump.stdout,
                           check=True)
            assert dump.stdout is not None
            dump.stdout.close()
            if dump.wait() != 0:
                raise SystemExit("pg_dump failed")
            subprocess.run(["zstd", "-t", "-q", str(out)], check=True)
            plain.append(time.perf_counter() - t0)
            plain_bytes = out.stat().st_size
            out.unlink()
            t0 = time.perf_counter()
            res = subprocess.run([str(REPO / ".venv" / "bin" / "opsagent"), "backup", "run", "db",
                                  "-p", str(work / "pb.yaml"), "--json"], capture_output=True,
                                 text=True)
            ours.append(time.perf_counter() - t0)
            if res.returncode != 0:
                raise SystemExit(f"opsagent backup failed: {res.stderr[-2000:]}")
            doc = json.loads(res.stdout)
            if not doc["ok"] or doc["verified"] is not True:
                raise SystemExit(f"backup verify: {doc}")
            our_bytes = doc["bytes_stored"]
            shutil.rmtree(doc["path"])
            print(f"# run {run}: plain {plain[-1]:.2f} s, opsagent {ours[-1]:.2f} s",
                  file=sys.stderr, flush=True)
        tag = "scenario=backup-pg tool="
        for name, xs in (("plain-pg_dump-zstd", plain), ("opsagent", ours)):
            print(f"RESULT {tag}{name} metric=wall_median value={statistics.median(xs):.2f} "
                  f"unit=s min={min(xs):.2f} max={max(xs):.2f} runs={a.runs} "
                  f"scale={a.scale}")
        print(f"RESULT {tag}opsagent metric=wall_ratio_vs_plain value="
              f"{statistics.median(ours) / statistics.median(plain):.3f}")
        print(f"RESULT {tag}opsagent metric=stored_bytes value={our_bytes} "
              f"plain={plain_bytes} database={int(size)}")
    finally:
        pg.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
