"""containers: Docker containers through the Docker SDK (imported only when a playbook has some).

observe is one image lookup per image per run and one inspect per container, each bounded by
the client's timeout, so a daemon that is down or hung fails the resource with a clear
message (``_docker_client``). Drift in the configuration recreates the container, and the
plan names the fields that drifted (``_docker_config``); `restarted` restarts it every run;
a failing healthcheck is drift that a restart answers, within the restart budget. Failures
carry the container's state, health and last log lines (``_docker_apply``).

A daemon that does not answer is a *failed* resource, never a skipped one: containers that
should run and cannot be checked are exactly what an operator must hear about.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from agent.playbook.models import ContainerSpec
from agent.providers import _docker_client as dc
from agent.providers import _docker_config as cfg
from agent.providers.base import RESTART, Change, Outcome, ProviderContext

PARALLEL_OBSERVE = True  # one inspect per container; no order between containers
_IMAGES = "docker-images"  # ctx.cache: image reference -> ImageInfo | None, for one run
RUNNING_STATES = ("running", "paused", "restarting")  # a process exists (State.Running)


@dataclass(frozen=True)
class ContainerObserved:
    image: cfg.ImageInfo | None  # what the spec's image reference names now; None: not here
    attrs: dict[str, Any] | None = field(default=None, repr=False)  # inspect; None: no container

    @property
    def status(self) -> str:
        if self.attrs is None:
            return "absent"
        return str(self.attrs["State"].get("Status", "unknown"))

    @property
    def health(self) -> str | None:
        if self.attrs is None:
            return None
        h = self.attrs["State"].get("Health")
        return str(h.get("Status")) if h else None


def supports(ctx: ProviderContext) -> str | None:
    return None  # a daemon that does not answer is a failure of the resource, not a skip


def observe(spec: ContainerSpec, ctx: ProviderContext) -> ContainerObserved:
    import docker.errors

    client = dc.client(ctx)
    with dc.translated(ctx, f"inspecting container {spec.name}"):
        image = None if spec.state == "absent" else _image(client, spec.image, ctx)
        try:
            attrs = client.api.inspect_container(spec.name)
        except docker.errors.NotFound:
            attrs = None
    return ContainerObserved(image, attrs)


def _image(client: Any, ref: str, ctx: ProviderContext) -> cfg.ImageInfo | None:
    """The image `ref` names, looked up once per run (many containers share one image)."""
    import docker.errors

    images: dict[str, cfg.ImageInfo | None] = ctx.cache.setdefault(_IMAGES, {})
    if ref not in images:
        try:
            images[ref] = cfg.ImageInfo.of(client.api.inspect_image(ref))
        except docker.errors.ImageNotFound:
            images[ref] = None
    return images[ref]


def forget_image(ctx: ProviderContext, ref: str) -> None:
    """Look the image up again next time (apply acts on the image that is there now)."""
    ctx.cache.get(_IMAGES, {}).pop(ref, None)


def diff(spec: ContainerSpec, observed: ContainerObserved) -> list[Change]:
    o = observed
    if spec.state == "absent":
        return [] if o.attrs is None else [
            Change("state", o.status, "absent", "the container exists: it is removed")]
    changes: list[Change] = []
    if o.image is None:
        how = (f"it is built from {spec.build.context}" if spec.build else
               f"it is loaded from {spec.load}" if spec.load else
               "no registry is used: give build: or load:, or docker load it first")
        changes.append(Change("image", None, spec.image,
                              f"image {spec.image} is not on this host ({how})"))
    want = "stopped" if spec.state == "stopped" else "running"
    if o.attrs is None:
        return [*changes, Change("state", "absent", want, "no such container: it is created"
                                 + (" and started" if want == "running" else ""))]
    changes += [Change(name, before, after, why)
                for name, before, after, why in cfg.drifted(spec, o.attrs, o.image)]
    if spec.state == "restarted":
        changes.append(Change(RESTART, o.status, "restarted",
                              "state: restarted restarts it on every run"))
    elif want == "running" and o.status != "running":
        changes.append(Change("state", o.status, "running", f"the container is {_state(o)}"))
    elif want == "stopped" and o.status in RUNNING_STATES:
        changes.append(Change("state", o.status, "stopped", f"the container is {o.status}"))
    elif want == "running" and o.health == "unhealthy":
        changes.append(Change("health", "unhealthy", "healthy",
                              "healthcheck failing: " + last_probe(o.attrs) + ": restarted"))
    return changes


def _state(o: ContainerObserved) -> str:
    assert o.attrs is not None
    st = o.attrs["State"]
    if o.status == "exited":
        return f"exited (exit code {st.get('ExitCode')}, at {st.get('FinishedAt', '?')[:19]})"
    return o.status


def last_probe(attrs: dict[str, Any]) -> str:
    log = (attrs["State"].get("Health") or {}).get("Log") or []
    if not log:
        return "no probe output yet"
    last = log[-1]
    output = " ".join(str(last.get("Output", "")).split())[:200]
    return f"last probe exit {last.get('ExitCode')}" + (f": {output}" if output else "")


def describe(spec: ContainerSpec, observed: ContainerObserved) -> str:
    o = observed
    if o.attrs is None:
        return "absent, as wanted"
    health = f", {o.health}" if o.health else ""
    wanted = " (stopped, as wanted)" if spec.state == "stopped" else ""
    image = f" ({cfg.short_id(o.image.id)})" if o.image else ""
    return (f"{o.status}{health}{wanted}, id {str(o.attrs['Id'])[:12]}, image {spec.image}"
            f"{image}, configuration matches")


def apply(spec: ContainerSpec, changes: list[Change], ctx: ProviderContext) -> list[Outcome]:
    from agent.providers._docker_apply import apply_container

    return apply_container(spec, {c.field for c in changes}, ctx)
