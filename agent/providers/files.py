"""files: regular files (content, template, copied source), directories, absent paths.

observe reads the path with lstat (one call) and the file only when a comparison needs it;
a symlink found where the playbook expects a file or directory is refused unless the
resource says `follow: true`. Reports carry content digests, never content.
"""

from __future__ import annotations

import difflib
import grp
import hashlib
import os
import pwd
import stat
from dataclasses import dataclass

from agent.errors import ProviderError, UnsafeOperation
from agent.playbook.models import FileSpec
from agent.providers import _fileops
from agent.providers.base import RESTART, Change, Outcome, ProviderContext

DIFF_LIMIT = 256 * 1024
DEFAULT_FILE_MODE = 0o644
DEFAULT_DIR_MODE = 0o755


@dataclass(frozen=True, slots=True)
class FileObserved:
    path: str  # the path acted on: the symlink's target under follow: true
    kind: str  # absent, file, directory, symlink, other
    mode: int | None = None
    uid: int | None = None
    gid: int | None = None
    size: int | None = None
    current: bytes | None = None  # read when the desired content needs comparing
    desired: bytes | None = None  # from content, template or source
    want_uid: int | None = None
    want_gid: int | None = None
    missing_parents: tuple[str, ...] = ()


def supports(ctx: ProviderContext) -> str | None:
    return None


def _kind(mode: int) -> str:
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISDIR(mode):
        return "directory"
    if stat.S_ISLNK(mode):
        return "symlink"
    return "other"


def observe(spec: FileSpec, ctx: ProviderContext) -> FileObserved:
    path = spec.path
    try:
        st: os.stat_result | None = os.lstat(path)
    except FileNotFoundError:
        st = None
    except OSError as e:
        raise _fileops.os_error("inspect", path, e) from None
    if spec.state == "absent":
        return FileObserved(path, "absent" if st is None else _kind(st.st_mode))
    if st is not None and stat.S_ISLNK(st.st_mode):
        target = os.readlink(path)
        if not spec.follow:
            raise UnsafeOperation(f"{path} is a symlink to {target}; refusing to write "
                                  "through it (set follow: true to manage the target)")
        path = os.path.realpath(path)
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            st = None
    want_uid, want_gid = _owner_ids(spec)
    desired = _desired_content(spec, ctx)
    if st is None:
        return FileObserved(path, "absent", desired=desired, want_uid=want_uid,
                            want_gid=want_gid, missing_parents=_missing_parents(path))
    kind = _kind(st.st_mode)
    current = None
    if kind == "file" and desired is not None and (
            st.st_size == len(desired) or st.st_size <= DIFF_LIMIT):
        current = _read(path)
    return FileObserved(path, kind, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid,
                        st.st_size, current, desired, want_uid, want_gid)


def _read(path: str) -> bytes:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as e:
        raise _fileops.os_error("read", path, e) from None
    with os.fdopen(fd, "rb") as fh:
        return fh.read()


def _missing_parents(path: str) -> tuple[str, ...]:
    missing = []
    parent = os.path.dirname(path)
    while parent and parent != "/" and not os.path.lexists(parent):
        missing.append(parent)
        parent = os.path.dirname(parent)
    return tuple(reversed(missing))


def _owner_ids(spec: FileSpec) -> tuple[int | None, int | None]:
    uid = gid = None
    if spec.owner is not None:
        try:
            uid = spec.owner if isinstance(spec.owner, int) else pwd.getpwnam(spec.owner).pw_uid
        except KeyError:
            raise ProviderError(f"owner {spec.owner!r} is not a user on this host") from None
    if spec.group is not None:
        try:
            gid = spec.group if isinstance(spec.group, int) else grp.getgrnam(spec.group).gr_gid
        except KeyError:
            raise ProviderError(f"group {spec.group!r} is not a group on this host") from None
    return uid, gid


def _resolve(ctx: ProviderContext, rel: str) -> str:
    return rel if os.path.isabs(rel) else os.path.join(ctx.base_dir, rel)


def _desired_content(spec: FileSpec, ctx: ProviderContext) -> bytes | None:
    if spec.content is not None:
        return spec.content.encode()
    if spec.source is not None:
        src = _resolve(ctx, spec.source)
        try:
            with open(src, "rb") as fh:
                return fh.read()
        except OSError as e:
            raise ProviderError(f"source {src}: {e.strerror}") from None
    if spec.template is not None:
        return _render_template(_resolve(ctx, spec.template), ctx)
    return None


