"""The report documents (versioned) the agent sends and the collector stores.

Six types, one schema (schemas/report.schema.json, discriminated by ``type``):

* ``run`` — one run of one playbook on one host: each resource's status, and each change
  labelled ``corrective`` (drift repaired), ``intentional`` (the playbook changed),
  ``would-change`` (a dry run) or ``failed``;
* ``alert`` — an alert event (a restart budget ran out, a playbook revision was refused);
* ``revision`` — the agent started enforcing another playbook revision;
* ``response`` — a log watch fired: the key, the matches, each response's outcome;
* ``dropped`` — the outbox was over its cap and dropped reports: what, and how many;
* ``incident`` — a runbook run's incident record (``opsagent remediate``): who ran what on
  which hosts, each step's outcome per host, the timeline, evidence and follow-ups. Its
  ``host`` is the controller the run was started from; a record is sent again as it
  progresses, each time under a new report id, and the collector keeps the newest version.

A report never contains file content or secrets: content changes are reported by digest.
"""

from __future__ import annotations

import datetime as dt
import time
import uuid
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, TypeAdapter

Status = Literal["ok", "changed", "failed", "skipped"]
Label = Literal["corrective", "intentional", "would-change", "failed"]
Severity = Literal["info", "warning", "critical"]

_NAME = Field(min_length=1, max_length=255)


class _Doc(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ChangeDoc(_Doc):
    field: str = Field(description="What differs: state, content, mode, owner, restart, ...")
    before: Any = Field(None, description="Observed value (digests for content).")
    after: Any = Field(None, description="Desired value.")
    reason: str = Field(description="Why this is a change, in words.")
    label: Label | None = Field(
        None, description="corrective: drift repaired; intentional: the playbook changed; "
        "would-change: a dry run; failed: the change did not take.")


class OutcomeDoc(_Doc):
    action: str
    ok: bool
    message: str


class ResultDoc(_Doc):
    kind: str = Field(examples=["files"], min_length=1, max_length=64)
    name: str = Field(examples=["/etc/app/app.env"], min_length=1, max_length=4096)
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
    ok: int = Field(0, ge=0)
    changed: int = Field(0, ge=0)
    failed: int = Field(0, ge=0)
    skipped: int = Field(0, ge=0)


class _Base(_Doc):
    schema_version: Literal[1] = 1
    id: str = Field(default_factory=lambda: str(uuid.uuid4()), min_length=8, max_length=64,
                    pattern=r"^[A-Za-z0-9_.:-]+$",
                    description="Unique id; the collector deduplicates by it.")
    host: str = Field(min_length=1, max_length=253)
    agent_version: str = Field(max_length=64)
    created_at: str = Field(default_factory=lambda: utc_iso(time.time()),
                            description="When the agent wrote the report, ISO 8601 UTC.")


class RunReport(_Base):
    """One run of one playbook on one host."""

    type: Literal["run"] = "run"
    mode: Literal["plan", "check", "apply"] = Field(
        description="plan and check change nothing; apply reconciles.")
    playbook: PlaybookRef
    started_at: str = Field(description="ISO 8601 UTC.")
    finished_at: str = Field(description="ISO 8601 UTC.")
    duration_s: float = Field(ge=0)
    summary: Summary
    results: list[ResultDoc]

    @property
    def critical(self) -> bool:
        """Kept over plain all-ok runs when the outbox is over its cap."""
        return bool(self.summary.changed or self.summary.failed)


def _type_required(schema: dict[str, Any]) -> None:
    """Only ``run`` may leave ``type`` out; the schema says so for the others."""
    schema.setdefault("required", []).insert(0, "type")


class _Typed(_Base):
    model_config = ConfigDict(extra="forbid", json_schema_extra=_type_required)


class AlertDoc(_Doc):
    key: str = Field(description="What the alert is about: KIND:NAME, `threshold:RULE`, "
                     "`silence:ID`, `maintenance:NAME` or `playbooks`.")
    severity: Severity
    message: str
    state: Literal["firing", "resolved", "flapping", "muted", "unmuted"] | None = Field(
        None, description="For a rule's alert: the transition; for a silence or maintenance "
        "window: muted when it starts, unmuted when it ends.")
    alert_id: str | None = Field(None, description="The firing episode (`opsagent alert ack`).")
    value: float | None = None
    muted_by: str | None = Field(None, description="The silence or window that kept it from "
                                 "notifying anyone.")


class AlertReport(_Typed):
    type: Literal["alert"] = "alert"
    alert: AlertDoc


class RevisionDoc(_Doc):
    id: str = Field(description="The revision now enforced (git commit or content digest).")
    previous: str | None = None
    playbooks: list[str] = Field(default_factory=list)


class RevisionReport(_Typed):
    type: Literal["revision"] = "revision"
    revision: RevisionDoc


class SharedBlock(_Doc):
    addr: str = Field(max_length=64, description="The address or network blocked here.")
    until: float = Field(description="When the block ends, epoch seconds.")


class FleetShare(_Doc):
    group: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$",
                       description="The hosts that apply these blocks too (agent `group`).")
    blocks: list[SharedBlock] = Field(min_length=1, max_length=100)


class ResponseDoc(_Doc):
    watch: str = Field(description="The log watch that fired.")
    playbook: str
    key: str = Field(description="The value of the watch's key (an address, a user), or "
                     "empty when the whole watch counts.")
    matches: int = Field(ge=1, description="Matches of the key within the window.")
    within_s: float = Field(ge=0)
    actions: list[OutcomeDoc] = Field(default_factory=list,
                                      description="Each response and how it went, in order.")
    evidence: dict[str, Any] | None = Field(
        None, description="A snapshot's evidence: matching lines, sockets, processes.")
    fleet: FleetShare | None = Field(
        None, description="Blocks shared with the host's group through the collector.")


