"""`services:` — systemd units: state, enablement, masking, unit file and drop-ins."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from agent.playbook.models.base import Resource, RestartBudget

# The suffixes systemd knows; a name without one of them means NAME.service (as systemctl).
UNIT_SUFFIXES = (".service", ".socket", ".timer", ".target", ".path", ".mount", ".automount",
                 ".swap", ".slice", ".scope", ".device")
_UNIT_NAME = re.compile(r"^[A-Za-z0-9:_.\\@-]+$")
_DROPIN_NAME = re.compile(r"^[A-Za-z0-9:_.@-]+$")


def unit_name(name: str) -> str:
    """'nginx' -> 'nginx.service'; 'php8.2-fpm' -> 'php8.2-fpm.service'; 'a.timer' stays."""
    return name if name.endswith(UNIT_SUFFIXES) else name + ".service"


def dropin_file_name(name: str) -> str:
    """'limits' -> 'limits.conf' (a name given with .conf keeps it)."""
    return name if name.endswith(".conf") else name + ".conf"


class ServiceSpec(Resource):
    """A systemd unit: its state, enablement, masking, unit file and drop-ins."""

    name: str = Field(
        min_length=1, max_length=255,
        description="Unit name; without a known suffix (.service, .timer, .socket, ...) it "
        "means NAME.service, as with systemctl.", examples=["nginx", "backup.timer"])
    state: Literal["running", "stopped", "restarted"] | None = Field(
        None, description="running: started when it is not active; stopped: stopped when "
        "it is; restarted: restarted on every apply. Unset: unmanaged.",
        examples=["running"])
    enabled: bool | None = Field(
        None, description="Started at boot (true: enabled; false: disabled). Units without "
        "an [Install] section (static) cannot be enabled. Unset: unmanaged.", examples=[True])
    masked: bool | None = Field(
        None, description="Masked: linked to /dev/null so nothing can start it. false "
        "unmasks. Unset: unmanaged.", examples=[False])
    unit_file: str | None = Field(
        None, description="Full content of /etc/systemd/system/UNIT, which the agent then "
        "owns; a change is written and systemd reloaded. A running unit keeps its old "
        "settings until restarted: add notify: [services:NAME] to restart on a change.",
        examples=["[Unit]\nDescription=App\n\n[Service]\nExecStart=/usr/bin/app\n\n"
                  "[Install]\nWantedBy=multi-user.target\n"])
    dropins: dict[str, str | None] | None = Field(
        None, description="Drop-ins /etc/systemd/system/UNIT.d/NAME.conf by NAME, with their "
        "content; null removes one. Drop-ins not named here are left alone.",
        examples=[{"limits": "[Service]\nLimitNOFILE=65536\n", "old-override": None}])
    restart: RestartBudget = Field(
        default_factory=RestartBudget,
        description="Budget for the starts and restarts the agent does on its own (default "
        "3 in 10m, backoff 5s). Past it the agent stops acting and the resource fails.",
        examples=[{"max": 3, "within": "10m", "backoff": "5s"}])

    @property
    def unit(self) -> str:
        return unit_name(self.name)

    @field_validator("name")
    @classmethod
    def _unit_name(cls, name: str) -> str:
        if not _UNIT_NAME.match(name) or name.startswith((".", "-")):
            raise ValueError(f"{name!r} is not a systemd unit name (expected letters, digits "
                             "and :_.@-, e.g. nginx or backup.timer)")
        return name

    @field_validator("dropins")
    @classmethod
    def _dropin_names(cls, dropins: dict[str, str | None] | None) -> dict[str, str | None] | None:
        for name in dropins or {}:
            if not _DROPIN_NAME.match(name) or name.startswith("."):
                raise ValueError(f"drop-in name {name!r} is not a plain file name (expected "
                                 "letters, digits and :_.@-, e.g. limits)")
        return dropins

    @model_validator(mode="after")
    def _masked_conflicts(self) -> ServiceSpec:
        if self.masked:
            clash = [f"state: {self.state}" if self.state in ("running", "restarted") else "",
                     "enabled: true" if self.enabled else "",
                     "unit_file" if self.unit_file is not None else ""]
            if any(clash):
                raise ValueError("masked: true cannot go with " + ", ".join(c for c in clash if c)
                                 + " (a masked unit cannot start, be enabled or have a unit file)")
        return self
