"""The processes provider: plan tests on built observations, then real processes end to end."""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
import time
import uuid

import psutil
import pytest

from agent.errors import ProviderError, UnsafeOperation
from agent.playbook.models.processes import ProcessSpec
from agent.providers import _spawn, processes
from agent.providers.base import RESTART, Change, ProviderContext
from agent.providers.processes import ProcessInfo, ProcessObserved

ROOT = pathlib.Path(__file__).resolve().parents[2]
SLEEP = "import time; time.sleep(600)"
START = Change("state", "stopped", "running", "test")
STOP = Change("state", "running", "absent", "test")
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (CI runs as root)")


def make_spec(**fields) -> ProcessSpec:
    return ProcessSpec.model_validate({"name": "worker", **fields})


@pytest.fixture
def ctx(tmp_path):
    return ProviderContext(host="test", variables={}, base_dir=str(tmp_path),
                           state_dir=str(tmp_path / "state"))


@pytest.fixture
def marker():
    """A text unique to this test, put in every command line it starts; killed at teardown."""
    mark = f"opsagent-test-{uuid.uuid4().hex[:12]}"
    yield mark
    victims = []
    for p in psutil.process_iter(["cmdline"]):
        if p.pid != os.getpid() and mark in " ".join(p.info["cmdline"] or []):
            try:
                p.kill()
                victims.append(p)
            except psutil.NoSuchProcess:
                pass
    psutil.wait_procs(victims, timeout=5)
    _spawn.reap_children()


@pytest.fixture
def background(marker):
    """Start a python snippet the way something other than the agent would."""
    procs: list[subprocess.Popen] = []

    def start(code: str = SLEEP, *args: str) -> subprocess.Popen:
        proc = subprocess.Popen([sys.executable, "-c", code, *args, marker],
                                start_new_session=True)
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=5)


@pytest.fixture
def worker(marker):
    """A running spec whose start argv carries the test's marker."""
    return make_spec(match={"cmdline": marker}, start=[sys.executable, "-c", SLEEP, marker])


