"""Inventories the tests share: one fleet written in each format, and a bigger Ansible one."""

from __future__ import annotations

import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "inventory.example.yaml"

# inventory.example.yaml, as Ansible's INI and Ansible's YAML would write it.
EXAMPLE_INI = """\
[web]
web01 ansible_host=192.0.2.11
web02 ansible_host=192.0.2.12 ansible_port=2222

[web:vars]
api_port=5001

[db]
db01 ansible_host=192.0.2.21

[prod:children]
web
db

[all:vars]
ansible_user=ops
opsagent_collector=http://127.0.0.1:8080
"""

EXAMPLE_ANSIBLE_YAML = """\
all:
  vars:
    ansible_user: ops
    opsagent_collector: http://127.0.0.1:8080
  children:
    web:
      hosts:
        web01: {ansible_host: 192.0.2.11}
        web02: {ansible_host: 192.0.2.12, ansible_port: 2222}
      vars: {api_port: 5001}
    db:
      hosts:
        db01: {ansible_host: 192.0.2.21}
    prod:
      children:
        web:
        db:
"""

# One fleet with ranges, ungrouped hosts, ports, priorities and nested groups, twice.
FLEET_INI = """\
# hosts before any section are ungrouped
bastion ansible_host=198.51.100.5 ansible_user=admin

[web]
web[01:03].example.com
web04.example.com:2222 ansible_become=True note="two words"

[web:vars]
api_port=5001
tier=web

[db]
db-[a:b] ansible_port=2200   # a comment

[staging]
web03.example.com
db-b

[staging:vars]
tier=staging
ansible_group_priority=10

[prod:children]
web
db

[prod:vars]
tier=prod
backup=True
ansible_user=ops

[all:vars]
opsagent_collector=http://127.0.0.1:8080
tier=default
"""

FLEET_YAML = """\
ungrouped:
  hosts:
    bastion: {ansible_host: 198.51.100.5, ansible_user: admin}
web:
  hosts:
    web[01:03].example.com:
    web04.example.com:2222: {ansible_become: true, note: two words}
  vars: {api_port: 5001, tier: web}
db:
  hosts:
    db-[a:b]: {ansible_port: 2200}
staging:
  hosts:
    web03.example.com:
    db-b:
  vars: {tier: staging, ansible_group_priority: 10}
prod:
  children:
    web:
    db:
  vars: {tier: prod, backup: true, ansible_user: ops}
all:
  vars: {opsagent_collector: "http://127.0.0.1:8080", tier: default}
"""

# The groups of Ansible's pattern documentation, for every --limit form.
PATTERNS_INI = """\
[webservers]
web01
web02
web03

[dbservers]
db01
db02

[staging]
web02
web03
db02

[lb]
lb01.example.com

[production:children]
webservers
dbservers
lb

[db01]
web01
"""


def write(tmp_path: pathlib.Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)
