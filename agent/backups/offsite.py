"""Offsite copies of finished backup runs: another host over SFTP, S3-compatible storage.

    copy_run(spec, run_dir) -> OffsiteResult        copy one finished run to every target
    list_remote(spec) -> list[RemoteListing]        the runs each target holds
    plan_remote(spec, now) -> list[RemotePlan]      retention per target, deleting nothing
    prune_remote(spec, now, check=False)            the same, then deletes the pruned runs
    verify_remote(spec, run_id) -> list[TargetCheck]  re-hash a copy against its manifest

A run directory DESTINATION/NAME/RUN/ is copied to PATH/NAME/RUN/ (sftp) and to the keys
PREFIX/NAME/RUN/... (s3), relative paths unchanged. manifest.json goes last, so a remote run
without it is incomplete: listed as such, never counted or deleted by retention (a copy may be
under way), and resumed by the next ``copy_run`` (files already there with the right sha256
are not sent again). Deleting a run removes its manifest first, for the same reason.

Every file is verified after upload. SFTP: written as .FILE.part, read back over SFTP and
hashed, then renamed into place. S3: sent with x-amz-checksum-sha256, which the store checks
on arrival (AWS and current MinIO/Ceph do; moto stores it unchecked) and keeps; HEAD with
ChecksumMode=ENABLED must then return that SHA-256. When the store keeps none (older
S3-compatible servers), or for multipart uploads (past 4 GiB, whose checksum is one of the
parts'), the object is read back and hashed. The remotes themselves are in offsite_sftp.py and
offsite_s3.py.

Host keys: the server's key must be in ``known_hosts``; an unknown key is refused unless
``accept_new`` (then recorded), a changed key is always refused. Every connection and request
has the target's ``timeout``. One target failing never stops the other; the error is in the
result. Errors (under agent.backups.BackupError)::

    OffsiteError                       a target could not be reached, read or written
    └── HostKeyRefused(PermissionError)  unknown or changed SSH host key
    IntegrityError (agent.backups)     a copy or the local run differs from its checksums
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, tzinfo
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from agent.backups import BackupError, IntegrityError
from agent.backups.retention import Backup, Decision, plan
from agent.playbook.models.backups import BackupSpec, Retention, S3Target, SftpTarget

if TYPE_CHECKING:
    pass

MANIFEST = "manifest.json"
CHUNK = 1 << 20
_T = TypeVar("_T")


class OffsiteError(BackupError):
    """An offsite target could not be reached, read or written."""


class HostKeyRefused(OffsiteError, PermissionError):
    """The SSH server's host key is unknown or has changed."""


@dataclass(frozen=True, slots=True)
class Copied:
    path: str
    size: int
    sha256: str
    already_there: bool = False


@dataclass(frozen=True, slots=True)
class TargetResult:
    target: str  # "sftp" or "s3"
    url: str
    ok: bool
    files: tuple[Copied, ...] = ()
    error: str | None = None
    seconds: float = 0.0


@dataclass(frozen=True, slots=True)
class OffsiteResult:
    run_id: str
    targets: tuple[TargetResult, ...] = ()

    @property
    def ok(self) -> bool:
        return all(t.ok for t in self.targets)


@dataclass(frozen=True, slots=True)
class RemoteRun:
    id: str
    time: datetime | None
    complete: bool


@dataclass(frozen=True, slots=True)
class RemoteListing:
    target: str
    url: str
    runs: tuple[RemoteRun, ...] = ()
    error: str | None = None


@dataclass(frozen=True, slots=True)
class RemotePlan:
    """Retention at one target. ``deleted`` stays empty under check; on an error it holds
    what was deleted before it. ``incomplete`` and ``undated`` runs are left alone."""

    target: str
    url: str
    decisions: tuple[Decision, ...] = ()
    incomplete: tuple[str, ...] = ()
    undated: tuple[str, ...] = ()
    deleted: tuple[str, ...] = ()
    check: bool = True
    error: str | None = None

    @property
    def to_delete(self) -> tuple[str, ...]:
        return tuple(d.backup.id for d in self.decisions if not d.keep)


@dataclass(frozen=True, slots=True)
class TargetCheck:
    target: str
    url: str
    ok: bool
    checked: int = 0
    problems: tuple[str, ...] = field(default_factory=tuple)


class Remote(Protocol):
    """What the functions below need of a target; paths are relative: NAME/RUN/FILE."""

    url: str

    def list_dirs(self, rel: str) -> list[str]: ...
    def read(self, rel: str) -> bytes | None: ...
    def sha256(self, rel: str, read_back: bool = False) -> str | None: ...
    def upload(self, local: Path, rel: str, sha256: str, size: int) -> None: ...
    def delete_run(self, rel: str) -> None: ...
    def close(self) -> None: ...


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _safe_rel(name: str) -> str:
    parts = name.split("/")
    if not name or name.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise IntegrityError(f"manifest names {name!r}, which is not a relative path in the run")
    return name