def wait_for(predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def info(pid: int, *argv: str, name: str = "python3", user: str = "app") -> ProcessInfo:
    return ProcessInfo(pid=pid, name=name, cmdline=argv, username=user, create_time=1.0)


# --- plan tests: spec + observed -> changes and the text people read --------------------

def test_plan_nothing_runs_asks_for_a_start():
    spec = make_spec(match={"cmdline": "worker.py"}, start=["/usr/local/bin/worker"])
    observed = ProcessObserved(())
    assert processes.diff(spec, observed) == [
        Change("state", "stopped", "running", "no process matches cmdline~'worker.py'")]
    assert processes.describe(spec, observed) == "no process matches cmdline~'worker.py'"


def test_plan_running_process_is_converged_and_says_which():
    spec = make_spec(match={"cmdline": "worker.py"}, start=["/usr/local/bin/worker"])
    observed = ProcessObserved((info(1234, "python3", "worker.py", "--queue"),))
    assert processes.diff(spec, observed) == []
    assert processes.describe(spec, observed) == "running, pid 1234: python3 worker.py --queue"


def test_plan_absent_with_matches_asks_for_a_stop():
    spec = make_spec(match={"name": "nginx"}, state="absent")
    observed = ProcessObserved((info(12, "nginx: master", name="nginx"),
                                info(13, "nginx: worker", name="nginx")))
    assert processes.diff(spec, observed) == [
        Change("state", "running (pid 12, 13)", "absent",
               "pid 12, 13 match name=nginx and state is absent")]
    assert processes.describe(spec, observed) == \
        "running, pid 12: nginx: master; pid 13: nginx: worker"


def test_plan_absent_and_nothing_runs_says_so():
    spec = make_spec(match={"name": "nginx", "user": "www-data"}, state="absent")
    observed = ProcessObserved(())
    assert processes.diff(spec, observed) == []
    assert processes.describe(spec, observed) == \
        "no process matches name=nginx, user=www-data, as wanted (absent)"


def test_plan_reason_says_why_the_pidfile_named_nothing():
    spec = make_spec(match={"pidfile": "/run/w.pid"}, start=["/usr/local/bin/worker"])
    observed = ProcessObserved((), "pid 4242 in /run/w.pid is not running")
    (change,) = processes.diff(spec, observed)
    assert change.reason == \
        "no process matches pidfile=/run/w.pid (pid 4242 in /run/w.pid is not running)"


def test_supported_everywhere(ctx):
    assert processes.supports(ctx) is None


# --- timelines on real processes --------------------------------------------------------

def test_timeline_start_converge_kill_repair(worker, ctx):
    observed = processes.observe(worker, ctx)
    assert [c.field for c in processes.diff(worker, observed)] == ["state"]

    (outcome,) = processes.apply(worker, processes.diff(worker, observed), ctx)
    assert outcome.ok and outcome.message.startswith("started pid ")

    observed = processes.observe(worker, ctx)
    assert len(observed.processes) == 1
    first = observed.pids[0]
    assert outcome.message.startswith(f"started pid {first}: ")
    assert processes.diff(worker, observed) == []
    assert processes.describe(worker, observed).startswith(f"running, pid {first}: ")

    os.kill(first, signal.SIGKILL)  # our own child: a zombie until reaped, never "running"
    assert wait_for(lambda: not processes.observe(worker, ctx).processes)
    changes = processes.diff(worker, processes.observe(worker, ctx))
    assert [(c.before, c.after) for c in changes] == [("stopped", "running")]

    processes.apply(worker, changes, ctx)
    observed = processes.observe(worker, ctx)
    assert len(observed.pids) == 1 and observed.pids[0] != first
    assert not alive(first)


def test_start_when_already_running_does_nothing(worker, ctx):
    processes.apply(worker, [START], ctx)
    pids = processes.observe(worker, ctx).pids
    (outcome,) = processes.apply(worker, [START], ctx)  # stale plan: it runs by now
    assert outcome.ok and outcome.message.startswith(f"not started: already running, pid {pids[0]}")
    assert processes.observe(worker, ctx).pids == pids


def test_absent_stops_with_term(worker, marker, ctx):
    processes.apply(worker, [START], ctx)
    (pid,) = processes.observe(worker, ctx).pids
    absent = make_spec(match={"cmdline": marker}, state="absent")
    changes = processes.diff(absent, processes.observe(absent, ctx))
    assert [(c.before, c.after) for c in changes] == [(f"running (pid {pid})", "absent")]

    outcomes = processes.apply(absent, changes, ctx)
    assert [o.message for o in outcomes] == [f"sent SIGTERM to pid {pid}; exited"]
    assert not alive(pid)
    observed = processes.observe(absent, ctx)
    assert processes.diff(absent, observed) == []
    assert processes.describe(absent, observed) == \
        f"no process matches cmdline~'{marker}', as wanted (absent)"
    (again,) = processes.apply(absent, [STOP], ctx)
    assert again.message == f"nothing to stop: no process matches cmdline~'{marker}'"


def test_process_ignoring_term_gets_sigkill(background, marker, tmp_path, ctx):
    ready = tmp_path / "ready"
    code = ("import signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
            "open(sys.argv[1], 'w').close(); time.sleep(600)")
    proc = background(code, str(ready))
    assert wait_for(ready.exists)
    absent = make_spec(match={"cmdline": marker}, state="absent", stop={"timeout": "1s"})

    t0 = time.monotonic()
    outcomes = processes.apply(absent, [STOP], ctx)
    assert [(o.ok, o.message) for o in outcomes] == [
        (True, f"pid {proc.pid} ignored SIGTERM for 1s; sent SIGKILL")]
    assert 1.0 <= time.monotonic() - t0 < 4.0
    assert not alive(proc.pid)


def test_stop_signal_comes_from_the_policy(background, marker, tmp_path, ctx):
    got = tmp_path / "got"
    code = ("import signal, sys, time\n"
            "def h(n, f): open(sys.argv[1], 'w').write(signal.Signals(n).name); sys.exit(0)\n"
            "signal.signal(signal.SIGINT, h); open(sys.argv[1] + '.ready', 'w').close()\n"
            "time.sleep(600)")
    proc = background(code, str(got))
    assert wait_for(lambda: pathlib.Path(str(got) + ".ready").exists())
    absent = make_spec(match={"cmdline": marker}, state="absent", stop={"signal": "INT"})
    (outcome,) = processes.apply(absent, [STOP], ctx)
    assert outcome.message == f"sent SIGINT to pid {proc.pid}; exited"
    assert got.read_text() == "SIGINT"


def test_match_by_pidfile_written_at_start(marker, tmp_path, ctx):
    pidfile = tmp_path / "worker.pid"
    spec = make_spec(match={"pidfile": str(pidfile)}, pidfile=str(pidfile),
                     start=[sys.executable, "-c", SLEEP, marker])
    processes.apply(spec, [START], ctx)
    pid = int(pidfile.read_text())
    assert processes.observe(spec, ctx).pids == [pid]
    assert not list(tmp_path.glob(".opsagent-*"))  # the atomic write left no temp file

    os.kill(pid, signal.SIGKILL)
    assert wait_for(lambda: not processes.observe(spec, ctx).processes)
    observed = processes.observe(spec, ctx)  # the stale pidfile names a dead pid
    assert observed.pidfile_note == f"pid {pid} in {pidfile} is not running"
    (change,) = processes.diff(spec, observed)
    assert change.after == "running" and "is not running" in change.reason


def test_pidfile_garbage_or_missing_matches_nothing(tmp_path, ctx):
    pidfile = tmp_path / "w.pid"
    spec = make_spec(match={"pidfile": str(pidfile)}, state="absent")
    assert processes.observe(spec, ctx) == ProcessObserved((), f"pidfile {pidfile} does not exist")
    pidfile.write_text("not a pid\n")
    observed = processes.observe(spec, ctx)
    assert observed.processes == () and "holds no pid" in (observed.pidfile_note or "")


def test_pidfile_process_must_meet_the_other_criteria_too(background, marker, tmp_path, ctx):
    proc = background()
    pidfile = tmp_path / "w.pid"
    pidfile.write_text(f"{proc.pid}\n")
    both = make_spec(match={"pidfile": str(pidfile), "cmdline": marker}, state="absent")
    other = make_spec(match={"pidfile": str(pidfile), "cmdline": marker + "-other"},
                      state="absent")
    assert wait_for(lambda: processes.observe(both, ctx).pids == [proc.pid])
    assert processes.observe(other, ctx).processes == ()


def test_env_and_cwd_reach_the_child(marker, tmp_path, ctx, monkeypatch):
    monkeypatch.setenv("OPSAGENT_SECRET_TOKEN", "must-not-leak")
    out, workdir = tmp_path / "out.json", tmp_path / "wd"
    workdir.mkdir()
    code = ("import json, os, sys, time; json.dump({'env': dict(os.environ), 'cwd': os.getcwd()},"
            " open(sys.argv[1] + '.tmp', 'w')); os.rename(sys.argv[1] + '.tmp', sys.argv[1]);"
            " time.sleep(600)")
    spec = make_spec(match={"cmdline": marker}, start=[sys.executable, "-c", code, str(out), marker],
                     env={"X": "hello world"}, cwd=str(workdir))
    processes.apply(spec, [START], ctx)
    assert wait_for(out.exists)
    seen = json.loads(out.read_text())
    assert seen["cwd"] == str(workdir)
    assert seen["env"]["X"] == "hello world"
    assert seen["env"]["PATH"] == _spawn.DEFAULT_PATH
    assert "OPSAGENT_SECRET_TOKEN" not in seen["env"]
    (pid,) = processes.observe(spec, ctx).pids
    assert os.getsid(pid) == pid  # its own session: our terminal and signals never reach it


@as_root
def test_start_as_nobody(marker, ctx):
    spec = make_spec(match={"cmdline": marker, "user": "nobody"}, user="nobody", cwd="/",
                     start=[sys.executable, "-c", SLEEP, marker])
    (outcome,) = processes.apply(spec, [START], ctx)
    assert outcome.ok
    (pid,) = processes.observe(spec, ctx).pids
    child = psutil.Process(pid)
    assert child.username() == "nobody"
    assert child.gids().effective == 65534
    groups = next(line for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines()
                  if line.startswith("Groups:"))
    assert "0" not in groups.split()[1:]  # root's groups were dropped


@as_root
def test_unprivileged_agent_cannot_start_as_root(marker):
    snippet = (
        "import json, sys\n"
        "from agent.errors import ProviderError\n"
        "from agent.playbook.models.processes import ProcessSpec\n"
        "from agent.providers import processes\n"
        "from agent.providers.base import Change, ProviderContext\n"
        "spec = ProcessSpec.model_validate(json.loads(sys.argv[1]))\n"
        "ctx = ProviderContext(host='t', variables={}, base_dir='/', state_dir='/nonexistent')\n"
        "try:\n"
        "    processes.apply(spec, [Change('state', 'stopped', 'running', 'r')], ctx)\n"
        "except ProviderError as e:\n"
        "    print(e)\n"
        "    sys.exit(0)\n"
        "sys.exit(1)\n")
    data = {"name": "w", "match": {"cmdline": marker}, "user": "root",
            "start": [sys.executable, "-c", SLEEP, marker]}
    result = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
         sys.executable, "-c", snippet, json.dumps(data)],
        capture_output=True, text=True, timeout=30, cwd="/",
        env={"PYTHONPATH": str(ROOT), "PATH": _spawn.DEFAULT_PATH})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "starting as user root needs root (the agent runs as uid 65534)"


