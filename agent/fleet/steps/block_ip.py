"""``block_ip:`` and ``unblock_ip:``: an address or network in nftables (table inet opsagent),
through the same Blocker and guard as log watches and ``opsagent blocks``: loopback, the
host's own addresses, the collector, gateways, DNS servers, SSH session peers (the responder's
own connection among them), ``firewall.management`` and the playbooks' allowlists are never
blocked. A refused block is a failed step that changed nothing."""

from __future__ import annotations

from typing import Any

from agent.fleet.models import BlockStep, UnblockStep
from agent.fleet.steps.base import StepContext, StepResult


def _blocker(ctx: StepContext, *, guarded: bool) -> Any:
    from agent.firewall.host import host_blocker
    from agent.service.config import AgentConfig

    cfg = ctx.config or AgentConfig.model_validate({"state_dir": ctx.state_dir})
    return host_blocker(cfg, guarded=guarded)


def run(spec: BlockStep, ctx: StepContext) -> StepResult:
    from agent.errors import ProviderError, UsageError
    from agent.firewall.guard import parse_target
    from agent.playbook.types import format_duration

    try:
        blocker = _blocker(ctx, guarded=True)
        if ctx.check:
            why = blocker.protected.reason(parse_target(spec.ip))
            if why is not None:
                return StepResult("failed", f"would refuse to block {spec.ip}: {why}")
            return StepResult("would-change", f"would block {spec.ip} for "
                              f"{format_duration(spec.duration)}")
        before = {b.addr for b in blocker.list() if b.status == "active"}
        out = blocker.block(spec.ip, spec.duration, rule="runbook",
                            reason=f"incident {ctx.incident} by {ctx.who}".strip(),
                            origin=ctx.incident or "runbook")
    except (UsageError, ProviderError, ValueError) as e:
        return StepResult("failed", str(e))
    if out.status in ("refused", "failed"):
        return StepResult("failed", out.message)
    if out.status == "kept":
        return StepResult("ok", out.message)
    undo = None if out.addr in before else {"ip": out.addr}
    return StepResult("changed", out.message, undo=undo)


def undo(record: dict[str, Any], ctx: StepContext) -> StepResult:
    return run_unblock(UnblockStep(ip=str(record["ip"])), ctx)


def run_unblock(spec: UnblockStep, ctx: StepContext) -> StepResult:
    from agent.errors import ProviderError, UsageError

    try:
        blocker = _blocker(ctx, guarded=False)
        active = {b.addr for b in blocker.list() if b.status in ("active", "untracked")}
        if ctx.check:
            if spec.ip in active:
                return StepResult("would-change", f"would unblock {spec.ip}")
            return StepResult("ok", f"{spec.ip} is not blocked")
        result = blocker.unblock(spec.ip)
    except (UsageError, ProviderError, ValueError) as e:
        return StepResult("failed", str(e))
    if not result.removed and spec.ip not in active:
        return StepResult("ok", f"{spec.ip} was not blocked")
    inside = (f"; it is still inside the block of {', '.join(result.covered_by)}"
              if result.covered_by else "")
    return StepResult("changed", f"unblocked {result.addr}{inside}")
