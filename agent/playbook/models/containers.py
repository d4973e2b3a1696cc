"""`containers:` — Docker containers: image, configuration and state; drift recreates them."""

from __future__ import annotations

import ipaddress
import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from agent.playbook.models.base import Resource, RestartBudget, Spec
from agent.playbook.types import Duration

# Docker's own rule for container names (daemon/names.go: restrictedNamePattern).
_CONTAINER_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]+$")
_VOLUME_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]+$")
_VOLUME_MODES = {"ro", "rw", "z", "Z", "nocopy", "shared", "slave", "private", "rshared",
                 "rslave", "rprivate", "consistent", "cached", "delegated"}
_PORT_HINT = "expected [IP:][HOST:]CONTAINER[/tcp|udp|sctp], e.g. 127.0.0.1:8080:80 or 53:53/udp"
RESERVED_LABEL_PREFIX = "opsagent."  # the agent's own labels (managed, config-hash)


def parse_port(text: str) -> tuple[str, str, str]:
    """'127.0.0.1:8080:80/udp' -> ('127.0.0.1', '8080', '80/udp'); '[::1]:80:80' keeps '::1'.

    An empty HOST ('127.0.0.1::80', or '80' alone) lets Docker choose the host port.
    """
    spec, _, proto = text.partition("/")
    parts = spec.rsplit(":", 2)
    ip, host, cont = [""] * (3 - len(parts)) + parts
    if ip.startswith("[") and ip.endswith("]"):
        ip = ip[1:-1]
    elif ":" in ip:
        what = "an IPv6 address goes in brackets" if _is_ip(ip) else "too many colons"
        raise ValueError(f"port {text!r}: {what} ({_PORT_HINT}, [::1]:8080:80)")
    if ip and not _is_ip(ip):
        raise ValueError(f"port {text!r}: {ip!r} is not an IP address ({_PORT_HINT})")
    if not (_port_number(cont) and (not host or _port_number(host))
            and (proto or "tcp") in ("tcp", "udp", "sctp")):
        raise ValueError(f"port {text!r} is not valid ({_PORT_HINT})")
    return ip, host, f"{cont}/{proto or 'tcp'}"


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _port_number(text: str) -> bool:
    return text.isdigit() and 0 < int(text) < 65536


class Healthcheck(Spec):
    """Docker healthcheck of the container; a container reported unhealthy is restarted
    within its restart budget and, past it, fails with the probe's output."""

    test: list[str] = Field(
        min_length=1, description="The probe: [CMD, argv...] runs a program, [CMD-SHELL, "
        "'command'] runs it with the image's /bin/sh, [NONE] disables the image's own check.",
        examples=[["CMD", "wget", "-q", "-O-", "http://127.0.0.1/"]])
    interval: Duration = Field(30.0, description="Time between probes.", examples=["30s"])
    timeout: Duration = Field(10.0, description="A probe running longer fails.",
                              examples=["10s"])
    retries: int = Field(3, ge=1, description="Consecutive failures that make it unhealthy.",
                         examples=[3])
    start_period: Duration = Field(0.0, description="Start-up grace: failures in it do not "
                                   "count.", examples=["10s"])

    @field_validator("test")
    @classmethod
    def _test(cls, test: list[str]) -> list[str]:
        kind = test[0]
        if kind not in ("CMD", "CMD-SHELL", "NONE"):
            raise ValueError(f"a healthcheck test starts with CMD, CMD-SHELL or NONE, not "
                             f"{kind!r} (expected e.g. [CMD, wget, -q, -O-, http://127.0.0.1/])")
        if kind == "CMD-SHELL" and len(test) != 2:
            raise ValueError("CMD-SHELL takes one shell command (expected [CMD-SHELL, 'cmd'])")
        if kind == "CMD" and len(test) < 2:
            raise ValueError("CMD needs the program to run (expected [CMD, program, args...])")
        if kind == "NONE" and len(test) != 1:
            raise ValueError("NONE takes no arguments (expected [NONE])")
        return test


class Build(Spec):
    """Build the image from a local context directory (no registry is needed)."""

    context: str = Field(min_length=1, description="Context directory; a relative path is "
                         "relative to the playbook's directory.", examples=["./api"])
    dockerfile: str | None = Field(None, description="Dockerfile inside the context "
                                   "(default: Dockerfile).", examples=["Dockerfile"])


