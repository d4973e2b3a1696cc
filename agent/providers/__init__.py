"""Providers by resource kind, imported only when a playbook uses the kind."""

from __future__ import annotations

import importlib
from typing import cast

from agent.providers.base import Provider

# One module per kind. A kind missing here is reported as skipped, never ignored.
REGISTRY: dict[str, str] = {
    "files": "agent.providers.files",
    "processes": "agent.providers.processes",
    "services": "agent.providers.services",
    "containers": "agent.providers.containers",
}

# Said in the report for kinds a one-off run does not reconcile (and those not built yet).
PENDING: dict[str, str] = {
    "checks": "health checks run in the agent service (`opsagent check` runs them once)",
    "thresholds": "thresholds are evaluated by the agent service (`opsagent run`)",
    "watches": "log watches run in the agent service (`opsagent watch test` tries them on a "
               "file)",
    "backups": "backups run on their schedule in the agent service (`opsagent backup run` "
               "runs one now)",
}


def load(kind: str) -> Provider | None:
    module = REGISTRY.get(kind)
    if module is None:
        return None
    return cast(Provider, importlib.import_module(module))
