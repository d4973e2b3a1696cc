"""`opsagent validate` on inventories: real files, real exit codes, located lines."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

from tests.inventory.samples import EXAMPLE, FLEET_INI, FLEET_YAML, ROOT, write

LINE = re.compile(r"^(?P<file>\S+?):(?P<line>\d+):(?P<col>\d+): (?P<rest>.+)$")


def opsagent(*args):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "agent.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=60, cwd=ROOT, env=env)


def test_validate_the_example_inventory():
    r = opsagent("validate", EXAMPLE)
    assert (r.returncode, r.stdout, r.stderr) == (0, "1 inventory valid\n", "")


def test_validate_ansible_inventories_beside_playbooks(tmp_path):
    ini = write(tmp_path, "hosts", FLEET_INI)
    yml = write(tmp_path, "fleet.yml", FLEET_YAML)
    r = opsagent("validate", ROOT / "playbooks" / "web-tier.yaml", yml, "-i", ini)
    assert (r.returncode, r.stdout) == (0, "1 playbook and 2 inventories valid\n"), r.stderr
    r = opsagent("validate", "--json", "-i", ini)
    assert (r.returncode, json.loads(r.stdout)) == (0, [])


def test_a_broken_inventory_exits_2_with_one_located_line_per_problem(tmp_path):
    ini = write(tmp_path, "hosts", "[web]\nweb[01:0x]\n[prod:children]\nweb\nwbe\n")
    ours = write(tmp_path, "inv.yaml", "hosts:\n  web01: {prot: 22}\n")
    r = opsagent("validate", ini, ours)
    assert r.returncode == 2
    lines = r.stderr.splitlines()
    assert lines[-1] == "3 errors; nothing was changed"
    located = [LINE.match(line) for line in lines[:-1]]
    assert all(located), lines
    assert [(m["file"], int(m["line"]), int(m["col"])) for m in located] == [
        (ini, 2, 1), (ini, 5, 1), (ours, 2, 11)]
    assert located[1]["rest"] == ("[prod:children].wbe: group 'wbe' is never declared "
                                  "(did you mean 'web'?)")
    assert located[2]["rest"] == "hosts.web01.prot: unknown field 'prot' (did you mean 'port'?)"
    assert "Traceback" not in r.stderr


def test_validate_json_lists_inventory_diagnostics(tmp_path):
    bad = write(tmp_path, "inv.yml", "all:\n  children:\n    a:\n      children:\n        a:\n")
    r = opsagent("validate", "--json", bad)
    assert r.returncode == 2
    assert json.loads(r.stdout) == [{
        "file": bad, "line": 5, "col": 9, "path": "all.children.a.children.a",
        "message": "group 'a' cannot be its own child", "expected": "another group's name"}]


def test_validate_with_nothing_to_check_is_a_usage_error(tmp_path):
    r = opsagent("validate", tmp_path)
    assert r.returncode == 2
    assert "no playbooks found under" in r.stderr
