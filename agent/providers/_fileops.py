"""Filesystem effects of the files provider: atomic writes and symlink-safe attribute changes.

Writes go to a temporary file in the target's directory (O_EXCL, O_NOFOLLOW, mode 0600),
which gets its mode and owner before an fsync and a rename over the target, then the
directory is fsynced: a crash leaves the old file or the new one, never a mix, and never a
window where a secret is readable by others.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import shutil
import stat
from pathlib import PurePosixPath

from agent.errors import ProviderError, UnsafeOperation

# Never removed by `state: absent`, nor is anything directly under / (a typo away from these).
PROTECTED = frozenset({"/", "/bin", "/boot", "/dev", "/etc", "/home", "/lib", "/lib32",
                       "/lib64", "/opt", "/proc", "/root", "/run", "/sbin", "/srv", "/sys",
                       "/tmp", "/usr", "/var", "/var/lib", "/var/log", "/usr/local",
                       # the real /bin, /lib, /sbin on merged-/usr systems
                       "/usr/bin", "/usr/lib", "/usr/lib64", "/usr/sbin", "/usr/share"})


def os_error(action: str, path: str, err: OSError) -> ProviderError:
    """Translate an OSError into a ProviderError that says what, where and what to do."""
    reason = err.strerror or str(err)
    hint = ""
    if err.errno in (errno.EACCES, errno.EPERM):
        hint = " (permission denied: run as root or fix the owner of the path)"
    elif err.errno == errno.EROFS:
        hint = " (the filesystem is read-only)"
    elif err.errno == errno.ENOSPC:
        hint = " (the disk is full)"
    return ProviderError(f"cannot {action} {path}: {reason}{hint}")


def write_atomic(path: str, data: bytes, mode: int, uid: int, gid: int) -> None:
    """Replace path with data; uid/gid -1 leave the owner as the writer."""
    directory, name = os.path.split(path)
    # Kept under NAME_MAX (255) however long the target's name is.
    tmp = os.path.join(directory, f".{name[:200]}.opsagent-{secrets.token_hex(4)}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600)
    except OSError as e:
        raise os_error("write", path, e) from None
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            if uid != -1 or gid != -1:
                os.fchown(fd, uid, gid)
            os.fchmod(fd, mode)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, path)
    except OSError as e:
        _unlink_quietly(tmp)
        raise os_error("write", path, e) from None
    fsync_dir(directory)


def fsync_dir(directory: str) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems cannot fsync a directory; the rename is still atomic
    finally:
        os.close(fd)


def _unlink_quietly(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


def make_dir(path: str, mode: int, uid: int, gid: int) -> None:
    try:
        os.mkdir(path, mode)
        os.chmod(path, mode)  # mkdir's mode is filtered by the umask
        if uid != -1 or gid != -1:
            os.chown(path, uid, gid, follow_symlinks=False)
    except OSError as e:
        raise os_error("create directory", path, e) from None


def set_mode(path: str, mode: int) -> None:
    """chmod without following a symlink that may have been planted since observation."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        if e.errno != errno.EACCES:
            raise os_error("change the mode of", path, e) from None
        st = os.lstat(path)  # unreadable by us (mode 000 and not root): chmod by name
        if stat.S_ISLNK(st.st_mode):
            raise UnsafeOperation(f"{path} became a symlink; refusing to chmod it") from None
        try:
            os.chmod(path, mode)
        except OSError as e2:
            raise os_error("change the mode of", path, e2) from None
        return
    try:
        os.fchmod(fd, mode)
    except OSError as e:
        raise os_error("change the mode of", path, e) from None
    finally:
        os.close(fd)


def set_owner(path: str, uid: int, gid: int) -> None:
    try:
        os.chown(path, uid, gid, follow_symlinks=False)
    except OSError as e:
        raise os_error("change the owner of", path, e) from None


def remove(path: str) -> str:
    """Remove a file, symlink or directory tree; refuse the system's top directories."""
    norm = os.path.normpath(path)
    if norm in PROTECTED or len(PurePosixPath(norm).parts) <= 2:
        raise UnsafeOperation(f"refusing to remove {norm}: a top-level system path")
    try:
        st = os.lstat(norm)
    except FileNotFoundError:
        return f"{norm} was already absent"
    except OSError as e:
        raise os_error("remove", norm, e) from None
    try:
        if stat.S_ISDIR(st.st_mode):
            shutil.rmtree(norm)
            return f"removed directory {norm}"
        os.unlink(norm)
        return f"removed {norm}"
    except OSError as e:
        raise os_error("remove", norm, e) from None
