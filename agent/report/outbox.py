"""The durable outbox: every report is written here, in state.db, before anything is sent.

Writes use ``synchronous=FULL`` (the report survives a power cut, not just a crash of the
agent). The outbox is capped: past ``cap_bytes`` the oldest non-critical reports (plain
all-ok runs) go first, critical ones (changes, failures, alerts, revisions, drops) only when
nothing else is left — and every drop becomes a ``dropped`` report itself, in the same
transaction, so the collector learns what it will never see.
"""

from __future__ import annotations

import json
import sqlite3
import time
from typing import Any

from agent import statedb
from agent.report.document import DroppedDoc, DroppedReport, utc_iso


def _critical(report: Any) -> bool:
    return report.type != "run" or bool(report.critical)


def _gib(n: int) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


class Outbox:
    def __init__(self, state_dir: str, host: str, agent_version: str,
                 cap_bytes: int = 1 << 30) -> None:
        self.state_dir = state_dir
        self.host = host
        self.agent_version = agent_version
        self.cap_bytes = cap_bytes
        # seqs of the batch the sender has out (one sender per outbox, one batch at a time):
        # a drop notice in flight is never amended, a new one is written instead
        self._inflight: set[int] = set()

    def put(self, report: Any) -> None:
        self.put_many([report])

    def put_many(self, reports: list[Any]) -> None:
        rows = []
        for r in reports:
            body = r.model_dump_json().encode()
            rows.append((r.id, r.type, int(_critical(r)), time.time(), len(body), body))
        with statedb.connect(self.state_dir) as db:
            assert db is not None
            db.execute("PRAGMA synchronous=FULL")
            with statedb.transaction(db):
                db.executemany("INSERT OR IGNORE INTO outbox (id, type, critical, created, size,"
                               " body) VALUES (?, ?, ?, ?, ?, ?)", rows)
                self._enforce_cap(db)

    def _total(self, db: sqlite3.Connection) -> int:
        return int(db.execute("SELECT COALESCE(SUM(size), 0) FROM outbox").fetchone()[0])

    def _enforce_cap(self, db: sqlite3.Connection) -> None:
        total = self._total(db)
        if total <= self.cap_bytes:
            return
        dropped: list[tuple[int, str, float, int]] = []
        for critical in (0, 1):
            if total <= self.cap_bytes:
                break
            for seq, typ, created, size in db.execute(
                    "SELECT seq, type, created, size FROM outbox WHERE critical = ? AND "
                    "type != 'dropped' ORDER BY seq", (critical,)).fetchall():
                if total <= self.cap_bytes:
                    break
                dropped.append((seq, typ, created, size))
                total -= size
        db.executemany("DELETE FROM outbox WHERE seq = ?", [(d[0],) for d in dropped])
        if not dropped:
            return
        by_type: dict[str, int] = {}
        for _, typ, _, _ in dropped:
            by_type[typ] = by_type.get(typ, 0) + 1
        doc = DroppedDoc(
            count=len(dropped), bytes=sum(d[3] for d in dropped),
            oldest=utc_iso(min(d[2] for d in dropped)),
            newest=utc_iso(max(d[2] for d in dropped)), by_type=by_type,
            reason=f"the outbox was over its cap of {_gib(self.cap_bytes)} (the collector "
            "unreachable for long); the oldest reports were dropped, plain all-ok runs first")
        self._note_drop(db, doc)
        db.execute("INSERT INTO outbox_meta (key, value) VALUES ('dropped_total', ?) "
                   "ON CONFLICT (key) DO UPDATE SET value = value + excluded.value",
                   (len(dropped),))

    def _note_drop(self, db: sqlite3.Connection, doc: DroppedDoc) -> None:
        """One drop notice waiting to be sent, amended by later drops (unless in flight)."""
        row = db.execute("SELECT seq, body FROM outbox WHERE type = 'dropped' ORDER BY seq "
                         "DESC LIMIT 1").fetchone()
        if row is not None and row[0] not in self._inflight:
            note = DroppedReport.model_validate_json(row[1])
            d = note.dropped
            by_type = dict(d.by_type)
            for k, n in doc.by_type.items():
                by_type[k] = by_type.get(k, 0) + n
            note.dropped = d.model_copy(update={
                "count": d.count + doc.count, "bytes": d.bytes + doc.bytes,
                "oldest": min(d.oldest, doc.oldest), "newest": max(d.newest, doc.newest),
                "by_type": by_type})
            body = note.model_dump_json().encode()
            db.execute("UPDATE outbox SET body = ?, size = ? WHERE seq = ?",
                       (body, len(body), row[0]))
            return
        note = DroppedReport(host=self.host, agent_version=self.agent_version, dropped=doc)
        body = note.model_dump_json().encode()
        db.execute("INSERT INTO outbox (id, type, critical, created, size, body) "
                   "VALUES (?, 'dropped', 1, ?, ?, ?)", (note.id, time.time(), len(body), body))

    def peek(self, limit: int, max_bytes: int) -> list[tuple[int, bytes]]:
        """The oldest reports, at most ``limit`` and about ``max_bytes`` (at least one)."""
        with statedb.connect(self.state_dir, create=False) as db:
            if db is None:
                return []
            out: list[tuple[int, bytes]] = []
            size = 0
            for seq, body in db.execute("SELECT seq, body FROM outbox ORDER BY seq LIMIT ?",
                                        (limit,)):
                if out and size + len(body) > max_bytes:
                    break
                out.append((seq, bytes(body)))
                size += len(body)
        self._inflight = {seq for seq, _ in out}
        return out

    def ack(self, seqs: list[int]) -> None:
        if not seqs:
            return
        with statedb.connect(self.state_dir) as db:
            assert db is not None
            db.execute("PRAGMA synchronous=FULL")
            with statedb.transaction(db):
                db.executemany("DELETE FROM outbox WHERE seq = ?", [(s,) for s in seqs])

    def park(self, seq: int, reason: str) -> None:
        """Set aside a report the collector refuses as invalid: kept, visible, not retried."""
        with statedb.connect(self.state_dir) as db:
            assert db is not None
            with statedb.transaction(db):
                db.execute("INSERT OR REPLACE INTO outbox_parked (seq, id, type, critical, "
                           "created, size, body, reason, parked_at) SELECT seq, id, type, "
                           "critical, created, size, body, ?, ? FROM outbox WHERE seq = ?",
                           (reason[:2000], time.time(), seq))
                db.execute("DELETE FROM outbox WHERE seq = ?", (seq,))

    def stats(self) -> dict[str, Any]:
        with statedb.connect(self.state_dir, create=False) as db:
            if db is None:
                return {"depth": 0, "bytes": 0, "oldest": None, "dropped_total": 0, "parked": 0}
            depth, size, oldest = db.execute(
                "SELECT COUNT(*), COALESCE(SUM(size), 0), MIN(created) FROM outbox").fetchone()
            row = db.execute("SELECT value FROM outbox_meta WHERE key = 'dropped_total'"
                             ).fetchone()
            parked = db.execute("SELECT COUNT(*) FROM outbox_parked").fetchone()[0]
        return {"depth": int(depth), "bytes": int(size), "oldest": oldest,
                "dropped_total": int(row[0]) if row else 0, "parked": int(parked)}

    def parked(self) -> list[dict[str, Any]]:
        with statedb.connect(self.state_dir, create=False) as db:
            if db is None:
                return []
            rows = db.execute("SELECT id, type, reason, parked_at, body FROM outbox_parked "
                              "ORDER BY seq").fetchall()
        return [{"id": i, "type": t, "reason": r, "parked_at": at, "report": json.loads(b)}
                for i, t, r, at, b in rows]
