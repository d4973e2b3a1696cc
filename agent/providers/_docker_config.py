"""The desired configuration of a container, normalised so desired and observed compare.

The agent labels each container it creates with a hash of this configuration (as compose
does with com.docker.compose.config-hash); the per-field comparison says *what* drifted.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from agent.errors import ProviderError
from agent.playbook.models import ContainerSpec

HASH_LABEL = "opsagent.config-hash"
MANAGED_LABEL = "opsagent.managed"
_NS = 1_000_000_000


def parse_port(text: str) -> tuple[str, str, str]:
    """'127.0.0.1:8080:80/udp' -> ('127.0.0.1', '8080', '80/udp')."""
    spec, _, proto = text.partition("/")
    proto = proto or "tcp"
    parts = spec.rsplit(":", 2)
    if len(parts) == 1:
        ip, host, cont = "", "", parts[0]
    elif len(parts) == 2:
        ip, host, cont = "", parts[0], parts[1]
    else:
        ip, host, cont = parts
    if not cont.isdigit() or (host and not host.isdigit()) or proto not in ("tcp", "udp", "sctp"):
        raise ProviderError(f"port {text!r} is not [IP:][HOST:]CONTAINER[/PROTO]")
    return ip.strip("[]"), host, f"{cont}/{proto}"


def desired_ports(spec: ContainerSpec) -> list[str]:
    return sorted(f"{ip}:{host}:{cont}" for ip, host, cont in map(parse_port, spec.ports or []))


def observed_ports(attrs: dict[str, Any]) -> list[str]:
    bindings = (attrs.get("HostConfig") or {}).get("PortBindings") or {}
    out = []
    for cont, binds in bindings.items():
        for b in binds or [{}]:
            out.append(f"{b.get('HostIp', '')}:{b.get('HostPort', '')}:{cont}")
    return sorted(out)


def healthcheck(spec: ContainerSpec) -> dict[str, Any] | None:
    h = spec.healthcheck
    if h is None:
        return None
    return {"Test": list(h.test), "Interval": int(h.interval * _NS),
            "Timeout": int(h.timeout * _NS), "Retries": h.retries,
            "StartPeriod": int(h.start_period * _NS)}


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


def drifted(spec: ContainerSpec, attrs: dict[str, Any], image_id: str | None
            ) -> list[tuple[str, Any, Any]]:
    """(field, observed, desired) for each part of the configuration that differs."""
    config = attrs.get("Config") or {}
    host = attrs.get("HostConfig") or {}
    out: list[tuple[str, Any, Any]] = []
    if image_id is not None and attrs.get("Image") != image_id:
        out.append(("image", _short(attrs.get("Image")), _short(image_id)))
    elif config.get("Image") != spec.image:
        out.append(("image", config.get("Image"), spec.image))
    if spec.command is not None and list(config.get("Cmd") or []) != list(spec.command):
        out.append(("command", config.get("Cmd"), list(spec.command)))
    env = dict(e.split("=", 1) for e in config.get("Env") or [] if "=" in e)
    want_env = spec.env or {}
    if any(env.get(k) != v for k, v in want_env.items()):
        names = ", ".join(sorted(k for k, v in want_env.items() if env.get(k) != v))
        out.append(("env", f"{names} differ", "as declared"))  # values may be secrets
    if observed_ports(attrs) != desired_ports(spec):
        out.append(("ports", observed_ports(attrs), desired_ports(spec)))
    if sorted(host.get("Binds") or []) != sorted(spec.volumes or []):
        out.append(("volumes", sorted(host.get("Binds") or []), sorted(spec.volumes or [])))
    policy = ((host.get("RestartPolicy") or {}).get("Name") or "no")
    if spec.restart_policy is not None and policy != spec.restart_policy:
        out.append(("restart_policy", policy, spec.restart_policy))
    labels = config.get("Labels") or {}
    if any(labels.get(k) != v for k, v in (spec.labels or {}).items()):
        out.append(("labels", {k: labels.get(k) for k in spec.labels or {}}, spec.labels))
    want_hc = healthcheck(spec)
    if want_hc is not None and _nonzero(config.get("Healthcheck") or {}) != _nonzero(want_hc):
        out.append(("healthcheck", config.get("Healthcheck"), want_hc))
    if not out and labels.get(HASH_LABEL) != config_hash(spec):
        out.append(("config", labels.get(HASH_LABEL), config_hash(spec)))
    return out


def _nonzero(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if v}  # Docker drops zero durations


def _short(image_id: Any) -> Any:
    return image_id.removeprefix("sha256:")[:12] if isinstance(image_id, str) else image_id
