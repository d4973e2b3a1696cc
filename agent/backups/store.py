"""Where backups live: one directory per run, written atomically, and its manifest.

Layout::

    DESTINATION/NAME/.lock              flock()ed by a run: one run of a backup at a time
    DESTINATION/NAME/.tmp-RUNID/        a run being written (removed by the next run if left)
    DESTINATION/NAME/RUNID/             a complete run (only these are listed)
        manifest.json
        ARTEFACT.zst[.age|.aes]         one per artefact: zstd level 3, then encryption
        verify.json                     the last verification's outcome (written afterwards)

RUNID is the run's UTC start, ``20261123T020000Z``, a dash and 4 random hex digits, so names
sort by time. A run is built in ``.tmp-RUNID``; every file and the directory are fsync()ed,
then it is renamed to ``RUNID`` and the parent fsync()ed: a crash at any point leaves either
a complete run or a ``.tmp-*`` directory that listing ignores.

manifest.json (format 1)::

    {"format": 1, "backup": "db-daily", "run_id": "20261123T020000Z-3f9a",
     "source": "postgres" | "redis" | "paths" | "command", "host": "db01",
     "started": "2026-11-23T02:00:00.000Z", "finished": "…", "duration_s": 12.5,
     "opsagent_version": "0.1.0", "tools": {"pg_dump": "pg_dump (PostgreSQL) 15.8", …},
     "bytes_raw": N, "bytes_stored": N,
     "artefacts": [{"name": "postgres/app", "file": "db-app.dump.zst.age", "kind": "pg_dump",
                    "bytes_raw": N, "bytes_stored": N, "sha256": "<hex of the stored file>",
                    "sha256_raw": "<hex of the content before compression>",
                    "compression": "zstd-3", "encryption": null | "age" | "aes-256-gcm",
                    "meta": {…source specific: database, encoding, rdb file, …}}]}
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import re
import secrets
import shutil
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import IO, Any, cast

from agent.backups import BackupBusy, BackupError, IntegrityError, Readable, Writable
from agent.backups.crypto import SUFFIX, decrypt_stream, encrypt_stream, scheme_of
from agent.playbook.models.backups import BackupSpec, Encryption

FORMAT = 1
LEVEL = 3
MANIFEST, VERIFY_RECORD, LOCK = "manifest.json", "verify.json", ".lock"
TMP_PREFIX = ".tmp-"
RUN_ID = re.compile(r"^\d{8}T\d{6}Z-[0-9a-f]{4,}$")
BLOCK = 1 << 20
_MT_ABOVE = 32 << 20  # below this zstd's worker threads cost more than they give


@dataclass(frozen=True)
class ArtefactInfo:
    name: str
    file: str
    kind: str
    bytes_raw: int
    bytes_stored: int
    sha256: str
    sha256_raw: str
    compression: str
    encryption: str | None
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RunInfo:
    """One complete run as its manifest (and last verification) describe it."""

    backup: str
    run_id: str
    path: str
    source: str
    host: str
    started: datetime
    finished: datetime
    duration_s: float
    bytes_raw: int
    bytes_stored: int
    artefacts: tuple[ArtefactInfo, ...]
    tools: dict[str, str]
    verified: bool | None = None       # None: never verified
    verify_error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["started"], d["finished"] = iso(self.started), iso(self.finished)
        return d


def iso(t: datetime) -> str:
    return t.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def backup_dir(spec: BackupSpec) -> str:
    return os.path.join(spec.destination, spec.name)


def new_run_id(started: datetime) -> str:
    return f"{started.astimezone(UTC):%Y%m%dT%H%M%SZ}-{secrets.token_hex(2)}"


@contextlib.contextmanager
def hold_lock(spec: BackupSpec) -> Iterator[None]:
    """Hold the backup's lock; BackupBusy at once when another run (or prune) holds it."""
    bdir = backup_dir(spec)
    os.makedirs(bdir, mode=0o700, exist_ok=True)
    path = os.path.join(bdir, LOCK)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            raise BackupBusy(f"backup {spec.name} is already running (pid {holder}; lock "
                             f"{path}); not starting a second run") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # closing releases the lock; the file stays (unlinking it would race)


def remove_leftovers(spec: BackupSpec) -> list[str]:
    """Remove ``.tmp-*`` directories of runs that died; call with the lock held."""
    bdir = backup_dir(spec)
    gone = []
    for entry in os.scandir(bdir):
        if entry.name.startswith(TMP_PREFIX) and entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path, ignore_errors=True)
            gone.append(entry.name)
    return gone


class _HashingReader:
    def __init__(self, inner: Readable) -> None:
        self.inner, self.sha, self.n = inner, hashlib.sha256(), 0

    def read(self, size: int = -1) -> bytes:
        data = self.inner.read(size)
        self.sha.update(data)
        self.n += len(data)
        return data


