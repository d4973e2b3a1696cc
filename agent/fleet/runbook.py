"""Reading a runbook, checking the run's parameters, and binding it to one host.

    rb = load_runbook("playbooks/runbooks/service-down.yaml")   # InputError: located problems
    params = check_params(rb, {"service": "nginx"})             # InputError: at the declaration
    steps = bind(rb, params, host_vars)                          # InputError: at the step

A step's action body may hold templates, so ``load_runbook`` checks what does not depend on
them (each step names one known action; fields exist; literal values are valid) and ``bind``
renders the steps with the parameters and one host's variables and checks them whole. The
controller binds every targeted host before it connects to any, so a bad value stops the run
before anything has changed anywhere.
"""

from __future__ import annotations

import copy
import hashlib
import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import Field

from agent.errors import Diagnostic, InputError
from agent.fleet.models import ACTIONS, ParamSpec, Runbook, StepSpec
from agent.playbook.loader import Document, parse, read_text
from agent.playbook.templating import any_template

RUNBOOK_SCHEMA = "runbook.schema.json"


class RunbookFile(Runbook):
    """The runbook as written: steps kept as data until they are bound to a host."""

    steps: list[dict[str, Any]] = Field(min_length=1)  # type: ignore[assignment]


@dataclass(frozen=True)
class LoadedRunbook:
    path: str
    doc: Document
    model: RunbookFile
    revision: str

    @property
    def name(self) -> str:
        return self.model.name


def is_runbook_data(data: Any) -> bool:
    """Whether a parsed YAML document is a runbook (a mapping with steps:, no resources)."""
    return isinstance(data, dict) and "steps" in data and isinstance(data.get("steps"), list)


def load_runbook(path: str) -> LoadedRunbook:
    from pydantic import ValidationError

    from agent.playbook import pydantic_diagnostics

    text = read_text(path)
    doc = parse(text, path)
    if not isinstance(doc.data, dict):
        raise InputError([doc.diag((), "the top level is not a mapping",
                                   "a runbook: name:, params:, steps:")])
    errors: list[Diagnostic] = []
    try:
        model = RunbookFile.model_validate(doc.data)
    except ValidationError as e:
        errors = pydantic_diagnostics(doc, e)
        model = None
    steps = doc.data.get("steps")
    if isinstance(steps, list):
        for i, step in enumerate(steps):
            errors.extend(_check_step(doc, i, step))
    if errors or model is None:
        raise InputError(sorted(set(errors), key=lambda d: (d.line, d.col, d.path)))
    errors = _check_defaults(doc, model) + _check_notifiers(doc, model)
    if errors:
        raise InputError(errors)
    revision = "sha256:" + hashlib.sha256(text.encode()).hexdigest()[:16]
    return LoadedRunbook(os.path.abspath(path), doc, model, revision)


def _check_step(doc: Document, i: int, step: Any) -> list[Diagnostic]:
    """A step's problems that no template can fix: structure, names, literal values."""
    from pydantic import ValidationError

    from agent.playbook import pydantic_diagnostics

    at = ("steps", i)
    if not isinstance(step, dict):
        return [doc.diag(at, "a step is a mapping", f"one of {', '.join(ACTIONS)}")]
    given = [k for k in step if k in ACTIONS]
    if len(given) != 1:
        what = f"names {', '.join(given)}" if given else "names no action"
        return [doc.diag(at, f"the step {what}", f"exactly one of {', '.join(ACTIONS)}")]
    try:
        StepSpec.model_validate(step)
        return []
    except ValidationError as e:
        kept = [{**err, "loc": (*at, *err["loc"])} for err in e.errors(include_url=False)
                if err["type"] in ("missing", "extra_forbidden")
                or not any_template(_at(step, err["loc"]))]
        # a template's value is checked once the step is bound to a host
        return pydantic_diagnostics(doc, _Errors(kept)) if kept else []


def _at(data: Any, loc: tuple[Any, ...]) -> Any:
    node = data
    for part in loc:
        if (isinstance(node, dict) and part in node) or (
                isinstance(node, list) and isinstance(part, int) and part < len(node)):
            node = node[part]
    return node


def _check_defaults(doc: Document, rb: Runbook) -> list[Diagnostic]:
    errors = []
    for name, spec in rb.params.items():
        if spec.default is not None:
            try:
                coerce(spec, spec.default)
            except ValueError as e:
                errors.append(doc.diag(("params", name, "default"), str(e), _expected(spec)))
    return errors


