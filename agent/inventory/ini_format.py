"""Ansible's INI inventory, read as ansible-core's ini plugin reads it (2.19 checked).

    web01 ansible_host=192.0.2.11      # before any section: ungrouped
    [web]
    web[02:04].example.com ansible_port=2222 note="two words"
    [web:vars]
    api_port=5001                      # the rest of the line is the value
    [prod:children]
    web

Values go through Python's ast.literal_eval, on host lines and in ``:vars`` sections alike (as
the plugin's code does, whatever its documentation says about :vars): ``2222`` is a number,
``True`` a boolean, ``"'007'"`` the text 007, anything else stays text. Comments start with
``#`` or ``;``. A group named in ``[x:children]`` or given ``[x:vars]`` must be declared by
``[x]`` or ``[x:children]`` somewhere in the file: Ansible refuses it otherwise, to catch
misspelt names (ansible/ansible#82135), and so do we, with the nearest names.

Every problem is one located line, and reading goes on to report the others; Ansible stops
at the first. Stricter than Ansible: a key given twice on one host line, a group variable set
twice, an empty range like ``[10:01]``.
"""

from __future__ import annotations

import ast
import re
import shlex
import warnings
from typing import Any

from agent.inventory.model import Inventory, InventoryBuilder, Origin, suggest
from agent.inventory.patterns import expand_range, split_host_port

_SECTION = re.compile(r"^\[([^:\]\s]+)(?::(\w+))?\]\s*(?:#.*)?$")
_GROUP_NAME = re.compile(r"^([^:\]\s]+)\s*(?:#.*)?$")


def parse_ini(text: str, file: str) -> Inventory:
    """The inventory an INI text holds; InputError with every located problem if bad."""
    return _IniReader(file).read(text)


class _IniReader:
    def __init__(self, file: str) -> None:
        self.b = InventoryBuilder(file, "ansible-ini")
        self.declared: set[str] = {"all", "ungrouped"}
        self.edges: list[tuple[str, str, Origin]] = []
        self.var_sections: list[tuple[str, Origin]] = []

    def read(self, text: str) -> Inventory:
        group, state, header = "ungrouped", "hosts", "(top)"
        for lineno, raw in enumerate(text.splitlines(), 1):
            line = raw.strip()
            if not line or line[0] in "#;":
                continue
            col = len(raw) - len(raw.lstrip()) + 1
            at = Origin(lineno, col, header)
            if line == "---":  # Ansible's check too; the rest would be one error per line
                self.b.error(at, "this is YAML, not an INI inventory",
                             "a YAML inventory named *.yaml or *.yml")
                break
            m = _SECTION.match(line)
            if m:
                group, state = m[1], m[2] or "hosts"
                header = line.split("]")[0] + "]"
                at = Origin(lineno, col, header)
                if state not in ("hosts", "children", "vars"):
                    self.b.error(at, f"section {header} has unknown type '{state}'",
                                 "[NAME], [NAME:vars] or [NAME:children]")
                    state = "skip"
                    continue
                self.b.add_group(group, at)
                if state == "vars":
                    self.var_sections.append((group, at))
                else:
                    self.declared.add(group)
            elif line.startswith("[") and line.endswith("]"):
                self.b.error(Origin(lineno, col, line), "invalid section header",
                             "[NAME], [NAME:vars] or [NAME:children], without spaces")
                state = "skip"
            elif state == "hosts":
                self._host_line(raw, line, group, at)
            elif state == "vars":
                self._var_line(line, group, at)
            elif state == "children":
                child = _GROUP_NAME.match(line)
                if child:
                    self.edges.append((group, child[1], at))
                else:
                    self.b.error(at, f"'{line}' is not a group name", "one group name per line")
        self._resolve()
        return self.b.build()

    def _host_line(self, raw: str, line: str, group: str, at: Origin) -> None:
        try:
            tokens = shlex.split(line, comments=True)
        except ValueError as e:
            self.b.error(at, f"cannot split the host line: {e}", "balanced quotes")
            return
        if not tokens:
            return
        pattern, port = split_host_port(tokens[0])
        if tokens[0].endswith(":") and port is None:
            self.b.error(at, f"'{tokens[0]}' is not a host name",
                         "NAME or NAME:PORT (a YAML inventory needs a .yaml name)")
            return
        try:
            hosts = expand_range(pattern)
        except ValueError as e:
            self.b.error(at, str(e), "a range like web[01:10] or db-[a:c]")
            return
        variables: dict[str, tuple[Any, Origin]] = {}
        pos = len(raw) - len(raw.lstrip()) + len(tokens[0])
        for token in tokens[1:]:
            key, sep, value = token.partition("=")
            found = raw.find(key + "=" if sep else token, pos)
            col = (found if found >= 0 else pos) + 1
            pos = found + len(key) if found >= 0 else pos
            where = Origin(at.line, col, f"{at.path}.{pattern}.{key}" if sep else at.path)
            if not sep or not key:
                self.b.error(where, f"'{token}' is not a variable assignment",
                             "KEY=VALUE after the host name")
                return
            if key in variables:
                self.b.error(where, f"variable '{key}' is given twice for {pattern}",
                             f"each key once per line; first at column "
                             f"{variables[key][1].col}")
                return
            variables[key] = (literal(value), where)
        for host in hosts:
            self.b.add_host(host, group, at, port)
            for key, (value, where) in variables.items():
                self.b.set_host_var(host, key, value, where)

    def _var_line(self, line: str, group: str, at: Origin) -> None:
        key, sep, value = line.partition("=")
        if not sep or not key.strip():
            self.b.error(at, f"'{line}' is not a variable assignment", "KEY=VALUE")
            return
        where = Origin(at.line, at.col, f"{at.path}.{key.strip()}")
        self.b.set_group_var(group, key.strip(), literal(value.strip()), where)

    def _resolve(self) -> None:
        """Children and :vars may name groups declared further down: check them at the end."""
        names = sorted(self.declared - {"all", "ungrouped"})
        for group, at in self.var_sections:
            if group not in self.declared:
                self.b.error(at, f"group '{group}' is never declared",
                             suggest(group, names, f"a [{group}] or [{group}:children] section"))
        for parent, child, at in self.edges:
            where = Origin(at.line, at.col, f"{at.path}.{child}")
            if child in self.declared:
                self.b.add_child(parent, child, where)
            else:
                self.b.error(where, f"group '{child}' is never declared",
                             suggest(child, names, f"a [{child}] or [{child}:children] section"))


def literal(text: str) -> Any:
    """An INI value as Ansible reads it: a Python literal if it is one, else the text."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SyntaxWarning)
            value: Any = ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return text
    return _plain(value)


def _plain(value: Any) -> Any:
    if isinstance(value, list | tuple | set):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if value is ...:
        return "..."
    if isinstance(value, complex):
        return str(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", "surrogateescape")
    return value
