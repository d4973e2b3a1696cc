"""`processes:` provider — programs found with psutil, started and stopped by the agent.

``observe`` lists the live processes that satisfy every criterion of ``match`` (never
zombies, the agent itself or its ancestors). ``diff`` asks for a start when nothing matches
and ``state: running``, or a stop when something matches and ``state: absent``. ``apply``
observes again before acting, starts through ``_spawn`` and waits (bounded) until a matching
process shows up, and stops with the policy's signal, then SIGKILL once its timeout passes.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass

import psutil

from agent.errors import InternalError, ProviderError, UnsafeOperation
from agent.playbook.models.processes import ProcessMatch, ProcessSpec
from agent.playbook.types import format_duration
from agent.providers import _budget, _spawn
from agent.providers.base import RESTART, Change, Outcome, ProviderContext

SCAN_ATTRS = ["pid", "name", "cmdline", "status", "create_time"]  # + username when matched on
_POLL_S = 0.03  # between looks for the started process: fast to notice, no busy loop
_SETTLE_S = 0.25  # a start counts once its process has lived this long
_CMD_MAX = 160
MAX_INLINE_BACKOFF_S = 30.0  # longer backoffs fail the run instead of blocking it


@dataclass(frozen=True, slots=True)
class ProcessInfo:
    """One matching process as observed."""

    pid: int
    name: str
    cmdline: tuple[str, ...]
    username: str | None
    create_time: float

    @property
    def command(self) -> str:
        text = " ".join(self.cmdline) or f"[{self.name}]"
        return text if len(text) <= _CMD_MAX else text[: _CMD_MAX - 1] + "…"


@dataclass(frozen=True, slots=True)
class ProcessObserved:
    """The processes matching a spec (by pid), and why a pidfile named none, if it did not."""

    processes: tuple[ProcessInfo, ...]
    pidfile_note: str | None = None

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.processes]


def supports(ctx: ProviderContext) -> str | None:
    return None


def observe(spec: ProcessSpec, ctx: ProviderContext) -> ProcessObserved:
    return _observed(scan(spec.match))


def diff(spec: ProcessSpec, observed: ProcessObserved) -> list[Change]:
    crit = criteria(spec.match)
    if spec.state == "running" and not observed.processes:
        return [Change("state", "stopped", "running",
                       f"no process matches {crit}{_note(observed)}")]
    if spec.state == "absent" and observed.processes:
        pids = ", ".join(map(str, observed.pids))
        verb = "matches" if len(observed.processes) == 1 else "match"
        return [Change("state", f"running (pid {pids})", "absent",
                       f"pid {pids} {verb} {crit} and state is absent")]
    return []


def describe(spec: ProcessSpec, observed: ProcessObserved) -> str:
    if observed.processes:
        return "running, " + "; ".join(f"pid {p.pid}: {p.command}" for p in observed.processes)
    wanted = ", as wanted (absent)" if spec.state == "absent" else ""
    return f"no process matches {criteria(spec.match)}{_note(observed)}{wanted}"


def apply(spec: ProcessSpec, changes: list[Change], ctx: ProviderContext) -> list[Outcome]:
    outcomes: list[Outcome] = []
    for change in changes:
        if change.field == "state" and change.after == "running":
            outcomes += _start(spec, ctx)
        elif change.field == "state" and change.after == "absent":
            crit = criteria(spec.match)
            outcomes += _stop(spec, ctx) or [
                Outcome("stop", True, f"nothing to stop: no process matches {crit}")]
        elif change.field == RESTART:
            outcomes += _restart(spec, ctx)
        else:
            raise InternalError(f"the processes provider cannot apply {change.field}="
                                f"{change.after!r}")
    return outcomes


def criteria(match: ProcessMatch) -> str:
    """The match as people read it: name=nginx, cmdline~'worker.py', user=www-data."""
    parts = []
    if match.name is not None:
        parts.append(f"name={match.name}")
    if match.cmdline is not None:
        parts.append(f"cmdline~{match.cmdline!r}")
    if match.user is not None:
        parts.append(f"user={match.user}")
    if match.pidfile is not None:
        parts.append(f"pidfile={match.pidfile}")
    return ", ".join(parts)


def _note(observed: ProcessObserved) -> str:
    return f" ({observed.pidfile_note})" if observed.pidfile_note else ""


# --- observing --------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Scan:
    found: list[tuple[psutil.Process, ProcessInfo]]
    pidfile_note: str | None


def _observed(found: Scan) -> ProcessObserved:
    return ProcessObserved(tuple(info for _, info in found.found), found.pidfile_note)


def protected_pids() -> set[int]:
    """Processes the agent must never match nor signal: init, itself and its ancestors."""
    global _protected_cache
    now = time.monotonic()
    pid, ppid = os.getpid(), os.getppid()
    cached = _protected_cache
    if cached is not None and cached[0] == (pid, ppid) and now - cached[1] < 1.0:
        return cached[2]
    me = psutil.Process()
    protected = {0, 1, me.pid} | {p.pid for p in me.parents()}
    _protected_cache = ((pid, ppid), now, protected)
    return protected


_protected_cache: tuple[tuple[int, int], float, set[int]] | None = None


def _owner(proc: psutil.Process) -> str:
    try:
        return proc.username()
    except psutil.Error:
        return "an unknown user"


def _read_pidfile(path: str) -> tuple[int | None, str | None]:
    """The pid in ``path``, or None and why (missing and garbage files are "no match")."""
    try:
        with open(path, "rb") as f:
            data = f.read(64)
    except FileNotFoundError:
        return None, f"pidfile {path} does not exist"
    except OSError as e:
        raise ProviderError(f"cannot read pidfile {path}: {e.strerror}") from e
    text = data.decode(errors="replace").strip()
    if not text.isdigit() or int(text) <= 0:
        return None, f"pidfile {path} holds no pid: {text[:20]!r}"
    return int(text), None


def scan(match: ProcessMatch) -> Scan:
    _spawn.reap_children()  # a dead child of ours must not look like a live process
    pidfile_pid, note = (None, None)
    if match.pidfile is not None:
        pidfile_pid, note = _read_pidfile(match.pidfile)
        if pidfile_pid is None:
            return Scan([], note)
    protected = protected_pids()
    found: list[tuple[psutil.Process, ProcessInfo]] = []
    pidfile_alive = False
    attrs = SCAN_ATTRS + ["username"] if match.user is not None else SCAN_ATTRS
    for proc in _candidates(pidfile_pid, attrs):
        info = proc.info
        if info["status"] in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD):
            continue
        if pidfile_pid is not None:
            if info["pid"] != pidfile_pid:
                continue
            pidfile_alive = True
        if info["pid"] in protected or not matches(match, info):
            continue
        found.append((proc, ProcessInfo(
            pid=info["pid"], name=info["name"] or "", cmdline=tuple(info["cmdline"] or ()),
            username=info.get("username"), create_time=info["create_time"] or 0.0)))
    if pidfile_pid is not None:
        if pidfile_pid in protected:
            note = f"pid {pidfile_pid} in {match.pidfile} is the agent or one of its parents"
        elif not pidfile_alive:
            note = f"pid {pidfile_pid} in {match.pidfile} is not running"
    return Scan(sorted(found, key=lambda f: f[1].pid), note)


def _candidates(pid: int | None, attrs: list[str]) -> list[psutil.Process]:
    """Every process, or only the pidfile's (one /proc lookup instead of a full scan)."""
    if pid is None:
        return list(psutil.process_iter(attrs))
    try:
        proc = psutil.Process(pid)
        proc.info = proc.as_dict(attrs)
    except psutil.Error:  # gone, or a zombie psutil cannot read: no match
        return []
    return [proc]


