"""Host metrics thresholds can name (``disk.used_percent``, ``memory.used_percent``, …),
sampled when a rule asks, and the metrics a check's results publish (``check.NAME.KEY``)."""

from __future__ import annotations

import os
from collections.abc import Callable

from agent.checks.base import HEALTH_RANK, Outcome


def _disk(key: str) -> Callable[[str | None], float]:
    def sample(path: str | None) -> float:
        st = os.statvfs(path or "/")
        if key == "inodes":
            return 100.0 * (st.f_files - st.f_ffree) / st.f_files if st.f_files else 0.0
        used = (st.f_blocks - st.f_bfree) * st.f_frsize
        usable = used + st.f_bavail * st.f_frsize  # what df shows: root's reserve excluded
        return 100.0 * used / usable if usable else 0.0
    return sample


def _memory(_path: str | None) -> float:
    import psutil

    return float(psutil.virtual_memory().percent)


def _swap(_path: str | None) -> float:
    import psutil

    return float(psutil.swap_memory().percent)


def _cpu(_path: str | None) -> float:
    import psutil

    return float(psutil.cpu_percent(interval=None))  # since the previous call: no sleeping


def _load(per_core: bool) -> Callable[[str | None], float]:
    def sample(_path: str | None) -> float:
        one = os.getloadavg()[0]
        return one / (os.cpu_count() or 1) if per_core else one
    return sample


SAMPLERS: dict[str, Callable[[str | None], float]] = {
    "disk.used_percent": _disk("blocks"),
    "disk.inodes_percent": _disk("inodes"),
    "memory.used_percent": _memory,
    "swap.used_percent": _swap,
    "cpu.percent": _cpu,
    "load.per_core": _load(True),
    "load.1": _load(False),
}


# Metrics the agent service computes itself, by prefix (``watch.`` — log metrics).
PROVIDERS: dict[str, Callable[[str], float | None]] = {}


def sample(metric: str, path: str | None = None) -> float | None:
    """The metric's value now; None when it cannot be read (e.g. a path not mounted)."""
    for prefix, provide in PROVIDERS.items():
        if metric.startswith(prefix):
            return provide(metric)
    try:
        return SAMPLERS[metric](path)
    except (OSError, KeyError, ZeroDivisionError):
        return None


def of_check(name: str, outcome: Outcome) -> dict[str, float]:
    """``check.NAME.ok``, ``.latency_ms``, ``.status`` (0 healthy, 1 degraded, 2 unhealthy)
    and every figure the probe reported."""
    values = {f"check.{name}.{k}": float(v) for k, v in outcome.values.items()}
    values[f"check.{name}.ok"] = 0.0 if outcome.status == "unhealthy" else 1.0
    values[f"check.{name}.status"] = float(HEALTH_RANK[outcome.status])
    if outcome.latency_ms is not None:
        values[f"check.{name}.latency_ms"] = float(outcome.latency_ms)
    return values
