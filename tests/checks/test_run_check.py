"""run_check: dispatch, crash containment, latency bands, optional, the values it adds."""

from __future__ import annotations

import subprocess
import sys

from agent.checks import one_line
from tests.checks.conftest import check
from tests.harness.collector import free_port


def test_latency_bands(http_target):
    url = http_target.url("/slow?ms=250")
    fast = check(http={"url": http_target.url("/health")}, degraded_ms=200, unhealthy_ms=400)
    assert fast.status == "healthy", fast.message
    slow = check(http={"url": url}, degraded_ms=100, unhealthy_ms=200)
    assert slow.status == "unhealthy"
    assert slow.message.endswith(f"took {slow.latency_ms:.0f} ms (unhealthy_ms 200)")
    assert slow.values["ok"] == 0.0 and slow.values["latency_ms"] >= 250
    middle = check(http={"url": url}, degraded_ms=100, unhealthy_ms=5000)
    assert middle.status == "degraded" and "(degraded_ms 100)" in middle.message


def test_a_failed_probe_keeps_its_own_message_whatever_its_latency():
    port = free_port()
    out = check(tcp={"host": "127.0.0.1", "port": port}, degraded_ms=0)
    assert out.status == "unhealthy"
    assert out.message == f"127.0.0.1:{port}: Connection refused"


def test_optional_turns_unhealthy_into_degraded():
    port = free_port()
    out = check(tcp={"host": "127.0.0.1", "port": port}, optional=True)
    assert out.status == "degraded"
    assert out.message.endswith("Connection refused (optional: counted as degraded)")
    assert out.values["ok"] == 1.0


def test_an_exception_from_a_probe_is_an_unhealthy_outcome():
    out = check(http={"url": "http://127.0.0.1:notaport/"})
    assert out.status == "unhealthy"
    assert out.message.startswith("http probe failed: ValueError: Port could not be cast")
    assert out.values["ok"] == 0.0
    assert out.latency_ms is not None  # measured by run_check


def test_latency_is_measured_for_probes_that_do_not_measure_it():
    out = check(memory={"max_percent": 100})
    assert out.latency_ms is not None and 0 <= out.latency_ms < 1000
    assert out.values["latency_ms"] == out.latency_ms and out.values["ok"] == 1.0


def test_one_line_messages():
    assert one_line("a\n\tb   c\n") == "a b c"
    assert one_line("x" * 400) == "x" * 299 + "…"


def test_loading_a_check_does_not_import_probe_libraries():
    code = ("import sys; from agent.playbook.models.checks import CheckSpec; import agent.checks;"
            "CheckSpec.model_validate({'name': 'a', 'tls': {'host': 'h'}});"
            "heavy = [m for m in ('psycopg', 'redis', 'docker', 'cryptography', 'dbus_fast')"
            " if m in sys.modules]; print(heavy)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert res.stdout.strip() == "[]"


def test_the_first_run_does_not_count_importing_the_probe_as_latency():
    code = ("import time; from agent.checks import run_check;"
            "from agent.playbook.models.checks import CheckSpec;"
            "s = CheckSpec.model_validate({'name': 'a', 'disk': {'path': '/'}});"
            "t = time.monotonic(); o = run_check(s);"
            "print(o.latency_ms, (time.monotonic() - t) * 1000)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    latency, wall = map(float, res.stdout.split())
    assert latency < wall / 2  # the import of agent.checks.system and psutil took the rest
