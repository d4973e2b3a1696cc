"""Ingest into PostgreSQL: one transaction, two round trips a batch.

Through SQLAlchemy a batch took six round trips (BEGIN, four INSERTs, COMMIT), each waiting
for the one before, and on a busy machine each a wake-up of two processes. Here the batch
goes through psycopg's pipeline mode on the pooled connection:

1. ``BEGIN`` and ``INSERT INTO reports … ON CONFLICT (id) DO NOTHING RETURNING id`` leave
   together; while the server inserts, the fan-out is built as if every report were new;
2. the fan-out of the reports actually inserted (built again when some were duplicates)
   and ``COMMIT`` leave together. COMMIT answers once the transaction is durable (the
   server's synchronous_commit, on by default), and only then is the batch acknowledged.

A report sent to two collectors at once: the second INSERT waits for the first
transaction, then conflicts and does not return the id, so only one of them fans it out.
Every statement is fixed text over binary arrays (psycopg prepares it after a few uses);
table and column names come from our schema, every value travels as a parameter.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import suppress
from functools import cache
from typing import Any

import sqlalchemy as sa
from psycopg import pq

from agent.collector import db
from agent.collector.rows import FanOut, Row
from agent.report.document import Report

_IDLE = pq.TransactionStatus.IDLE
_PG_TYPES = {sa.Float: "float8", sa.Integer: "int8", sa.String: "text", sa.Text: "text"}
_NEW_REPORTS = "ON CONFLICT (id) DO NOTHING RETURNING id"
_LATEST = ("ON CONFLICT (host, kind, name) DO UPDATE SET playbook = excluded.playbook, "
           "status = excluded.status, message = excluded.message, at = excluded.at "
           "WHERE resources.at <= excluded.at")
_NEWER_INCIDENT = ("ON CONFLICT (id) DO UPDATE SET " + ", ".join(
    f"{c.name} = excluded.{c.name}" for c in db.incidents.c if c.name != "id")
    + " WHERE incidents.host = excluded.host AND incidents.updated <= excluded.updated")
_HOST = ("INSERT INTO hosts (name, first_seen, last_seen, agent_version, revision) "
         "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (name) DO UPDATE SET "
         "last_seen = excluded.last_seen, agent_version = excluded.agent_version, "
         "revision = coalesce(excluded.revision, hosts.revision)")


@cache
def _unnest_insert(table: str, cols: tuple[str, ...], tail: str = "",
                   ordered: bool = False) -> str:
    """INSERT … SELECT FROM unnest(one binary array per column): one fixed statement for
    any number of rows, where a multi-row VALUES list is parsed anew every time."""
    t = db.meta.tables[table]
    arrays = ", ".join(f"%b::{_PG_TYPES[type(t.c[c].type)]}[]" for c in cols)
    names = ", ".join(cols)
    if ordered:  # in the rows' order (serial columns follow it)
        alias = ", ".join(f"c{i}" for i in range(len(cols)))
        select = (f"SELECT {alias} FROM unnest({arrays}) WITH ORDINALITY AS u({alias}, n) "
                  "ORDER BY n")
    else:
        select = f"SELECT * FROM unnest({arrays})"
    return f"INSERT INTO {table} ({names}) {select} {tail}".rstrip()


def _bulk(table: str, rows: list[Row], tail: str = "", ordered: bool = False
          ) -> tuple[str, list[list[Any]]]:
    cols = tuple(rows[0])
    return (_unnest_insert(table, cols, tail, ordered), [[r[c] for r in rows] for c in cols])


def _fan_out_statements(fo: FanOut) -> list[tuple[str, Sequence[Any]]]:
    out: list[tuple[str, Sequence[Any]]] = [_bulk(name, rows, tail) for name, rows, tail in (
        ("changes", fo.changes, ""), ("alerts", fo.alerts, ""),
        ("resources", fo.resources, _LATEST), ("incidents", fo.incidents, _NEWER_INCIDENT))
        if rows]
    if fo.blocks:
        out.append(_bulk("fleet_blocks", fo.blocks, ordered=True))
    if (h := fo.host) is not None:
        out.append((_HOST, [h["name"], h["first_seen"], h["last_seen"], h["agent_version"],
                            h["revision"]]))
    return out


def store_batch(conn: Any, batch: Sequence[Report], rows: list[Row],
                fan_out: Callable[[Sequence[Report]], FanOut]) -> set[str]:
    """Store ``batch`` (its report ``rows``) and the fan-out of its new reports in one
    transaction on ``conn`` (a psycopg connection, idle); the ids of the new reports."""
    conn.autocommit = True  # BEGIN and COMMIT are ours, sent in the pipeline
    try:
        with conn.pipeline() as pipeline:
            cur = conn.cursor()
            conn.execute("BEGIN")
            cur.execute(*_bulk("reports", rows, _NEW_REPORTS))
            planned = fan_out(batch)  # meanwhile the server inserts
            pipeline.sync()
            new = {i for (i,) in cur.fetchall()}
            if new:
                if len(new) < len(batch):
                    planned = fan_out([r for r in batch if r.id in new])
                for sql, params in _fan_out_statements(planned):
                    cur.execute(sql, params)
            conn.execute("COMMIT")
    except BaseException:
        if not conn.closed and conn.info.transaction_status != _IDLE:
            with suppress(Exception):  # a broken connection: the caller drops it
                conn.execute("ROLLBACK")
        raise
    finally:
        if not conn.closed and conn.info.transaction_status == _IDLE:
            conn.autocommit = False
    return new
