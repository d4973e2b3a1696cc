"""The engine on real files and processes: timeouts, isolation, verification, handlers."""

from __future__ import annotations

import os
import time
import uuid

import psutil
import pytest

from agent.engine import report_of, run_playbook
from agent.playbook import load_playbook
from agent.providers import files as files_provider
from agent.providers.base import ProviderContext


def load(tmp_path, text: str, extra=None):
    path = tmp_path / "pb.yaml"
    path.write_text(text)
    return load_playbook(str(path), extra)


def ctx_for(loaded) -> ProviderContext:
    return ProviderContext(host="test", variables=loaded.variables,
                           base_dir=os.path.dirname(loaded.path),
                           state_dir=os.path.join(os.path.dirname(loaded.path), "state"))


def run(tmp_path, text, mode="apply", extra=None):
    loaded = load(tmp_path, text, extra)
    return run_playbook(loaded, mode, ctx_for(loaded))


def by_name(result):
    return {r.name: r for r in result.results}


@pytest.fixture
def marker():
    tag = f"opsagent-engine-{uuid.uuid4().hex[:10]}"
    yield tag
    for p in psutil.process_iter(["cmdline"]):
        if tag in " ".join(p.info["cmdline"] or []):
            p.kill()


def test_kinds_without_provider_are_skipped_with_a_reason(tmp_path):
    result = run(tmp_path, """\
name: x
checks: [{name: c, tcp: {host: 127.0.0.1, port: 1}}]
thresholds: [{name: t, metric: cpu.percent, above: 90}]
watches: [{name: w, log: /var/log/x, pattern: x}]
backups: [{name: b, schedule: '0 2 * * *', source: {paths: [/srv]}, destination: /b}]
""")
    assert [(r.kind, r.status) for r in result.results] == [
        ("checks", "skipped"),
        ("thresholds", "skipped"), ("watches", "skipped"), ("backups", "skipped")]
    messages = [r.message for r in result.results]
    assert "opsagent check" in messages[0] and "agent service" in messages[1]
    assert "opsagent watch test" in messages[2] and "opsagent backup run" in messages[3]
    assert all("agent service" in m for m in messages[1:])


def test_a_hung_provider_call_times_out_and_the_run_goes_on(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)  # reading the source blocks forever: no writer ever comes
    t0 = time.monotonic()
    result = run(tmp_path, f"""\
name: x
files:
  - {{path: {tmp_path}/hung, source: {fifo}, timeout: 1s}}
  - {{path: {tmp_path}/fine, content: "ok\\n"}}
""")
    assert time.monotonic() - t0 < 15
    res = by_name(result)
    assert res[f"{tmp_path}/hung"].status == "failed"
    assert "did not finish within 1s" in res[f"{tmp_path}/hung"].message
    assert res[f"{tmp_path}/fine"].status == "changed"
    assert (tmp_path / "fine").read_text() == "ok\n"


def test_a_crashing_provider_fails_only_its_resource(tmp_path, monkeypatch):
    real = files_provider.observe

    def observe(spec, ctx):
        if spec.path.endswith("boom"):
            raise RuntimeError("provider bug")
        return real(spec, ctx)

    monkeypatch.setattr(files_provider, "observe", observe)
    result = run(tmp_path, f"""\
name: x
files:
  - {{path: {tmp_path}/boom, content: "x"}}
  - {{path: {tmp_path}/fine, content: "y"}}
""")
    res = by_name(result)
    assert res[f"{tmp_path}/boom"].status == "failed"
    assert "internal error in the files provider: RuntimeError: provider bug" in \
        res[f"{tmp_path}/boom"].message
    assert res[f"{tmp_path}/fine"].status == "changed"


def test_apply_that_does_not_converge_is_a_failure(tmp_path, monkeypatch):
    monkeypatch.setattr(files_provider, "apply", lambda spec, changes, ctx: [])
    result = run(tmp_path, f"name: x\nfiles:\n  - {{path: {tmp_path}/a, content: x}}\n")
    r = result.results[0]
    assert r.status == "failed"
    assert r.message.startswith("still differs after apply: state (missing); content")


def test_plan_and_check_never_apply(tmp_path, monkeypatch):
    def refuse(spec, changes, ctx):
        raise AssertionError("apply called in a dry run")

    monkeypatch.setattr(files_provider, "apply", refuse)
    for mode in ("plan", "check"):
        result = run(tmp_path, f"name: x\nfiles:\n  - {{path: {tmp_path}/a, content: x}}\n",
                     mode=mode)
        assert result.results[0].status == "changed"
        assert result.results[0].message == "would change state, content"
    assert not (tmp_path / "a").exists()


def test_no_change_says_why(tmp_path):
    (tmp_path / "a").write_text("x")
    os.chmod(tmp_path / "a", 0o640)
    result = run(tmp_path, f"name: x\nfiles:\n  - {{path: {tmp_path}/a, content: x, "
                           "mode: '0640'}\n")
    r = result.results[0]
    assert r.status == "ok"
    assert "0640" in r.message and r.message


def handler_playbook(tmp_path, marker, greeting):
    return load(tmp_path, f"""\
name: handlers
vars: {{greeting: {greeting}}}
files:
  - path: {tmp_path}/worker.conf
    content: "greeting={{{{ greeting }}}}\\n"
    notify: ["processes:worker"]
  - path: {tmp_path}/other.conf
    content: "static\\n"
processes:
  - name: worker
    match: {{cmdline: {marker}}}
    start: [/usr/bin/python3, -c, "import time; time.sleep(600)", {marker}]
""")


