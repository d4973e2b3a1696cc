"""Nftables against a real kernel, inside a network namespace the test makes."""

from __future__ import annotations

import ipaddress
import json

import pytest

from agent.errors import ProviderError
from agent.firewall.nft import Element, Nftables
from tests.harness.netns import unavailable

if (_why := unavailable()) is not None:
    pytest.skip(_why, allow_module_level=True)

pytestmark = [pytest.mark.root, pytest.mark.e2e]
net = ipaddress.ip_network


def expires(nft: Nftables, target: str) -> float | None:
    found = [e.expires_s for e in nft.elements() if e.net == net(target)]
    assert len(found) == 1, nft.elements()
    return found[0]


def test_ensure_builds_the_table_and_is_idempotent(netns, nft):
    nft.ensure()
    nft.add(net(netns.client4[0]), 300)
    nft.ensure()  # again: keeps the element, never duplicates a rule
    text = netns.nft("list", "table", "inet", "opsagent")
    for line in ("type filter hook input priority filter - 10; policy accept;",
                 "type filter hook forward priority filter - 10; policy accept;",
                 "flags interval,timeout", "flags timeout"):
        assert line in text, text
    assert text.count("ip saddr @blocked4 drop") == 2          # input and forward
    assert text.count("ip6 saddr @blocked6_nets drop") == 2
    assert [e.net for e in nft.elements()] == [net(netns.client4[0])]
    assert not netns.connect(netns.client4[0], netns.fw4)
    assert netns.connect(netns.client4[1], netns.fw4)


def test_ensure_repairs_a_flushed_chain(netns, nft):
    nft.ensure()
    nft.add(net(netns.client4[0]), 300)
    netns.nft("flush", "chain", "inet", "opsagent", "input")
    assert netns.connect(netns.client4[0], netns.fw4)
    nft.ensure()
    assert not netns.connect(netns.client4[0], netns.fw4)


def test_other_tables_are_never_touched(netns, nft):
    netns.nft("add", "table", "inet", "theirs")
    netns.nft("add", "set", "inet", "theirs", "s", "{ type ipv4_addr; }")
    netns.nft("add", "element", "inet", "theirs", "s", "{ 192.0.2.1 }")
    before = netns.nft("list", "table", "inet", "theirs")
    nft.ensure()
    nft.add(net("198.51.100.0/24"), 60)
    nft.load([(net("203.0.113.7/32"), 60)])
    assert nft.drop_table() is True
    assert netns.nft("list", "table", "inet", "theirs") == before
    assert "opsagent" not in netns.nft("list", "tables")
    assert nft.drop_table() is False  # nothing left to drop
    assert nft.elements() == []


def test_add_sets_a_kernel_timeout_and_a_repeat_refreshes_it(netns, nft):
    nft.ensure()
    nft.add(net("203.0.113.7/32"), 100)
    assert 95 <= expires(nft, "203.0.113.7/32") <= 100
    nft.add(net("203.0.113.7/32"), 3000)
    assert 2990 <= expires(nft, "203.0.113.7/32") <= 3000
    nft.add(net("203.0.113.7/32"), 50)  # shorter: the element gets exactly the new TTL
    assert 45 <= expires(nft, "203.0.113.7/32") <= 50
    nft.add(net("2001:db8::7/128"), 100)
    nft.add(net("2001:db8:5::/48"), 200)
    assert 195 <= expires(nft, "2001:db8:5::/48") <= 200


def test_fractional_ttls_are_rounded_up_never_permanent(netns, nft):
    """nft 1.0.6 reads a fractional JSON timeout as none at all: never sent."""
    nft.ensure()
    nft.add(net("203.0.113.8/32"), 1.5)
    doc = json.loads(netns.nft("-j", "list", "set", "inet", "opsagent", "blocked4"))
    elems = [i for item in doc["nftables"] if "set" in item for i in item["set"]["elem"]]
    assert elems == [{"elem": {"val": "203.0.113.8", "timeout": 2,
                               "expires": elems[0]["elem"]["expires"]}}]
    with pytest.raises(ValueError, match="must be positive"):
        nft.add(net("203.0.113.9/32"), 0)


def test_remove_says_whether_the_element_was_there(netns, nft):
    nft.ensure()
    nft.add(net("203.0.113.7/32"), 100)
    nft.add(net("198.51.100.0/24"), 100)
    assert nft.remove(net("203.0.113.7/32")) is True
    assert nft.remove(net("203.0.113.7/32")) is False
    assert nft.remove(net("198.51.100.0/24")) is True
    assert nft.elements() == []


def test_overlapping_prefixes_are_an_error_on_one_line(netns, nft):
    nft.ensure()
    nft.add(net("198.51.100.0/24"), 100)
    with pytest.raises(ProviderError) as e:
        nft.add(net("198.51.100.128/25"), 100)
    assert "interval overlaps" in str(e.value) and "\n" not in str(e.value)
    # an address inside the prefix is no conflict: addresses live in their own set
    nft.add(net("198.51.100.130/32"), 100)
    # load_networks replaces the prefixes atomically, overlapping the old ones or not
    nft.load_networks(4, [(net("198.51.100.0/25"), 100), (net("198.51.100.128/25"), 500)])
    assert sorted(str(e.net) for e in nft.elements()) == [
        "198.51.100.0/25", "198.51.100.128/25", "198.51.100.130/32"]


def test_elements_reads_every_form_nft_prints(netns, nft):
    nft.ensure()
    netns.nft("add", "element", "inet", "opsagent", "blocked4", "{ 192.0.2.1 }")
    netns.nft("add", "element", "inet", "opsagent", "blocked4_nets",
              "{ 192.0.2.10-192.0.2.13 timeout 1h }")
    netns.nft("add", "element", "inet", "opsagent", "blocked6_nets", "{ 2001:db8::9 }")
    found = {e.net: e for e in nft.elements()}
    assert found[net("192.0.2.1/32")].expires_s is None  # no timeout
    assert set(found) == {net("192.0.2.1/32"), net("192.0.2.10/31"), net("192.0.2.12/31"),
                          net("2001:db8::9/128")}
    assert 3500 < found[net("192.0.2.10/31")].expires_s <= 3600
    assert [str(e.net) for e in nft.elements() if e.in_prefix_set] == [
        "192.0.2.10/31", "192.0.2.12/31", "2001:db8::9/128"]


def test_errors_and_timeouts_are_provider_errors():
    with pytest.raises(ProviderError, match="cannot run /nonexistent/nft"):
        Nftables(["/nonexistent/nft"]).ensure()
    with pytest.raises(ProviderError, match="no answer within 0.5s"):
        Nftables(["sh", "-c", "sleep 5", "nft"], timeout_s=0.5).ensure()
    with pytest.raises(ValueError, match="non-empty argv"):
        Nftables([])
    assert Element(net("192.0.2.1/32"), None).expires_s is None
