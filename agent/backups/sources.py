"""What a backup reads. Each source yields artefacts whose content is opened as a stream.

- ``postgres``: roles and tablespaces (``pg_dumpall --globals-only``) and one ``pg_dump -Fc``
  per database (default: every database that is not a template and allows connections).
  Dumps are taken uncompressed (``-Z0``): the store compresses with zstd, faster and smaller
  than pg_dump's gzip. The client tools of the server's major version are used
  (/usr/lib/postgresql/N/bin), else the nearest newer ones, else PATH's.
- ``redis``: BGSAVE, wait until the save count (or LASTSAVE) moves, then copy the RDB named by
  CONFIG GET dir/dbfilename; when that file is not on this host, ``redis-cli --rdb -``.
- ``paths``: a pax tar, generated here as a stream: modes, owners, times, symlinks (stored as
  links, never followed), hard links and devices kept; ``exclude`` globs skip entries.
- ``command``: an argv's stdout.

Secrets never reach an argv: the DSN's fields go to libpq's PG* environment variables, a Redis
password to REDISCLI_AUTH, and messages never quote them. No shell is involved anywhere.
"""

from __future__ import annotations

import contextlib
import fnmatch
import glob
import grp
import os
import platform
import pwd
import shutil
import stat
import subprocess
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import IO, Any

from agent.backups import BackupError, Readable, SourceError, Writable
from agent.playbook.models.backups import BackupSource, PostgresSource, RedisSource

ContextOpener = Callable[[], contextlib.AbstractContextManager[Readable]]


@dataclass
class Artefact:
    name: str                  # in the manifest: "postgres/app", "globals", "redis", …
    file_stem: str             # the stored file's name before .zst: "db-app.dump"
    kind: str                  # pg_dump | pg_dumpall | redis-rdb | tar | command
    open: ContextOpener        # the content, opened when the store is ready for it
    size_hint: int | None = None
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class SourceContext:
    deadline: float            # time.monotonic() by which every tool must be done
    scratch: Callable[[str], str]  # a path for a tool that can only write a file
    tools: dict[str, str] = field(default_factory=dict)  # tool versions, for the manifest

    def remaining(self) -> float:
        return max(0.0, self.deadline - time.monotonic())


def source_kind(src: BackupSource) -> str:
    for kind in ("postgres", "redis", "paths", "command"):
        if getattr(src, kind):
            return kind
    raise SourceError("the backup has no source")


def artefacts(src: BackupSource, ctx: SourceContext) -> Iterator[Artefact]:
    """The source's artefacts, in order; each one's stream is opened only when read."""
    ctx.tools["python"] = platform.python_version()
    if src.postgres is not None:
        yield from pg_artefacts(src.postgres, ctx)
    elif src.redis is not None:
        yield from redis_artefacts(src.redis, ctx)
    elif src.paths is not None:
        ctx.tools["tar"] = f"python {platform.python_version()} tarfile (pax format)"
        roots = [os.path.abspath(p) for p in src.paths]
        for root in roots:
            if not os.path.lexists(root):
                raise SourceError(f"paths: {root} does not exist")
        yield Artefact("files", "files.tar", "tar",
                       lambda: contextlib.nullcontext(
                           ChunkReader(tar_stream(roots, src.exclude or [], ctx.deadline))),
                       size_hint=None, meta={"paths": roots, "exclude": src.exclude or []})
    elif src.command is not None:
        argv = list(src.command)
        ctx.tools["command"] = shutil.which(argv[0]) or argv[0]
        yield Artefact("stdout", "stdout", "command",
                       lambda: stream_command(argv, env=dict(os.environ), ctx=ctx,
                                              what=f"command {argv[0]}"),
                       meta={"argv": argv})


# --- subprocesses ------------------------------------------------------------------------------

@contextlib.contextmanager
def stream_command(argv: list[str], *, env: dict[str, str], ctx: SourceContext, what: str,
                   hide: tuple[str, ...] = ()) -> Iterator[Readable]:
    """The stdout of argv as a stream; SourceError (with stderr) when it fails or runs late."""
    with tempfile.TemporaryFile() as err:
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=err, env=env, close_fds=True)
        except OSError as e:
            raise SourceError(f"{what}: cannot start {argv[0]}: {e.strerror}") from None
        assert proc.stdout is not None
        timer, late = _kill_after(proc, ctx.remaining())
        try:
            yield proc.stdout
            while proc.stdout.read(1 << 16):  # a reader that stopped early: let it finish
                pass
            rc = proc.wait()
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        finally:
            timer.cancel()
            proc.stdout.close()
        if late.is_set():
            raise SourceError(f"{what}: stopped after the backup's timeout")
        if rc != 0:
            raise SourceError(f"{what} exited {rc}: {read_tail(err, hide)}")