class HashingWriter:
    """Counts and hashes what passes to ``inner`` (None: only counts and hashes)."""

    def __init__(self, inner: Writable | None = None) -> None:
        self.inner, self.sha, self.n = inner, hashlib.sha256(), 0

    def write(self, data: bytes) -> int:
        self.sha.update(data)
        self.n += len(data)
        if self.inner is not None:
            self.inner.write(data)
        return len(data)

    def flush(self) -> None:
        pass


def safe_file_name(name: str) -> str:
    """An artefact name as a file name: [A-Za-z0-9._-] kept, anything else %XX-encoded."""
    out = "".join(c if c.isascii() and (c.isalnum() or c in "._-") else
                  "".join(f"%{b:02X}" for b in c.encode()) for c in name)
    return out if not out.startswith(".") else "%2E" + out[1:]


class RunWriter:
    """Builds one run in ``.tmp-RUNID``; ``commit`` makes it visible, anything else drops it."""

    def __init__(self, spec: BackupSpec, run_id: str) -> None:
        self.spec, self.run_id = spec, run_id
        self.bdir = backup_dir(spec)
        self.tmp = os.path.join(self.bdir, TMP_PREFIX + run_id)
        self.final = os.path.join(self.bdir, run_id)
        self.artefacts: list[ArtefactInfo] = []
        os.mkdir(self.tmp, 0o700)

    def add(self, name: str, file_stem: str, kind: str, stream: Readable, *,
            size_hint: int | None = None, meta: dict[str, Any] | None = None) -> ArtefactInfo:
        """Compress (and encrypt) ``stream`` into the run; return what the manifest says."""
        import zstandard

        enc = self.spec.encryption
        scheme = scheme_of(enc)
        fname = safe_file_name(file_stem) + ".zst" + SUFFIX[scheme]
        if any(a.file == fname for a in self.artefacts):
            raise BackupError(f"two artefacts would both be stored as {fname}")
        raw = _HashingReader(stream)
        cctx = zstandard.ZstdCompressor(level=LEVEL, threads=_threads(size_hint))
        path = os.path.join(self.tmp, fname)
        with open(path, "xb") as f:
            os.fchmod(f.fileno(), 0o600)
            out = HashingWriter(f)
            if scheme is None:
                cctx.copy_stream(_io(raw), _io(out), read_size=BLOCK, write_size=BLOCK)
            else:
                with cctx.stream_reader(_io(raw), read_size=BLOCK, closefd=False) as compressed:
                    encrypt_stream(compressed, out, enc)
            f.flush()
            os.fsync(f.fileno())
        info = ArtefactInfo(name=name, file=fname, kind=kind, bytes_raw=raw.n,
                            bytes_stored=out.n, sha256=out.sha.hexdigest(),
                            sha256_raw=raw.sha.hexdigest(), compression=f"zstd-{LEVEL}",
                            encryption=scheme, meta=dict(meta or {}))
        self.artefacts.append(info)
        return info

    def scratch_path(self, name: str) -> str:
        """A path inside the run being built for a tool that insists on writing a file."""
        return os.path.join(self.tmp, ".scratch-" + safe_file_name(name))

    def commit(self, *, source: str, host: str, started: datetime, finished: datetime,
               duration_s: float, tools: dict[str, str], version: str) -> str:
        doc = {"format": FORMAT, "backup": self.spec.name, "run_id": self.run_id,
               "source": source, "host": host, "started": iso(started),
               "finished": iso(finished), "duration_s": round(duration_s, 3),
               "opsagent_version": version, "tools": tools,
               "bytes_raw": sum(a.bytes_raw for a in self.artefacts),
               "bytes_stored": sum(a.bytes_stored for a in self.artefacts),
               "artefacts": [asdict(a) for a in self.artefacts]}
        for entry in os.scandir(self.tmp):
            if entry.name.startswith(".scratch-"):
                os.unlink(entry.path)
        _write_durably(os.path.join(self.tmp, MANIFEST), json.dumps(doc, indent=2) + "\n")
        _fsync_dir(self.tmp)
        os.rename(self.tmp, self.final)
        _fsync_dir(self.bdir)
        return self.final

    def discard(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)


def _io(stream: Any) -> IO[bytes]:
    """Our duck-typed streams where zstandard's stubs ask for a file object."""
    return cast(IO[bytes], stream)


def _threads(size_hint: int | None) -> int:
    cpus = os.cpu_count() or 1
    if cpus < 2 or (size_hint is not None and size_hint < _MT_ABOVE):
        return 0
    return min(cpus, 8)