def manifest_digests(data: bytes) -> dict[str, str]:
    """{relative path: sha256} of the artefacts a manifest lists: ``artefacts`` (or
    ``artifacts``/``files``) as a list of {file|path|name, sha256} (store.py's format 1 names
    the stored file ``file``) or a {file: {sha256}} map."""
    try:
        doc = json.loads(data)
    except ValueError as e:
        raise IntegrityError(f"{MANIFEST} is not JSON: {e}") from None
    items: Any = None
    if isinstance(doc, dict):
        items = next((doc[k] for k in ("artefacts", "artifacts", "files") if k in doc), None)
    if isinstance(items, dict):
        items = [{"name": k, **v} for k, v in items.items() if isinstance(v, dict)]
    out: dict[str, str] = {}
    for it in items if isinstance(items, list) else []:
        if not isinstance(it, dict):
            continue
        name = it.get("file") or it.get("path") or it.get("name")
        sha = it.get("sha256")
        if isinstance(name, str) and isinstance(sha, str):
            out[_safe_rel(name)] = sha.lower()
    if not out:
        raise IntegrityError(f"{MANIFEST} lists no artefact with a sha256 (expected "
                             '"artefacts": [{"name": ..., "sha256": ...}])')
    return out


_TIME_KEYS = ("started", "started_at", "time", "created_at", "created", "finished")
_ID_FORMATS = ("%Y%m%dT%H%M%S%fZ", "%Y%m%dT%H%M%SZ", "%Y%m%dT%H%M%S", "%Y-%m-%dT%H%M%SZ",
               "%Y-%m-%dT%H-%M-%SZ", "%Y-%m-%dT%H:%M:%SZ", "%Y%m%d-%H%M%S")


def run_time(manifest: bytes | None, run_id: str) -> datetime | None:
    """When a run ran: its manifest's start time, else a timestamp in its id, else None."""
    doc: Any = None
    if manifest is not None:
        try:
            doc = json.loads(manifest)
        except ValueError:
            doc = None
    for key in _TIME_KEYS if isinstance(doc, dict) else ():
        v = doc.get(key)
        if isinstance(v, int | float) and not isinstance(v, bool):
            return datetime.fromtimestamp(v, UTC)
        if isinstance(v, str):
            try:
                t = datetime.fromisoformat(v.replace("Z", "+00:00"))
            except ValueError:
                continue
            return t if t.tzinfo else t.replace(tzinfo=UTC)
    stem = run_id.split("-")[0] if "T" in run_id.split("-")[0] else run_id
    for text in (run_id, stem):
        for fmt in _ID_FORMATS:
            try:
                return datetime.strptime(text, fmt).replace(tzinfo=UTC)
            except ValueError:
                pass
    return None


def _local_run(run_dir: Path) -> list[Copied]:
    """Every file of a finished local run, hashed, checked against its manifest; manifest last."""
    manifest = run_dir / MANIFEST
    if not manifest.is_file():
        raise IntegrityError(f"{run_dir} has no {MANIFEST}: not a finished run")
    files = []
    for p in sorted(run_dir.rglob("*")):
        if any(part.startswith(".") for part in p.relative_to(run_dir).parts):
            continue  # a temp file being written beside the run's files
        if p.is_symlink() or not (p.is_file() or p.is_dir()):
            raise IntegrityError(f"{p} is not a regular file; refusing to copy it offsite")
        if p.is_file() and p != manifest:
            rel = p.relative_to(run_dir).as_posix()
            files.append(Copied(rel, p.stat().st_size, file_sha256(p)))
    have = {c.path: c.sha256 for c in files}
    for name, sha in manifest_digests(manifest.read_bytes()).items():
        if have.get(name) != sha:
            found = have.get(name, "nothing")
            raise IntegrityError(f"{run_dir / name}: the manifest says sha256 {sha}, the file "
                                 f"has {found}; the local run is damaged, not copying it")
    return [*files, Copied(MANIFEST, manifest.stat().st_size, file_sha256(manifest))]


def _copy(remote: Remote, name: str, run_dir: Path) -> tuple[Copied, ...]:
    out = []
    for c in _local_run(run_dir):
        rel = f"{name}/{run_dir.name}/{c.path}"
        if remote.sha256(rel) == c.sha256:
            out.append(Copied(c.path, c.size, c.sha256, already_there=True))
            continue
        remote.upload(run_dir / c.path, rel, c.sha256, c.size)
        out.append(c)
    return tuple(out)


def _listing(remote: Remote, name: str) -> tuple[RemoteRun, ...]:
    runs = []
    for rid in sorted(remote.list_dirs(name)):
        manifest = remote.read(f"{name}/{rid}/{MANIFEST}")
        runs.append(RemoteRun(rid, run_time(manifest, rid), manifest is not None))
    return tuple(runs)


def _verify(remote: Remote, name: str, run_id: str,
            read_back: bool) -> tuple[int, tuple[str, ...]]:
    manifest = remote.read(f"{name}/{run_id}/{MANIFEST}")
    if manifest is None:
        return 0, (f"{run_id}: no {MANIFEST} (missing or incomplete copy)",)
    problems = []
    digests = manifest_digests(manifest)
    for rel, want in sorted(digests.items()):
        got = remote.sha256(f"{name}/{run_id}/{rel}", read_back)
        if got is None:
            problems.append(f"{run_id}/{rel}: missing")
        elif got != want:
            problems.append(f"{run_id}/{rel}: sha256 is {got}, the manifest says {want}")
    return len(digests), tuple(problems)


