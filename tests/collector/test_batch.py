"""A batch's validation: the first pass (by the `type` field) accepts what `Batch` accepts,
as the same models, and whatever it refuses is worded by `Batch` itself."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import ValidationError

from agent.collector.batch import Batch, validate_batch
from agent.fleet.incidents import incident_report
from agent.report.document import (
    DroppedDoc,
    DroppedReport,
    FleetShare,
    ResponseDoc,
    ResponseReport,
    SharedBlock,
)
from tests.harness.incidents import sample_incident
from tests.harness.reports import alert_report, revision_report, run_report


def _every_type() -> list[dict]:
    reports = [
        run_report("web01", [("files", "/etc/a", "changed", "corrective")]),
        alert_report("web01"), revision_report("web01", "rev2", "rev1"),
        ResponseReport(host="web01", agent_version="test", response=ResponseDoc(
            watch="ssh", playbook="web", key="203.0.113.7", matches=5, within_s=60,
            fleet=FleetShare(group="web", blocks=[SharedBlock(addr="203.0.113.7",
                                                              until=2e9)]))),
        DroppedReport(host="web01", agent_version="test", dropped=DroppedDoc(
            count=3, bytes=900, oldest="2026-11-23T09:00:00.000+00:00",
            newest="2026-11-23T09:01:00.000+00:00", reason="outbox over its cap")),
        incident_report(sample_incident(), "web01")]
    return [json.loads(r.model_dump_json()) for r in reports]


def _outcome(body: bytes) -> Any:
    try:
        return [(type(r), r.model_dump()) for r in validate_batch(body)]
    except ValidationError as e:
        return e.errors(include_url=False)


def _canonical(body: bytes) -> Any:
    try:
        return [(type(r), r.model_dump()) for r in Batch.model_validate_json(body).reports]
    except ValidationError as e:
        return e.errors(include_url=False)


def test_every_report_type_validates_as_batch_has_it():
    docs = _every_type()
    body = json.dumps({"reports": docs}).encode()
    assert _outcome(body) == _canonical(body)
    assert len({t for t, _ in _outcome(body)}) == len(docs)


@pytest.mark.parametrize("change", [
    lambda d: d.pop("type"),  # a run report may leave its type out
    lambda d: d.update(type="nonsense"),
    lambda d: d.update(type=1),
    lambda d: d.update(summary={"ok": -1}),
    lambda d: d.update(extra=1),
    lambda d: d.update(id="has spaces"),
], ids=["no type", "unknown type", "type not a string", "bad field", "extra field", "bad id"])
def test_a_changed_document_gets_what_batch_says(change):
    docs = _every_type()
    change(docs[0])
    body = json.dumps({"reports": docs}).encode()
    assert _outcome(body) == _canonical(body)


@pytest.mark.parametrize("body", [b'{"reports": [', b"", b"[]", b'{"reports": {}}'])
def test_a_body_that_is_no_batch_gets_what_batch_says(body):
    errors = _outcome(body)
    assert errors == _canonical(body) and errors and isinstance(errors[0], dict)
