"""Put a backup back. ``restore(..., yes=False)`` only plans (and refuses early); ``yes=True``
does it. Every artefact used is checked against its manifest before anything is changed.

What each source restores, and what it refuses without ``force``:

- ``postgres``: roles first (only the missing ones are created, existing roles are left as
  they are), then each dump with ``pg_restore --single-transaction --exit-on-error`` into a
  database of the same name, or ``to`` (a name on the source's server, or a full connection
  string for another server). A missing database is created (template0, the dumped encoding,
  collation and owner). An existing database that holds no relations is restored into. One
  that holds any is refused; ``force`` replaces it: its connections are ended, it is dropped
  and created again. A failed restore drops a database it created, and a failed
  single-transaction restore leaves nothing behind in an existing one.
- ``paths``: the tree is extracted under ``to`` (default ``/``: where it came from) with
  modes, owners, times, symlinks and hard links. An existing file, link or device at any
  member's place is refused (all are listed first, before anything is written); ``force``
  replaces them. Existing directories are merged into. Members are never written through a
  symlink, nor outside ``to``.
- ``redis`` and ``command``: the RDB or the output is written to the file ``to`` (required),
  atomically; an existing file is refused without ``force``.
"""

from __future__ import annotations

import contextlib
import os
import re
import tarfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import IO, Any

from agent.backups import BackupError, IntegrityError, RestoreRefused
from agent.backups.crypto import missing_key
from agent.backups.sources import PgServer, feed_command, pg_bin, read_dsn, server_of
from agent.backups.store import ArtefactInfo, RunInfo, check_stored, hold_lock, list_runs
from agent.backups.store import read_artefact as _read_artefact
from agent.errors import UsageError
from agent.playbook.models.backups import BackupSpec


@dataclass
class RestoreResult:
    backup: str
    run_id: str
    source: str
    applied: bool                       # False: planned only (yes=False)
    steps: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    duration_s: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def restore(spec: BackupSpec, run_id: str | None = None, at: datetime | None = None,
            to: str | None = None, yes: bool = False, *, force: bool = False,
            database: str | None = None) -> RestoreResult:
    """Restore run ``run_id`` (else the newest at or before ``at``, else the newest).

    With ``yes=False`` nothing changes: the result lists the steps; RestoreRefused (target
    holds data, no ``force``) and UsageError (bad request) come out of the plan already.
    """
    t0 = time.monotonic()
    run = pick_run(spec, run_id, at)
    problem = missing_key(next((a.encryption for a in run.artefacts if a.encryption), None),
                          spec.encryption)
    if problem:
        raise UsageError(problem)
    result = RestoreResult(spec.name, run.run_id, run.source, applied=yes)
    if run.source == "postgres":
        _postgres(spec, run, to, database, force, yes, result)
    elif run.source == "paths":
        _files(spec, run, to or "/", force, yes, result)
    else:
        _single_file(spec, run, to, force, yes, result)
    result.duration_s = round(time.monotonic() - t0, 3)
    return result


def pick_run(spec: BackupSpec, run_id: str | None, at: datetime | None) -> RunInfo:
    runs = list_runs(spec)
    if not runs:
        raise UsageError(f"backup {spec.name} has no complete run in {spec.destination}")
    if run_id is not None:
        for run in runs:
            if run.run_id == run_id:
                return run
        raise UsageError(f"backup {spec.name} has no run {run_id} (see opsagent backup list)")
    if at is not None:
        before = [r for r in runs if r.started <= at]
        if not before:
            raise UsageError(f"backup {spec.name} has no run at or before {at.isoformat()} "
                             f"(the oldest is {runs[0].run_id})")
        return before[-1]
    return runs[-1]


@contextlib.contextmanager
def _locked_and_checked(spec: BackupSpec, run: RunInfo,
                        arts: list[ArtefactInfo]) -> Iterator[None]:
    with hold_lock(spec):  # retention cannot prune the run while it is read
        for art in arts:
            check_stored(run, art)
        yield


# --- PostgreSQL ---------------------------------------------------------------------------------

@dataclass
class _DbTarget:
    art: ArtefactInfo
    name: str
    exists: bool
    relations: int
    connections: int


