"""Unit files and drop-ins the agent owns under /etc/systemd/system, and a unit's journal.

Files are read without following symlinks: a masked unit is a symlink to /dev/null, and a
symlink found where the agent would write is refused, never written through. Writes are
atomic (a temporary file in the same directory, fsync, rename).
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import os
import stat
import subprocess
from dataclasses import dataclass
from typing import Literal

from agent.errors import ProviderError, UnsafeOperation
from agent.playbook.models.services import dropin_file_name

UNIT_DIR = "/etc/systemd/system"
_MAX_READ = 1 << 20  # a unit file past 1 MiB is not something we wrote
_JOURNAL_LINES = 20
_JOURNAL_TIMEOUT_S = 5.0


@dataclass(frozen=True, slots=True)
class FileView:
    """What is at a path: nothing, a regular file (its text), a symlink, or something else."""

    kind: Literal["missing", "file", "symlink", "other"]
    content: str | None = None
    target: str | None = None

    def summary(self) -> str | None:
        if self.kind == "file":
            digest = hashlib.sha256((self.content or "").encode()).hexdigest()[:12]
            return f"sha256:{digest}"
        if self.kind == "symlink":
            return f"symlink to {self.target}"
        return None if self.kind == "missing" else "not a regular file"


def unit_path(unit: str) -> str:
    return os.path.join(UNIT_DIR, unit)


def dropin_path(unit: str, name: str) -> str:
    return os.path.join(UNIT_DIR, unit + ".d", dropin_file_name(name))


def content_summary(content: str) -> str:
    return f"sha256:{hashlib.sha256(content.encode()).hexdigest()[:12]}"


def read_view(path: str) -> FileView:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return FileView("missing")
    except OSError as e:
        raise ProviderError(f"cannot inspect {path}: {e.strerror}") from e
    if stat.S_ISLNK(st.st_mode):
        return FileView("symlink", target=os.readlink(path))
    if not stat.S_ISREG(st.st_mode):
        return FileView("other")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        with os.fdopen(fd, "rb") as f:
            data = f.read(_MAX_READ + 1)
    except OSError as e:
        raise ProviderError(f"cannot read {path}: {e.strerror}") from e
    return FileView("file", content=data.decode(errors="replace"))


def text_diff(path: str, before: FileView, after: str) -> str:
    old = (before.content or "") if before.kind == "file" else ""
    return "".join(difflib.unified_diff(old.splitlines(keepends=True),
                                        after.splitlines(keepends=True),
                                        fromfile=path, tofile=path))


def write_unit_text(path: str, content: str) -> None:
    """Write ``content`` to ``path`` atomically, mode 0644; never through a symlink."""
    parent = os.path.dirname(path)
    try:
        os.makedirs(parent, mode=0o755, exist_ok=True)
        if os.path.islink(parent):
            raise UnsafeOperation(f"refusing to write into {parent}: it is a symlink")
        if os.path.islink(path) or (os.path.lexists(path) and not os.path.isfile(path)):
            raise UnsafeOperation(f"refusing to replace {path}: it is not a regular file "
                                  "(a masked unit is a symlink to /dev/null: set masked: false)")
        tmp = os.path.join(parent, f".{os.path.basename(path)}.opsagent-{os.getpid()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(content.encode())
                f.flush()
                os.fchmod(f.fileno(), 0o644)
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        dfd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError as e:
        raise ProviderError(f"cannot write {path}: {e.strerror or e}") from e


def remove_unit_text(path: str) -> bool:
    """Remove a drop-in the playbook retired; False when it was already gone."""
    try:
        if os.path.islink(path) or (os.path.lexists(path) and not os.path.isfile(path)):
            raise UnsafeOperation(f"refusing to remove {path}: it is not a regular file")
        os.unlink(path)
    except FileNotFoundError:
        return False
    except OSError as e:
        raise ProviderError(f"cannot remove {path}: {e.strerror}") from e
    return True


def read_journal(unit: str, lines: int = _JOURNAL_LINES) -> list[str]:
    """The unit's last journal lines (journalctl reads the journal; control stays on D-Bus).

    ``--sync`` first: journald files what a unit that just died wrote, so its last words
    are in the report rather than in the next one.
    """
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        subprocess.run(["journalctl", "--sync"], capture_output=True, timeout=2.0, check=False)
    try:
        p = subprocess.run(["journalctl", "-u", unit, "-n", str(lines), "--no-pager", "-o", "cat"],
                           capture_output=True, text=True, errors="replace",
                           timeout=_JOURNAL_TIMEOUT_S, check=False)
    except FileNotFoundError:
        return ["(journalctl is not installed)"]
    except subprocess.TimeoutExpired:
        return [f"(journalctl did not answer within {_JOURNAL_TIMEOUT_S:g}s)"]
    out = [line for line in p.stdout.splitlines() if line.strip()]
    if p.returncode != 0 and not out:
        return [f"(journalctl failed: {p.stderr.strip()[:200]})"]
    return out or ["(no journal entries)"]
