"""The `audits:` language: port rules, one kind per audit, located errors for bad specs."""

from __future__ import annotations

import json
import re

import pytest

from agent.errors import InputError
from agent.playbook import load_playbook, schema
from agent.playbook.models.audits import AuditSpec, PortRule, parse_port_rule

LINE = re.compile(r"^(?P<file>[^:]+):(?P<line>\d+):(?P<col>\d+): (?P<path>\S+): (?P<msg>.+)$")


@pytest.mark.parametrize(("text", "rule"), [
    (80, PortRule(80)),
    ("80", PortRule(80)),
    ("80/tcp", PortRule(80, "tcp")),
    ("53/udp", PortRule(53, "udp")),
    ("udp", PortRule(None, "udp")),
    ("127.0.0.1:5432", PortRule(5432, None, "127.0.0.1")),
    ("[::1]:6379", PortRule(6379, None, "::1")),
    ("[0:0:0::1]:6379/tcp", PortRule(6379, "tcp", "::1")),
    ("0.0.0.0:443/tcp", PortRule(443, "tcp", "0.0.0.0")),
])
def test_port_rule_forms(text, rule):
    assert parse_port_rule(text) == rule
    assert parse_port_rule(str(rule)) == rule  # the text form round-trips


def test_port_rules_round_trip_through_the_model():
    spec = AuditSpec.model_validate({"name": "p", "listening_ports": {
        "allow": [22, "80/tcp", "127.0.0.1:5432", "[::1]:6379", "53/udp"]}})
    assert spec.kind == "listening_ports" and spec.interval == 3600 and spec.severity == "warning"
    dumped = spec.model_dump(mode="json")
    assert dumped["listening_ports"]["allow"] == ["22", "80/tcp", "127.0.0.1:5432",
                                                  "[::1]:6379", "53/udp"]
    assert AuditSpec.model_validate(dumped) == spec


def test_what_an_entry_covers():
    assert PortRule(22).covers("tcp", "0.0.0.0", 22)
    assert PortRule(22).covers("udp", "::", 22)
    assert not PortRule(22, "tcp").covers("udp", "0.0.0.0", 22)
    assert PortRule(None, "udp").covers("udp", "10.0.0.1", 5353)
    assert not PortRule(None, "udp").covers("tcp", "10.0.0.1", 5353)
    rule = parse_port_rule("127.0.0.1:5432")
    assert rule.covers("tcp", "127.0.0.1", 5432)
    assert not rule.covers("tcp", "0.0.0.0", 5432)
    assert parse_port_rule("[::1]:6379").covers("tcp", "0:0::1", 6379)
    assert not parse_port_rule("[::]:80").covers("tcp", "0.0.0.0", 80)


def diagnostics(tmp_path, text: str, *, schema_check: bool = True) -> list[str]:
    path = tmp_path / "pb.yaml"
    path.write_text(text)
    with pytest.raises(InputError) as exc:
        load_playbook(str(path), schema_check=schema_check)
    lines = [d.format() for d in exc.value.diagnostics]
    for line in lines:
        assert LINE.match(line), line
    return [line.split(":", 1)[1] for line in lines]


BAD = """\
name: bad
audits:
  - name: ports
    listening_ports: {allow: [22, "80/tcpx", "::1:6379", 70000, "999.1.1.1:80", "0", "[::1]"]}
  - name: two
    world_writable: {paths: [/etc]}
    certificates: {paths: [/etc/ssl]}
  - name: none
  - name: rel
    world_writable: {paths: [etc]}
  - name: fast
    interval: 10s
    listening_ports: {}
  - name: c
    certificates: {paths: [/x], within: soon}
  - name: s
    secrets_readable: {paths: [/etc], patterns: []}
  - name: typo
    world_writable: {paths: [/etc], exlude: [x]}
  - name: sev
    severity: urgent
    listening_ports: {}
"""
EXPECTED = [
    "4:35: audits[0].listening_ports.allow[1]: '80/tcpx' is not a port rule (a port (22), "
    "PORT/PROTO (53/udp), ADDR:PORT (127.0.0.1:5432; IPv6 in brackets: [::1]:6379), either "
    "with /tcp or /udp, or a protocol alone (udp))",
    "4:46: audits[0].listening_ports.allow[2]: '::1:6379' is not a port rule (an IPv6 address "
    "goes in brackets, e.g. [::1]:6379)",
    "4:58: audits[0].listening_ports.allow[3]: 70000: port 70000 is out of range (1 to 65535)",
    "4:65: audits[0].listening_ports.allow[4]: '999.1.1.1:80': '999.1.1.1' is not an IP "
    "address (a port (22), PORT/PROTO (53/udp), ADDR:PORT (127.0.0.1:5432; IPv6 in "
    "brackets: [::1]:6379), either with /tcp or /udp, or a protocol alone (udp))",
    "4:81: audits[0].listening_ports.allow[5]: '0': port 0 is out of range (1 to 65535)",
    "4:86: audits[0].listening_ports.allow[6]: '[::1]' is not a port rule",
    "5:5: audits[1]: give exactly one audit kind: world_writable, secrets_readable, "
    "listening_ports, certificates (got 2)",
    "8:5: audits[2]: give exactly one audit kind: world_writable, secrets_readable, "
    "listening_ports, certificates (got 0)",
    "10:29: audits[3].world_writable.paths: path 'etc' must be absolute (e.g. /etc)",
    "12:15: audits[4].interval: interval 10s is too short (at least 1m: audits walk trees)",
    "15:41: audits[5].certificates.within: 'soon' is not in the expected form (a duration like",
    "17:49: audits[6].secrets_readable.patterns: [] should be non-empty",
    "19:37: audits[7].world_writable.exlude: unknown field 'exlude' (did you mean 'exclude'?)",
    "21:15: audits[8].severity: 'urgent' is not allowed",
]


