"""Runbooks: reading them, typed parameters, binding to hosts, waves — and remediate on this
host end to end (real commands, real files, real exit codes)."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import textwrap

import pytest

from agent.errors import InputError
from agent.fleet.orchestrate import too_many_failed, waves
from agent.fleet.runbook import bind, check_params, load_runbook

ROOT = pathlib.Path(__file__).resolve().parents[2]


def write(tmp_path, text, name="rb.yaml"):
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return str(p)


def opsagent(*args, stdin=subprocess.DEVNULL):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "agent.cli", *map(str, args)], stdin=stdin,
                          capture_output=True, text=True, timeout=120, env=env)


BRUTE = """\
    name: t
    params:
      ip: {type: ip}
      port: {type: int, min: 1, max: 65535, default: 22, required: false}
      svc: {type: string, pattern: '^[a-z]+$', default: sshd, required: false}
      for: {type: duration, default: 1h, required: false}
    steps:
      - block_ip: {ip: "{{ ip }}", duration: "{{ for }}"}
      - check: {tcp: {host: 127.0.0.1, port: "{{ port }}"}}
      - restart: {service: "{{ svc }}"}
    """


def test_every_shipped_runbook_loads_and_binds():
    runbooks = sorted((ROOT / "playbooks" / "runbooks").glob("*.yaml"))
    names = {p.stem for p in runbooks}
    assert {"service-down", "disk-full", "brute-force", "db-connections",
            "bad-deploy"} <= names
    samples = {"ip": "203.0.113.7", "service": "nginx", "container": "api",
               "health_url": "http://127.0.0.1:8080/health"}
    for path in runbooks:
        rb = load_runbook(str(path))
        given = {k: v for k, v in samples.items() if k in rb.model.params}
        steps = bind(rb, check_params(rb, given), "web01", {})
        assert steps and all(s.action for s in steps), path


def test_parameters_are_typed_and_every_problem_is_located(tmp_path):
    rb = load_runbook(write(tmp_path, BRUTE))
    assert check_params(rb, {"ip": "2001:db8::0001"}) == {
        "ip": "2001:db8::1", "port": 22, "svc": "sshd", "for": "1h"}
    with pytest.raises(InputError) as e:
        check_params(rb, {"ip": "1.2.3.4; rm -rf /", "port": "http", "svc": "Bad!",
                          "for": "soon", "prot": "1"})
    text = str(e.value)
    assert f"{rb.path}:3:3: params.ip: -e ip: '1.2.3.4; rm -rf /' is not an IP address" in text
    assert "params.port: -e port: 'http' is not a whole number" in text
    assert "params.svc: -e svc: 'Bad!' does not match the pattern (text matching ^[a-z]+$)" \
        in text
    assert "-e for: 'soon' is not a duration" in text
    assert "the runbook has no parameter 'prot' (did you mean port?)" in text
    with pytest.raises(InputError, match="port: -e port: 70000 is above the maximum 65535"):
        check_params(rb, {"ip": "10.0.0.1", "port": 70000})
    with pytest.raises(InputError, match="parameter ip is required; give -e ip=VALUE"):
        check_params(rb, {})


def test_a_step_is_checked_whole_once_bound_to_a_host(tmp_path):
    rb = load_runbook(write(tmp_path, """\
        name: t
        params: {port: {type: string}}
        steps:
          - check: {tcp: {host: 127.0.0.1, port: "{{ port }}"}}
          - run: {argv: [echo, "{{ api_port }}"]}
        """))
    steps = bind(rb, {"port": "8080"}, "web01", {"api_port": 5001})
    assert steps[0].check.tcp.port == 8080
    assert steps[1].run.argv == ["echo", "5001"]
    with pytest.raises(InputError) as e:
        bind(rb, {"port": "99999"}, "web02", {})
    text = str(e.value)
    assert ":4:" in text and "steps[0].check.tcp.port: on web02:" in text
    assert "steps[1].run.argv[1]: on web02: undefined template variable 'api_port'" in text


def test_structure_is_checked_before_any_parameter_is_known(tmp_path):
    with pytest.raises(InputError) as e:
        load_runbook(write(tmp_path, """\
            name: t
            steps:
              - restart: {service: "{{ svc }}", signal: HUP}
              - check: {tcp: {host: 127.0.0.1, port: 99999}}
              - {name: nothing}
              - {run: {argv: [x]}, block_ip: {ip: 1.2.3.4}}
              - notify: {notifier: nobody, message: hi}
            serial: [0]
            """))
    text = str(e.value)
    assert "steps[0].restart.signal" in text
    assert "steps[1].check.tcp.port" in text
    assert "steps[2]: the step names no action" in text
    assert "steps[3]: the step names run, block_ip" in text
    assert "serial" in text and "at least 1 host" in text


def test_a_notify_step_names_a_declared_notifier(tmp_path):
    with pytest.raises(InputError, match=r"steps\[0\].notify.notifier: no notifier 'nobody'"):
        load_runbook(write(tmp_path, """\
            name: t
            notifiers: {ops: {webhook: {url: "http://127.0.0.1:9/x"}}}
            steps:
              - notify: {notifier: nobody, message: hi}
            """))


@pytest.mark.parametrize(("n", "serial", "sizes"), [
    (10, None, [10]),
    (10, 3, [3, 3, 3, 1]),
    (10, [1, "10%", "50%"], [1, 1, 5, 3]),
    (10, "30%", [3, 3, 3, 1]),
    (3, "10%", [1, 1, 1]),
    (0, 2, []),
])
def test_waves_follow_ansible_serial(n, serial, sizes):
    hosts = list(range(n))
    got = waves(hosts, serial)
    assert [len(w) for w in got] == sizes
    assert [h for w in got for h in w] == hosts


def test_max_fail_percentage_is_strictly_above():
    assert not too_many_failed(1, 4, 25)
    assert too_many_failed(2, 4, 25)
    assert too_many_failed(1, 1, 0)
    assert not too_many_failed(3, 4, None)
    assert too_many_failed(4, 4, None)


# -- remediate on this host -------------------------------------------------------------------

LOCAL = """\
    name: local
    params:
      tag: {type: string, pattern: '^[a-z]+$'}
    on_failure: rollback
    steps:
      - name: probe
        check: {command: {argv: ["true"]}}
      - name: marker
        run: {argv: [touch, "{{ dir }}/marker-{{ tag }}"], undo: [rm, "{{ dir }}/marker-{{ tag }}"]}
      - confirm: "Go on?"
      - name: second
        run: {argv: [touch, "{{ dir }}/second-{{ tag }}"]}
      - name: maybe fail
        run: {argv: ["{{ last }}"]}
    """


def _local(tmp_path, last):
    return write(tmp_path, LOCAL.replace("{{ dir }}", str(tmp_path)).replace(
        "{{ last }}", last))


def test_remediate_runs_the_steps_and_keeps_an_incident(tmp_path):
    state = tmp_path / "state"
    p = opsagent("remediate", _local(tmp_path, "true"), "-e", "tag=ok", "--yes",
                 "--state-dir", state, "--json")
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    assert doc["status"] == "succeeded" and doc["params"] == {"tag": "ok"}
    assert [(o["step"], o["status"]) for o in doc["outcomes"]] == [
        (0, "ok"), (1, "changed"), (3, "changed"), (4, "changed")]
    assert (tmp_path / "marker-ok").exists() and (tmp_path / "second-ok").exists()
    assert any(e["event"] == "confirmed: Go on?" for e in doc["timeline"])
    shown = opsagent("incident", "show", doc["id"], "--state-dir", state, "--json")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["outcomes"] == doc["outcomes"]


def test_a_failed_step_rolls_back_what_the_host_did(tmp_path):
    p = opsagent("remediate", _local(tmp_path, "false"), "-e", "tag=rb", "--yes",
                 "--state-dir", tmp_path / "state", "--json")
    assert p.returncode == 4, p.stderr
    doc = json.loads(p.stdout)
    assert doc["status"] == "failed" and doc["hosts"][0]["status"] == "failed"
    assert [(o["step"], o["status"]) for o in doc["outcomes"]][-2:] == [
        (4, "failed"), (1, "rolled-back")]
    assert not (tmp_path / "marker-rb").exists()  # undone
    assert (tmp_path / "second-rb").exists()  # no undo declared: left, and reported


def test_check_changes_nothing_and_says_what_would_be_done(tmp_path):
    p = opsagent("remediate", _local(tmp_path, "true"), "-e", "tag=dry", "--check",
                 "--state-dir", tmp_path / "state", "--json")
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    assert doc["check"] and doc["status"] == "checked"
    assert [o["status"] for o in doc["outcomes"]] == ["ok", "would-change", "would-change",
                                                     "would-change"]
    assert f"would run touch {tmp_path}/marker-dry" in doc["outcomes"][1]["message"]
    assert list(tmp_path.glob("marker-*")) == [] and list(tmp_path.glob("second-*")) == []


def test_a_confirm_point_without_a_terminal_or_yes_stops_there(tmp_path):
    p = opsagent("remediate", _local(tmp_path, "true"), "-e", "tag=ask",
                 "--state-dir", tmp_path / "state", "--json")
    assert p.returncode == 4
    doc = json.loads(p.stdout)
    assert doc["status"] == "aborted"
    assert (tmp_path / "marker-ask").exists() and not (tmp_path / "second-ask").exists()
    assert "needs a terminal or --yes" in p.stderr


def test_a_wrongly_typed_parameter_runs_nothing(tmp_path):
    state = tmp_path / "state"
    p = opsagent("remediate", _local(tmp_path, "true"), "-e", "tag=NOT-OK", "--yes",
                 "--state-dir", state)
    assert p.returncode == 2
    assert "params.tag: -e tag: 'NOT-OK' does not match the pattern" in p.stderr
    assert list(tmp_path.glob("marker-*")) == []
    assert not state.exists() or opsagent("incident", "list", "--state-dir", state,
                                          "--json").stdout.strip() in ("[]", "")