def _targets(spec: BackupSpec) -> list[tuple[str, SftpTarget | S3Target]]:
    o = spec.offsite
    if o is None:
        return []
    return [(k, t) for k, t in (("sftp", o.sftp), ("s3", o.s3)) if t is not None]


def _open(target: SftpTarget | S3Target) -> Remote:
    if isinstance(target, SftpTarget):
        from agent.backups.offsite_sftp import SftpRemote

        return SftpRemote(target)
    from agent.backups.offsite_s3 import S3Remote

    return S3Remote(target)


def _each(spec: BackupSpec, work: Callable[[str, Remote], _T],
          failed: Callable[[str, str, str], _T]) -> list[_T]:
    """Run ``work`` against every target, turning a target's failure into ``failed``."""
    out = []
    for kind, target in _targets(spec):
        url = describe(target)
        try:
            remote = _open(target)
        except (OffsiteError, IntegrityError) as e:
            out.append(failed(kind, url, str(e)))
            continue
        try:
            out.append(work(kind, remote))
        except (OffsiteError, IntegrityError) as e:
            out.append(failed(kind, url, str(e)))
        finally:
            remote.close()
    return out


def describe(target: SftpTarget | S3Target) -> str:
    if isinstance(target, SftpTarget):
        return f"sftp://{target.user}@{target.host}:{target.port}{target.path}"
    prefix = target.prefix.strip("/")
    return f"s3://{target.bucket}/{prefix + '/' if prefix else ''}"


def copy_run(spec: BackupSpec, run_dir: Path) -> OffsiteResult:
    """Copy the finished run ``run_dir`` (DESTINATION/NAME/RUN) to each offsite target."""
    run_dir = Path(run_dir)

    def work(kind: str, remote: Remote) -> TargetResult:
        start = time.monotonic()
        files = _copy(remote, spec.name, run_dir)
        return TargetResult(kind, f"{remote.url}{spec.name}/{run_dir.name}/", True, files,
                            seconds=time.monotonic() - start)

    def failed(kind: str, url: str, error: str) -> TargetResult:
        return TargetResult(kind, url, False, error=error)

    return OffsiteResult(run_dir.name, tuple(_each(spec, work, failed)))


def list_remote(spec: BackupSpec) -> list[RemoteListing]:
    """The runs of this backup at each target, complete or not, oldest id first."""
    return _each(spec, lambda kind, r: RemoteListing(kind, r.url, _listing(r, spec.name)),
                 lambda kind, url, error: RemoteListing(kind, url, error=error))


def _retention(spec: BackupSpec) -> Retention | None:
    if spec.offsite is not None and spec.offsite.retention is not None:
        return spec.offsite.retention
    return spec.retention


def _prune(remote: Remote, kind: str, spec: BackupSpec, now: datetime, check: bool,
           tz: tzinfo | None) -> RemotePlan:
    runs = _listing(remote, spec.name)
    incomplete = tuple(r.id for r in runs if not r.complete)
    dated = [Backup(r.id, r.time) for r in runs if r.complete and r.time is not None]
    undated = [r.id for r in runs if r.complete and r.time is None]
    decisions = plan(dated, _retention(spec), now, tz)
    deleted: list[str] = []
    error = None
    for d in decisions if not check else ():
        if d.keep:
            continue
        try:
            remote.delete_run(f"{spec.name}/{d.backup.id}")
        except OffsiteError as e:
            error = str(e)
            break
        deleted.append(d.backup.id)
    return RemotePlan(kind, remote.url, tuple(decisions), incomplete, tuple(undated),
                      tuple(deleted), check, error)


def plan_remote(spec: BackupSpec, now: datetime, tz: tzinfo | None = None) -> list[RemotePlan]:
    """What retention would delete at each target (``--check``); deletes nothing."""
    return prune_remote(spec, now, check=True, tz=tz)


def prune_remote(spec: BackupSpec, now: datetime, check: bool = False,
                 tz: tzinfo | None = None) -> list[RemotePlan]:
    """Apply the offsite retention (default: the backup's own) at each target; under
    ``check`` only plan. Incomplete runs are never counted nor deleted."""
    return _each(spec, lambda kind, r: _prune(r, kind, spec, now, check, tz),
                 lambda kind, url, error: RemotePlan(kind, url, check=check, error=error))


def verify_remote(spec: BackupSpec, run_id: str, read_back: bool = False) -> list[TargetCheck]:
    """Compare every artefact of a copied run at each target with its manifest: SFTP reads
    each back and hashes it; S3 uses the stored SHA-256 unless ``read_back`` (or none kept)."""

    def work(kind: str, remote: Remote) -> TargetCheck:
        checked, problems = _verify(remote, spec.name, run_id, read_back)
        return TargetCheck(kind, remote.url, not problems, checked, problems)

    return _each(spec, work, lambda kind, url, error: TargetCheck(kind, url, False,
                                                                  problems=(error,)))
