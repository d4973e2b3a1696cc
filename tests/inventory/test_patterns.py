"""--limit and hosts: patterns, every form Ansible has, and the errors for ones that miss."""

from __future__ import annotations

import pytest

from agent.errors import UsageError
from agent.inventory import PatternError, load_inventory
from agent.inventory.patterns import order_terms, split_pattern
from tests.inventory.samples import PATTERNS_INI, write

WEB = ["web01", "web02", "web03"]
DB = ["db01", "db02"]
EVERY = [*WEB, *DB, "lb01.example.com"]


@pytest.fixture
def inv(tmp_path):
    return load_inventory(write(tmp_path, "hosts", PATTERNS_INI))


def names(inv, pattern, limit=None):
    return [h.name for h in inv.hosts_for(pattern, limit=limit)]


@pytest.mark.parametrize(("pattern", "expected"), [
    ("all", EVERY),
    ("*", EVERY),
    ("webservers", WEB),
    ("web02", ["web02"]),
    ("production", EVERY),
    ("web*", WEB),                          # a glob on group and host names
    ("*.example.com", ["lb01.example.com"]),
    ("web0[!2]", ["web01", "web03"]),      # fnmatch character class
    ("production[0-1]", ["web01", "web02"]),  # but digits in [] are a subscript, as in Ansible
    ("~web0[12]", ["web01", "web02"]),     # regex
    (r"~(web|db)\d+", [*WEB, *DB]),
    ("~eb", None),                          # re.match: anchored at the start, no match
    ("webservers:dbservers", [*WEB, *DB]),
    ("dbservers:webservers", [*WEB, *DB]),  # inventory order, whatever the pattern's order
    ("webservers,dbservers", [*WEB, *DB]),
    ("webservers, lb", [*WEB, "lb01.example.com"]),
    ("webservers:&staging", ["web02", "web03"]),
    ("webservers:!staging", ["web01"]),
    ("webservers:&staging:!web02", ["web03"]),
    ("!web02:&staging:webservers", ["web03"]),  # unions, then &, then !, however written
    ("webservers,&staging,!web02", ["web03"]),
    ("!staging", ["web01", "db01", "lb01.example.com"]),  # only ! and &: all first
    ("&staging", ["web02", "web03", "db02"]),
    ("production:!webservers:!lb", DB),
    ("webservers[0]", ["web01"]),
    ("webservers[-1]", ["web03"]),
    ("webservers[1:2]", ["web02", "web03"]),
    ("webservers[1:]", ["web02", "web03"]),
    ("webservers[1:0]", ["web02"]),         # Ansible: an end of 0 means the single host
    ("staging[0]:dbservers[1]", ["web02", "db02"]),
    ("db01", ["db01"]),          # a plain name that is a host is the host...
    ("dbservers:!db01", DB),     # ...but after ! or & a group of that name wins (web01)
    ("webservers:&db01", ["web01"]),
])
def test_pattern(inv, pattern, expected):
    if expected is None:
        with pytest.raises(PatternError):
            names(inv, pattern)
    else:
        assert names(inv, pattern) == expected


def test_limit_restricts_a_pattern_and_reads_files(inv, tmp_path):
    assert names(inv, "production", limit="staging:!db02") == ["web02", "web03"]
    assert names(inv, "webservers", limit="~web0[23]") == ["web02", "web03"]
    limit_file = tmp_path / "retry"
    limit_file.write_text("web03\n\ndb02\n")
    assert names(inv, "all", limit=f"@{limit_file}") == ["web03", "db02"]
    assert names(inv, "all", limit=f"@{limit_file},lb") == ["web03", "db02", "lb01.example.com"]
    with pytest.raises(PatternError, match="limit file .*missing: No such file"):
        names(inv, "all", limit=f"@{tmp_path}/missing")


def test_a_term_that_names_nothing_is_an_error_with_the_names_nearby(inv):
    with pytest.raises(PatternError) as e:
        names(inv, "webservers:!webserver02")
    assert str(e.value) == ("host pattern 'webservers:!webserver02': no group or host matches "
                            "'webserver02' (did you mean 'webservers', 'dbservers', 'web02'?)")
    assert e.value.near == ["webservers", "dbservers", "web02"]
    assert isinstance(e.value, UsageError)  # exit 2 from the command line
    with pytest.raises(PatternError, match="matches 'dbservrs' .did you mean 'dbservers'"):
        names(inv, "dbservrs")
    with pytest.raises(PatternError, match="matches 'zzz' .groups: all, ungrouped, webservers"):
        names(inv, "zzz")


def test_a_selection_that_leaves_no_host_is_an_error(inv):
    with pytest.raises(PatternError, match="'webservers:&dbservers' selects no hosts of"):
        names(inv, "webservers:&dbservers")
    with pytest.raises(PatternError, match="'lb' limited to 'webservers' selects no hosts"):
        names(inv, "lb", limit="webservers")
    with pytest.raises(PatternError, match="'webservers.7.' is past the end of the 3 hosts"):
        names(inv, "webservers[7]")


@pytest.mark.parametrize(("pattern", "message"), [
    ("~web(", "'~web(' is not a valid regular expression"),
    ("webservers:!", "'!' has nothing after it"),
    (" , ", "is empty"),
])
def test_malformed_patterns(inv, pattern, message):
    with pytest.raises(PatternError, match=message.replace("(", r"\(")):
        names(inv, pattern)


def test_splitting_and_ordering_as_ansible_does():
    assert split_pattern("a,b[1], c[2:3] , d") == ["a", "b[1]", "c[2:3]", "d"]
    assert split_pattern("web:&db:!web[1:2]") == ["web", "&db", "!web[1:2]"]
    assert split_pattern("2001:db8::1") == ["2001:db8::1"]  # an IPv6 address is one term
    assert split_pattern("web01:22") == ["web01:22"]        # so is host:port
    assert order_terms(["!a", "b", "&c", "d"]) == ["b", "d", "&c", "!a"]
    assert order_terms(["!a"]) == ["all", "!a"]
