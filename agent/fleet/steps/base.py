"""What every runbook step executor gets and gives back.

A step executor is a module of this package with two functions:

    def run(spec: <its StepSpec body>, ctx: StepContext) -> StepResult
    def undo(record: dict[str, Any], ctx: StepContext) -> StepResult   # only if it can undo

``run`` acts on the local host; under ``ctx.check`` it changes nothing and says what it would
do (status ``would-change``, or ``ok`` when nothing would change). A result that changed the
host and can be taken back carries ``undo``: plain JSON data that the same module's ``undo``
reads later, possibly in another process (a fleet run's later segment). Executors never raise
for a failure of the host: a failure is a result with status ``failed``; they raise only for
a bug. Evidence (logs, sockets, processes) goes in ``evidence``, bounded in size.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

Status = Literal["ok", "changed", "failed", "skipped", "would-change", "rolled-back"]
EVIDENCE_CAP = 256 * 1024  # bytes of evidence text per step, at most


@dataclass
class StepContext:
    host: str                      # the inventory name of the host it runs on
    state_dir: str                 # the agent's state dir on this host
    check: bool = False            # --check: change nothing, say what would change
    incident: str = ""             # the incident id the run is recorded under
    who: str = ""                  # the operator, user@controller
    deadline: float = float("inf")  # time.monotonic() by which the step must be done
    config: Any = None             # agent.service.config.AgentConfig of this host
    notifiers: Mapping[str, Any] = field(default_factory=dict)  # the runbook's, by name

    def remaining(self, default: float) -> float:
        """Seconds left for a wait or a subprocess: default, cut to the step's deadline."""
        return max(0.1, min(default, self.deadline - time.monotonic()))


@dataclass
class StepResult:
    status: Status
    message: str
    undo: dict[str, Any] | None = None
    evidence: dict[str, Any] | None = None

    @property
    def failed(self) -> bool:
        return self.status == "failed"
