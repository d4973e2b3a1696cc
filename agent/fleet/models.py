"""Runbooks: typed parameters, ordered steps, confirm points (schemas/runbook.schema.json).

A runbook is read in two stages. ``RunbookFile`` is the document as written: its parameters
are declared and checked, and each step names exactly one action. The action's body may hold
templates (``{{ service }}``), so it is checked as ``StepSpec`` only once it is bound: rendered
with the run's parameters and one host's inventory variables (agent.fleet.runbook.bind), on
the controller, for every targeted host, before anything runs anywhere.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from agent.playbook.models.base import Spec
from agent.playbook.models.checks import Probes
from agent.playbook.models.notifiers import Notifier
from agent.playbook.types import Duration

OnFailure = Literal["stop", "continue", "rollback"]
PARAM_TYPES = ("string", "int", "number", "bool", "ip", "network", "duration")
ACTIONS = ("check", "restart", "block_ip", "unblock_ip", "run", "rollback", "backup", "scale",
           "notify", "snapshot", "confirm")
STEP_KEYS = ("name", "on_failure", "timeout", *ACTIONS)
_NAME = r"^[A-Za-z0-9_.@:-]+$"


def _address(v: str) -> str:
    try:
        return str(ipaddress.ip_network(v, strict=False)) if "/" in v else str(
            ipaddress.ip_address(v))
    except ValueError:
        raise ValueError(f"{v!r} is not an IP address or network") from None


class ParamSpec(Spec):
    """One parameter: its type, whether it is required, and what values it may take."""

    type: Literal["string", "int", "number", "bool", "ip", "network", "duration"] = Field(
        "string", description="ip: one IPv4/IPv6 address; network: an address or CIDR; "
        "duration: 30s, 5m, 1h.")
    description: str | None = None
    required: bool = Field(True, description="Whether -e must give it (false when a default "
                           "is set).")
    default: Any = None
    pattern: str | None = Field(None, description="A string's regex (matched whole).",
                                examples=["^[a-z0-9@._-]+$"])
    choices: list[Any] | None = Field(None, min_length=1)
    min: float | None = None
    max: float | None = None
    max_length: int | None = Field(None, ge=1)

    @field_validator("pattern")
    @classmethod
    def _regex(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                re.compile(v)
            except re.error as e:
                raise ValueError(f"pattern {v!r} is not a valid regex: {e}") from None
        return v

    @model_validator(mode="after")
    def _fits(self) -> ParamSpec:
        if self.pattern is not None and self.type != "string":
            raise ValueError("pattern applies to type: string only")
        if (self.min is not None or self.max is not None) and self.type not in ("int", "number"):
            raise ValueError("min and max apply to type: int or number only")
        return self


class CheckStep(Probes):
    """A health probe that must pass (as in a playbook's checks:), retried while it fails."""

    retries: int = Field(0, ge=0, le=100, description="Tries again this many times.")
    delay: Duration = Field(2.0, description="Wait between tries.", examples=["2s"])


class RestartStep(Spec):
    """Restart a systemd unit or a Docker container (and wait until it is up)."""

    service: str | None = Field(None, pattern=_NAME, examples=["nginx"])
    container: str | None = Field(None, pattern=_NAME, examples=["rezapp-api"])

    @model_validator(mode="after")
    def _one(self) -> RestartStep:
        if (self.service is None) == (self.container is None):
            raise ValueError("give exactly one of service, container")
        return self


class BlockStep(Spec):
    """Block an address or network in nftables (table inet opsagent), guarded as watches are."""

    ip: str = Field(examples=["203.0.113.7"])
    duration: Duration = Field(3600.0, examples=["1h"])

    _addr = field_validator("ip")(lambda v: _address(v))


class UnblockStep(Spec):
    ip: str = Field(examples=["203.0.113.7"])

    _addr = field_validator("ip")(lambda v: _address(v))


class RunStep(Spec):
    """A command as an argv list (never a shell string); `undo` runs on rollback."""

    argv: list[str] = Field(min_length=1, examples=[["systemctl", "reload", "nginx"]])
    timeout: Duration = Field(60.0, examples=["60s"])
    undo: list[str] | None = Field(None, min_length=1, description="The command that undoes "
                                   "this one, run if a later step fails under on_failure: "
                                   "rollback.")
    changes: bool = Field(True, description="Whether the command changes the host (false: "
                          "it runs under --check too, as a read-only probe).")


class RollbackStep(Spec):
    """Re-create a container on its previous image (or `to`), keeping its configuration."""

    container: str = Field(pattern=_NAME, examples=["rezapp-api"])
    to: str | None = Field(None, description="The image to go back to; default: the image "
                           "the container ran before its current one.",
                           examples=["rezapp-api:1.4.2"])


class BackupStep(Spec):
    """Run a playbook's backup now (the same run, verify and prune as the scheduled job)."""

    name: str = Field(pattern=_NAME, examples=["db-daily"])
    playbook: str = Field(description="The playbook on the host that declares it.",
                          examples=["/etc/opsagent/playbooks/db.yaml"])


class ScaleStep(Spec):
    """Set how many containers a Docker Compose service runs (by compose's labels)."""

    project: str = Field(pattern=_NAME, examples=["shop"])
    service: str = Field(pattern=_NAME, examples=["worker"])
    replicas: int = Field(ge=0, le=100, examples=[4])


class NotifyStep(Spec):
    notifier: str = Field(description="A name under the runbook's notifiers:.",
                          examples=["ops"])
    message: str = Field(min_length=1, examples=["{{ service }} restarted on {{ host }}"])
    severity: Literal["info", "warning", "critical"] = "warning"


class SnapshotStep(Spec):
    """Evidence: sockets, the busiest processes and log tails, kept in the incident record."""

    sockets: bool = True
    processes: bool = True
    units: list[Annotated[str, Field(pattern=_NAME)]] = Field(
        default_factory=list, description="Journal tails of these units.")
    containers: list[Annotated[str, Field(pattern=_NAME)]] = Field(
        default_factory=list, description="Log tails of these.")
    files: list[Annotated[str, Field(pattern=r"^/")]] = Field(
        default_factory=list, description="Tails of these log files (absolute paths).")
    lines: int = Field(50, ge=1, le=10_000, description="Lines per tail.")


class StepSpec(Spec):
    """One step, bound (templates rendered): exactly one action."""

    name: str | None = Field(None, min_length=1)
    on_failure: OnFailure | None = Field(None, description="Overrides the runbook's.")
    timeout: Duration | None = Field(None, description="Upper bound for this step on a host.")
    check: CheckStep | None = None
    restart: RestartStep | None = None
    block_ip: BlockStep | None = None
    unblock_ip: UnblockStep | None = None
    run: RunStep | None = None
    rollback: RollbackStep | None = None
    backup: BackupStep | None = None
    scale: ScaleStep | None = None
    notify: NotifyStep | None = None
    snapshot: SnapshotStep | None = None
    confirm: str | None = Field(None, min_length=1, description="Stop here and ask the "
                                "operator (skipped with --yes); the answer holds for every "
                                "host.", examples=["Block {{ ip }} on every web host?"])

    @model_validator(mode="after")
    def _one(self) -> StepSpec:
        given = [a for a in ACTIONS if getattr(self, a) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one action: {', '.join(ACTIONS)}")
        return self

    @property
    def action(self) -> str:
        return next(a for a in ACTIONS if getattr(self, a) is not None)

    @property
    def title(self) -> str:
        return self.name or self.action


def check_serial(v: int | str | list[int | str] | None) -> Any:
    """Ansible's serial: host counts (at least 1) and percentages; ValueError otherwise."""
    items = v if isinstance(v, list) else [] if v is None else [v]
    for item in items:
        if isinstance(item, int):
            if item < 1:
                raise ValueError("a wave has at least 1 host")
        elif not re.fullmatch(r"([1-9][0-9]?|100)(\.[0-9]+)?%", item):
            raise ValueError(f"serial {item!r} is neither a host count nor a percentage "
                             "(expected e.g. 2 or 10%)")
    return v


class Runbook(Spec):
    """An incident runbook: parameters, then steps run in order on each targeted host."""

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$", examples=["service-down"])
    description: str | None = None
    hosts: str = Field("all", description="Inventory pattern the runbook targets (--limit "
                       "narrows it).", examples=["web"])
    params: dict[str, ParamSpec] = Field(default_factory=dict,
                                         examples=[{"ip": {"type": "ip"}}])
    vars: dict[str, Any] = Field(default_factory=dict)
    serial: int | str | list[int | str] | None = Field(
        None, description="Rolling waves: a host count, a percentage, or a list of them "
        "(the last repeats), as Ansible's serial.", examples=[[1, "10%", "50%"], 2])
    max_fail_percentage: float | None = Field(
        None, ge=0, le=100, description="Stop before the next wave when more than this share "
        "of a wave's hosts failed; default: stop only when all of a wave failed.")
    on_failure: OnFailure = Field("stop", description="stop: no further steps on that host; "
                                  "continue; rollback: undo the host's completed steps.")
    notifiers: dict[str, Notifier] = Field(default_factory=dict)
    steps: list[StepSpec] = Field(min_length=1)
    followups: list[str] = Field(default_factory=list, description="Post-incident follow-ups "
                                 "listed in the incident report.")

    @field_validator("params")
    @classmethod
    def _param_names(cls, v: dict[str, ParamSpec]) -> dict[str, ParamSpec]:
        for name in v:
            if not name.isidentifier():
                raise ValueError(f"parameter name {name!r} must be an identifier")
        return v

    _serial = field_validator("serial")(lambda v: check_serial(v))


class ParsedStep:
    """The model of each action's body, for checking one body on its own."""

    MODELS: dict[str, type[Spec]] = {
        "check": CheckStep, "restart": RestartStep, "block_ip": BlockStep,
        "unblock_ip": UnblockStep, "run": RunStep, "rollback": RollbackStep,
        "backup": BackupStep, "scale": ScaleStep, "notify": NotifyStep,
        "snapshot": SnapshotStep}

    @classmethod
    def body(cls, action: str, value: Any) -> Any:
        if action == "confirm":
            if not isinstance(value, str) or not value:
                raise ValueError("confirm: a non-empty question")
            return value
        return cls.MODELS[action].model_validate(value)
