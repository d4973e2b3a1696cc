"""Every kind of bad input gets located one-line errors, all of them, and exit code 2."""

from __future__ import annotations

import re
import subprocess
import sys
import time

import pytest

from agent.errors import InputError
from agent.playbook import load_playbook

LINE = re.compile(r"^(?P<file>[^:]+):(?P<line>\d+):(?P<col>\d+): (?P<path>\S+): (?P<msg>.+)$")


def diagnostics(tmp_path, text: str | bytes, extra=None) -> list[str]:
    path = tmp_path / "pb.yaml"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    with pytest.raises(InputError) as exc:
        load_playbook(str(path), extra)
    lines = [d.format() for d in exc.value.diagnostics]
    for line in lines:
        assert LINE.match(line), line
        assert "\n" not in line and "Traceback" not in line
    return [line.split(":", 1)[1] for line in lines]  # drop the temp file name


CASES = [
    ("tab", "name: x\nfiles:\n\t- path: /tmp\n",
     ["3:1: (top): tab character in indentation (indent with spaces)"]),
    ("duplicate key", "name: x\nfiles: []\nname: y\n",
     ["3:1: name: duplicate key 'name' (each key once; first given at line 1)"]),
    ("unclosed bracket", "name: x\nfiles: [{path: /tmp}\nprocesses: []\n",
     ["unclosed '[' opened at 2:8"]),
    ("empty", "", ["1:1: (top): file is empty"]),
    ("only comments", "# nothing here\n\n", ["1:1: (top): file is empty"]),
    ("top-level list", "- name: web\n  hosts: all\n",
     ["1:1: (top): the top level is a list (an opsagent playbook is one mapping"]),
    ("unknown field", "name: x\nfiles:\n  - path: /tmp/a\n    mdoe: '0640'\n",
     ["4:5: files[0].mdoe: unknown field 'mdoe' (did you mean 'mode'?)"]),
    ("unknown kind", "name: x\nservice:\n  - name: nginx\n",
     ["2:1: service: unknown resource kind or field 'service' (did you mean 'services'?)"]),
    ("bad enum", "name: x\nservices:\n  - {name: nginx, state: runing}\n",
     ["3:26: services[0].state: 'runing' is not allowed (did you mean 'running'?)"]),
    ("bad duration", "name: x\nwatches:\n  - {name: w, log: /l, pattern: x, within: 5 minutes}\n",
     ["3:44: watches[0].within: '5 minutes' is not in the expected form (a duration like"]),
    ("number for duration", "name: x\nchecks:\n  - {name: c, tcp: {host: h, port: 1}, interval: 60}\n",
     ["3:50: checks[0].interval: 60 is not text (a duration like 30s"]),
    ("bad number", "name: x\nchecks:\n  - {name: c, tcp: {host: h, port: eighty}}\n",
     ["3:36: checks[0].tcp.port: 'eighty' is not a whole number"]),
    ("out of range", "name: x\nchecks:\n  - {name: c, tcp: {host: h, port: 70000}}\n",
     ["3:36: checks[0].tcp.port: 70000 is greater than the maximum of 65535"]),
    ("unquoted mode", "name: x\nfiles:\n  - {path: /tmp/a, mode: 0640}\n",
     ["3:26: files[0].mode: 416 is not text (quoted octal text like \"0640\"; YAML reads"]),
    ("bad mode", "name: x\nfiles:\n  - {path: /tmp/a, mode: '0986'}\n",
     ["3:26: files[0].mode: '0986' is not in the expected form (quoted octal text"]),
    ("bad cron", "name: x\nbackups:\n  - name: b\n    schedule: '61 2 * * *'\n"
     "    source: {paths: [/srv]}\n    destination: /b\n",
     ["4:15: backups[0].schedule: '61 2 * * *' is not a valid cron expression"]),
    ("cron fields", "name: x\nbackups:\n  - name: b\n    schedule: '0 2 * *'\n"
     "    source: {paths: [/srv]}\n    destination: /b\n",
     ["4:15: backups[0].schedule: '0 2 * *' has 4 fields (5 fields: minute hour"]),
    ("bad size", "name: x\nchecks:\n  - name: c\n    process: {match: {name: x}, max_rss: lots}\n",
     ["4:42: checks[0].process.max_rss: 'lots' is not in the expected form (a size like"]),
    ("undefined variable", "name: x\nfiles:\n  - path: '/srv/{{ app }}/a'\n",
     ["3:11: files[0].path: undefined template variable 'app' (define it under vars: or "
      "pass -e app=VALUE)"]),
    ("missing required", "name: x\nprocesses:\n  - name: w\n    start: [a]\n",
     ["3:5: processes[0]: missing required field 'match'"]),
    ("missing name", "files: []\n", ["1:1: (top): missing required field 'name'"]),
    ("unknown signal", "name: x\nprocesses:\n  - {name: w, match: {name: w}, start: [a], "
     "stop: {signal: FOO}}\n",
     ["3:60: processes[0].stop.signal: unknown signal 'FOO'"]),
    ("bad regex", "name: x\nwatches:\n  - {name: w, log: /l, pattern: 'from (?P<ip>\\S+'}\n",
     ["3:33: watches[0].pattern: invalid regex"]),
    ("key not a group", "name: x\nwatches:\n  - {name: w, log: /l, pattern: 'from (\\S+)', key: ip}\n",
     ["3:5: watches[0]: key 'ip' is not a named group of pattern"]),
    ("duplicate names", "name: x\nprocesses:\n  - {name: w, match: {name: a}, start: [a]}\n"
     "  - {name: w, match: {name: b}, start: [b]}\n",
     ["4:12: processes[1].name: duplicate processes name 'w' (unique names per kind; first is "
      "processes[0])"]),
    ("unknown notifier", "name: x\nnotifiers:\n  ops: {slack: {webhook_url_env: S}}\n"
     "thresholds:\n  - {name: t, metric: cpu.percent, above: 90, actions: [{notify: opz}]}\n",
     ["5:66: thresholds[0].actions[0].notify: no notifier named 'opz' (did you mean 'ops'?)"]),
    ("unknown handler", "name: x\nfiles:\n  - {path: /tmp/a, notify: ['services:ngnix']}\n"
     "services:\n  - {name: nginx, state: running}\n",
     ["3:29: files[0].notify[0]: no services resource named 'ngnix' (did you mean "
      "'services:nginx'?)"]),
    ("action template var", "name: x\nwatches:\n  - name: w\n    log: /l\n"
     "    pattern: 'from (?P<ip>\\S+)'\n    key: ip\n    actions: [{block_ip: {ip: '{{ addr }}'}}]\n",
     ["7:31: watches[0].actions[0].block_ip.ip: undefined template variable 'addr'"]),
    ("two actions in one", "name: x\nthresholds:\n  - {name: t, metric: cpu.percent, above: 9, "
     "actions: [{notify: a, restart: 'services:x'}]}\n",
     ["give exactly one action"]),
    ("non-UTF-8", b"name: x\nfiles:\n  - path: /tmp/\xff\n",
     ["3:16: (top): byte 0xff is not valid UTF-8 (text encoded as UTF-8)"]),
    ("two documents", "name: x\n---\nname: y\n", ["more than one YAML document"]),
    ("bad allowlist", "name: x\nallowlist: [10.0.0.0/8, not-an-ip]\n",
     ["allowlist: 'not-an-ip' is not an IP address or network"]),
    ("metric of an undeclared check", "name: x\nchecks: [{name: api, tcp: {host: h, port: 1}}]\n"
     "thresholds: [{name: t, metric: check.apii.ok, below: 1}]\n",
     ["3:32: thresholds[0].metric: no check named 'apii' (did you mean 'api'?)"]),
    ("unknown host metric", "name: x\nthresholds: [{name: t, metric: disk.usedpercent, above: 1}]\n",
     ["thresholds[0].metric: unknown metric 'disk.usedpercent' (did you mean "
      "'disk.used_percent'?)"]),
    ("hysteresis on the wrong side", "name: x\nthresholds: [{name: t, metric: cpu.percent, "
     "above: 90, clear_below: 95}]\n", ["clear_below (95) must not exceed above (90)"]),
    ("undeclared escalation", "name: x\nthresholds: [{name: t, metric: cpu.percent, above: 9, "
     "escalation: page}]\n", ["thresholds[0].escalation: no escalation policy named 'page'"]),
    ("escalation to an undeclared notifier", "name: x\nescalations:\n  p: [{after: 5m, "
     "notify: [pager]}]\n", ["3:28: escalations.p[0].notify[0]: no notifier named 'pager'"]),
    ("block_ip on a threshold", "name: x\nthresholds: [{name: t, metric: cpu.percent, "
     "above: 9, actions: [{block_ip: {ip: 1.2.3.4}}]}]\n",
     ["a threshold cannot block ip (thresholds take notify, restart or run"]),
    ("window without a zone", "name: x\nmaintenance: [{name: m, from: '2026-01-01T00:00:00', "
     "until: '2026-01-02T00:00:00Z'}]\n", ["has no time zone"]),
    ("window half recurring", "name: x\nmaintenance: [{name: m, schedule: '0 3 * * 0'}]\n",
     ["a recurring window needs both schedule and duration"]),
]


