"""Host probes: ``disk``, ``memory``, ``swap``, ``cpu``, ``load`` and ``process``.

All of them read the kernel's counters (statvfs, /proc through psutil) and never block:
``cpu`` is the system-wide use since the previous reading in this process (psutil keeps it),
and a process's CPU share is measured between two looks of this probe (the first look
reports its average since it started). Every limit is "unhealthy above".
"""

from __future__ import annotations

import os
import threading
import time

import psutil

from agent.checks.base import Outcome
from agent.playbook.models.checks import DiskProbe, LoadProbe, PercentProbe, ProcessProbe
from agent.playbook.models.processes import ProcessMatch

_GIB = float(1 << 30)


def probe_disk(spec: DiskProbe, timeout: float) -> Outcome:
    try:
        st = os.statvfs(spec.path)
    except OSError as e:
        return Outcome("unhealthy", f"{spec.path}: {e.strerror}")
    used = (st.f_blocks - st.f_bfree) * st.f_frsize
    free = st.f_bavail * st.f_frsize  # what a non-root writer can still use, as df says
    used_percent = round(100.0 * used / (used + free), 2) if used + free else 0.0
    inodes_used = st.f_files - st.f_ffree
    inodes_percent = round(100.0 * inodes_used / st.f_files, 2) if st.f_files else 0.0
    values = {"used_percent": used_percent, "inodes_percent": inodes_percent,
              "free_bytes": float(free)}
    text = f"{spec.path}: {used_percent:.1f}% used, {free / _GIB:.2f} GiB free, " \
           f"inodes {inodes_percent:.1f}% used"
    problems = []
    if used_percent > spec.max_used_percent:
        problems.append(f"above max_used_percent {spec.max_used_percent:g}")
    if spec.max_inodes_percent is not None and inodes_percent > spec.max_inodes_percent:
        problems.append(f"inodes above max_inodes_percent {spec.max_inodes_percent:g}")
    return _limit(text, problems, values)


def probe_memory(spec: PercentProbe, timeout: float) -> Outcome:
    mem = psutil.virtual_memory()
    return _percent("memory", mem.percent, spec, {"available_bytes": float(mem.available)})


def probe_swap(spec: PercentProbe, timeout: float) -> Outcome:
    swap = psutil.swap_memory()
    if swap.total == 0:
        return Outcome("healthy", "no swap configured", None, {"used_percent": 0.0})
    return _percent("swap", swap.percent, spec, {"used_bytes": float(swap.used)})


def probe_cpu(spec: PercentProbe, timeout: float) -> Outcome:
    return _percent("cpu", psutil.cpu_percent(interval=None), spec, {})


def probe_load(spec: LoadProbe, timeout: float) -> Outcome:
    load1 = os.getloadavg()[0]
    cores = psutil.cpu_count() or 1
    per_core = round(load1 / cores, 3)
    values = {"per_core": per_core, "load1": load1}
    text = f"load {load1:.2f} on {cores} cores ({per_core:.2f} per core)"
    problems = [f"above max_per_core {spec.max_per_core:g}"] if per_core > spec.max_per_core \
        else []
    return _limit(text, problems, values)


def probe_process(spec: ProcessProbe, timeout: float) -> Outcome:
    from agent.providers.processes import criteria

    count, rss, cpu = 0, 0, 0.0
    for proc in matching_processes(spec.match):
        try:  # no oneshot(): snapshot objects are shared by checks on other threads
            rss += proc.memory_info().rss
            cpu += _cpu_percent(proc, spec.match)
            count += 1
        except psutil.Error:  # ended between the scan and this look
            continue
    values = {"count": float(count), "rss_bytes": float(rss), "cpu_percent": round(cpu, 2)}
    text = f"{count} process{'es' if count != 1 else ''} match {criteria(spec.match)}"
    if count:
        text += f" (rss {rss / (1 << 20):.1f} MiB, cpu {cpu:.1f}%)"
    problems = []
    if count < spec.min_count:
        problems.append(f"expected at least {spec.min_count}")
    if spec.max_rss is not None and rss > spec.max_rss:
        problems.append(f"rss above max_rss {spec.max_rss / (1 << 20):.1f} MiB")
    if spec.max_cpu_percent is not None and cpu > spec.max_cpu_percent:
        problems.append(f"cpu above max_cpu_percent {spec.max_cpu_percent:g}")
    return _limit(text, problems, values)


