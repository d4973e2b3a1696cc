"""A bound runbook's steps on the local host: each step under its timeout, on_failure applied,
and the host's completed steps undone in reverse order under ``on_failure: rollback``.

The same code runs ``opsagent remediate RUNBOOK`` on this host and, over SSH, the part of a
fleet run between two confirm points (agent.fleet.remote). ``undo_log`` carries what the
earlier parts did, so a rollback reaches back across confirm points.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import importlib
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from agent.fleet.models import OnFailure, StepSpec
from agent.fleet.steps.base import StepContext, StepResult

DEFAULT_STEP_TIMEOUT_S = 300.0
# action -> (module, run function); a module with an ``undo`` function can take its step back
_EXECUTORS = {"unblock_ip": ("block_ip", "run_unblock")}


def executor(action: str) -> Callable[[Any, StepContext], StepResult]:
    module, func = _EXECUTORS.get(action, (action, "run"))
    fn: Callable[[Any, StepContext], StepResult] = getattr(
        importlib.import_module(f"agent.fleet.steps.{module}"), func)
    return fn


def undoer(action: str) -> Callable[[dict[str, Any], StepContext], StepResult] | None:
    module = _EXECUTORS.get(action, (action, "run"))[0]
    fn: Callable[[dict[str, Any], StepContext], StepResult] | None = getattr(
        importlib.import_module(f"agent.fleet.steps.{module}"), "undo", None)
    return fn


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class HostRun:
    """What the steps did on one host: outcomes (the incident record's shape), the undo log
    carried to later parts, and whether the host stopped (a step failed under stop or
    rollback)."""

    outcomes: list[dict[str, Any]] = field(default_factory=list)
    undo_log: list[dict[str, Any]] = field(default_factory=list)
    stopped: bool = False
    failed: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"outcomes": self.outcomes, "undo_log": self.undo_log, "stopped": self.stopped,
                "failed": self.failed}


def _outcome(i: int, step: StepSpec, result: StepResult, started: str, took: float
             ) -> dict[str, Any]:
    return {"step": i, "name": step.title, "action": step.action, "status": result.status,
            "message": result.message, "started_at": started, "duration_s": round(took, 3),
            "evidence": result.evidence}


def run_steps(steps: list[StepSpec], indices: Iterable[int], base: StepContext,
              on_failure: OnFailure, undo_log: list[dict[str, Any]] | None = None,
              on_outcome: Callable[[dict[str, Any]], None] | None = None) -> HostRun:
    """Run steps[i] for i in indices, in order, on this host."""
    run = HostRun(undo_log=list(undo_log or []))
    for i in indices:
        step = steps[i]
        if step.confirm is not None:
            continue  # the controller asked before sending this part
        limit = step.timeout or DEFAULT_STEP_TIMEOUT_S
        ctx = dataclasses.replace(base, deadline=time.monotonic() + limit)
        started, t0 = now_iso(), time.monotonic()
        try:
            result = executor(step.action)(getattr(step, step.action), ctx)
        except Exception as e:  # an executor's bug: this step failed, the run goes on safely
            result = StepResult("failed", f"{step.action} failed unexpectedly: "
                                f"{type(e).__name__}: {e}")
        if time.monotonic() - t0 > limit and not result.failed:
            result = StepResult("failed", f"took {time.monotonic() - t0:.0f}s, over its "
                                f"timeout of {limit:g}s: {result.message}", result.undo,
                                result.evidence)
        out = _outcome(i, step, result, started, time.monotonic() - t0)
        if result.failed and (step.on_failure or on_failure) == "continue":
            out["ignored"] = True
        run.outcomes.append(out)
        if on_outcome:
            on_outcome(out)
        if result.undo is not None:
            run.undo_log.append({"step": i, "name": step.title, "action": step.action,
                                 "record": result.undo})
        if not result.failed:
            continue
        policy = step.on_failure or on_failure
        if policy == "continue":
            continue
        run.failed = True
        run.stopped = True
        if policy == "rollback":
            for out in rollback(run.undo_log, base):
                run.outcomes.append(out)
                if on_outcome:
                    on_outcome(out)
            run.undo_log = []
        break
    return run


def rollback(undo_log: list[dict[str, Any]], base: StepContext) -> list[dict[str, Any]]:
    """Undo the logged steps, newest first; each undo is an outcome of its step."""
    outs: list[dict[str, Any]] = []
    for entry in reversed(undo_log):
        started, t0 = now_iso(), time.monotonic()
        fn = undoer(entry["action"])
        ctx = dataclasses.replace(base,
                                  deadline=time.monotonic() + DEFAULT_STEP_TIMEOUT_S)
        if base.check:
            result = StepResult("would-change", f"would undo {entry['name']}")
        elif fn is None:
            result = StepResult("failed", f"{entry['action']} cannot be undone")
        else:
            try:
                result = fn(entry["record"], ctx)
            except Exception as e:  # an undo's bug: reported, the other undos still run
                result = StepResult("failed", f"{type(e).__name__}: {e}")
            if not result.failed:
                result = StepResult("rolled-back", f"undone: {result.message}",
                                    evidence=result.evidence)
        outs.append({"step": entry["step"], "name": entry["name"], "action": entry["action"],
                     "status": result.status,
                     "message": ("rollback failed: " if result.failed else "") + result.message,
                     "started_at": started, "duration_s": round(time.monotonic() - t0, 3),
                     "evidence": result.evidence})
    return outs


def host_status(outcomes: list[dict[str, Any]]) -> str:
    """A host's status in the recap from its outcomes (a failure let pass does not count)."""
    statuses = {o["status"] for o in outcomes if not o.get("ignored")}
    for s in ("failed", "rolled-back", "would-change", "changed"):
        if s in statuses:
            return "failed" if s == "rolled-back" else s
    return "ok"


def step_dicts(steps: list[StepSpec]) -> list[dict[str, Any]]:
    return [s.model_dump(mode="json", exclude_none=True, by_alias=True) for s in steps]


def steps_of(data: list[Mapping[str, Any]]) -> list[StepSpec]:
    """Bound steps as the controller sent them, checked again. Each step's action body is
    validated by its own model and the step assembled around it, so a host builds the
    validators of the actions it runs rather than of all of them (start-up time)."""
    from agent.fleet.models import ACTIONS, STEP_KEYS, ParsedStep
    from agent.playbook.types import parse_duration

    steps = []
    for d in data:
        actions = [k for k in d if k in ACTIONS]
        unknown = [k for k in d if k not in STEP_KEYS]
        if len(actions) != 1 or unknown:
            raise ValueError(f"a step names exactly one action and nothing unknown: {list(d)}")
        action = actions[0]
        body = ParsedStep.body(action, d[action])
        on_failure = d.get("on_failure")
        if on_failure not in (None, "stop", "continue", "rollback"):
            raise ValueError(f"on_failure {on_failure!r}")
        timeout = None if d.get("timeout") is None else parse_duration(d["timeout"])
        name = d.get("name")
        if name is not None and not isinstance(name, str):
            raise ValueError(f"step name {name!r}")
        steps.append(StepSpec.model_construct(name=name, on_failure=on_failure,
                                              timeout=timeout, **{action: body}))
    return steps