def test_start_that_exits_at_once_reports_code_and_log(marker, tmp_path, ctx):
    log = tmp_path / "worker.log"
    log.write_text("output of an earlier start\n")
    code = "import sys; print('config error: no queue', file=sys.stderr); raise SystemExit(3)"
    spec = make_spec(match={"cmdline": marker}, log=str(log),
                     start=[sys.executable, "-c", code, marker])
    with pytest.raises(ProviderError) as err:
        processes.apply(spec, [START], ctx)
    text = str(err.value)
    assert "exited with code 3" in text
    assert f"last lines of {log}: config error: no queue" in text
    assert "earlier start" not in text


def test_missing_executable_and_cwd_are_named(marker, tmp_path, ctx):
    missing = f"/nonexistent/{marker}"
    with pytest.raises(ProviderError, match=f"executable {missing} not found"):
        processes.apply(make_spec(match={"cmdline": marker}, start=[missing]), [START], ctx)
    bad_cwd = str(tmp_path / "nope")
    spec = make_spec(match={"cmdline": marker}, cwd=bad_cwd,
                     start=[sys.executable, "-c", SLEEP, marker])
    with pytest.raises(ProviderError, match=f"working directory {bad_cwd} does not exist"):
        processes.apply(spec, [START], ctx)


def test_start_that_never_matches_is_killed(marker, ctx):
    spec = make_spec(match={"cmdline": marker + "-never"}, start_timeout="500ms",
                     start=[sys.executable, "-c", SLEEP, marker])
    t0 = time.monotonic()
    with pytest.raises(ProviderError) as err:
        processes.apply(spec, [START], ctx)
    assert time.monotonic() - t0 < 3.0
    text = str(err.value)
    assert f"no process matched cmdline~'{marker}-never' within 500ms; killed it" in text
    pid = int(text.split()[2])
    assert not psutil.pid_exists(pid)
    assert not any(marker in " ".join(p.info["cmdline"] or [])
                   for p in psutil.process_iter(["cmdline"]))