def _check_notifiers(doc: Document, rb: RunbookFile) -> list[Diagnostic]:
    errors = []
    for i, step in enumerate(rb.steps):
        body = step.get("notify")
        if isinstance(body, dict):
            name = body.get("notifier")
            if isinstance(name, str) and not any_template(name) and name not in rb.notifiers:
                known = ", ".join(rb.notifiers) or "none are declared"
                errors.append(doc.diag(("steps", i, "notify", "notifier"),
                                       f"no notifier {name!r} under notifiers:",
                                       f"one of: {known}"))
    return errors


# -- parameters -----------------------------------------------------------------------------

_EXAMPLES = {"ip": "203.0.113.7", "network": "198.51.100.0/24", "duration": "1h",
             "int": "3", "number": "0.5", "bool": "true", "string": "nginx"}


def _expected(spec: ParamSpec) -> str:
    if spec.choices:
        return "one of " + ", ".join(str(c) for c in spec.choices)
    if spec.pattern:
        return f"text matching {spec.pattern}"
    return f"type {spec.type}, e.g. {_EXAMPLES[spec.type]}"


def coerce(spec: ParamSpec, value: Any) -> Any:
    """The parameter's value in its type, or ValueError saying what is wrong with it."""
    from agent.playbook.types import parse_duration

    text = value if isinstance(value, str) else None
    out: Any
    if spec.type == "string":
        if not isinstance(value, str | int | float) or isinstance(value, bool):
            raise ValueError(f"{value!r} is not text")
        out = str(value)
        if any(c in out for c in "\0\n\r"):
            raise ValueError("a parameter holds no NUL or line break")
        if spec.pattern and not re.fullmatch(spec.pattern, out):
            raise ValueError(f"{out!r} does not match the pattern")
        if spec.max_length and len(out) > spec.max_length:
            raise ValueError(f"{len(out)} characters, over {spec.max_length}")
    elif spec.type in ("int", "number"):
        try:
            if isinstance(value, bool):
                raise ValueError
            if spec.type == "int":
                out = int(value) if isinstance(value, int) else int(str(text).strip(), 10)
            else:
                out = float(value)
        except (TypeError, ValueError):
            kind = "a whole number" if spec.type == "int" else "a number"
            raise ValueError(f"{value!r} is not {kind}") from None
        if spec.min is not None and out < spec.min:
            raise ValueError(f"{out} is below the minimum {spec.min:g}")
        if spec.max is not None and out > spec.max:
            raise ValueError(f"{out} is above the maximum {spec.max:g}")
    elif spec.type == "bool":
        words = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}
        if isinstance(value, bool):
            out = value
        elif isinstance(text, str) and text.lower() in words:
            out = words[text.lower()]
        else:
            raise ValueError(f"{value!r} is not true or false")
    elif spec.type == "ip":
        try:
            out = str(ipaddress.ip_address(str(value).strip()))
        except ValueError:
            raise ValueError(f"{value!r} is not an IP address") from None
    elif spec.type == "network":
        try:
            out = str(ipaddress.ip_network(str(value).strip(), strict=False))
        except ValueError:
            raise ValueError(f"{value!r} is not an IP address or network") from None
    else:  # duration: kept as written (models parse it), checked here
        try:
            parse_duration(value)
        except (TypeError, ValueError):
            raise ValueError(f"{value!r} is not a duration") from None
        out = value
    if spec.choices is not None and out not in spec.choices:
        raise ValueError(f"{out!r} is not one of {', '.join(str(c) for c in spec.choices)}")
    return out


def check_params(rb: LoadedRunbook, given: Mapping[str, Any]) -> dict[str, Any]:
    """Every declared parameter, typed; InputError naming each bad, missing or unknown one."""
    errors: list[Diagnostic] = []
    out: dict[str, Any] = {}
    declared = rb.model.params
    for name in given:
        if name not in declared:
            import difflib

            near = difflib.get_close_matches(name, declared, n=1)
            hint = f"did you mean {near[0]}?" if near else (
                "declared: " + ", ".join(declared) if declared else "it declares none")
            errors.append(rb.doc.diag(("params",), f"-e {name}: the runbook has no parameter "
                                      f"{name!r}", hint, key=True))
    for name, spec in declared.items():
        at = ("params", name)
        if name in given:
            try:
                out[name] = coerce(spec, given[name])
            except ValueError as e:
                errors.append(rb.doc.diag(at, f"-e {name}: {e}", _expected(spec), key=True))
        elif spec.default is not None:
            out[name] = coerce(spec, spec.default)
        elif spec.required:
            errors.append(rb.doc.diag(at, f"parameter {name} is required; give -e {name}=VALUE",
                                      _expected(spec), key=True))
        else:
            out[name] = None
    if errors:
        raise InputError(errors)
    return out


