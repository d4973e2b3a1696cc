"""Typed models of the playbook language; the JSON Schema is generated from them.

The names below are imported from their modules on first use, so a program that needs one
kind of model (a runbook's, on a fleet host) does not build them all."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agent.playbook.models.audits import AuditSpec
    from agent.playbook.models.backups import BackupSpec
    from agent.playbook.models.base import Resource, RestartBudget, Spec
    from agent.playbook.models.checks import CheckSpec
    from agent.playbook.models.containers import ContainerSpec
    from agent.playbook.models.dbmaint import DbMaintenanceSpec
    from agent.playbook.models.files import FileSpec
    from agent.playbook.models.notifiers import Notifier
    from agent.playbook.models.playbook import OBSERVED_KINDS, RESOURCE_KINDS, Playbook
    from agent.playbook.models.processes import ProcessMatch, ProcessSpec, StopPolicy
    from agent.playbook.models.rules import Action, ThresholdSpec, WatchSpec
    from agent.playbook.models.services import ServiceSpec

_WHERE = {
    "AuditSpec": "audits", "BackupSpec": "backups", "Resource": "base", "RestartBudget": "base",
    "Spec": "base", "CheckSpec": "checks", "ContainerSpec": "containers",
    "DbMaintenanceSpec": "dbmaint", "FileSpec": "files", "Notifier": "notifiers",
    "OBSERVED_KINDS": "playbook", "RESOURCE_KINDS": "playbook", "Playbook": "playbook",
    "ProcessMatch": "processes", "ProcessSpec": "processes", "StopPolicy": "processes",
    "Action": "rules", "ThresholdSpec": "rules", "WatchSpec": "rules",
    "ServiceSpec": "services",
}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


__all__ = [
    "OBSERVED_KINDS", "RESOURCE_KINDS", "Action", "AuditSpec", "BackupSpec", "CheckSpec",
    "ContainerSpec", "DbMaintenanceSpec", "FileSpec", "Notifier", "Playbook", "ProcessMatch",
    "ProcessSpec", "Resource", "RestartBudget", "Spec", "StopPolicy", "ServiceSpec",
    "ThresholdSpec", "WatchSpec",
]
