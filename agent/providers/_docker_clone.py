"""A container re-created from its own inspect: the same configuration on another image (a
rollback) or as a new sibling (a compose replica), as watchtower and compose do it.

``Config`` and ``HostConfig`` go back to the daemon as they came out of ``docker inspect``
(env, command, ports, binds, mounts, restart policy, resources, capabilities, log driver...),
with these exceptions:

- the generated hostname (the old id's first 12 characters) is dropped, so it follows the
  new container;
- on another image, what the container only inherited from its old image (env entries,
  labels, command, entrypoint, healthcheck, volumes, exposed ports equal to the old image's)
  is dropped, so the new image's own defaults apply (``PATH``, ``VERSION``, ``CMD``);
- a replacement keeps the old container's anonymous volumes (its data), static addresses and
  MAC; a replica gets fresh ones and its own name in place of the template's network alias;
- networks: the primary one (``NetworkMode``) at create, the others connected before start
  (API 1.41 accepts one endpoint at create).
"""

from __future__ import annotations

import copy
import re
import time
from typing import Any

STOP_TIMEOUT = 10  # Docker's own default, when the container sets none
SETTLE = 0.5       # a container without a healthcheck must still run this long
_POLL = 0.2
_BUILTIN_NETWORKS = ("default", "bridge", "host", "none")
_ANONYMOUS = re.compile(r"[0-9a-f]{64}")  # a volume Docker named itself


def image_name(api: Any, image_id: str, ref: str) -> str:
    """How to name the image `image_id` to the daemon: `ref` when it still names that very
    image, else one of the image's tags, else the id itself (a tag that moved, say)."""
    import docker.errors

    try:
        if ref and api.inspect_image(ref)["Id"] == image_id:
            return ref
    except docker.errors.ImageNotFound:
        pass
    tags = sorted(api.inspect_image(image_id).get("RepoTags") or [])
    return tags[0] if tags else image_id


def stop_timeout(attrs: dict[str, Any]) -> int:
    """The container's own grace period (compose's stop_grace_period), else Docker's 10 s."""
    value = (attrs.get("Config") or {}).get("StopTimeout")
    return int(value) if isinstance(value, int) and value >= 0 else STOP_TIMEOUT


def create_clone(api: Any, attrs: dict[str, Any], name: str, image: str, *,
                 old_image: dict[str, Any] | None = None, replica: bool = False,
                 labels: dict[str, str] | None = None) -> str:
    """Create (not start) `name` with the configuration of the inspected container `attrs`
    on `image`. old_image: the inspect of the image it ran, when the image changes.
    replica: a sibling of the original, not its replacement. Returns the new id; on a
    failure after create the new container is removed again."""
    body, extra = clone_body(attrs, name, image, old_image=old_image, replica=replica,
                             labels=labels)
    new_id = str(api.create_container_from_config(body, name=name)["Id"])
    try:
        for net, ep in extra.items():
            api.connect_container_to_network(
                new_id, net, aliases=ep.get("Aliases"), links=ep.get("Links"),
                ipv4_address=(ep.get("IPAMConfig") or {}).get("IPv4Address") or None,
                ipv6_address=(ep.get("IPAMConfig") or {}).get("IPv6Address") or None,
                driver_opt=ep.get("DriverOpts"))
    except BaseException:
        api.remove_container(new_id, force=True)
        raise
    return new_id


def clone_body(attrs: dict[str, Any], name: str, image: str, *,
               old_image: dict[str, Any] | None = None, replica: bool = False,
               labels: dict[str, str] | None = None
               ) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """The /containers/create body, and the networks to connect after create."""
    config = copy.deepcopy(attrs.get("Config") or {})
    host = copy.deepcopy(attrs.get("HostConfig") or {})
    if config.get("Hostname") == str(attrs["Id"])[:12]:
        config.pop("Hostname")
    if replica:
        config.pop("MacAddress", None)
    if old_image is not None:
        _drop_inherited(config, host, old_image.get("Config") or {})
    if labels is not None:
        config["Labels"] = labels
    config["Image"] = image
    host["Links"] = [_link(x) for x in host.get("Links") or []] or None
    if replica:
        _fresh_anonymous_volumes(host)
    else:
        host["Mounts"] = (host.get("Mounts") or []) + _anonymous_volumes(attrs, host)
    endpoints = _endpoints(attrs, name, replica)
    mode = str(host.get("NetworkMode") or "default")
    first = {mode: endpoints.pop(mode)} if mode in endpoints else {}
    if mode in _BUILTIN_NETWORKS or mode.startswith("container:"):
        endpoints.pop("bridge", None)  # the mode's own network, joined by create
    return {**config, "HostConfig": host,
            "NetworkingConfig": {"EndpointsConfig": first}}, endpoints


