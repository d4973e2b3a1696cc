"""Helpers of the backup tests: specs and playbooks, a seeded database and its fingerprint."""

from __future__ import annotations

import json
import pathlib
from typing import Any

import yaml

from agent.playbook.models.backups import BackupSpec


def backup_spec(dest: pathlib.Path, source: dict[str, Any], name: str = "b",
                **fields: Any) -> BackupSpec:
    doc = {"name": name, "schedule": "0 2 * * *", "source": source,
           "destination": str(dest), **fields}
    return BackupSpec.model_validate(doc)


def write_playbook(path: pathlib.Path, *backups: dict[str, Any]) -> pathlib.Path:
    path.write_text(yaml.safe_dump({"name": "backups-test", "backups": list(backups)}))
    return path


def seed(url: str, role: str, rows: int = 3000) -> None:
    """A few tables (thousands of rows), a sequence, a view, bytea, and a role owning a table."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as c:
        c.execute(f"CREATE ROLE {role} LOGIN PASSWORD 'pw-{role}'")
        c.execute("CREATE SEQUENCE invoice_no START 1000")
        c.execute("CREATE TABLE customers (id serial PRIMARY KEY, name text NOT NULL, "
                  "email text UNIQUE, created timestamptz NOT NULL)")
        c.execute("INSERT INTO customers (name, email, created) SELECT 'customer ' || i, "
                  "'c' || i || '@example.com', timestamptz '2026-01-01' + i * interval '1 h' "
                  f"FROM generate_series(1, {rows}) i")
        c.execute("CREATE TABLE orders (id bigserial PRIMARY KEY, customer_id int NOT NULL "
                  "REFERENCES customers, amount numeric(10,2), "
                  "invoice int NOT NULL DEFAULT nextval('invoice_no'), note text)")
        c.execute("INSERT INTO orders (customer_id, amount, note) SELECT 1 + i % "
                  f"{rows}, (i * 37 % 10000) / 100.0, CASE WHEN i % 7 = 0 THEN NULL ELSE "
                  f"'ütf-8 ✓ ' || md5(i::text) END FROM generate_series(1, {2 * rows}) i")
        c.execute("CREATE INDEX orders_customer ON orders (customer_id)")
        c.execute("CREATE TABLE blobs (id int PRIMARY KEY, data bytea)")
        c.execute("INSERT INTO blobs SELECT i, decode(repeat(md5(i::text), 8), 'hex') "
                  "FROM generate_series(1, 200) i")
        c.execute("CREATE VIEW big_spenders AS SELECT customer_id, sum(amount) AS total "
                  "FROM orders GROUP BY customer_id HAVING sum(amount) > 150")
        c.execute(f"ALTER TABLE orders OWNER TO {role}")
        c.execute(f"GRANT SELECT ON customers TO {role}")
        c.execute("SELECT nextval('invoice_no') FROM generate_series(1, 5)")


def fingerprint(url: str) -> dict[str, Any]:
    """Row count and a checksum of every table's content, sequences, owners and grants."""
    import psycopg

    out: dict[str, Any] = {}
    with psycopg.connect(url) as c:
        tables = [r[0] for r in c.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1")]
        for t in tables:
            out[t] = c.execute(f"SELECT count(*), md5(coalesce(string_agg(x::text, '|' "
                               f"ORDER BY x::text), '')) FROM {t} x").fetchone()
        out["owners"] = c.execute("SELECT tablename, tableowner FROM pg_tables WHERE "
                                  "schemaname = 'public' ORDER BY 1").fetchall()
        out["sequences"] = c.execute("SELECT sequencename, last_value FROM pg_sequences "
                                     "ORDER BY 1").fetchall()
        out["grants"] = c.execute("SELECT grantee, table_name, privilege_type FROM "
                                  "information_schema.role_table_grants WHERE table_schema = "
                                  "'public' ORDER BY 1, 2, 3").fetchall()
        out["view"] = c.execute("SELECT count(*), sum(total) FROM big_spenders").fetchone() \
            if "big_spenders" in [r[0] for r in c.execute(
                "SELECT viewname FROM pg_views WHERE schemaname = 'public'")] else None
    return json.loads(json.dumps(out, default=str))


def role_password(url: str, role: str) -> str | None:
    import psycopg

    with psycopg.connect(url) as c:
        row = c.execute("SELECT rolpassword FROM pg_authid WHERE rolname = %s",
                        (role,)).fetchone()
    return row[0] if row else None


def drop_database(server_url: str, db: str, *roles: str) -> None:
    import psycopg

    with psycopg.connect(server_url, autocommit=True) as c:
        c.execute(f'DROP DATABASE "{db}" WITH (FORCE)')
        for role in roles:
            c.execute(f"DROP ROLE {role}")
