"""``backup:``: run a playbook's backup now, exactly as the agent service's scheduled job does
(agent.service.jobs: run, verify when ``verify:`` says so, local retention, offsite copy and
offsite retention), bounded by the step's time. A backup cannot be taken back: no undo.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from agent.fleet.models import BackupStep
from agent.fleet.steps.base import StepContext, StepResult


def run(spec: BackupStep, ctx: StepContext) -> StepResult:
    from agent.errors import InputError
    from agent.playbook import load_playbook

    try:
        loaded = load_playbook(spec.playbook)
    except InputError as e:
        return StepResult("failed", f"cannot load the playbook {spec.playbook}: {e}")
    backups = list(loaded.model.backups)
    found = next((b for b in backups if b.name == spec.name), None)
    if found is None:
        have = ", ".join(b.name for b in backups) or "none"
        return StepResult("failed", f"no backup named {spec.name} in {spec.playbook} "
                          f"(there are: {have})")
    if ctx.check:
        return StepResult("would-change", f"would back up {spec.name} ({describe_source(found)})"
                          f" to {found.destination}{_after(found)}")
    return _run_job(loaded, found, ctx)


def _run_job(loaded: Any, found: Any, ctx: StepContext) -> StepResult:
    from agent.playbook.types import format_size
    from agent.service.jobs import jobs_of

    bounded = found.model_copy(update={"timeout": ctx.remaining(found.timeout)})
    only = dataclasses.replace(loaded, model=loaded.model.model_copy(
        update={"backups": [bounded], "db_maintenance": []}))
    host = getattr(ctx.config, "host", None) or ctx.host
    job = next(j for j in jobs_of([only], host) if j.key == f"backup:{found.name}")
    outcome = job.run()
    b = outcome.details["backup"]
    evidence = ({"run_id": b["run_id"], "archive": b["path"], "bytes_stored": b["bytes_stored"],
                 "bytes_raw": b["bytes_raw"]} if b.get("path") else None)
    if not outcome.ok:
        return StepResult("failed", outcome.message, evidence=evidence)
    verified = {True: "verified", False: "verification FAILED",
                None: "not verified (no verify: in the playbook)"}[b["verified"]]
    text = (f"backed up {found.name}: run {b['run_id']} in {b['path']}, "
            f"{format_size(b['bytes_stored'])} stored ({format_size(b['bytes_raw'])} read), "
            f"{b['duration_s']:.1f}s, {verified}")
    if outcome.details.get("pruned"):
        text += f"; pruned {len(outcome.details['pruned'])} older runs"
    for copy in outcome.details.get("offsite") or []:
        text += f"; copied to {copy['url']}"
    return StepResult("changed", text, evidence=evidence)


def describe_source(spec: Any) -> str:
    """What a backup reads, in a few words: "paths: /srv/uploads, /etc/app"."""
    src = spec.source
    if src.paths is not None:
        return "paths: " + ", ".join(src.paths)
    if src.postgres is not None:
        dbs = src.postgres.databases
        return "postgres: " + (", ".join(dbs) if dbs else "every database")
    if src.redis is not None:
        return f"redis: {src.redis.host}:{src.redis.port}"
    return "command: " + " ".join(src.command or [])


def _after(spec: Any) -> str:
    then = (["verify it"] if spec.verify is not None else []) + (
        ["apply its retention"] if spec.retention is not None else []) + (
        ["copy it offsite"] if spec.offsite is not None else [])
    if not then:
        return ""
    return ", then " + (", ".join(then[:-1]) + " and " if len(then) > 1 else "") + then[-1]
