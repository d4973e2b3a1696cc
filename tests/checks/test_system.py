"""Host probes on this host: a tmpfs the test fills, psutil's figures, real processes."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time

import psutil
import pytest

from agent.checks import system
from tests.checks.conftest import check, mounted_tmpfs

MiB = 1 << 20


def test_disk_used_percent_follows_what_the_test_writes(tmpfs):
    empty = check(disk={"path": str(tmpfs), "max_used_percent": 50})
    assert empty.status == "healthy", empty.message
    assert empty.values["used_percent"] < 2
    assert empty.values["free_bytes"] == pytest.approx(4 * MiB, rel=0.02)
    (tmpfs / "fill").write_bytes(b"\0" * (3 * MiB))
    full = check(disk={"path": str(tmpfs), "max_used_percent": 50})
    assert full.status == "unhealthy"
    assert full.values["used_percent"] == pytest.approx(75, abs=1.5)
    assert full.values["free_bytes"] == pytest.approx(1 * MiB, rel=0.05)
    assert f"{tmpfs}: 75." in full.message and "above max_used_percent 50" in full.message
    assert check(disk={"path": str(tmpfs), "max_used_percent": 90}).status == "healthy"


def test_disk_inodes(tmp_path):
    with mounted_tmpfs(tmp_path / "few-inodes", "size=4m,nr_inodes=50") as mnt:
        for i in range(39):
            (mnt / f"f{i}").touch()
        out = check(disk={"path": str(mnt), "max_inodes_percent": 70})
        assert out.status == "unhealthy"
        assert out.values["inodes_percent"] == pytest.approx(80, abs=2.5)  # 39 + the root
        assert "inodes above max_inodes_percent 70" in out.message
        assert check(disk={"path": str(mnt), "max_inodes_percent": 90}).status == "healthy"


def test_disk_missing_path_is_unhealthy(tmp_path):
    out = check(disk={"path": str(tmp_path / "nope")})
    assert out.status == "unhealthy"
    assert out.message == f"{tmp_path / 'nope'}: No such file or directory"


def test_memory_percent_and_limits():
    out = check(memory={"max_percent": 100})
    assert out.status == "healthy", out.message
    assert out.values["used_percent"] == pytest.approx(psutil.virtual_memory().percent, abs=5)
    assert 0 < out.values["used_percent"] < 100
    tight = check(memory={"max_percent": 0})
    assert tight.status == "unhealthy" and "above max_percent 0" in tight.message


def test_swap_percent_and_limits():
    swap = psutil.swap_memory()
    out = check(swap={"max_percent": 0})
    if swap.total == 0:
        assert (out.status, out.message, out.values["used_percent"]) == (
            "healthy", "no swap configured", 0.0)
    else:
        assert out.values["used_percent"] == pytest.approx(swap.percent, abs=5)
        assert out.status == ("unhealthy" if out.values["used_percent"] > 0 else "healthy")
    assert check(swap={"max_percent": 100}).status == "healthy"


def test_cpu_percent_since_the_previous_reading():
    check(cpu={"max_percent": 100})  # the reading the next one counts from
    end = time.monotonic() + 0.3
    while time.monotonic() < end:  # some CPU use, so the figure cannot be 0
        pass
    out = check(cpu={"max_percent": 0})
    assert 0 < out.values["used_percent"] <= 100
    assert out.status == "unhealthy" and "cpu " in out.message
    assert out.latency_ms < 50  # non-blocking
    assert check(cpu={"max_percent": 100}).status == "healthy"


def test_load_per_core():
    out = check(load={"max_per_core": 1000})
    assert out.status == "healthy", out.message
    expected = os.getloadavg()[0] / psutil.cpu_count()
    assert out.values["per_core"] == pytest.approx(expected, abs=0.5)
    tight = check(load={"max_per_core": 0})
    assert tight.status == ("unhealthy" if tight.values["per_core"] > 0 else "healthy")


@pytest.fixture
def spawn():
    """Start programs (Popen returns once exec happened, so their cmdline is final)."""
    procs = []

    def start(*argv):
        proc = subprocess.Popen(list(argv))
        procs.append(proc)
        return proc

    yield start
    for p in procs:
        p.kill()
        p.wait()


def test_process_count_and_min_count(spawn):
    marker = f"{random.randint(10_000, 99_999)}.{random.randint(1, 999)}"
    first = spawn("sleep", marker)
    time.sleep(system._SNAPSHOT_TTL_S)  # the process table is read at most once per TTL
    out = check(process={"match": {"cmdline": f"sleep {marker}"}})
    assert out.status == "healthy", out.message
    assert out.values["count"] == 1.0
    assert out.values["rss_bytes"] == pytest.approx(psutil.Process(first.pid).memory_info().rss,
                                                    rel=0.2)
    assert out.values["cpu_percent"] < 20
    assert f"1 process match cmdline~'sleep {marker}'" in out.message
    two = check(process={"match": {"cmdline": f"sleep {marker}"}, "min_count": 2})
    assert two.status == "unhealthy" and "expected at least 2" in two.message
    spawn("sleep", marker)
    time.sleep(system._SNAPSHOT_TTL_S)  # the process table is read at most once per TTL
    two = check(process={"match": {"cmdline": f"sleep {marker}"}, "min_count": 2})
    assert two.status == "healthy" and two.values["count"] == 2.0


def test_process_absent_is_unhealthy():
    out = check(process={"match": {"cmdline": "no-such-program-anywhere-7731"}})
    assert out.status == "unhealthy"
    assert out.values["count"] == 0.0
    assert "0 processes match" in out.message


def test_process_rss_and_cpu_limits(spawn):
    marker = f"busy-{random.randint(10_000, 99_999)}"
    spawn(sys.executable, "-c", "while True: pass", marker)
    spec = {"match": {"cmdline": marker}}
    time.sleep(system._SNAPSHOT_TTL_S)  # a scan that sees it
    check(process=spec)  # first look
    time.sleep(0.5)
    out = check(process={**spec, "max_cpu_percent": 20})
    assert out.status == "unhealthy", out.message
    assert out.values["cpu_percent"] > 50
    assert "cpu above max_cpu_percent 20" in out.message
    small = check(process={**spec, "max_rss": "1KiB"})
    assert small.status == "unhealthy" and "rss above max_rss" in small.message
    assert check(process={**spec, "max_rss": "1GiB"}).status == "healthy"


def test_process_checks_share_one_scan_of_the_process_table(spawn):
    marker = f"{random.randint(10_000, 99_999)}.{random.randint(1, 999)}"
    spawn("sleep", marker)
    time.sleep(system._SNAPSHOT_TTL_S)
    spec = {"match": {"cmdline": f"sleep {marker}"}}
    assert check(process=spec).values["count"] == 1.0
    spawn("sleep", marker)  # started after that scan
    assert check(process=spec).values["count"] == 1.0  # same scan, still fresh
    time.sleep(system._SNAPSHOT_TTL_S)
    assert check(process=spec).values["count"] == 2.0


def test_process_by_pidfile(spawn, tmp_path):
    proc = spawn("sleep", "600")
    pidfile = tmp_path / "app.pid"
    pidfile.write_text(f"{proc.pid}\n")
    out = check(process={"match": {"pidfile": str(pidfile), "name": "sleep"}})
    assert out.status == "healthy" and out.values["count"] == 1.0
    proc.kill()
    proc.wait()
    out = check(process={"match": {"pidfile": str(pidfile)}})
    assert out.status == "unhealthy" and out.values["count"] == 0.0
