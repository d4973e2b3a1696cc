"""Starting a program for the processes provider, and keeping track of what was started.

A started program gets a minimal, known environment (never the agent's own), its own session
(so a terminal or the agent's signals never reach it and it can be stopped as a group), the
credentials it asked for with the user's own groups (never root's), and stdout/stderr appended
to its log. Every child is kept in a registry and reaped, so a dead child never lingers as a
zombie that looks like a live process.
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import signal
import subprocess
import tempfile
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from agent.errors import ProviderError

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
KILL_WAIT = 5.0  # bound on waiting for a SIGKILLed child to be reaped
_TAIL_LINES = 10
_TAIL_BYTES = 4096

_LOCK = threading.Lock()
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


def reap_children() -> None:
    """Collect the exit status of every child that ended, so none stays a zombie."""
    with _LOCK:
        for pid, proc in list(_CHILDREN.items()):
            if proc.poll() is not None:
                del _CHILDREN[pid]


def live_child(pid: int) -> subprocess.Popen[bytes] | None:
    """The Popen of ``pid`` if it is a child we started and have not reaped yet.

    While a child is unreaped its pid (and so its process group id) cannot be reused, which
    is what makes signalling its group safe.
    """
    with _LOCK:
        proc = _CHILDREN.get(pid)
    if proc is None or proc.poll() is not None:
        return None
    return proc


@dataclass(frozen=True, slots=True)
class Credentials:
    """Who the child runs as; None fields mean "as the agent"."""

    uid: int | None = None
    gid: int | None = None
    extra_groups: tuple[int, ...] | None = None
    env: Mapping[str, str] = field(default_factory=dict)


def resolve_credentials(user: str | None, group: str | None) -> Credentials:
    """Look the user and group up; only root may switch to anyone other than itself."""
    pw = None
    if user is not None:
        try:
            pw = pwd.getpwnam(user)
        except KeyError:
            raise ProviderError(f"cannot start as user {user}: no such user") from None
    gid = pw.pw_gid if pw is not None else None
    if group is not None:
        try:
            gid = grp.getgrnam(group).gr_gid
        except KeyError:
            raise ProviderError(f"cannot start with group {group}: no such group") from None
    env = {"HOME": pw.pw_dir, "USER": pw.pw_name, "LOGNAME": pw.pw_name} if pw else {}
    euid = os.geteuid()
    if euid != 0:
        if pw is not None and pw.pw_uid != euid:
            raise ProviderError(
                f"starting as user {user} needs root (the agent runs as uid {euid})")
        if group is not None and gid != os.getegid():
            raise ProviderError(
                f"starting with group {group} needs root (the agent runs as uid {euid})")
        return Credentials(env=env)  # already who was asked for: nothing to switch
    if pw is None:
        return Credentials(gid=gid)
    assert gid is not None
    # Without extra_groups the child would keep root's supplementary groups.
    return Credentials(uid=pw.pw_uid, gid=gid,
                       extra_groups=tuple(os.getgrouplist(pw.pw_name, gid)), env=env)


def child_env(extra: Mapping[str, str] | None, creds: Credentials) -> dict[str, str]:
    """A known minimal environment: the agent's own (tokens, proxies) never leaks into it."""
    env = {"PATH": DEFAULT_PATH, "LANG": os.environ.get("LANG") or "C.UTF-8"}
    env.update(creds.env)
    env.update(extra or {})
    return env


def spawn(argv: Sequence[str], *, env: Mapping[str, str], cwd: str | None,
          creds: Credentials, log: str | None) -> tuple[subprocess.Popen[bytes], int]:
    """Start ``argv`` (no shell) in a new session; returns the child and the log's size before."""
    out: int = subprocess.DEVNULL
    offset = 0
    if log is not None:
        try:
            out = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o640)
        except OSError as e:
            raise ProviderError(f"cannot open log file {log}: {e.strerror}") from e
        offset = os.fstat(out).st_size
    try:
        proc = subprocess.Popen(
            list(argv), stdin=subprocess.DEVNULL, stdout=out,
            stderr=subprocess.STDOUT if log is not None else subprocess.DEVNULL,
            env=dict(env), cwd=cwd, user=creds.uid, group=creds.gid,
            extra_groups=list(creds.extra_groups) if creds.extra_groups is not None else None,
            start_new_session=True, close_fds=True)
    except OSError as e:
        raise ProviderError(_spawn_error(argv, cwd, env, e)) from e
    except subprocess.SubprocessError as e:  # e.g. setgroups/setuid failed in the child
        raise ProviderError(f"cannot start {argv[0]}: {e}") from e
    finally:
        if log is not None:
            os.close(out)
    with _LOCK:
        _CHILDREN[proc.pid] = proc
    return proc, offset


def _spawn_error(argv: Sequence[str], cwd: str | None, env: Mapping[str, str],
                 e: OSError) -> str:
    if cwd is not None and e.filename == cwd:
        if isinstance(e, FileNotFoundError):
            return f"cannot start {argv[0]}: working directory {cwd} does not exist"
        return f"cannot start {argv[0]}: working directory {cwd}: {e.strerror}"
    if isinstance(e, FileNotFoundError):
        where = "" if "/" in argv[0] else f" in PATH {env.get('PATH', '')}"
        return f"cannot start: executable {argv[0]} not found{where}"
    if isinstance(e, PermissionError):
        return f"cannot start: {argv[0]} is not executable (permission denied)"
    return f"cannot start {argv[0]}: {e.strerror or e}"


def kill_child(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL a child we started, with its process group, and reap it (bounded)."""
    if proc.poll() is None:  # unreaped: its pid is still its group's id, safe to signal
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=KILL_WAIT)
    reap_children()


def write_pidfile(path: str, pid: int) -> None:
    """Write ``pid`` to ``path`` atomically: readers see the old file or the new, never half."""
    directory = os.path.dirname(os.path.abspath(path))
    try:
        fd, tmp = tempfile.mkstemp(prefix=".opsagent-", suffix=".pid", dir=directory)
    except OSError as e:
        raise ProviderError(f"cannot write pidfile {path}: {e.strerror}") from e
    try:
        with os.fdopen(fd, "w") as f:
            f.write(f"{pid}\n")
            os.fchmod(f.fileno(), 0o644)
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise ProviderError(f"cannot write pidfile {path}: {e.strerror}") from e


def exit_text(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"was killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"was killed by signal {-returncode}"
    return f"exited with code {returncode}"


def log_tail(log: str | None, offset: int) -> str:
    """The last lines the child wrote to its log (only this start's), for error messages."""
    if log is None:
        return " (its output was discarded: set log: to keep it)"
    try:
        with open(log, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            f.seek(max(offset, size - _TAIL_BYTES))
            data = f.read(_TAIL_BYTES)
    except OSError as e:
        return f" (cannot read log {log}: {e.strerror})"
    lines = [line.strip() for line in data.decode(errors="replace").splitlines() if line.strip()]
    if not lines:
        return f" (log {log}: no output)"
    return f"; last lines of {log}: " + " | ".join(lines[-_TAIL_LINES:])
