"""The http probe against a real http.server in a thread (and HTTPS with a test CA)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from agent.checks.http import json_field
from agent.playbook.models.checks import CheckSpec
from tests.checks.conftest import check
from tests.harness.collector import free_port


def test_a_healthy_endpoint_reports_status_code_and_latency(http_target):
    out = check(http={"url": http_target.url("/health")})
    assert out.status == "healthy", out.message
    assert out.values["status_code"] == 200.0
    assert out.values["ok"] == 1.0
    assert 0 < out.latency_ms < 2000 and out.values["latency_ms"] == out.latency_ms
    assert f"GET {http_target.url('/health')}: 200 in" in out.message


def test_an_unexpected_status_is_unhealthy_and_an_expected_one_is_not(http_target):
    http_target.server.state["status"] = 503
    out = check(http={"url": http_target.url("/health")})
    assert out.status == "unhealthy"
    assert "status 503 (expected 200)" in out.message
    assert out.values == {"status_code": 503.0, "ok": 0.0, "latency_ms": out.latency_ms}
    out = check(http={"url": http_target.url("/health"), "expect_status": [200, 503]})
    assert out.status == "healthy", out.message


def test_body_regex(http_target):
    url = http_target.url("/health")
    assert check(http={"url": url, "expect_body": r'"version": \d+'}).status == "healthy"
    out = check(http={"url": url, "expect_body": r"maintenance"})
    assert out.status == "unhealthy"
    assert "body does not match 'maintenance'" in out.message


def test_json_fields_top_level_and_dotted(http_target):
    url = http_target.url("/health")
    ok = check(http={"url": url, "expect_json": {"status": "healthy", "db.status": "ok",
                                                  "version": 3}})
    assert ok.status == "healthy", ok.message
    http_target.server.state["db"] = "down"
    out = check(http={"url": url, "expect_json": {"status": "healthy", "db.status": "ok"}})
    assert out.status == "unhealthy"
    assert "JSON db.status is 'down' (expected 'ok')" in out.message
    out = check(http={"url": url, "expect_json": {"uptime": 1}})
    assert "JSON has no field 'uptime'" in out.message


def test_json_on_a_body_that_is_not_json(http_target):
    out = check(http={"url": http_target.url("/big"), "expect_json": {"status": "ok"}})
    assert out.status == "unhealthy"
    assert "body is not JSON (cut at 1 MiB)" in out.message


def test_json_field_lookup_rules():
    data = {"a.b": 1, "a": {"b": 2, "c": {"d": True}}}
    assert json_field(data, "a.b") == 1  # an exact top-level name wins over nesting
    assert json_field(data, "a.c.d") is True
    assert json_field(data, "a.x") is not None and json_field(data, "a.x") != 2  # missing


def test_a_bool_does_not_pass_for_a_number(http_target):
    out = check(http={"url": http_target.url("/health"), "expect_json": {"version": True}})
    assert out.status == "unhealthy"
    assert "JSON version is 3 (expected True)" in out.message


def test_method_and_headers_are_sent(http_target):
    out = check(http={"url": http_target.url("/headers"), "headers": {"X-Probe": "yes"},
                      "expect_json": {"X-Probe": "yes", "User-Agent": "opsagent-check"}})
    assert out.status == "healthy", out.message
    head = check(http={"url": http_target.url("/health"), "method": "HEAD"})
    assert head.status == "unhealthy"  # http.server answers HEAD with 501
    assert "status 501" in head.message


def test_latency_band_makes_a_slow_answer_degraded(http_target):
    out = check(http={"url": http_target.url("/slow?ms=300")}, degraded_ms=150)
    assert out.status == "degraded"
    assert out.latency_ms >= 300
    assert "(degraded_ms 150)" in out.message
    assert out.values["ok"] == 1.0


def test_timeout_is_unhealthy_within_the_timeout(http_target):
    out = check(http={"url": http_target.url("/slow?ms=3000"), "timeout": "300ms"})
    assert out.status == "unhealthy"
    assert "no answer within 0.3s" in out.message
    assert out.latency_ms < 1500


def test_connection_refused_is_unhealthy():
    port = free_port()
    out = check(http={"url": f"http://127.0.0.1:{port}/"})
    assert out.status == "unhealthy"
    assert out.message == f"127.0.0.1:{port}: Connection refused"


def test_https_verification_needs_the_private_ca(https_target, test_ca):
    url = https_target.url("/health", host="localhost")
    out = check(http={"url": url})
    assert out.status == "unhealthy"
    assert "TLS verification failed" in out.message
    assert "unable to get local issuer certificate" in out.message
    out = check(http={"url": url, "ca_file": str(test_ca.ca_file),
                      "expect_json": {"status": "healthy"}})
    assert out.status == "healthy", out.message


def test_https_without_verification(https_target):
    out = check(http={"url": https_target.url("/health"), "verify_tls": False})
    assert out.status == "healthy", out.message


def test_a_missing_ca_file_is_named(https_target, tmp_path):
    out = check(http={"url": https_target.url("/health"), "ca_file": str(tmp_path / "nope.pem")})
    assert out.status == "unhealthy"
    assert f"No such file or directory: {tmp_path / 'nope.pem'}" in out.message


def test_an_invalid_body_regex_is_refused_when_the_playbook_loads():
    with pytest.raises(ValidationError, match=r"expect_body '\(unclosed' is not a valid regex"):
        CheckSpec.model_validate({"name": "t", "http": {"url": "http://h/",
                                                        "expect_body": "(unclosed"}})
