"""The one in-memory model: the example, three formats agreeing, Ansible's variable precedence."""

from __future__ import annotations

import pytest

from agent.errors import InputError
from agent.inventory import SSHSettings, load_inventory
from tests.inventory.samples import (
    EXAMPLE,
    EXAMPLE_ANSIBLE_YAML,
    EXAMPLE_INI,
    FLEET_INI,
    FLEET_YAML,
    write,
)


def test_example_inventory_reads_as_written():
    inv = load_inventory(str(EXAMPLE))
    assert inv.format == "opsagent"
    assert list(inv.hosts) == ["web01", "web02", "db01"]
    assert inv.hosts["web02"].ssh == SSHSettings(address="192.0.2.12", port=2222, user="ops")
    assert inv.hosts["db01"].ssh == SSHSettings(address="192.0.2.21", user="ops")
    assert inv.hosts["web01"].vars == {
        "ansible_user": "ops", "opsagent_collector": "http://127.0.0.1:8080",
        "api_port": 5001, "ansible_host": "192.0.2.11"}
    assert inv.hosts["web01"].groups == ("all", "prod", "web")
    assert inv.groups["prod"].children == ("web", "db")
    assert inv.groups["all"].children == ("ungrouped", "prod")
    assert [h.name for h in inv.group_hosts("prod")] == ["web01", "web02", "db01"]


def test_example_is_the_same_inventory_in_all_three_formats(tmp_path):
    ours = load_inventory(str(EXAMPLE))
    ini = load_inventory(write(tmp_path, "hosts", EXAMPLE_INI))
    yml = load_inventory(write(tmp_path, "hosts.yml", EXAMPLE_ANSIBLE_YAML))
    assert (ini.format, yml.format) == ("ansible-ini", "ansible-yaml")
    assert ours.hosts == ini.hosts
    assert {n: (g.hosts, g.vars) for n, g in ours.groups.items()} == {
        n: (g.hosts, g.vars) for n, g in yml.groups.items()}
    assert ours.hosts == yml.hosts
    # Ansible's YAML lists web and db under all as well as under prod
    assert yml.groups["all"].children == ("ungrouped", "web", "db", "prod")
    assert ours == ini


def test_ansible_ini_and_yaml_with_the_same_content_are_the_same_inventory(tmp_path):
    ini = load_inventory(write(tmp_path, "fleet.ini", FLEET_INI))
    yml = load_inventory(write(tmp_path, "fleet.yaml", FLEET_YAML))
    assert ini == yml
    assert list(ini.hosts) == list(yml.hosts) == [
        "bastion", "web01.example.com", "web02.example.com", "web03.example.com",
        "web04.example.com", "db-a", "db-b"]


def test_fleet_variables_and_ssh_settings(tmp_path):
    inv = load_inventory(write(tmp_path, "fleet.ini", FLEET_INI))
    web04, dbb, bastion = (inv.hosts[n] for n in ("web04.example.com", "db-b", "bastion"))
    assert web04.ssh == SSHSettings(address="web04.example.com", port=2222, user="ops",
                                    sudo=True)
    assert web04.vars["note"] == "two words"
    assert dbb.ssh == SSHSettings(address="db-b", port=2200, user="ops")
    assert bastion.ssh == SSHSettings(address="198.51.100.5", user="admin")
    assert bastion.groups == ("all", "ungrouped")
    assert inv.groups["ungrouped"].hosts == ("bastion",)
    assert inv.groups["staging"].priority == 10
    assert "ansible_group_priority" not in inv.groups["staging"].vars
    assert {n: g.depth for n, g in inv.groups.items()} == {
        "all": 0, "ungrouped": 1, "web": 2, "db": 2, "staging": 1, "prod": 1}


