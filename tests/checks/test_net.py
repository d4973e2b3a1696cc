"""tcp and tls probes against real sockets on 127.0.0.1 and certificates the test makes."""

from __future__ import annotations

import socket

import pytest
from pydantic import ValidationError

from agent.playbook.models.checks import CheckSpec
from tests.checks.conftest import check
from tests.harness.collector import free_port
from tests.harness.tls import TlsServer


def test_tcp_open_port_is_healthy_with_latency():
    with socket.create_server(("127.0.0.1", 0)) as srv:
        port = srv.getsockname()[1]
        out = check(tcp={"host": "127.0.0.1", "port": port})
    assert out.status == "healthy", out.message
    assert out.message.startswith(f"127.0.0.1:{port}: connected in")
    assert 0 < out.latency_ms < 1000


def test_tcp_closed_port_is_unhealthy():
    port = free_port()
    out = check(tcp={"host": "127.0.0.1", "port": port})
    assert out.status == "unhealthy"
    assert out.message == f"127.0.0.1:{port}: Connection refused"
    assert out.values["ok"] == 0.0


def test_tcp_unknown_host_is_unhealthy():
    out = check(tcp={"host": "no-such-host.invalid", "port": 80})
    assert out.status == "unhealthy"
    assert out.message.startswith("no-such-host.invalid:80: ")


@pytest.fixture
def tls_server(test_ca):
    servers = []

    def serve(days_left: float):
        server = TlsServer(test_ca.issue(f"leaf{len(servers)}", days_left=days_left))
        servers.append(server)
        return server

    yield serve
    for s in servers:
        s.close()


def tls(port, ca, **fields):
    return check(tls={"host": "127.0.0.1", "port": port, "server_name": "localhost",
                      "ca_file": str(ca.ca_file), **fields})


@pytest.mark.parametrize(("days", "status", "words"), [
    (60, "healthy", "expires in 60.0 days"),
    (5, "degraded", "expires in 5.0 days"),
    (1, "unhealthy", "below critical_days 3"),
])
def test_tls_expiry_bands(tls_server, test_ca, days, status, words):
    server = tls_server(days)
    out = tls(server.port, test_ca)
    assert out.status == status, out.message
    assert words in out.message
    assert out.values["days_left"] == pytest.approx(days, abs=0.01)
    if status == "degraded":
        assert "below warn_days 14" in out.message


def test_tls_bands_are_configurable(tls_server, test_ca):
    server = tls_server(5)
    assert tls(server.port, test_ca, warn_days=4, critical_days=2).status == "healthy"
    assert tls(server.port, test_ca, warn_days=30, critical_days=10).status == "unhealthy"


def test_tls_expired_certificate_is_unhealthy_with_and_without_verification(tls_server,
                                                                            test_ca):
    server = tls_server(-2)
    verified = tls(server.port, test_ca)
    assert verified.status == "unhealthy"
    assert "TLS verification failed for localhost: certificate has expired" in verified.message
    assert verified.values["days_left"] == pytest.approx(-2, abs=0.01)
    unverified = tls(server.port, test_ca, verify=False)
    assert unverified.status == "unhealthy"
    assert "expired 2.0 days ago" in unverified.message


def test_tls_verification_failures_say_why(tls_server, test_ca):
    server = tls_server(60)
    out = check(tls={"host": "127.0.0.1", "port": server.port, "server_name": "localhost"})
    assert out.status == "unhealthy"
    assert "unable to get local issuer certificate" in out.message
    assert out.values["days_left"] == pytest.approx(60, abs=0.01)  # read without verifying
    wrong_name = tls(server.port, test_ca, server_name="example.com")
    assert wrong_name.status == "unhealthy"
    assert "Hostname mismatch" in wrong_name.message
    assert check(tls={"host": "127.0.0.1", "port": server.port, "server_name": "localhost",
                      "verify": False}).status == "healthy"


def test_tls_ip_address_host_verifies_against_the_ip_san(tls_server, test_ca):
    server = tls_server(60)
    out = check(tls={"host": "127.0.0.1", "port": server.port, "ca_file": str(test_ca.ca_file)})
    assert out.status == "healthy", out.message
    assert "certificate of 127.0.0.1" in out.message


def test_tls_closed_port_and_plain_tcp_are_unhealthy(test_ca):
    port = free_port()
    assert tls(port, test_ca).message == f"127.0.0.1:{port}: Connection refused"
    with socket.create_server(("127.0.0.1", 0)) as srv:  # listens, never speaks TLS
        out = tls(srv.getsockname()[1], test_ca, timeout="300ms")
    assert out.status == "unhealthy"
    assert "no TLS handshake within 0.3s" in out.message


def test_tls_critical_days_above_warn_days_is_refused():
    with pytest.raises(ValidationError, match="critical_days .20. must not be above warn_days"):
        CheckSpec.model_validate({"name": "t", "tls": {"host": "h", "warn_days": 10,
                                                       "critical_days": 20}})
