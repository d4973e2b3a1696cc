"""files: regular files (content, template, copied source), directories, absent paths.

observe is one lstat of the path, plus one read of the file when the desired content has to
be compared (sizes first); it also resolves user and group names, so diff and describe are
pure. A symlink found where the playbook wants a file or a directory is refused unless the
resource says `follow: true`; `state: absent` removes a link itself, never its target.
Changes carry content digests, never content: files hold secrets. Desired bytes and their
digests/diffs live in _filecontent; host effects (atomic writes, symlink-safe chmod/chown,
guarded removal) in _fileops.
"""

from __future__ import annotations

import grp
import os
import pwd
import stat
from collections.abc import Callable
from dataclasses import dataclass, field

from agent.errors import ProviderError, UnsafeOperation
from agent.playbook.models import FileSpec
from agent.providers import _fileops
from agent.providers._filecontent import DIFF_LIMIT, content_diff, digest, read_desired
from agent.providers.base import RESTART, Change, Outcome, ProviderContext

DEFAULT_FILE_MODE = 0o644
DEFAULT_DIR_MODE = 0o755  # for new directories without a mode, and for missing parents


@dataclass(frozen=True, slots=True)
class FileObserved:
    """What is at the path now, and what the spec wants there, resolved on this host."""

    path: str  # the path acted on: the symlink's target under follow: true
    kind: str  # absent, file, directory, symlink, other
    mode: int | None = None
    uid: int | None = None
    gid: int | None = None
    user: str | None = None  # name of uid (the number as text when it has no name)
    group: str | None = None
    size: int | None = None
    # Content stays out of repr(): files hold secrets, and observations end up in logs.
    current: bytes | None = field(default=None, repr=False)  # read only to compare
    desired: bytes | None = field(default=None, repr=False)  # None: content unmanaged
    want_uid: int | None = None
    want_gid: int | None = None
    want_user: str | None = None
    want_group: str | None = None
    missing_parents: tuple[str, ...] = ()  # outermost first


def supports(ctx: ProviderContext) -> str | None:
    return None


# ------------------------------------------------------------------------------ observe

def observe(spec: FileSpec, ctx: ProviderContext) -> FileObserved:
    path = spec.path
    st = _lstat(path)
    if spec.state == "absent":  # a symlink is removed itself: never followed
        return FileObserved(path, "absent" if st is None else _kind(st.st_mode))
    if st is not None and stat.S_ISLNK(st.st_mode):
        if not spec.follow:
            raise UnsafeOperation(f"{path} is a symlink to {_readlink(path)}; refusing to "
                                  "write through it (set follow: true to manage the target)")
        path = os.path.realpath(path)
        st = _lstat(path)
    want_uid, want_user, want_gid, want_group = _wanted_ids(spec)
    desired = read_desired(spec, ctx)
    if st is None:
        return FileObserved(path, "absent", desired=desired, want_uid=want_uid,
                            want_gid=want_gid, want_user=want_user, want_group=want_group,
                            missing_parents=_missing_parents(path))
    kind = _kind(st.st_mode)
    current = None
    if kind == "file" and desired is not None and (st.st_size == len(desired) or (
            st.st_size <= DIFF_LIMIT and len(desired) <= DIFF_LIMIT)):
        current = _read(path)  # equal sizes: compare; both small: also show a diff
    return FileObserved(path, kind, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid,
                        _user_name(st.st_uid), _group_name(st.st_gid), st.st_size, current,
                        desired, want_uid, want_gid, want_user, want_group)


def _lstat(path: str) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise _fileops.os_error("inspect", path, e) from None


def _readlink(path: str) -> str:
    try:
        return os.readlink(path)
    except OSError as e:
        raise _fileops.os_error("read the symlink", path, e) from None


_A_KIND = {"file": "a regular file", "directory": "a directory", "symlink": "a symlink",
           "other": "a special file (device, FIFO or socket)"}


