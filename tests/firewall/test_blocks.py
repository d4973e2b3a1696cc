"""Blocker end to end: state.db + nftables in a namespace, checked with real TCP connections."""

from __future__ import annotations

import ipaddress
import random
import sqlite3
import time

import pytest

from agent.firewall import Blocker, Nftables, Protected
from tests.firewall.conftest import make_blocker
from tests.harness.netns import unavailable

if (_why := unavailable()) is not None:
    pytest.skip(_why, allow_module_level=True)

pytestmark = [pytest.mark.root, pytest.mark.e2e]
net = ipaddress.ip_network


def rows(state_dir) -> dict[str, tuple]:
    db = state_dir / "state.db"
    if not db.exists():
        return {}
    with sqlite3.connect(db) as conn:
        return {r[0]: r[1:] for r in conn.execute(
            "SELECT addr, until, rule, reason, origin, created FROM blocks")}


def test_an_address_is_blocked_and_its_neighbour_is_not(netns, blocker, tmp_path):
    a, b = netns.client4
    out = blocker.block(a, 3600, rule="ssh-bruteforce", reason="5 failures in 1h")
    assert out.status == "blocked" and out.changed and out.addr == a
    assert out.message.startswith(f"{a} blocked until ")
    assert not netns.connect(a, netns.fw4)            # input hook
    assert not netns.connect(a, netns.backend4)       # forward hook (a container's port)
    assert netns.connect(b, netns.fw4)
    assert netns.connect(b, netns.backend4)
    until, rule, reason, origin, _ = rows(tmp_path / "state")[a]
    assert (rule, reason, origin) == ("ssh-bruteforce", "5 failures in 1h", "local")
    assert abs(until - (time.time() + 3600)) < 5


def test_ipv6_addresses_are_blocked_too(netns, blocker):
    a, b = netns.client6
    out = blocker.block(ipaddress.ip_address(a).exploded.upper(), 600, rule="r", reason="x")
    assert out.status == "blocked" and out.addr == a   # normalised
    assert not netns.connect(a, netns.fw6)
    assert not netns.connect(a, netns.backend6)
    assert netns.connect(b, netns.fw6)
    assert netns.connect(netns.client4[0], netns.fw4)  # the same host over IPv4 is not blocked


def test_ipv4_mapped_ipv6_blocks_the_ipv4_address(netns, blocker):
    out = blocker.block(f"::ffff:{netns.client4[0]}", 600, rule="r", reason="x")
    assert out.addr == netns.client4[0]
    assert not netns.connect(netns.client4[0], netns.fw4)


def test_a_cidr_block_covers_every_address_in_it(netns, blocker):
    out = blocker.block(f"{netns.net4}.0/30", 600, rule="r", reason="x")
    assert out.status == "blocked" and out.addr == f"{netns.net4}.0/30"
    for a in netns.client4:
        assert not netns.connect(a, netns.fw4)
    assert netns.connect(netns.client6[0], netns.fw6)
    out = blocker.block(f"{netns.net6}::/126", 600, rule="r", reason="x")
    assert out.status == "blocked"
    for a in netns.client6:
        assert not netns.connect(a, netns.fw6)


def test_the_kernel_ends_a_block_on_time(netns, blocker):
    a = netns.client4[0]
    blocker.block(a, 2, rule="r", reason="short")
    blocker.block(netns.client6[0], 2, rule="r", reason="short")
    assert not netns.connect(a, netns.fw4, timeout=0.5)
    t = netns.wait_connect(a, netns.fw4, True, within=6)
    assert t < 4
    assert netns.connect(netns.client6[0], netns.fw6)
    assert blocker.list() == []  # expired rows are not listed


