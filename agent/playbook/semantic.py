"""Checks that need the whole playbook: unique names, references, deferred templates."""

from __future__ import annotations

import difflib
from typing import Any

from agent.errors import Diagnostic
from agent.playbook.loader import Document
from agent.playbook.models import RESOURCE_KINDS, Action, Playbook
from agent.playbook.templating import has_template, undeclared

# Kinds whose resources can be restarted by a handler or a restart action.
RESTARTABLE = ("processes", "services", "containers")
NAMED_KINDS = (*RESOURCE_KINDS, "checks", "thresholds", "watches", "backups")
WATCH_RUNTIME = {"key", "count", "line", "watch", "host"}
THRESHOLD_RUNTIME = {"value", "metric", "threshold", "severity", "host"}


def check(doc: Document, pb: Playbook) -> list[Diagnostic]:
    out: list[Diagnostic] = []
    names: dict[str, set[str]] = {}
    for kind in NAMED_KINDS:
        seen: dict[str, int] = {}
        field = "path" if kind == "files" else "name"
        for i, spec in enumerate(getattr(pb, kind)):
            name = spec.name
            if name in seen:
                out.append(doc.diag((kind, i, field), f"duplicate {kind} name '{name}'",
                                    f"unique names per kind; first is {kind}[{seen[name]}]"))
            else:
                seen[name] = i
        names[kind] = set(seen)

    for kind in RESOURCE_KINDS:
        for i, spec in enumerate(getattr(pb, kind)):
            for j, ref in enumerate(spec.notify or []):
                out.extend(_check_ref(doc, (kind, i, "notify", j), ref, names))

    variables = set(pb.vars)
    for kind, runtime in (("watches", WATCH_RUNTIME), ("thresholds", THRESHOLD_RUNTIME)):
        for i, spec in enumerate(getattr(pb, kind)):
            allowed = variables | runtime
            if kind == "watches":
                allowed |= spec.group_names()
            for j, action in enumerate(spec.actions):
                out.extend(_check_action(doc, (kind, i, "actions", j), action, pb, names,
                                         allowed))
    return out


def _check_ref(doc: Document, path: tuple[Any, ...], ref: str,
               names: dict[str, set[str]]) -> list[Diagnostic]:
    kind, _, name = ref.partition(":")
    if kind not in RESTARTABLE:
        near = difflib.get_close_matches(kind, RESTARTABLE, n=1)
        hint = f"did you mean '{near[0]}:{name}'?" if near else \
            f"KIND:NAME with KIND one of {', '.join(RESTARTABLE)}"
        return [doc.diag(path, f"'{kind}' resources cannot be restarted", hint)]
    if name not in names.get(kind, set()):
        near = difflib.get_close_matches(name, sorted(names.get(kind, ())), n=1)
        hint = f"did you mean '{kind}:{near[0]}'?" if near else f"a name declared under {kind}:"
        return [doc.diag(path, f"no {kind} resource named '{name}'", hint)]
    return []


def _check_action(doc: Document, path: tuple[Any, ...], action: Action, pb: Playbook,
                  names: dict[str, set[str]], allowed: set[str]) -> list[Diagnostic]:
    out: list[Diagnostic] = []
    if action.notify is not None and action.notify not in pb.notifiers:
        near = difflib.get_close_matches(action.notify, list(pb.notifiers), n=1)
        hint = f"did you mean '{near[0]}'?" if near else \
            ("a name under notifiers: " + ", ".join(pb.notifiers) if pb.notifiers
             else "declare it under notifiers:")
        out.append(doc.diag((*path, "notify"), f"no notifier named '{action.notify}'", hint))
    if action.restart is not None:
        out.extend(_check_ref(doc, (*path, "restart"), action.restart, names))
    raw = doc.data
    for part in path:
        raw = raw[part]
    for sub_path, text in _strings(raw, ()):
        if not has_template(text):
            continue
        try:
            missing = undeclared(text) - allowed
        except Exception as e:  # a syntax error in the template
            out.append(doc.diag((*path, *sub_path), f"template syntax error: {e}", ""))
            continue
        for var in sorted(missing):
            out.append(doc.diag((*path, *sub_path), f"undefined template variable '{var}'",
                                "one of: " + ", ".join(sorted(allowed))))
    return out


def _strings(value: Any, path: tuple[Any, ...]) -> list[tuple[tuple[Any, ...], str]]:
    if isinstance(value, str):
        return [(path, value)]
    if isinstance(value, dict):
        return [x for k, v in value.items() for x in _strings(v, (*path, k))]
    if isinstance(value, list):
        return [x for i, v in enumerate(value) for x in _strings(v, (*path, i))]
    return []
