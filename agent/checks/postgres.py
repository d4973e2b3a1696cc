"""The ``postgres`` probe: connect, run the check's query, then look at the server's load.

One connection per probe (a health check must see what a new client sees: a full
``max_connections`` or a failing ``pg_hba.conf`` are exactly what it is for). The DSN comes
from an environment variable or a file, never the playbook, and holds a password: it is never
put in a message, and the password is masked in the server's and libpq's error text.

Connections are counted as client backends in ``pg_stat_activity`` against
``max_connections``. A role without ``pg_read_all_stats`` sees other roles' sessions but not
their state, so long queries of other roles are only counted for a privileged role.
"""

from __future__ import annotations

import math
import time
from typing import Any

from agent.checks import elapsed_ms, one_line
from agent.checks.base import Health, Outcome, worst
from agent.playbook.models.checks import PostgresProbe
from agent.playbook.types import format_duration

_STATS = b"""
SELECT (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'),
       current_setting('max_connections')::int,
       (SELECT count(*) FROM pg_stat_activity
         WHERE backend_type = 'client backend' AND state = 'active'
           AND pid <> pg_backend_pid() AND now() - query_start > make_interval(secs => %s))
"""


class _NoDsn(Exception):
    """The DSN's variable or file is missing: a set-up problem, said as such."""


def probe_postgres(spec: PostgresProbe, timeout: float) -> Outcome:
    import psycopg

    try:
        dsn = read_dsn(spec)
    except _NoDsn as e:
        return Outcome("unhealthy", str(e))
    described = describe_dsn(dsn)
    if described is None:  # libpq's parse error would quote the DSN, password and all
        return Outcome("unhealthy", f"the DSN from {_source(spec)} is not a valid connection "
                                    "string or URL")
    target, password = described
    start = time.monotonic()  # after the import of psycopg above: its first use is slow
    try:
        stats = _query(spec, dsn, timeout)
    except psycopg.errors.QueryCanceled:
        return Outcome("unhealthy", f"{target}: the query did not finish within {timeout:g}s")
    except (psycopg.Error, OSError) as e:
        text = str(e) or type(e).__name__
        if password:
            text = text.replace(password, "***")
        return Outcome("unhealthy", one_line(f"{target}: {text}"))
    outcome = grade(spec, target, *stats)
    outcome.latency_ms = elapsed_ms(start)
    return outcome


def read_dsn(spec: PostgresProbe) -> str:
    from agent.secrets import read_secret

    return read_secret(spec, "dsn", _NoDsn, strip=True)


def describe_dsn(dsn: str) -> tuple[str, str] | None:
    """("postgres host:port/db", password or "") — what a message may name, what it must not;
    None when the DSN does not parse."""
    from psycopg.conninfo import conninfo_to_dict

    try:
        parts: dict[str, Any] = conninfo_to_dict(dsn)
    except Exception:  # psycopg.ProgrammingError from libpq's parser
        return None
    host = parts.get("host") or parts.get("hostaddr") or "local socket"
    port = f":{parts['port']}" if parts.get("port") else ""
    db = f"/{parts['dbname']}" if parts.get("dbname") else ""
    return f"postgres {host}{port}{db}", str(parts.get("password") or "")


def _source(spec: PostgresProbe) -> str:
    return f"dsn_env {spec.dsn_env}" if spec.dsn_env else f"dsn_file {spec.dsn_file}"


def _query(spec: PostgresProbe, dsn: str, timeout: float) -> tuple[int, int, int]:
    """Run the check's query, then read (connections, max_connections, long queries)."""
    import psycopg

    connect_timeout = max(2, math.ceil(timeout))  # libpq: whole seconds, 1 would mean 2
    with psycopg.connect(dsn, connect_timeout=connect_timeout, autocommit=True) as conn:
        conn.execute(b"SELECT set_config('statement_timeout', %s, false)",
                     [f"{int(timeout * 1000)}ms"])
        conn.execute(spec.query.encode())
        row = conn.execute(_STATS, [spec.long_query or 0.0]).fetchone()
    if row is None:
        raise psycopg.DataError("pg_stat_activity returned no row")
    return int(row[0]), int(row[1]), int(row[2])


def grade(spec: PostgresProbe, target: str, used: int, limit: int, long_running: int) -> Outcome:
    """Degraded above max_connections_percent, or with queries running past long_query."""
    percent = round(100.0 * used / limit, 2) if limit else 0.0
    values = {"connections": float(used), "max_connections": float(limit),
              "connections_percent": percent}
    status: Health = "healthy"
    notes = [f"{used}/{limit} connections ({percent:.0f}%)"]
    if spec.max_connections_percent is not None and percent > spec.max_connections_percent:
        status = "degraded"
        notes[0] += f", above {spec.max_connections_percent:g}%"
    if spec.long_query is not None:
        values["long_queries"] = float(long_running)
        if long_running > 0:
            status = worst(status, "degraded")
            notes.append(f"{long_running} running longer than {format_duration(spec.long_query)}")
    return Outcome(status, f"{target}: query ok; {'; '.join(notes)}", None, values)