def pids(marker):
    return sorted(p.pid for p in psutil.process_iter(["cmdline", "status"])
                  if marker in " ".join(p.info["cmdline"] or [])
                  and p.info["status"] != psutil.STATUS_ZOMBIE)


def test_handlers_restart_notified_resources_once_at_the_end(tmp_path, marker):
    loaded = handler_playbook(tmp_path, marker, "hello")
    first = run_playbook(loaded, "apply", ctx_for(loaded))
    worker = by_name(first)["worker"]
    assert worker.status == "changed"
    # started in this run, after its config was written: the handler has nothing to add
    assert [c.field for c in worker.changes] == ["state"]
    [pid1] = pids(marker)

    second = run_playbook(loaded, "apply", ctx_for(loaded))
    assert by_name(second)["worker"].status == "ok"  # no change, no notification
    assert pids(marker) == [pid1]

    changed = handler_playbook(tmp_path, marker, "bonjour")
    check = run_playbook(changed, "check", ctx_for(changed))
    w = by_name(check)["worker"]
    assert w.status == "changed" and [c.field for c in w.changes] == ["restart"]
    assert f"notified by files:{tmp_path}/worker.conf" in w.changes[0].reason
    assert pids(marker) == [pid1]  # --check restarted nothing

    third = run_playbook(changed, "apply", ctx_for(changed))
    w = by_name(third)["worker"]
    assert w.status == "changed", w.message
    [pid2] = pids(marker)
    assert pid2 != pid1
    assert (tmp_path / "worker.conf").read_text() == "greeting=bonjour\n"


def test_a_failed_resource_is_not_restarted_by_its_handler(tmp_path, marker):
    loaded = load(tmp_path, f"""\
name: x
files:
  - {{path: {tmp_path}/c.conf, content: "x", notify: ["processes:bad"]}}
processes:
  - name: bad
    match: {{cmdline: {marker}}}
    start: [/nonexistent/bin/{marker}]
""")
    result = run_playbook(loaded, "apply", ctx_for(loaded))
    bad = by_name(result)["bad"]
    assert bad.status == "failed"
    assert [c.field for c in bad.changes] == ["state"]


def test_a_handler_owed_by_an_interrupted_run_is_replayed_by_the_next(tmp_path, marker):
    from agent.engine import Engine
    from agent.pending import PendingHandlers

    loaded = handler_playbook(tmp_path, marker, "hello")
    run_playbook(loaded, "apply", ctx_for(loaded))
    [pid1] = pids(marker)

    # The config changes, then the run is cut short (SIGTERM, a crash) before the handler.
    changed = handler_playbook(tmp_path, marker, "bonjour")
    asked = []
    engine = Engine(ctx_for(changed), should_stop=lambda: len(asked.append(1) or asked) > 1)
    cut = engine.run(changed, "apply")
    assert by_name(cut)[f"{tmp_path}/worker.conf"].status == "changed"
    assert by_name(cut)["worker"].status == "skipped"
    assert pids(marker) == [pid1]  # not restarted yet
    store = PendingHandlers(ctx_for(changed).state_dir)
    assert store.owed("handlers") == {"processes:worker": [f"files:{tmp_path}/worker.conf"]}

    # A dry run shows what is owed and leaves it owed.
    check = run_playbook(changed, "check", ctx_for(changed))
    assert [c.field for c in by_name(check)["worker"].changes] == ["restart"]
    assert store.owed("handlers")

    # The next real run finds nothing new to change, and still restarts the worker.
    again = run_playbook(changed, "apply", ctx_for(changed))
    w = by_name(again)["worker"]
    assert w.status == "changed", w.message
    assert "(owed by an earlier run)" in w.changes[-1].reason
    [pid2] = pids(marker)
    assert pid2 != pid1
    assert store.owed("handlers") == {}
    assert by_name(run_playbook(changed, "apply", ctx_for(changed)))["worker"].status == "ok"


def test_a_targeted_run_reconciles_only_the_named_resources(tmp_path):
    loaded = load(tmp_path, f"""\
name: t
files:
  - {{path: {tmp_path}/a, content: "a"}}
  - {{path: {tmp_path}/b, content: "b"}}
""")
    result = run_playbook(loaded, "apply", ctx_for(loaded), only={f"files:{tmp_path}/b"})
    assert [r.name for r in result.results] == [f"{tmp_path}/b"]
    assert (tmp_path / "b").exists() and not (tmp_path / "a").exists()


def test_changes_are_labelled_intentional_then_corrective_then_would_change(tmp_path):
    """First apply and a spec edit are intentional; drift repaired on the same spec is
    corrective; a dry run's changes would-change."""
    target = tmp_path / "f.txt"
    pb_path = tmp_path / "pb.yaml"

    def run(content, mode):
        pb_path.write_text(f"name: labels\nfiles:\n  - path: {target}\n    content: {content}\n")
        loaded = load_playbook(str(pb_path))
        ctx = ProviderContext(host="h", variables={}, base_dir=str(tmp_path),
                              state_dir=str(tmp_path / "state"))
        doc = report_of(run_playbook(loaded, mode, ctx), "test")
        return [c.label for r in doc.results for c in r.changes]

    assert set(run("one", "apply")) == {"intentional"}
    target.write_text("tampered")
    assert set(run("one", "check")) == {"would-change"}
    assert set(run("one", "apply")) == {"corrective"}
    assert run("one", "apply") == []
    assert set(run("two", "apply")) == {"intentional"}