def test_nested_prefixes_each_last_as_long_as_asked(netns, blocker):
    """A /30 for 2 s around a /31 for 10 min: when the /30 ends, .1 is free, .3 is not."""
    a, b = netns.client4
    assert blocker.block(f"{netns.net4}.2/31", 600, rule="r", reason="inner").status == "blocked"
    assert blocker.block(f"{netns.net4}.0/30", 2, rule="r", reason="outer").status == "blocked"
    assert blocker.block(a, 1, rule="r", reason="single, inside both").status == "blocked"
    assert not netns.connect(a, netns.fw4) and not netns.connect(b, netns.fw4)
    listed = {x.addr: x for x in blocker.list()}
    assert {x.status for x in listed.values()} == {"active"}
    assert listed[f"{netns.net4}.2/31"].kernel_expires_s > 590
    netns.wait_connect(a, netns.fw4, True, within=6)
    assert not netns.connect(b, netns.fw4)
    assert [x.addr for x in blocker.list()] == [f"{netns.net4}.2/31"]


def test_a_repeat_extends_and_a_shorter_repeat_keeps(netns, blocker, tmp_path):
    a = netns.client4[0]
    first = blocker.block(a, 60, rule="r1", reason="first")
    longer = blocker.block(a, 3600, rule="r2", reason="again")
    assert longer.status == "extended" and longer.until > first.until + 3000
    shorter = blocker.block(a, 10, rule="r3", reason="third")
    assert shorter.status == "kept" and not shorter.changed and shorter.until == longer.until
    assert shorter.message.startswith(f"{a} already blocked until")
    until, rule, reason, _, created = rows(tmp_path / "state")[a]
    assert (until, rule, reason) == (longer.until, "r2", "again")
    assert abs(created - first.until + 60) < 1  # created stays the first block's time
    (entry,) = blocker.list()
    assert entry.status == "active" and 3590 <= entry.kernel_expires_s <= 3600


def test_restore_reapplies_after_a_reboot_with_the_ttl_left(netns, blocker, tmp_path):
    a, b = netns.client4
    blocker.block(a, 600, rule="r", reason="long")
    blocker.block(b, 1, rule="r", reason="short")
    blocker.block(f"{netns.net6}::/126", 600, rule="r", reason="prefix")
    time.sleep(2)
    assert blocker.nft.drop_table() is True  # what a reboot does
    assert netns.connect(a, netns.fw4) and netns.connect(netns.client6[0], netns.fw6)
    assert {x.status for x in blocker.list()} == {"missing"}
    # a new process: a fresh Blocker on the same state
    again = make_blocker(netns, tmp_path / "state")
    summary = again.restore()
    assert (summary.restored, summary.expired) == (2, 1)
    assert not netns.connect(a, netns.fw4)
    assert not netns.connect(netns.client6[1], netns.fw6)
    assert netns.connect(b, netns.fw4)
    assert set(rows(tmp_path / "state")) == {a, f"{netns.net6}::/126"}
    listed = {x.addr: x for x in again.list()}
    assert listed[a].status == "active"
    assert 590 <= listed[a].kernel_expires_s <= 598  # the remaining TTL, not a fresh 600 s
    assert again.restore().restored == 2  # idempotent


def test_restore_removes_what_the_state_does_not_hold(netns, blocker):
    blocker.block(netns.client4[0], 600, rule="r", reason="x")
    netns.nft("add", "element", "inet", "opsagent", "blocked4", f"{{ {netns.client4[1]} }}")
    assert [x.status for x in blocker.list()] == ["active", "untracked"]
    assert not netns.connect(netns.client4[1], netns.fw4)
    blocker.restore()
    assert [x.addr for x in blocker.list()] == [netns.client4[0]]
    assert netns.connect(netns.client4[1], netns.fw4)


def test_list_shows_an_entry_the_kernel_lacks(netns, blocker):
    a = netns.client4[0]
    blocker.block(a, 600, rule="r", reason="x")
    blocker.block(f"{netns.net6}::/126", 600, rule="r", reason="x")
    netns.nft("flush", "set", "inet", "opsagent", "blocked4")
    listed = {x.addr: x for x in blocker.list()}
    assert listed[a].status == "missing" and listed[a].kernel_expires_s is None
    assert listed[f"{netns.net6}::/126"].status == "active"
    assert netns.connect(a, netns.fw4)