class ContainerSpec(Resource):
    """A Docker container. A change to image, command, env, ports, volumes, restart policy,
    labels or healthcheck recreates it (the agent labels what it creates with a hash of this
    configuration, as compose does); its state is then brought to `state`."""

    name: str = Field(min_length=2, max_length=255,
                      description="Container name (letters, digits and _.-, first a letter or "
                      "digit).", examples=["rezapp-api"])
    image: str = Field(min_length=1, description="Image reference. No registry is used: the "
                       "image must be on the host, or come from build: or load:. A new image "
                       "under the same tag recreates the container.",
                       examples=["rezapp-api:latest"])
    state: Literal["running", "stopped", "absent", "restarted"] = Field(
        "running", description="running: created and started when needed; stopped: created "
        "but not running; absent: removed; restarted: running, and restarted on every apply.",
        examples=["running"])
    command: list[str] | None = Field(
        None, min_length=1, description="argv replacing the image's CMD (no shell). Unset: "
        "the image's CMD.", examples=[["gunicorn", "-b", "0.0.0.0:5001", "app:app"]])
    env: dict[str, str] | None = Field(
        None, description="Environment variables, added to the image's. Values are never "
        "shown in plans or reports.", examples=[{"APP_ENV": "production"}])
    ports: list[str] | None = Field(
        None, description="Published ports, [IP:][HOST:]CONTAINER[/tcp|udp|sctp]; bind to "
        "127.0.0.1 to keep a port off the network.",
        examples=[["127.0.0.1:5001:5001", "53:53/udp"]])
    volumes: list[str] | None = Field(
        None, description="Mounts, SOURCE:TARGET[:ro|rw,...]: SOURCE is an absolute host path "
        "or a named volume; TARGET an absolute path in the container.",
        examples=[["/srv/data:/data:ro", "app-cache:/cache"]])
    restart_policy: Literal["no", "always", "unless-stopped", "on-failure"] | None = Field(
        None, description="Docker's own restart policy. Unset: Docker's default (no).",
        examples=["unless-stopped"])
    labels: dict[str, str] | None = Field(
        None, description="Container labels (names starting with opsagent. are the agent's).",
        examples=[{"com.example.team": "payments"}])
    healthcheck: Healthcheck | None = Field(
        None, description="Health probe. Unset: the image's own healthcheck, if any.")
    build: Build | None = Field(
        None, description="Build the image from a local context when it is not on the host.",
        examples=[{"context": "./api"}])
    load: str | None = Field(
        None, min_length=1, description="Load the image from this tar (made by docker save) "
        "when it is not on the host; relative to the playbook's directory.",
        examples=["images/rezapp-api.tar"])
    restart: RestartBudget = Field(
        default_factory=RestartBudget,
        description="Budget for the starts and restarts the agent does on its own (a stopped "
        "container started, an unhealthy one restarted, state: restarted; default 3 in 10m, "
        "backoff 5s). Past it the agent stops acting and the resource fails.",
        examples=[{"max": 3, "within": "10m", "backoff": "5s"}])

    @field_validator("name")
    @classmethod
    def _name(cls, name: str) -> str:
        if not _CONTAINER_NAME.match(name):
            raise ValueError(f"{name!r} is not a container name (expected letters, digits and "
                             "_.-, starting with a letter or digit, e.g. rezapp-api)")
        return name

    @field_validator("env")
    @classmethod
    def _env(cls, env: dict[str, str] | None) -> dict[str, str] | None:
        for key in env or {}:
            if not key or "=" in key or "\0" in key:
                raise ValueError(f"environment variable name {key!r} is not valid (expected "
                                 "a name without '=', e.g. APP_ENV)")
        return env

    @field_validator("ports")
    @classmethod
    def _ports(cls, ports: list[str] | None) -> list[str] | None:
        for p in ports or []:
            parse_port(p)
        return ports

    @field_validator("volumes")
    @classmethod
    def _volumes(cls, volumes: list[str] | None) -> list[str] | None:
        for v in volumes or []:
            parts = v.split(":")
            if len(parts) not in (2, 3):
                raise ValueError(f"volume {v!r} is not SOURCE:TARGET[:MODE] (expected e.g. "
                                 "/srv/data:/data:ro)")
            source, target = parts[0], parts[1]
            if not (source.startswith("/") or _VOLUME_NAME.match(source)):
                raise ValueError(f"volume source {source!r} is neither an absolute path nor a "
                                 "volume name (expected e.g. /srv/data or app-data)")
            if not target.startswith("/"):
                raise ValueError(f"volume target {target!r} is not an absolute path (expected "
                                 "e.g. /data)")
            bad = [m for m in (parts[2].split(",") if len(parts) == 3 else []) if m not in
                   _VOLUME_MODES]
            if bad:
                raise ValueError(f"volume {v!r} has unknown options {', '.join(bad)} (expected "
                                 "ro, rw, z, Z, nocopy or a propagation like rshared)")
        return volumes

    @field_validator("labels")
    @classmethod
    def _labels(cls, labels: dict[str, str] | None) -> dict[str, str] | None:
        for key in labels or {}:
            if key.startswith(RESERVED_LABEL_PREFIX):
                raise ValueError(f"label {key!r} is reserved: names starting with "
                                 f"{RESERVED_LABEL_PREFIX} are the agent's own (expected "
                                 "another name, e.g. com.example.team)")
        return labels

    @model_validator(mode="after")
    def _check(self) -> ContainerSpec:
        if self.build and self.load:
            raise ValueError("give at most one of build, load (expected one way to get the "
                             "image)")
        return self
