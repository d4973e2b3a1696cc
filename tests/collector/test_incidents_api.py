"""Incident reports at the collector: stored as reports, indexed by incident id (newest
version wins), served by GET /api/v1/incidents and /api/v1/incidents/{id}; on SQLite and on
PostgreSQL."""

from __future__ import annotations

import datetime as dt

import httpx
import sqlalchemy as sa

from agent.collector import db
from agent.collector.store import Store
from agent.fleet.incidents import incident_report
from agent.report.document import IncidentDoc, utc_iso
from tests.harness.incidents import sample_incident
from tests.harness.reports import run_report

DAY2 = dt.datetime(2026, 11, 24, 10, 15, tzinfo=dt.UTC)


def _report(doc, host="ctl01", at=None):
    r = incident_report(doc, host)
    if at is not None:
        r.created_at = utc_iso(at)
    return r


def test_the_api_lists_incidents_newest_first_and_serves_each(server):
    token = server.token("ctl01")
    first, second = sample_incident(), sample_incident("INC-20261124-101500-aa01",
                                                       check=True, started=DAY2)
    r = server.post(token, [_report(first), _report(second)])
    assert r.status_code == 200 and r.json() == {"accepted": 2, "duplicates": 0}
    listed = server.get("/api/v1/incidents")
    assert [i["id"] for i in listed] == [second["id"], first["id"]]
    assert listed[0] == {
        "id": "INC-20261124-101500-aa01", "controller": "ctl01", "runbook": "web-abuse",
        "title": "Block an abusive client and restart nginx", "by": "alice@laptop",
        "check": True, "status": "checked", "started_at": "2026-11-24T10:15:00.000+00:00",
        "finished_at": "2026-11-24T10:16:00.000+00:00", "duration_s": 60.0,
        "hosts": {"total": 4, "ok": 1, "changed": 0, "failed": 1, "unreachable": 1,
                  "skipped": 0, "would_change": 1}}
    assert [i["id"] for i in server.get("/api/v1/incidents?limit=1")] == [second["id"]]
    detail = server.get(f"/api/v1/incidents/{first['id']}")
    assert {k: detail[k] for k in first} == IncidentDoc.model_validate(first).model_dump()
    assert detail["controller"] == "ctl01" and detail["reported_at"]
    assert detail["outcomes"][0]["evidence"]["logs"]["/var/log/nginx/error.log"]
    missing = httpx.get(server.url + "/api/v1/incidents/INC-nope")
    assert missing.status_code == 404 and "INC-nope" in missing.json()["detail"]
    assert httpx.get(server.url + "/api/v1/incidents?limit=0").status_code == 422
    # stored as a report like the others, once
    assert server.post(token, [_report(first)]).json()["accepted"] == 1  # a new version
    assert len(server.get("/api/v1/incidents")) == 2


def test_openapi_documents_the_incident_endpoints(server):
    spec = server.get("/openapi.json")
    assert {"/api/v1/incidents", "/api/v1/incidents/{incident}"} <= set(spec["paths"])
    detail = spec["paths"]["/api/v1/incidents/{incident}"]["get"]["responses"]
    assert detail["200"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "/IncidentDetail")
    assert "404" in detail
    listing = spec["paths"]["/api/v1/incidents"]["get"]["responses"]["200"]
    assert listing["content"]["application/json"]["schema"]["items"]["$ref"].endswith(
        "/IncidentSummary")
    report = spec["components"]["schemas"]
    assert "IncidentReport" in report and "IncidentDoc" in report