def _kill_after(proc: subprocess.Popen[bytes], seconds: float
                ) -> tuple[threading.Timer, threading.Event]:
    """Kill ``proc`` in ``seconds`` unless the timer is cancelled; the event says it was."""
    late = threading.Event()

    def expire() -> None:
        late.set()
        proc.kill()

    timer = threading.Timer(max(0.0, seconds), expire)
    timer.daemon = True
    timer.start()
    return timer, late


@contextlib.contextmanager
def feed_command(argv: list[str], *, env: dict[str, str], deadline: float, what: str,
                 hide: tuple[str, ...] = (),
                 error: type[BackupError] = SourceError) -> Iterator[Writable]:
    """argv's stdin as a sink; ``error`` (with its output) when it fails or runs late."""
    with tempfile.TemporaryFile() as out:
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=out, stderr=out,
                                    env=env, close_fds=True)
        except OSError as e:
            raise error(f"{what}: cannot start {argv[0]}: {e.strerror}") from None
        assert proc.stdin is not None
        timer, late = _kill_after(proc, deadline - time.monotonic())
        stopped = False
        try:
            try:
                yield _Stdin(proc.stdin)
                proc.stdin.close()
            except BrokenPipeError:  # it stopped reading: its status and message say why
                stopped = True
            rc = proc.wait()
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        finally:
            timer.cancel()
            with contextlib.suppress(OSError):
                proc.stdin.close()
        if late.is_set():
            raise error(f"{what}: stopped after the timeout")
        if rc != 0 or stopped:
            raise error(f"{what} exited {rc}: {read_tail(out, hide)}")


class _Stdin:
    def __init__(self, pipe: IO[bytes]) -> None:
        self.pipe = pipe

    def write(self, data: bytes) -> int:
        self.pipe.write(data)
        return len(data)


def run_tool(argv: list[str], *, env: dict[str, str] | None = None, timeout: float = 30.0,
             what: str = "", hide: tuple[str, ...] = ()) -> str:
    """Run a short tool (a version query), return its stdout; SourceError on failure."""
    try:
        res = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, env=env,
                             timeout=max(1.0, timeout), check=False)
    except subprocess.TimeoutExpired:
        raise SourceError(f"{what or argv[0]}: no answer within {timeout:.0f}s") from None
    except OSError as e:
        raise SourceError(f"{what or argv[0]}: cannot start: {e.strerror}") from None
    if res.returncode != 0:
        text = _clean(res.stderr.decode(errors="replace") or res.stdout.decode(errors="replace"),
                      hide)
        raise SourceError(f"{what or argv[0]} exited {res.returncode}: {text}")
    return res.stdout.decode(errors="replace").strip()


def read_tail(f: IO[bytes], hide: tuple[str, ...] = (), limit: int = 2000) -> str:
    f.seek(0, os.SEEK_END)
    size = f.tell()
    f.seek(max(0, size - limit))
    return _clean(f.read().decode(errors="replace"), hide) or "(no message)"


def _clean(text: str, hide: tuple[str, ...]) -> str:
    for secret in hide:
        if secret:
            text = text.replace(secret, "***")
    return " / ".join(line.strip() for line in text.strip().splitlines() if line.strip())


# --- Redis -------------------------------------------------------------------------------------

_LOCAL_HOSTS = {"localhost", "127.0.0.1", "::1", "0.0.0.0", ""}


def redis_artefacts(src: RedisSource, ctx: SourceContext) -> Iterator[Artefact]:
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    password = _redis_password(src)
    client = redis.Redis(host=src.host, port=src.port, password=password or None,
                         socket_timeout=30, socket_connect_timeout=10, protocol=2,
                         retry=Retry(NoBackoff(), 0))
    where = f"redis {src.host}:{src.port}"
    try:
        ctx.tools["redis"] = str(client.info("server").get("redis_version", "?"))
        local = src.host in _LOCAL_HOSTS or src.host.startswith("127.")
        rdb = _rdb_path(client) if local else None
        saved_at = _bgsave(client, ctx, where) if rdb is not None else 0
    except redis.RedisError as e:
        raise SourceError(f"{where}: {_clean(str(e), (password,))}") from None
    finally:
        client.close()
    fd = _open_saved(rdb, saved_at, where) if rdb is not None else None
    if fd is None:
        yield _redis_cli_artefact(src, ctx, password)
        return
    yield Artefact("redis", "dump.rdb", "redis-rdb", lambda: os.fdopen(fd, "rb"),
                   size_hint=os.fstat(fd).st_size, meta={"rdb": rdb, "via": "BGSAVE + copy"})


