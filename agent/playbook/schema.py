"""JSON Schemas generated from the models, and the check of a document against one.

`python -m agent.playbook.schema` rewrites the committed schemas (agent/schemas/, which
schemas/ at the repository root points to); a test fails when they are stale.
"""

from __future__ import annotations

import difflib
import json
import sys
from functools import cache
from pathlib import Path as FsPath
from typing import Any

from agent.errors import Diagnostic
from agent.playbook.loader import Document, Path

SCHEMA_DIR = FsPath(__file__).resolve().parent.parent / "schemas"
_TYPE_NAMES = {"string": "text", "integer": "a whole number", "number": "a number",
               "boolean": "true or false", "array": "a list", "object": "a mapping",
               "null": "nothing"}


def generate() -> dict[str, dict[str, Any]]:
    """Every schema opsagent publishes, by file name."""
    from pydantic import TypeAdapter

    from agent.fleet.models import Runbook
    from agent.inventory.yaml_format import InventoryFile
    from agent.playbook.models import Playbook
    from agent.report.document import REPORT
    from agent.service.config import AgentConfig

    out: dict[str, dict[str, Any]] = {}
    for fname, model, title in (("playbook.schema.json", Playbook, "opsagent playbook"),
                                ("report.schema.json", REPORT, "opsagent report"),
                                ("agent.schema.json", AgentConfig, "opsagent agent config"),
                                ("inventory.schema.json", InventoryFile, "opsagent inventory"),
                                ("runbook.schema.json", Runbook, "opsagent runbook")):
        schema = (model.json_schema(by_alias=True) if isinstance(model, TypeAdapter)
                  else model.model_json_schema(by_alias=True))
        schema = {"$schema": "https://json-schema.org/draft/2020-12/schema",
                  "$id": f"https://opsagent.dev/schemas/{fname}", "title": title, **schema}
        out[fname] = schema
    return out


def render(schema: dict[str, Any]) -> str:
    return json.dumps(schema, indent=2, sort_keys=False) + "\n"


@cache
def _validator(name: str) -> Any:
    import jsonschema

    schema = json.loads((SCHEMA_DIR / name).read_text())
    return jsonschema.Draft202012Validator(schema)


def check(doc: Document, name: str = "playbook.schema.json") -> list[Diagnostic]:
    """All schema violations of doc, one located diagnostic each."""
    out: list[Diagnostic] = []
    for error in _validator(name).iter_errors(doc.data):
        out.extend(_diagnose(doc, error))
    out.sort(key=lambda d: (d.line, d.col))
    return out


def _diagnose(doc: Document, error: Any) -> list[Diagnostic]:
    path: Path = tuple(error.absolute_path)
    kind = error.validator
    schema = error.schema if isinstance(error.schema, dict) else {}
    if kind in ("anyOf", "oneOf") and error.context:
        return _diagnose(doc, _best(error))
    if kind == "additionalProperties":
        known = sorted(schema.get("properties", {}))
        out = []
        for key in sorted(set(error.instance) - set(known)):
            near = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
            what = "unknown resource kind or field" if not path else "unknown field"
            hint = f"did you mean '{near[0]}'?" if near else f"one of: {', '.join(known)}"
            out.append(doc.diag((*path, key), f"{what} '{key}'", hint, key=True))
        return out
    if kind == "required":
        missing = error.message.split("'")[1] if "'" in error.message else error.message
        return [doc.diag(path, f"missing required field '{missing}'", _expected(schema))]
    if kind == "enum":
        options = [str(o) for o in error.validator_value]
        near = difflib.get_close_matches(str(error.instance), options, n=1)
        hint = f"did you mean '{near[0]}'?" if near else f"one of: {', '.join(options)}"
        return [doc.diag(path, f"{error.instance!r} is not allowed", hint)]
    if kind == "type":
        want = error.validator_value
        wants = [want] if isinstance(want, str) else list(want)
        names = " or ".join(_TYPE_NAMES.get(w, w) for w in wants)
        return [doc.diag(path, f"{_show(error.instance)} is not {names}", _expected(schema))]
    if kind == "pattern":
        return [doc.diag(path, f"{_show(error.instance)} is not in the expected form",
                         _expected(schema) or f"matching {error.validator_value}")]
    if kind in ("maxProperties", "minProperties") and isinstance(error.instance, dict):
        allowed = ", ".join(schema.get("properties", {}))
        n = len(error.instance)
        return [doc.diag(path, f"{n} keys given", f"exactly one of: {allowed}")]
    return [doc.diag(path, error.message, _expected(schema))]


def _best(error: Any) -> Any:
    """The most useful error among the branches of an anyOf/oneOf, ignoring `null` branches."""
    import jsonschema.exceptions

    ctx = [e for e in error.context if not (e.validator == "type" and e.validator_value == "null")]
    deepest = max((len(e.absolute_path) for e in ctx), default=0)
    if deepest > len(error.absolute_path):
        ctx = [e for e in ctx if len(e.absolute_path) == deepest]
    return jsonschema.exceptions.best_match(ctx or error.context)


def _expected(schema: dict[str, Any]) -> str:
    if schema.get("x-expected"):
        return str(schema["x-expected"])
    ex = schema.get("examples")
    if ex:
        return "e.g. " + ", ".join(json.dumps(e) for e in ex[:2])
    return ""


def _show(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def main(argv: list[str] | None = None) -> int:
    """Write the schemas (default) or, with --check, fail when the committed ones are stale."""
    args = sys.argv[1:] if argv is None else argv
    stale = []
    for fname, schema in generate().items():
        target = SCHEMA_DIR / fname
        text = render(schema)
        if "--check" in args:
            if not target.exists() or target.read_text() != text:
                stale.append(fname)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text)
            print(f"wrote {target}")
    for fname in stale:
        print(f"{SCHEMA_DIR / fname} is stale: run python -m agent.playbook.schema",
              file=sys.stderr)
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
