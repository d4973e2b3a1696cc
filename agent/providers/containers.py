"""containers: Docker containers through the Docker SDK (imported only when used).

observe is one image lookup and one inspect per container, each bounded by the client's
timeout, so a daemon that is down or hung fails the resource with a clear message. Drift in
the configuration recreates the container; `restarted` restarts it every run; a failing
healthcheck is drift that a restart answers. Failures carry the container's state, health
and last log lines.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from agent.errors import ProviderError
from agent.playbook.models import ContainerSpec
from agent.providers import _docker_config as cfg
from agent.providers.base import RESTART, Change, Outcome, ProviderContext

CLIENT_TIMEOUT = 10
STOP_TIMEOUT = 10
SETTLE = 0.5  # a started container must still run this long after start
LOG_LINES = 20
PARALLEL_OBSERVE = True  # one inspect per container; no order between containers


@dataclass(frozen=True)
class ContainerObserved:
    image_id: str | None  # None: the image is not on this host
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


def _client(ctx: ProviderContext) -> Any:
    if "docker" not in ctx.cache:
        import docker

        try:
            ctx.cache["docker"] = docker.from_env(timeout=CLIENT_TIMEOUT)
        except docker.errors.DockerException as e:
            raise ProviderError(f"Docker Engine is not reachable: {e}") from None
    return ctx.cache["docker"]


def _docker_error(what: str, err: Exception) -> ProviderError:
    text = str(getattr(err, "explanation", None) or err)
    if "Connection refused" in text or "No such file" in text or "Connection aborted" in text:
        text = f"Docker Engine is not reachable ({text})"
    elif "timed out" in text.lower():
        text = f"Docker Engine did not answer within {CLIENT_TIMEOUT}s"
    return ProviderError(f"{what}: {text}")


def observe(spec: ContainerSpec, ctx: ProviderContext) -> ContainerObserved:
    import docker.errors
    import requests.exceptions

    client = _client(ctx)
    try:
        images: dict[str, str | None] = ctx.cache.setdefault("docker-images", {})
        if spec.image not in images:
            try:
                images[spec.image] = client.api.inspect_image(spec.image)["Id"]
            except docker.errors.ImageNotFound:
                images[spec.image] = None
        image_id = images[spec.image]
        try:
            attrs = client.api.inspect_container(spec.name)
        except docker.errors.NotFound:
            attrs = None
    except (docker.errors.DockerException, requests.exceptions.RequestException) as e:
        raise _docker_error(f"inspecting container {spec.name}", e) from None
    return ContainerObserved(image_id, attrs)


def diff(spec: ContainerSpec, observed: ContainerObserved) -> list[Change]:
    o = observed
    if spec.state == "absent":
        return [] if o.attrs is None else [
            Change("state", o.status, "absent", "the container exists")]
    changes: list[Change] = []
    if o.image_id is None:
        how = "built from " + spec.build.context if spec.build else (
            "loaded from " + spec.load if spec.load else "no registry is used: build or load it")
        changes.append(Change("image", None, spec.image, f"image {spec.image} is not on this "
                                                          f"host ({how})"))
    want = "stopped" if spec.state == "stopped" else "running"
    if o.attrs is None:
        return [*changes, Change("state", "absent", want, "no such container")]
    for name, before, after in cfg.drifted(spec, o.attrs, o.image_id):
        changes.append(Change(name, before, after, f"{name} differs: the container is recreated"))
    running = o.status == "running"
    if spec.state == "restarted":
        changes.append(Change(RESTART, o.status, "restarted", "state: restarted restarts it on "
                                                             "every run"))
    elif running != (want == "running"):
        changes.append(Change("state", o.status, want, f"the container is {o.status}"))
    elif running and o.health == "unhealthy":
        changes.append(Change("health", "unhealthy", "healthy",
                              "healthcheck failing: " + _last_probe(o.attrs)))
    return changes


def _last_probe(attrs: dict[str, Any]) -> str:
    log = (attrs["State"].get("Health") or {}).get("Log") or []
    if not log:
        return "no probe output"
    last = log[-1]
    return f"exit {last.get('ExitCode')}: {str(last.get('Output', '')).strip()[:200]}"


def describe(spec: ContainerSpec, observed: ContainerObserved) -> str:
    o = observed
    if o.attrs is None:
        return "absent, as wanted"
    cid = str(o.attrs["Id"])[:12]
    health = f", {o.health}" if o.health else ""
    return f"{o.status}{health}, id {cid}, image {spec.image}, configuration matches"


def apply(spec: ContainerSpec, changes: list[Change], ctx: ProviderContext) -> list[Outcome]:
    import docker.errors
    import requests.exceptions

    client = _client(ctx)
    ctx.cache.get("docker-images", {}).pop(spec.image, None)  # act on the image there now
    try:
        return _apply(client, spec, {c.field for c in changes}, ctx)
    except (docker.errors.DockerException, requests.exceptions.RequestException) as e:
        raise _docker_error(f"container {spec.name}", e) from None


def _apply(client: Any, spec: ContainerSpec, fields: set[str],
           ctx: ProviderContext) -> list[Outcome]:
    out: list[Outcome] = []
    o = observe(spec, ctx)  # act on what is there now
    if spec.state == "absent":
        if o.attrs is not None:
            client.api.remove_container(spec.name, force=True)
            out.append(Outcome("remove", True, f"removed container {spec.name}"))
        return out
    if o.image_id is None:
        out.append(_provide_image(client, spec, ctx))
        ctx.cache.get("docker-images", {}).pop(spec.image, None)
        o = observe(spec, ctx)
    recreate = bool(fields - {"state", "health", RESTART, "image"}) or (
        o.attrs is not None and bool(cfg.drifted(spec, o.attrs, o.image_id)))
    if o.attrs is not None and recreate:
        client.api.remove_container(spec.name, force=True, v=False)
        out.append(Outcome("remove", True, "removed the drifted container to recreate it"))
        o = ContainerObserved(o.image_id, None)
    if o.attrs is None:
        _create(client, spec)
        out.append(Outcome("create", True, f"created container {spec.name} from {spec.image}"))
    if spec.state == "stopped":
        if observe(spec, ctx).status == "running":
            client.api.stop(spec.name, timeout=STOP_TIMEOUT)
            out.append(Outcome("stop", True, f"stopped {spec.name}"))
        return out
    status = observe(spec, ctx).status
    if status == "running" and (spec.state == "restarted" or RESTART in fields or
                                "health" in fields) and not recreate:
        client.api.restart(spec.name, timeout=STOP_TIMEOUT)
        out.append(Outcome("restart", True, f"restarted {spec.name}"))
    elif status != "running":
        client.api.start(spec.name)
        out.append(Outcome("start", True, f"started {spec.name}"))
    _settle(client, spec, ctx)
    return out


def _create(client: Any, spec: ContainerSpec) -> None:
    ports: dict[str, Any] = {}
    for ip, host, cont in (cfg.parse_port(p) for p in spec.ports or []):
        binding: Any = (ip, int(host) if host else None) if ip else (int(host) if host else None)
        ports.setdefault(cont, []).append(binding)
    host_config = client.api.create_host_config(
        port_bindings=ports or None, binds=list(spec.volumes or []) or None,
        restart_policy={"Name": spec.restart_policy} if spec.restart_policy else None)
    labels = {**(spec.labels or {}), cfg.MANAGED_LABEL: "true",
              cfg.HASH_LABEL: cfg.config_hash(spec)}
    client.api.create_container(
        spec.image, command=spec.command, name=spec.name, environment=spec.env or None,
        labels=labels, ports=[tuple(p.split("/")) for p in ports] or None,
        host_config=host_config,
        healthcheck=cfg.healthcheck(spec), detach=True)


def _provide_image(client: Any, spec: ContainerSpec, ctx: ProviderContext) -> Outcome:
    import os

    if spec.build is not None:
        context = spec.build.context
        context = context if os.path.isabs(context) else os.path.join(ctx.base_dir, context)
        client.images.build(path=context, dockerfile=spec.build.dockerfile, tag=spec.image,
                            rm=True)
        return Outcome("build", True, f"built {spec.image} from {context}")
    if spec.load is not None:
        path = spec.load if os.path.isabs(spec.load) else os.path.join(ctx.base_dir, spec.load)
        try:
            with open(path, "rb") as fh:
                client.images.load(fh.read())
        except OSError as e:
            raise ProviderError(f"load {path}: {e.strerror}") from None
        ctx.cache.get("docker-images", {}).pop(spec.image, None)
        if observe(spec, ctx).image_id is None:
            raise ProviderError(f"{path} did not contain the image {spec.image}")
        return Outcome("load", True, f"loaded {spec.image} from {path}")
    raise ProviderError(f"image {spec.image} is not on this host and no registry is used "
                        "(give build: or load:, or docker load it first)")


def _settle(client: Any, spec: ContainerSpec, ctx: ProviderContext) -> None:
    time.sleep(SETTLE)
    o = observe(spec, ctx)
    if o.status == "running":
        return
    assert o.attrs is not None
    state = o.attrs["State"]
    try:
        logs = client.api.logs(spec.name, tail=LOG_LINES).decode(errors="replace").strip()
    except Exception:  # the logs are a courtesy; the failure is what matters
        logs = ""
    raise ProviderError(f"container {spec.name} is {o.status} (exit code "
                        f"{state.get('ExitCode')}, error {state.get('Error') or 'none'})"
                        + (f"; last log lines:\n{logs}" if logs else "; no log output"))