def test_unblock_ends_a_block_now(netns, blocker, tmp_path):
    a = netns.client4[0]
    blocker.block(a, 600, rule="r", reason="x")
    blocker.block(f"{netns.net4}.0/30", 600, rule="r", reason="x")
    gone = blocker.unblock(f"{netns.net4}.0/30")
    assert gone.removed and gone.covered_by == ()
    assert not netns.connect(a, netns.fw4)
    assert netns.connect(netns.client4[1], netns.fw4)
    assert blocker.unblock(a).removed
    assert netns.connect(a, netns.fw4)
    assert rows(tmp_path / "state") == {}
    assert blocker.nft.elements() == []
    assert blocker.unblock(a).removed is False
    blocker.block(f"{netns.net4}.0/30", 600, rule="r", reason="x")
    assert blocker.unblock(a).covered_by == (f"{netns.net4}.0/30",)
    with pytest.raises(ValueError):
        blocker.unblock("$(reboot)")


def test_protected_addresses_are_refused_and_nothing_changes(netns, tmp_path):
    state = tmp_path / "state"
    b = make_blocker(netns, state, allowlist=(f"{netns.net4}.64/26", f"{netns.net6}::77"))
    own = next(str(e.net.network_address) for e in b.protected.entries
               if "an address of this host" in e.why and e.net.version == 4
               and not e.net.network_address.is_loopback)
    cases = {
        "127.0.0.1": "loopback",
        "::1": "loopback",
        own: "an address of this host",                           # this machine's
        netns.fw4: "an address of this host",                     # where nft acts
        netns.fw6: "an address of this host",
        f"{netns.net4}.70": f"inside {netns.net4}.64/26, protected: in the allowlist",
        f"{netns.net4}.64/26": "protected: in the allowlist",
        f"{netns.net4}.0/25": f"contains {netns.net4}.64/26, protected: in the allowlist",
        f"{netns.net6}::/120": f"contains {netns.net6}::77, protected: in the allowlist",
        f"{netns.net4}.0/24": "contains",
        f"{netns.net6}::/64": "contains",
        "0.0.0.0/0": "contains 127.0.0.0/8",
        "::/0": "contains ::1",
        "fe80::1": "link-local",
        "224.0.0.251": "multicast",
    }
    for target, says in cases.items():
        out = b.block(target, 600, rule="r", reason="x")
        assert out.status == "refused" and not out.changed, target
        assert says in out.message, (target, out.message)
    assert rows(state) == {}
    assert b.nft.elements() == []
    assert netns.connect(netns.client4[0], netns.fw4)


HOSTILE = ["1.2.3.4; rm -rf /", "$(reboot)", "", " 1.2.3.4", "1.2.3.4 ", "fe80::1%eth0",
           "example.com", "1.2.3.4\n10.0.0.1", "10.0.0.1/33", "10.0.0.1 drop",
           "'; DROP TABLE blocks; --", "\x00", "1.2.3.4/8/8", "{ 0.0.0.0/0 }", "-f /etc/passwd"]


def test_hostile_strings_are_refused_and_nothing_is_added(netns, blocker, tmp_path):
    for hostile in HOSTILE:
        out = blocker.block(hostile, 600, rule="r", reason="x")
        assert out.status == "refused" and out.addr is None, hostile
        assert "expected an IP address or CIDR network" in out.message
    assert rows(tmp_path / "state") == {}
    assert "opsagent" not in netns.nft("list", "tables")  # nft was not even run


def test_ttl_bounds(netns, blocker):
    for ttl in (0, 0.5, -1, 365 * 86400 + 1, float("inf"), float("nan")):
        out = blocker.block(netns.client4[0], ttl, rule="r", reason="x")
        assert out.status == "refused" and "from 1s to 365d" in out.message, ttl
    assert blocker.block(netns.client4[0], 365 * 86400, rule="r", reason="x").status == "blocked"
    (entry,) = blocker.list()
    assert entry.kernel_expires_s > 365 * 86400 - 10


