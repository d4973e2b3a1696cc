"""Property-based API testing: schemathesis generates requests from /openapi.json (valid and
invalid bodies, odd path and query values) against a real collector; every answer must be
documented, match its schema, and never be a 5xx."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.fleet.incidents import incident_report
from tests.harness.collector import CollectorProc
from tests.harness.incidents import sample_incident
from tests.harness.reports import alert_report, run_report

OPERATIONS = [("POST", "/api/v1/reports"), ("GET", "/api/v1/hosts"),
              ("GET", "/api/v1/hosts/{host}"), ("GET", "/api/v1/hosts/{host}/reports"),
              ("GET", "/api/v1/alerts"), ("GET", "/api/v1/blocks"),
              ("GET", "/api/v1/incidents"), ("GET", "/api/v1/incidents/{incident}")]


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[CollectorProc, str]]:
    root: Path = tmp_path_factory.mktemp("fuzz")
    proc = CollectorProc(str(root / "c.db"), root / "server.log").start()
    token = proc.token("web01")
    proc.post(token, [run_report("web01", [("services", "nginx", "changed", "corrective")]),
                      alert_report("web01"), incident_report(sample_incident(), "web01")])
    try:
        yield proc, token
    finally:
        proc.stop()


def test_every_api_operation_is_fuzzed(fuzzed):
    proc, _ = fuzzed
    schema = schemathesis.openapi.from_url(proc.url + "/openapi.json")
    found = {(r.ok().method.upper(), r.ok().path) for r in schema.get_all_operations()}
    assert found == set(OPERATIONS)


@pytest.mark.parametrize(("method", "path"), OPERATIONS)
def test_api_conforms_to_its_openapi(fuzzed, method, path):
    proc, token = fuzzed
    schema = schemathesis.openapi.from_url(proc.url + "/openapi.json")
    (op,) = [r.ok() for r in schema.get_all_operations()
             if r.ok().method.upper() == method and r.ok().path == path]
    seen: list[int] = []

    @given(data=st.data())
    @settings(max_examples=40, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    def check(data: st.DataObject) -> None:
        case = data.draw(op.as_strategy())
        case.headers = {**(case.headers or {}), "Authorization": f"Bearer {token}"}
        response = case.call(base_url=proc.url)
        seen.append(response.status_code)
        assert response.status_code < 500, response.text
        case.validate_response(response)

    check()
    assert seen, "no request was generated"
    assert proc.proc is not None and proc.proc.poll() is None  # still serving