def _open_saved(path: str, saved_at: int, where: str) -> int | None:
    """The RDB just saved, opened (a later save renames a new file over the path, the open
    one stays whole); None when the file there is not it (a server in a container whose
    ``dir`` names a folder of this host that holds some other, older RDB)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise SourceError(f"{where}: cannot read the RDB {path}: {e.strerror}") from None
    if os.fstat(fd).st_mtime < saved_at - 2:
        os.close(fd)
        return None
    return fd


def _redis_password(src: RedisSource) -> str:
    if src.password_env is None:
        return ""
    value = os.environ.get(src.password_env, "")
    if not value:
        raise SourceError(f"environment variable {src.password_env} (password_env) is not set")
    return value


def _rdb_path(client: Any) -> str | None:
    """The RDB file when it is on this host and readable, else None (use redis-cli --rdb)."""
    import redis

    try:
        folder = str(client.config_get("dir").get("dir", ""))
        name = str(client.config_get("dbfilename").get("dbfilename", ""))
    except redis.ResponseError:  # CONFIG renamed or denied (managed Redis)
        return None
    path = os.path.join(folder, name)
    if not folder or not name or not os.path.isdir(folder) or not os.access(folder, os.R_OK):
        return None
    return path


def _bgsave(client: Any, ctx: SourceContext, where: str) -> int:
    """BGSAVE, and wait for it to be done; the time of that save (LASTSAVE)."""
    import redis

    def state() -> tuple[int, int, bool]:
        p = client.info("persistence")
        return (int(p.get("rdb_saves", -1)), int(client.lastsave().timestamp()),
                bool(int(p.get("rdb_bgsave_in_progress", 0))))

    saves0, last0, busy = state()
    while True:
        if time.monotonic() > ctx.deadline:
            raise SourceError(f"{where}: BGSAVE did not finish within the backup's timeout")
        if busy:  # someone else's save is running: ours must start after it
            time.sleep(0.1)
            saves0, last0, busy = state()
            continue
        try:
            client.bgsave()
            break
        except redis.ResponseError as e:
            if "in progress" not in str(e):
                raise
            busy = True
    while time.monotonic() < ctx.deadline:
        saves, last, busy = state()
        moved = saves > saves0 if saves0 >= 0 else last > last0
        if moved and not busy:
            status = client.info("persistence").get("rdb_last_bgsave_status", "ok")
            if status != "ok":
                raise SourceError(f"{where}: BGSAVE failed (rdb_last_bgsave_status {status}; "
                                  "see the Redis log)")
            return last
        time.sleep(0.05)
    raise SourceError(f"{where}: LASTSAVE did not move within the backup's timeout")


def _redis_cli_artefact(src: RedisSource, ctx: SourceContext, password: str) -> Artefact:
    cli = shutil.which("redis-cli")
    if cli is None:
        raise SourceError(f"the RDB of redis {src.host}:{src.port} is not on this host and "
                          "redis-cli is not installed (apt-get install redis-tools)")
    env = {k: v for k, v in os.environ.items() if k != "REDISCLI_AUTH"}
    if password:
        env["REDISCLI_AUTH"] = password
    argv = [cli, "-h", src.host, "-p", str(src.port), "--no-auth-warning", "--rdb", "-"]
    ctx.tools["redis-cli"] = run_tool([cli, "--version"], timeout=ctx.remaining())
    return Artefact("redis", "dump.rdb", "redis-rdb",
                    lambda: stream_command(argv, env=env, ctx=ctx, what="redis-cli --rdb",
                                           hide=(password,)),
                    meta={"via": "redis-cli --rdb"})


# --- files -------------------------------------------------------------------------------------

class ChunkReader:
    """A readable stream over an iterator of byte strings (short reads, like a pipe)."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._it, self._buf, self._pos = chunks, b"", 0

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            rest = self._buf[self._pos:]
            self._buf, self._pos = b"", 0
            return rest + b"".join(self._it)
        while self._pos >= len(self._buf):
            nxt = next(self._it, None)
            if nxt is None:
                return b""
            self._buf, self._pos = nxt, 0
        out = self._buf[self._pos:self._pos + size]
        self._pos += len(out)
        return out


