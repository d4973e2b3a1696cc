"""The collector's ASGI app: the ingest and read API, /metrics, the dashboard.

``POST /api/v1/reports`` takes a batch of report documents (JSON, optionally gzip) with the
sending host's bearer token. Everything about a bad request is answered with a 4xx and a
``detail`` saying what is wrong, before anything is stored: no token or a wrong or revoked
one (401), a report about another host (403), a body over the limit (413), bytes that are
not JSON (400), documents that break schemas/report.schema.json (422).
"""

from __future__ import annotations

import os
import time
import zlib
from typing import Any

from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from pydantic import BaseModel, Field, ValidationError
from starlette.concurrency import run_in_threadpool

from agent import __version__
from agent.collector.batch import Batch, validate_batch
from agent.collector.store import Store
from agent.report.document import IncidentDoc, IncidentStatus, Report

MAX_BODY = 32 << 20  # bytes on the wire
MAX_INFLATED = 64 << 20  # bytes after gzip


class IngestAnswer(BaseModel):
    accepted: int = Field(description="Reports stored by this request.")
    duplicates: int = Field(description="Reports already stored (a re-sent batch).")


class FleetBlock(BaseModel):
    seq: int
    addr: str = Field(description="Address or network to block.")
    until: float = Field(description="When the block ends, epoch seconds.")
    origin: str = Field(description="The host that decided it.")
    rule: str
    reason: str


class FleetBlocks(BaseModel):
    last: int = Field(description="Pass as `after` next time.")
    blocks: list[FleetBlock]


class Problem(BaseModel):
    detail: Any


class HostSummary(BaseModel):
    name: str
    first_seen: float
    last_seen: float
    agent_version: str
    revision: str | None
    stale: bool = Field(description="Stopped reporting: nothing for longer than stale_after.")
    failing: int = Field(description="Resources whose latest status is failed.")
    drift_24h: int = Field(description="Corrective changes in the last 24 hours.")
    recurring_drift: int = Field(description="Resources repaired again and again in the last "
                                 "hour: something on the host fights the agent.")


class ResourceState(BaseModel):
    kind: str
    name: str
    playbook: str
    status: str
    message: str
    at: float


class Recurring(BaseModel):
    host: str
    kind: str
    name: str
    count: int
    last: float


class HostDetail(HostSummary):
    resources: list[ResourceState]
    recurring: list[Recurring]


class AlertEvent(BaseModel):
    host: str
    key: str
    severity: str
    message: str
    at: float
    report_id: str


class HostCounts(BaseModel):
    total: int = Field(description="Hosts the run targeted.")
    ok: int = Field(description="Already right: nothing to change.")
    changed: int
    failed: int
    unreachable: int
    skipped: int
    would_change: int = Field(description="A dry run found work to do.")


class IncidentSummary(BaseModel):
    id: str = Field(examples=["INC-20261123-093112-3f2a"])
    controller: str = Field(description="The host the run was started from (it reported it).")
    runbook: str
    title: str
    by: str = Field(description="The operator, user@controller.")
    check: bool = Field(description="A dry run: nothing was changed.")
    status: IncidentStatus
    started_at: str = Field(description="ISO 8601 UTC.")
    finished_at: str | None = Field(description="ISO 8601 UTC; null while running.")
    duration_s: float | None
    hosts: HostCounts


class IncidentDetail(IncidentDoc):
    """The newest version of an incident record the controller sent."""

    controller: str = Field(description="The host the run was started from (it reported it).")
    reported_at: str = Field(description="When the controller wrote this version, ISO 8601.")


_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": Problem, "description": text} for code, text in (
        (400, "Not JSON, or not gzip when it says so."),
        (401, "No bearer token, or a wrong or revoked one."),
        (403, "A report about another host than the token's."),
        (413, "Body over the size limit."),
        (422, "Documents that break the report schema."))}


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.reports = Counter("opsagent_collector_reports", "Reports received",
                               ["type", "outcome"], registry=r)
        self.rejected = Counter("opsagent_collector_requests_rejected",
                                "Ingest requests refused", ["status"], registry=r)
        self.ingest = Histogram("opsagent_collector_ingest_seconds",
                                "Time to store one ingest batch", registry=r,
                                buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5))
        self.hosts = Gauge("opsagent_collector_hosts", "Hosts known", registry=r)
        self.stale = Gauge("opsagent_collector_hosts_stale", "Hosts that stopped reporting",
                           registry=r)
        self.failing = Gauge("opsagent_collector_resources_failing",
                             "Resources whose latest status is failed", registry=r)


