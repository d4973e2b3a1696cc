"""`services:` — systemd units (provider arrives with the systemd work)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from agent.playbook.models.base import Resource, RestartBudget


class ServiceSpec(Resource):
    """A systemd unit: its state, enablement, masking, unit file and drop-ins."""

    state: Literal["running", "stopped", "restarted"] | None = Field(
        None, description="running, stopped, or restarted (every run). Unset: unmanaged.")
    enabled: bool | None = Field(None, description="Started at boot. Unset: unmanaged.")
    masked: bool | None = Field(None, description="Masked (cannot be started). Unset: unmanaged.")
    unit_file: str | None = Field(None, description="Full content of the unit file the agent owns.",
                                  examples=["[Service]\nExecStart=/usr/bin/app\n"])
    dropins: dict[str, str] | None = Field(
        None, description="Drop-in files by name (without .conf) and their content.",
        examples=[{"limits": "[Service]\nLimitNOFILE=65536\n"}])
    restart: RestartBudget | None = Field(None, description="Budget for automatic restarts.")