def excluded(path: str, patterns: list[str]) -> bool:
    """A pattern matches an entry's name (``*.tmp``) or its absolute path (``/srv/x/cache``)."""
    name = os.path.basename(path)
    return any(fnmatch.fnmatchcase(name, p) or fnmatch.fnmatchcase(path, p) for p in patterns)


def tar_stream(roots: list[str], exclude: list[str], deadline: float | None = None,
               block: int = 1 << 20) -> Iterator[bytes]:
    """A pax tar of ``roots`` as byte chunks; members are named by their path without '/'."""
    links: dict[tuple[int, int], str] = {}
    names: dict[tuple[str, int], str] = {}
    for root in roots:
        for path in _walk(root, exclude):
            if deadline is not None and time.monotonic() > deadline:
                raise SourceError(f"paths: stopped at {path} after the backup's timeout")
            try:
                st = os.lstat(path)
            except FileNotFoundError:  # removed while we walked: it is not in this backup
                continue
            except OSError as e:
                raise SourceError(f"paths: {path}: {e.strerror}") from None
            yield from _member(path, st, links, names, block)
    yield tarfile.NUL * (2 * tarfile.BLOCKSIZE)  # the end-of-archive marker


def _walk(root: str, exclude: list[str]) -> Iterator[str]:
    if excluded(root, exclude):
        return
    yield root
    if not os.path.isdir(root) or os.path.islink(root):
        return
    try:
        entries = sorted(os.scandir(root), key=lambda e: e.name)
    except FileNotFoundError:
        return
    except OSError as e:
        raise SourceError(f"paths: {root}: {e.strerror}") from None
    for entry in entries:
        if entry.is_dir(follow_symlinks=False):
            yield from _walk(entry.path, exclude)
        elif not excluded(entry.path, exclude):
            yield entry.path


def _member(path: str, st: os.stat_result, links: dict[tuple[int, int], str],
            names: dict[tuple[str, int], str], block: int) -> Iterator[bytes]:
    info = tarfile.TarInfo(path.lstrip("/") or ".")
    info.mode = stat.S_IMODE(st.st_mode)
    info.uid, info.gid = st.st_uid, st.st_gid
    info.uname, info.gname = _owner_name("u", st.st_uid, names), _owner_name("g", st.st_gid, names)
    info.mtime = int(st.st_mtime)
    mode = st.st_mode
    if stat.S_ISREG(mode) and st.st_nlink > 1 and (st.st_dev, st.st_ino) in links:
        info.type, info.linkname = tarfile.LNKTYPE, links[(st.st_dev, st.st_ino)]
    elif stat.S_ISREG(mode):
        if st.st_nlink > 1:
            links[(st.st_dev, st.st_ino)] = info.name
        yield from _regular(path, info, st, block)
        return
    elif stat.S_ISDIR(mode):
        info.type = tarfile.DIRTYPE
    elif stat.S_ISLNK(mode):
        info.type, info.linkname = tarfile.SYMTYPE, os.readlink(path)
    elif stat.S_ISFIFO(mode):
        info.type = tarfile.FIFOTYPE
    elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        info.type = tarfile.CHRTYPE if stat.S_ISCHR(mode) else tarfile.BLKTYPE
        info.devmajor, info.devminor = os.major(st.st_rdev), os.minor(st.st_rdev)
    else:
        return  # sockets and doors cannot be archived (GNU tar skips them too)
    yield info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


def _regular(path: str, info: tarfile.TarInfo, st: os.stat_result,
             block: int) -> Iterator[bytes]:
    try:  # O_NOFOLLOW: a file swapped for a symlink after lstat is not followed
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return
    except OSError as e:
        raise SourceError(f"paths: {path}: {e.strerror}") from None
    with os.fdopen(fd, "rb", buffering=0) as f:
        info.size = st.st_size
        yield info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
        left = st.st_size
        while left > 0:
            data = f.read(min(block, left))
            if not data:  # shrank while read: pad, so the archive stays well-formed
                data = tarfile.NUL * min(block, left)
            left -= len(data)
            yield data
        pad = -st.st_size % tarfile.BLOCKSIZE
        if pad:
            yield tarfile.NUL * pad