def create_app(store: Store, *, stale_after: float = 300.0) -> FastAPI:
    app = FastAPI(title="opsagent collector", version=__version__,
                  description="Reports from opsagent hosts: drift, remediations, alerts.")
    metrics = Metrics()
    app.state.store = store
    app.state.metrics = metrics
    app.state.stale_after = stale_after

    def refuse(status: int, detail: Any) -> HTTPException:
        metrics.rejected.labels(str(status)).inc()
        headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
        return HTTPException(status, detail, headers=headers)

    @app.post("/api/v1/reports", response_model=IngestAnswer, responses=_ERRORS,
              openapi_extra={"requestBody": {"required": True, "content": {
                  "application/json": {"schema": Batch.model_json_schema(
                      ref_template="#/components/schemas/{model}")}}}},
              summary="Store a batch of report documents (idempotent by report id)")
    async def ingest(request: Request) -> IngestAnswer:
        host = await run_in_threadpool(_authenticate, store, request)
        if host is None:
            raise refuse(401, "a valid bearer token for this host is required")
        body = await _read_body(request, refuse)
        accepted, dups = await run_in_threadpool(store_batch, host, body)
        return IngestAnswer(accepted=accepted, duplicates=dups)

    def store_batch(host: str, body: bytes) -> tuple[int, int]:
        """Validate and store, in one trip to a worker thread (validation holds the GIL
        wherever it runs; a second hop would only add a thread switch)."""
        try:
            reports = validate_batch(body)
        except ValidationError as e:
            if any(err["type"] == "json_invalid" for err in e.errors()):
                raise refuse(400, "the body is not JSON: " + e.errors()[0]["msg"]) from None
            raise refuse(422, _located(e)) from None
        strangers = sorted({r.host for r in reports if r.host != host})
        if strangers:
            raise refuse(403, f"this token is {host}'s; the batch holds reports about "
                         + ", ".join(strangers[:5]))
        t0 = time.perf_counter()
        accepted, dups = store.ingest(host, reports)
        metrics.ingest.observe(time.perf_counter() - t0)
        if accepted or dups:
            by_type: dict[str, int] = {}
            for r in reports:
                by_type[r.type] = by_type.get(r.type, 0) + 1
            for t, n in by_type.items():
                metrics.reports.labels(t, "received").inc(n)
            metrics.reports.labels("all", "duplicate").inc(dups)
        return accepted, dups

    @app.get("/api/v1/hosts", response_model=list[HostSummary], summary="The fleet")
    def list_hosts() -> list[dict[str, Any]]:
        return store.hosts(stale_after)

    @app.get("/api/v1/hosts/{host}", response_model=HostDetail,
             responses={404: {"model": Problem}}, summary="One host and its resources")
    def get_host(host: str) -> dict[str, Any]:
        doc = store.host(host, stale_after)
        if doc is None:
            raise HTTPException(404, f"no host {host!r} has reported")
        return doc

    @app.get("/api/v1/hosts/{host}/reports", response_model=list[Report],
             responses={404: {"model": Problem}}, summary="A host's reports, newest first")
    def host_reports(host: str, limit: int = Query(50, ge=1, le=500),
                     before: float | None = Query(None, description="epoch seconds"),
                     ) -> list[dict[str, Any]]:
        if not store.has_host(host):  # a plain lookup, not the whole host document
            raise HTTPException(404, f"no host {host!r} has reported")
        return store.reports(host, limit=limit, before=before)

    @app.get("/api/v1/alerts", response_model=list[AlertEvent], summary="Alert events")
    def list_alerts(limit: int = Query(100, ge=1, le=1000),
                    host: str | None = None) -> list[dict[str, Any]]:
        return store.alerts(limit=limit, host=host)

    @app.get("/api/v1/incidents", response_model=list[IncidentSummary],
             summary="Runbook runs (incident records), newest first")
    def list_incidents(limit: int = Query(50, ge=1, le=1000)) -> list[dict[str, Any]]:
        return store.incidents(limit=limit)

    @app.get("/api/v1/incidents/{incident}", response_model=IncidentDetail,
             responses={404: {"model": Problem}},
             summary="One incident record: hosts, each step's outcome, timeline, evidence")
    def get_incident(incident: str) -> dict[str, Any]:
        doc = store.incident(incident)
        if doc is None:
            raise HTTPException(404, f"no incident {incident!r} has been reported")
        return doc

    @app.get("/api/v1/blocks", response_model=FleetBlocks, responses=_ERRORS,
             summary="Blocks shared with the caller's group (opt-in fleet-wide blocking)")
    async def fleet_blocks(request: Request,
                           group: str = Query(pattern=r"^[A-Za-z0-9_.-]{1,64}$"),
                           after: int = Query(0, ge=0, le=2**63 - 1)) -> dict[str, Any]:
        host = await run_in_threadpool(_authenticate, store, request)
        if host is None:
            raise refuse(401, "a valid bearer token for this host is required")
        rows = await run_in_threadpool(store.fleet_blocks, group, after, host)
        return {"last": rows[-1]["seq"] if rows else after,
                "blocks": [r for r in rows if not r.pop("skip")]}

    @app.get("/metrics", include_in_schema=False)
    def prometheus() -> Response:
        fleet = store.hosts(stale_after)
        metrics.hosts.set(len(fleet))
        metrics.stale.set(sum(1 for h in fleet if h["stale"]))
        metrics.failing.set(sum(h["failing"] for h in fleet))
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> JSONResponse:
        return JSONResponse({"ok": True, "version": __version__})

    from agent.collector.dashboard import add_dashboard

    add_dashboard(app, store, stale_after=stale_after)
    return app


