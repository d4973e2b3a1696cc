"""Incident records: every runbook run is recorded under an incident id, kept on the
controller and reported to the collector.

The record is a plain JSON document (the shape of agent.report.document.IncidentDoc) that
agent.fleet.orchestrate builds as the run goes. ``record_incident`` keeps it in the
controller's state.db first, then queues an ``incident`` report in the agent's durable
outbox and, when a collector is configured, tries to deliver it for a few seconds; what is
not delivered stays in the outbox for the agent service (``opsagent run``), or for the next
``record_incident``, to send. Recording the same incident again (it progressed) replaces
the local copy and queues a new report; the collector keeps the newest.
"""

from __future__ import annotations

import builtins
import datetime as dt
import json
import logging
import secrets
import sqlite3
import time
from typing import Any

from agent import statedb
from agent.errors import InternalError, UsageError

log = logging.getLogger("opsagent.incidents")

# The table lives next to the others in state.db; created here, on first use, so the
# incident records stay one module.
_SCHEMA = """
CREATE TABLE IF NOT EXISTS incidents (
    id TEXT PRIMARY KEY, started REAL NOT NULL, status TEXT NOT NULL, doc TEXT NOT NULL,
    saved REAL NOT NULL);
CREATE INDEX IF NOT EXISTS incidents_started ON incidents (started);
"""

SENT = "sent to the collector"
QUEUED = "queued: the collector did not answer; `opsagent run` delivers it"
LOCAL = "kept locally (no collector configured)"


def new_incident_id(now: float | dt.datetime) -> str:
    """``INC-YYYYMMDD-HHMMSS-xxxx``: the UTC start time, then 16 random bits."""
    when = now if isinstance(now, dt.datetime) else dt.datetime.fromtimestamp(now, dt.UTC)
    when = when.astimezone(dt.UTC) if when.tzinfo else when
    return f"INC-{when:%Y%m%d-%H%M%S}-{secrets.token_hex(2)}"


def epoch_of(iso: str | None) -> float | None:
    """An ISO 8601 time (``Z`` or an offset; naive is taken as UTC) as epoch seconds."""
    if not iso:
        return None
    try:
        t = dt.datetime.fromisoformat(iso.replace("Z", "+00:00"))
    except ValueError:
        return None
    return (t if t.tzinfo else t.replace(tzinfo=dt.UTC)).timestamp()


class IncidentStore:
    """Incident records in ``STATE_DIR/state.db`` (table ``incidents``), by id."""

    def __init__(self, state_dir: str) -> None:
        self.state_dir = state_dir

    def save(self, doc: dict[str, Any]) -> None:
        """Insert the record, or replace the one with its id."""
        ident = doc.get("id")
        if not isinstance(ident, str) or not ident:
            raise InternalError("an incident record needs an id")
        started = epoch_of(doc.get("started_at"))
        body = json.dumps(doc, default=str)
        with statedb.connect(self.state_dir) as db:
            assert db is not None
            db.execute("PRAGMA synchronous=FULL")  # the record outlives a power cut
            db.executescript(_SCHEMA)
            with statedb.transaction(db):
                db.execute("INSERT INTO incidents (id, started, status, doc, saved) "
                           "VALUES (?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET "
                           "started = excluded.started, status = excluded.status, "
                           "doc = excluded.doc, saved = excluded.saved",
                           (ident, time.time() if started is None else started,
                            str(doc.get("status", "")), body, time.time()))

    def get(self, ident: str) -> dict[str, Any] | None:
        """The record with this id, or with the one id starting with it; None when there is
        none. UsageError when the prefix is ambiguous."""
        rows = self._query("SELECT id, doc FROM incidents WHERE id = ?", (ident,))
        if not rows and ident:
            rows = self._query("SELECT id, doc FROM incidents WHERE substr(id, 1, ?) = ? "
                               "ORDER BY started DESC LIMIT 6", (len(ident), ident))
        if len(rows) > 1:
            names = ", ".join(r[0] for r in rows[:5])
            raise UsageError(f"{ident!r} is the start of several incident ids ({names}"
                             f"{', …' if len(rows) > 5 else ''}): give more of it")
        return json.loads(rows[0][1]) if rows else None

    def list(self, limit: int = 50) -> builtins.list[dict[str, Any]]:
        """The newest ``limit`` records, newest first."""
        rows = self._query("SELECT id, doc FROM incidents ORDER BY started DESC, saved DESC "
                           "LIMIT ?", (limit,))
        return [json.loads(doc) for _, doc in rows]

    def _query(self, sql: str, args: tuple[Any, ...]) -> builtins.list[tuple[str, str]]:
        with statedb.connect(self.state_dir, create=False) as db:
            if db is None:  # no state.db yet: no incidents, and a read creates nothing
                return []
            try:
                return [(str(a), str(b)) for a, b in db.execute(sql, args)]
            except sqlite3.OperationalError as e:
                if "no such table" in str(e):
                    return []
                raise