# --- which processes match ---------------------------------------------------------------

_SNAPSHOT_TTL_S = 1.0
_snapshots: dict[bool, tuple[float, list[psutil.Process]]] = {}  # with usernames? -> (at, procs)
_snapshot_lock = threading.Lock()


def matching_processes(match: ProcessMatch) -> list[psutil.Process]:
    """The live processes ``match`` selects, by the processes provider's own rules.

    A pidfile names one process (one /proc lookup: the provider's ``scan``). Otherwise
    the whole process table is read once per ``_SNAPSHOT_TTL_S`` and shared by every process
    check: a full scan costs ~10 ms of CPU on a quiet host, too much to repeat for each of
    dozens of checks due in the same second.
    """
    from agent.providers import processes

    if match.pidfile is not None:
        return [proc for proc, _ in processes.scan(match).found]
    protected = processes.protected_pids()
    return [proc for proc in _snapshot(match.user is not None)
            if proc.info["pid"] not in protected
            and proc.info["status"] not in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD)
            and processes.matches(match, proc.info)]


def _snapshot(with_users: bool) -> list[psutil.Process]:
    from agent.providers import _spawn, processes

    with _snapshot_lock:  # one scan at a time; checks waiting for it then share it
        now = time.monotonic()
        cached = _snapshots.get(with_users)
        if cached is not None and now - cached[0] < _SNAPSHOT_TTL_S:
            return cached[1]
        _spawn.reap_children()  # a dead child of ours must not look like a live process
        attrs = processes.SCAN_ATTRS + ["username"] if with_users else processes.SCAN_ATTRS
        procs = list(psutil.process_iter(attrs))
        _snapshots[with_users] = (now, procs)
        return procs


def _percent(what: str, percent: float, spec: PercentProbe,
             extra: dict[str, float]) -> Outcome:
    values = {"used_percent": float(percent), **extra}
    problems = [f"above max_percent {spec.max_percent:g}"] if percent > spec.max_percent else []
    return _limit(f"{what} {percent:.1f}% used", problems, values)


def _limit(text: str, problems: list[str], values: dict[str, float]) -> Outcome:
    if problems:
        return Outcome("unhealthy", f"{text}: {'; '.join(problems)}", None, values)
    return Outcome("healthy", text, None, values)


# --- a process's CPU share between two looks ---------------------------------------------

# (match, pid, start time) -> (cpu seconds, monotonic time) at the last look
_CPU_SEEN: dict[tuple[ProcessMatch, int, float], tuple[float, float]] = {}
_CPU_LOCK = threading.Lock()
_CPU_SEEN_MAX = 8192  # forget everything past this (processes that ended are never pruned)


def _cpu_percent(proc: psutil.Process, match: ProcessMatch) -> float:
    """Percent of one core used since a check with this match last looked at the process
    (keyed by match so two checks on one process do not shorten each other's window; psutil's
    own per-object state is not used because the scan may hand out fresh objects)."""
    times = proc.cpu_times()
    used = times.user + times.system
    now = time.monotonic()
    key = (match, proc.pid, proc.create_time())
    with _CPU_LOCK:
        before = _CPU_SEEN.get(key)
        if len(_CPU_SEEN) >= _CPU_SEEN_MAX:
            _CPU_SEEN.clear()
        _CPU_SEEN[key] = (used, now)
    if before is not None and now > before[1]:
        return max(0.0, 100.0 * (used - before[0]) / (now - before[1]))
    lived = time.time() - key[2]
    return 100.0 * used / lived if lived > 0 else 0.0
