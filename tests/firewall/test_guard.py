"""parse_target and Protected: strict parsing, and what can never be blocked."""

from __future__ import annotations

import ipaddress
import socket

import psutil
import pytest

from agent.firewall.blocks import layout
from agent.firewall.guard import (
    Protected,
    collector_addresses,
    default_gateways,
    format_net,
    nameservers,
    parse_target,
    session_peers,
)

net = ipaddress.ip_network


@pytest.mark.parametrize(("text", "expected"), [
    ("203.0.113.7", "203.0.113.7/32"),
    ("198.51.100.0/24", "198.51.100.0/24"),
    ("198.51.100.77/24", "198.51.100.0/24"),          # host bits cleared
    ("10.0.0.0/255.0.0.0", "10.0.0.0/8"),
    ("::ffff:1.2.3.4", "1.2.3.4/32"),                 # IPv4-mapped: the IPv4 address
    ("::ffff:0102:0304", "1.2.3.4/32"),
    ("::ffff:10.0.0.0/104", "10.0.0.0/8"),
    ("2001:DB8:0:0:0:0:0:1", "2001:db8::1/128"),      # normalised
    ("2001:0db8:0000::0001", "2001:db8::1/128"),
    ("2001:db8::/32", "2001:db8::/32"),
])
def test_parse_target_accepts_and_normalises(text, expected):
    assert parse_target(text) == net(expected)


@pytest.mark.parametrize(("text", "says"), [
    ("1.2.3.4; rm -rf /", "is not an IP address or network"),
    ("$(reboot)", "is not an IP address or network"),
    ("`reboot`", "is not an IP address or network"),
    ("", "an empty address"),
    (" 1.2.3.4", "has spaces around it"),
    ("1.2.3.4\n", "has spaces around it"),
    ("1.2.3.4\n5.6.7.8", "is not an IP address or network"),
    ("fe80::1%eth0", "zone ids are not accepted"),
    ("example.com", "is not an IP address or network"),
    ("cafe.be", "is not an IP address or network"),     # hex letters, still no address
    ("localhost", "is not an IP address or network"),
    ("1.2.3", "is not an IP address or network"),
    ("1.2.3.4.5", "is not an IP address or network"),
    ("010.1.1.1", "is not an IP address or network"),   # leading zeros are ambiguous
    ("16909060", "is not an IP address or network"),
    ("10.0.0.0/33", "is not an IP address or network"),
    ("10.0.0.0/8/8", "is not an IP address or network"),
    ("::/129", "is not an IP address or network"),
    ("1.2.3.4/-1", "is not an IP address or network"),
    ("1" * 200, "is not an IP address or network"),
])
def test_parse_target_refuses_everything_else(text, says):
    with pytest.raises(ValueError, match="expected an IP address or CIDR network") as e:
        parse_target(text)
    assert says in str(e.value)
    assert "\n" not in str(e.value)  # one line, control characters escaped


def test_format_net_shows_addresses_bare():
    assert format_net(net("203.0.113.7/32")) == "203.0.113.7"
    assert format_net(net("2001:db8::1/128")) == "2001:db8::1"
    assert format_net(net("198.51.100.0/24")) == "198.51.100.0/24"


@pytest.mark.parametrize(("target", "says"), [
    ("127.0.0.1", "127.0.0.1 is inside 127.0.0.0/8, protected: loopback"),
    ("::1", "::1 is protected: loopback"),
    ("0.0.0.0/0", "0.0.0.0/0 contains 127.0.0.0/8, protected: loopback"),
    ("::/0", "::/0 contains ::1, protected: loopback"),
    ("0.0.0.0", "0.0.0.0 is inside 0.0.0.0/8, protected: the unspecified"),
    ("::", ":: is protected: the unspecified address"),
    ("224.0.0.1", "protected: multicast"),
    ("ff02::1", "protected: multicast"),
    ("169.254.169.254", "protected: link-local"),
    ("fe80::1", "protected: link-local"),
    ("255.255.255.255", "protected: the limited broadcast address"),
    ("198.51.100.9", "198.51.100.9 is inside 198.51.100.0/24, protected: in the allowlist"),
    ("198.51.0.0/16", "198.51.0.0/16 contains 198.51.100.0/24, protected: in the allowlist"),
    ("203.0.113.0/24", "203.0.113.0/24 contains 203.0.113.77, protected: in the allowlist"),
    ("100.64.7.0/24", "contains 100.64.7.10, protected: the collector (100.64.7.10)"),
    ("2001:db8:1::5", "2001:db8:1::5 is inside 2001:db8:1::/48, protected: a management "
                      "network"),
])
def test_protected_refuses_with_the_reason(target, says):
    p = Protected.for_host(collector_url="https://100.64.7.10:8443/", management=["2001:db8:1::/48"],
                           allowlist=["198.51.100.0/24", "203.0.113.77"])
    assert says in (p.reason(parse_target(target)) or "")


