"""The collector's storage: ingest batches idempotently, answer the API and the dashboard.

Ingest is one transaction per batch: reports are inserted ``ON CONFLICT (id) DO NOTHING``
and only the ones actually inserted fan out into changes, alerts, the per-resource latest
status and the host row — a batch sent twice (an agent killed before it saw the answer)
stores everything once. Both backends store the same rows (agent.collector.rows): SQLite
through SQLAlchemy, PostgreSQL in two round trips of psycopg's pipeline
(agent.collector.pg_ingest).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
import threading
import time
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from agent.collector import db, pg_ingest
from agent.collector.rows import HOST_STATUSES, FanOut, Row, fan_out, report_row
from agent.report.document import Report, utc_iso

HOST_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,252}$")
TOKEN_PREFIX = "oat_"
RECURRING_WINDOW_S = 3600.0  # drift repaired this often on one resource: something fights us
RECURRING_MIN = 3


class StoreError(Exception):
    pass


def token_hash(token: str) -> str:
    """Tokens are 256 random bits: a plain SHA-256 is the right hash (no guessing to slow)."""
    return hashlib.sha256(token.encode()).hexdigest()


class Store:
    def __init__(self, url: str) -> None:
        self.engine: Engine = db.make_engine(url)
        self.dialect = self.engine.dialect.name
        # SQLite has one writer: serialise ours instead of failing on lock upgrades.
        self._write_lock = threading.Lock() if self.dialect == "sqlite" else None
        db.migrate(self.engine)

    def close(self) -> None:
        self.engine.dispose()

    def open_connections(self, n: int) -> None:
        """Open ``n`` database sessions now, each having looked up our tables. A burst of
        requests just after a start otherwise waits for them all at once: new sessions
        filling their catalog caches while the first batches queue behind them."""
        if self.dialect != "postgresql":
            return
        tables = ", ".join(t.name for t in db.meta.sorted_tables)
        conns = [self.engine.connect() for _ in range(n)]
        try:
            for conn in conns:
                conn.execute(sa.text(f"SELECT 1 FROM {tables} LIMIT 0"))  # our names only
        finally:
            for conn in conns:
                conn.close()

    def _reader(self) -> Connection:
        """A connection for one read on every request: on PostgreSQL outside a transaction
        (one round trip, where BEGIN … ROLLBACK around it made three)."""
        conn = self.engine.connect()
        if self.dialect == "postgresql":
            conn = conn.execution_options(isolation_level="AUTOCOMMIT")
        return conn

    def _insert(self, table: sa.Table) -> Any:
        from sqlalchemy.dialects import postgresql, sqlite

        if self.dialect == "postgresql":
            return postgresql.insert(table)
        return sqlite.insert(table)

    # --- tokens ---------------------------------------------------------------------------

    def add_token(self, host: str) -> str:
        if not HOST_RE.match(host):
            raise StoreError(f"{host!r} is not a host name (letters, digits, '.', '_', '-')")
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        with self.engine.begin() as conn:
            conn.execute(db.tokens.insert().values(host=host, hash=token_hash(token),
                                                   created_at=time.time()))
        return token

    def revoke_tokens(self, host: str) -> int:
        with self.engine.begin() as conn:
            res = conn.execute(db.tokens.update()
                               .where(db.tokens.c.host == host, db.tokens.c.revoked_at.is_(None))
                               .values(revoked_at=time.time()))
        return int(res.rowcount)

    def list_tokens(self) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(db.tokens.c.host, db.tokens.c.created_at,
                                          db.tokens.c.revoked_at,
                                          sa.func.substr(db.tokens.c.hash, 1, 8).label("hash"))
                                .order_by(db.tokens.c.host, db.tokens.c.id)).mappings().all()
        return [dict(r) for r in rows]

    def host_of_token(self, token: str) -> str | None:
        h = token_hash(token)
        with self._reader() as conn:
            row = conn.execute(sa.select(db.tokens.c.host, db.tokens.c.hash)
                               .where(db.tokens.c.hash == h,
                                      db.tokens.c.revoked_at.is_(None))).first()
        if row is None or not hmac.compare_digest(row.hash, h):
            return None
        return str(row.host)

    # --- ingest ---------------------------------------------------------------------------

    def ingest(self, host: str, batch: Sequence[Report]) -> tuple[int, int]:
        """Store a batch from ``host``; (accepted, duplicates)."""
        if not batch:
            return 0, 0
        unique = list({r.id: r for r in batch}.values())  # a report twice in one batch
        inner_dups = len(batch) - len(unique)
        batch = unique
        now = time.time()
        rows = [report_row(r, now) for r in batch]
        if self._write_lock is None:
            accepted, dups = self._ingest(host, batch, rows, now)
        else:
            with self._write_lock:
                accepted, dups = self._ingest(host, batch, rows, now)
        return accepted, dups + inner_dups

    def _ingest(self, host: str, batch: Sequence[Report], rows: list[Row],
                now: float) -> tuple[int, int]:
        if self.dialect == "postgresql":
            new = self._ingest_pg(host, batch, rows, now)
        else:
            with self.engine.begin() as conn:
                stmt = (self._insert(db.reports).on_conflict_do_nothing(index_elements=["id"])
                        .returning(db.reports.c.id))
                new = {r for (r,) in conn.execute(stmt, rows)}
                fresh = [r for r in batch if r.id in new]
                if fresh:
                    self._write_fan_out(conn, fan_out(host, fresh, now))
        return len(new), len(batch) - len(new)

    def _ingest_pg(self, host: str, batch: Sequence[Report], rows: list[Row],
                   now: float) -> set[str]:
        import psycopg

        raw = self.engine.raw_connection()
        pg: Any = raw.driver_connection  # psycopg.Connection
        try:
            return pg_ingest.store_batch(pg, batch, rows, lambda fresh: fan_out(host, fresh, now))
        except psycopg.Error as e:  # as SQLAlchemy would have raised it
            if pg.closed:  # the server went away: so did the others in the pool
                self.engine.pool.dispose()
            raise sa.exc.DBAPIError.instance(None, None, e, psycopg.Error) from None
        finally:
            if pg.closed or pg.autocommit:  # left in an unknown state
                raw.invalidate()
            raw.close()

    def _write_fan_out(self, conn: Connection, fo: FanOut) -> None:
        if fo.blocks:
            conn.execute(db.fleet_blocks.insert(), fo.blocks)
        if fo.changes:
            conn.execute(db.changes.insert(), fo.changes)
        if fo.alerts:
            conn.execute(db.alerts.insert(), fo.alerts)
        if fo.resources:
            ins = self._insert(db.resources)
            conn.execute(ins.on_conflict_do_update(
                index_elements=["host", "kind", "name"],
                set_={c: ins.excluded[c] for c in ("playbook", "status", "message", "at")},
                where=db.resources.c.at <= ins.excluded.at), fo.resources)
        if fo.incidents:
            self._upsert_incidents(conn, fo.incidents)
        if fo.host is not None:
            self._upsert_host(conn, fo.host)

    def _upsert_incidents(self, conn: Connection, rows: list[dict[str, Any]]) -> None:
        """A newer version of an incident replaces an older one; only the controller that
        first reported an incident id may send newer versions of it."""
        ins = self._insert(db.incidents)
        t = db.incidents.c
        conn.execute(ins.on_conflict_do_update(
            index_elements=["id"],
            set_={c.name: ins.excluded[c.name] for c in db.incidents.c if c.name != "id"},
            where=sa.and_(t.host == ins.excluded.host, t.updated <= ins.excluded.updated)),
            rows)

    def _upsert_host(self, conn: Connection, row: Row) -> None:
        ins = self._insert(db.hosts)
        update = {"last_seen": ins.excluded.last_seen,
                  "agent_version": ins.excluded.agent_version}
        if row["revision"] is not None:
            update["revision"] = ins.excluded.revision
        conn.execute(ins.values(**row).on_conflict_do_update(index_elements=["name"],
                                                             set_=update))

    # --- reading --------------------------------------------------------------------------

    def fleet_blocks(self, group: str, after: int, host: str, now: float | None = None,
                     limit: int = 1000) -> list[dict[str, Any]]:
        """Blocks shared with ``group`` since ``after`` (a seq), still running, decided by
        hosts other than ``host``; oldest first, so ``after`` can follow the last one."""
        now = time.time() if now is None else now
        t = db.fleet_blocks
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(t.c.seq, t.c.addr, t.c.until, t.c.origin, t.c.rule,
                                          t.c.reason)
                                .where(t.c.grp == group, t.c.seq > after)
                                .order_by(t.c.seq).limit(limit)).mappings()
            return [{**r, "skip": r["origin"] == host or r["until"] <= now} for r in rows]

    def hosts(self, stale_after: float, now: float | None = None) -> list[dict[str, Any]]:
        """The fleet: each host's last contact, drift in the last 24 h, failing resources,
        resources whose drift keeps coming back, and whether it stopped reporting."""
        now = time.time() if now is None else now
        with self.engine.connect() as conn:
            host_rows = conn.execute(sa.select(db.hosts).order_by(db.hosts.c.name)).mappings()
            out = {r["name"]: _host_doc(r, now, stale_after) for r in host_rows}
            for name, n in conn.execute(
                    sa.select(db.resources.c.host, sa.func.count())
                    .where(db.resources.c.status == "failed").group_by(db.resources.c.host)):
                if name in out:
                    out[name]["failing"] = int(n)
            for name, n in conn.execute(
                    sa.select(db.changes.c.host, sa.func.count())
                    .where(db.changes.c.label == "corrective", db.changes.c.at >= now - 86400)
                    .group_by(db.changes.c.host)):
                if name in out:
                    out[name]["drift_24h"] = int(n)
            for row in self._recurring(conn, None, now):
                if row["host"] in out:
                    out[row["host"]]["recurring_drift"] += 1
        return list(out.values())

    def host(self, name: str, stale_after: float,
             now: float | None = None) -> dict[str, Any] | None:
        now = time.time() if now is None else now
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(db.hosts).where(db.hosts.c.name == name)
                               ).mappings().first()
            if row is None:
                return None
            doc = _host_doc(row, now, stale_after)
            res = conn.execute(sa.select(db.resources).where(db.resources.c.host == name)
                               .order_by(db.resources.c.kind, db.resources.c.name)).mappings()
            doc["resources"] = [{k: r[k] for k in ("kind", "name", "playbook", "status",
                                                   "message", "at")} for r in res]
            doc["failing"] = sum(1 for r in doc["resources"] if r["status"] == "failed")
            doc["drift_24h"] = int(conn.execute(
                sa.select(sa.func.count()).select_from(db.changes)
                .where(db.changes.c.host == name, db.changes.c.label == "corrective",
                       db.changes.c.at >= now - 86400)).scalar_one())
            doc["recurring"] = self._recurring(conn, name, now)
            doc["recurring_drift"] = len(doc["recurring"])
        return doc

    def _recurring(self, conn: Connection, host: str | None, now: float
                   ) -> list[dict[str, Any]]:
        c = db.changes.c
        q = (sa.select(c.host, c.kind, c.name, sa.func.count(sa.distinct(c.report_id)).label("n"),
                       sa.func.max(c.at).label("last"))
             .where(c.label == "corrective", c.at >= now - RECURRING_WINDOW_S)
             .group_by(c.host, c.kind, c.name)
             .having(sa.func.count(sa.distinct(c.report_id)) >= RECURRING_MIN))
        if host is not None:
            q = q.where(c.host == host)
        return [{"host": r.host, "kind": r.kind, "name": r.name, "count": int(r.n),
                 "last": float(r.last)} for r in conn.execute(q)]

    def has_host(self, name: str) -> bool:
        with self.engine.connect() as conn:
            return conn.execute(sa.select(db.hosts.c.name).where(db.hosts.c.name == name)
                                ).first() is not None

    def reports(self, host: str, limit: int = 50, before: float | None = None,
                types: Sequence[str] | None = None) -> list[dict[str, Any]]:
        q = (sa.select(db.reports.c.body).where(db.reports.c.host == host)
             .order_by(db.reports.c.created.desc()).limit(limit))
        if before is not None:
            q = q.where(db.reports.c.created < before)
        if types:
            q = q.where(db.reports.c.type.in_(list(types)))
        with self.engine.connect() as conn:
            return [json.loads(b) for (b,) in conn.execute(q)]

    def timeline(self, host: str, limit: int = 200) -> list[dict[str, Any]]:
        """Drift, remediations and failures of one host, newest first."""
        c = db.changes.c
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(c.report_id, c.kind, c.name, c.field, c.label, c.at)
                                .where(c.host == host).order_by(c.at.desc(), c.id.desc())
                                .limit(limit)).mappings().all()
        return [dict(r) for r in rows]

    def alerts(self, limit: int = 100, host: str | None = None) -> list[dict[str, Any]]:
        q = sa.select(db.alerts.c.host, db.alerts.c.key, db.alerts.c.severity,
                      db.alerts.c.message, db.alerts.c.at, db.alerts.c.report_id
                      ).order_by(db.alerts.c.at.desc()).limit(limit)
        if host is not None:
            q = q.where(db.alerts.c.host == host)
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(q).mappings()]

    def incidents(self, limit: int = 50) -> list[dict[str, Any]]:
        """Runbook runs, newest first: who ran what, when, how it went, hosts per status."""
        t = db.incidents.c
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(db.incidents).order_by(t.started.desc(), t.id.desc())
                                .limit(limit)).mappings().all()
        return [_incident_summary(r) for r in rows]

    def incident(self, ident: str) -> dict[str, Any] | None:
        """The newest version of an incident record, with the controller that sent it."""
        q = (sa.select(db.incidents.c.host, db.reports.c.body)
             .join(db.reports, db.reports.c.id == db.incidents.c.report_id)
             .where(db.incidents.c.id == ident))
        with self.engine.connect() as conn:
            row = conn.execute(q).first()
        if row is None:
            return None
        body = json.loads(row.body)
        return {**body["incident"], "controller": row.host, "reported_at": body["created_at"]}

    def counts(self) -> dict[str, int]:
        with self.engine.connect() as conn:
            return {t.name: int(conn.execute(sa.select(sa.func.count()).select_from(t))
                                .scalar_one())
                    for t in (db.hosts, db.reports, db.alerts)}


def _incident_summary(row: Any) -> dict[str, Any]:
    counts = json.loads(row["counts"])
    finished = row["finished"]
    return {"id": row["id"], "controller": row["host"], "runbook": row["runbook"],
            "title": row["title"], "by": row["operator"], "check": bool(row["dry_run"]),
            "status": row["status"], "started_at": utc_iso(row["started"]),
            "finished_at": utc_iso(finished) if finished is not None else None,
            "duration_s": None if finished is None else max(0.0, finished - row["started"]),
            "hosts": {"total": sum(counts.values()),
                      **{s.replace("-", "_"): int(counts.get(s, 0)) for s in HOST_STATUSES}}}


def _host_doc(row: Any, now: float, stale_after: float) -> dict[str, Any]:
    return {"name": row["name"], "first_seen": row["first_seen"], "last_seen": row["last_seen"],
            "agent_version": row["agent_version"], "revision": row["revision"],
            "stale": now - row["last_seen"] > stale_after, "failing": 0, "drift_24h": 0,
            "recurring_drift": 0}
