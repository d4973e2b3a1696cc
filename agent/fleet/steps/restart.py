"""``restart:``: restart a systemd unit (through D-Bus) or a Docker container, and wait
until it is up again. A runbook's restart is an operator's: it spends no restart budget."""

from __future__ import annotations

import time
from typing import Any

from agent.fleet.models import RestartStep
from agent.fleet.steps.base import StepContext, StepResult


def run(spec: RestartStep, ctx: StepContext) -> StepResult:
    if spec.service is not None:
        return _service(spec.service, ctx)
    assert spec.container is not None
    return _container(spec.container, ctx)


def _provider_context(ctx: StepContext) -> Any:
    from agent.providers.base import ProviderContext

    return ProviderContext(host=ctx.host, variables={}, base_dir="/", state_dir=ctx.state_dir)


def _service(name: str, ctx: StepContext) -> StepResult:
    from agent.errors import ProviderError
    from agent.playbook.models.services import ServiceSpec
    from agent.providers import services
    from agent.providers.base import RESTART, Change

    pctx = _provider_context(ctx)
    spec = ServiceSpec.model_validate({"name": name, "state": "running",
                                      "timeout": f"{max(1, int(ctx.remaining(120)))}s"})
    try:
        before = services.observe(spec, pctx)
        if before.status.load_state == "not-found":
            return StepResult("failed", f"no unit {spec.unit} on this host")
        if ctx.check:
            return StepResult("would-change", f"would restart {spec.unit} (now "
                              f"{before.status.text()})")
        outcomes = services.apply(spec, [Change(RESTART, None, "restarted", "runbook")], pctx)
    except ProviderError as e:
        return StepResult("failed", str(e))
    failed = [o for o in outcomes if not o.ok]
    text = "; ".join(o.message for o in outcomes)
    return StepResult("failed" if failed else "changed", text)


def _container(name: str, ctx: StepContext) -> StepResult:
    from agent.errors import ProviderError
    from agent.providers import _docker_client

    pctx = _provider_context(ctx)
    try:
        with _docker_client.translated(pctx, f"container {name}"):
            import docker.errors

            client = _docker_client.client(pctx)
            try:
                c = client.containers.get(name)
            except docker.errors.NotFound:
                return StepResult("failed", f"no container {name} on this host")
            if ctx.check:
                return StepResult("would-change", f"would restart container {name} (now "
                                  f"{c.status})")
            started = c.attrs.get("State", {}).get("StartedAt")
            c.restart(timeout=int(min(10, ctx.remaining(10))))
            return _wait_up(c, started, ctx)
    except ProviderError as e:
        return StepResult("failed", str(e))


def _wait_up(c: Any, started_before: str | None, ctx: StepContext) -> StepResult:
    """Running (and healthy, when it has a health check) within the step's time."""
    deadline = time.monotonic() + ctx.remaining(60)
    state: dict[str, Any] = {}
    while True:
        c.reload()
        state = c.attrs.get("State", {})
        health = (state.get("Health") or {}).get("Status")
        if (state.get("Running") and state.get("StartedAt") != started_before
                and health in (None, "healthy")):
            what = f"running{', healthy' if health else ''}"
            return StepResult("changed", f"restarted container {c.name}: {what}")
        if time.monotonic() >= deadline:
            return StepResult("failed", f"container {c.name} is {state.get('Status')}"
                              f"{f' ({health})' if health else ''} after its restart")
        time.sleep(0.2)
