"""`containers:` — Docker containers (provider arrives with the Docker work)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from agent.playbook.models.base import Resource, RestartBudget, Spec
from agent.playbook.types import Duration


class Healthcheck(Spec):
    """Docker healthcheck of the container."""

    test: list[str] = Field(min_length=1, examples=[["CMD", "wget", "-q", "-O-", "http://127.0.0.1/"]])
    interval: Duration = Field(30.0, examples=["30s"])
    timeout: Duration = Field(10.0, examples=["10s"])
    retries: int = Field(3, ge=1)
    start_period: Duration = Field(0.0, examples=["10s"])


class Build(Spec):
    """Build the image from a local context directory (no registry is needed)."""

    context: str = Field(examples=["./api"])
    dockerfile: str | None = Field(None, examples=["Dockerfile"])


class ContainerSpec(Resource):
    """A Docker container; drift in its configuration recreates it."""

    image: str = Field(min_length=1, examples=["rezapp-api:latest"])
    state: Literal["running", "stopped", "absent", "restarted"] = Field("running")
    command: list[str] | None = Field(None, examples=[["gunicorn", "app:app"]])
    env: dict[str, str] | None = None
    ports: list[str] | None = Field(None, examples=[["127.0.0.1:5001:5001"]])
    volumes: list[str] | None = Field(None, examples=[["/srv/data:/data:ro"]])
    restart_policy: Literal["no", "always", "unless-stopped", "on-failure"] | None = None
    labels: dict[str, str] | None = None
    healthcheck: Healthcheck | None = None
    build: Build | None = Field(None, description="Build the image from a local context.")
    load: str | None = Field(None, description="Load the image from a tar file.")
    restart: RestartBudget | None = Field(None, description="Budget for automatic restarts.")

    @model_validator(mode="after")
    def _check(self) -> ContainerSpec:
        if self.build and self.load:
            raise ValueError("give at most one of build, load")
        return self
