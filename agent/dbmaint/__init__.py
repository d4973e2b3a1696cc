"""PostgreSQL maintenance declared under ``db_maintenance:``: purges, VACUUM, REINDEX, report.

The entry points (the agent service's scheduler and ``opsagent db`` call them):

    agent.dbmaint.tasks.run_maintenance(spec, *, now=None, in_window=None, check=False)
        -> MaintenanceResult          purges, VACUUM, REINDEX, then the report if declared
    agent.dbmaint.report.report_database(spec, options=None) -> DbReport
    agent.dbmaint.open_windows(pb.maintenance, now=None) -> in_window(name) -> bool

This module holds what both need: the connection (the DSN from ``dsn_env`` or ``dsn_file``,
never in a message; the password masked in the server's error text), the statement timeout,
and the test of maintenance windows. Every statement is composed with ``psycopg.sql``
(identifiers quoted, values as parameters): names come from playbooks, never pasted in.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from agent.checks import one_line
from agent.errors import ProviderError

if TYPE_CHECKING:
    import psycopg

    from agent.playbook.models.alerting import MaintenanceWindow
    from agent.playbook.models.dbmaint import DbTarget

APPLICATION_NAME = "opsagent db maintenance"


class DbError(ProviderError):
    """The database could not be reached or read; the message is safe to print."""


def read_dsn(target: DbTarget) -> str:
    from agent.secrets import read_secret

    return read_secret(target, "dsn", DbError, strip=True)


class Connection:
    """An autocommit connection and what may be said about it: every statement is its own
    transaction (VACUUM and REINDEX CONCURRENTLY refuse to run inside one)."""

    def __init__(self, conn: psycopg.Connection[tuple[object, ...]], target: str,
                 password: str) -> None:
        self.conn, self.target, self._password = conn, target, password

    def error(self, e: BaseException) -> str:
        """One line of a psycopg error, the password masked."""
        text = str(e).strip() or type(e).__name__
        if self._password:
            text = text.replace(self._password, "***")
        return one_line(text)

    def set_timeout(self, seconds: float) -> None:
        """statement_timeout for the statements that follow (at least 1 ms: 0 means none)."""
        ms = max(1, int(seconds * 1000))
        self.conn.execute("SELECT set_config('statement_timeout', %s, false)", [f"{ms}ms"])

    def close(self) -> None:
        self.conn.close()


def connect(target: DbTarget, *, read_only: bool = False) -> Connection:
    """Connect (bounded by the target's connect_timeout); raise DbError with a safe message.

    read_only makes every transaction of the session read-only: a dry run cannot change the
    database even through a mistake here."""
    import psycopg

    from agent.checks.postgres import describe_dsn

    dsn = read_dsn(target)
    described = describe_dsn(dsn)
    source = f"dsn_env {target.dsn_env}" if target.dsn_env else f"dsn_file {target.dsn_file}"
    if described is None:  # libpq's parse error would quote the DSN, password and all
        raise DbError(f"the DSN from {source} is not a valid connection string or URL")
    where, password = described
    try:
        conn = psycopg.connect(dsn, autocommit=True,
                               connect_timeout=max(2, math.ceil(target.connect_timeout)),
                               fallback_application_name=APPLICATION_NAME)
    except (psycopg.Error, OSError) as e:
        text = str(e).strip() or type(e).__name__
        if password:
            text = text.replace(password, "***")
        raise DbError(one_line(f"{where}: {text}")) from None
    out = Connection(conn, where, password)
    if read_only:
        try:
            conn.execute("SET default_transaction_read_only = on")
        except psycopg.Error as e:
            conn.close()
            raise DbError(f"{where}: {out.error(e)}") from None
    return out


def open_windows(windows: Iterable[MaintenanceWindow],
                 now: float | None = None) -> Callable[[str], bool]:
    """``in_window`` for run_maintenance: is the named window open (at ``now``, or at the
    moment of asking when now is None)? An undeclared name is never open."""
    by_name = {w.name: w for w in windows}

    def in_window(name: str) -> bool:
        window = by_name.get(name)
        at = time.time() if now is None else now
        return window is not None and window.open_at(at) is not None

    return in_window


__all__ = ["APPLICATION_NAME", "Connection", "DbError", "connect", "open_windows", "read_dsn"]
