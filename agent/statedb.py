"""The agent's state database: ``STATE_DIR/state.db`` (SQLite, WAL), private to root.

Restart budgets, pending handler notifications and alert events live here: small tables
written in short transactions, shared safely by the agent service and an operator's
``opsagent apply`` running next to it. The directory is created 0700 and the file 0600.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Iterator

from agent.errors import ProviderError

DB_NAME = "state.db"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS restart_attempts (key TEXT NOT NULL, at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS restart_attempts_key ON restart_attempts (key, at);
CREATE TABLE IF NOT EXISTS pending_handlers (
    playbook TEXT NOT NULL, ref TEXT NOT NULL, notifier TEXT NOT NULL, at REAL NOT NULL,
    PRIMARY KEY (playbook, ref, notifier));
CREATE TABLE IF NOT EXISTS alerts (
    id INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL, key TEXT NOT NULL,
    severity TEXT NOT NULL, message TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS converged (
    playbook TEXT NOT NULL, ref TEXT NOT NULL, digest TEXT NOT NULL, at REAL NOT NULL,
    PRIMARY KEY (playbook, ref));
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE, type TEXT NOT NULL,
    critical INTEGER NOT NULL, created REAL NOT NULL, size INTEGER NOT NULL, body BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS outbox_critical ON outbox (critical, seq);
CREATE TABLE IF NOT EXISTS outbox_parked (
    seq INTEGER PRIMARY KEY, id TEXT NOT NULL, type TEXT NOT NULL, critical INTEGER NOT NULL,
    created REAL NOT NULL, size INTEGER NOT NULL, body BLOB NOT NULL, reason TEXT NOT NULL,
    parked_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS outbox_meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS alert_state (key TEXT PRIMARY KEY, doc TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS notify_queue (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, notifier TEXT NOT NULL, spec TEXT NOT NULL,
    body TEXT NOT NULL, created REAL NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
    next_at REAL NOT NULL, last_error TEXT);
CREATE INDEX IF NOT EXISTS notify_queue_due ON notify_queue (notifier, next_at, seq);
CREATE TABLE IF NOT EXISTS notify_dead (
    seq INTEGER PRIMARY KEY, notifier TEXT NOT NULL, spec TEXT NOT NULL, body TEXT NOT NULL,
    created REAL NOT NULL, attempts INTEGER NOT NULL, reason TEXT NOT NULL, at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS alert_acks (
    alert_id TEXT PRIMARY KEY, at REAL NOT NULL, by TEXT NOT NULL, comment TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS silences (
    id TEXT PRIMARY KEY, rule TEXT NOT NULL, labels TEXT NOT NULL, starts REAL NOT NULL,
    ends REAL, until_resolved INTEGER NOT NULL, comment TEXT NOT NULL, by TEXT NOT NULL,
    created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS blocks (
    addr TEXT PRIMARY KEY, until REAL NOT NULL, rule TEXT NOT NULL, reason TEXT NOT NULL,
    origin TEXT NOT NULL, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS watch_offsets (source TEXT PRIMARY KEY, doc TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS audit_findings (audit TEXT PRIMARY KEY, keys TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS job_runs (job TEXT PRIMARY KEY, doc TEXT NOT NULL);
"""


_ready: set[tuple[str, int]] = set()  # (path, inode) whose schema this process has ensured


def path_of(state_dir: str) -> str:
    return os.path.join(state_dir, DB_NAME)


@contextlib.contextmanager
def connect(state_dir: str, *, create: bool = True) -> Iterator[sqlite3.Connection | None]:
    """A connection in autocommit mode (callers open their own transactions); None when
    ``create`` is false and there is no database yet (a read by a dry run changes nothing)."""
    path = path_of(state_dir)
    if not create and not os.path.exists(path):
        yield None
        return
    try:
        if not os.path.isdir(state_dir):
            os.makedirs(state_dir, mode=0o700, exist_ok=True)
        fresh = not os.path.exists(path)
        conn = sqlite3.connect(path, timeout=5.0, isolation_level=None)
    except (OSError, sqlite3.Error) as e:
        raise ProviderError(f"cannot open the state database {path}: {e}") from e
    try:
        if fresh:
            os.chmod(path, 0o600)
            conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")  # WAL: durable across a crash of the agent
        ident = (path, os.stat(path).st_ino)
        if ident not in _ready:
            conn.executescript(_SCHEMA)
            _ready.add(ident)
        yield conn
    except (OSError, sqlite3.Error) as e:
        raise ProviderError(f"state database {path}: {e}") from e
    finally:
        conn.close()


@contextlib.contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """BEGIN IMMEDIATE … COMMIT: one writer decides and writes, rolled back on any error."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
