"""db_maintenance: in playbooks: what loads, and what is refused with its position."""

from __future__ import annotations

import textwrap

import pytest

from agent.errors import InputError
from agent.playbook import load_playbook

GOOD = """\
name: db-host
maintenance:
  - {name: patching, schedule: "0 2 * * 0", duration: 2h, rules: []}
db_maintenance:
  - name: app-db
    postgres: {dsn_env: APP_DATABASE_URL}
    schedule: "30 3 * * *"
    vacuum: {analyze: true, tables: [events]}
    reindex: {tables: [events, archive.events], window: patching}
    purge:
      - {table: events, column: created_at, older_than: 30d, batch: 5000}
    report: {slow_queries: 10, unused_indexes: true, bloat: true}
    timeout: 1h
"""


def load(tmp_path, text, *, schema_check=True):
    path = tmp_path / "pb.yaml"
    path.write_text(textwrap.dedent(text))
    return load_playbook(str(path), schema_check=schema_check)


def errors(tmp_path, text, *, schema_check=True):
    with pytest.raises(InputError) as e:
        load(tmp_path, text, schema_check=schema_check)
    return [d.format() for d in e.value.diagnostics]


def test_the_documented_example_loads_with_its_values(tmp_path):
    spec = load(tmp_path, GOOD).model.db_maintenance[0]
    assert spec.name == "app-db" and spec.schedule == "30 3 * * *"
    assert spec.timeout == 3600.0
    assert spec.vacuum.tables == ["events"] and spec.vacuum.analyze is True
    assert spec.reindex.window == "patching" and spec.reindex.concurrently is True
    (purge,) = spec.purge
    assert (purge.table, purge.column, purge.older_than, purge.batch) == (
        "events", "created_at", 30 * 86400.0, 5000)
    assert spec.report.slow_queries == 10


@pytest.mark.parametrize("schema_check", [True, False], ids=["validate", "apply"])
@pytest.mark.parametrize("field,bad", [
    ("table", "events; DROP TABLE users"),
    ("table", 'events"--'),
    ("table", "a.b.c"),
    ("table", "1events"),
    ("table", "events where true"),
    ("column", "created_at) OR (1=1"),
    ("column", "public.created_at"),
    ("column", "x" * 64),
])
def test_identifiers_that_are_not_plain_names_are_refused_at_load(tmp_path, schema_check,
                                                                  field, bad):
    purge = {"table": "events", "column": "created_at", "older_than": "30d", field: bad}
    text = GOOD.replace("{table: events, column: created_at, older_than: 30d, batch: 5000}",
                        "{" + ", ".join(f"{k}: '{v}'" for k, v in purge.items()) + "}")
    found = errors(tmp_path, text, schema_check=schema_check)
    assert len(found) == 1, found
    assert "pb.yaml:11:" in found[0]
    assert f"db_maintenance[0].purge[0].{field}:" in found[0]
    assert repr(bad)[:40] in found[0] and "letters, digits, _ or $" in found[0]


def test_a_table_list_with_an_injection_is_refused_at_its_item(tmp_path):
    text = GOOD.replace("vacuum: {analyze: true, tables: [events]}",
                        "vacuum: {analyze: true, tables: [events, 'x; DROP DATABASE app']}")
    found = errors(tmp_path, text, schema_check=False)
    assert len(found) == 1 and "pb.yaml:8:" in found[0], found
    assert "db_maintenance[0].vacuum.tables[1]:" in found[0]
    assert "'x; DROP DATABASE app'" in found[0] and "schema-qualified" in found[0]


def test_mixed_case_and_schema_qualified_names_are_plain_names(tmp_path):
    text = GOOD.replace("tables: [events]}", "tables: [Events, archive.events_2024, s$.t_1]}")
    assert load(tmp_path, text).model.db_maintenance[0].vacuum.tables == [
        "Events", "archive.events_2024", "s$.t_1"]


def test_a_window_must_be_a_declared_maintenance_window(tmp_path):
    text = GOOD.replace("window: patching}", "window: patchin}")
    (found,) = errors(tmp_path, text)
    assert "pb.yaml:9:" in found
    assert "db_maintenance[0].reindex.window: no maintenance window named 'patchin'" in found
    assert "did you mean 'patching'?" in found
    text = GOOD.replace("batch: 5000}", "batch: 5000, window: nightly}")
    (found,) = errors(tmp_path, text)
    assert "db_maintenance[0].purge[0].window: no maintenance window named 'nightly'" in found


def test_names_are_unique(tmp_path):
    text = GOOD + textwrap.indent(GOOD.split("db_maintenance:\n")[1], "")
    (found,) = errors(tmp_path, text)
    assert "db_maintenance[1].name: duplicate db_maintenance name 'app-db'" in found


@pytest.mark.parametrize("change,message", [
    (("    postgres: {dsn_env: APP_DATABASE_URL}\n",
      "    postgres: {dsn_env: A, dsn_file: /etc/dsn}\n"), "give one of dsn_env"),
    (("older_than: 30d", "older_than: 0s"), "older_than must be more than 0"),
    (("older_than: 30d", "older_than: 30"), "a duration like 30s"),
    (("batch: 5000", "batch: 0"), "batch"),
    (("schedule: \"30 3 * * *\"", "schedule: \"30 3 * *\""), "has 4 fields"),
    (("reindex: {tables: [events, archive.events], window: patching}",
      "reindex: {tables: [], window: patching}"), "tables"),
])
def test_bad_values_are_refused_with_their_place(tmp_path, change, message):
    found = errors(tmp_path, GOOD.replace(*change))
    assert any(message in f and "db_maintenance[0]" in f for f in found), found


def test_an_entry_with_nothing_to_do_is_refused(tmp_path):
    text = """\
    name: db-host
    db_maintenance:
      - {name: idle, postgres: {dsn_env: X}}
    """
    (found,) = errors(tmp_path, text, schema_check=False)
    assert "db_maintenance[0]: nothing to do: declare purge, vacuum, reindex or report" in found


def test_the_same_purge_twice_is_refused(tmp_path):
    text = GOOD.replace("batch: 5000}", "batch: 5000}\n      - {table: events, column: "
                        "created_at, older_than: 7d}")
    found = errors(tmp_path, text, schema_check=False)
    assert any("purge of events.created_at is declared twice" in f for f in found), found