@pytest.mark.parametrize("schema_check", [True, False], ids=["validate", "load"])
def test_bad_specs_get_one_located_line_each(tmp_path, schema_check):
    got = diagnostics(tmp_path, BAD, schema_check=schema_check)
    assert len(got) == len(EXPECTED), "\n".join(got)
    for line, want in zip(got, EXPECTED, strict=True):
        if line.startswith(want):
            continue
        # the schema check (run on any refusal) may word one bad entry of a list (the models
        # word the others): the same place, the same expected forms
        where = want.split(": ", 1)[0]
        assert line.startswith(f"{where}: ") and \
            "is not in the expected form (a port (22), PORT/PROTO" in line, \
            f"{line}\n  expected to start with\n{want}"


def test_audit_names_are_unique_and_notifiers_must_exist(tmp_path):
    got = diagnostics(tmp_path, """\
name: x
audits:
  - {name: ports, listening_ports: {}, notify: [security]}
  - {name: ports, listening_ports: {}, notify: [secuirty, pager]}
notifiers:
  security: {webhook: {url: "https://hooks.example.com/x"}}
""")
    assert got == [
        "4:12: audits[1].name: duplicate audits name 'ports' (unique names per kind; first is "
        "audits[0])",
        "4:49: audits[1].notify[0]: no notifier named 'secuirty' (did you mean 'security'?)",
        "4:59: audits[1].notify[1]: no notifier named 'pager' (a name under notifiers: "
        "security)",
    ]


def test_a_good_playbook_loads(tmp_path):
    path = tmp_path / "pb.yaml"
    path.write_text("""\
name: audits
audits:
  - name: world-writable
    world_writable: {paths: [/etc, /usr/local/bin], exclude: ["/etc/alternatives/*"]}
  - name: secrets
    secrets_readable: {paths: [/etc/app, /srv], patterns: ["*.env", "*.key", "*.pem"]}
    severity: critical
  - name: ports
    listening_ports: {allow: [22, "80/tcp", "127.0.0.1:5432", "[::1]:6379", "53/udp"]}
    interval: 10m
    notify: [security]
  - name: certs
    certificates: {paths: ["/etc/ssl/private/*.pem", /etc/nginx/certs], within: 30d}
notifiers:
  security: {webhook: {url: "https://hooks.example.com/x"}}
""")
    pb = load_playbook(str(path)).model
    assert [a.kind for a in pb.audits] == ["world_writable", "secrets_readable",
                                           "listening_ports", "certificates"]
    assert pb.audits[0].world_writable.max_files == 200000
    assert pb.audits[3].certificates.within == 30 * 86400
    assert pb.audits[2].interval == 600


def test_the_schema_describes_audits():
    generated = schema.generate()["playbook.schema.json"]
    assert "audits" in generated["properties"]
    defs = generated["$defs"]
    for name in ("AuditSpec", "WorldWritable", "SecretsReadable", "ListeningPorts",
                 "Certificates"):
        assert name in defs, name
    items = defs["ListeningPorts"]["properties"]["allow"]["items"]
    assert items["anyOf"][0] == {"type": "integer", "minimum": 1, "maximum": 65535}
    pattern = re.compile(items["anyOf"][1]["pattern"])
    for good in ("80", "80/tcp", "udp", "127.0.0.1:5432", "[::1]:6379/udp"):
        assert pattern.search(good), good
    for bad in ("80/tcpx", "::1:6379", "x", ""):
        assert not pattern.search(bad), bad
    json.dumps(generated)
