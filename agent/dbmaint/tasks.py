"""Run one ``db_maintenance:`` entry: purges, then VACUUM, then REINDEX, then the report.

Purges go first because they leave dead rows, which the VACUUM after them reclaims. Each
task ends ``ok``, ``failed`` or ``skipped``, always with the reason; one task failing never
stops the next ones (only a lost connection does).

* A purge deletes ``batch`` rows per statement, each statement its own transaction (locks
  and WAL stay small, replicas keep up), the rows found by ``ctid`` (a TID scan: no primary
  key needed); a partitioned table is purged partition by partition, as ctids repeat across
  partitions. The cutoff is fixed when the purge starts: rows that age while it runs wait
  for the next run. It stops between batches at the run's ``timeout``.
* VACUUM and REINDEX ... CONCURRENTLY cannot run inside a transaction: the connection is in
  autocommit mode throughout.
* ``statement_timeout`` bounds every statement by what is left of the run's ``timeout``
  (and a purge batch by its own ``statement_timeout`` too), so a run never outlives it.
* A cancelled REINDEX ... CONCURRENTLY leaves an invalid ``*_ccnew`` index behind; the ones
  this run left are dropped (DROP INDEX CONCURRENTLY), and the reason says so.
* ``check=True`` connects read-only (``default_transaction_read_only``) and says what would
  be done: rows each purge would delete and in how many batches, the tables it would vacuum
  or reindex. Windows are honoured in a dry run too: it shows what would run now.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import functools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import psycopg
from psycopg import sql

from agent.dbmaint import Connection, DbError, connect
from agent.dbmaint.report import DbReport, read_report
from agent.playbook.types import format_duration

if TYPE_CHECKING:
    from agent.playbook.models.dbmaint import (
        DbMaintenanceSpec,
        PurgeTask,
        ReindexTask,
        ReportOptions,
        VacuumTask,
    )

Status = Literal["ok", "failed", "skipped"]
# Column types a purge compares with its cutoff (the cutoff is cast to the column's type,
# so an index on the column is used). A domain counts as its base type.
_CUTOFF_TYPES = ("date", "timestamp", "timestamptz")
_TABLE_KINDS = {"r": "table", "p": "partitioned table", "m": "materialized view",
                "v": "view", "f": "foreign table", "S": "sequence", "i": "index",
                "I": "partitioned index", "c": "composite type", "t": "TOAST table"}
CLEANUP_TIMEOUT = 60.0  # dropping a cancelled REINDEX's leftover index, past the run's timeout


@dataclass(frozen=True)
class TaskOutcome:
    task: str                      # "purge public.events", "vacuum", "reindex", "report"
    status: Status
    reason: str                    # what was done, would be done, or why not
    duration_s: float = 0.0
    rows: int = 0                  # rows a purge deleted (with check: would delete)
    batches: int = 0               # DELETE statements that deleted rows (check: would take)
    tables: tuple[str, ...] = ()   # tables purged, vacuumed or reindexed (check: would be)

    def as_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "tables": list(self.tables)}


@dataclass(frozen=True)
class MaintenanceResult:
    name: str
    target: str                    # "postgres 127.0.0.1:5432/app": never the DSN
    check: bool
    started: float                 # epoch seconds
    duration_s: float
    tasks: tuple[TaskOutcome, ...]
    report: DbReport | None = None

    @property
    def ok(self) -> bool:
        """No task failed (skipped ones, e.g. outside their window, are fine)."""
        return all(t.status != "failed" for t in self.tasks)

    @property
    def rows_purged(self) -> int:
        return sum(t.rows for t in self.tasks if t.task.startswith("purge "))

    def summary(self) -> str:
        """One line for logs and alerts."""
        counts = {s: sum(1 for t in self.tasks if t.status == s)
                  for s in ("ok", "failed", "skipped")}
        parts = [f"{n} {s}" for s, n in counts.items() if n]
        failed = [f"{t.task}: {t.reason}" for t in self.tasks if t.status == "failed"]
        verb = "would purge" if self.check else "purged"
        purge = f"; {verb} {self.rows_purged} rows" if any(
            t.task.startswith("purge ") for t in self.tasks) else ""
        tail = ("; " + "; ".join(failed)) if failed else ""
        return f"{self.name} ({self.target}): {', '.join(parts)}{purge}{tail}"

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "target": self.target, "check": self.check,
                "ok": self.ok, "started": self.started, "duration_s": self.duration_s,
                "rows_purged": self.rows_purged, "tasks": [t.as_dict() for t in self.tasks],
                "report": self.report.as_dict() if self.report is not None else None}


def run_maintenance(spec: DbMaintenanceSpec, *, now: float | None = None,
                    in_window: Callable[[str], bool] | None = None,
                    check: bool = False) -> MaintenanceResult:
    """Run (or, with check, describe) the entry's tasks; never raises for the database's
    sake: a connection that fails is one failed ``connect`` task.

    now (epoch seconds) fixes the purges' cutoffs; in_window(name) says whether a
    ``maintenance:`` window is open (agent.dbmaint.open_windows makes one from the
    playbook's windows); without it, tasks bound to a window are skipped."""
    started, t0 = time.time(), time.monotonic()
    now = started if now is None else now
    try:
        db = connect(spec.postgres, read_only=check)
    except DbError as e:
        failed = TaskOutcome("connect", "failed", str(e), time.monotonic() - t0)
        return MaintenanceResult(spec.name, _where(spec), check, started,
                                 time.monotonic() - t0, (failed,))
    try:
        run = _Run(db, spec, now=now, deadline=t0 + spec.timeout, in_window=in_window,
                   check=check)
        outcomes, report = run.all()
    finally:
        db.close()
    return MaintenanceResult(spec.name, db.target, check, started, time.monotonic() - t0,
                             tuple(outcomes), report)


def _where(spec: DbMaintenanceSpec) -> str:
    target = spec.postgres
    return f"dsn_env {target.dsn_env}" if target.dsn_env else f"dsn_file {target.dsn_file}"


class _TaskFailed(Exception):
    """A task cannot go on; carries its reason and what it did before."""

    def __init__(self, reason: str, *, rows: int = 0, batches: int = 0,
                 tables: tuple[str, ...] = ()) -> None:
        super().__init__(reason)
        self.reason, self.rows, self.batches, self.tables = reason, rows, batches, tables


@dataclass(frozen=True)
class _Rel:
    oid: int
    schema: str
    name: str
    kind: str

    @property
    def display(self) -> str:
        return f"{self.schema}.{self.name}"

    def ident(self) -> sql.Identifier:
        return sql.Identifier(self.schema, self.name)


class _Run:
    def __init__(self, db: Connection, spec: DbMaintenanceSpec, *, now: float, deadline: float,
                 in_window: Callable[[str], bool] | None, check: bool) -> None:
        self.db, self.spec, self.now, self.deadline = db, spec, now, deadline
        self.in_window, self.check = in_window, check

    def all(self) -> tuple[list[TaskOutcome], DbReport | None]:
        spec, out = self.spec, []
        for p in spec.purge:
            out.append(self.task(f"purge {p.table}", p.window, functools.partial(self.purge, p)))
        if any(t.rows for t in out) and not self.check:
            self.flush_stats()
        if spec.vacuum is not None:
            v = spec.vacuum
            out.append(self.task("vacuum", v.window, lambda: self.vacuum(v)))
        if spec.reindex is not None:
            r = spec.reindex
            out.append(self.task("reindex", r.window, lambda: self.reindex(r)))
        report: list[DbReport] = []
        if spec.report is not None:
            options = spec.report
            out.append(self.task("report", None, lambda: self.report(options, report)))
        return out, (report[0] if report else None)

    def flush_stats(self) -> None:
        """Publish this session's pending row counts now (PostgreSQL 15+ keeps them up to a
        second or more): else they land after the VACUUM that follows and the statistics
        show the purged rows as dead again, misleading the report and autovacuum."""
        if self.db.conn.info.server_version < 150000:
            return
        with contextlib.suppress(psycopg.Error):
            self.execute(sql.SQL("SELECT pg_stat_force_next_flush()"))

    # -- the frame every task runs in ------------------------------------------------------

    def task(self, name: str, window: str | None,
             body: Callable[[], TaskOutcome]) -> TaskOutcome:
        if self.db.conn.closed:
            return TaskOutcome(name, "failed", f"not run: the connection to {self.db.target} "
                               "was lost")
        if self.remaining() <= 0:
            return TaskOutcome(name, "skipped", f"the run's timeout ({self.timeout_text()}) "
                               "was reached before it started")
        if window is not None:
            if self.in_window is None:
                return TaskOutcome(name, "skipped", f"runs only inside maintenance window "
                                   f"{window}, and no window information was given")
            try:
                open_now = self.in_window(window)
            except Exception as e:  # the caller's function: say so rather than crash the run
                return TaskOutcome(name, "failed", f"cannot tell whether maintenance window "
                                   f"{window} is open: {type(e).__name__}: {e}")
            if not open_now:
                return TaskOutcome(name, "skipped", f"maintenance window {window} is not open")
        t0 = time.monotonic()
        try:
            done = body()
        except _TaskFailed as e:
            return TaskOutcome(name, "failed", e.reason, time.monotonic() - t0, e.rows,
                               e.batches, e.tables)
        except psycopg.Error as e:
            return TaskOutcome(name, "failed", self.why(e), time.monotonic() - t0)
        return dataclasses.replace(done, task=name, duration_s=time.monotonic() - t0)

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def timeout_text(self) -> str:
        return format_duration(self.spec.timeout)

    def bound(self, cap: float | None = None) -> None:
        """Let the next statements run until the run's deadline (or for cap, if sooner)."""
        left = self.remaining()
        if left <= 0:
            raise _TaskFailed(f"the run's timeout ({self.timeout_text()}) was reached")
        self.db.set_timeout(left if cap is None else min(cap, left))

    def why(self, e: BaseException) -> str:
        if isinstance(e, psycopg.errors.QueryCanceled) and self.remaining() <= 0.05:
            return f"cancelled at the run's timeout ({self.timeout_text()})"
        return self.db.error(e)

    def execute(self, query: sql.SQL | sql.Composed, params: dict[str, Any] | None = None) -> Any:
        return self.db.conn.execute(query, params)

    # -- catalogue reads --------------------------------------------------------------------

    def table(self, name: str, kinds: str) -> _Rel:
        """The relation a playbook's table name means here (search_path applies to an
        unqualified one), refused unless its kind is one of ``kinds``."""
        quoted = sql.Identifier(*name.split(".")).as_string(self.db.conn)
        row = self.execute(sql.SQL(
            "SELECT c.oid, n.nspname, c.relname, c.relkind FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE c.oid = to_regclass(%(name)s)"), {"name": quoted}).fetchone()
        if row is None:
            raise _TaskFailed(f"no table {name} in this database (names are matched exactly, "
                              "as if quoted)")
        rel = _Rel(int(row[0]), str(row[1]), str(row[2]), str(row[3]))
        if rel.kind not in kinds:
            raise _TaskFailed(f"{name} is a {_TABLE_KINDS.get(rel.kind, rel.kind)}, not a "
                              "table")
        return rel

    def column_type(self, rel: _Rel, column: str) -> str:
        row = self.execute(sql.SQL(
            "SELECT b.typname FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid "
            "JOIN pg_type b ON b.oid = CASE WHEN t.typtype = 'd' THEN t.typbasetype "
            "ELSE t.oid END "
            "WHERE a.attrelid = %(rel)s::oid AND a.attname = %(col)s AND a.attnum > 0 "
            "AND NOT a.attisdropped"), {"rel": rel.oid, "col": column}).fetchone()
        if row is None:
            raise _TaskFailed(f"table {rel.display} has no column {column}")
        if row[0] not in _CUTOFF_TYPES:
            raise _TaskFailed(f"column {rel.display}.{column} is of type {row[0]}; a purge "
                              "needs a date, timestamp or timestamptz column")
        return str(row[0])

    def leaves(self, rel: _Rel) -> list[_Rel]:
        """A partitioned table's leaf partitions that hold rows (foreign ones excluded)."""
        rows = self.execute(sql.SQL(
            "SELECT c.oid, n.nspname, c.relname, c.relkind FROM pg_partition_tree(%(rel)s::oid) t "
            "JOIN pg_class c ON c.oid = t.relid JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE t.isleaf AND c.relkind = 'r' ORDER BY n.nspname, c.relname"),
            {"rel": rel.oid}).fetchall()
        return [_Rel(int(r[0]), str(r[1]), str(r[2]), str(r[3])) for r in rows]

    def indexed_tables(self) -> list[_Rel]:
        rows = self.execute(sql.SQL(
            "SELECT c.oid, n.nspname, c.relname, c.relkind FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE c.relkind IN ('r', 'm') "  # partitions one by one, not their parents
            "AND n.nspname NOT IN ('pg_catalog', 'information_schema') "
            "AND n.nspname !~ '^pg_(toast|temp_)' "
            "AND EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid) "
            "ORDER BY n.nspname, c.relname")).fetchall()
        return [_Rel(int(r[0]), str(r[1]), str(r[2]), str(r[3])) for r in rows]

    # -- the tasks --------------------------------------------------------------------------

    def purge(self, p: PurgeTask) -> TaskOutcome:
        rel = self.table(p.table, "rp")
        cast = sql.SQL(self.column_type(rel, p.column))  # one of _CUTOFF_TYPES, never data
        cutoff = dt.datetime.fromtimestamp(self.now - p.older_than, dt.UTC)
        older = sql.SQL("{} < CAST(%(cutoff)s AS {})").format(sql.Identifier(p.column), cast)
        params: dict[str, Any] = {"cutoff": cutoff, "batch": p.batch}
        when = f"{p.column} before {cutoff:%Y-%m-%d %H:%M:%S} UTC"
        # ctids repeat across partitions: a partitioned table is purged leaf by leaf
        leaves = self.leaves(rel) if rel.kind == "p" else [rel]
        done = _Purged(rel.display)
        if self.check:
            for leaf in leaves:
                self.bound()
                row = self.execute(sql.SQL("SELECT count(*) FROM {} WHERE {}").format(
                    leaf.ident(), older), params).fetchone()
                n = int(row[0]) if row else 0
                done.rows, done.batches = done.rows + n, done.batches + math.ceil(n / p.batch)
            return done.outcome(f"would delete {done.rows} rows of {rel.display} with {when} "
                                f"in {done.batches} batches of up to {p.batch}")
        for leaf in leaves:
            self.purge_leaf(p, leaf, older, params, done)
        return done.outcome(f"deleted {done.rows} rows of {rel.display} with {when} in "
                            f"{done.batches} batches of up to {p.batch}")

    def purge_leaf(self, p: PurgeTask, rel: _Rel, older: sql.Composed, params: dict[str, Any],
                   done: _Purged) -> None:
        """Batches of one table until one deletes fewer than ``batch`` rows; a TID scan
        finds each batch's rows (a row updated meanwhile has moved and waits for the next)."""
        delete = sql.SQL("DELETE FROM {t} WHERE ctid = ANY(ARRAY(SELECT ctid FROM {t} WHERE {w} "
                         "LIMIT %(batch)s))").format(t=rel.ident(), w=older)
        while True:
            if self.remaining() <= 0:
                raise done.failed(f"stopped at the run's timeout ({self.timeout_text()}) after "
                                  f"deleting {done.rows} rows in {done.batches} batches; older "
                                  "rows remain")
            self.bound(p.statement_timeout)
            try:
                n = self.execute(delete, params).rowcount
            except psycopg.Error as e:
                raise done.failed(f"{self.why(e)} (after deleting {done.rows} rows in "
                                  f"{done.batches} batches)") from None
            if n > 0:
                done.rows, done.batches = done.rows + n, done.batches + 1
            if n < p.batch:
                return

    def vacuum(self, v: VacuumTask) -> TaskOutcome:
        what = "VACUUM (ANALYZE)" if v.analyze else "VACUUM"
        head = sql.SQL(what)  # a constant of this module
        if v.tables is None:
            if self.check:
                return TaskOutcome("", "ok", f"would {what} the whole database")
            self.bound()
            self.execute(head)
            return TaskOutcome("", "ok", f"{what} of the whole database")
        rels = [self.table(t, "rmp") for t in v.tables]
        return self.per_table(what, rels, lambda rel: self.execute(
            sql.SQL("{} {}").format(head, rel.ident())))

    def reindex(self, r: ReindexTask) -> TaskOutcome:
        what = "REINDEX TABLE CONCURRENTLY" if r.concurrently else "REINDEX TABLE"
        rels = ([self.table(t, "rmp") for t in r.tables] if r.tables is not None
                else self.indexed_tables())

        def one(rel: _Rel) -> None:
            before = self.leftovers(rel) if r.concurrently else set()
            try:
                self.execute(sql.SQL("{} {}").format(sql.SQL(what), rel.ident()))
            except psycopg.Error as e:
                if not r.concurrently:
                    raise
                raise _LeftoverNote(e, self.drop_leftovers(rel, before)) from None

        return self.per_table(what, rels, one)

    def per_table(self, what: str, rels: list[_Rel],
                  one: Callable[[_Rel], object]) -> TaskOutcome:
        names = tuple(rel.display for rel in rels)
        if not rels:
            return TaskOutcome("", "ok", "no tables with indexes")
        if self.check:
            return TaskOutcome("", "ok", f"would {what} {', '.join(names)}", tables=names)
        for i, rel in enumerate(rels):
            done = names[:i]
            progress = f" ({i} of {len(rels)} tables done)"
            if self.remaining() <= 0:
                raise _TaskFailed(f"stopped at the run's timeout ({self.timeout_text()})"
                                  f"{progress}", tables=done)
            self.bound()
            try:
                one(rel)
            except _LeftoverNote as e:
                raise _TaskFailed(f"{rel.display}: {self.why(e.error)}{e.note}{progress}",
                                  tables=done) from None
            except psycopg.Error as e:
                raise _TaskFailed(f"{rel.display}: {self.why(e)}{progress}",
                                  tables=done) from None
        return TaskOutcome("", "ok", f"{what} {', '.join(names)}", tables=names)

    def leftovers(self, rel: _Rel) -> set[tuple[str, str]]:
        """Invalid indexes a cancelled REINDEX CONCURRENTLY leaves: NAME_ccnew[N]."""
        rows = self.execute(sql.SQL(
            "SELECT n.nspname, c.relname FROM pg_index i JOIN pg_class c ON c.oid = "
            "i.indexrelid JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE i.indrelid = %(rel)s::oid AND NOT i.indisvalid "
            "AND c.relname ~ '_ccnew[0-9]*$'"), {"rel": rel.oid}).fetchall()
        return {(str(r[0]), str(r[1])) for r in rows}

    def drop_leftovers(self, rel: _Rel, before: set[tuple[str, str]]) -> str:
        """Drop the invalid indexes this run's REINDEX left (not older ones: another
        session's concurrent rebuild looks the same while it runs)."""
        try:
            self.db.set_timeout(CLEANUP_TIMEOUT)
            ours = sorted(self.leftovers(rel) - before)
            for schema, name in ours:
                self.execute(sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {}").format(
                    sql.Identifier(schema, name)))
        except psycopg.Error as e:
            return (f"; its leftover invalid index could not be dropped ({self.db.error(e)}): "
                    f"drop it with DROP INDEX CONCURRENTLY")
        if not ours:
            return ""
        return "; dropped its leftover invalid index " + ", ".join(f"{s}.{n}" for s, n in ours)

    def report(self, options: ReportOptions, out: list[DbReport]) -> TaskOutcome:
        self.bound(60.0)
        found = read_report(self.db, options, bound=lambda: self.bound(60.0))
        out.append(found)
        return TaskOutcome("", "ok", found.summary())


@dataclass
class _Purged:
    """What a purge has deleted so far (or, in a dry run, would delete)."""

    table: str
    rows: int = 0
    batches: int = 0

    def outcome(self, reason: str) -> TaskOutcome:
        return TaskOutcome("", "ok", reason, rows=self.rows, batches=self.batches,
                           tables=(self.table,))

    def failed(self, reason: str) -> _TaskFailed:
        return _TaskFailed(reason, rows=self.rows, batches=self.batches, tables=(self.table,))


class _LeftoverNote(Exception):
    """A failed REINDEX CONCURRENTLY, with what was done about its leftover index."""

    def __init__(self, error: Exception, note: str) -> None:
        super().__init__(str(error))
        self.error, self.note = error, note