def incident_report(doc: dict[str, Any], host: str) -> Any:
    """The ``incident`` report document of a record, sent by ``host`` (the controller).
    InternalError when the record breaks the report schema (a bug in whoever built it)."""
    from pydantic import ValidationError

    from agent import __version__
    from agent.report.document import IncidentDoc, IncidentReport

    try:
        return IncidentReport(host=host, agent_version=__version__,
                              incident=IncidentDoc.model_validate(doc))
    except ValidationError as e:
        first = e.errors(include_url=False, include_input=False)[:3]
        where = "; ".join(f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in first)
        raise InternalError(f"incident {doc.get('id')} is saved locally, but it breaks the "
                            f"report schema: {where}") from None


def record_incident(doc: dict[str, Any], state_dir: str, cfg: Any, *,
                    flush_timeout: float = 5.0) -> str:
    """Keep the record in state.db, queue its report and, with a collector configured, try
    to deliver it within ``flush_timeout`` seconds; a one-line note of where it went.

    ``cfg`` is the controller's agent.service.config.AgentConfig, or None. Without a
    collector nothing is queued (as the agent service does: an outbox nobody sends only
    fills up); the record stays in state.db for ``opsagent incident``.
    """
    import socket

    IncidentStore(state_dir).save(doc)
    collector = getattr(cfg, "collector", None)
    host = getattr(cfg, "host", None) or socket.gethostname()
    report = incident_report(doc, host)
    if collector is None:
        return LOCAL
    from agent import __version__
    from agent.report.outbox import Outbox
    from agent.report.sender import Sender

    outbox = Outbox(state_dir, host, __version__, cap_bytes=int(collector.outbox_max))
    outbox.put(report)
    sender = Sender(outbox, collector.url, collector.token_file, ca_file=collector.ca_file,
                    cert_file=collector.cert_file, key_file=collector.key_file,
                    batch_size=collector.batch_size,
                    timeout=max(0.5, min(10.0, flush_timeout)))
    try:
        sender.flush(flush_timeout)
    finally:
        sender.stop()
    where = _where(state_dir, report.id)
    if where == "outbox":
        log.warning("incident %s: not delivered yet (%s); it waits in the outbox",
                    doc.get("id"), sender.last_error or "timed out")
        return QUEUED
    if where == "parked":
        return ("kept locally: the collector refused the report (`opsagent status` shows "
                "why)")
    return SENT


def _where(state_dir: str, report_id: str) -> str | None:
    """"outbox" while the report waits (the flush may have stopped at its time limit with
    older reports still ahead of ours), "parked" when the collector refused it, else None."""
    with statedb.connect(state_dir, create=False) as db:
        if db is None:
            return None
        for table in ("outbox", "outbox_parked"):
            if db.execute(f"SELECT 1 FROM {table} WHERE id = ?", (report_id,)).fetchone():
                return "outbox" if table == "outbox" else "parked"
    return None
