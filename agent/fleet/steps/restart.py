"""``restart:``: restart a systemd unit (through D-Bus) or a Docker container, and wait
until it is up again. A runbook's restart is an operator's: it spends no restart budget."""

from __future__ import annotations

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
    from agent.providers._docker_clone import wait_up

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
            c.restart(timeout=int(min(10, ctx.remaining(10))))
            why = wait_up(client.api, name, ctx.remaining(60))
            if why is not None:
                return StepResult("failed", f"restarted container {name}, but {why}")
            return StepResult("changed", f"restarted container {name}: running")
    except ProviderError as e:
        return StepResult("failed", str(e))