def test_the_cap_refuses_new_blocks_but_lets_existing_ones_extend(netns, tmp_path):
    b = make_blocker(netns, tmp_path / "state", max_blocks=3)
    for i in range(3):
        assert b.block(f"203.0.113.{i + 1}", 600, rule="r", reason="x").status == "blocked"
    out = b.block("203.0.113.9", 600, rule="r", reason="x")
    assert out.status == "refused" and "3 blocks are active, the most allowed" in out.message
    assert b.block("203.0.113.1", 1200, rule="r", reason="x").status == "extended"
    assert len(b.nft.elements()) == 3
    b.unblock("203.0.113.2")
    assert b.block("203.0.113.9", 600, rule="r", reason="x").status == "blocked"


def test_an_nft_failure_is_recorded_and_restore_applies_it(netns, tmp_path):
    state = tmp_path / "state"
    broken = Blocker(str(state), Nftables(["/nonexistent/nft"]), Protected(()))
    out = broken.block(netns.client4[0], 600, rule="r", reason="x")
    assert out.status == "failed" and "not enforced: cannot run /nonexistent/nft" in out.message
    assert netns.client4[0] in rows(state)
    assert netns.connect(netns.client4[0], netns.fw4)
    assert make_blocker(netns, state).restore().restored == 1
    assert not netns.connect(netns.client4[0], netns.fw4)


def test_text_fields_are_cleaned_and_capped(netns, blocker, tmp_path):
    blocker.block(netns.client4[0], 600, rule="r\x1b[31m", reason="x" * 2000 + "\n")
    _, rule, reason, _, _ = rows(tmp_path / "state")[netns.client4[0]]
    assert rule == "r?[31m"
    assert len(reason) == 500 and reason.endswith("...")


def test_after_a_ruleset_flush_the_next_block_brings_every_block_back(netns, blocker):
    """`systemctl restart nftables` runs `flush ruleset`: our table is gone with it."""
    a, b = netns.client4
    blocker.block(a, 600, rule="r", reason="x")
    blocker.block(f"{netns.net6}::/126", 600, rule="r", reason="x")
    netns.nft("flush", "ruleset")
    assert netns.connect(a, netns.fw4)
    assert blocker.block(b, 600, rule="r", reason="x").status == "blocked"
    for src, dst in ((a, netns.fw4), (b, netns.fw4), (netns.client6[0], netns.fw6)):
        assert not netns.connect(src, dst), src
    assert {x.status for x in blocker.list()} == {"active"}


def test_concurrent_blockers_lose_nothing(netns, tmp_path):
    """Eight writers at once (the agent and operators): every prefix layout written under
    the lock includes every committed row."""
    from concurrent.futures import ThreadPoolExecutor

    class SlowNftables(Nftables):  # widens the window between reading rows and writing
        def load_networks(self, version, entries):
            time.sleep(random.random() * 0.1)
            super().load_networks(version, entries)

    state = tmp_path / "state"
    targets = [f"198.51.{i}.0/24" for i in range(16)] + [f"203.0.113.{i}" for i in range(16)]
    protected = Protected.for_host(addresses_argv=netns.ip_argv)
    blockers = [Blocker(str(state), SlowNftables(netns.nft_argv), protected) for _ in range(8)]
    blockers[0].restore()  # the database and table exist, as on a host the agent runs on

    def one(i: int) -> str:
        return blockers[i % 8].block(targets[i], 600, rule="r", reason="x").status

    with ThreadPoolExecutor(max_workers=8) as pool:
        assert set(pool.map(one, range(len(targets)))) == {"blocked"}
    listed = blockers[0].list()
    assert sorted(x.addr for x in listed) == sorted(targets)
    assert {x.status for x in listed} == {"active"}
