"""The report document (versioned) and how an engine run becomes one.

A report never contains file content or secrets: content changes are reported by digest.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Status = Literal["ok", "changed", "failed", "skipped"]


class _Doc(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ChangeDoc(_Doc):
    field: str = Field(description="What differs: state, content, mode, owner, restart, ...")
    before: Any = Field(None, description="Observed value (digests for content).")
    after: Any = Field(None, description="Desired value.")
    reason: str = Field(description="Why this is a change, in words.")


class OutcomeDoc(_Doc):
    action: str
    ok: bool
    message: str


class ResultDoc(_Doc):
    kind: str = Field(examples=["files"])
    name: str = Field(examples=["/etc/app/app.env"])
    status: Status
    message: str = Field(description="Why nothing changed, what changed, or what failed.")
    changes: list[ChangeDoc] = Field(default_factory=list)
    outcomes: list[OutcomeDoc] = Field(default_factory=list)
    duration_s: float = Field(ge=0)


class PlaybookRef(_Doc):
    name: str
    path: str
    revision: str = Field(description="sha256 of the playbook text (or a git commit id).")


class Summary(_Doc):
    ok: int = 0
    changed: int = 0
    failed: int = 0
    skipped: int = 0


class Report(_Doc):
    """One run of one playbook on one host."""

    schema_version: Literal[1] = 1
    id: str = Field(default_factory=lambda: str(uuid.uuid4()),
                    description="Unique id; the collector deduplicates by it.")
    type: Literal["run"] = "run"
    host: str
    mode: Literal["plan", "check", "apply"] = Field(
        description="plan and check change nothing; apply reconciles.")
    playbook: PlaybookRef
    started_at: str = Field(description="ISO 8601 UTC.")
    finished_at: str = Field(description="ISO 8601 UTC.")
    duration_s: float = Field(ge=0)
    agent_version: str
    summary: Summary
    results: list[ResultDoc]


def utc_iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, tz=dt.UTC).isoformat(timespec="milliseconds")
