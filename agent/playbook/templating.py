"""Jinja2 templating of playbook values: sandboxed, strict about undefined variables.

A value that is exactly one expression (``"{{ api_port }}"``) keeps the expression's native
type, as Ansible does, so a templated number is still a number for the schema. Subtrees that
are rendered later, when they fire (the actions of watches and thresholds), are left alone
here; their variables are checked by the semantic pass instead.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from functools import cache
from typing import Any

from agent.errors import Diagnostic
from agent.playbook.loader import Document, Path

_SINGLE_EXPR = re.compile(r"^\s*\{\{(?P<expr>(?:(?!\}\}|\{\{).)*)\}\}\s*$", re.S)
# Rendered when they fire, with runtime variables: (kind, index, field).
DEFERRED = {("watches", "actions"), ("thresholds", "actions")}


def has_template(text: str) -> bool:
    return "{{" in text or "{%" in text


def any_template(value: Any) -> bool:
    """Whether a string anywhere in value (a YAML tree) is a template."""
    if isinstance(value, str):
        return has_template(value)
    if isinstance(value, dict):
        return any(any_template(v) for v in value.values())
    if isinstance(value, list):
        return any(any_template(v) for v in value)
    return False


@cache
def environment() -> Any:
    from jinja2 import StrictUndefined
    from jinja2.sandbox import SandboxedEnvironment

    return SandboxedEnvironment(undefined=StrictUndefined, keep_trailing_newline=True,
                                autoescape=False)


def render(text: str, variables: Mapping[str, Any]) -> Any:
    """Render one value; jinja2 errors propagate to the caller."""
    env = environment()
    m = _SINGLE_EXPR.match(text)
    if m:
        value = env.compile_expression(m.group("expr").strip(), undefined_to_none=False)(
            **variables)
        from jinja2 import Undefined

        if isinstance(value, Undefined):
            str(value)  # StrictUndefined: raises UndefinedError naming the variable
        return value
    return env.from_string(text).render(**variables)


def undeclared(text: str) -> set[str]:
    """Variables a template reads that it does not define itself."""
    from jinja2 import meta

    env = environment()
    return set(meta.find_undeclared_variables(env.parse(text)))


def describe_error(err: Exception) -> tuple[str, str]:
    """(what is wrong, what is expected) for a jinja2 exception."""
    from jinja2 import TemplateSyntaxError, UndefinedError

    if isinstance(err, UndefinedError):
        m = re.search(r"'([^']+)' is undefined", str(err))
        name = m.group(1) if m else str(err)
        return (f"undefined template variable '{name}'",
                f"define it under vars: or pass -e {name}=VALUE")
    if isinstance(err, TemplateSyntaxError):
        return f"template syntax error: {err.message}", "a valid Jinja2 expression"
    return f"template failed: {err}", ""


def render_document(doc: Document, variables: Mapping[str, Any]) -> list[Diagnostic]:
    """Render every templated string of doc.data in place; return the problems found."""
    errors: list[Diagnostic] = []

    def walk(value: Any, path: Path) -> Any:
        if isinstance(value, dict):
            for k, v in value.items():
                if (len(path) == 2 and (path[0], k) in DEFERRED) or path == () and k == "vars":
                    continue
                value[k] = walk(v, (*path, k))
        elif isinstance(value, list):
            for i, v in enumerate(value):
                value[i] = walk(v, (*path, i))
        elif isinstance(value, str) and has_template(value):
            try:
                return render(value, variables)
            except Exception as e:  # jinja2 raises many kinds; each becomes a diagnostic
                what, expected = describe_error(e)
                errors.append(doc.diag(path, what, expected))
        return value

    walk(doc.data, ())
    return errors
