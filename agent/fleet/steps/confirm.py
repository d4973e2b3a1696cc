"""``confirm:``: a point where the controller asks the operator before going on; on a host
it does nothing (the controller splits the run there), so it always succeeds."""

from __future__ import annotations

from agent.fleet.steps.base import StepContext, StepResult


def run(spec: str, ctx: StepContext) -> StepResult:
    return StepResult("ok", f"confirmed: {spec}")