def test_restart_gives_a_new_pid(worker, ctx):
    restart = Change(RESTART, None, "restarted", "notified by files:config")
    (started,) = processes.apply(worker, [restart], ctx)  # nothing ran: just a start
    assert started.action == "start" and started.ok
    (old,) = processes.observe(worker, ctx).pids

    outcomes = processes.apply(worker, [restart], ctx)
    assert [o.action for o in outcomes] == ["stop", "start"]
    assert outcomes[0].message == f"sent SIGTERM to pid {old}; exited"
    (new,) = processes.observe(worker, ctx).pids
    assert new != old and not alive(old)


def test_never_stops_the_agent_itself(tmp_path, ctx):
    pidfile = tmp_path / "me.pid"
    pidfile.write_text(f"{os.getpid()}\n")
    me = " ".join(psutil.Process().cmdline())
    absent = make_spec(match={"pidfile": str(pidfile), "cmdline": me}, state="absent")
    observed = processes.observe(absent, ctx)
    assert observed.processes == ()
    assert processes.diff(absent, observed) == []
    assert "is the agent or one of its parents" in processes.describe(absent, observed)
    (outcome,) = processes.apply(absent, [STOP], ctx)  # even when told to
    assert outcome.message.startswith("nothing to stop")
    assert psutil.Process().is_running()


def test_signalling_init_the_agent_or_its_parents_is_refused(ctx):
    for pid in (1, os.getpid(), os.getppid()):
        proc = psutil.Process(pid)
        found = processes.ProcessInfo(pid, proc.name(), tuple(proc.cmdline()), None, 0.0)
        with pytest.raises(UnsafeOperation, match=f"refusing to signal pid {pid}"):
            processes._refuse_unsafe([found])


def test_stop_takes_the_helpers_of_a_started_program_along(marker, ctx):
    code = ("import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', "
            f"{SLEEP!r}, sys.argv[1] + '-helper']); time.sleep(600)")
    main = make_spec(match={"cmdline": f"{marker}-main"},
                     start=[sys.executable, "-c", code, marker, f"{marker}-main"])
    helper = make_spec(match={"cmdline": f"{marker}-helper"}, state="absent")
    processes.apply(main, [START], ctx)
    assert wait_for(lambda: len(processes.observe(helper, ctx).pids) == 1)
    (helper_pid,) = processes.observe(helper, ctx).pids

    absent = main.model_copy(update={"state": "absent"})
    (outcome,) = processes.apply(absent, [STOP], ctx)
    assert outcome.message.endswith("; exited")
    assert wait_for(lambda: not alive(helper_pid), timeout=2)  # signalled as a group
