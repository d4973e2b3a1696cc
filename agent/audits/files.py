"""``world_writable`` and ``secrets_readable``: permission audits over directory trees.

The walk never follows a symlink below a root (a root that is itself a symlink, like /bin on
merged-/usr systems, is followed), never leaves a root's filesystem (mount points are looked
at, not entered), visits each directory once (bind mounts can make loops even without
symlinks) and is bounded by ``max_files`` and the audit's timeout. A directory it cannot
list is an ``unreadable`` finding (severity info): what is under it was not audited.
"""

from __future__ import annotations

import grp
import os
import pwd
import stat
from collections.abc import Iterator
from fnmatch import fnmatchcase
from functools import lru_cache

from agent.audits import Budget, Finding, finding
from agent.playbook.models.audits import AuditSpec, SecretsReadable, TreeScan

_TYPES = {stat.S_IFREG: "file", stat.S_IFDIR: "directory", stat.S_IFSOCK: "socket",
          stat.S_IFIFO: "fifo", stat.S_IFCHR: "character device", stat.S_IFBLK: "block device"}


def audit_world_writable(spec: AuditSpec, deadline: float) -> list[Finding]:
    scan = spec.world_writable
    assert scan is not None
    out: list[Finding] = []
    budget = Budget(scan.max_files, deadline)
    for path, st in walk(spec, scan, budget, out):
        mode = st.st_mode
        if not mode & stat.S_IWOTH:
            continue
        if stat.S_ISDIR(mode):
            if mode & stat.S_ISVTX:
                continue  # /tmp-like: others create files but cannot touch others' files
            what = "directory without the sticky bit"
        else:
            what = _TYPES.get(stat.S_IFMT(mode), "file")
        out.append(finding(spec, "world_writable", path,
                           f"{what} writable by others ({describe(st)})"))
    return out + budget.truncated(spec)


def audit_secrets_readable(spec: AuditSpec, deadline: float) -> list[Finding]:
    scan = spec.secrets_readable
    assert scan is not None
    out: list[Finding] = []
    budget = Budget(scan.max_files, deadline)
    for path, st in walk(spec, scan, budget, out):
        if stat.S_ISREG(st.st_mode) and _is_secret(scan, path):
            f = _secret_finding(spec, path, st)
            if f is not None:
                out.append(f)
    return out + budget.truncated(spec)


def _is_secret(scan: SecretsReadable, path: str) -> bool:
    return any(matches(pattern, path) for pattern in scan.patterns)


def _secret_finding(spec: AuditSpec, path: str, st: os.stat_result) -> Finding | None:
    """Others first (the audit's severity); else a non-root group (one severity lower)."""
    mode = st.st_mode
    if mode & (stat.S_IROTH | stat.S_IWOTH):
        kind = "world_readable" if mode & stat.S_IROTH else "world_writable"
        how = _access(mode & stat.S_IROTH, mode & stat.S_IWOTH)
        return finding(spec, kind, path, f"secret {how} by others ({describe(st)})")
    if mode & (stat.S_IRGRP | stat.S_IWGRP) and st.st_gid != 0:
        kind = "group_readable" if mode & stat.S_IRGRP else "group_writable"
        how = _access(mode & stat.S_IRGRP, mode & stat.S_IWGRP)
        return finding(spec, kind, path, f"secret {how} by group {group_name(st.st_gid)} "
                       f"({describe(st)})", lower=True)
    return None


def _access(read: int, write: int) -> str:
    return "readable and writable" if read and write else "readable" if read else "writable"


def matches(pattern: str, path: str) -> bool:
    """A pattern with a / matches the whole path; one without, the last component."""
    return fnmatchcase(path if "/" in pattern else os.path.basename(path), pattern)


def walk(spec: AuditSpec, scan: TreeScan, budget: Budget,
         out: list[Finding]) -> Iterator[tuple[str, os.stat_result]]:
    """(path, lstat) of every entry under the roots but symlinks, roots included; appends
    ``unreadable`` findings to ``out``; stops when ``budget`` says so."""
    visited: set[tuple[int, int]] = set()
    for root in scan.paths:
        root = os.path.normpath(root)
        if _excluded(scan, root):
            continue
        try:
            st = os.stat(root)
        except FileNotFoundError:
            continue  # nothing there to be exposed
        except OSError as e:
            out.append(_unreadable(spec, root, e))
            continue
        if not budget.take():
            return
        yield root, st
        if stat.S_ISDIR(st.st_mode) and (st.st_dev, st.st_ino) not in visited:
            visited.add((st.st_dev, st.st_ino))
            yield from _tree(spec, scan, root, st.st_dev, budget, visited, out)
        if budget.stopped:
            return


def _tree(spec: AuditSpec, scan: TreeScan, root: str, device: int, budget: Budget,
          visited: set[tuple[int, int]], out: list[Finding]
          ) -> Iterator[tuple[str, os.stat_result]]:
    stack = [root]
    while stack:
        directory = stack.pop()
        try:
            with os.scandir(directory) as it:
                entries = sorted(it, key=lambda e: e.name)
        except FileNotFoundError:
            continue  # removed while we walked
        except OSError as e:
            out.append(_unreadable(spec, directory, e))
            continue
        subdirs = []
        for entry in entries:
            if _excluded(scan, entry.path):
                continue
            if not budget.take():
                return
            try:
                st = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            except OSError as e:
                out.append(_unreadable(spec, entry.path, e))
                continue
            if stat.S_ISLNK(st.st_mode):
                continue  # its mode means nothing; its target is audited where it lives
            yield entry.path, st
            if stat.S_ISDIR(st.st_mode) and st.st_dev == device \
                    and (st.st_dev, st.st_ino) not in visited:
                visited.add((st.st_dev, st.st_ino))
                subdirs.append(entry.path)
        stack.extend(reversed(subdirs))  # depth first, in name order


def _excluded(scan: TreeScan, path: str) -> bool:
    return any(matches(pattern, path) for pattern in scan.exclude)


def _unreadable(spec: AuditSpec, path: str, error: OSError) -> Finding:
    return finding(spec, "unreadable", path, f"cannot read: {error.strerror or error}; what "
                   "is under it was not audited", severity="info")


def describe(st: os.stat_result) -> str:
    """'mode 0666, owner alice:staff'."""
    return (f"mode {stat.S_IMODE(st.st_mode):04o}, owner {user_name(st.st_uid)}:"
            f"{group_name(st.st_gid)}")


@lru_cache(maxsize=1024)
def user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


@lru_cache(maxsize=1024)
def group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)
