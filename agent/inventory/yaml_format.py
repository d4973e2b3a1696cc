"""YAML inventories: opsagent's own layout, and Ansible's, told apart by their top level.

opsagent's layout (schemas/inventory.schema.json; inventory.example.yaml) names every host
once under ``hosts:`` with its SSH settings, and groups refer to hosts and children by name:

    user: ops                         # SSH settings and vars: at the top (every host), on a
    vars: {collector: http://...}     # group, or on a host; the most specific wins
    hosts:
      web[01:02]: {}
      db01: {address: 192.0.2.21, port: 2222, sudo: true}
    groups:
      web: {hosts: ["web[01:02]"], vars: {api_port: 5001}}
      prod: {children: [web], key_file: ~/.ssh/prod}

Ansible's layout (``all: {hosts:, children:, vars:}``, or groups at the top) is read as its
yaml inventory plugin reads it, but a key other than hosts/children/vars in a group is an
error here where Ansible only warns (it is nearly always a typo such as ``host:``).

A file is Ansible's when its top level has ``all:``; opsagent's when it has ``groups:``, or
``hosts:`` holding hosts; Ansible's again when it has no ``name:`` (playbooks do) and every
top-level value is a mapping (a group) or empty.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, ValidationError

from agent.errors import InputError
from agent.inventory.model import Inventory, InventoryBuilder, Origin, suggest
from agent.inventory.patterns import expand_range, split_host_port
from agent.playbook.loader import Document, Path, format_path
from agent.playbook.models.base import Spec

Format = Literal["opsagent", "ansible-yaml"]
SCHEMA = "inventory.schema.json"
_SECTIONS = ("hosts", "children", "vars")
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.@-]*$")
_NAME_HINT = "letters, digits and _ . @ -; no spaces or , : & ! ~ * ?"
FIELD_VARS = {"address": "ansible_host", "port": "ansible_port", "user": "ansible_user",
              "key_file": "ansible_ssh_private_key_file", "sudo": "ansible_become"}


class SSHFields(Spec):
    """SSH settings shared by the whole inventory, a group, or one host."""

    port: int | None = Field(None, ge=1, le=65535, description="SSH port (ansible_port); "
                             "unset: 22.", examples=[2222])
    user: str | None = Field(None, min_length=1, description="SSH user (ansible_user); unset: "
                             "the local user. When it is not root, sudo runs the agent.",
                             examples=["ops"])
    key_file: str | None = Field(None, min_length=1, description="Private key file "
                                 "(ansible_ssh_private_key_file); unset: ssh-agent and ~/.ssh.",
                                 examples=["~/.ssh/id_ed25519"])
    sudo: bool | None = Field(None, description="Run the agent through sudo (ansible_become).",
                              examples=[True])


class HostEntry(SSHFields):
    """One host (or a range of them): where it is and its own variables."""

    address: str | None = Field(None, min_length=1, description="Address or DNS name to "
                                "connect to (ansible_host); unset: the host's name.",
                                examples=["192.0.2.11"])
    vars: dict[str, Any] = Field(default_factory=dict, description="Variables of this host; "
                                 "they win over every group's.", examples=[{"api_port": 5002}])


class GroupEntry(SSHFields):
    """A group: hosts by name, child groups, and variables its hosts inherit."""

    hosts: list[str] = Field(default_factory=list, description="Hosts defined under the top "
                             "level hosts:, by name; ranges allowed.",
                             examples=[["web01", "web[02:04]"]])
    children: list[str] = Field(default_factory=list, description="Groups whose hosts are in "
                                "this group too; their variables win over this group's.",
                                examples=[["web", "db"]])
    vars: dict[str, Any] = Field(default_factory=dict, description="Variables of the group's "
                                 "hosts.", examples=[{"api_port": 5001}])


class InventoryFile(SSHFields):
    """An opsagent inventory: hosts with their SSH settings, groups of them, variables."""

    vars: dict[str, Any] = Field(default_factory=dict, description="Variables of every host "
                                 "(Ansible's group all).", examples=[{"collector": "http://"
                                                                      "127.0.0.1:8080"}])
    hosts: dict[str, HostEntry | None] = Field(
        default_factory=dict, description="Every host by name; a name may hold ranges like "
        "web[01:10] or db-[a:c].", examples=[{"web01": {"address": "192.0.2.11"}}])
    groups: dict[str, GroupEntry | None] = Field(
        default_factory=dict, description="Groups by name; all and ungrouped are implicit.",
        examples=[{"web": {"hosts": ["web01"], "vars": {"api_port": 5001}}}])


def detect(data: Any) -> Format | None:
    """Which YAML inventory layout data is, or None when it is not an inventory."""
    if not isinstance(data, dict) or not data:
        return None
    if "all" in data:
        return "ansible-yaml"
    hosts = data.get("hosts")
    group_shaped = isinstance(hosts, dict) and hosts and set(hosts) <= set(_SECTIONS)
    if "groups" in data or (isinstance(hosts, dict) and not group_shaped):
        return "opsagent"
    if "name" not in data and all(v is None or isinstance(v, dict) for v in data.values()):
        return "ansible-yaml"  # playbooks have a name; these are groups (a typo is reported)
    return None


def read_yaml(doc: Document, *, schema_check: bool = False) -> Inventory:
    """The inventory in doc (either layout); InputError with located diagnostics if bad."""
    fmt = detect(doc.data)
    if fmt is None:
        raise InputError([doc.diag((), "this is not an inventory", "a top level with all: "
                                   "(Ansible) or hosts: and groups: (opsagent)")])
    return _read_opsagent(doc, schema_check) if fmt == "opsagent" else _read_ansible(doc)


def _at(doc: Document, path: Path, *, key: bool = False) -> Origin:
    line, col = doc.locate(path, key=key)
    return Origin(line, col, format_path(path))


def _names(b: InventoryBuilder, doc: Document, path: Path, text: str, *, ranges: bool = True,
           port: bool = False) -> tuple[list[str], int | None]:
    """Host names a key stands for (ranges expanded), or [] after reporting why not."""
    at = _at(doc, path, key=True)
    pattern, number = split_host_port(text) if port else (text, None)
    try:
        names = expand_range(pattern) if ranges else [pattern]
    except ValueError as e:
        b.error(at, str(e), "a range like web[01:10] or db-[a:c]")
        return [], None
    if not port:
        for name in names:
            if not _NAME.match(name):
                b.error(at, f"'{name}' is not a valid name", _NAME_HINT)
                return [], None
    elif not pattern or pattern.strip() == "---" or pattern.endswith(":"):
        b.error(at, f"'{text}' is not a host name", "a name, an address, or NAME:PORT")
        return [], None
    return names, number


# --- opsagent's layout --------------------------------------------------------------------

def _read_opsagent(doc: Document, schema_check: bool) -> Inventory:
    from agent.playbook import pydantic_diagnostics, schema

    errors = schema.check(doc, SCHEMA) if schema_check else []
    try:
        spec = InventoryFile.model_validate(doc.data)
    except ValidationError as e:
        errors = errors or schema.check(doc, SCHEMA)
        more = [d for d in pydantic_diagnostics(doc, e)
                if not any(d.path == x.path or d.path.startswith(x.path + ".") for x in errors)]
        raise InputError(sorted(errors + more, key=lambda d: (d.line, d.col))) from None
    if errors:
        raise InputError(errors)
    b = InventoryBuilder(doc.file, "opsagent")
    _level(b, doc, (), spec, "all", None)
    for key, entry in spec.hosts.items():
        for name in _names(b, doc, ("hosts", key), key)[0]:
            if b.has_host(name):
                b.error(_at(doc, ("hosts", key), key=True), f"host '{name}' is defined twice",
                        "each host once under hosts:")
                continue
            b.add_host(name, None, _at(doc, ("hosts", key), key=True))
            _level(b, doc, ("hosts", key), entry or HostEntry(), None, name)
    for gname in spec.groups:
        at = _at(doc, ("groups", gname), key=True)
        if gname in ("all", "ungrouped"):
            b.error(at, f"group '{gname}' is implicit", "top-level vars: and SSH settings "
                    "apply to every host")
        elif _names(b, doc, ("groups", gname), gname, ranges=False)[0]:
            b.add_group(gname, at)
    for gname, group in spec.groups.items():
        if b.has_group(gname) and gname not in ("all", "ungrouped"):
            _group(b, doc, gname, group or GroupEntry(), list(spec.groups))
    return b.build()


def _group(b: InventoryBuilder, doc: Document, gname: str, group: GroupEntry,
           groups: list[str]) -> None:
    path: Path = ("groups", gname)
    for i, ref in enumerate(group.hosts):
        names, _ = _names(b, doc, (*path, "hosts", i), ref)
        for name in names:
            if b.has_host(name):
                b.add_host(name, gname, _at(doc, (*path, "hosts", i)))
            else:
                b.error(_at(doc, (*path, "hosts", i)), f"host '{name}' is not defined",
                        suggest(name, b.host_names(), "a host named under hosts:"))
                break
    for i, child in enumerate(group.children):
        at = _at(doc, (*path, "children", i))
        if b.has_group(child) and child != "ungrouped":
            b.add_child(gname, child, at)
        elif child not in groups:
            b.error(at, f"group '{child}' is not defined",
                    suggest(child, [g for g in groups if g != gname], "a group under groups:"))
    _level(b, doc, path, group, gname, None)


def _level(b: InventoryBuilder, doc: Document, path: Path, spec: SSHFields, group: str | None,
           host: str | None) -> None:
    """Set the vars and SSH fields of the top level, a group or a host, refusing a setting
    given both as a field and as its Ansible variable."""
    own: dict[str, Any] = dict(getattr(spec, "vars", {}))
    items: list[tuple[str, Any, Origin]] = [
        (k, v, _at(doc, (*path, "vars", k))) for k, v in own.items()]
    for fname, var in FIELD_VARS.items():
        value = getattr(spec, fname, None)
        if value is None:
            continue
        at = _at(doc, (*path, fname))
        if var in own:
            b.error(at, f"{fname} is also given as vars.{var}", "one of the two")
            continue
        items.append((var, value, at))
    for key, value, at in items:
        if host is not None:
            b.set_host_var(host, key, value, at)
        elif group is not None:
            b.set_group_var(group, key, value, at)


# --- Ansible's layout ---------------------------------------------------------------------

def _read_ansible(doc: Document) -> Inventory:
    b = InventoryBuilder(doc.file, "ansible-yaml")
    if "plugin" in doc.data:
        b.error(_at(doc, ("plugin",), key=True), "this is an inventory plugin's configuration",
                "a static inventory: opsagent runs no inventory plugins")
        return b.build()
    for name, data in doc.data.items():
        _ansible_group(b, doc, name, data, (name,))
    return b.build()


def _ansible_group(b: InventoryBuilder, doc: Document, name: str, data: Any, path: Path,
                   parent: str | None = None) -> None:
    at = _at(doc, path, key=True)
    if not name.strip():
        b.error(at, "a group needs a name", "a group name")
        return
    if data is not None and not isinstance(data, dict):
        b.error(_at(doc, path), f"group '{name}' is {_kind(data)}",
                "a mapping with hosts:, children: or vars:")
        return
    b.add_group(name, at)
    if parent is not None:  # before the group's own children, so a loop shows where it closes
        b.add_child(parent, name, at)
    for key, value in (data or {}).items():
        kpath = (*path, key)
        if key not in _SECTIONS:
            b.error(_at(doc, kpath, key=True), f"unknown key '{key}' in group '{name}'",
                    suggest(key, list(_SECTIONS), "hosts, children or vars"))
            continue
        if isinstance(value, str) and key != "vars":
            value = {value: None}  # Ansible takes `hosts: web01` for {web01: null}
        if value is None:
            continue
        if not isinstance(value, dict):
            b.error(_at(doc, kpath), f"{key} of group '{name}' is {_kind(value)}", "a mapping")
            continue
        for item, sub in value.items():
            ipath = (*kpath, item)
            if key == "vars":
                b.set_group_var(name, item, sub, _at(doc, ipath))
            elif key == "children":
                _ansible_group(b, doc, item, sub, ipath, name)
            else:
                _ansible_hosts(b, doc, name, item, sub, ipath)


def _ansible_hosts(b: InventoryBuilder, doc: Document, group: str, pattern: str, data: Any,
                   path: Path) -> None:
    if data is not None and not isinstance(data, dict):
        b.error(_at(doc, path), f"host '{pattern}' has {_kind(data)}",
                "a mapping of its variables, or nothing")
        return
    names, port = _names(b, doc, path, pattern, port=True)
    at = _at(doc, path, key=True)
    for host in names:
        b.add_host(host, group, at, port)
        for key, value in (data or {}).items():
            b.set_host_var(host, key, value, _at(doc, (*path, key)))


def _kind(value: Any) -> str:
    if isinstance(value, list):
        return "a list"
    return "text" if isinstance(value, str) else f"a {type(value).__name__}"