def _pg_targets(spec: BackupSpec, run: RunInfo, to: str | None, database: str | None
                ) -> tuple[PgServer, list[tuple[ArtefactInfo, str]]]:
    """The server to restore to, and (dump, database name) pairs."""
    dumps = [a for a in run.artefacts if a.kind == "pg_dump"]
    have = ", ".join(str(a.meta.get("database")) for a in dumps) or "none"
    if database is not None:
        dumps = [a for a in dumps if a.meta.get("database") == database]
        if not dumps:
            raise UsageError(f"run {run.run_id} has no dump of database {database!r} "
                             f"(it has: {have})")
    if to is not None and len(dumps) > 1:
        raise UsageError(f"run {run.run_id} holds {len(dumps)} databases ({have}): pick the "
                         "one to restore into --to with --database NAME")
    if to is not None and ("=" in to or "://" in to):
        server = server_of(to, "--to")
        return server, [(a, server.params.get("dbname") or str(a.meta["database"]))
                        for a in dumps]
    if spec.source.postgres is None:
        raise UsageError(f"backup {spec.name} no longer has a postgres source: give --to "
                         "as a connection string")
    return read_dsn(spec.source.postgres), [(a, to or str(a.meta["database"])) for a in dumps]


def _postgres(spec: BackupSpec, run: RunInfo, to: str | None, database: str | None,
              force: bool, yes: bool, result: RestoreResult) -> None:
    server, pairs = _pg_targets(spec, run, to, database)
    dumps = [a for a, _ in pairs]
    globals_art = next((a for a in run.artefacts if a.kind == "pg_dumpall"), None)
    with server.connect(None, 30) as conn:
        targets = [_probe(server, conn, a, n) for a, n in pairs]
        roles = set(r for (r,) in conn.execute("SELECT rolname FROM pg_roles").fetchall())
    for t in targets:
        if t.exists and t.relations and not force:
            raise RestoreRefused(
                f"database {t.name} on {server.describe()} holds {t.relations} relations and "
                f"has {t.connections} connections: restoring would overwrite it. Give "
                "--force to replace it, or --to NEW_NAME to restore beside it")
    new_roles: list[str] = []
    if globals_art is not None:
        text = _read_small(spec, run, globals_art)
        new_roles = [r for r in _created_roles(text) if r not in roles]
        result.steps.append(f"roles: create {', '.join(new_roles)}" if new_roles else
                            "roles: all roles of the backup exist; left as they are")
    for t in targets:
        what = f"{t.art.meta['database']} ({t.art.bytes_raw} bytes) into {t.name}"
        if not t.exists:
            result.steps.append(f"create database {t.name}; restore {what}")
        elif t.relations:
            result.steps.append(f"REPLACE database {t.name} ({t.relations} relations, "
                                f"{t.connections} connections ended); restore {what}")
        else:
            result.steps.append(f"restore {what} (exists, empty)")
    if not yes:
        return
    with _locked_and_checked(spec, run, [*dumps, *([globals_art] if globals_art else [])]):
        if globals_art is not None and new_roles:
            result.warnings += apply_globals(server, _read_small(spec, run, globals_art), roles)
        for t in targets:
            _restore_db(spec, run, server, t, roles | set(new_roles))


def _probe(server: PgServer, conn: Any, art: ArtefactInfo, name: str) -> _DbTarget:
    row = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
    if row is None:
        return _DbTarget(art, name, False, 0, 0)
    conns = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s",
                         (name,)).fetchone()[0]
    try:
        with server.connect(name, 30) as other:
            rels = int(other.execute(
                "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') "
                "AND n.nspname !~ '^pg_(toast|temp)'").fetchone()[0])
    except BackupError:  # cannot look inside (no CONNECT right): count it as holding data
        rels = 1
    return _DbTarget(art, name, True, rels, int(conns))


def _restore_db(spec: BackupSpec, run: RunInfo, server: PgServer, t: _DbTarget,
                roles: set[str]) -> None:
    from psycopg import sql

    created = False
    with server.connect(None, 30) as conn:
        if t.exists and t.relations:
            conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(t.name)))
            t.exists = False
        if not t.exists:
            owner = t.art.meta.get("owner")
            create_database(conn, t.name, t.art.meta, owner if owner in roles else None)
            created = True
        major = server.major(conn)
    argv = [pg_bin("pg_restore", major), "-w", "--exit-on-error", "--single-transaction",
            "-d", server.dbname_arg(t.name)]
    try:
        pg_restore(spec, run, t.art, argv, server)
    except BaseException:
        if created:
            with server.connect(None, 30) as conn:
                drop_database(conn, t.name)
        raise