def matches(match: ProcessMatch, info: dict[str, object]) -> bool:
    if match.name is not None and info["name"] != match.name:
        return False
    if match.user is not None and info["username"] != match.user:
        return False
    if match.cmdline is not None:
        cmdline = info["cmdline"]
        joined = " ".join(cmdline) if isinstance(cmdline, list) else ""
        if match.cmdline not in joined:
            return False
    return True


# --- starting ---------------------------------------------------------------------------

def _start(spec: ProcessSpec, ctx: ProviderContext) -> list[Outcome]:
    now = scan(spec.match)  # never act on a stale observation
    if now.found:
        return [Outcome("start", True, f"not started: already {describe(spec, _observed(now))}")]
    if not spec.start:
        raise ProviderError("cannot start: no start argv is given")
    limit = min(MAX_INLINE_BACKOFF_S, (spec.timeout or 120.0) / 2)
    verdict = _budget.spend(ctx, f"processes:{spec.name}", spec.restart, limit)
    if not verdict.allowed:
        detail = f" ({verdict.detail})" if verdict.detail else ""
        raise ProviderError(f"{verdict.message}: not starting {spec.name}{detail}")
    creds = _spawn.resolve_credentials(spec.user, spec.group)
    env = _spawn.child_env(spec.env, creds)
    proc, log_offset = _spawn.spawn(spec.start, env=env, cwd=spec.cwd, creds=creds, log=spec.log)
    ctx.log.info("processes:%s: started pid %d: %s", spec.name, proc.pid, " ".join(spec.start))
    try:
        if spec.pidfile is not None:
            _spawn.write_pidfile(spec.pidfile, proc.pid)
        matched = _await_match(spec, proc, log_offset, ctx)
    except BaseException:
        _spawn.kill_child(proc)
        raise
    first = matched.found[0][1]
    if first.pid == proc.pid:
        return [Outcome("start", True, f"started pid {proc.pid}{verdict.note}: "
                        f"{first.command}")]
    now_text = describe(spec, _observed(matched))
    return [Outcome("start", True, f"started pid {proc.pid}{verdict.note}; now {now_text}")]


