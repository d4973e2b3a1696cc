"""`db_maintenance:` — scheduled PostgreSQL upkeep: purges, VACUUM (ANALYZE), REINDEX, report.

Table and column names end up in SQL, so they are checked here, when the playbook loads:
a plain PostgreSQL identifier (letters, digits, ``_``, ``$``; not starting with a digit; at
most 63 characters), a table optionally schema-qualified (``archive.events``). Anything else
(quotes, spaces, semicolons, comments) is refused with its position. The statements are
composed with ``psycopg.sql.Identifier``, so names are matched exactly as written, the way
a quoted identifier is: ``Events`` is not ``events``.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import AfterValidator, Field, WithJsonSchema, field_validator, model_validator

from agent.playbook.models.base import Spec
from agent.playbook.types import Cron, Duration

_IDENT = r"[A-Za-z_][A-Za-z0-9_$]{0,62}"
IDENTIFIER_PATTERN = rf"^{_IDENT}$"
TABLE_PATTERN = rf"^{_IDENT}(\.{_IDENT})?$"
_IDENT_FORM = ("letters, digits, _ or $, not starting with a digit, at most 63 characters, "
               "e.g. created_at")
_TABLE_FORM = ("a table name, optionally schema-qualified: letters, digits, _ or $, not "
               "starting with a digit, e.g. events or archive.events")


def _identifier(value: str) -> str:
    if not re.fullmatch(IDENTIFIER_PATTERN, value):
        raise ValueError(f"{value!r} is not a plain PostgreSQL identifier (expected "
                         f"{_IDENT_FORM})")
    return value


def _table(value: str) -> str:
    if not re.fullmatch(TABLE_PATTERN, value):
        raise ValueError(f"{value!r} is not a plain PostgreSQL table name (expected "
                         f"{_TABLE_FORM})")
    return value


Identifier = Annotated[
    str,
    AfterValidator(_identifier),
    WithJsonSchema({"type": "string", "pattern": IDENTIFIER_PATTERN, "examples": ["created_at"],
                    "x-expected": _IDENT_FORM}),
]
TableName = Annotated[
    str,
    AfterValidator(_table),
    WithJsonSchema({"type": "string", "pattern": TABLE_PATTERN,
                    "examples": ["events", "archive.events"], "x-expected": _TABLE_FORM}),
]

_WINDOW = ("Run this task only while the named `maintenance:` window is open; outside it the "
           "task is skipped and says so. A window declared only for this can set `rules: []` "
           "so it mutes no alerts.")


class DbTarget(Spec):
    """Where to connect; the DSN (it holds a password) never sits in the playbook."""

    dsn_env: str | None = Field(None, description="Environment variable holding the DSN "
                                "(postgresql://user:pass@host:5432/db or key=value form).",
                                examples=["APP_DATABASE_URL"])
    dsn_file: str | None = Field(None, description="File holding the DSN.",
                                 examples=["/etc/opsagent/app-db.dsn"])
    connect_timeout: Duration = Field(10.0, description="Bound on connecting.", examples=["10s"])

    @model_validator(mode="after")
    def _one_source(self) -> DbTarget:
        if (self.dsn_env is None) == (self.dsn_file is None):
            raise ValueError("give one of dsn_env (an environment variable holding the DSN) "
                             "or dsn_file (a file holding it)")
        return self


class VacuumTask(Spec):
    """VACUUM (ANALYZE) — reclaims dead rows (e.g. the purges') and refreshes statistics."""

    analyze: bool = Field(True, description="VACUUM (ANALYZE): also refresh the planner's "
                          "statistics.")
    tables: list[TableName] | None = Field(
        None, min_length=1, description="Tables to vacuum, one statement each; default: the "
        "whole database in one VACUUM.", examples=[["events", "archive.events"]])
    window: str | None = Field(None, description=_WINDOW, examples=["patching"])


class ReindexTask(Spec):
    """REINDEX TABLE [CONCURRENTLY] — rebuilds bloated indexes."""

    tables: list[TableName] | None = Field(
        None, min_length=1, description="Tables whose indexes are rebuilt, one statement "
        "each; default: every table with an index outside the system schemas.",
        examples=[["events"]])
    concurrently: bool = Field(True, description="REINDEX ... CONCURRENTLY: writes go on "
                               "while it runs (PostgreSQL 12+). An interrupted concurrent "
                               "rebuild's invalid leftover index is dropped.")
    window: str | None = Field(None, description=_WINDOW, examples=["patching"])


class PurgeTask(Spec):
    """Delete rows older than a cutoff, in batches, each batch its own transaction."""

    table: TableName
    column: Identifier = Field(description="A date, timestamp or timestamptz column; rows "
                               "where it is before now minus older_than are deleted.",
                               examples=["created_at"])
    older_than: Duration = Field(description="Age past which rows are deleted.",
                                 examples=["30d"])
    batch: int = Field(5000, ge=1, le=1_000_000, description="Rows per DELETE (and "
                       "transaction): small batches keep locks and WAL bursts short.",
                       examples=[5000])
    statement_timeout: Duration = Field(60.0, description="Bound on one batch's DELETE; the "
                                        "task's timeout bounds them all.", examples=["1m"])
    window: str | None = Field(None, description=_WINDOW, examples=["patching"])

    @field_validator("older_than")
    @classmethod
    def _positive(cls, v: float) -> float:
        if v <= 0:
            raise ValueError("older_than must be more than 0 (expected e.g. 30d)")
        return v


class ReportOptions(Spec):
    """What `opsagent db report` (and each scheduled run) reads from the statistics views."""

    slow_queries: int = Field(10, ge=0, le=1000, description="The N slowest statements by "
                              "mean time from pg_stat_statements (when installed); 0: none.",
                              examples=[10])
    unused_indexes: bool = Field(True, description="Indexes never scanned since the "
                                 "statistics were reset (neither unique nor primary keys).")
    bloat: bool = Field(True, description="Dead rows and an estimate of their space per "
                        "table (pg_stat_user_tables).")


class DbMaintenanceSpec(Spec):
    """One database's upkeep, run in this order: purges (they leave dead rows), VACUUM
    (reclaims them), REINDEX, then the report."""

    name: str = Field(min_length=1, description="Unique name; `opsagent db maintain NAME`.",
                      examples=["app-db"])
    postgres: DbTarget
    schedule: Cron | None = Field(None, description="When the agent service runs it (cron, "
                                  "local time); without one it runs only on demand.",
                                  examples=["30 3 * * *"])
    purge: list[PurgeTask] = Field(default_factory=list, examples=[
        [{"table": "events", "column": "created_at", "older_than": "30d", "batch": 5000}]])
    vacuum: VacuumTask | None = Field(None, examples=[{"analyze": True, "tables": ["events"]}])
    reindex: ReindexTask | None = Field(None, examples=[{"tables": ["events"],
                                                         "window": "patching"}])
    report: ReportOptions | None = Field(None, examples=[{"slow_queries": 10,
                                                          "unused_indexes": True,
                                                          "bloat": True}])
    timeout: Duration = Field(3600.0, description="Bound on the whole run: tasks not started "
                              "by then are skipped, a purge stops between batches, a running "
                              "statement is cancelled.", examples=["1h"])

    @model_validator(mode="after")
    def _something(self) -> DbMaintenanceSpec:
        if not (self.purge or self.vacuum or self.reindex or self.report):
            raise ValueError("nothing to do: declare purge, vacuum, reindex or report")
        seen: set[tuple[str, str]] = set()
        for p in self.purge:
            if (p.table, p.column) in seen:
                raise ValueError(f"purge of {p.table}.{p.column} is declared twice")
            seen.add((p.table, p.column))
        return self

    def windows(self) -> list[tuple[tuple[Any, ...], str]]:
        """(path inside this spec, window name) of every task bound to a window."""
        out: list[tuple[tuple[Any, ...], str]] = [
            (("purge", i, "window"), p.window) for i, p in enumerate(self.purge)
            if p.window is not None]
        for key in ("vacuum", "reindex"):
            task = getattr(self, key)
            if task is not None and task.window is not None:
                out.append(((key, "window"), task.window))
        return out
