"""An ingest request's body: a batch of report documents, and its validation.

``Report`` (agent.report.document) tells its types apart with a callable discriminator,
because ``type`` may be left out of a run report. With JSON input pydantic then turns each
document into Python objects to call it, and validates the document again: about a third
of the validation time. Every agent of ours writes ``type``, so a batch is first validated
against the same models told apart by their ``type`` field; when that fails (``type`` left
out, or a document that is wrong) the batch is validated again by ``Batch`` itself, which
decides and words the errors. Whatever the first pass accepts the second would accept as
the same models: each member's tag is checked against its ``type`` literal below.
"""

from __future__ import annotations

from types import GenericAlias
from typing import Annotated, Any, Union, get_args

from pydantic import BaseModel, Field, ValidationError, create_model

from agent.report.document import Report

MAX_BATCH = 5000


class Batch(BaseModel):
    reports: list[Report] = Field(max_length=MAX_BATCH)


def _by_type_field(report: Any) -> Any:
    """``report``'s members, discriminated by their ``type`` field instead."""
    union, *_ = get_args(report)  # Annotated[Union[Annotated[Model, Tag], ...], Discriminator]
    members = []
    for member in get_args(union):
        model, tag = get_args(member)
        if model.model_fields["type"].default != tag.tag:
            raise TypeError(f"{model.__name__}: tag {tag.tag!r} is not its type's literal")
        members.append(model)
    return Annotated[Union.__getitem__(tuple(members)), Field(discriminator="type")]


_TAGGED_LIST: Any = GenericAlias(list, (_by_type_field(Report),))
_Tagged = create_model("_Tagged", reports=(_TAGGED_LIST, Field(max_length=MAX_BATCH)))


def validate_batch(body: bytes) -> list[Report]:
    """The batch's reports; ValidationError worded by ``Batch``."""
    try:
        reports: list[Report] = _Tagged.model_validate_json(body).reports  # type: ignore[attr-defined]
        return reports
    except ValidationError:
        return Batch.model_validate_json(body).reports
