"""The root of a playbook: metadata, vars, and one list per resource kind."""

from __future__ import annotations

import ipaddress
from typing import Any

from pydantic import Field, field_validator

from agent.playbook.models.alerting import EscalationStep, MaintenanceWindow
from agent.playbook.models.audits import AuditSpec
from agent.playbook.models.backups import BackupSpec
from agent.playbook.models.base import Spec
from agent.playbook.models.checks import CheckSpec
from agent.playbook.models.containers import ContainerSpec
from agent.playbook.models.dbmaint import DbMaintenanceSpec
from agent.playbook.models.files import FileSpec
from agent.playbook.models.notifiers import Notifier
from agent.playbook.models.processes import ProcessSpec
from agent.playbook.models.rules import ThresholdSpec, WatchSpec
from agent.playbook.models.services import ServiceSpec

# Resource kinds the engine reconciles, in the order it visits them: files first (configs),
# then what runs from them.
RESOURCE_KINDS = ("files", "processes", "services", "containers")
# Kinds that are not reconciled but evaluated (probes, rules, schedules).
OBSERVED_KINDS = ("checks", "thresholds", "watches", "backups")


class Playbook(Spec):
    """Desired state of a host."""

    name: str = Field(min_length=1, description="Name of the playbook.", examples=["web-tier"])
    description: str | None = None
    hosts: str | None = Field(None, description="Inventory pattern for fleet runs.",
                              examples=["web"])
    vars: dict[str, Any] = Field(default_factory=dict,
                                 description="Template variables; -e k=v overrides them.",
                                 examples=[{"api_port": 5001}])
    allowlist: list[str] = Field(default_factory=list,
                                 description="Addresses and networks never blocked.",
                                 examples=[["10.0.0.0/8"]])
    files: list[FileSpec] = Field(default_factory=list)
    processes: list[ProcessSpec] = Field(default_factory=list)
    services: list[ServiceSpec] = Field(default_factory=list)
    containers: list[ContainerSpec] = Field(default_factory=list)
    checks: list[CheckSpec] = Field(default_factory=list)
    thresholds: list[ThresholdSpec] = Field(default_factory=list)
    watches: list[WatchSpec] = Field(default_factory=list)
    backups: list[BackupSpec] = Field(default_factory=list)
    audits: list[AuditSpec] = Field(
        default_factory=list, description="Security audits run on an interval: world-writable "
        "paths, readable secrets, unexpected listening ports, expiring certificates.")
    db_maintenance: list[DbMaintenanceSpec] = Field(
        default_factory=list, description="PostgreSQL upkeep on a schedule: batched purges of "
        "old rows, VACUUM (ANALYZE), REINDEX (optionally only inside a maintenance window) and "
        "a report of slow queries, unused indexes and dead rows; `opsagent db maintain NAME`.")
    notifiers: dict[str, Notifier] = Field(default_factory=dict)
    escalations: dict[str, list[EscalationStep]] = Field(
        default_factory=dict, description="Escalation policies: ordered steps, each a delay "
        "and the notifiers it adds, stopped by resolve or `opsagent alert ack ID`.",
        examples=[{"high-priority": [{"after": "0s", "notify": ["slack"]},
                                     {"after": "5m", "notify": ["slack", "pagerduty"]}]}])
    maintenance: list[MaintenanceWindow] = Field(
        default_factory=list, description="Windows muting notifications and automatic "
        "actions.")

    @field_validator("allowlist")
    @classmethod
    def _networks(cls, v: list[str]) -> list[str]:
        for item in v:
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError:
                raise ValueError(f"{item!r} is not an IP address or network "
                                 "(expected e.g. 203.0.113.7 or 10.0.0.0/8)") from None
        return v