def _write_durably(path: str, text: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        os.fchmod(f.fileno(), 0o600)
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# --- reading runs ------------------------------------------------------------------------------

def list_runs(spec: BackupSpec) -> list[RunInfo]:
    """Complete runs of the backup, oldest first (ties: the greater run id is newer)."""
    bdir = backup_dir(spec)
    try:
        entries = [e for e in os.scandir(bdir) if RUN_ID.match(e.name) and e.is_dir()]
    except FileNotFoundError:
        return []
    runs = [r for r in (read_run(e.path) for e in entries) if r is not None]
    runs.sort(key=lambda r: (r.started, r.run_id))
    return runs


def read_run(path: str) -> RunInfo | None:
    """The run at ``path``, or None when it has no readable manifest (not a backup)."""
    try:
        with open(os.path.join(path, MANIFEST), encoding="utf-8") as f:
            doc = json.load(f)
        arts = tuple(ArtefactInfo(**a) for a in doc["artefacts"])
        info = RunInfo(backup=doc["backup"], run_id=doc["run_id"], path=path,
                       source=doc["source"], host=doc.get("host", ""),
                       started=_parse_time(doc["started"]), finished=_parse_time(doc["finished"]),
                       duration_s=float(doc["duration_s"]), bytes_raw=int(doc["bytes_raw"]),
                       bytes_stored=int(doc["bytes_stored"]), artefacts=arts,
                       tools=dict(doc.get("tools", {})))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    try:
        with open(os.path.join(path, VERIFY_RECORD), encoding="utf-8") as f:
            rec = json.load(f)
        return _replace(info, verified=bool(rec["ok"]), verify_error=rec.get("error"))
    except (OSError, ValueError, KeyError, TypeError):
        return info


def _replace(info: RunInfo, **changes: Any) -> RunInfo:
    import dataclasses

    return dataclasses.replace(info, **changes)


def _parse_time(text: str) -> datetime:
    t = datetime.fromisoformat(text)
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def write_verify_record(run: RunInfo, record: dict[str, Any]) -> None:
    """Store the outcome of a verification beside the manifest (atomically)."""
    tmp = os.path.join(run.path, f".{VERIFY_RECORD}.tmp")
    _write_durably(tmp, json.dumps(record, indent=2, default=str) + "\n")
    os.replace(tmp, os.path.join(run.path, VERIFY_RECORD))


def check_stored(run: RunInfo, art: ArtefactInfo) -> None:
    """The stored file's size and sha256 against the manifest; IntegrityError names the file."""
    path = os.path.join(run.path, art.file)
    sha, n = hashlib.sha256(), 0
    try:
        with open(path, "rb") as f:
            while block := f.read(BLOCK):
                sha.update(block)
                n += len(block)
    except OSError as e:
        raise IntegrityError(f"{path}: cannot read: {e.strerror}") from None
    if n != art.bytes_stored or sha.hexdigest() != art.sha256:
        raise IntegrityError(f"{path}: sha256 {sha.hexdigest()[:16]}… ({n} bytes) differs from "
                             f"the manifest's {art.sha256[:16]}… ({art.bytes_stored} bytes): "
                             "the stored file was changed")


def read_artefact(run: RunInfo, art: ArtefactInfo, enc: Encryption | None,
                  sink: Writable) -> None:
    """Decrypt and decompress an artefact into ``sink``, proving it against the manifest.

    Raises IntegrityError naming the file when the stored bytes, the decryption, the
    decompression or the decompressed content differ from what was written.
    """
    import zstandard

    path = os.path.join(run.path, art.file)
    raw = HashingWriter(sink)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        raise IntegrityError(f"{path}: cannot read: {e.strerror}") from None
    with os.fdopen(fd, "rb") as f:
        stored = _HashingReader(f)
        dctx = zstandard.ZstdDecompressor()
        try:
            with dctx.stream_writer(_io(raw), write_size=BLOCK, write_return_read=True,
                                    closefd=False) as plain:
                decrypt_stream(stored, plain, art.encryption, enc)
        except (IntegrityError, zstandard.ZstdError) as e:
            while stored.read(BLOCK):  # finish the checksum: a changed file is named as such
                pass
            if stored.sha.hexdigest() != art.sha256:
                raise IntegrityError(f"{path}: sha256 differs from the manifest: the stored "
                                     "file was changed") from None
            raise IntegrityError(f"{path}: {e}") from None
    if stored.n != art.bytes_stored or stored.sha.hexdigest() != art.sha256:
        raise IntegrityError(f"{path}: sha256 differs from the manifest: the stored file was "
                             "changed")
    if raw.n != art.bytes_raw or raw.sha.hexdigest() != art.sha256_raw:
        raise IntegrityError(f"{path}: the decompressed content ({raw.n} bytes) differs from "
                             f"what was backed up ({art.bytes_raw} bytes)")