# -- binding --------------------------------------------------------------------------------

def variables(rb: LoadedRunbook, params: Mapping[str, Any], host: str,
              host_vars: Mapping[str, Any]) -> dict[str, Any]:
    """What a step's templates see: runbook vars < inventory vars < parameters, plus host."""
    return {**rb.model.vars, **host_vars, **params, "host": host, "inventory_hostname": host}


def bind(rb: LoadedRunbook, params: Mapping[str, Any], host: str,
         host_vars: Mapping[str, Any]) -> list[StepSpec]:
    """The steps rendered for one host and checked whole; InputError (located, naming the
    host) for a template that fails or a value its action refuses."""
    from pydantic import ValidationError

    from agent.playbook import pydantic_diagnostics
    from agent.playbook.templating import render_document

    data = copy.deepcopy(rb.doc.data["steps"])
    doc = Document(rb.doc.file, {"steps": data}, rb.doc.value_marks, rb.doc.key_marks)
    errors = render_document(doc, variables(rb, params, host, host_vars))
    steps: list[StepSpec] = []
    unrendered = {int(m[1]) for d in errors if (m := re.match(r"steps\[(\d+)\]", d.path))}
    for i, raw in enumerate(data):
        if i not in unrendered:
            try:
                steps.append(_validate_rendered(raw))
            except ValidationError as e:
                errors.extend(pydantic_diagnostics(doc, _Errors(
                    [{**err, "loc": ("steps", i, *err["loc"])}
                     for err in e.errors(include_url=False)])))
    errors.sort(key=lambda d: (d.line, d.col))
    if errors:
        raise InputError([Diagnostic(d.file, d.line, d.col, d.path,
                                     f"on {host}: {d.message}", d.expected) for d in errors])
    return steps


_AS_TEXT = ("string_type",)
_AS_NUMBER = ("int_type", "float_type")


def _validate_rendered(raw: dict[str, Any]) -> StepSpec:
    """StepSpec of a rendered step. A template's value takes the type of its field: a
    number rendered into text (an argv word) becomes text, a whole number's text a number;
    anything else stays an error."""
    from pydantic import ValidationError

    for _ in range(8):
        try:
            return StepSpec.model_validate(raw)
        except ValidationError as e:
            fixed = False
            for err in e.errors(include_url=False):
                loc, value = err["loc"], err["input"]
                if err["type"] in _AS_TEXT and isinstance(value, int | float) \
                        and not isinstance(value, bool):
                    fixed |= _put(raw, loc, str(value))
                elif err["type"] in _AS_NUMBER and isinstance(value, str):
                    try:
                        number: int | float = (int(value) if err["type"] == "int_type"
                                               else float(value))
                    except ValueError:
                        continue
                    fixed |= _put(raw, loc, number)
            if not fixed:
                raise
    return StepSpec.model_validate(raw)


def _put(data: Any, loc: tuple[Any, ...], value: Any) -> bool:
    node = data
    for part in loc[:-1]:
        try:
            node = node[part]
        except (KeyError, IndexError, TypeError):
            return False
    try:
        node[loc[-1]] = value
    except (KeyError, IndexError, TypeError):
        return False
    return True


class _Errors:
    """Some of a ValidationError's errors, located in the whole document, for
    agent.playbook.pydantic_diagnostics."""

    def __init__(self, errors: list[dict[str, Any]]) -> None:
        self._errors = errors

    def errors(self, include_url: bool = False) -> list[dict[str, Any]]:
        return self._errors


def is_runbook_file(path: str) -> bool:
    """Whether ``opsagent validate PATH`` should read path as a runbook (it has steps:)."""
    from agent.playbook.loader import load

    try:
        return is_runbook_data(load(path).data)
    except InputError:
        return False  # the playbook loader reports the same problem