def _await_match(spec: ProcessSpec, proc: subprocess.Popen[bytes], log_offset: int,
                 ctx: ProviderContext) -> Scan:
    """Look until a matching process appears and stays past the settle time.

    A program that dies on bad config usually does so within its first moments, possibly
    after it showed up: waiting ``_SETTLE_S`` reports that as a failed start, not a start.
    """
    pid, t0 = proc.pid, ctx.monotonic()
    deadline, settled = t0 + spec.start_timeout, t0 + min(_SETTLE_S, spec.start_timeout)
    while True:
        code = proc.poll()
        # Exit code 0 may be a launcher that daemonized: keep looking for the daemon.
        if code is not None and code != 0:
            after = format_duration(round(ctx.monotonic() - t0, 1) or 0.1)
            raise ProviderError(f"started pid {pid}, which {_spawn.exit_text(code)} after "
                                f"{after}" + _spawn.log_tail(spec.log, log_offset))
        seen = scan(spec.match)
        now = ctx.monotonic()
        if seen.found and now >= settled:
            return seen
        if now >= deadline:
            within = f"no process matched {criteria(spec.match)} within " \
                     f"{format_duration(spec.start_timeout)}"
            if code is None:
                raise ProviderError(f"started pid {pid} but {within}; killed it")
            raise ProviderError(f"started pid {pid}, which {_spawn.exit_text(code)}, but "
                                f"{within}" + _spawn.log_tail(spec.log, log_offset))
        time.sleep(_POLL_S)


# --- stopping ---------------------------------------------------------------------------

def _restart(spec: ProcessSpec, ctx: ProviderContext) -> list[Outcome]:
    if spec.state == "absent":
        return [Outcome("restart", True, "not restarted: its state is absent")]
    stopped = _stop(spec, ctx)
    if not all(o.ok for o in stopped):
        return stopped
    try:
        return stopped + _start(spec, ctx)
    except ProviderError as e:
        if not stopped:
            raise
        raise ProviderError("; ".join(o.message for o in stopped) + f"; then {e}") from e


def _stop(spec: ProcessSpec, ctx: ProviderContext) -> list[Outcome]:
    """Signal every matching process, wait, SIGKILL survivors; [] when nothing matched."""
    found = scan(spec.match).found  # never act on a stale observation
    _refuse_unsafe([info for _, info in found])
    try:
        sig = signal.Signals["SIG" + spec.stop.signal]
    except KeyError:
        raise ProviderError(f"cannot stop: unknown signal {spec.stop.signal}") from None
    outcomes: list[Outcome] = []
    sent: list[tuple[psutil.Process, ProcessInfo]] = []
    for proc, info in found:
        if _send(proc, info, sig):
            sent.append((proc, info))
        else:
            outcomes.append(Outcome("stop", True, f"pid {info.pid} had already exited"))
    _, alive = psutil.wait_procs([p for p, _ in sent], timeout=spec.stop.timeout)
    alive_pids = {p.pid for p in alive}
    waited = format_duration(spec.stop.timeout)
    stubborn = []
    for proc, info in sent:
        if proc.pid not in alive_pids:
            outcomes.append(Outcome("stop", True, f"sent {sig.name} to pid {info.pid}; exited"))
        elif _send(proc, info, signal.SIGKILL):
            stubborn.append((proc, info))
    _, still = psutil.wait_procs([p for p, _ in stubborn], timeout=_spawn.KILL_WAIT)
    still_pids = {p.pid for p in still}
    for proc, info in stubborn:
        ignored = f"pid {info.pid} ignored {sig.name} for {waited}"
        if proc.pid in still_pids:
            outcomes.append(Outcome("stop", False, f"{ignored} and still runs "
                                    f"{format_duration(_spawn.KILL_WAIT)} after SIGKILL"))
        else:
            outcomes.append(Outcome("stop", True, f"{ignored}; sent SIGKILL"))
    _spawn.reap_children()
    for o in outcomes:
        ctx.log.info("processes:%s: %s", spec.name, o.message)
    return outcomes


def _refuse_unsafe(targets: list[ProcessInfo]) -> None:
    """The last guard before any signal (observe already leaves these processes out)."""
    protected = protected_pids()
    for info in targets:
        if info.pid in protected:
            raise UnsafeOperation(f"refusing to signal pid {info.pid}: it is init, the agent "
                                  "or one of its parents (narrow match:)")


def _send(proc: psutil.Process, info: ProcessInfo, sig: signal.Signals) -> bool:
    """Signal one process (its whole group if we started it); False if it is already gone."""
    try:
        child = _spawn.live_child(proc.pid)
        if child is not None and os.getpgid(proc.pid) == proc.pid != os.getpgrp():
            os.killpg(proc.pid, sig)  # its helpers go too
        else:
            proc.send_signal(sig)  # psutil checks the pid was not reused since observed
    except (psutil.NoSuchProcess, ProcessLookupError):
        return False
    except (psutil.AccessDenied, PermissionError) as e:
        raise ProviderError(f"permission denied signalling pid {info.pid} "
                            f"(owned by {_owner(proc)})") from e
    return True
