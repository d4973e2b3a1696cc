"""What a database's statistics views say needs care: slow queries, unused indexes, bloat.

* Slowest statements by mean execution time, from ``pg_stat_statements`` when the
  extension is created in the database and its library preloaded; otherwise the report
  says which of the two is missing and how to fix it. A role without ``pg_read_all_stats``
  sees other roles' statements as ``<insufficient privilege>``.
* Unused indexes: never scanned (``idx_scan = 0``) since the statistics were reset (the
  report gives that time), valid, and neither unique, primary nor backing a constraint —
  those enforce something even when no query reads them.
* Per table, from ``pg_stat_user_tables``: live and dead rows, sizes, and a bloat estimate —
  the dead rows' share of the table's size (``n_dead_tup / (n_live_tup + n_dead_tup)``
  × heap size). It is what VACUUM can make reusable; it is not pgstattuple's exact count.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql

from agent.dbmaint import Connection, DbError, connect

if TYPE_CHECKING:
    from agent.playbook.models.dbmaint import DbMaintenanceSpec, ReportOptions

TABLES_MAX = 50           # tables listed, most dead rows first
UNUSED_INDEXES_MAX = 100
QUERY_TEXT_MAX = 500      # characters of a statement's text
REPORT_TIMEOUT = 60.0     # bound on each statistics query


@dataclass(frozen=True)
class SlowQuery:
    query: str
    calls: int
    mean_ms: float
    max_ms: float
    total_ms: float
    rows: int


@dataclass(frozen=True)
class UnusedIndex:
    table: str            # schema.table
    index: str            # schema.index
    size_bytes: int
    definition: str       # CREATE INDEX ... (pg_get_indexdef)


@dataclass(frozen=True)
class TableStats:
    table: str
    live_rows: int
    dead_rows: int
    dead_percent: float
    table_bytes: int      # the heap
    total_bytes: int      # with indexes and TOAST
    bloat_bytes: int      # estimate: the dead rows' share of the heap
    last_vacuum: str | None       # ISO 8601, manual or automatic, whichever is later
    last_analyze: str | None


@dataclass(frozen=True)
class DbReport:
    target: str
    server_version: str
    stats_since: str | None               # when the database's statistics were last reset
    slow_queries: tuple[SlowQuery, ...] | None = None   # None: not asked for or unavailable
    slow_queries_note: str = ""           # why there are none (extension missing, ...)
    unused_indexes: tuple[UnusedIndex, ...] | None = None
    tables: tuple[TableStats, ...] | None = None

    def summary(self) -> str:
        parts = []
        if self.slow_queries is not None:
            parts.append(_count(len(self.slow_queries), "slowest query", "slowest queries"))
        elif self.slow_queries_note:
            parts.append("no query statistics (pg_stat_statements unavailable)")
        if self.unused_indexes is not None:
            parts.append(_count(len(self.unused_indexes), "unused index", "unused indexes"))
        if self.tables is not None:
            dead = sum(t.dead_rows for t in self.tables)
            parts.append(f"{_count(dead, 'dead row', 'dead rows')} in "
                         f"{_count(len(self.tables), 'table', 'tables')}")
        return ", ".join(parts) or "nothing asked for"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def report_database(spec: DbMaintenanceSpec, options: ReportOptions | None = None) -> DbReport:
    """Connect (read-only) and read the report; DbError when the database cannot be read."""
    from agent.playbook.models.dbmaint import ReportOptions

    db = connect(spec.postgres, read_only=True)
    try:
        def bound() -> None:
            db.set_timeout(min(REPORT_TIMEOUT, spec.timeout))

        bound()
        return read_report(db, options or spec.report or ReportOptions(), bound=bound)
    except psycopg.Error as e:
        raise DbError(f"{db.target}: {db.error(e)}") from None
    finally:
        db.close()


def read_report(db: Connection, options: ReportOptions,
                bound: Callable[[], None] | None = None) -> DbReport:
    """The report over an open connection; ``bound()`` sets the timeout of each query."""
    def q(query: sql.SQL | sql.Composed, params: dict[str, Any] | None = None) -> list[Any]:
        if bound is not None:
            bound()
        return list(db.conn.execute(query, params).fetchall())

    version, since = q(sql.SQL(
        "SELECT current_setting('server_version'), (SELECT stats_reset FROM pg_stat_database "
        "WHERE datname = current_database())"))[0]
    slow: tuple[SlowQuery, ...] | None = None
    note = ""
    if options.slow_queries > 0:
        slow, note = _slow_queries(db, q, options.slow_queries)
    unused = _unused_indexes(q) if options.unused_indexes else None
    tables = _tables(q) if options.bloat else None
    return DbReport(db.target, str(version), _iso(since), slow, note, unused, tables)


Query = Callable[..., list[Any]]


def _slow_queries(db: Connection, q: Query, limit: int) -> tuple[tuple[SlowQuery, ...] | None,
                                                                  str]:
    found = q(sql.SQL("SELECT n.nspname, current_setting('server_version_num')::int, "
                      "current_setting('shared_preload_libraries') FROM pg_extension e "
                      "JOIN pg_namespace n ON n.oid = e.extnamespace "
                      "WHERE e.extname = 'pg_stat_statements'"))
    if not found:
        return None, ("pg_stat_statements is not installed in this database: add it to "
                      "shared_preload_libraries, restart PostgreSQL, then CREATE EXTENSION "
                      "pg_stat_statements")
    schema, version, _ = found[0]
    # PostgreSQL 13 split planning from execution time and renamed the columns.
    cols = ("mean_exec_time", "max_exec_time", "total_exec_time") if version >= 130000 \
        else ("mean_time", "max_time", "total_time")
    mean, top, total = (sql.Identifier(c) for c in cols)
    query = sql.SQL(
        "SELECT query, calls, {mean}, {top}, {total}, rows FROM {view} "
        "WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database()) "
        "ORDER BY {mean} DESC LIMIT %(n)s").format(
            mean=mean, top=top, total=total, view=sql.Identifier(schema, "pg_stat_statements"))
    try:
        rows = q(query, {"n": limit})
    except psycopg.errors.ObjectNotInPrerequisiteState:
        return None, ("pg_stat_statements is created in this database but its library is not "
                      "loaded: add it to shared_preload_libraries and restart PostgreSQL")
    except psycopg.errors.InsufficientPrivilege as e:
        return None, f"pg_stat_statements cannot be read: {db.error(e)}"
    return tuple(SlowQuery(_clip(str(r[0])), int(r[1]), round(float(r[2]), 3),
                           round(float(r[3]), 3), round(float(r[4]), 3), int(r[5]))
                 for r in rows), ""


def _unused_indexes(q: Query) -> tuple[UnusedIndex, ...]:
    rows = q(sql.SQL(
        "SELECT s.schemaname, s.relname, s.indexrelname, pg_relation_size(s.indexrelid), "
        "pg_get_indexdef(s.indexrelid) FROM pg_stat_user_indexes s "
        "JOIN pg_index i ON i.indexrelid = s.indexrelid "
        "WHERE s.idx_scan = 0 AND NOT i.indisunique AND NOT i.indisprimary AND i.indisvalid "
        "AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = s.indexrelid) "
        "ORDER BY 4 DESC, 1, 2, 3 LIMIT %(n)s"), {"n": UNUSED_INDEXES_MAX})
    return tuple(UnusedIndex(f"{r[0]}.{r[1]}", f"{r[0]}.{r[2]}", int(r[3]), str(r[4]))
                 for r in rows)


def _tables(q: Query) -> tuple[TableStats, ...]:
    rows = q(sql.SQL(
        "SELECT schemaname, relname, n_live_tup, n_dead_tup, pg_relation_size(relid), "
        "pg_total_relation_size(relid), GREATEST(last_vacuum, last_autovacuum), "
        "GREATEST(last_analyze, last_autoanalyze) FROM pg_stat_user_tables "
        "ORDER BY n_dead_tup DESC, pg_relation_size(relid) DESC, 1, 2 LIMIT %(n)s"),
        {"n": TABLES_MAX})
    out = []
    for schema, name, live, dead, heap, total, vacuumed, analyzed in rows:
        rows_all = int(live) + int(dead)
        share = int(dead) / rows_all if rows_all else 0.0
        out.append(TableStats(f"{schema}.{name}", int(live), int(dead), round(100 * share, 2),
                              int(heap), int(total), int(heap * share), _iso(vacuumed),
                              _iso(analyzed)))
    return tuple(out)


def _count(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


def _iso(value: Any) -> str | None:
    return value.isoformat() if isinstance(value, dt.datetime) else None


def _clip(text: str) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= QUERY_TEXT_MAX else flat[: QUERY_TEXT_MAX - 1] + "…"
