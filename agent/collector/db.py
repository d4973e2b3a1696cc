"""The collector's tables (SQLAlchemy Core) and their versioned migrations.

One schema for SQLite (the embedded default) and PostgreSQL. ``schema_migrations`` records
which numbered migrations ran; ``migrate`` applies the missing ones in order, each in its
own transaction, so collectors of a newer version upgrade an older database in place.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

meta = sa.MetaData()

migrations_table = sa.Table(
    "schema_migrations", meta,
    sa.Column("version", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("applied_at", sa.Float, nullable=False),
)

tokens = sa.Table(
    "tokens", meta,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("host", sa.String(253), nullable=False, index=True),
    sa.Column("hash", sa.String(64), nullable=False, unique=True),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("revoked_at", sa.Float),
)

hosts = sa.Table(
    "hosts", meta,
    sa.Column("name", sa.String(253), primary_key=True),
    sa.Column("first_seen", sa.Float, nullable=False),
    sa.Column("last_seen", sa.Float, nullable=False),
    sa.Column("agent_version", sa.String(64), nullable=False),
    sa.Column("revision", sa.String(128)),
)

reports = sa.Table(
    "reports", meta,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("host", sa.String(253), nullable=False),
    sa.Column("type", sa.String(16), nullable=False),
    sa.Column("created", sa.Float, nullable=False),  # the agent's clock, epoch seconds
    sa.Column("received", sa.Float, nullable=False),
    sa.Column("playbook", sa.String(255)),
    sa.Column("mode", sa.String(8)),
    sa.Column("changed", sa.Integer, nullable=False, server_default="0"),
    sa.Column("failed", sa.Integer, nullable=False, server_default="0"),
    sa.Column("body", sa.Text, nullable=False),
    sa.Index("reports_host_created", "host", "created"),
)

changes = sa.Table(
    "changes", meta,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("report_id", sa.String(64), nullable=False),
    sa.Column("host", sa.String(253), nullable=False),
    sa.Column("kind", sa.String(64), nullable=False),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("field", sa.String(64), nullable=False),
    sa.Column("label", sa.String(16), nullable=False),
    sa.Column("at", sa.Float, nullable=False),
    sa.Index("changes_resource", "host", "kind", "name", "at"),
    sa.Index("changes_at", "at"),
)

resources = sa.Table(
    "resources", meta,
    sa.Column("host", sa.String(253), primary_key=True),
    sa.Column("kind", sa.String(64), primary_key=True),
    sa.Column("name", sa.Text, primary_key=True),
    sa.Column("playbook", sa.String(255), nullable=False),
    sa.Column("status", sa.String(8), nullable=False),
    sa.Column("message", sa.Text, nullable=False),
    sa.Column("at", sa.Float, nullable=False),
)

alerts = sa.Table(
    "alerts", meta,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("report_id", sa.String(64), nullable=False, unique=True),
    sa.Column("host", sa.String(253), nullable=False),
    sa.Column("key", sa.Text, nullable=False),
    sa.Column("severity", sa.String(16), nullable=False),
    sa.Column("message", sa.Text, nullable=False),
    sa.Column("at", sa.Float, nullable=False),
    sa.Index("alerts_at", "at"),
)


fleet_blocks = sa.Table(
    "fleet_blocks", meta,
    sa.Column("seq", sa.Integer, primary_key=True),
    sa.Column("report_id", sa.String(64), nullable=False),
    sa.Column("grp", sa.String(64), nullable=False),
    sa.Column("addr", sa.String(64), nullable=False),
    sa.Column("until", sa.Float, nullable=False),
    sa.Column("origin", sa.String(253), nullable=False),
    sa.Column("rule", sa.String(255), nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Index("fleet_blocks_group", "grp", "seq"),
)


incidents = sa.Table(
    "incidents", meta,
    sa.Column("id", sa.String(64), primary_key=True),  # the incident id, not a report id
    sa.Column("report_id", sa.String(64), nullable=False),  # the newest version's report
    sa.Column("host", sa.String(253), nullable=False),  # the controller that reported it
    sa.Column("runbook", sa.String(255), nullable=False),
    sa.Column("title", sa.Text, nullable=False),
    sa.Column("operator", sa.String(255), nullable=False),
    sa.Column("dry_run", sa.Integer, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("started", sa.Float, nullable=False),
    sa.Column("finished", sa.Float),
    sa.Column("updated", sa.Float, nullable=False),  # the version's created_at
    sa.Column("counts", sa.Text, nullable=False),  # JSON: hosts per status
    sa.Index("incidents_started", "started"),
)


def _v1(conn: Connection) -> None:
    for table in (tokens, hosts, reports, changes, resources, alerts):
        table.create(conn, checkfirst=True)
    if conn.dialect.name == "postgresql" and (conn.dialect.server_version_info or (0,)) >= (14,):
        # report bodies (2-4 KiB of JSON) are compressed by TOAST: lz4 costs a fraction
        # of the default pglz's CPU
        conn.execute(sa.text("ALTER TABLE reports ALTER COLUMN body SET COMPRESSION lz4"))


def _v2(conn: Connection) -> None:
    fleet_blocks.create(conn, checkfirst=True)


def _v3(conn: Connection) -> None:
    incidents.create(conn, checkfirst=True)


# Append only: a released migration is never edited, a new one gets the next number.
MIGRATIONS: list[tuple[int, Callable[[Connection], None]]] = [(1, _v1), (2, _v2), (3, _v3)]


def url_of(db: str) -> str:
    """``postgresql://…`` (psycopg 3), ``sqlite:///PATH``, or a plain file path (SQLite)."""
    if db.startswith(("postgresql://", "postgres://")):
        return "postgresql+psycopg://" + db.split("://", 1)[1]
    if "://" in db:
        return db
    return "sqlite:///" + os.path.abspath(db)


def make_engine(db: str) -> Engine:
    url = url_of(db)
    if url.startswith("sqlite"):
        engine = sa.create_engine(url, connect_args={"timeout": 30})

        @sa.event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: object, _record: object) -> None:
            cur = dbapi_conn.cursor()  # type: ignore[attr-defined]
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()

        return engine
    # No pre-ping round trip per request: after a database restart a stale connection fails
    # one request with a 5xx, which agents retry (delivery is idempotent).
    return sa.create_engine(url, pool_size=8, max_overflow=8)


def migrate(engine: Engine) -> int:
    """Apply the missing migrations; the schema version now in force. Two processes starting
    on a fresh SQLite file race to create the tables or record a version: the loser finds
    them made (or recorded) and retries."""
    for attempt in range(5):
        try:
            return _migrate(engine)
        except (sa.exc.OperationalError, sa.exc.IntegrityError) as e:
            raced = "already exists" in str(e) or "schema_migrations.version" in str(e)
            if engine.dialect.name != "sqlite" or not raced or attempt == 4:
                raise
            time.sleep(0.1 * (attempt + 1))
    raise AssertionError("unreachable")


def _migrate(engine: Engine) -> int:
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":  # one collector migrates, the others wait
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(7031)"))
        migrations_table.create(conn, checkfirst=True)
        done = {v for (v,) in conn.execute(sa.select(migrations_table.c.version))}
        for version, step in MIGRATIONS:
            if version not in done:
                step(conn)
                conn.execute(migrations_table.insert().values(version=version,
                                                              applied_at=time.time()))
    return MIGRATIONS[-1][0]
