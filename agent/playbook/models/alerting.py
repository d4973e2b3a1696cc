"""How alerts reach people: escalation policies, maintenance windows, flap detection.

A threshold's ``notify`` actions say who hears of it first; an ``escalation`` policy adds
notifiers step by step while the alert keeps firing unacknowledged. Maintenance windows mute
notifications and automatic actions of the rules they name (all rules by default).
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any

from pydantic import BeforeValidator, Field, WithJsonSchema, model_validator

from agent.playbook.models.base import Spec
from agent.playbook.types import Cron, Duration


def parse_instant(value: Any) -> float:
    """An ISO 8601 time with a zone (YAML may already have made it a datetime) -> epoch s."""
    if isinstance(value, dt.datetime):
        when = value
    elif isinstance(value, str):
        try:
            when = dt.datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(f"{value!r} is not a time (expected ISO 8601 like "
                             "2026-11-25T22:00:00Z)") from None
    else:
        raise ValueError(f"{value!r} is not a time (expected ISO 8601 like 2026-11-25T22:00:00Z)")
    if when.tzinfo is None:
        raise ValueError(f"{value!r} has no time zone (expected e.g. 2026-11-25T22:00:00Z or "
                         "2026-11-25T23:00:00+01:00)")
    return when.timestamp()


Instant = Annotated[
    float,
    BeforeValidator(parse_instant),
    WithJsonSchema({"type": "string", "format": "date-time",
                    "examples": ["2026-11-25T22:00:00Z"]}),
]


class EscalationStep(Spec):
    after: Duration = Field(description="Time firing (unacknowledged) before this step.",
                            examples=["0s", "5m"])
    notify: list[str] = Field(min_length=1, description="Notifiers this step adds.",
                              examples=[["slack", "pagerduty"]])


class Flapping(Spec):
    """An alert changing state more than ``changes`` times within ``within`` is held as
    flapping: one notification says so, then none until it has been steady for ``within``."""

    changes: int = Field(4, ge=2, description="State changes tolerated within the window.")
    within: Duration = Field(1800.0, examples=["30m"])


class MaintenanceWindow(Spec):
    """A recurring (``schedule`` + ``duration``) or one-off (``from`` + ``until``) window."""

    name: str = Field(min_length=1, examples=["sunday-patching"])
    schedule: Cron | None = Field(None, description="When the window opens (cron).",
                                  examples=["0 2 * * 0"])
    duration: Duration | None = Field(None, description="How long it stays open.",
                                      examples=["2h"])
    start: Instant | None = Field(None, alias="from", description="One-off window: start.")
    until: Instant | None = Field(None, description="One-off window: end.")
    rules: list[str] = Field(default_factory=lambda: ["*"],
                             description="Threshold names (globs) it mutes; all by default.",
                             examples=[["disk-*"]])

    @model_validator(mode="after")
    def _shape(self) -> MaintenanceWindow:
        recurring = self.schedule is not None or self.duration is not None
        one_off = self.start is not None or self.until is not None
        if recurring == one_off:
            raise ValueError("give either schedule + duration, or from + until")
        if recurring and (self.schedule is None or self.duration is None):
            raise ValueError("a recurring window needs both schedule and duration")
        if one_off:
            if self.start is None or self.until is None:
                raise ValueError("a one-off window needs both from and until")
            if self.until <= self.start:
                raise ValueError("until must be after from")
        return self

    def open_at(self, now: float) -> float | None:
        """When the window that contains ``now`` opened, or None when it is closed."""
        if self.start is not None and self.until is not None:
            return self.start if self.start <= now < self.until else None
        from croniter import croniter

        assert self.schedule is not None and self.duration is not None
        opened = float(croniter(self.schedule, now).get_prev(float))
        return opened if now < opened + self.duration else None