def _owner_name(kind: str, ident: int, cache: dict[tuple[str, int], str]) -> str:
    key = (kind, ident)
    if key not in cache:
        try:
            cache[key] = pwd.getpwuid(ident).pw_name if kind == "u" else grp.getgrgid(ident).gr_name
        except KeyError:
            cache[key] = ""
    return cache[key]


# --- PostgreSQL --------------------------------------------------------------------------------

# libpq connection keywords and the environment variables that carry them to pg_dump & co.
_PG_ENV = {"host": "PGHOST", "hostaddr": "PGHOSTADDR", "port": "PGPORT", "dbname": "PGDATABASE",
           "user": "PGUSER", "password": "PGPASSWORD", "passfile": "PGPASSFILE",
           "channel_binding": "PGCHANNELBINDING", "service": "PGSERVICE",
           "options": "PGOPTIONS", "application_name": "PGAPPNAME", "sslmode": "PGSSLMODE",
           "requiressl": "PGREQUIRESSL", "sslcompression": "PGSSLCOMPRESSION",
           "sslcert": "PGSSLCERT", "sslkey": "PGSSLKEY", "sslrootcert": "PGSSLROOTCERT",
           "sslcrl": "PGSSLCRL", "sslcrldir": "PGSSLCRLDIR", "sslsni": "PGSSLSNI",
           "requirepeer": "PGREQUIREPEER", "gssencmode": "PGGSSENCMODE",
           "ssl_min_protocol_version": "PGSSLMINPROTOCOLVERSION",
           "ssl_max_protocol_version": "PGSSLMAXPROTOCOLVERSION", "krbsrvname": "PGKRBSRVNAME",
           "gsslib": "PGGSSLIB", "connect_timeout": "PGCONNECT_TIMEOUT",
           "client_encoding": "PGCLIENTENCODING", "target_session_attrs": "PGTARGETSESSIONATTRS",
           "load_balance_hosts": "PGLOADBALANCEHOSTS"}
# tuning keywords without an environment variable: the tools do without them
_PG_SKIPPED = {"fallback_application_name", "keepalives", "keepalives_idle",
               "keepalives_interval", "keepalives_count", "tcp_user_timeout", "replication"}


@dataclass(frozen=True)
class PgServer:
    """A PostgreSQL server as a DSN describes it; the password stays in here."""

    params: dict[str, str]

    @property
    def password(self) -> str:
        return self.params.get("password", "")

    def describe(self) -> str:
        host = self.params.get("host") or self.params.get("hostaddr") or "local socket"
        return f"postgresql {host}:{self.params.get('port', '5432')}"

    def env(self) -> dict[str, str]:
        """The environment for a client tool: this server's fields, no inherited PG* ones."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        for key, value in self.params.items():
            if key in _PG_ENV:
                env[_PG_ENV[key]] = value
        env.setdefault("PGCONNECT_TIMEOUT", "30")
        return env

    def dbname_arg(self, dbname: str) -> str:
        """``-d`` for a client tool: only the database name (the rest is in env())."""
        from psycopg.conninfo import make_conninfo

        return make_conninfo("", dbname=dbname)

    @contextlib.contextmanager
    def connect(self, dbname: str | None = None, timeout: float = 30.0) -> Iterator[Any]:
        """An autocommit connection; psycopg errors inside come out as SourceError."""
        import psycopg

        params = dict(self.params)
        if dbname is not None:
            params["dbname"] = dbname
        params.setdefault("dbname", "postgres")
        params["connect_timeout"] = str(max(2, int(min(timeout, 30))))
        try:
            conn = psycopg.connect(autocommit=True, **params)  # type: ignore[arg-type]
        except psycopg.Error as e:
            raise SourceError(f"{self.describe()}: {_clean(str(e), (self.password,))}") from None
        try:
            with conn:
                yield conn
        except psycopg.Error as e:
            raise SourceError(f"{self.describe()}: {_clean(str(e), (self.password,))}") from None

    def major(self, conn: Any) -> tuple[int, ...]:
        num = int(conn.info.server_version)
        return (num // 10000,) if num >= 100000 else (num // 10000, num // 100 % 100)


def read_dsn(src: PostgresSource) -> PgServer:
    """The server of a postgres source, from dsn_env or dsn_file (libpq defaults without)."""
    if src.dsn_env is None and src.dsn_file is None:
        return server_of("", "libpq defaults")
    from agent.secrets import read_secret

    dsn = read_secret(src, "dsn", SourceError, strip=True)
    origin = f"dsn_env {src.dsn_env}" if src.dsn_env else f"dsn_file {src.dsn_file}"
    return server_of(dsn, origin)


def server_of(dsn: str, origin: str = "the DSN") -> PgServer:
    from psycopg import ProgrammingError
    from psycopg.conninfo import conninfo_to_dict

    try:  # the parser's message can quote the DSN, password and all: say only where
        params = {k: str(v) for k, v in conninfo_to_dict(dsn).items() if v is not None}
    except ProgrammingError:
        raise SourceError(f"{origin}: not a valid PostgreSQL connection string") from None
    unknown = sorted(set(params) - set(_PG_ENV) - _PG_SKIPPED)
    if unknown:
        raise SourceError(f"{origin}: {', '.join(unknown)} cannot be passed to pg_dump without "
                          "putting it on the command line; leave it out of the DSN")
    return PgServer({k: v for k, v in params.items() if k not in _PG_SKIPPED})


_DATABASES = """
SELECT datname, pg_encoding_to_char(encoding), datcollate, datctype, pg_get_userbyid(datdba),
       CASE WHEN has_database_privilege(oid, 'CONNECT') THEN pg_database_size(oid) END