def _render_template(path: str, ctx: ProviderContext) -> bytes:
    from agent.playbook.templating import describe_error, environment

    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except OSError as e:
        raise ProviderError(f"template {path}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise ProviderError(f"template {path}: not UTF-8 text") from None
    try:
        rendered: str = environment().from_string(text).render(**ctx.variables)
    except Exception as e:  # jinja2's many error types: each reported with the file
        what, expected = describe_error(e)
        raise ProviderError(f"template {path}: {what}" +
                            (f" ({expected})" if expected else "")) from None
    return rendered.encode()


def _digest(data: bytes | None, size: int | None = None) -> str | None:
    if data is None:
        return None if size is None else f"({size} bytes)"
    return f"sha256:{hashlib.sha256(data).hexdigest()[:12]} ({len(data)} bytes)"


def _unified(before: bytes | None, after: bytes, path: str) -> str:
    try:
        old = (before or b"").decode()
        new = after.decode()
    except UnicodeDecodeError:
        return "binary content differs"
    if len(old) > DIFF_LIMIT or len(new) > DIFF_LIMIT:
        return "content differs (too large to show)"
    lines = difflib.unified_diff(old.splitlines(keepends=True), new.splitlines(keepends=True),
                                 f"{path} (on the host)", f"{path} (wanted)")
    return "".join(x if x.endswith("\n") else x + "\n\\ No newline at end of file\n"
                   for x in lines)


def _user(uid: int | None) -> str | None:
    if uid is None:
        return None
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _group(gid: int | None) -> str | None:
    if gid is None:
        return None
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def diff(spec: FileSpec, observed: FileObserved) -> list[Change]:
    o = observed
    if spec.state == "absent":
        return [] if o.kind == "absent" else [
            Change("state", o.kind, "absent", f"a {o.kind} exists at {o.path}")]
    changes: list[Change] = []
    if o.missing_parents:
        changes.append(Change("parents", None, list(o.missing_parents),
                              "parent directories are missing"))
    if o.kind != spec.state:
        reason = "missing" if o.kind == "absent" else f"is a {o.kind}, want a {spec.state}"
        changes.append(Change("state", o.kind, spec.state, reason))
    if spec.state == "file" and o.desired is not None and (
            o.kind != "file" or o.size != len(o.desired) or o.current != o.desired):
        changes.append(Change("content", _digest(o.current, o.size if o.kind == "file" else None),
                              _digest(o.desired), "content differs" if o.kind == "file"
                              else "new content", _unified(o.current, o.desired, o.path)))
    if o.kind != spec.state:
        return changes  # attributes are set when the path is created
    if spec.mode is not None and o.mode != spec.mode:
        changes.append(Change("mode", f"{o.mode:04o}", f"{spec.mode:04o}",
                              f"mode is {o.mode:04o}, want {spec.mode:04o}"))
    if o.want_uid is not None and o.uid != o.want_uid:
        changes.append(Change("owner", _user(o.uid), _user(o.want_uid), "owner differs"))
    if o.want_gid is not None and o.gid != o.want_gid:
        changes.append(Change("group", _group(o.gid), _group(o.want_gid), "group differs"))
    return changes


def describe(spec: FileSpec, observed: FileObserved) -> str:
    o = observed
    if o.kind == "absent":
        return "absent, as wanted"
    owner = f"{_user(o.uid)}:{_group(o.gid)}"
    mode = f"mode {o.mode:04o}" if o.mode is not None else ""
    if o.kind == "directory":
        return f"directory, {mode}, {owner}"
    text = f"regular file, {o.size} bytes, {mode}, {owner}"
    return text + (", content matches" if o.desired is not None else "")


def apply(spec: FileSpec, changes: list[Change], ctx: ProviderContext) -> list[Outcome]:
    fields = {c.field: c for c in changes}
    outcomes: list[Outcome] = []
    if RESTART in fields:
        outcomes.append(Outcome("restart", True, "files have nothing to restart"))
    if spec.state == "absent":
        if "state" in fields:
            outcomes.append(Outcome("remove", True, _fileops.remove(spec.path)))
        return outcomes
    o = observe(spec, ctx)  # act on what is there now, not on what the plan saw
    for parent in o.missing_parents:
        _fileops.make_dir(parent, DEFAULT_DIR_MODE, -1, -1)
        outcomes.append(Outcome("create parent", True, f"created directory {parent}"))
    uid = -1 if o.want_uid is None else o.want_uid
    gid = -1 if o.want_gid is None else o.want_gid
    if o.kind not in ("absent", spec.state):
        raise UnsafeOperation(f"{o.path} is a {o.kind}, not a {spec.state}; refusing to "
                              "replace it (remove it first, or declare it state: absent)")
    if spec.state == "directory":
        if o.kind == "absent":
            mode = DEFAULT_DIR_MODE if spec.mode is None else spec.mode
            _fileops.make_dir(o.path, mode, uid, gid)
            return [*outcomes, Outcome("create", True, f"created directory {o.path}")]
    elif o.kind == "absent" or (o.desired is not None and o.current != o.desired):
        _write(spec, o, uid, gid)
        what = "created" if o.kind == "absent" else "rewrote"
        return [*outcomes, Outcome("write", True, f"{what} {o.path} "
                                   f"({len(o.desired or b'')} bytes)")]
    return outcomes + _fix_attributes(spec, o, uid, gid)


def _write(spec: FileSpec, o: FileObserved, uid: int, gid: int) -> None:
    mode = spec.mode if spec.mode is not None else (o.mode or DEFAULT_FILE_MODE)
    if o.kind == "file" and os.geteuid() == 0:
        # Replacing a file keeps its owner unless the playbook names one.
        uid = o.uid if uid == -1 and o.uid is not None else uid
        gid = o.gid if gid == -1 and o.gid is not None else gid
    _fileops.write_atomic(o.path, o.desired or b"", mode, uid, gid)


def _fix_attributes(spec: FileSpec, o: FileObserved, uid: int, gid: int) -> list[Outcome]:
    out = []
    if spec.mode is not None and o.mode != spec.mode:
        _fileops.set_mode(o.path, spec.mode)
        out.append(Outcome("chmod", True, f"mode {o.mode:04o} -> {spec.mode:04o}"))
    new_uid = uid if uid != -1 and uid != o.uid else -1
    new_gid = gid if gid != -1 and gid != o.gid else -1
    if new_uid != -1 or new_gid != -1:
        _fileops.set_owner(o.path, new_uid, new_gid)
        out.append(Outcome("chown", True, f"owner {_user(o.uid)}:{_group(o.gid)} -> "
                           f"{_user(uid if uid != -1 else o.uid)}:"
                           f"{_group(gid if gid != -1 else o.gid)}"))
    return out
