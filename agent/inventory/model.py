"""The inventory in memory, and the builder every reader fills.

The readers (yaml_format: opsagent's own layout and Ansible's YAML; ini_format: Ansible's INI)
call InventoryBuilder, which refuses a group that would be its own ancestor, and then resolves
everything the way Ansible's InventoryData does:

- membership: a group without a parent is a child of ``all``; a host in no group but ``all`` is
  in ``ungrouped`` (and leaves it once it is in another group);
- variables: a group's depth is its longest distance from ``all``; a host's groups (its own and
  all their ancestors) are merged in order of (depth, ``ansible_group_priority``, name), then the
  host's own variables on top: all < parent groups < child groups < host. A value replaces the
  one below it whole, dicts included (Ansible's default hash_behaviour=replace);
- SSH settings come from the merged variables, by Ansible's names; opsagent's own inventory
  format writes its fields as those variables, so one host reads the same in every format:

    opsagent   Ansible variable               also read (older Ansible names)
    address    ansible_host                   ansible_ssh_host       default: the host's name
    port       ansible_port                   ansible_ssh_port       default: None (SSH's 22)
    user       ansible_user                   ansible_ssh_user       default: None (local user)
    key_file   ansible_ssh_private_key_file   ansible_private_key_file
    sudo       ansible_become                 -                      yes/no/true/false/1/0
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from agent.errors import Diagnostic, InputError

SSH_VARS: dict[str, tuple[str, ...]] = {
    "address": ("ansible_host", "ansible_ssh_host"),
    "port": ("ansible_port", "ansible_ssh_port"),
    "user": ("ansible_user", "ansible_ssh_user"),
    "key_file": ("ansible_ssh_private_key_file", "ansible_private_key_file"),
    "sudo": ("ansible_become",),
}
_TRUE = {"y", "yes", "on", "1", "true", "t"}
_FALSE = {"n", "no", "off", "0", "false", "f"}


@dataclass(frozen=True, slots=True)
class SSHSettings:
    """How to reach a host; None means "not set": the SSH client's default applies."""

    address: str
    port: int | None = None
    user: str | None = None
    key_file: str | None = None
    sudo: bool | None = None


@dataclass(frozen=True)
class Host:
    """One inventory host, its variables already merged along the group tree."""

    name: str
    vars: Mapping[str, Any]
    groups: tuple[str, ...]  # every group it is in, ancestors and all too, in merge order
    ssh: SSHSettings

    def __hash__(self) -> int:  # names are unique in an inventory; vars are not hashable
        return hash(self.name)


@dataclass(frozen=True)
class Group:
    """One group as written: its own hosts, children and variables (not inherited ones)."""

    name: str
    hosts: tuple[str, ...]
    children: tuple[str, ...]
    vars: Mapping[str, Any]
    depth: int = 0
    priority: int = 1

    def __hash__(self) -> int:
        return hash(self.name)


