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
S3-compatible servers), or for multipart uploads (past MULTIPART_THRESHOLD, whose checksum is
one of the parts'), the object is read back and hashed.

Host keys: the server's key must be in ``known_hosts``; an unknown key is refused unless
``accept_new`` (then recorded), a changed key is always refused. Every connection and request
has the target's ``timeout``. One target failing never stops the other; the error is in the
result. Errors (under agent.backups.BackupError)::

    OffsiteError                       a target could not be reached, read or written
    └── HostKeyRefused(PermissionError)  unknown or changed SSH host key
    IntegrityError (agent.backups)     a copy or the local run differs from its checksums
"""

from __future__ import annotations

import base64
import configparser
import hashlib
import json
import os
import posixpath
import stat
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime, tzinfo
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import paramiko

from agent.backups import BackupError, IntegrityError
from agent.backups.retention import Backup, Decision, plan
from agent.playbook.models.backups import BackupSpec, Retention, S3Target, SftpTarget

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

MANIFEST = "manifest.json"
CHUNK = 1 << 20
MULTIPART_THRESHOLD = 4 << 30  # a single PUT may carry 5 GiB; past this, multipart
PART_SIZE = 256 << 20
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
        return SftpRemote(target)
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


# -- SFTP (paramiko) -------------------------------------------------------------------------

def _fingerprint(key: paramiko.PKey) -> str:
    digest = base64.b64encode(hashlib.sha256(key.asbytes()).digest()).decode().rstrip("=")
    return f"{key.get_name()} SHA256:{digest}"


class _HostKeyPolicy(paramiko.MissingHostKeyPolicy):
    """An unknown host key: refused, or with accept_new recorded in known_hosts and trusted."""

    def __init__(self, known_hosts: Path, accept_new: bool) -> None:
        self.known_hosts = known_hosts
        self.accept_new = accept_new

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str,
                         key: paramiko.PKey) -> None:
        if not self.accept_new:
            raise HostKeyRefused(
                f"{hostname}: host key {_fingerprint(key)} is not in {self.known_hosts}; "
                "compare it with the host's own (ssh-keygen -lf /etc/ssh/ssh_host_*_key.pub "
                "there), then add it to known_hosts, or set accept_new: true")
        self.known_hosts.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self.known_hosts, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        with os.fdopen(fd, "a") as f:
            f.write(f"{hostname} {key.get_name()} {key.get_base64()}\n")
        client.get_host_keys().add(hostname, key.get_name(), key)


class SftpRemote:
    """A directory on another host; files 0600 and folders 0700 at the far end."""

    def __init__(self, t: SftpTarget) -> None:
        self.t = t
        self.url = describe(t).rstrip("/") + "/"
        self.root = t.path.rstrip("/") or "/"
        self.known_hosts = Path(t.known_hosts).expanduser()
        self._dirs: set[str] = set()
        self.client = paramiko.SSHClient()
        try:
            with self._guard("connecting"):
                if self.known_hosts.exists():
                    self.client.load_host_keys(str(self.known_hosts))
                self.client.set_missing_host_key_policy(
                    _HostKeyPolicy(self.known_hosts, t.accept_new))
                self.client.connect(
                    t.host, t.port, username=t.user, look_for_keys=False,
                    key_filename=str(Path(t.key_file).expanduser()) if t.key_file else None,
                    allow_agent=t.key_file is None, timeout=t.timeout,
                    banner_timeout=t.timeout, auth_timeout=t.timeout,
                    channel_timeout=t.timeout)
                self.sftp = self.client.open_sftp()
                self.sftp.get_channel().settimeout(t.timeout)  # type: ignore[union-attr]
        except BaseException:
            self.client.close()
            raise

    @contextmanager
    def _guard(self, doing: str) -> Iterator[None]:
        """paramiko and socket errors become OffsiteError, named after the target."""
        t = self.t
        where = f"{self.url} ({doing})"
        try:
            yield
        except (OffsiteError, IntegrityError):
            raise
        except paramiko.BadHostKeyException as e:
            name = t.host if t.port == 22 else f"[{t.host}]:{t.port}"
            raise HostKeyRefused(
                f"{where}: the host key changed: {self.known_hosts} has "
                f"{_fingerprint(e.expected_key)}, the server offers {_fingerprint(e.key)}; "
                "refusing to connect (someone may be in between). If the host was "
                f"reinstalled, remove the old key: ssh-keygen -R '{name}' -f "
                f"{self.known_hosts}") from None
        except paramiko.AuthenticationException as e:
            keys = t.key_file or "the ssh-agent's keys"
            raise OffsiteError(f"{where}: authentication as {t.user} with {keys} failed: "
                               f"{e}") from None
        except TimeoutError:
            raise OffsiteError(f"{where}: no answer within {t.timeout:g}s") from None
        except (paramiko.SSHException, OSError, EOFError) as e:
            raise OffsiteError(f"{where}: {e or type(e).__name__}") from None

    def _full(self, rel: str) -> str:
        return posixpath.join(self.root, rel)

    def list_dirs(self, rel: str) -> list[str]:
        with self._guard(f"listing {rel}"):
            try:
                entries = self.sftp.listdir_attr(self._full(rel))
            except FileNotFoundError:
                return []
        return sorted(e.filename for e in entries
                      if stat.S_ISDIR(e.st_mode or 0) and not e.filename.startswith("."))

    def read(self, rel: str) -> bytes | None:
        with self._guard(f"reading {rel}"):
            try:
                with self.sftp.open(self._full(rel), "rb") as f:
                    return f.read()
            except FileNotFoundError:
                return None

    def _hash(self, path: str) -> str:
        h = hashlib.sha256()
        with self.sftp.open(path, "rb") as f:
            f.prefetch(max_concurrent_requests=64)
            while chunk := f.read(CHUNK):
                h.update(chunk)
        return h.hexdigest()

    def sha256(self, rel: str, read_back: bool = True) -> str | None:
        """Always read back and hashed: SFTP has no checksum of its own."""
        with self._guard(f"reading back {rel}"):
            try:
                return self._hash(self._full(rel))
            except FileNotFoundError:
                return None

    def _makedirs(self, path: str) -> None:
        cur = ""
        for part in path.strip("/").split("/"):
            cur += "/" + part
            if cur in self._dirs:
                continue
            try:
                self.sftp.stat(cur)
            except FileNotFoundError:
                self.sftp.mkdir(cur, 0o700)
            self._dirs.add(cur)

    def upload(self, local: Path, rel: str, sha256: str, size: int) -> None:
        full = self._full(rel)
        folder, base = posixpath.split(full)
        tmp = posixpath.join(folder, f".{base}.part")
        with self._guard(f"uploading {rel}"):
            self._makedirs(folder)
            with local.open("rb") as f:
                self.sftp.putfo(f, tmp, file_size=size, confirm=True)
            self.sftp.chmod(tmp, 0o600)
            got = self._hash(tmp)
            if got != sha256:
                self.sftp.remove(tmp)
                raise IntegrityError(f"{self.url}{rel}: read back after upload, its sha256 is "
                                     f"{got}, not {sha256}")
            self.sftp.posix_rename(tmp, full)

    def _rmtree(self, path: str) -> None:
        for e in self.sftp.listdir_attr(path):
            child = posixpath.join(path, e.filename)
            if stat.S_ISDIR(e.st_mode or 0):
                self._rmtree(child)
            else:
                self.sftp.remove(child)
        self.sftp.rmdir(path)

    def delete_run(self, rel: str) -> None:
        full = self._full(rel)
        with self._guard(f"deleting {rel}"):
            with suppress(FileNotFoundError):
                self.sftp.remove(posixpath.join(full, MANIFEST))
            self._rmtree(full)

    def close(self) -> None:
        self.client.close()


# -- S3 (boto3) ------------------------------------------------------------------------------

def _s3_credentials(t: S3Target) -> tuple[str | None, str | None, str | None]:
    if t.access_key_env and t.secret_key_env:
        names = (t.access_key_env, t.secret_key_env)
        missing = [n for n in names if not os.environ.get(n)]
        if missing:
            raise OffsiteError(f"s3: environment variable {', '.join(missing)} is not set "
                               "(named by access_key_env/secret_key_env)")
        return os.environ[names[0]], os.environ[names[1]], None
    if t.credentials_file:
        path = Path(t.credentials_file).expanduser()
        cp = configparser.ConfigParser()
        try:
            with path.open() as f:
                cp.read_file(f)
        except (OSError, configparser.Error) as e:
            raise OffsiteError(f"s3: cannot read credentials_file {path}: {e}") from None
        sec = cp["default"] if cp.has_section("default") else None
        key = sec.get("aws_access_key_id") if sec else None
        secret = sec.get("aws_secret_access_key") if sec else None
        if not key or not secret:
            raise OffsiteError(f"s3: {path} needs aws_access_key_id and aws_secret_access_key "
                               "in its [default] section")
        return key, secret, sec.get("aws_session_token") if sec else None
    return None, None, None


def _b64(hexdigest: str) -> str:
    return base64.b64encode(bytes.fromhex(hexdigest)).decode()


_MISSING = ("404", "NoSuchKey", "NotFound")
_NO_CHECKSUMS = ("NotImplemented", "InvalidArgument", "InvalidRequest")


class S3Remote:
    """A bucket (and prefix) in S3 or an S3-compatible store."""

    def __init__(self, t: S3Target) -> None:
        import boto3
        from botocore.config import Config

        self.t = t
        self.url = describe(t)
        self.prefix = t.prefix.strip("/")
        self.checksums = True  # cleared when the store refuses x-amz-checksum-sha256
        key, secret, token = _s3_credentials(t)
        session = boto3.session.Session(aws_access_key_id=key, aws_secret_access_key=secret,
                                        aws_session_token=token, region_name=t.region)
        with self._guard("setting up the client"):
            self.s3: S3Client = session.client("s3", endpoint_url=t.endpoint_url, config=Config(
                connect_timeout=t.timeout, read_timeout=t.timeout,
                retries={"max_attempts": 3, "mode": "standard"},
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
                s3={"addressing_style": "path" if t.endpoint_url else "auto"}))

    @contextmanager
    def _guard(self, doing: str) -> Iterator[None]:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            yield
        except ClientError as e:
            err = e.response.get("Error", {})
            raise OffsiteError(f"{self.url} ({doing}): {err.get('Code', '?')}: "
                               f"{err.get('Message', e)}") from None
        except (BotoCoreError, OSError) as e:
            raise OffsiteError(f"{self.url} ({doing}): {e}") from None

    def _key(self, rel: str) -> str:
        return f"{self.prefix}/{rel}" if self.prefix else rel

    def list_dirs(self, rel: str) -> list[str]:
        start = self._key(rel) + "/"
        out = []
        with self._guard(f"listing {rel}"):
            pages = self.s3.get_paginator("list_objects_v2").paginate(
                Bucket=self.t.bucket, Prefix=start, Delimiter="/")
            for page in pages:
                for cp in page.get("CommonPrefixes", []):
                    name = cp.get("Prefix", "")[len(start):].rstrip("/")
                    if name and not name.startswith("."):
                        out.append(name)
        return sorted(out)

    def _missing(self, e: Exception) -> bool:
        from botocore.exceptions import ClientError

        return isinstance(e, ClientError) and e.response.get("Error", {}).get("Code") in _MISSING

    def read(self, rel: str) -> bytes | None:
        with self._guard(f"reading {rel}"):
            try:
                obj = self.s3.get_object(Bucket=self.t.bucket, Key=self._key(rel))
            except Exception as e:
                if self._missing(e):
                    return None
                raise
            return obj["Body"].read()

    def sha256(self, rel: str, read_back: bool = False) -> str | None:
        """The object's SHA-256: the store's full-object checksum, else read back and hashed."""
        key = self._key(rel)
        with self._guard(f"checking {rel}"):
            try:
                head = self.s3.head_object(Bucket=self.t.bucket, Key=key, ChecksumMode="ENABLED")
            except Exception as e:
                if self._missing(e):
                    return None
                raise
            stored = head.get("ChecksumSHA256")
            # a multipart object's checksum ("...-N", and its ETag "...-N") is of its parts
            multipart = "-" in (stored or "") or "-" in head.get("ETag", "")
            if stored and not multipart and not read_back:
                return base64.b64decode(stored).hex()
            h = hashlib.sha256()
            body = self.s3.get_object(Bucket=self.t.bucket, Key=key)["Body"]
            for chunk in body.iter_chunks(CHUNK):
                h.update(chunk)
            return h.hexdigest()

    def _put(self, local: Path, key: str, sha256: str, size: int) -> None:
        from botocore.exceptions import ClientError

        with local.open("rb") as f:
            try:
                if self.checksums:
                    self.s3.put_object(Bucket=self.t.bucket, Key=key, Body=f, ContentLength=size,
                                       ChecksumAlgorithm="SHA256", ChecksumSHA256=_b64(sha256))
                    return
            except ClientError as e:
                code = e.response.get("Error", {}).get("Code")
                if code == "BadDigest":
                    raise IntegrityError(f"{self.url}{key}: the store received bytes whose "
                                         f"sha256 is not {sha256}") from None
                if code not in _NO_CHECKSUMS:
                    raise
                self.checksums = False
                f.seek(0)
            self.s3.put_object(Bucket=self.t.bucket, Key=key, Body=f, ContentLength=size)

    def _multipart(self, local: Path, key: str, size: int) -> None:
        part_size = max(PART_SIZE, -(-size // 10000))
        extra: dict[str, Any] = {"ChecksumAlgorithm": "SHA256"} if self.checksums else {}
        up = self.s3.create_multipart_upload(Bucket=self.t.bucket, Key=key, **extra)
        parts: list[Any] = []
        try:
            with local.open("rb") as f:
                while data := f.read(part_size):
                    part: dict[str, Any] = {"PartNumber": len(parts) + 1}
                    if self.checksums:
                        part["ChecksumSHA256"] = _b64(hashlib.sha256(data).hexdigest())
                    r = self.s3.upload_part(Bucket=self.t.bucket, Key=key, Body=data,
                                            UploadId=up["UploadId"], **part)
                    parts.append({**part, "ETag": r["ETag"]})
            self.s3.complete_multipart_upload(Bucket=self.t.bucket, Key=key,
                                              UploadId=up["UploadId"],
                                              MultipartUpload={"Parts": parts})
        except BaseException:
            with suppress(Exception):
                self.s3.abort_multipart_upload(Bucket=self.t.bucket, Key=key,
                                               UploadId=up["UploadId"])
            raise

    def upload(self, local: Path, rel: str, sha256: str, size: int) -> None:
        key = self._key(rel)
        multipart = size > MULTIPART_THRESHOLD
        with self._guard(f"uploading {rel}"):
            if multipart:
                self._multipart(local, key, size)
            else:
                self._put(local, key, sha256, size)
        got = self.sha256(rel, read_back=multipart)
        if got != sha256:
            raise IntegrityError(f"{self.url}{rel}: after upload its sha256 is {got}, "
                                 f"not {sha256}")

    def delete_run(self, rel: str) -> None:
        start = self._key(rel) + "/"
        with self._guard(f"deleting {rel}"):
            self.s3.delete_object(Bucket=self.t.bucket, Key=start + MANIFEST)
            pages = self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.t.bucket,
                                                                      Prefix=start)
            for page in pages:
                keys = [{"Key": o["Key"]} for o in page.get("Contents", []) if "Key" in o]
                if not keys:
                    continue
                r = self.s3.delete_objects(Bucket=self.t.bucket,
                                           Delete={"Objects": keys, "Quiet": True})  # type: ignore[typeddict-item]
                if r.get("Errors"):
                    first = r["Errors"][0]
                    raise OffsiteError(f"{self.url}{rel}: deleting {first.get('Key')} failed: "
                                       f"{first.get('Code')}: {first.get('Message')}")

    def close(self) -> None:
        self.s3.close()