@pytest.mark.parametrize("text,expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_located(tmp_path, text, expected):
    got = diagnostics(tmp_path, text)
    for want in expected:
        assert any(want in line for line in got), f"{want!r} not in {got!r}"


def test_all_errors_of_a_file_are_reported(tmp_path):
    got = diagnostics(tmp_path, """\
name: many
files:
  - {path: /tmp/a, mode: 644, stat: file}
processes:
  - {name: w, match: {name: w}, start: [a], stop: {signal: NOPE}, start_timeout: soon}
backups:
  - {name: b, schedule: '* * *', source: {paths: [/x]}, destination: /b}
""")
    paths = {line.split(": ")[1] for line in got}
    assert {"files[0].mode", "files[0].stat", "processes[0].start_timeout",
            "processes[0].stop.signal", "backups[0].schedule"} <= paths, got


def test_alias_bomb_fails_fast_in_bounded_memory(tmp_path):
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for prev, cur in zip("abcdefgh", "bcdefghi", strict=True):
        lines.append(f"{cur}: &{cur} [" + ",".join([f"*{prev}"] * 9) + "]")
    text = "name: bomb\nvars:\n" + "".join(f"  {line}\n" for line in lines)
    path = tmp_path / "bomb.yaml"
    path.write_text(text)
    code = (
        "import resource, time, sys\n"
        "from agent.playbook import load_playbook\n"
        "from agent.errors import InputError\n"
        "t = time.monotonic()\n"
        "try:\n"
        f"    load_playbook({str(path)!r})\n"
        "except InputError as e:\n"
        "    print(e.diagnostics[0].format())\n"
        # VmHWM, not ru_maxrss: Linux carries ru_maxrss over exec from the forking parent
        "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM:')][0]\n"
        "print(time.monotonic() - t, hwm.split()[1])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=True).stdout.splitlines()
    assert "alias bomb" in out[0]
    seconds, max_rss_kib = out[1].split()
    assert float(seconds) < 10  # a billion-laughs expansion would never finish
    assert int(max_rss_kib) < 300 * 1024


def test_recursive_alias_is_refused(tmp_path):
    got = diagnostics(tmp_path, "name: x\nvars:\n  a: &a [*a]\n")
    assert any("alias" in line for line in got)


def test_oversized_file_is_refused_before_parsing(tmp_path):
    path = tmp_path / "big.yaml"
    path.write_text("name: x\nvars:\n" + "".join(f"  k{i}: {'v' * 100}\n" for i in range(50_000)))
    t = time.monotonic()
    with pytest.raises(InputError) as exc:
        load_playbook(str(path))
    assert time.monotonic() - t < 5
    assert "larger than" in exc.value.diagnostics[0].message


def test_cli_prints_errors_and_exits_2_without_traceback(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nfiles:\n  - {path: relative/path, mode: '0640'}\n")
    target = tmp_path / "never"
    good = tmp_path / "good.yaml"
    good.write_text(f"name: y\nfiles:\n  - {{path: {target}, state: directory}}\n")
    p = subprocess.run([sys.executable, "-m", "agent.cli", "apply", str(good), str(bad)],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 2
    assert "Traceback" not in p.stderr
    assert f"{bad}:3:5: files[0]: path 'relative/path' must be absolute" in p.stderr
    assert "nothing was changed" in p.stderr
    assert not target.exists()  # the valid playbook did not run either


def test_extra_vars_fill_templates(tmp_path):
    path = tmp_path / "pb.yaml"
    path.write_text("name: x\nvars: {port: 80}\nfiles:\n  - path: '/srv/{{ app }}/{{ port }}'\n")
    loaded = load_playbook(str(path), {"app": "shop", "port": 8080})
    assert loaded.model.files[0].path == "/srv/shop/8080"


def test_single_expression_keeps_its_type(tmp_path):
    path = tmp_path / "pb.yaml"
    path.write_text("name: x\nvars: {p: 5432}\nchecks:\n"
                    "  - {name: c, tcp: {host: 127.0.0.1, port: '{{ p }}'}}\n")
    assert load_playbook(str(path)).model.checks[0].tcp.port == 5432


def test_action_templates_are_left_for_run_time(tmp_path):
    path = tmp_path / "pb.yaml"
    path.write_text("name: x\nwatches:\n  - {name: w, log: /l, pattern: 'from (?P<ip>\\S+)', "
                    "key: ip, actions: [{block_ip: {ip: '{{ ip }}'}}]}\n")
    assert load_playbook(str(path)).model.watches[0].actions[0].block_ip.ip == "{{ ip }}"


def test_merge_keys_and_anchors_work(tmp_path):
    path = tmp_path / "pb.yaml"
    path.write_text("name: x\nvars:\n  base: &base {mode: '0640', owner: root}\n"
                    "files:\n  - {<<: *base, path: /tmp/a}\n  - {<<: *base, path: /tmp/b, "
                    "mode: '0600'}\n")
    files = load_playbook(str(path)).model.files
    assert [(f.mode, f.owner) for f in files] == [(0o640, "root"), (0o600, "root")]


@pytest.mark.parametrize("text", [c[1] for c in CASES], ids=[c[0] for c in CASES])
def test_fast_path_reports_exactly_what_the_schema_path_reports(tmp_path, text):
    """plan/apply skip the JSON Schema check unless the strict models refuse the document;
    they must refuse everything the schema refuses, with the same messages."""
    path = tmp_path / "pb.yaml"
    (path.write_bytes if isinstance(text, bytes) else path.write_text)(text)
    got = {}
    for schema_check in (True, False):
        with pytest.raises(InputError) as exc:
            load_playbook(str(path), schema_check=schema_check)
        got[schema_check] = [d.format() for d in exc.value.diagnostics]
    assert got[True] == got[False]


def test_strict_models_refuse_what_lax_coercion_would_accept(tmp_path):
    path = tmp_path / "pb.yaml"
    path.write_text("name: x\nchecks:\n  - {name: c, tcp: {host: h, port: '80'}}\n")
    for schema_check in (True, False):
        with pytest.raises(InputError) as exc:
            load_playbook(str(path), schema_check=schema_check)
        assert "checks[0].tcp.port: '80' is not a whole number" in exc.value.diagnostics[0].format()
