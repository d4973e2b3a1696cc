"""The collector's HTTP API end to end: a real `opsagent server` process on 127.0.0.1."""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator

import httpx

from tests.harness.collector import CollectorProc, opsagent
from tests.harness.reports import alert_report, run_report


def test_ingest_is_idempotent_and_readable_back(server):
    token = server.token("web01")
    batch = [run_report("web01", [("services", "nginx", "changed", "corrective")]),
             alert_report("web01")]
    first = server.post(token, batch)
    assert first.status_code == 200 and first.json() == {"accepted": 2, "duplicates": 0}
    again = server.post(token, batch, gzipped=False)
    assert again.json() == {"accepted": 0, "duplicates": 2}
    (host,) = server.get("/api/v1/hosts")
    assert host["name"] == "web01" and host["drift_24h"] == 1 and not host["stale"]
    detail = server.get("/api/v1/hosts/web01")
    assert detail["resources"][0]["name"] == "nginx"
    reports = server.get("/api/v1/hosts/web01/reports")
    assert sorted(r["type"] for r in reports) == ["alert", "run"]
    assert {r["id"] for r in reports} == {r.id for r in batch}
    (alert,) = server.get("/api/v1/alerts")
    assert alert["host"] == "web01" and alert["severity"] == "critical"
    assert httpx.get(server.url + "/api/v1/hosts/nope").status_code == 404


def _stored(server: CollectorProc) -> int:
    return sum(len(server.get(f"/api/v1/hosts/{h['name']}/reports?limit=500"))
               for h in server.get("/api/v1/hosts"))


def test_bad_input_gets_a_clear_4xx_and_stores_nothing(server):
    token = server.token("web01")
    other = server.token("db01")
    auth = {"Authorization": f"Bearer {token}"}
    url = server.url + "/api/v1/reports"
    good = json.loads(run_report("web01").model_dump_json())

    r = httpx.post(url, content=b'{"reports": [', headers=auth)
    assert r.status_code == 400 and "not JSON" in r.json()["detail"]
    bad = dict(good, summary={"ok": -1})
    r = httpx.post(url, json={"reports": [good, bad]}, headers=auth)
    assert r.status_code == 422
    assert ["reports", 1, "run", "summary", "ok"] in [e["loc"] for e in r.json()["detail"]]
    r = httpx.post(url, json={"reports": [dict(good, type="nonsense")]}, headers=auth)
    assert r.status_code == 422
    r = httpx.post(url, content=b"\x1f\x8b garbage", headers={**auth,
                                                             "Content-Encoding": "gzip"})
    assert r.status_code == 400
    bomb = gzip.compress(b" " * (80 << 20))  # 80 KiB on the wire, 80 MiB inflated
    r = httpx.post(url, content=bomb, headers={**auth, "Content-Encoding": "gzip"})
    assert r.status_code == 413

    def hundred_mib() -> Iterator[bytes]:  # no Content-Length: the stream itself is capped
        chunk = b"x" * (1 << 20)
        for _ in range(100):
            yield chunk

    r = httpx.post(url, content=hundred_mib(), headers=auth, timeout=60)
    assert r.status_code == 413
    r = httpx.post(url, json={"reports": [good]}, headers={"Authorization": "Bearer nope"})
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    r = httpx.post(url, json={"reports": [good]})
    assert r.status_code == 401
    r = httpx.post(url, json={"reports": [good]}, headers={"Authorization": f"Bearer {other}"})
    assert r.status_code == 403 and "db01" in r.json()["detail"]
    evil = dict(good, host="web01'; DROP TABLE reports; --")
    r = httpx.post(url, json={"reports": [evil]}, headers=auth)
    assert r.status_code == 403
    assert _stored(server) == 0

    opsagent("server", "token", "revoke", "db01", "--db", server.db)
    r = httpx.post(url, json={"reports": [dict(good, host="db01")]},
                   headers={"Authorization": f"Bearer {other}"})
    assert r.status_code == 401
    # the server is still up and serves the others
    assert server.post(token, [run_report("web01")]).json()["accepted"] == 1
    assert _stored(server) == 1


def test_openapi_and_metrics(server):
    spec = server.get("/openapi.json")
    assert {"/api/v1/reports", "/api/v1/hosts", "/api/v1/hosts/{host}",
            "/api/v1/hosts/{host}/reports", "/api/v1/alerts"} <= set(spec["paths"])
    token = server.token("web01")
    server.post(token, [run_report("web01"), alert_report("web01")])
    server.post(token, [alert_report("web01")])
    text = httpx.get(server.url + "/metrics").text
    assert 'opsagent_collector_reports_total{outcome="received",type="run"} 1.0' in text
    assert "opsagent_collector_hosts 1.0" in text
    assert "opsagent_collector_ingest_seconds_count 2.0" in text


def test_token_cli(tmp_path):
    db = str(tmp_path / "c.db")
    bad = opsagent("server", "token", "add", "no such host", "--db", db, check=False)
    assert bad.returncode == 2 and "not a host name" in bad.stderr
    token = opsagent("server", "token", "add", "web01", "--db", db).stdout.strip()
    assert token.startswith("oat_") and len(token) > 40
    listed = opsagent("server", "token", "list", "--db", db).stdout
    assert "web01" in listed and "active" in listed and token not in listed
    assert opsagent("server", "token", "revoke", "web01", "--db", db).returncode == 0
    assert "revoked" in opsagent("server", "token", "list", "--db", db).stdout
    assert opsagent("server", "token", "revoke", "web01", "--db", db, check=False
                    ).returncode == 4