def _kind(mode: int) -> str:
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISDIR(mode):
        return "directory"
    if stat.S_ISLNK(mode):
        return "symlink"
    return "other"


def _read(path: str) -> bytes:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        with os.fdopen(fd, "rb") as fh:
            return fh.read()
    except OSError as e:
        raise _fileops.os_error("read", path, e) from None


def _missing_parents(path: str) -> tuple[str, ...]:
    missing = []
    parent = os.path.dirname(path)
    while parent not in ("", "/") and not os.path.lexists(parent):
        missing.append(parent)
        parent = os.path.dirname(parent)
    return tuple(reversed(missing))


def _wanted_ids(spec: FileSpec) -> tuple[int | None, str | None, int | None, str | None]:
    uid = gid = None
    user = group = None
    if spec.owner is not None:
        uid = _lookup(spec.owner, "owner", "user", lambda n: pwd.getpwnam(n).pw_uid)
        user = _user_name(uid)
    if spec.group is not None:
        gid = _lookup(spec.group, "group", "group", lambda n: grp.getgrnam(n).gr_gid)
        group = _group_name(gid)
    return uid, user, gid, group


def _lookup(value: str | int, key: str, what: str, by_name: Callable[[str], int]) -> int:
    if isinstance(value, int):
        return value
    try:
        return by_name(value)
    except KeyError:
        if value.isdigit():  # a quoted number: "1000" is uid 1000 when no user has that name
            return int(value)
        raise ProviderError(f"{key} {value!r} is not a {what} on this host "
                            f"(expected a {what} name or a numeric id)") from None


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


# ------------------------------------------------------------------------- diff, describe

def diff(spec: FileSpec, observed: FileObserved) -> list[Change]:
    o = observed
    if spec.state == "absent":
        return [] if o.kind == "absent" else [
            Change("state", o.kind, "absent", f"is {_A_KIND[o.kind]}, want it absent")]
    changes: list[Change] = []
    if o.kind not in ("absent", spec.state):
        # apply refuses this one: replacing a directory, a symlink or a device is not ours
        return [Change("state", o.kind, spec.state,
                       f"is {_A_KIND[o.kind]}, want {_A_KIND[spec.state]}")]
    new = o.kind == "absent"
    if o.missing_parents:
        changes.append(Change("parents", None, list(o.missing_parents),
                              f"missing parent directories, created with mode "
                              f"{DEFAULT_DIR_MODE:04o}"))
    if new:
        changes.append(Change("state", "absent", spec.state, "missing"))
    if o.desired is not None and (new or o.size != len(o.desired) or o.current != o.desired):
        changes.append(Change("content", None if new else digest(o.current, o.size),
                              digest(o.desired, len(o.desired)),
                              "new content" if new else "content differs",
                              content_diff(o.current, o.desired, o.path, new)))
    if spec.mode is not None and o.mode != spec.mode:
        changes.append(Change("mode", _octal(o.mode), _octal(spec.mode),
                              f"new {spec.state} gets mode {spec.mode:04o}" if new else
                              f"mode is {_octal(o.mode)}, want {spec.mode:04o}"))
    if o.want_uid is not None and o.uid != o.want_uid:
        changes.append(Change("owner", o.user, o.want_user,
                              f"new {spec.state} gets owner {o.want_user}" if new else
                              f"owner is {o.user}, want {o.want_user}"))
    if o.want_gid is not None and o.gid != o.want_gid:
        changes.append(Change("group", o.group, o.want_group,
                              f"new {spec.state} gets group {o.want_group}" if new else
                              f"group is {o.group}, want {o.want_group}"))
    return changes


def _octal(mode: int | None) -> str | None:
    return None if mode is None else f"{mode:04o}"


def describe(spec: FileSpec, observed: FileObserved) -> str:
    o = observed
    if o.kind == "absent":
        return "absent"
    via = f", through the symlink {spec.path}" if o.path != spec.path else ""
    attrs = f"mode {_octal(o.mode)}, {o.user}:{o.group}"
    if o.kind == "directory":
        return f"directory, {attrs}{via}"
    matches = ", content matches" if o.desired is not None else ""
    return f"regular file, {o.size} bytes, {attrs}{matches}{via}"


