"""``run:``: a command as an argv list (never a shell string), with a timeout; its ``undo``
argv runs on rollback. A command declared ``changes: false`` is a probe: it runs under
--check too."""

from __future__ import annotations

from typing import Any

from agent.fleet.models import RunStep
from agent.fleet.steps.base import StepContext, StepResult


def _exec(argv: list[str], timeout: float) -> StepResult:
    from agent.actions.run import run as run_argv

    out = run_argv(argv, {}, timeout)  # the argv is already rendered: no templates left
    tail = out.output.strip().splitlines()[-1:] if out.output.strip() else []
    shown = f": {tail[0][:200]}" if tail else ""
    evidence = {"argv": out.argv, "output": out.output} if out.output else None
    if out.returncode is None:
        return StepResult("failed", f"{argv[0]} timed out after {timeout:g}s{shown}",
                          evidence=evidence)
    if out.returncode != 0:
        return StepResult("failed", f"{argv[0]} exited {out.returncode}{shown}",
                          evidence=evidence)
    return StepResult("changed", f"{argv[0]} exited 0{shown}", evidence=evidence)


def run(spec: RunStep, ctx: StepContext) -> StepResult:
    from shlex import join

    if ctx.check and spec.changes:
        return StepResult("would-change", f"would run {join(spec.argv)}")
    result = _exec(spec.argv, ctx.remaining(spec.timeout))
    if not spec.changes and result.status == "changed":
        result.status = "ok"
    elif spec.undo and result.status == "changed":
        result.undo = {"argv": spec.undo, "timeout": spec.timeout}
    return result


def undo(record: dict[str, Any], ctx: StepContext) -> StepResult:
    return _exec([str(a) for a in record["argv"]], ctx.remaining(float(record["timeout"])))