def pg_restore(spec: BackupSpec, run: RunInfo, art: ArtefactInfo, argv: list[str],
               server: PgServer, deadline: float | None = None) -> None:
    """Feed the artefact's dump to pg_restore's stdin (argv carries no secret)."""
    when = deadline if deadline is not None else time.monotonic() + spec.timeout
    with feed_command(argv, env=server.env(), deadline=when, what="pg_restore",
                      hide=(server.password,), error=BackupError) as sink:
        _read_artefact(run, art, spec.encryption, sink)


def create_database(conn: Any, name: str, meta: dict[str, Any], owner: str | None) -> None:
    from psycopg import sql

    parts = [sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(sql.Identifier(name))]
    for key, option in (("encoding", "ENCODING"), ("collate", "LC_COLLATE"),
                        ("ctype", "LC_CTYPE")):
        if meta.get(key):
            parts.append(sql.SQL(option + " {}").format(sql.Literal(str(meta[key]))))
    if owner:
        parts.append(sql.SQL("OWNER {}").format(sql.Identifier(owner)))
    conn.execute(sql.SQL(" ").join(parts))


def drop_database(conn: Any, name: str) -> None:
    from psycopg import sql

    conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


_CREATE_ROLE = re.compile(r'^CREATE ROLE ("(?:[^"]|"")+"|[^\s;]+);$')
_ALTER_ROLE = re.compile(r'^ALTER ROLE ("(?:[^"]|"")+"|[^\s;]+) ')


def _ident(token: str) -> str:
    return token[1:-1].replace('""', '"') if token.startswith('"') else token


def _created_roles(text: str) -> list[str]:
    return [_ident(m.group(1)) for s in _statements(text) if (m := _CREATE_ROLE.match(s))]


def _statements(text: str) -> Iterator[str]:
    """pg_dumpall's SQL statements, each possibly over several lines (a quoted newline);
    comments and psql meta-commands (``\\restrict``) between statements are left out."""
    buf: list[str] = []
    quote: str | None = None
    for line in text.splitlines():
        if not buf and (not line.strip() or line.startswith(("--", "\\"))):
            continue
        buf.append(line)
        for ch in line:  # a doubled quote ('' or "") closes and reopens: still inside
            if quote is not None:
                if ch == quote:
                    quote = None
            elif ch in "'\"":
                quote = ch
        if quote is None and line.rstrip().endswith(";"):
            yield "\n".join(buf).strip()
            buf = []


def apply_globals(server: PgServer, text: str, existing: set[str]) -> list[str]:
    """Run pg_dumpall's globals, creating only missing roles; failures become warnings."""
    import psycopg

    warnings: list[str] = []
    with server.connect(None, 30) as conn:
        for stmt in _statements(text):
            m = _CREATE_ROLE.match(stmt) or _ALTER_ROLE.match(stmt)
            if m and _ident(m.group(1)) in existing:
                continue  # an existing role keeps its attributes and password
            if stmt.startswith("CREATE TABLESPACE"):
                warnings.append("tablespaces are not restored: " + stmt.split(" OWNER")[0])
                continue
            try:
                conn.execute(stmt.encode())
            except psycopg.Error as e:
                first = stmt.split("\n")[0]
                if "PASSWORD" in first:
                    first = first.split("PASSWORD")[0] + "PASSWORD ***"
                warnings.append(f"{first[:120]}: {str(e).strip().splitlines()[0]}")
    return warnings


def _read_small(spec: BackupSpec, run: RunInfo, art: ArtefactInfo) -> str:
    sink = _Buffer()
    _read_artefact(run, art, spec.encryption, sink)
    return sink.data.decode("utf-8", "replace")


class _Buffer:
    def __init__(self) -> None:
        self.data = b""

    def write(self, data: bytes) -> int:
        if len(self.data) + len(data) > 64 << 20:
            raise BackupError("the roles dump is larger than 64 MiB")
        self.data += data
        return len(data)


# --- files ------------------------------------------------------------------------------------

