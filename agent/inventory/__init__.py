"""Inventories: which hosts a fleet run reaches, how, and with which variables.

Three formats, one model (agent.inventory.model.Inventory):

- opsagent's own YAML (inventory.example.yaml, schemas/inventory.schema.json);
- Ansible's YAML inventory (``all: {hosts:, children:, vars:}``);
- Ansible's INI inventory (``[group]``, ``[group:vars]``, ``[group:children]``).

A file named ``*.yaml``, ``*.yml`` or ``*.json`` is YAML (its top level says which layout);
any other name (``hosts``, ``inventory.ini``) is INI, as Ansible's own fallback reads it.
``Inventory.hosts_for(pattern, limit=...)`` picks hosts as Ansible's patterns do.
"""

from __future__ import annotations

import os

from agent.inventory.model import Group, Host, Inventory, SSHSettings
from agent.inventory.patterns import PatternError

YAML_SUFFIXES = (".yaml", ".yml", ".json")


def load_inventory(path: str, *, schema_check: bool = False) -> Inventory:
    """Read an inventory file of any of the three formats; InputError (located) if bad.

    schema_check=True (``opsagent validate``) also checks opsagent's layout against its JSON
    Schema, for the editor's wording of the same problems the model refuses.
    """
    from agent.playbook.loader import parse, read_text

    text = read_text(path)
    if not path.endswith(YAML_SUFFIXES):
        from agent.inventory.ini_format import parse_ini

        return parse_ini(text, path)
    from agent.inventory.yaml_format import read_yaml

    return read_yaml(parse(text, path), schema_check=schema_check)


def is_inventory_file(path: str) -> bool:
    """Whether ``opsagent validate PATH`` should read path as an inventory, not a playbook:
    any file not named like YAML, or YAML whose top level is an inventory's."""
    if not path.endswith(YAML_SUFFIXES):
        return not os.path.isdir(path)
    from agent.errors import InputError
    from agent.inventory.yaml_format import detect
    from agent.playbook.loader import load

    try:
        return detect(load(path).data) is not None
    except InputError:
        return False  # the playbook loader reports the same problem


__all__ = ["Group", "Host", "Inventory", "PatternError", "SSHSettings", "is_inventory_file",
           "load_inventory"]
