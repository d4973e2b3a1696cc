"""snapshot step: evidence from real components: a listening socket, a process burning CPU
and one holding memory, a container's log, a file's tail (read from its end), a unit's
journal on a systemd test host; missing ones noted, the whole bounded and saved."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
import time
import uuid

import psutil
import pytest

from agent.fleet.models import SnapshotStep
from agent.fleet.steps import snapshot
from agent.fleet.steps.base import EVIDENCE_CAP, StepContext
from tests.harness.testhost import REPO


def ctx_of(tmp_path, check=False):
    return StepContext(host="web1", state_dir=str(tmp_path / "state"), check=check,
                       incident="inc-42", deadline=time.monotonic() + 60)


@pytest.fixture
def hogs():
    """A process burning a CPU and one holding 300 MiB, stopped after."""
    burn = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    hold = subprocess.Popen([sys.executable, "-c", "import time; x = bytearray(300 << 20); "
                             "x[::4096] = b'x' * len(x[::4096]); time.sleep(600)"])
    time.sleep(1.0)
    yield burn.pid, hold.pid
    for p in (burn, hold):
        p.kill()
        p.wait()


@pytest.fixture
def container(docker_client, busybox_image):
    marker = f"marker-{uuid.uuid4().hex}"
    c = docker_client.containers.run(
        busybox_image, ["sh", "-c", f"for i in 1 2 3; do echo line $i; done; echo {marker}; "
                        "trap 'exit 0' TERM; while true; do sleep 1; done"],
        name=f"opsagent-snap-{uuid.uuid4().hex[:8]}", detach=True)
    time.sleep(0.5)
    yield c.name, marker
    c.remove(force=True)


def table(text: str, title: str) -> list[int]:
    """The pids of one of the processes text's two tables."""
    part = text.split(title, 1)[1].split("\n\n", 1)[0]
    return [int(line.split()[0]) for line in part.splitlines()[2:]]


def test_snapshot_captures_sockets_processes_and_tails(tmp_path, hogs, container):
    burn, hold = hogs
    name, marker = container
    log = tmp_path / "app.log"
    with open(log, "w") as fh:
        for i in range(20_000):
            fh.write(f"{i} GET /api/items 200\n")
        fh.write(f"ERROR {marker}\n")
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen()
        port = srv.getsockname()[1]
        spec = SnapshotStep(units=["opsagent-no-such-unit"],
                            containers=[name, "opsagent-no-such-container"],
                            files=[str(log), str(tmp_path / "missing.log")], lines=5)
        r = snapshot.run(spec, ctx_of(tmp_path, check=True))
    assert r.status == "ok" and r.undo is None
    ev = r.evidence
    line = next(ln for ln in ev["sockets"].splitlines() if f"127.0.0.1:{port} " in ln)
    assert line.split()[0] == "LISTEN"
    assert line.split()[-1] == f"{os.getpid()}/{psutil.Process().name()}"
    # a whole core: among the very busiest (a shared CI machine has other busy processes)
    assert burn in table(ev["processes"], "busiest by CPU now")[:3]
    assert hold in table(ev["processes"], "busiest by memory (RSS)")

    logs = ev["logs"]
    assert logs[f"file:{log}"] == "".join(
        f"{i} GET /api/items 200\n" for i in range(19_996, 20_000)) + f"ERROR {marker}\n"
    assert logs[f"container:{name}"].splitlines()[-1].endswith(marker)
    assert len(logs[f"container:{name}"].splitlines()) == 4  # line 1 fell out of the tail
    assert logs["container:opsagent-no-such-container"] == (
        "(not captured: no container opsagent-no-such-container on this host)")
    assert logs[f"file:{tmp_path / 'missing.log'}"] == "(not captured: No such file or directory)"
    assert logs["unit:opsagent-no-such-unit"].startswith("(not captured: ")
    assert r.message.startswith("captured ") and "the busiest processes, 2 log tails" in r.message
    assert ("; not found: unit:opsagent-no-such-unit, container:opsagent-no-such-container, "
            f"file:{tmp_path / 'missing.log'}; saved in {ev['path']}") in r.message

    saved = ev["path"]
    assert os.path.dirname(saved) == str(tmp_path / "state" / "evidence")
    assert stat.S_IMODE(os.stat(saved).st_mode) == 0o600
    with open(saved) as fh:
        doc = json.load(fh)
    assert doc["incident"] == "inc-42" and doc["host"] == "web1"
    assert doc["snapshot"]["logs"] == logs


def test_evidence_is_bounded_and_a_fifo_is_not_read(tmp_path):
    files = []
    for n in range(3):
        path = tmp_path / f"big{n}.log"
        with open(path, "w") as fh:
            for i in range(10_000):
                fh.write(f"{n}:{i} " + "x" * 200 + "\n")
        files.append(str(path))
    os.mkfifo(tmp_path / "fifo")
    spec = SnapshotStep(files=[*files, str(tmp_path / "fifo")], lines=10_000)
    t0 = time.monotonic()
    r = snapshot.run(spec, ctx_of(tmp_path))
    assert time.monotonic() - t0 < 10  # a FIFO with no writer never blocks it
    ev = r.evidence
    texts = [ev["sockets"], ev["processes"], *ev["logs"].values()]
    assert sum(len(t.encode()) for t in texts) <= EVIDENCE_CAP
    assert ev["logs"][f"file:{tmp_path / 'fifo'}"] == "(not captured: not a regular file)"
    big = ev["logs"][f"file:{files[0]}"]
    assert big.startswith("[... ") and big.endswith(f"0:9999 {'x' * 200}\n")  # newest kept


def test_a_unit_journal_tail_on_a_systemd_host(testhost):
    marker = f"marker-{uuid.uuid4().hex}"
    unit = f"opsagent-snap-{uuid.uuid4().hex[:6]}"
    res = testhost.exec(["systemd-run", f"--unit={unit}", "sh", "-c",
                         f"echo first; echo {marker}"])
    assert res.exit_code == 0, res.output
    code = ("import json, time\n"
            "from agent.fleet.models import SnapshotStep\n"
            "from agent.fleet.steps import snapshot\n"
            "from agent.fleet.steps.base import StepContext\n"
            f"spec = SnapshotStep(sockets=False, processes=False, units=['{unit}', 'nope'], "
            "lines=3)\n"
            "r = snapshot.run(spec, StepContext(host='th', state_dir='/tmp/state'))\n"
            "print(json.dumps({'status': r.status, 'message': r.message, 'ev': r.evidence}))\n")
    deadline = time.monotonic() + 20
    while True:
        res = testhost.exec([os.path.join(REPO, ".venv", "bin", "python"), "-c", code],
                            env={"PYTHONPATH": REPO})
        assert res.exit_code == 0, res.output
        out = json.loads(res.output.splitlines()[-1])
        tail = out["ev"]["logs"][f"unit:{unit}"]
        if marker in tail or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert out["status"] == "ok"
    assert marker in tail and "first" in tail
    assert len(tail.splitlines()) <= 3
    assert out["ev"]["logs"]["unit:nope"] == (
        "(not captured: no journal entries for unit nope; is it installed?)")
    assert "; not found: unit:nope" in out["message"]
