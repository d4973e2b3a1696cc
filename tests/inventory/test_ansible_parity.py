"""Side by side with Ansible itself: host variables, group membership and pattern selection.

Runs when ansible-core is installed in the peer tools' venv (/tmp/peers-venv, set up by
../shared/bench/peers/setup_peers.sh); CI does not install Ansible, so there it is skipped.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess

import pytest

from agent.inventory import PatternError, load_inventory
from tests.inventory.samples import (
    EXAMPLE_ANSIBLE_YAML,
    EXAMPLE_INI,
    FLEET_INI,
    FLEET_YAML,
    PATTERNS_INI,
    write,
)

PEERS = pathlib.Path(os.environ.get("OPSAGENT_PEERS_VENV", "/tmp/peers-venv"))
ANSIBLE_INVENTORY = PEERS / "bin" / "ansible-inventory"
pytestmark = pytest.mark.skipif(not ANSIBLE_INVENTORY.exists(),
                                reason=f"ansible-core is not installed in {PEERS}")

PRECEDENCE_YAML = """\
all:
  vars: {v: all, w: all}
  hosts:
    h1: {w: host}
    lone:
  children:
    zeta: {hosts: {h1: }, vars: {v: zeta}}
    alpha: {hosts: {h1: }, vars: {v: alpha}}
    mid:
      vars: {v: mid, ansible_group_priority: 3}
      children:
        deep: {hosts: {h2: }, vars: {x: {a: 1}}}
    other: {hosts: {"h2:2201": , "h3:2202": }, vars: {x: {b: 2}, v: other}}
"""

LITERALS_INI = """\
a1 n=5 s="two words" q="'007'" l="[1, 2]" d="{'k': 'v'}" b=yes t=True
[g]
a1
r[8:10].example.com ansible_host=10.0.0.1
[g:vars]
text = some words # and a comment
num=42
[h:children]
g
[h]
"""

SAMPLES = {"fleet.ini": FLEET_INI, "fleet.yaml": FLEET_YAML, "example": EXAMPLE_INI,
           "example.yml": EXAMPLE_ANSIBLE_YAML, "patterns": PATTERNS_INI,
           "precedence.yaml": PRECEDENCE_YAML, "literals": LITERALS_INI}

PATTERNS = ["all", "*", "webservers", "web02", "web*", "*.example.com", "~web0[12]",
            r"~(web|db)\d+", "dbservers:webservers", "webservers,lb", "webservers:&staging",
            "webservers:!staging", "webservers:&staging:!web02", "!web02:&staging:webservers",
            "!staging", "&staging", "production:!webservers:!lb", "webservers[0]",
            "webservers[-1]", "webservers[1:2]", "webservers[1:]", "production[0-1]",
            "staging[0]:dbservers[1]", "db01", "dbservers:!db01", "webservers:&db01",
            "web0[!2]", "ungrouped", "lb*:db*"]
LIMITS = [("production", "staging:!db02"), ("webservers", "~web0[23]"), ("all", "db*,lb")]

_SELECT = """
import json, sys
from ansible.inventory.manager import InventoryManager
from ansible.parsing.dataloader import DataLoader
inv = InventoryManager(loader=DataLoader(), sources=[sys.argv[1]])
out = []
for pattern, limit in json.loads(sys.argv[2]):
    inv.subset(limit)
    out.append([h.name for h in inv.get_hosts(pattern)])
print(json.dumps(out))
"""


def ansible_env(tmp_path):
    return dict(os.environ, ANSIBLE_LOCAL_TEMP=str(tmp_path / "ansible-tmp"),
                ANSIBLE_INVENTORY_ANY_UNPARSED_IS_FAILED="true", ANSIBLE_NOCOLOR="1")


def ansible_list(path, tmp_path):
    r = subprocess.run([ANSIBLE_INVENTORY, "-i", path, "--list"], capture_output=True,
                       text=True, timeout=120, env=ansible_env(tmp_path))
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def transitive(listing, group, seen=None):
    seen = set() if seen is None else seen
    entry = listing.get(group, {})
    hosts = set(entry.get("hosts", []))
    for child in entry.get("children", []):
        if child not in seen:
            seen.add(child)
            hosts |= transitive(listing, child, seen)
    return hosts


@pytest.mark.parametrize("name", list(SAMPLES))
def test_host_vars_and_membership_match_ansible_inventory(tmp_path, name):
    path = write(tmp_path, name, SAMPLES[name])
    ours = load_inventory(path)
    theirs = ansible_list(path, tmp_path)
    hostvars = theirs.pop("_meta")["hostvars"]
    groups = set(theirs) | {c for g in theirs.values() for c in g.get("children", [])}
    assert set(ours.groups) == groups
    assert {n: dict(h.vars) for n, h in ours.hosts.items()} == {
        n: hostvars.get(n, {}) for n in ours.hosts}
    assert set(ours.hosts) == transitive(theirs, "all")
    for group in ours.groups:
        assert {h.name for h in ours.group_hosts(group)} == transitive(theirs, group), group
    for group, entry in theirs.items():  # Ansible lists the groups that have members
        assert list(ours.groups[group].children) == entry.get("children", []), group
        assert list(ours.groups[group].hosts) == entry.get("hosts", []) or group == "all", group


def test_pattern_selection_matches_ansible(tmp_path):
    path = write(tmp_path, "patterns", PATTERNS_INI)
    cases = [(p, None) for p in PATTERNS] + LIMITS + [("webservers:&dbservers", None)]
    r = subprocess.run([PEERS / "bin" / "python", "-c", _SELECT, path, json.dumps(cases)],
                       capture_output=True, text=True, timeout=120, env=ansible_env(tmp_path))
    assert r.returncode == 0, r.stderr
    theirs = json.loads(r.stdout)
    inv = load_inventory(path)
    for (pattern, limit), want in zip(cases, theirs, strict=True):
        try:
            got = [h.name for h in inv.hosts_for(pattern, limit=limit)]
        except PatternError:
            got = []  # Ansible selects nothing where we refuse to
        assert set(got) == set(want), (pattern, limit)
        assert got == sorted(got, key=list(inv.hosts).index)  # ours in inventory order
    assert theirs[-1] == []