def test_a_bad_incident_report_is_refused(server):
    token = server.token("ctl01")
    body = _report(sample_incident()).model_dump(mode="json")
    body["incident"]["hosts"][0]["status"] = "pending"
    r = httpx.post(server.url + "/api/v1/reports", json={"reports": [body]},
                   headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 422
    assert ["reports", 0, "incident", "incident", "hosts", 0, "status"] in [
        e["loc"] for e in r.json()["detail"]]
    body = _report(sample_incident()).model_dump(mode="json")
    body["incident"]["surprise"] = 1  # strict: unknown fields are refused
    r = httpx.post(server.url + "/api/v1/reports", json={"reports": [body]},
                   headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 422
    assert server.get("/api/v1/incidents") == []


def test_the_newest_version_of_an_incident_wins_whatever_the_arrival_order(store):
    doc = sample_incident()
    running = dict(doc, status="running", finished_at=None)
    t0 = dt.datetime(2026, 11, 23, 9, 31, 13, tzinfo=dt.UTC).timestamp()
    old, new = _report(running, at=t0), _report(doc, at=t0 + 60)
    assert store.ingest("ctl01", [new]) == (1, 0)
    assert store.ingest("ctl01", [old]) == (1, 0)  # late: stored, but not the newest
    assert store.incident(doc["id"])["status"] == "failed"
    (listed,) = store.incidents()
    assert listed["status"] == "failed" and listed["finished_at"] is not None
    # two versions in one batch: the newer one
    other = sample_incident("INC-20261124-101500-aa01", started=DAY2)
    batch = [_report(other, at=t0 + 200), _report(dict(other, status="running"), at=t0 + 100)]
    assert store.ingest("ctl01", batch) == (2, 0)
    assert store.incident(other["id"])["status"] == "failed"
    assert store.counts()["reports"] == 4


def test_another_controller_cannot_overwrite_an_incident(store):
    doc = sample_incident()
    t0 = dt.datetime(2026, 11, 23, 9, 32, tzinfo=dt.UTC).timestamp()
    store.ingest("ctl01", [_report(doc, at=t0)])
    forged = dict(doc, by="mallory@elsewhere", status="succeeded")
    store.ingest("evil01", [_report(forged, host="evil01", at=t0 + 60)])
    got = store.incident(doc["id"])
    assert got["controller"] == "ctl01" and got["by"] == "alice@laptop"


def test_a_controller_is_a_fleet_host_only_when_it_also_runs_the_agent(store):
    store.ingest("ctl01", [_report(sample_incident())])
    assert store.hosts(stale_after=300) == [] and not store.has_host("ctl01")
    store.ingest("web01", [run_report("web01"), _report(
        sample_incident("INC-20261124-101500-aa01", started=DAY2), host="web01")])
    assert [h["name"] for h in store.hosts(stale_after=300)] == ["web01"]
    assert {i["controller"] for i in store.incidents()} == {"ctl01", "web01"}


def test_hostile_values_in_an_incident_are_data(store):
    evil = ["'; DROP TABLE incidents; --", "<script>alert(1)</script>", "x\" OR 1=1 --"]
    doc = sample_incident("INC-x_y.z:1", hosts=tuple(evil) + ("ok01",))
    doc["by"] = evil[0]
    store.ingest("ctl01", [_report(doc)])
    got = store.incident("INC-x_y.z:1")
    assert [h["name"] for h in got["hosts"]] == [*evil, "ok01"] and got["by"] == evil[0]
    assert store.incident("INC-x%") is None and store.incident("INC-x_y.z:1' OR '1'='1") is None


def test_a_version_2_database_is_upgraded_in_place(db_url, monkeypatch):
    monkeypatch.setattr(db, "MIGRATIONS", db.MIGRATIONS[:2])
    old = Store(db_url)
    old.ingest("web01", [run_report("web01")])
    with old.engine.connect() as conn:
        assert "incidents" not in sa.inspect(conn).get_table_names()
    old.close()
    monkeypatch.undo()
    new = Store(db_url)
    try:
        with new.engine.connect() as conn:
            assert "incidents" in sa.inspect(conn).get_table_names()
            versions = conn.execute(sa.select(db.migrations_table.c.version)).scalars().all()
        assert sorted(versions) == [1, 2, 3]
        new.ingest("ctl01", [_report(sample_incident())])
        assert len(new.incidents()) == 1 and new.counts()["reports"] == 2
    finally:
        new.close()
