"""The readers: ranges, INI values, format detection, and one located line per bad input."""

from __future__ import annotations

import re

import pytest

from agent.errors import InputError
from agent.inventory import is_inventory_file, load_inventory
from agent.inventory.ini_format import literal
from agent.inventory.patterns import expand_range, split_host_port
from tests.inventory.samples import EXAMPLE, write

LOCATED = re.compile(r"^(?P<file>[^:]+):(?P<line>\d+):(?P<col>\d+): (?P<path>[^:]+(?::[^:]+\])?"
                     r"[^ ]*): (?P<message>.+)$")


@pytest.mark.parametrize(("text", "expected"), [
    ("web[01:03].example.com", ["web01.example.com", "web02.example.com", "web03.example.com"]),
    ("db-[a:c]", ["db-a", "db-b", "db-c"]),
    ("n[0:10:5]", ["n0", "n5", "n10"]),
    ("n[:2]", ["n0", "n1", "n2"]),
    ("n[8:10]", ["n8", "n9", "n10"]),
    ("r[1:2]-[a:b]", ["r1-a", "r1-b", "r2-a", "r2-b"]),
    ("x[y:B]", ["xy", "xz", "xA", "xB"]),  # string.ascii_letters order, as Ansible
    ("plain", ["plain"]),
])
def test_ranges(text, expected):
    assert expand_range(text) == expected


