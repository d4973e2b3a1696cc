"""``check:``: a health probe (any of a playbook's check probes) that must pass, retried.

It changes nothing, so it runs under --check too: a dry run shows what holds now.
"""

from __future__ import annotations

import time

from agent.fleet.models import CheckStep
from agent.fleet.steps.base import StepContext, StepResult


def run(spec: CheckStep, ctx: StepContext) -> StepResult:
    from agent.checks import run_check
    from agent.playbook.models.checks import CheckSpec

    probe = spec.probe
    check = CheckSpec.model_validate({"name": "runbook-step", probe: getattr(spec, probe)})
    tries = spec.retries + 1
    for attempt in range(1, tries + 1):
        outcome = run_check(check)
        if outcome.status != "unhealthy":
            again = f" (try {attempt} of {tries})" if attempt > 1 else ""
            return StepResult("ok", f"{probe}: {outcome.message}{again}")
        if attempt < tries and time.monotonic() + spec.delay < ctx.deadline:
            time.sleep(spec.delay)
        else:
            break
    return StepResult("failed", f"{probe}: {outcome.message} (after {attempt} "
                      f"tr{'y' if attempt == 1 else 'ies'})")