def test_protected_lets_other_addresses_be_blocked():
    p = Protected.for_host(allowlist=["198.51.100.0/24"])
    for target in ("203.0.113.7", "198.51.101.0/24", "2001:db8::7", "100.64.0.0/10"):
        assert p.reason(parse_target(target)) is None, target


def test_every_address_of_this_host_is_protected():
    p = Protected.for_host()
    mine = [a.address.split("%")[0] for addrs in psutil.net_if_addrs().values() for a in addrs
            if a.family in (socket.AF_INET, socket.AF_INET6)]
    assert any(not a.startswith(("127.", "::1", "fe80")) for a in mine), mine
    for a in mine:
        why = p.reason(parse_target(a))
        assert why is not None, a
    own = next(a for a in mine if not a.startswith(("127.", "::1", "fe80")))
    assert "an address of this host" in p.reason(parse_target(own))
    wide = ipaddress.ip_network(own).supernet(new_prefix=8 if ":" not in own else 32)
    assert f"contains {own}" in p.reason(wide)


def test_bad_allowlist_entries_are_refused():
    with pytest.raises(ValueError, match="'10.0.0.0/40' is not an IP address or network"):
        Protected.for_host(allowlist=["10.0.0.0/40"])


def test_peers_of_ssh_like_sessions_are_protected():
    """A real listener and a real established connection from 127.0.0.9: its peer address
    is found by psutil and protected."""
    with socket.create_server(("127.0.0.1", 0)) as srv:
        port = srv.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port), source_address=("127.0.0.9", 0)):
            conn, _ = srv.accept()
            with conn:
                assert net("127.0.0.9/32") in session_peers({port})
                assert net("127.0.0.9/32") not in session_peers(set())
                p = Protected.for_host(ssh_ports=[port])
                assert any(e.net == net("127.0.0.9/32") and "SSH session" in e.why
                           for e in p.entries)


def test_collector_host_names_are_resolved_and_failures_reported():
    nets, problem = collector_addresses("http://localhost:8080", 3.0)
    assert net("127.0.0.1/32") in nets and problem is None
    nets, problem = collector_addresses("http://no-such-host.invalid/", 3.0)
    assert nets == [] and "no-such-host.invalid did not resolve" in problem
    p = Protected.for_host(collector_url="http://no-such-host.invalid/")
    assert any("did not resolve" in w for w in p.warnings)


def test_gateways_and_nameservers_are_read_from_the_system(tmp_path):
    proc = tmp_path / "net"
    proc.mkdir()
    (proc / "route").write_text(
        "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\n"
        "eth0\t00000000\t010200C0\t0003\t0\t0\t0\t00000000\n"
        "eth0\t000011AC\t00000000\t0001\t0\t0\t0\t0000FFFF\n")
    (proc / "ipv6_route").write_text(
        "00000000000000000000000000000000 00 00000000000000000000000000000000 00 "
        "20010db8000000000000000000000001 00000400 00000001 00000000 00000003 eth0\n")
    assert default_gateways(str(proc)) == [net("192.0.2.1/32"), net("2001:db8::1/128")]
    conf = tmp_path / "resolv.conf"
    conf.write_text("# comment\nsearch example\nnameserver 10.255.255.53\nnameserver ::1\n")
    assert nameservers(str(conf)) == [net("10.255.255.53/32"), net("::1/128")]
    p = Protected.for_host()
    assert default_gateways(), "this machine has a default route"
    for gw in default_gateways():
        assert any(e.net == gw and e.why == "a default gateway" for e in p.entries)
        assert p.reason(gw) is not None


def test_layout_cuts_nested_prefixes_into_disjoint_pieces_with_the_latest_until():
    rows = [(net("10.9.0.0/16"), 100.0), (net("10.9.1.0/24"), 200.0), (net("10.9.1.7/32"), 50.0),
            (net("10.20.0.0/24"), 10.0)]
    pieces = layout(rows)
    for a, b in zip(pieces, pieces[1:], strict=False):
        assert not a[0].overlaps(b[0])
    assert sum(p.num_addresses for p, _ in pieces) == 65536 + 256
    assert (net("10.9.1.0/24"), 200.0) in pieces
    assert (net("10.20.0.0/24"), 10.0) in pieces
    assert all(u == 100.0 for p, u in pieces if p.subnet_of(net("10.9.0.0/16"))
               and not p.subnet_of(net("10.9.1.0/24")))
    # the inner block outliving the outer one: only the inner piece lasts
    assert layout([(net("10.9.0.0/16"), 10.0), (net("10.9.1.0/24"), 10.0)]) == [
        (net("10.9.0.0/16"), 10.0)]
    assert layout([]) == []
