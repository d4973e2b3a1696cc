"""Offsite copies over SFTP (paramiko): the SftpRemote that agent.backups.offsite drives."""

from __future__ import annotations

import base64
import hashlib
import os
import posixpath
import stat
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import paramiko

from agent.backups import IntegrityError
from agent.backups.offsite import CHUNK, MANIFEST, HostKeyRefused, OffsiteError, describe
from agent.playbook.models.backups import SftpTarget


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
