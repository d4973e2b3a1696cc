"""Health checks: run one check's probe and grade its result.

``run_check`` is the one entry point (the service's scheduler and ``opsagent check`` call it
from worker threads). It imports the probe's module on first use, so loading a playbook
(``opsagent validate``) never pays for psycopg, redis, docker or cryptography; it turns any
exception a probe lets escape into an unhealthy outcome, so one broken check never stops the
others; then applies what the check itself declares: latency bands and ``optional``.
"""

from __future__ import annotations

import importlib
import re
import time
from collections.abc import Callable
from typing import Any, cast

from agent.checks.base import Health, Outcome, worst
from agent.playbook.models.checks import CheckSpec

DEFAULT_TIMEOUT_S = 10.0  # for probes whose spec has no timeout (container, service, ...)
MESSAGE_MAX = 300  # characters of a one-line message

# probe name -> module under agent/checks/ holding ``probe_<name>(spec, timeout)``
_MODULES = {"http": "http", "tcp": "net", "tls": "net", "postgres": "postgres",
            "redis": "redis", "disk": "system", "memory": "system", "swap": "system",
            "cpu": "system", "load": "system", "process": "system", "container": "units",
            "service": "units", "command": "units"}

ProbeFunction = Callable[[Any, float], Outcome]


def run_check(spec: CheckSpec) -> Outcome:
    """Run the check's probe once and grade it; never raises for a failing probe."""
    kind = spec.probe
    probe_spec = getattr(spec, kind)
    timeout = float(getattr(probe_spec, "timeout", DEFAULT_TIMEOUT_S))
    start = time.monotonic()
    try:
        probe = probe_function(kind)
        start = time.monotonic()  # a module imported on first use is not the target's latency
        outcome = probe(probe_spec, timeout)
    except Exception as e:  # a probe bug or an error it did not expect: this check only
        outcome = Outcome("unhealthy", one_line(f"{kind} probe failed: {type(e).__name__}: {e}"))
    if outcome.latency_ms is None:
        outcome.latency_ms = elapsed_ms(start)
    return grade(spec, outcome)


def probe_function(kind: str) -> ProbeFunction:
    """``agent.checks.<module>.probe_<kind>``, its module imported on first use."""
    module = importlib.import_module(f"agent.checks.{_MODULES[kind]}")
    return cast(ProbeFunction, getattr(module, f"probe_{kind}"))


def grade(spec: CheckSpec, outcome: Outcome) -> Outcome:
    """Apply the check's latency bands and ``optional``; add the ``ok``/``latency_ms`` values."""
    status: Health = outcome.status
    message = outcome.message
    latency = outcome.latency_ms
    band = _latency_band(spec, latency)
    if band is not None and worst(status, band[0]) != status:
        status, message = band[0], f"{message}; {band[1]}"
    if spec.optional and status == "unhealthy":
        status, message = "degraded", f"{message} (optional: counted as degraded)"
    values = dict(outcome.values)
    values["ok"] = 0.0 if status == "unhealthy" else 1.0
    if latency is not None:
        values["latency_ms"] = latency
    return Outcome(status, one_line(message), latency, values)


def _latency_band(spec: CheckSpec, latency: float | None) -> tuple[Health, str] | None:
    """The state a slow answer earns (and why), or None when it is fast enough."""
    if latency is None:
        return None
    if spec.unhealthy_ms is not None and latency >= spec.unhealthy_ms:
        return "unhealthy", f"took {latency:.0f} ms (unhealthy_ms {spec.unhealthy_ms:g})"
    if spec.degraded_ms is not None and latency >= spec.degraded_ms:
        return "degraded", f"took {latency:.0f} ms (degraded_ms {spec.degraded_ms:g})"
    return None


def elapsed_ms(start: float) -> float:
    """Milliseconds since ``start`` (a time.monotonic() reading), rounded to 0.01 ms."""
    return round((time.monotonic() - start) * 1000.0, 2)


_SPACE = re.compile(r"\s+")


def one_line(text: str, limit: int = MESSAGE_MAX) -> str:
    """Whitespace (newlines included) collapsed, cut at ``limit`` characters: messages end up
    in logs, reports and notifications, where a multi-line error breaks the layout."""
    flat = _SPACE.sub(" ", text).strip()
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"