class ResponseReport(_Typed):
    """A log watch fired: what it saw and what the agent did about it."""

    type: Literal["response"] = "response"
    response: ResponseDoc


class DroppedDoc(_Doc):
    count: int = Field(ge=1, description="How many reports were dropped.")
    bytes: int = Field(ge=0)
    oldest: str = Field(description="created_at of the oldest dropped report.")
    newest: str = Field(description="created_at of the newest dropped report.")
    by_type: dict[str, int] = Field(default_factory=dict)
    reason: str


class DroppedReport(_Typed):
    type: Literal["dropped"] = "dropped"
    dropped: DroppedDoc


HostStatus = Literal["ok", "changed", "failed", "unreachable", "skipped", "would-change"]
StepStatus = Literal["ok", "changed", "failed", "skipped", "would-change", "rolled-back"]
IncidentStatus = Literal["running", "succeeded", "failed", "aborted", "checked"]


class RunbookRef(_Doc):
    name: str = Field(min_length=1, max_length=255, examples=["service-down"])
    path: str = Field(max_length=4096, examples=["runbooks/service-down.yaml"])
    revision: str = Field(max_length=128, description="sha256 of the runbook text.",
                          examples=["sha256:9f2c4e1d"])
    description: str | None = None


class IncidentHost(_Doc):
    name: str = Field(min_length=1, max_length=255, description="The inventory name.",
                      examples=["web01"])
    status: HostStatus = Field(description="How the run went on this host overall; "
                               "unreachable: no SSH connection; would-change: a dry run "
                               "found work to do.")
    message: str
    served_by: str | None = Field(None, max_length=128, description="What ran the steps "
                                  "there: the host's agent service (agent service (pid N)), "
                                  "or a process of their own.",
                                  examples=["agent service (pid 812)", "process"])


class IncidentStep(_Doc):
    index: int = Field(ge=0, description="The step's position in the runbook.")
    name: str = Field(examples=["restart nginx"])
    action: str = Field(max_length=64, examples=["restart"])


class IncidentOutcome(_Doc):
    host: str = Field(min_length=1, max_length=255)
    step: int = Field(ge=0, description="The index of the step (see steps).")
    name: str
    action: str = Field(max_length=64)
    status: StepStatus = Field(description="rolled-back: a completed step undone after a "
                               "later one failed (on_failure: rollback).")
    message: str
    started_at: str = Field(description="ISO 8601 UTC.")
    duration_s: float = Field(ge=0)
    evidence: dict[str, Any] | None = Field(
        None, description="A snapshot's evidence, bounded text: sockets, processes, "
        "logs {name: tail}.")
    ignored: bool = Field(False, description="A failure the runbook lets pass (on_failure: "
                          "continue): it does not fail the host.")


class TimelineEvent(_Doc):
    at: str = Field(description="ISO 8601 UTC.")
    event: str = Field(examples=["wave 1 of 3: web01", "confirmed: Block 203.0.113.7?"])


class IncidentDoc(_Doc):
    id: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$",
                    examples=["INC-20261123-093112-3f2a"])
    runbook: RunbookRef
    title: str = Field(description="The runbook's description, or its name.")
    by: str = Field(max_length=255, description="The operator, user@controller.",
                    examples=["alice@laptop"])
    check: bool = Field(description="A dry run (--check): nothing was changed.")
    params: dict[str, Any] = Field(default_factory=dict,
                                   examples=[{"ip": "203.0.113.7"}])
    inventory: str | None = None
    limit: str | None = Field(None, description="The --limit pattern.")
    started_at: str = Field(description="ISO 8601 UTC.")
    finished_at: str | None = Field(None, description="ISO 8601 UTC; null while running.")
    status: IncidentStatus = Field(description="running, succeeded, failed, aborted (stopped "
                                   "by the operator or max_fail_percentage), checked (a dry "
                                   "run finished).")
    hosts: list[IncidentHost] = Field(default_factory=list)
    steps: list[IncidentStep] = Field(default_factory=list)
    outcomes: list[IncidentOutcome] = Field(default_factory=list,
                                            description="Each step's outcome on each host.")
    timeline: list[TimelineEvent] = Field(default_factory=list)
    followups: list[str] = Field(default_factory=list,
                                 description="The runbook's post-incident follow-ups.")


class IncidentReport(_Typed):
    """A runbook run's incident record, sent by the controller that ran it."""

    type: Literal["incident"] = "incident"
    incident: IncidentDoc


def _type_of(value: Any) -> Any:
    """``type`` defaults to ``run`` (the first report type), in documents and in the schema."""
    if isinstance(value, dict):
        return value.get("type", "run")
    return getattr(value, "type", None)


Report = Annotated[Annotated[RunReport, Tag("run")] | Annotated[AlertReport, Tag("alert")]
                   | Annotated[RevisionReport, Tag("revision")]
                   | Annotated[ResponseReport, Tag("response")]
                   | Annotated[DroppedReport, Tag("dropped")]
                   | Annotated[IncidentReport, Tag("incident")], Discriminator(_type_of)]
REPORT = TypeAdapter(Report)
REPORTS = TypeAdapter(list[Report])


def utc_iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, tz=dt.UTC).isoformat(timespec="milliseconds")
