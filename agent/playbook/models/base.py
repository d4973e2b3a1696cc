"""Shared bases of every playbook model: unknown fields are errors, specs are immutable."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

from agent.playbook.types import Duration


class Spec(BaseModel):
    """Base of every declaration: unknown fields are refused, instances are frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True, strict=True,
                              defer_build=True)


class RestartBudget(Spec):
    """How often the agent may start or restart a resource on its own."""

    max: int = Field(3, ge=0, description="Automatic (re)starts allowed within the window.",
                     examples=[3])
    within: Duration = Field(600.0, description="The sliding window the budget counts over.",
                             examples=["10m"])
    backoff: Duration = Field(5.0, description="Wait before the first retry; doubles each time.",
                              examples=["5s"])


class Resource(Spec):
    """A managed thing on the host: it has a name, can notify handlers and has a timeout."""

    name: str = Field(min_length=1, description="Unique name of the resource within its kind.")
    notify: list[str] | None = Field(
        None,
        description="Resources to restart at the end of the run when this one changed, "
        "written KIND:NAME (like Ansible handlers).",
        examples=[["services:nginx", "processes:worker"]],
    )
    timeout: Duration | None = Field(
        None, description="Upper bound for one observe or apply of this resource.",
        examples=["30s"],
    )

    @field_validator("notify")
    @classmethod
    def _notify_refs(cls, refs: list[str] | None) -> list[str] | None:
        for ref in refs or []:
            kind, sep, name = ref.partition(":")
            if not sep or not kind or not name:
                raise ValueError(
                    f"{ref!r} is not a KIND:NAME reference (expected e.g. services:nginx)")
        return refs
