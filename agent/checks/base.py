"""What a probe returns, and how a check's result is graded.

A probe (one module per family: ``http``, ``net``, ``postgres``, ``redis``, ``system``,
``units``) is a plain function ``probe(spec, timeout) -> Outcome``: it observes, never
changes anything, and raises nothing for a failed dependency (that is an unhealthy outcome).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Health = Literal["healthy", "degraded", "unhealthy"]
HEALTH_RANK: dict[str, int] = {"healthy": 0, "degraded": 1, "unhealthy": 2}


@dataclass
class Outcome:
    """One probe's observation.

    ``values`` are the probe's own figures, published as metrics ``check.NAME.<key>``
    (e.g. ``days_left``, ``connections_percent``, ``used_percent``, ``count``) for thresholds.
    """

    status: Health
    message: str
    latency_ms: float | None = None
    values: dict[str, float] = field(default_factory=dict)


def worst(*states: Health) -> Health:
    return max(states, key=lambda s: HEALTH_RANK[s], default="healthy")