def _drop_inherited(config: dict[str, Any], host: dict[str, Any], base: dict[str, Any]
                    ) -> None:
    inherited_env = set(base.get("Env") or [])
    config["Env"] = [e for e in config.get("Env") or [] if e not in inherited_env]
    for key in ("Cmd", "Entrypoint", "Healthcheck", "WorkingDir", "User", "StopSignal",
                "OnBuild"):
        if key in config and config[key] == base.get(key):
            config.pop(key)
    base_labels = base.get("Labels") or {}
    config["Labels"] = {k: v for k, v in (config.get("Labels") or {}).items()
                        if base_labels.get(k) != v}
    bound = set((host.get("PortBindings") or {}).keys())
    config["ExposedPorts"] = {p: v for p, v in (config.get("ExposedPorts") or {}).items()
                              if p in bound or p not in (base.get("ExposedPorts") or {})}
    config["Volumes"] = {v: x for v, x in (config.get("Volumes") or {}).items()
                         if v not in (base.get("Volumes") or {})} or None


def _link(link: str) -> str:
    """inspect shows a legacy link as "/db:/web/db"; create takes "db:db"."""
    source, _, target = link.partition(":")
    return f"{source.lstrip('/')}:{target.rsplit('/', 1)[-1]}" if target else link


def _anonymous_volumes(attrs: dict[str, Any], host: dict[str, Any]) -> list[dict[str, Any]]:
    """The volumes Docker named itself (`-v /data`, an image's VOLUME): handed to the
    replacement, as compose does, so the data in them stays with the service."""
    taken = {str(b).split(":")[1] for b in host.get("Binds") or [] if ":" in str(b)}
    taken |= {m.get("Target") for m in host.get("Mounts") or []}
    return [{"Type": "volume", "Source": m["Name"], "Target": m["Destination"],
             "ReadOnly": not m.get("RW", True)}
            for m in attrs.get("Mounts") or []
            if m.get("Type") == "volume" and m.get("Name") and m["Destination"] not in taken]


def _fresh_anonymous_volumes(host: dict[str, Any]) -> None:
    """A replica gets anonymous volumes of its own: a mount of one that Docker named (64 hex
    digits: compose hands them on this way when it re-creates) becomes a fresh one."""
    binds, mounts = [], list(host.get("Mounts") or [])
    for bind in host.get("Binds") or []:
        source, _, rest = str(bind).partition(":")
        if _ANONYMOUS.fullmatch(source):
            target, _, mode = rest.partition(":")
            mounts.append({"Type": "volume", "Target": target, "ReadOnly": "ro" in mode})
        else:
            binds.append(bind)
    for m in mounts:
        if m.get("Type") == "volume" and _ANONYMOUS.fullmatch(str(m.get("Source") or "")):
            m.pop("Source")
    host["Binds"], host["Mounts"] = binds or None, mounts or None


def _endpoints(attrs: dict[str, Any], name: str, replica: bool) -> dict[str, dict[str, Any]]:
    old_name = str(attrs.get("Name") or "").lstrip("/")
    short_id = str(attrs["Id"])[:12]
    out: dict[str, dict[str, Any]] = {}
    for net, ep in ((attrs.get("NetworkSettings") or {}).get("Networks") or {}).items():
        aliases = [name if replica and a == old_name else a
                   for a in ep.get("Aliases") or [] if a != short_id]
        endpoint: dict[str, Any] = {"Aliases": aliases or None, "Links": ep.get("Links"),
                                    "DriverOpts": ep.get("DriverOpts")}
        if not replica:
            endpoint["IPAMConfig"] = ep.get("IPAMConfig")  # a static address stays its own
        out[net] = {k: v for k, v in endpoint.items() if v}
    return out


def wait_up(api: Any, name: str, timeout: float) -> str | None:
    """None once `name` runs (and is healthy, when it has a healthcheck) within `timeout`
    seconds; else why not, with its state and last log lines."""
    from agent.providers._docker_apply import describe_failure

    deadline = time.monotonic() + timeout
    running_since: float | None = None
    restarts: int | None = None
    while True:
        attrs = api.inspect_container(name)
        state = attrs["State"]
        health = (state.get("Health") or {}).get("Status")
        now = time.monotonic()
        restarts = attrs.get("RestartCount", 0) if restarts is None else restarts
        if attrs.get("RestartCount", 0) != restarts:  # its restart policy brought it back
            return describe_failure(api, name, f"{name} exited and was restarted")
        if state.get("Status") != "running":
            if state.get("Status") not in ("created", "restarting") or now >= deadline:
                return describe_failure(api, name, f"{name} did not stay running")
            running_since = None
        elif health == "unhealthy":
            return describe_failure(api, name, f"{name} is unhealthy")
        elif health == "healthy":
            return None
        elif health is None:
            running_since = running_since or now
            if now - running_since >= SETTLE:
                return None
        if now >= deadline:
            return describe_failure(api, name, f"{name} was not healthy within "
                                    f"{timeout:.0f}s")
        time.sleep(_POLL)
