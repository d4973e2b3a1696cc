"""Reading playbooks: YAML (with positions) → templates → JSON Schema → models → semantics.

Every stage reports all the problems it finds as located diagnostics; the first stage with
problems stops the pipeline (later stages would only repeat them), and an invalid playbook
never reaches the engine.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from agent.errors import Diagnostic, InputError
from agent.playbook.loader import Document, Path, parse, read_text

PLAYBOOK_SUFFIXES = (".yaml", ".yml")


def expand_paths(paths: list[str] | tuple[str, ...]) -> list[str]:
    """Playbook files named, and the *.yaml/*.yml files under directories (sorted walk)."""
    files: list[str] = []
    for path in paths:
        if os.path.isdir(path):
            for root, dirs, names in os.walk(path):
                dirs.sort()
                files.extend(os.path.join(root, n) for n in sorted(names)
                             if n.endswith(PLAYBOOK_SUFFIXES))
        else:
            files.append(path)
    return files


@dataclass(frozen=True)
class LoadedPlaybook:
    path: str
    model: Any  # agent.playbook.models.Playbook (imported lazily by callers)
    revision: str
    variables: Mapping[str, Any]


def load_playbook(path: str, extra_vars: Mapping[str, Any] | None = None, *,
                  schema_check: bool = True) -> LoadedPlaybook:
    """Load and check one playbook; raise InputError with every diagnostic found.

    schema_check=False (plan, apply: start-up time matters) runs the JSON Schema check only
    when the models refuse the document, for its located messages. The models are strict
    and the schema is generated from them, so they refuse everything the schema refuses
    (tests/playbook/test_schema.py holds every bad input to that); `validate` runs both.
    """
    text = read_text(path)
    doc = parse(text, path)
    if not isinstance(doc.data, dict):
        what = "a list" if isinstance(doc.data, list) else f"a {type(doc.data).__name__}"
        hint = ("an opsagent playbook is one mapping; remove the leading '- '"
                if isinstance(doc.data, list) else "a mapping with name: and resource lists")
        raise InputError([doc.diag((), f"the top level is {what}", hint)])

    variables = _variables(doc, extra_vars or {})
    from agent.playbook.templating import any_template, render_document

    if any_template(doc.data):
        errors = render_document(doc, variables)
        if errors:
            raise InputError(errors)

    from agent.playbook import schema

    errors = schema.check(doc) if schema_check else []

    from pydantic import ValidationError

    from agent.playbook import semantic
    from agent.playbook.models import Playbook

    try:
        model = Playbook.model_validate(doc.data)
    except ValidationError as e:
        # The models check what the schema cannot (cron, regexes, signals, ...): add those,
        # leaving out what the schema already said about the same place.
        errors = errors or schema.check(doc)
        more = [d for d in pydantic_diagnostics(doc, e) if not _covered(d.path, errors)]
        raise InputError(sorted(errors + more, key=lambda d: (d.line, d.col))) from None
    if errors:
        raise InputError(errors)
    errors = semantic.check(doc, model)
    if errors:
        raise InputError(errors)
    revision = "sha256:" + hashlib.sha256(text.encode()).hexdigest()[:16]
    return LoadedPlaybook(os.path.abspath(path), model, revision, variables)


def _covered(path: str, errors: list[Diagnostic]) -> bool:
    def under(a: str, b: str) -> bool:
        return a == b or a.startswith((b + ".", b + "["))

    return any(under(path, d.path) or under(d.path, path) for d in errors)


def _variables(doc: Document, extra: Mapping[str, Any]) -> dict[str, Any]:
    own = doc.data.get("vars") or {}
    if not isinstance(own, dict):
        return dict(extra)  # the schema check reports it
    return {**own, **extra}


def pydantic_diagnostics(doc: Document, err: Any) -> list[Diagnostic]:
    """Map pydantic's errors to located diagnostics, dropping union branch tags from paths."""
    out: list[Diagnostic] = []
    seen: set[tuple[Path, str]] = set()
    for e in err.errors(include_url=False):
        path = _data_path(doc.data, e["loc"], missing=e["type"] == "missing")
        msg = str(e["msg"]).removeprefix("Value error, ").removeprefix("Assertion failed, ")
        expected = ""
        if " (expected " in msg and msg.endswith(")"):
            msg, expected = msg[:-1].split(" (expected ", 1)
        if (path, msg) in seen:
            continue
        seen.add((path, msg))
        out.append(doc.diag(path, msg, expected))
    out.sort(key=lambda d: (d.line, d.col))
    return out


def _data_path(data: Any, loc: tuple[Any, ...], *, missing: bool) -> Path:
    """The longest prefix of loc that exists in data (union tags are not data keys)."""
    path: list[str | int] = []
    node = data
    for part in loc:
        present = (part in node) if isinstance(node, dict) else (
            isinstance(node, list) and isinstance(part, int) and part < len(node))
        if present:
            node = node[part]
            path.append(part)
        elif missing and isinstance(node, dict) and part == loc[-1]:
            path.append(part)  # a missing key: point at its parent, name it in the path
            break
    return tuple(path)


__all__ = ["Diagnostic", "InputError", "LoadedPlaybook", "expand_paths", "load_playbook"]