def _authenticate(store: Store, request: Request) -> str | None:
    auth = request.headers.get("authorization", "")
    scheme, _, token = auth.partition(" ")
    if scheme.lower() != "bearer" or not token.strip() or len(token) > 512:
        return None
    return store.host_of_token(token.strip())


async def _read_body(request: Request, refuse: Any) -> bytes:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > MAX_BODY:
        raise refuse(413, f"the body is {int(declared)} bytes; at most {MAX_BODY} are taken")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY:
            raise refuse(413, f"the body is over {MAX_BODY} bytes")
        chunks.append(chunk)
    body = b"".join(chunks)
    encoding = request.headers.get("content-encoding", "identity").lower()
    if encoding == "gzip":
        inflater = zlib.decompressobj(wbits=31)
        try:
            body = inflater.decompress(body, MAX_INFLATED)
        except zlib.error as e:
            raise refuse(400, f"the body is not gzip: {e}") from None
        if inflater.unconsumed_tail:
            raise refuse(413, f"the body inflates to over {MAX_INFLATED} bytes")
    elif encoding != "identity":
        raise refuse(400, f"Content-Encoding {encoding!r} is not taken (gzip or none)")
    return body


def _located(e: ValidationError) -> list[dict[str, Any]]:
    """Pydantic's errors, each with its location in the batch and without the input echo."""
    return [{"loc": list(err["loc"]), "msg": err["msg"], "type": err["type"]}
            for err in e.errors(include_url=False, include_input=False)[:50]]


def app_from_env() -> FastAPI:
    """The factory uvicorn's worker processes call (``opsagent server --workers N``)."""
    import gc

    store = Store(os.environ["OPSAGENT_COLLECTOR_DB"])
    store.open_connections(4)
    # A batch makes tens of thousands of short-lived objects and no cycles to speak of: the
    # default thresholds ran the collector every few hundred reports (~15 % of ingest time).
    gc.freeze()
    gc.set_threshold(50_000, 50, 100)
    return create_app(store, stale_after=float(os.environ.get("OPSAGENT_STALE_AFTER", "300")))