@pytest.mark.parametrize(("text", "message"), [
    ("web[01:1x]", "mixes or misspells its bounds"),
    ("web[1:3", "unclosed '['"),
    ("web]1", "']' without '['"),
    ("web[1:2:3:4]", "is not begin:end or begin:end:step"),
    ("web[1:]", "has no end"),
    ("web[01:100]", "pads '01' but not '100'"),
    ("web[3:1]", "names no host"),
    ("web[1:3:0]", "has step '0'"),
    ("web[0:99999999]", "more than 100000 hosts"),
    ("a[1:1000]b[1:1000]", "more than 100000 hosts"),
])
def test_malformed_ranges(text, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        expand_range(text)


def test_host_and_port():
    assert split_host_port("web01:2222") == ("web01", 2222)
    assert split_host_port("web[01:03]:22") == ("web[01:03]", 22)
    assert split_host_port("[2001:db8::1]:22") == ("2001:db8::1", 22)
    assert split_host_port("2001:db8::1") == ("2001:db8::1", None)
    assert split_host_port("web01") == ("web01", None)


def test_ini_values_are_python_literals_or_text(tmp_path):
    assert [literal(v) for v in ("22", "True", "'007'", "[1, (2, 3)]", "{'a': b'x'}",
                                 "a b", "1+2j", "...", "http://x:1/y", "3 # note")] == [
        22, True, "007", [1, [2, 3]], {"a": "x"}, "a b", "(1+2j)", "...", "http://x:1/y", 3]
    inv = load_inventory(write(tmp_path, "hosts", (
        "h1 a=5 b=\"x y\" c='\"q\"' d=False\n[g]\nh1\n[g:vars]\nlong = some text # kept\n"
        "n=10\n")))
    assert inv.hosts["h1"].vars == {"long": "some text # kept", "n": 10, "a": 5, "b": "x y",
                                    "c": "q", "d": False}


def test_files_are_told_apart_by_name_and_content(tmp_path):
    assert is_inventory_file(str(EXAMPLE))
    assert is_inventory_file(write(tmp_path, "hosts", "[web]\nweb01\n"))
    assert is_inventory_file(write(tmp_path, "a.yml", "web:\n  hosts: {web01: }\n"))
    assert is_inventory_file(write(tmp_path, "b.yaml", "all:\n  hosts: {web01: }\n"))
    assert not is_inventory_file(write(tmp_path, "pb.yaml", "name: x\nhosts: web\n"))
    assert not is_inventory_file(write(tmp_path, "broken.yaml", "a: [\n"))
    assert not is_inventory_file(str(tmp_path))


def only_error(path):
    with pytest.raises(InputError) as e:
        load_inventory(path)
    lines = [d.format() for d in e.value.diagnostics]
    assert len(lines) == 1, lines
    m = LOCATED.match(lines[0])
    assert m, lines[0]
    assert m["file"] == path
    return int(m["line"]), int(m["col"]), m["path"], m["message"]


@pytest.mark.parametrize(("text", "where", "path", "message"), [
    ("[a:children]\nb\n[b:children]\na\n", (4, 1), "[b:children].a",
     "group 'a' would be its own ancestor (a → b → a)"),
    ("[a:children]\na\n", (2, 1), "[a:children].a", "group 'a' cannot be its own child"),
    ("[web]\nw1\n[prod:children]\nweb\nwbe\n", (5, 1), "[prod:children].wbe",
     "group 'wbe' is never declared (did you mean 'web'?)"),
    ("[ghost:vars]\nx=1\n", (1, 1), "[ghost:vars]", "group 'ghost' is never declared"),
    ("[web]\nweb[01:1x]\n", (2, 1), "[web]", "range [01:1x] in 'web[01:1x]' mixes"),
    ("[web]\n  web[1:3 x=1\n", (2, 3), "[web]", "unclosed '[' in 'web[1:3'"),
    ("[web]\nw1 x=1 y=2 x=3\n", (2, 12), "[web].w1.x", "variable 'x' is given twice for w1"),
    ("[web]\nw1\n[web:vars]\nk=1\n[web:vars]\nk=2\n", (6, 1), "[web:vars].k",
     "variable 'k' of group 'web' is set twice (each variable once per group; first set at "
     "line 4)"),
    ("[web]\nw1 novalue\n", (2, 4), "[web]", "'novalue' is not a variable assignment"),
    ("[web]\nw1 x='open\n", (2, 1), "[web]", "cannot split the host line: No closing"),
    ("[web:vars]\njust words\n[web]\n", (2, 1), "[web:vars]", "'just words' is not a"),
    ("[web:child]\nx\n", (1, 1), "[web:child]", "section [web:child] has unknown type 'child'"),
    ("[web ]\n", (1, 1), "[web ]", "invalid section header"),
    ("[a:children]\nb c\n[b]\n", (2, 1), "[a:children]", "'b c' is not a group name"),
    ("---\nall:\n", (1, 1), "(top)", "this is YAML, not an INI inventory"),
    ("[g]\nall:\n", (2, 1), "[g]", "'all:' is not a host name"),
    ("[g]\nh ansible_become=perhaps\n", (2, 3), "[g].h.ansible_become",
     "ansible_become 'perhaps' is not true or false"),
    ("[g]\nh\n[g:vars]\nansible_group_priority=high\n", (4, 1), "[g:vars].ansible_group_priority",
     "ansible_group_priority 'high' is not a whole number"),
    ("[a]\nh\n[b]\nh\n[b:children]\nall\n", (6, 1), "[b:children].all",
     "group 'all' cannot be a child of 'b'"),
])
def test_bad_ini_gives_one_located_line(tmp_path, text, where, path, message):
    line, col, got_path, got = only_error(write(tmp_path, "hosts", text))
    assert ((line, col), got_path) == (where, path)
    assert got.startswith(message), got


@pytest.mark.parametrize(("text", "where", "path", "message"), [
    ("all:\n  children:\n    a:\n      children:\n        b:\n          children:\n"
     "            a:\n", (7, 13), "all.children.a.children.b.children.a",
     "group 'a' would be its own ancestor (a → b → a)"),
    ("web:\n  host:\n    w1:\n", (2, 3), "web.host", "unknown key 'host' in group 'web' "
     "(did you mean 'hosts'?)"),
    ("web:\n  hosts:\n    w[3:1]:\n", (3, 5), "web.hosts.w[3:1]", "range [3:1] in 'w[3:1]'"),
    ("web:\n  hosts:\n    w1: {ansible_port: 0}\n", (3, 24), "web.hosts.w1.ansible_port",
     "ansible_port 0 is not a port"),
    ("web:\n  hosts: [w1]\n", (2, 10), "web.hosts", "hosts of group 'web' is a list"),
    ("web:\n  hosts:\n    w1: yes\n", (3, 9), "web.hosts.w1", "host 'w1' has a bool"),
    ("all:\n  children:\n    web: [w1]\n", (3, 10), "all.children.web",
     "group 'web' is a list"),
    ("all:\n  vars: {a: 1}\n  vars: {a: 2}\n", (3, 3), "all.vars", "duplicate key 'vars'"),
    ("web:\n  vars: {a: 1}\nprod:\n  children:\n    web:\n      vars: {a: 2}\n", (6, 17),
     "prod.children.web.vars.a", "variable 'a' of group 'web' is set twice"),
    ("plugin: aws_ec2\nall:\n", (1, 1), "plugin", "this is an inventory plugin's"),
])
def test_bad_ansible_yaml_gives_one_located_line(tmp_path, text, where, path, message):
    line, col, got_path, got = only_error(write(tmp_path, "inv.yaml", text))
    assert ((line, col), got_path) == (where, path)
    assert got.startswith(message), got


@pytest.mark.parametrize(("text", "where", "path", "message"), [
    ("hosts:\n  w1: {adress: 10.0.0.1}\n", (2, 8), "hosts.w1.adress",
     "unknown field 'adress' (did you mean 'address'?)"),
    ("hosts:\n  w1: {port: 70000}\n", (2, 14), "hosts.w1.port", "70000 is greater than"),
    ("hosts:\n  w1: {sudo: maybe}\n", (2, 14), "hosts.w1.sudo", "'maybe' is not true or false"),
    ("hosts:\n  web01: {}\ngroups:\n  web: {hosts: [web01, web1]}\n", (4, 24),
     "groups.web.hosts[1]", "host 'web1' is not defined (did you mean 'web01'?)"),
    ("hosts:\n  w1: {}\ngroups:\n  web: {hosts: [w1]}\n  prod: {children: [wbe]}\n", (5, 21),
     "groups.prod.children[0]", "group 'wbe' is not defined (did you mean 'web'?)"),
    ("groups:\n  a: {children: [b]}\n  b: {children: [a]}\n", (3, 18), "groups.b.children[0]",
     "group 'a' would be its own ancestor (a → b → a)"),
    ("hosts:\n  w[1:2]: {}\n  w2: {}\n", (3, 3), "hosts.w2", "host 'w2' is defined twice"),
    ("hosts:\n  'web 1': {}\n", (2, 3), "hosts.web 1", "'web 1' is not a valid name"),
    ("hosts:\n  w[1:x]: {}\n", (2, 3), "hosts.w[1:x]", "range [1:x] in 'w[1:x]' mixes"),
    ("user: a\nvars: {ansible_user: b}\nhosts: {}\n", (1, 7), "user",
     "user is also given as vars.ansible_user"),
    ("hosts: {w1: }\ngroups:\n  all: {}\n", (3, 3), "groups.all", "group 'all' is implicit"),
    ("hosts: {w1: }\ngroups: {g: {vars: {ansible_port: x}, hosts: [w1]}}\n", (2, 35),
     "groups.g.vars.ansible_port", "ansible_port 'x' is not a port"),
    ("hosts: {}\nhostz: {}\n", (2, 1), "hostz", "unknown resource kind or field 'hostz' "
     "(did you mean 'hosts'?)"),
])
def test_bad_opsagent_yaml_gives_one_located_line(tmp_path, text, where, path, message):
    line, col, got_path, got = only_error(write(tmp_path, "inv.yaml", text))
    assert ((line, col), got_path) == (where, path)
    assert got.startswith(message), got


def test_a_yaml_file_that_is_no_inventory_is_refused(tmp_path):
    line, col, path, message = only_error(write(tmp_path, "x.yaml", "name: web\nservices: []\n"))
    assert (line, col, path) == (1, 1, "(top)")
    assert message.startswith("this is not an inventory")


def test_every_error_of_a_file_is_reported_not_only_the_first(tmp_path):
    path = write(tmp_path, "hosts", "[web]\nw[1:x]\nw2 a\n[web:bogus]\n")
    with pytest.raises(InputError) as e:
        load_inventory(path)
    assert [(d.line, d.col) for d in e.value.diagnostics] == [(2, 1), (3, 4), (4, 1)]
