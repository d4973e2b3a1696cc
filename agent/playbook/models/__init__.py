"""Typed models of the playbook language; the JSON Schema is generated from them."""

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

__all__ = [
    "OBSERVED_KINDS", "RESOURCE_KINDS", "Action", "AuditSpec", "BackupSpec", "CheckSpec",
    "ContainerSpec", "DbMaintenanceSpec", "FileSpec", "Notifier", "Playbook", "ProcessMatch",
    "ProcessSpec", "Resource", "RestartBudget", "Spec", "StopPolicy", "ServiceSpec",
    "ThresholdSpec", "WatchSpec",
]
