"""A container's desired configuration, normalised so desired and observed compare.

The agent labels each container it creates with a hash of this configuration (as compose
does with com.docker.compose.config-hash); the per-field comparison with `docker inspect`
says *what* drifted, and the hash catches what inspect cannot show (a variable removed from
env when the image is not known, say). Changing `normalized` changes every hash, which
recreates every managed container once: add keys only with values that keep old hashes.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from agent.playbook.models import ContainerSpec
from agent.playbook.models.containers import RESERVED_LABEL_PREFIX, parse_port

HASH_LABEL = RESERVED_LABEL_PREFIX + "config-hash"
MANAGED_LABEL = RESERVED_LABEL_PREFIX + "managed"
_NS = 1_000_000_000


@dataclass(frozen=True)
class ImageInfo:
    """What a container inherits from its image, from one image inspect."""

    id: str
    env: dict[str, str] = field(default_factory=dict)
    cmd: list[str] | None = None
    labels: dict[str, str] = field(default_factory=dict)
    healthcheck: dict[str, Any] | None = None

    @classmethod
    def of(cls, attrs: dict[str, Any]) -> ImageInfo:
        config = attrs.get("Config") or {}
        return cls(str(attrs["Id"]), _env(config.get("Env")), config.get("Cmd"),
                   dict(config.get("Labels") or {}), config.get("Healthcheck"))


def desired_ports(spec: ContainerSpec) -> list[str]:
    return sorted(f"{ip}:{host}:{cont}" for ip, host, cont in map(parse_port, spec.ports or []))


def observed_ports(attrs: dict[str, Any]) -> list[str]:
    bindings = (attrs.get("HostConfig") or {}).get("PortBindings") or {}
    out = []
    for cont, binds in bindings.items():
        for b in binds or [{}]:
            out.append(f"{b.get('HostIp', '')}:{b.get('HostPort', '')}:{cont}")
    return sorted(out)


def port_bindings(spec: ContainerSpec) -> dict[str, list[Any]]:
    """The SDK's port_bindings argument: {'80/tcp': [('127.0.0.1', 8080)], '53/udp': [53]}."""
    out: dict[str, list[Any]] = {}
    for ip, host, cont in map(parse_port, spec.ports or []):
        port = int(host) if host else None
        out.setdefault(cont, []).append((ip, port) if ip else port)
    return out


def healthcheck(spec: ContainerSpec) -> dict[str, Any] | None:
    h = spec.healthcheck
    if h is None:
        return None
    return {"Test": list(h.test), "Interval": int(h.interval * _NS),
            "Timeout": int(h.timeout * _NS), "Retries": h.retries,
            "StartPeriod": int(h.start_period * _NS)}


def labels(spec: ContainerSpec) -> dict[str, str]:
    """The labels a created container carries: the spec's and the agent's own."""
    return {**(spec.labels or {}), MANAGED_LABEL: "true", HASH_LABEL: config_hash(spec)}


def normalized(spec: ContainerSpec) -> dict[str, Any]:
    return {"image": spec.image, "command": spec.command,
            "env": dict(sorted((spec.env or {}).items())),
            "ports": desired_ports(spec), "volumes": sorted(spec.volumes or []),
            "restart_policy": spec.restart_policy,
            "labels": dict(sorted((spec.labels or {}).items())),
            "healthcheck": healthcheck(spec)}


def config_hash(spec: ContainerSpec) -> str:
    text = json.dumps(normalized(spec), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


Drift = tuple[str, Any, Any, str]  # (field, observed, desired, why)


def drifted(spec: ContainerSpec, attrs: dict[str, Any], image: ImageInfo | None) -> list[Drift]:
    """What differs between the spec and the inspected container, field by field.

    `image` is the image the tag names now. Only when the container runs that very image
    are its defaults known, and only then are extra env variables and labels drift.
    """
    config = attrs.get("Config") or {}
    host = attrs.get("HostConfig") or {}
    out: list[Drift] = []
    if image is not None and attrs.get("Image") != image.id:
        out.append(("image", short_id(attrs.get("Image")), short_id(image.id),
                    f"{spec.image} is now image {short_id(image.id)}; the container runs "
                    f"{short_id(attrs.get('Image'))}: recreated"))
    elif config.get("Image") != spec.image:
        out.append(("image", config.get("Image"), spec.image, "another image: recreated"))
    base = image if image is not None and attrs.get("Image") == image.id else None
    want_cmd = spec.command if spec.command is not None else (base.cmd if base else None)
    if (spec.command is not None or base) and (config.get("Cmd") or None) != (want_cmd or None):
        out.append(("command", config.get("Cmd"), want_cmd, "command differs: recreated"))
    out += _env_drift(spec, _env(config.get("Env")), base)
    if observed_ports(attrs) != desired_ports(spec):
        out.append(("ports", observed_ports(attrs), desired_ports(spec),
                    "published ports differ: recreated"))
    binds = sorted(host.get("Binds") or [])
    if binds != sorted(spec.volumes or []):
        out.append(("volumes", binds, sorted(spec.volumes or []), "volumes differ: recreated"))
    policy = (host.get("RestartPolicy") or {}).get("Name") or "no"
    if spec.restart_policy is not None and policy != spec.restart_policy:
        out.append(("restart_policy", policy, spec.restart_policy,
                    "restart policy differs: recreated"))
    out += _label_drift(spec, dict(config.get("Labels") or {}), base)
    want_hc = healthcheck(spec) or (base.healthcheck if base else None)
    if (spec.healthcheck is not None or base) and \
            _nonzero(config.get("Healthcheck")) != _nonzero(want_hc):
        out.append(("healthcheck", config.get("Healthcheck"), want_hc,
                    "healthcheck differs: recreated"))
    have = (config.get("Labels") or {}).get(HASH_LABEL)
    if not out and have != config_hash(spec):
        why = ("created from another configuration (its opsagent.config-hash label differs)"
               if have else "not created by opsagent (no opsagent.config-hash label)")
        out.append(("config", have, config_hash(spec), why + ": recreated"))
    return out


def _env_drift(spec: ContainerSpec, env: dict[str, str], base: ImageInfo | None) -> list[Drift]:
    want = spec.env or {}
    changed = sorted(k for k, v in want.items() if env.get(k) != v)
    extra = sorted(k for k, v in env.items() if k not in want and base is not None
                   and base.env.get(k) != v)
    if not changed and not extra:
        return []
    parts = ([f"{', '.join(changed)} differ"] if changed else []) + (
        [f"{', '.join(extra)} not declared"] if extra else [])
    # values are never shown: they may be secrets
    return [("env", "; ".join(parts), "as declared", "environment differs: recreated")]


def _label_drift(spec: ContainerSpec, have: dict[str, str], base: ImageInfo | None
                 ) -> list[Drift]:
    want = spec.labels or {}
    own = {k: v for k, v in have.items() if not k.startswith(RESERVED_LABEL_PREFIX)
           and (k in want or (base is not None and base.labels.get(k) != v))}
    extra = base is not None and not own.keys() <= want.keys()
    if all(own.get(k) == v for k, v in want.items()) and not extra:
        return []
    return [("labels", own, dict(want), "labels differ: recreated")]


def _env(items: list[str] | None) -> dict[str, str]:
    return {k: v for k, _, v in (e.partition("=") for e in items or [])}


def _nonzero(d: dict[str, Any] | None) -> dict[str, Any]:
    return {k: v for k, v in (d or {}).items() if v}  # Docker drops zero durations


def short_id(image_id: Any) -> Any:
    return image_id.removeprefix("sha256:")[:12] if isinstance(image_id, str) else image_id
