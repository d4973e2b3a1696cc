"""listening_ports on real sockets the tests open on 127.0.0.1 and ::1."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator

import psutil
import pytest

from tests.audits.conftest import ROOT, audit

ME = psutil.Process().name()


class Sockets:
    """A TCP listener on 127.0.0.1 and one on ::1, a bound UDP socket on 127.0.0.1, and
    sockets that do not accept anything: a connected UDP socket, a bound unlistened TCP one."""

    def __init__(self) -> None:
        self.tcp4 = socket.create_server(("127.0.0.1", 0))
        self.tcp6 = socket.create_server(("::1", 0), family=socket.AF_INET6)
        self.udp4 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp4.bind(("127.0.0.1", 0))
        self.connected = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.connected.connect(("127.0.0.1", self.udp4.getsockname()[1]))
        self.unlistened = socket.socket()
        self.unlistened.bind(("127.0.0.1", 0))
        self.all = [self.tcp4, self.tcp6, self.udp4, self.connected, self.unlistened]
        self.ports = {s.getsockname()[1] for s in self.all}

    @property
    def p4(self) -> int:
        return int(self.tcp4.getsockname()[1])

    @property
    def p6(self) -> int:
        return int(self.tcp6.getsockname()[1])

    @property
    def pu(self) -> int:
        return int(self.udp4.getsockname()[1])

    def close(self) -> None:
        for s in self.all:
            s.close()


@pytest.fixture
def sockets() -> Iterator[Sockets]:
    s = Sockets()
    yield s
    s.close()


def ours(result, sockets: Sockets) -> dict[str, str]:
    """subject -> detail of the findings about the test's own sockets."""
    return {f.subject: f.detail for f in result.findings
            if int(f.subject.rsplit(":", 1)[1]) in sockets.ports}


def test_unexpected_listeners_are_reported_with_address_port_protocol_and_process(sockets):
    result = audit("listening_ports", allow=[22])
    pid = os.getpid()
    assert ours(result, sockets) == {
        f"tcp/127.0.0.1:{sockets.p4}": f"tcp 127.0.0.1:{sockets.p4} listening, not in the "
                                       f"allowlist; pid {pid} ({ME})",
        f"tcp/[::1]:{sockets.p6}": f"tcp [::1]:{sockets.p6} listening, not in the allowlist; "
                                   f"pid {pid} ({ME})",
        f"udp/127.0.0.1:{sockets.pu}": f"udp 127.0.0.1:{sockets.pu} bound, receiving from "
                                       f"anyone, not in the allowlist; pid {pid} ({ME})"}
    assert {f.kind for f in result.findings} == {"listening"}
    assert {f.severity for f in result.findings} == {"warning"}


def test_the_same_findings_on_two_runs_have_the_same_keys(sockets):
    first = {f.key for f in audit("listening_ports").findings}
    second = {f.key for f in audit("listening_ports").findings}
    mine = {("t", "listening", f"tcp/127.0.0.1:{sockets.p4}")}
    assert mine <= first and mine <= second


@pytest.mark.parametrize("allow", [
    lambda s: [s.p4, s.p6, s.pu],
    lambda s: [str(s.p4), f"{s.p6}/tcp", f"{s.pu}/udp"],
    lambda s: [f"127.0.0.1:{s.p4}", f"[::1]:{s.p6}", f"127.0.0.1:{s.pu}/udp"],
    lambda s: [f"127.0.0.1:{s.p4}/tcp", f"[0:0::1]:{s.p6}/tcp", "udp"],
], ids=["ports", "port/proto", "addr:port", "addr:port/proto and a protocol"])
def test_allowlisted_sockets_are_not_reported(sockets, allow):
    assert ours(audit("listening_ports", allow=allow(sockets)), sockets) == {}


def test_an_entry_covers_its_own_address_and_protocol_only(sockets):
    allow = [f"0.0.0.0:{sockets.p4}", f"127.0.0.1:{sockets.p6}", f"{sockets.pu}/tcp"]
    assert set(ours(audit("listening_ports", allow=allow), sockets)) == {
        f"tcp/127.0.0.1:{sockets.p4}", f"tcp/[::1]:{sockets.p6}", f"udp/127.0.0.1:{sockets.pu}"}


SCRIPT = """
import json, socket, subprocess
subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
from agent.audits import run_audit
from agent.playbook.models.audits import AuditSpec
a = socket.create_server(("127.0.0.1", 8080))
b = socket.create_server(("::1", 6379), family=socket.AF_INET6)
c = socket.create_server(("0.0.0.0", 5432))
d = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM); d.bind(("::", 53))
e = socket.create_server(("0.0.0.0", 22))
spec = AuditSpec.model_validate({"name": "ports", "severity": "critical",
                                 "listening_ports": {"allow": [22, "127.0.0.1:5432"]}})
print(json.dumps(run_audit(spec).as_dict()))
"""


def test_in_a_fresh_network_namespace_the_findings_are_exactly_the_unexpected_sockets():
    p = subprocess.run(["unshare", "--net", sys.executable, "-c", SCRIPT], capture_output=True,
                       text=True, timeout=60, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert p.returncode == 0, p.stderr
    result = json.loads(p.stdout)
    assert result["error"] is None
    found = [(f["kind"], f["subject"], f["severity"]) for f in result["findings"]]
    assert found == [("listening", "tcp/0.0.0.0:5432", "critical"),
                     ("listening", "tcp/127.0.0.1:8080", "critical"),
                     ("listening", "tcp/[::1]:6379", "critical"),
                     ("listening", "udp/[::]:53", "critical")]
    for f in result["findings"]:
        assert f["detail"].endswith(")") and "pid " in f["detail"]
