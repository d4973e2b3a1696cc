"""The committed schemas are generated from the models, and the shipped playbooks pass them."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import jsonschema
import pytest
import yaml

from agent.playbook import load_playbook, schema

ROOT = pathlib.Path(__file__).resolve().parents[2]
PLAYBOOKS = sorted((ROOT / "playbooks").glob("*.yaml"))


def test_committed_schemas_are_fresh():
    for fname, generated in schema.generate().items():
        committed = (ROOT / "schemas" / fname).read_text()
        assert committed == schema.render(generated), (
            f"schemas/{fname} is stale: run python -m agent.playbook.schema")


def test_schema_check_command_detects_staleness(tmp_path, monkeypatch):
    for fname in schema.generate():
        (tmp_path / fname).write_text("{}\n")
    monkeypatch.setattr(schema, "SCHEMA_DIR", tmp_path)
    assert schema.main(["--check"]) == 1
    assert schema.main([]) == 0
    assert schema.main(["--check"]) == 0


def test_every_resource_kind_is_in_the_schema():
    props = json.loads((ROOT / "schemas" / "playbook.schema.json").read_text())["properties"]
    for kind in ("services", "containers", "processes", "files", "checks", "thresholds",
                 "watches", "backups", "notifiers", "vars"):
        assert kind in props


def test_fields_carry_descriptions_for_editors():
    defs = json.loads((ROOT / "schemas" / "playbook.schema.json").read_text())["$defs"]
    files = defs["FileSpec"]["properties"]
    for field in ("path", "state", "content", "template", "source", "mode", "owner", "follow"):
        assert files[field].get("description"), field
    assert files["mode"]["anyOf"][0]["examples"] == ["0640"]


@pytest.mark.parametrize("path", PLAYBOOKS, ids=lambda p: p.name)
def test_shipped_playbooks_are_valid(path):
    loaded = load_playbook(str(path))
    assert loaded.model.name
    first = path.read_text().splitlines()[0]
    assert first == "# yaml-language-server: $schema=../schemas/playbook.schema.json"


@pytest.mark.parametrize("path", PLAYBOOKS, ids=lambda p: p.name)
def test_editor_schema_accepts_shipped_playbooks_as_written(path):
    data = yaml.safe_load(path.read_text())
    validator = jsonschema.Draft202012Validator(
        json.loads((ROOT / "schemas" / "playbook.schema.json").read_text()))
    # Editors see the text before templating: a templated enum ("{{ worker_state }}") is
    # only checked once rendered, by the loader.
    errors = [e.message for e in validator.iter_errors(data)
              if not (isinstance(e.instance, str) and "{{" in e.instance)]
    assert errors == []


def test_cli_validates_the_playbooks_directory():
    p = subprocess.run([sys.executable, "-m", "agent.cli", "validate", str(ROOT / "playbooks")],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    runbooks = len(list((ROOT / "playbooks" / "runbooks").glob("*.yaml")))
    assert p.stdout.strip() == f"{len(PLAYBOOKS)} playbooks and {runbooks} runbooks valid"
