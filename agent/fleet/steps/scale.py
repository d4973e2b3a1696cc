"""``scale:``: set how many containers a Docker Compose service runs, by compose's own labels
(no compose binary, no compose file needed on the host).

A service's replicas are its containers labelled ``com.docker.compose.project`` and
``com.docker.compose.service`` (one-off ``run`` containers excluded), ordered by
``com.docker.compose.container-number``. Scaling up clones a running replica's configuration
(agent.providers._docker_clone) into ``{project}-{service}-{n}`` with the next numbers, as
``docker compose up --scale`` names them, and waits until each runs (healthy, when it has a
healthcheck); the kept replicas that were stopped are started. Scaling down stops (within
each one's grace period) and removes the highest-numbered ones; their volumes are kept.
"""

from __future__ import annotations

from typing import Any

from agent.errors import ProviderError
from agent.fleet.models import ScaleStep
from agent.fleet.steps.base import StepContext, StepResult

PROJECT = "com.docker.compose.project"
SERVICE = "com.docker.compose.service"
NUMBER = "com.docker.compose.container-number"
ONEOFF = "com.docker.compose.oneoff"
_PER_CONTAINER = ("com.docker.compose.replace",)  # labels that describe one container only
WAIT_S = 60.0


def run(spec: ScaleStep, ctx: StepContext) -> StepResult:
    from agent.providers import _docker_client as dc

    try:
        return dc.call(ctx.state_dir, f"scaling {spec.project}/{spec.service}",
                       lambda client: _Scale(client.api, spec, ctx).run())
    except ProviderError as e:
        return StepResult("failed", str(e))


def undo(record: dict[str, Any], ctx: StepContext) -> StepResult:
    return run(ScaleStep(project=record["project"], service=record["service"],
                         replicas=record["replicas"]), ctx)


def read_replicas(api: Any, project: str, service: str) -> list[dict[str, Any]]:
    """The service's containers (list summaries), lowest container number first."""
    found = api.containers(all=True, filters={"label": [f"{PROJECT}={project}",
                                                        f"{SERVICE}={service}"]})
    return sorted((c for c in found if (c.get("Labels") or {}).get(ONEOFF) != "True"),
                  key=_number)


def _number(c: dict[str, Any]) -> int:
    value = str((c.get("Labels") or {}).get(NUMBER) or "0")
    return int(value) if value.isdigit() else 0


def _name(c: dict[str, Any]) -> str:
    return str((c.get("Names") or [c["Id"][:12]])[0]).lstrip("/")


class _Stop(Exception):
    """A replica could not be removed, started or created: the step fails here."""


class _Scale:
    def __init__(self, api: Any, spec: ScaleStep, ctx: StepContext) -> None:
        self.api, self.spec, self.ctx = api, spec, ctx
        self.label = f"{spec.project}/{spec.service}"
        self.done: list[str] = []

    def run(self) -> StepResult:
        import docker.errors

        from agent.providers._docker_client import api_message

        reps = read_replicas(self.api, self.spec.project, self.spec.service)
        have, want = len(reps), self.spec.replicas
        stopped = [_name(c) for c in reps[:want] if c.get("State") != "running"]
        if have == want and not stopped:
            names = ", ".join(_name(c) for c in reps) or "none"
            return StepResult("ok", f"{self.label} already runs {want} replicas ({names})")
        if not reps:
            return StepResult("failed", f"no container of compose service {self.label} on "
                              f"this host (labelled {PROJECT}={self.spec.project}, "
                              f"{SERVICE}={self.spec.service}): no replica to copy")
        start = f" and start {', '.join(stopped)}" if stopped else ""
        if self.ctx.check:
            return StepResult("would-change",
                              f"would scale {self.label} from {have} to {want}{start}")
        undo = {"project": self.spec.project, "service": self.spec.service, "replicas": have}
        try:
            self.remove(reps[want:])
            self.start(stopped)
            self.add(reps, want - have)
        except (_Stop, docker.errors.APIError) as e:
            why = api_message(e) if isinstance(e, docker.errors.APIError) else str(e)
            done = f" (done: {'; '.join(self.done)})" if self.done else ""
            return StepResult("failed", f"scaling {self.label} from {have} to {want} failed: "
                              f"{why}{done}", undo=undo)
        return StepResult("changed", f"scaled {self.label} from {have} to {want}: "
                          + "; ".join(self.done), undo=undo)

    def remove(self, extra: list[dict[str, Any]]) -> None:
        from agent.providers._docker_clone import stop_timeout

        for c in reversed(extra):
            attrs = self.api.inspect_container(c["Id"])
            if attrs["State"].get("Running"):
                grace = stop_timeout(attrs)
                self.api.stop(c["Id"], timeout=int(self.ctx.remaining(grace)))
            self.api.remove_container(c["Id"])  # its volumes are kept
            self.done.append(f"stopped and removed {_name(c)}")

    def start(self, names: list[str]) -> None:
        from agent.providers._docker_clone import wait_up

        for name in names:
            self.api.start(name)
            error = wait_up(self.api, name, self.ctx.remaining(WAIT_S))
            if error is not None:
                raise _Stop(error)
            self.done.append(f"started {name}")

    def add(self, reps: list[dict[str, Any]], count: int) -> None:
        import docker.errors

        from agent.providers._docker_apply import describe_failure
        from agent.providers._docker_client import api_message
        from agent.providers._docker_clone import create_clone, image_name, wait_up

        if count <= 0:
            return
        running = [c for c in reps if c.get("State") == "running"] or reps
        template = self.api.inspect_container(running[-1]["Id"])
        image = image_name(self.api, template["Image"], template["Config"].get("Image") or "")
        labels = {k: v for k, v in (template["Config"].get("Labels") or {}).items()
                  if k not in _PER_CONTAINER}
        first = max(_number(c) for c in reps) + 1
        for n in range(first, first + count):
            name = f"{self.spec.project}-{self.spec.service}-{n}"
            try:
                new_id = create_clone(self.api, template, name, image, replica=True,
                                      labels={**labels, NUMBER: str(n)})
            except docker.errors.APIError as e:
                raise _Stop(f"creating {name} failed: {api_message(e)}") from None
            try:
                self.api.start(new_id)
                error = wait_up(self.api, name, self.ctx.remaining(WAIT_S))
            except docker.errors.APIError as e:
                error = describe_failure(self.api, name,
                                         f"starting {name} failed: {api_message(e)}")
            if error is not None:
                self.api.remove_container(new_id, force=True)  # it never ran: not kept
                raise _Stop(error)
            self.done.append(f"created {name} from {_name(running[-1])}'s configuration")