def _files(spec: BackupSpec, run: RunInfo, to: str, force: bool, yes: bool,
           result: RestoreResult) -> None:
    art = next(a for a in run.artefacts if a.kind == "tar")
    dest = os.path.realpath(to)
    members, conflicts = 0, []
    with _plain(spec, run, art) as stream, tarfile.open(fileobj=stream, mode="r|") as tar:
        for m in tar:
            _check_name(m)
            members += 1
            target = os.path.join(dest, m.name)
            if os.path.lexists(target) and not (m.isdir() and _is_dir(target)):
                conflicts.append(target)
    if conflicts and not force:
        shown = ", ".join(conflicts[:5]) + (f" and {len(conflicts) - 5} more"
                                             if len(conflicts) > 5 else "")
        raise RestoreRefused(f"{len(conflicts)} paths exist already: {shown}. Give --force to "
                             "replace them, or --to an empty directory")
    result.steps.append(f"extract {members} entries under {dest}" +
                        (f", replacing {len(conflicts)} existing" if conflicts else ""))
    if not yes:
        return
    with _locked_and_checked(spec, run, [art]):
        _extract(spec, run, art, dest)


def _extract(spec: BackupSpec, run: RunInfo, art: ArtefactInfo, dest: str) -> None:
    os.makedirs(dest, exist_ok=True)
    dirs: list[tarfile.TarInfo] = []
    with _plain(spec, run, art) as stream, tarfile.open(fileobj=stream, mode="r|") as tar:
        for m in tar:
            _check_name(m)
            target = os.path.join(dest, m.name)
            _no_symlink_between(dest, os.path.dirname(target))
            if os.path.lexists(target) and not (m.isdir() and _is_dir(target)):
                if _is_dir(target):
                    raise RestoreRefused(f"{target} is a directory; the backup has a file there")
                os.unlink(target)
            tar.extract(m, dest, set_attrs=True, numeric_owner=False)
            if m.isdir():
                dirs.append(m)
        for m in reversed(dirs):  # extracting their contents changed their times
            target = os.path.join(dest, m.name)
            tar.chown(m, target, False)
            tar.chmod(m, target)
            tar.utime(m, target)


def _check_name(m: tarfile.TarInfo) -> None:
    parts = m.name.split("/")
    if m.name.startswith("/") or ".." in parts or not m.name:
        raise IntegrityError(f"archive member {m.name!r} would land outside the target")
    if m.islnk() and (m.linkname.startswith("/") or ".." in m.linkname.split("/")):
        raise IntegrityError(f"hard link {m.name!r} points outside the archive")


def _is_dir(path: str) -> bool:
    return os.path.isdir(path) and not os.path.islink(path)


def _no_symlink_between(dest: str, parent: str) -> None:
    rel = os.path.relpath(parent, dest)
    path = dest
    for part in [] if rel == "." else rel.split(os.sep):
        path = os.path.join(path, part)
        if os.path.islink(path):
            raise IntegrityError(f"{path} is a symlink: refusing to extract through it")


@contextlib.contextmanager
def _plain(spec: BackupSpec, run: RunInfo, art: ArtefactInfo) -> Iterator[IO[bytes]]:
    """The artefact's content as a readable stream (decrypted and decompressed in a thread)."""
    r, w = os.pipe()
    errors: list[BaseException] = []

    def pump() -> None:
        try:
            with open(w, "wb") as sink:
                _read_artefact(run, art, spec.encryption, sink)
        except BrokenPipeError:
            pass  # the reader stopped early: its own error is the one to see
        except BaseException as e:
            errors.append(e)

    thread = threading.Thread(target=pump, name="restore-pump", daemon=True)
    thread.start()
    with open(r, "rb") as stream:
        try:
            yield stream
            while stream.read(1 << 16):
                pass
        finally:
            stream.close()
            thread.join()
    if errors:
        raise errors[0]


# --- redis, command ---------------------------------------------------------------------------

def _single_file(spec: BackupSpec, run: RunInfo, to: str | None, force: bool, yes: bool,
                 result: RestoreResult) -> None:
    art = run.artefacts[0]
    if to is None:
        raise UsageError(f"give --to FILE: where to write the {art.name} of run {run.run_id}")
    target = os.path.abspath(to)
    if os.path.lexists(target) and not force:
        raise RestoreRefused(f"{target} exists: give --force to replace it")
    result.steps.append(f"write {art.name} ({art.bytes_raw} bytes) to {target}")
    if not yes:
        return
    tmp = f"{target}.opsagent-restore"
    with _locked_and_checked(spec, run, [art]):
        try:
            with open(tmp, "wb") as f:
                os.fchmod(f.fileno(), 0o600)
                _read_artefact(run, art, spec.encryption, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

