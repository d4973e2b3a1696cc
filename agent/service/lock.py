"""One agent per state directory: an exclusive flock on ``STATE_DIR/agent.lock``.

The lock belongs to the open file, so it goes away with the process however it ends
(crash, SIGKILL, exec into a fresh agent): no stale lock files to clean up by hand.
"""

from __future__ import annotations

import fcntl
import os

from agent.errors import OpsAgentError

LOCK_NAME = "agent.lock"


class AlreadyRunning(OpsAgentError):
    """Another agent holds the state directory."""


class StateLock:
    def __init__(self, state_dir: str) -> None:
        self.path = os.path.join(state_dir, LOCK_NAME)
        self._fd: int | None = None

    def acquire(self) -> None:
        os.makedirs(os.path.dirname(self.path), mode=0o700, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise AlreadyRunning(f"another agent (pid {holder}) is running with state "
                                 f"directory {os.path.dirname(self.path)}") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def holder(state_dir: str) -> int | None:
    """The pid of the running agent of ``state_dir``, or None when none holds the lock."""
    path = os.path.join(state_dir, LOCK_NAME)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        text = os.pread(fd, 32, 0).decode(errors="replace").strip()
        return int(text) if text.isdigit() else 0
    finally:
        os.close(fd)
    return None
