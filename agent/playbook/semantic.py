"""Checks that need the whole playbook: unique names, references, deferred templates."""

from __future__ import annotations

import difflib
from typing import Any

from agent.errors import Diagnostic
from agent.playbook.loader import Document
from agent.playbook.models import RESOURCE_KINDS, Action, Playbook
from agent.playbook.models.rules import HOST_METRICS, WATCH_METRICS, WatchSpec
from agent.playbook.templating import has_template, undeclared

# Kinds whose resources can be restarted by a handler or a restart action.
RESTARTABLE = ("processes", "services", "containers")
NAMED_KINDS = (*RESOURCE_KINDS, "checks", "thresholds", "watches", "backups", "audits",
               "db_maintenance")
WATCH_RUNTIME = {"key", "count", "line", "watch", "host"}
THRESHOLD_RUNTIME = {"value", "metric", "threshold", "severity", "host", "rule"}


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
    for i, w in enumerate(pb.watches):
        out.extend(_check_filter(doc, i, w))
    for i, t in enumerate(pb.thresholds):
        for j, action in enumerate(t.actions):
            for name in ("block_ip", "snapshot"):
                if getattr(action, name) is not None:
                    out.append(doc.diag(("thresholds", i, "actions", j, name),
                                        f"a threshold cannot {name.replace('_', ' ')}",
                                        "thresholds take notify, restart or run; block_ip "
                                        "and snapshot belong to watches"))
        out.extend(_check_metric(doc, ("thresholds", i, "metric"), t.metric, names))
        if t.escalation is not None and t.escalation not in pb.escalations:
            out.append(doc.diag(("thresholds", i, "escalation"),
                                f"no escalation policy named '{t.escalation}'",
                                _one_of(t.escalation, pb.escalations, "escalations:")))
    for i, audit in enumerate(pb.audits):
        for j, name in enumerate(audit.notify or []):
            if name not in pb.notifiers:
                out.append(doc.diag(("audits", i, "notify", j), f"no notifier named '{name}'",
                                    _one_of(name, pb.notifiers, "notifiers:")))
    windows = {w.name for w in pb.maintenance}
    for i, db in enumerate(pb.db_maintenance):
        for sub_path, window in db.windows():
            if window not in windows:
                out.append(doc.diag(("db_maintenance", i, *sub_path),
                                    f"no maintenance window named '{window}'",
                                    _one_of(window, sorted(windows), "maintenance:")))
    for policy, steps in pb.escalations.items():
        for j, step in enumerate(steps):
            for k, name in enumerate(step.notify):
                if name not in pb.notifiers:
                    out.append(doc.diag(("escalations", policy, j, "notify", k),
                                        f"no notifier named '{name}'",
                                        _one_of(name, pb.notifiers, "notifiers:")))
    return out


def _check_filter(doc: Document, i: int, w: WatchSpec) -> list[Diagnostic]:
    """A fail2ban filter must exist, resolve and compile now, not when lines arrive."""
    if isinstance(w.pattern, str):
        return []
    from agent.watches.fail2ban import FilterError
    from agent.watches.matcher import compile_watch

    try:
        compiled = compile_watch(w)
    except FilterError as e:
        return [doc.diag(("watches", i, "pattern", "fail2ban_filter"), str(e),
                         "a readable fail2ban filter, e.g. /etc/fail2ban/filter.d/sshd.conf")]
    if w.key and not any(compiled.indexes(k, w.key) for k in range(len(compiled.alternatives))):
        return [doc.diag(("watches", i, "key"), f"the filter's regexes have no group {w.key!r}",
                         "ip (from <HOST>/<ADDR>), host, user, or an <F-NAME> tag's name")]
    return []


def _one_of(name: str, declared: Any, where: str) -> str:
    near = difflib.get_close_matches(name, list(declared), n=1)
    if near:
        return f"did you mean '{near[0]}'?"
    if declared:
        return f"a name under {where} " + ", ".join(declared)
    return f"declare it under {where}"


def _check_metric(doc: Document, path: tuple[Any, ...], metric: str,
                  names: dict[str, set[str]]) -> list[Diagnostic]:
    checks, watches, audits = names["checks"], names["watches"], names["audits"]
    if metric.startswith("audit."):
        name, _, key = metric[len("audit."):].rpartition(".")
        if key != "findings":
            return [doc.diag(path, f"'{metric}' is no audit metric", "audit.NAME.findings")]
        if name not in audits:
            return [doc.diag(path, f"no audit named '{name}'", _one_of(name, sorted(audits),
                                                                        "audits:"))]
        return []
    if metric.startswith("watch."):
        name, _, key = metric[len("watch."):].rpartition(".")
        if key not in WATCH_METRICS:
            return [doc.diag(path, f"'{metric}' is no log metric",
                             "watch.NAME." + ", watch.NAME.".join(WATCH_METRICS))]
        if name not in watches:
            return [doc.diag(path, f"no watch named '{name}'", _one_of(name, sorted(watches),
                                                                        "watches:"))]
        return []
    if metric.startswith("check."):
        name, _, key = metric[len("check."):].rpartition(".")
        if not name:
            return [doc.diag(path, f"'{metric}' names no value", "check.NAME.KEY, e.g. "
                             "check.api-health.latency_ms")]
        if name not in checks:
            return [doc.diag(path, f"no check named '{name}'", _one_of(name, sorted(checks),
                                                                        "checks:"))]
        return []
    if metric not in HOST_METRICS:
        near = difflib.get_close_matches(metric, HOST_METRICS, n=1)
        hint = f"did you mean '{near[0]}'?" if near else \
            "one of " + ", ".join(HOST_METRICS) + ", check.NAME.KEY or watch.NAME.KEY"
        return [doc.diag(path, f"unknown metric '{metric}'", hint)]
    return []


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
        out.append(doc.diag((*path, "notify"), f"no notifier named '{action.notify}'",
                            _one_of(action.notify, pb.notifiers, "notifiers:")))
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
