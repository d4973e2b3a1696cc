"""The provider seam: what every resource kind implements, and what the engine hands it.

A provider is a module with these functions (see ``Provider``):

    supports(ctx) -> str | None             a reason when the kind cannot work here (skipped)
    observe(spec, ctx) -> Observed          read the host; no side effects
    diff(spec, observed) -> list[Change]    pure: what differs from the spec; [] = converged
    describe(spec, observed) -> str         why nothing needs to change ("running, pid 42")
    apply(spec, changes, ctx) -> list[Outcome]   the only function that changes the host

Dry run lives in the engine: providers never see --check. A notified handler arrives at
``apply`` as a ``Change(field="restart")``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

RESTART = "restart"


@dataclass(frozen=True, slots=True)
class Change:
    """One difference between desired and observed state: the plan, the report, apply's input."""

    field: str
    before: Any
    after: Any
    reason: str
    diff: str | None = None  # unified diff of text content, shown by --diff, never reported


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one step of apply did."""

    action: str
    ok: bool
    message: str


@dataclass
class ProviderContext:
    """Engine services handed to providers: no globals."""

    host: str
    variables: Mapping[str, Any]
    base_dir: str
    state_dir: str
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("opsagent"))
    clock: Callable[[], float] = time.time
    monotonic: Callable[[], float] = time.monotonic
    # True when no operator asked for this run (the agent service, apply --unattended):
    # starts and restarts then spend the resource's restart budget.
    automatic: bool = False
    # Clients shared by the resources of one run (a Docker client, a D-Bus connection),
    # created by the provider that needs them on first use.
    cache: dict[str, Any] = field(default_factory=dict)


class Provider(Protocol):
    def supports(self, ctx: ProviderContext) -> str | None: ...

    def observe(self, spec: Any, ctx: ProviderContext) -> Any: ...

    def diff(self, spec: Any, observed: Any) -> list[Change]: ...

    def describe(self, spec: Any, observed: Any) -> str: ...

    def apply(self, spec: Any, changes: list[Change], ctx: ProviderContext) -> list[Outcome]: ...