@dataclass(frozen=True)
class Inventory:
    """Hosts in inventory order (the order the file first names them) and every group."""

    hosts: Mapping[str, Host]
    groups: Mapping[str, Group]
    source: str = field(default="", compare=False)
    format: str = field(default="", compare=False)  # opsagent | ansible-yaml | ansible-ini

    def group_hosts(self, name: str) -> list[Host]:
        """Hosts of a group and of its descendants, in inventory order (KeyError if none)."""
        groups, todo = {name}, [name]
        while todo:
            for child in self.groups[todo.pop()].children:
                if child not in groups:
                    groups.add(child)
                    todo.append(child)
        members = {h for g in groups for h in self.groups[g].hosts}
        return [h for n, h in self.hosts.items() if n in members]

    def hosts_for(self, pattern: str = "all", *, limit: str | None = None) -> list[Host]:
        """The hosts an Ansible host pattern selects (and --limit keeps), in inventory order.

        Raises PatternError (a UsageError) for a term that names nothing, with the names
        nearby, and when nothing is left to target.
        """
        from agent.inventory.patterns import select

        return select(self, pattern, limit)


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a reader found something: 1-based line and column, and a path to show."""

    line: int
    col: int
    path: str


@dataclass
class _GroupDraft:
    at: Origin
    hosts: list[str] = field(default_factory=list)
    children: list[str] = field(default_factory=list)
    parents: list[str] = field(default_factory=list)
    vars: dict[str, Any] = field(default_factory=dict)
    var_at: dict[str, Origin] = field(default_factory=dict)
    priority: int = 1


@dataclass
class _HostDraft:
    at: Origin
    groups: list[str] = field(default_factory=list)
    vars: dict[str, Any] = field(default_factory=dict)
    var_at: dict[str, Origin] = field(default_factory=dict)


class InventoryBuilder:
    """Collects hosts, groups and variables with their origins, then resolves an Inventory."""

    def __init__(self, file: str, fmt: str) -> None:
        self.file, self.format = file, fmt
        self.errors: list[Diagnostic] = []
        top = Origin(1, 1, "")
        self._groups = {"all": _GroupDraft(top, children=["ungrouped"]),
                        "ungrouped": _GroupDraft(top, parents=["all"])}
        self._hosts: dict[str, _HostDraft] = {}

    def error(self, at: Origin, message: str, expected: str = "") -> None:
        self.errors.append(Diagnostic(self.file, at.line, at.col, at.path, message, expected))

    def has_group(self, name: str) -> bool:
        return name in self._groups

    def has_host(self, name: str) -> bool:
        return name in self._hosts

    def group_names(self) -> list[str]:
        return list(self._groups)

    def host_names(self) -> list[str]:
        return list(self._hosts)

    def add_group(self, name: str, at: Origin) -> None:
        self._groups.setdefault(name, _GroupDraft(at))

    def add_child(self, parent: str, child: str, at: Origin) -> None:
        """Make child a subgroup of parent (both declared); refuse a loop, naming it."""
        if child == "all":
            self.error(at, f"group 'all' cannot be a child of '{parent}'",
                       "every group is already in all")
            return
        if child == parent:
            self.error(at, f"group '{child}' cannot be its own child", "another group's name")
            return
        loop = self._path(child, parent)
        if loop:
            chain = " → ".join([*loop, child])
            self.error(at, f"group '{child}' would be its own ancestor ({chain})",
                       "a tree of groups without loops")
            return
        p, c = self._groups[parent], self._groups[child]
        if child not in p.children:
            p.children.append(child)
            c.parents.append(parent)

    def _path(self, start: str, goal: str) -> list[str]:
        """Group names from start down its children to goal, or [] when goal is not below."""
        todo: list[list[str]] = [[start]]
        seen = {start}
        while todo:
            path = todo.pop()
            if path[-1] == goal:
                return path
            for child in self._groups[path[-1]].children:
                if child not in seen:
                    seen.add(child)
                    todo.append([*path, child])
        return []

    def add_host(self, name: str, group: str | None, at: Origin, port: int | None = None
                 ) -> None:
        """Add a host (or a membership of it); a port from ``host:port`` counts once, first."""
        host = self._hosts.get(name)
        if host is None:
            host = self._hosts[name] = _HostDraft(at)
            if port is not None:
                self.set_host_var(name, "ansible_port", port, at)
        if group is not None and group not in host.groups:
            host.groups.append(group)
            self._groups[group].hosts.append(name)

    def set_host_var(self, host: str, key: str, value: Any, at: Origin) -> None:
        """A host variable; a later definition replaces an earlier one, as in Ansible."""
        h = self._hosts[host]
        h.vars[key] = value
        h.var_at[key] = at

    def set_group_var(self, group: str, key: str, value: Any, at: Origin) -> None:
        """A group variable, set once: a second definition of the same key is an error."""
        g = self._groups[group]
        if key in g.var_at:
            first = g.var_at[key]
            self.error(at, f"variable '{key}' of group '{group}' is set twice",
                       f"each variable once per group; first set at line {first.line}")
            return
        g.var_at[key] = at
        if key != "ansible_group_priority":
            g.vars[key] = value
        elif isinstance(value, bool) or not isinstance(value, int | str) or not (
                str(value).strip().lstrip("-").isdigit()):
            self.error(at, f"ansible_group_priority {value!r} is not a whole number",
                       "e.g. 10; higher wins among groups of the same depth")
        else:
            g.priority = int(value)

    def build(self) -> Inventory:
        """Resolve membership, depths, variables and SSH settings; InputError if any errors."""
        self._reconcile()
        depth: dict[str, int] = {}
        for name in self._groups:
            self._depth(name, depth)
        hosts = {name: self._resolve(name, draft, depth) for name, draft in self._hosts.items()}
        if self.errors:
            raise InputError(sorted(self.errors, key=lambda d: (d.line, d.col)))
        groups = {n: Group(n, tuple(g.hosts), tuple(g.children), dict(g.vars), depth[n],
                           g.priority) for n, g in self._groups.items()}
        return Inventory(hosts, groups, self.file, self.format)

    def _reconcile(self) -> None:
        top = self._groups["all"]
        for name, g in self._groups.items():
            if name != "all" and not g.parents:
                g.parents.append("all")
                top.children.append(name)
        ungrouped = self._groups["ungrouped"]
        for name, h in self._hosts.items():
            others = set(h.groups) - {"all", "ungrouped"}
            if others and "ungrouped" in h.groups:
                h.groups.remove("ungrouped")
                ungrouped.hosts.remove(name)
            elif not others and "ungrouped" not in h.groups:
                h.groups.append("ungrouped")
                ungrouped.hosts.append(name)

    def _depth(self, name: str, memo: dict[str, int]) -> int:
        if name not in memo:
            parents = self._groups[name].parents
            memo[name] = max((self._depth(p, memo) + 1 for p in parents), default=0)
        return memo[name]

    def _resolve(self, name: str, draft: _HostDraft, depth: dict[str, int]) -> Host:
        member: set[str] = set()
        todo = list(draft.groups)
        while todo:
            g = todo.pop()
            if g not in member:
                member.add(g)
                todo.extend(self._groups[g].parents)
        order = sorted(member, key=lambda g: (depth[g], self._groups[g].priority, g))
        merged: dict[str, Any] = {}
        origin: dict[str, Origin] = {}
        for g in order:
            merged.update(self._groups[g].vars)
            origin.update(self._groups[g].var_at)
        merged.update(draft.vars)
        origin.update(draft.var_at)
        return Host(name, merged, tuple(order), self._ssh(name, merged, origin))

    def _ssh(self, name: str, merged: dict[str, Any], origin: dict[str, Origin]) -> SSHSettings:
        found: dict[str, Any] = {}
        for setting, names in SSH_VARS.items():
            key = next((k for k in names if k in merged), None)
            if key is None:
                continue
            value, at = merged[key], origin[key]
            problem, fixed = _check_setting(setting, value)
            if problem:
                diag = Diagnostic(self.file, at.line, at.col, at.path,
                                  f"{key} {value!r} {problem[0]}", problem[1])
                if diag not in self.errors:
                    self.errors.append(diag)
                continue
            found[setting] = fixed
        return SSHSettings(address=found.pop("address", name), **found)


def as_flag(value: Any) -> bool | None:
    """A variable's true or false as Ansible reads one (yes/no, on/off, 1/0, ...); None when
    it is neither."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower() if isinstance(value, str | int | float) else ""
    return (text in _TRUE) if text in _TRUE or text in _FALSE else None


def _check_setting(setting: str, value: Any) -> tuple[tuple[str, str] | None, Any]:
    """(problem, expected) for a bad value, else (None, the value as SSHSettings holds it)."""
    if setting == "port":
        if isinstance(value, str) and value.strip().isdigit():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 65536:
            return ("is not a port", "a whole number from 1 to 65535"), None
        return None, value
    if setting == "sudo":
        flag = as_flag(value)
        if flag is not None:
            return None, flag
        return ("is not true or false", "true, false, yes or no"), None
    if not isinstance(value, str) or not value.strip():
        return ("is not text", "e.g. 192.0.2.11, ops, ~/.ssh/id_ed25519"), None
    return None, value


def suggest(name: str, names: list[str], fallback: str) -> str:
    """"did you mean 'x'?" for the nearest of names, or fallback when none is near."""
    near = difflib.get_close_matches(name, names, n=1, cutoff=0.6)
    return f"did you mean '{near[0]}'?" if near else fallback
