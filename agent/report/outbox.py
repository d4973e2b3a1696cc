"""The durable outbox: every report is written here, in state.db, before anything is sent.

Writes use ``synchronous=FULL`` (the report survives a power cut, not just a crash of the
agent). The outbox is capped: past ``cap_bytes`` the oldest non-critical reports (plain
all-ok runs) go first, critical ones (changes, failures, alerts, revisions, drops) only when
nothing else is left — and every drop is reported, in the same transaction, by a
``dropped`` report so the collector learns what it will never see.

One drop notice waits at a time and later drops amend it (a host over its cap drops a little
on every put: one notice per put would fill the outbox with notices). A notice is frozen
once a sender has taken it into a batch — the collector may already hold that version, and
it deduplicates by id — so the next drop starts a new one. The freeze is recorded in
state.db, not in memory, so an operator's CLI writing next to the agent keeps to it.

Every transaction is short (BEGIN IMMEDIATE through :mod:`agent.statedb`), so the agent and
an operator's CLI share the outbox safely. The total size is a running sum in
``outbox_meta`` kept in the same transactions as the rows: a put stays O(1) at any depth.
"""

from __future__ import annotations

import json
import sqlite3
import time
from typing import Any

from agent import statedb
from agent.report.document import (
    AlertReport,
    DroppedDoc,
    DroppedReport,
    IncidentReport,
    ResponseReport,
    RevisionReport,
    RunReport,
    utc_iso,
)

AnyReport = (RunReport | AlertReport | RevisionReport | ResponseReport | DroppedReport
             | IncidentReport)

_BYTES = "bytes"  # outbox_meta: running SUM(size) of the outbox
_DROPPED = "dropped_total"  # outbox_meta: reports ever dropped over the cap
_NOTICE = "open_notice"  # outbox_meta: seq of the drop notice later drops may still amend
_CHUNK = 500  # seqs per IN (...) list, well under SQLite's bound-variable limit
_REASON_MAX = 2000


def _critical(report: AnyReport) -> bool:
    return not isinstance(report, RunReport) or report.critical


def _size(n: int) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def _meta(db: sqlite3.Connection, key: str) -> int | None:
    row = db.execute("SELECT value FROM outbox_meta WHERE key = ?", (key,)).fetchone()
    return None if row is None else int(row[0])


def _set_meta(db: sqlite3.Connection, key: str, value: int) -> None:
    db.execute("INSERT INTO outbox_meta (key, value) VALUES (?, ?) "
               "ON CONFLICT (key) DO UPDATE SET value = excluded.value", (key, value))


def _sum_sizes(db: sqlite3.Connection) -> int:
    return int(db.execute("SELECT COALESCE(SUM(size), 0) FROM outbox").fetchone()[0])


def _settle(db: sqlite3.Connection, delta: int) -> int:
    """After rows changed by ``delta`` bytes: the new total. Recounted when unknown (a
    database from before the running total), implausible, or the outbox is empty, so any
    drift heals as soon as the outbox drains."""
    total = _meta(db, _BYTES)
    if total is not None:
        total += delta
    if total is None or total < 0 or (
            total and db.execute("SELECT NOT EXISTS (SELECT 1 FROM outbox)").fetchone()[0]):
        total = _sum_sizes(db)
    _set_meta(db, _BYTES, total)
    return total


def _chunks(seqs: list[int]) -> list[list[int]]:
    return [seqs[i:i + _CHUNK] for i in range(0, len(seqs), _CHUNK)]