def test_precedence_all_then_parent_then_child_then_host(tmp_path):
    inv = load_inventory(write(tmp_path, "fleet.ini", FLEET_INI))
    tiers = {n: h.vars["tier"] for n, h in inv.hosts.items()}
    assert tiers == {
        "bastion": "default",           # only all
        "web01.example.com": "web",     # child group web (depth 2) over its parent prod
        "web02.example.com": "web",
        "web03.example.com": "web",     # staging is depth 1: web (depth 2) still wins
        "web04.example.com": "web",
        "db-a": "prod",                 # db sets no tier: its parent prod does
        "db-b": "staging",              # prod and staging both depth 1: priority 10 wins
    }
    assert inv.hosts["web03.example.com"].groups == ("all", "prod", "staging", "web")
    assert inv.hosts["db-b"].vars["backup"] is True


def test_same_depth_and_priority_is_decided_by_name_and_host_vars_win(tmp_path):
    text = """\
all:
  vars: {v: all, w: all}
  hosts:
    h1: {w: host}
  children:
    zeta: {hosts: {h1: }, vars: {v: zeta}}
    alpha: {hosts: {h1: }, vars: {v: alpha}}
    mid:
      vars: {v: mid}
      children:
        deep: {hosts: {h2: }, vars: {x: {a: 1}}}
    other: {hosts: {h2: }, vars: {x: {b: 2}}}
"""
    inv = load_inventory(write(tmp_path, "inv.yaml", text))
    h1, h2 = inv.hosts["h1"], inv.hosts["h2"]
    assert h1.groups == ("all", "alpha", "zeta")
    assert h1.vars == {"v": "zeta", "w": "host"}   # alpha < zeta by name; the host wins
    assert h1.groups.count("ungrouped") == 0       # it is in groups besides all
    assert h2.groups == ("all", "mid", "other", "deep")
    assert h2.vars == {"v": "mid", "w": "all", "x": {"a": 1}}  # deep (depth 2) replaces other's dict whole


def test_a_later_host_definition_replaces_earlier_host_vars(tmp_path):
    inv = load_inventory(write(tmp_path, "hosts", "h1 x=1 y=1\n[g]\nh1 x=2\n"))
    assert inv.hosts["h1"].vars == {"x": 2, "y": 1}
    assert inv.hosts["h1"].groups == ("all", "g")
    assert inv.groups["ungrouped"].hosts == ()


def test_ssh_settings_from_older_ansible_names_and_opsagent_fields(tmp_path):
    ini = load_inventory(write(tmp_path, "hosts", "h ansible_ssh_host=10.0.0.9 "
                               "ansible_ssh_port=2022 ansible_ssh_user=me "
                               "ansible_private_key_file=/k ansible_become=no\n"))
    ours = load_inventory(write(tmp_path, "inv.yaml", (
        "hosts:\n  h: {address: 10.0.0.9, port: 2022, user: me, key_file: /k, sudo: false}\n")))
    want = SSHSettings(address="10.0.0.9", port=2022, user="me", key_file="/k", sudo=False)
    assert ini.hosts["h"].ssh == ours.hosts["h"].ssh == want
    assert ours.hosts["h"].vars == {"ansible_host": "10.0.0.9", "ansible_port": 2022,
                                    "ansible_user": "me", "ansible_ssh_private_key_file": "/k",
                                    "ansible_become": False}


def test_opsagent_ssh_fields_at_every_level_follow_the_same_precedence(tmp_path):
    text = """\
user: ops
port: 22
hosts:
  a: {}
  b: {user: root, sudo: false}
groups:
  g: {hosts: [a, b], port: 2222, key_file: ~/.ssh/g}
"""
    inv = load_inventory(write(tmp_path, "inv.yaml", text))
    assert inv.hosts["a"].ssh == SSHSettings("a", 2222, "ops", "~/.ssh/g", None)
    assert inv.hosts["b"].ssh == SSHSettings("b", 2222, "root", "~/.ssh/g", False)


def test_a_bad_ssh_value_is_located_where_it_was_set_once(tmp_path):
    path = write(tmp_path, "hosts", "[g]\na\nb\n[g:vars]\nansible_port=http\n")
    with pytest.raises(InputError) as e:
        load_inventory(path)
    assert [d.format() for d in e.value.diagnostics] == [
        f"{path}:5:1: [g:vars].ansible_port: ansible_port 'http' is not a port "
        "(a whole number from 1 to 65535)"]
