"""Prove a run restorable: checksums, full decompression, a scratch restore and a query.

1. Every stored file's size and sha256 against the manifest (a flipped byte is named).
2. Every artefact decrypted (when the spec holds the key) and decompressed in full, its content
   checked against the manifest's size and sha256 of what was backed up.
3. With ``verify: {restore: true}`` and a PostgreSQL source: one dump (``verify.database``, else
   the first) restored with pg_restore into a scratch database on the source's server, created
   under a unique name and dropped afterwards whatever happens; then ``verify.query`` runs
   there. It fails on an error, on no row, or on a first value that is false or NULL.

An age-encrypted run without ``age_identity_file`` is checked by checksum only (the result says
so). The outcome is stored beside the manifest (verify.json) and shown by ``backup list``.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from agent.backups import BackupError
from agent.backups.crypto import missing_key
from agent.backups.sources import pg_bin, read_dsn
from agent.backups.store import (
    ArtefactInfo,
    HashingWriter,
    RunInfo,
    check_stored,
    hold_lock,
    iso,
    list_runs,
    read_artefact,
    write_verify_record,
)
from agent.errors import OpsAgentError
from agent.playbook.models.backups import BackupSpec

SCRATCH_PREFIX = "opsagent_verify_"
MAX_ROWS = 20


@dataclass(frozen=True)
class ArtefactCheck:
    name: str
    file: str
    ok: bool
    detail: str


@dataclass
class VerifyResult:
    backup: str
    run_id: str | None
    ok: bool
    checks: list[ArtefactCheck] = field(default_factory=list)
    restored: str | None = None          # the database restored into a scratch one
    query_result: list[list[Any]] | None = None
    error: str | None = None
    duration_s: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def verify_run(spec: BackupSpec, run: RunInfo | None = None) -> VerifyResult:
    """Verify ``run`` (default: the newest) holding the backup's lock."""
    runs = list_runs(spec) if run is None else [run]
    if not runs:
        return VerifyResult(spec.name, None, False,
                            error=f"backup {spec.name} has no complete run to verify")
    with hold_lock(spec):
        return verify_locked(spec, runs[-1], deadline=time.monotonic() + spec.timeout)


def verify_locked(spec: BackupSpec, run: RunInfo, *, deadline: float) -> VerifyResult:
    """Verify with the lock already held (run_backup calls this right after storing)."""
    t0 = time.monotonic()
    result = VerifyResult(spec.name, run.run_id, True)
    for art in run.artefacts:
        try:
            check_stored(run, art)
        except BackupError as e:
            result.checks.append(ArtefactCheck(art.name, art.file, False, str(e)))
    if not result.checks:
        _check_contents(spec, run, result, deadline)
    failed = [c for c in result.checks if not c.ok]
    if failed and result.error is None:
        result.error = "; ".join(c.detail for c in failed)
    result.ok = result.error is None
    result.duration_s = round(time.monotonic() - t0, 3)
    write_verify_record(run, {"ok": result.ok, "at": iso(datetime.now(UTC)),
                              "error": result.error, "query_result": result.query_result,
                              "duration_s": result.duration_s})
    return result


def _check_contents(spec: BackupSpec, run: RunInfo, result: VerifyResult,
                    deadline: float) -> None:
    v = spec.verify
    target = _restore_target(spec, run) if v is not None and v.restore else None
    if v is not None and v.restore and spec.source.postgres is not None and target is None:
        which = f"of database {v.database}" if v.database else "of any database"
        result.error = f"verify.restore: run {run.run_id} has no dump {which}"
        return
    for art in run.artefacts:
        problem = missing_key(art.encryption, spec.encryption)
        if problem:
            result.checks.append(ArtefactCheck(art.name, art.file, True,
                                               f"sha256 ok; content not read: {problem}"))
            continue
        try:
            if art is target:
                result.restored = str(art.meta.get("database"))
                result.query_result = _scratch_restore(spec, run, art, deadline)
                detail = "sha256 ok; restored into a scratch database"
            else:
                read_artefact(run, art, spec.encryption, HashingWriter())
                detail = f"sha256 ok; {art.bytes_raw} bytes decompressed and checked"
            result.checks.append(ArtefactCheck(art.name, art.file, True, detail))
        except (OpsAgentError, OSError) as e:
            result.checks.append(ArtefactCheck(art.name, art.file, False, str(e)))


def _restore_target(spec: BackupSpec, run: RunInfo) -> ArtefactInfo | None:
    dumps = [a for a in run.artefacts if a.kind == "pg_dump"]
    v = spec.verify
    if v is not None and v.database is not None:
        dumps = [a for a in dumps if a.meta.get("database") == v.database]
    return dumps[0] if dumps else None


def scratch_name(spec: BackupSpec) -> str:
    """Unique, and traceable to the backup: opsagent_verify_<8 hex of the name>_<8 random>."""
    tag = hashlib.sha256(spec.name.encode()).hexdigest()[:8]
    return f"{SCRATCH_PREFIX}{tag}_{secrets.token_hex(4)}"


def _scratch_restore(spec: BackupSpec, run: RunInfo, art: ArtefactInfo,
                     deadline: float) -> list[list[Any]] | None:
    from agent.backups.restore import create_database, drop_database, pg_restore

    assert spec.source.postgres is not None and spec.verify is not None
    server = read_dsn(spec.source.postgres)
    name = scratch_name(spec)
    with server.connect(None, 30) as conn:
        # scratch databases of this backup left by a verification that was killed: we hold
        # the backup's lock, so none of them is in use
        prefix = name.rsplit("_", 1)[0] + "_"
        for (old,) in conn.execute("SELECT datname FROM pg_database WHERE starts_with("
                                   "datname, %s)", (prefix,)).fetchall():
            drop_database(conn, old)
        create_database(conn, name, art.meta, None)
        major = server.major(conn)
    try:
        argv = [pg_bin("pg_restore", major), "-w", "--exit-on-error", "--no-owner",
                "--no-privileges", "-d", server.dbname_arg(name)]
        pg_restore(spec, run, art, argv, server, deadline)
        if spec.verify.query is None:
            return None
        return _query(server, name, spec.verify.query, deadline)
    finally:
        with server.connect(None, 30) as conn:
            drop_database(conn, name)


def _query(server: Any, dbname: str, query: str, deadline: float) -> list[list[Any]]:
    import psycopg

    budget_ms = max(1000, int((deadline - time.monotonic()) * 1000))
    with server.connect(dbname, 30) as conn:
        try:
            conn.execute(f"SET statement_timeout = {budget_ms}")
            cur = conn.execute(query.encode())
            rows = cur.fetchmany(MAX_ROWS) if cur.description else []
        except psycopg.Error as e:
            raise BackupError(f"verify.query failed in the restored copy: "
                              f"{str(e).strip().splitlines()[0]}") from None
    out = [[_plain(v) for v in row] for row in rows]
    if not out:
        raise BackupError("verify.query returned no row in the restored copy")
    if out[0] and (out[0][0] is None or out[0][0] is False):
        raise BackupError(f"verify.query returned {out[0][0]} in the restored copy")
    return out


def _plain(value: Any) -> Any:
    return value if isinstance(value, bool | int | float | str) or value is None else str(value)
