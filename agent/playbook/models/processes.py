"""`processes:` — programs matched with psutil, started and stopped by the agent."""

from __future__ import annotations

import signal
from typing import Literal

from pydantic import Field, field_validator, model_validator

from agent.playbook.models.base import Resource, RestartBudget, Spec
from agent.playbook.types import Duration


class ProcessMatch(Spec):
    """How to recognise the process; every criterion given must hold."""

    name: str | None = Field(None, description="Process name (comm) equal to this.",
                             examples=["nginx"])
    cmdline: str | None = Field(None, description="Text contained in the joined command line.",
                                examples=["worker.py"])
    pidfile: str | None = Field(None, description="File holding the pid of the process.",
                                examples=["/run/worker.pid"])
    user: str | None = Field(None, description="Owning user name.", examples=["www-data"])

    @model_validator(mode="after")
    def _some(self) -> ProcessMatch:
        if not (self.name or self.cmdline or self.pidfile):
            raise ValueError("give at least one of name, cmdline, pidfile")
        return self


class StopPolicy(Spec):
    """How the agent stops the process: a signal, then SIGKILL after the timeout."""

    signal: str = Field("TERM", description="Signal name sent first.", examples=["TERM", "INT"])
    timeout: Duration = Field(10.0, description="Wait before SIGKILL.", examples=["10s"])

    @field_validator("signal")
    @classmethod
    def _signal(cls, v: str) -> str:
        name = v.upper().removeprefix("SIG")
        if "SIG" + name not in signal.Signals.__members__:
            raise ValueError(f"unknown signal {v!r} (expected e.g. TERM, INT, HUP, QUIT)")
        return name


class ProcessSpec(Resource):
    """A process that must be running (started by the agent if not) or absent."""

    match: ProcessMatch = Field(description="How the running process is recognised.")
    state: Literal["running", "absent"] = Field("running", description="running or absent.")
    start: list[str] | None = Field(
        None, min_length=1, description="argv to start it (no shell).",
        examples=[["/usr/local/bin/worker", "--queue", "default"]])
    env: dict[str, str] | None = Field(None,
                                       description="Extra environment for the started process.")
    cwd: str | None = Field(None, description="Working directory of the started process.")
    user: str | None = Field(None, description="Start as this user (the agent must be root).")
    group: str | None = Field(None, description="Start with this group.")
    pidfile: str | None = Field(
        None, description="The agent writes the pid of the process it starts here "
        "(for programs that write none).")
    log: str | None = Field(None, description="File the started process's stdout and stderr "
                            "are appended to (default: discarded).")
    start_timeout: Duration = Field(5.0, description="How long a start may take to show a "
                                    "matching process.", examples=["5s"])
    stop: StopPolicy = Field(default_factory=StopPolicy, description="How to stop it.")
    restart: RestartBudget = Field(
        default_factory=RestartBudget,
        description="Budget for the starts and restarts the agent does on its own (default "
        "3 within 10m, backoff 5s doubling); an operator's own apply spends none.")

    @model_validator(mode="after")
    def _check(self) -> ProcessSpec:
        if self.state == "running" and not self.start:
            raise ValueError("state running needs start: the argv that starts the process")
        return self