FROM pg_database WHERE NOT datistemplate AND datallowconn ORDER BY datname"""


def pg_artefacts(src: PostgresSource, ctx: SourceContext) -> Iterator[Artefact]:
    server = read_dsn(src)
    with server.connect(server.params.get("dbname"), ctx.remaining()) as conn:
        major = server.major(conn)
        ctx.tools["postgresql"] = str(conn.execute("SHOW server_version").fetchone()[0])
        rows = conn.execute(_DATABASES).fetchall()
        superuser = bool(conn.execute(
            "SELECT rolsuper FROM pg_roles WHERE rolname = current_user").fetchone()[0])
    found = {r[0]: r for r in rows}
    wanted = list(src.databases) if src.databases is not None else list(found)
    missing = [d for d in wanted if d not in found]
    if missing:
        raise SourceError(f"{server.describe()}: no database {', '.join(missing)} (there are: "
                          f"{', '.join(found) or 'none'})")
    env, hide = server.env(), (server.password,)
    dump, dumpall = pg_bin("pg_dump", major), pg_bin("pg_dumpall", major)
    ctx.tools["pg_dump"] = run_tool([dump, "--version"], timeout=ctx.remaining())
    maintenance = server.params.get("dbname") or "postgres"
    if src.globals:
        argv = [dumpall, "--globals-only", "-w", "-d", server.dbname_arg(maintenance)]
        if not superuser:  # role passwords live in pg_authid, readable by superusers only
            argv.append("--no-role-passwords")
        yield Artefact("globals", "globals.sql", "pg_dumpall",
                       _opener(argv, env, ctx, "pg_dumpall --globals-only", hide),
                       meta={"role_passwords": superuser})
    for name in wanted:
        _, encoding, collate, ctype, owner, size = found[name]
        argv = [dump, "-Fc", "-Z0", "-w", "-d", server.dbname_arg(name)]
        yield Artefact(f"postgres/{name}", f"db-{name}.dump", "pg_dump",
                       _opener(argv, env, ctx, f"pg_dump of {name}", hide), size_hint=size,
                       meta={"database": name, "encoding": encoding, "collate": collate,
                             "ctype": ctype, "owner": owner, "server": ctx.tools["postgresql"]})


def _opener(argv: list[str], env: dict[str, str], ctx: SourceContext, what: str,
            hide: tuple[str, ...]) -> ContextOpener:
    return lambda: stream_command(argv, env=env, ctx=ctx, what=what, hide=hide)


def pg_bin(name: str, server: tuple[int, ...] | None = None) -> str:
    """The client tool for a server of major version ``server`` (see the module docstring)."""
    found: dict[tuple[int, ...], str] = {}
    for path in glob.glob(f"/usr/lib/postgresql/*/bin/{name}"):
        ver = path.split("/")[4]
        with contextlib.suppress(ValueError):
            found[tuple(int(x) for x in ver.split("."))] = path
    if server is not None and server in found:
        return found[server]
    newer = sorted(v for v in found if server is None or v > server)
    if newer:
        return found[newer[-1] if server is None else newer[0]]
    onpath = shutil.which(name)
    if onpath:
        return onpath
    if found:  # only older tools: they refuse a newer server with a clear message of their own
        return found[max(found)]
    raise SourceError(f"{name} is not installed (apt-get install postgresql-client)")