class Outbox:
    def __init__(self, state_dir: str, host: str, agent_version: str,
                 cap_bytes: int = 1 << 30) -> None:
        self.state_dir = state_dir
        self.host = host
        self.agent_version = agent_version
        self.cap_bytes = cap_bytes

    # --- writing ------------------------------------------------------------------------

    def put(self, report: AnyReport) -> None:
        self.put_many([report])

    def put_many(self, reports: list[AnyReport]) -> None:
        """Store reports durably, in one transaction with any drop the cap calls for. A
        report whose id is already waiting is kept once."""
        now = time.time()
        rows = []
        for r in reports:
            body = r.model_dump_json().encode()
            rows.append((r.id, r.type, int(_critical(r)), now, len(body), body))
        with statedb.connect(self.state_dir) as db:
            assert db is not None
            db.execute("PRAGMA synchronous=FULL")  # the report outlives a power cut
            with statedb.transaction(db):
                added = 0
                for row in rows:
                    cur = db.execute("INSERT OR IGNORE INTO outbox (id, type, critical, "
                                     "created, size, body) VALUES (?, ?, ?, ?, ?, ?)", row)
                    added += row[4] if cur.rowcount > 0 else 0
                total = _settle(db, added)
                if total > self.cap_bytes:
                    self._enforce_cap(db, total)

    def _enforce_cap(self, db: sqlite3.Connection, total: int) -> None:
        """Oldest plain runs first, then the oldest critical reports; drop notices never."""
        dropped: list[tuple[int, str, float, int]] = []
        for critical in (0, 1):
            if total <= self.cap_bytes:
                break
            cur = db.execute("SELECT seq, type, created, size FROM outbox WHERE critical = ? "
                             "AND type != 'dropped' ORDER BY seq", (critical,))
            for seq, typ, created, size in cur:  # lazily: only as far as the cap needs
                if total <= self.cap_bytes:
                    break
                dropped.append((seq, typ, created, size))
                total -= size
            cur.close()
        if not dropped:
            return
        for chunk in _chunks([d[0] for d in dropped]):
            db.execute(f"DELETE FROM outbox WHERE seq IN ({','.join('?' * len(chunk))})",
                       chunk)
        _settle(db, -sum(d[3] for d in dropped))
        by_type: dict[str, int] = {}
        for _, typ, _, _ in dropped:
            by_type[typ] = by_type.get(typ, 0) + 1
        self._note_drop(db, DroppedDoc(
            count=len(dropped), bytes=sum(d[3] for d in dropped),
            oldest=utc_iso(min(d[2] for d in dropped)),
            newest=utc_iso(max(d[2] for d in dropped)), by_type=by_type,
            reason=f"the outbox was over its cap of {_size(self.cap_bytes)} (the collector "
            "unreachable for long); the oldest reports were dropped, plain all-ok runs first"))
        db.execute("INSERT INTO outbox_meta (key, value) VALUES (?, ?) ON CONFLICT (key) "
                   "DO UPDATE SET value = value + excluded.value", (_DROPPED, len(dropped)))

    def _note_drop(self, db: sqlite3.Connection, doc: DroppedDoc) -> None:
        """Amend the open drop notice, or write a new one when none is open."""
        row = db.execute("SELECT o.seq, o.body FROM outbox_meta m JOIN outbox o "
                         "ON o.seq = m.value WHERE m.key = ?", (_NOTICE,)).fetchone()
        if row is not None:
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
            _settle(db, len(body) - len(row[1]))
            return
        note = DroppedReport(host=self.host, agent_version=self.agent_version, dropped=doc)
        body = note.model_dump_json().encode()
        cur = db.execute("INSERT INTO outbox (id, type, critical, created, size, body) "
                         "VALUES (?, 'dropped', 1, ?, ?, ?)",
                         (note.id, time.time(), len(body), body))
        assert cur.lastrowid is not None
        _set_meta(db, _NOTICE, cur.lastrowid)
        _settle(db, len(body))

    def ack(self, seqs: list[int]) -> None:
        """The collector stored these: they leave the outbox."""
        if not seqs:
            return
        with statedb.connect(self.state_dir) as db:
            assert db is not None
            db.execute("PRAGMA synchronous=FULL")
            with statedb.transaction(db):
                self._delete(db, seqs)

    def _delete(self, db: sqlite3.Connection, seqs: list[int]) -> None:
        gone = 0
        for chunk in _chunks(seqs):
            marks = ",".join("?" * len(chunk))
            gone += int(db.execute(f"SELECT COALESCE(SUM(size), 0) FROM outbox WHERE seq IN "
                                   f"({marks})", chunk).fetchone()[0])
            db.execute(f"DELETE FROM outbox WHERE seq IN ({marks})", chunk)
        _settle(db, -gone)

    def park(self, seq: int, reason: str) -> None:
        """Set aside a report the collector refuses as invalid: kept, visible, not retried."""
        with statedb.connect(self.state_dir) as db:
            assert db is not None
            db.execute("PRAGMA synchronous=FULL")
            with statedb.transaction(db):
                db.execute("INSERT OR REPLACE INTO outbox_parked (seq, id, type, critical, "
                           "created, size, body, reason, parked_at) SELECT seq, id, type, "
                           "critical, created, size, body, ?, ? FROM outbox WHERE seq = ?",
                           (reason[:_REASON_MAX], time.time(), seq))
                self._delete(db, [seq])

    # --- reading ------------------------------------------------------------------------

    def peek(self, limit: int, max_bytes: int) -> list[tuple[int, bytes]]:
        """The oldest reports as (seq, body), at most ``limit`` and ``max_bytes`` (but at
        least one). Taking the open drop notice into a batch freezes it."""
        with statedb.connect(self.state_dir, create=False) as db:
            if db is None:
                return []
            db.execute("BEGIN")  # one snapshot of the rows and of the open notice
            try:
                out = self._oldest(db, limit, max_bytes)
                notice = _meta(db, _NOTICE)
            finally:
                db.execute("COMMIT")
            if notice is None or all(seq != notice for seq, _ in out):
                return out
            with statedb.transaction(db):
                db.execute("DELETE FROM outbox_meta WHERE key = ? AND value = ?",
                           (_NOTICE, notice))
                row = db.execute("SELECT body FROM outbox WHERE seq = ?", (notice,)).fetchone()
        if row is None:  # taken and delivered meanwhile by another sender
            return [(s, b) for s, b in out if s != notice]
        return [(s, bytes(row[0]) if s == notice else b) for s, b in out]  # as frozen

    def _oldest(self, db: sqlite3.Connection, limit: int,
                max_bytes: int) -> list[tuple[int, bytes]]:
        out: list[tuple[int, bytes]] = []
        size = 0
        for seq, body in db.execute("SELECT seq, body FROM outbox ORDER BY seq LIMIT ?",
                                    (limit,)):
            if out and size + len(body) > max_bytes:
                break
            out.append((int(seq), bytes(body)))
            size += len(body)
        return out

    def stats(self) -> dict[str, Any]:
        """depth, bytes, oldest (epoch of the first waiting report), dropped_total, parked."""
        with statedb.connect(self.state_dir, create=False) as db:
            if db is None:
                return {"depth": 0, "bytes": 0, "oldest": None, "dropped_total": 0, "parked": 0}
            depth = int(db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])
            size = _meta(db, _BYTES)
            if size is None:
                size = _sum_sizes(db)
            row = db.execute("SELECT created FROM outbox ORDER BY seq LIMIT 1").fetchone()
            parked = int(db.execute("SELECT COUNT(*) FROM outbox_parked").fetchone()[0])
            dropped = _meta(db, _DROPPED) or 0
        return {"depth": depth, "bytes": size if depth else 0,
                "oldest": float(row[0]) if row else None, "dropped_total": dropped,
                "parked": parked}

    def parked(self) -> list[dict[str, Any]]:
        """The reports the collector refused, with its reason, oldest first."""
        with statedb.connect(self.state_dir, create=False) as db:
            if db is None:
                return []
            rows = db.execute("SELECT id, type, reason, parked_at, body FROM outbox_parked "
                              "ORDER BY seq").fetchall()
        return [{"id": i, "type": t, "reason": r, "parked_at": at, "report": json.loads(b)}
                for i, t, r, at, b in rows]