# -------------------------------------------------------------------------------- apply

def apply(spec: FileSpec, changes: list[Change], ctx: ProviderContext) -> list[Outcome]:
    outcomes: list[Outcome] = []
    if any(c.field == RESTART for c in changes):
        outcomes.append(Outcome("restart", True, "files have nothing to restart"))
    if all(c.field == RESTART for c in changes):
        return outcomes
    if spec.state == "absent":
        return [*outcomes, Outcome("remove", True, _remove(spec.path))]
    o = observe(spec, ctx)  # act on what is there now, not on what the plan saw
    if o.kind not in ("absent", spec.state):
        raise UnsafeOperation(f"{o.path} is {_A_KIND[o.kind]}, not {_A_KIND[spec.state]}; "
                              "refusing to replace it (remove it first, or declare it "
                              "state: absent)")
    for parent in o.missing_parents:
        _fileops.make_dir(parent, DEFAULT_DIR_MODE, -1, -1)
        outcomes.append(Outcome("create parent", True, f"created directory {parent}"))
    uid = -1 if o.want_uid is None else o.want_uid
    gid = -1 if o.want_gid is None else o.want_gid
    if o.kind == "absent" and spec.state == "directory":
        mode = DEFAULT_DIR_MODE if spec.mode is None else spec.mode
        _fileops.make_dir(o.path, mode, uid, gid)
        return [*outcomes, Outcome("create", True, f"created directory {o.path}")]
    if o.kind == "absent" or (o.desired is not None and o.current != o.desired):
        size = _write(spec, o, uid, gid)
        what = "created" if o.kind == "absent" else "rewrote"
        return [*outcomes, Outcome("write", True, f"{what} {o.path} ({size} bytes)")]
    return outcomes + _fix_attributes(spec, o, uid, gid)


def _remove(path: str) -> str:
    # Top-level paths are refused by _fileops.remove with the clearer message.
    if os.path.dirname(path) != "/" and os.path.ismount(path):  # rmtree would empty it
        raise UnsafeOperation(f"refusing to remove {path}: it is a mount point "
                              "(unmount it first)")
    return _fileops.remove(path)


def _write(spec: FileSpec, o: FileObserved, uid: int, gid: int) -> int:
    if spec.mode is not None:
        mode = spec.mode
    else:
        mode = o.mode if o.kind == "file" and o.mode is not None else DEFAULT_FILE_MODE
    if o.kind == "file" and os.geteuid() == 0:
        # Replacing a file keeps its owner unless the playbook names one.
        uid = o.uid if uid == -1 and o.uid is not None else uid
        gid = o.gid if gid == -1 and o.gid is not None else gid
    data = o.desired or b""
    _fileops.write_atomic(o.path, data, mode, uid, gid)
    return len(data)


def _fix_attributes(spec: FileSpec, o: FileObserved, uid: int, gid: int) -> list[Outcome]:
    out = []
    new_uid = uid if uid not in (-1, o.uid) else -1
    new_gid = gid if gid not in (-1, o.gid) else -1
    if new_uid != -1 or new_gid != -1:
        # chown first: it clears setuid/setgid bits, which the chmod below then restores.
        _fileops.set_owner(o.path, new_uid, new_gid)
        user = o.want_user if new_uid != -1 else o.user
        group = o.want_group if new_gid != -1 else o.group
        out.append(Outcome("chown", True, f"owner {o.user}:{o.group} -> {user}:{group}"))
    chowned = bool(out)
    if spec.mode is not None and (o.mode != spec.mode or (chowned and spec.mode & 0o6000)):
        _fileops.set_mode(o.path, spec.mode)
        out.append(Outcome("chmod", True, f"mode {_octal(o.mode)} -> {spec.mode:04o}"))
    return out
