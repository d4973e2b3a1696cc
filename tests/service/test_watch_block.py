"""Log watches end to end: a real agent follows a real log file and blocks addresses with
real nftables inside network namespaces the test creates (tests/harness/netns.py): after N
failed logins from an address a TCP connection from it fails while one from another address
still works, until the block expires; hostile lines block nothing they must not; a restart
in the middle of a burst neither forgets nor double-counts a line."""

from __future__ import annotations

import json
import signal
import sqlite3
import textwrap
import time
from pathlib import Path

import pytest

from tests.harness.netns import Netns, unavailable
from tests.harness.recorders import HttpRecorder
from tests.service.agentproc import AgentProc, wait_for

pytestmark = pytest.mark.skipif(unavailable() is not None, reason=str(unavailable()))


def line(ip: str, user: str = "admin", pid: int = 100) -> str:
    return (f"{time.strftime('%b %d %H:%M:%S')} web01 sshd[{pid}]: Failed password for "
            f"invalid user {user} from {ip} port 40022 ssh2\n")


def append(log: Path, *lines: str) -> None:
    with open(log, "a") as fh:
        fh.write("".join(lines))


def agent(root: Path, ns: Netns, watch: str, extra_pb: str = "") -> AgentProc:
    (root / "pb").mkdir(exist_ok=True)
    (root / "pb" / "sec.yaml").write_text(
        f'name: sec\nallowlist: ["{ns.client4[1]}/32"]\nwatches:\n'
        + textwrap.indent(textwrap.dedent(watch), "  ") + extra_pb)
    return AgentProc(root, textwrap.dedent(f"""\
        host: web01
        playbooks: [pb]
        state_dir: state
        reconcile_interval: 60s
        log_format: json
        firewall: {{nft: {json.dumps(ns.nft_argv)}}}
        """))


def fired(proc: AgentProc) -> int:
    return int(((proc.status() or {}).get("watches", {}).get("ssh") or {}).get("fired", 0))


def elements(ns: Netns) -> set[str]:
    """What the kernel holds in the agent's sets (nothing before the first block)."""
    try:
        doc = json.loads(ns.nft("-j", "list", "table", "inet", "opsagent"))
    except AssertionError as e:
        if "No such file or directory" in str(e):
            return set()
        raise
    out: set[str] = set()
    for item in doc["nftables"]:
        for e in (item.get("set") or {}).get("elem") or []:
            v = e.get("elem", {}).get("val", e) if isinstance(e, dict) else e
            if isinstance(v, dict) and "prefix" in v:
                v = f"{v['prefix']['addr']}/{v['prefix']['len']}"
            out.add(str(v))
    return out


def test_failed_logins_block_the_address_then_the_block_expires(tmp_path: Path,
                                                                netns: Netns) -> None:
    hook = HttpRecorder()
    log = tmp_path / "auth.log"
    log.write_text("")
    bad4, other4 = netns.client4
    bad6 = netns.client6[0]
    proc = agent(tmp_path, netns, f"""\
        - name: ssh
          log: {log}
          pattern: {{fail2ban_filter: /etc/fail2ban/filter.d/sshd.conf}}
          key: ip
          threshold: 3
          within: 1m
          actions:
            - {{block_ip: {{ip: "{{{{ ip }}}}", duration: 6s}}}}
            - {{snapshot: {{lines: 5}}}}
            - {{notify: hook}}
        """, f"notifiers:\n  hook: {{webhook: {{url: \"{hook.url}\"}}}}\n").start()
    try:
        assert netns.connect(bad4, netns.fw4) and netns.connect(other4, netns.fw4)
        append(log, line(bad4), line(bad4))
        time.sleep(1.0)
        assert netns.connect(bad4, netns.fw4), "blocked before the threshold"
        append(log, line(bad4), line(bad6), line(bad6), line(bad6, pid=7))
        took = netns.wait_connect(bad4, netns.fw4, False, within=10)
        assert took < 10
        assert not netns.connect(bad4, netns.backend4), "the forward hook lets it through"
        assert netns.connect(other4, netns.fw4), "another address is blocked too"
        netns.wait_connect(netns.client6[0], netns.fw6, False, within=10)
        assert netns.connect(netns.client6[1], netns.fw6)
        assert {bad4, bad6} <= elements(netns)
        wait_for(lambda: len(hook.requests) >= 2, 10, "the notifications")
        events = [json.loads(r.body) for r in hook.requests]
        assert {e["events"][0]["labels"]["key"] for e in events} == {bad4, bad6}
        st = wait_for(lambda: fired(proc) >= 2 and proc.status()["watches"]["ssh"], 10,  # type: ignore[index]
                      "the watch's status")
        assert st["matched"] == 6 and st["keys"] == 0
        evidence = list((tmp_path / "state" / "evidence").glob("*.json"))
        assert evidence and any(bad4 in json.loads(p.read_text())["key"] for p in evidence)
        doc = json.loads(next(p for p in evidence if bad4 in p.read_text()).read_text())
        assert len(doc["lines"]) == 3 and "processes" in doc and "sockets" in doc
        # the kernel ends the block on time, agent or not
        netns.wait_connect(bad4, netns.fw4, True, within=15)
    finally:
        proc.stop()
        hook.close()


def test_hostile_lines_block_nothing_that_must_not_be(tmp_path: Path, netns: Netns) -> None:
    log = tmp_path / "auth.log"
    log.write_text("")
    marker = tmp_path / "pwned"
    proc = agent(tmp_path, netns, f"""\
        - name: ssh
          log: {log}
          pattern: 'Failed password for (invalid user )?(?P<user>.*) from (?P<ip>\\S+) port'
          key: ip
          threshold: 1
          within: 1m
          actions:
            - {{block_ip: {{ip: "{{{{ ip }}}}", duration: 1m}}}}
            - {{run: {{argv: [/bin/echo, "{{{{ user }}}}"]}}}}
        """).start()
    try:
        allow = netns.client4[1]
        hostile = [line("127.0.0.1"), line("::1"), line(allow), line("0.0.0.0/0"),
                   line("1.2.3.4;"), line("$(touch%20" + str(marker) + ")"),
                   line("999.1.1.1"), line("fe80::1%eth0"),
                   line(netns.client4[0], user=f"x; touch {marker}"),
                   "Mar 14 00:00:00 " + "A" * (1 << 20) + "\n",
                   line("10.0.0.1").replace("admin", "\udcff").encode(
                       "utf-8", "surrogateescape").decode("latin-1")]
        append(log, *hostile)
        wait_for(lambda: fired(proc) >= 9, 15, "every hostile line seen")
        got = elements(netns)
        assert netns.client4[0] in got  # the one legitimate address (its user is odd)
        for ip in ("127.0.0.1", "::1", allow, "0.0.0.0/0", "999.1.1.1"):
            assert ip not in got
        assert netns.connect(allow, netns.fw4)
        time.sleep(1)
        assert not marker.exists()
        text = proc.log_text()
        assert "is protected" in text or "allowlist" in text
    finally:
        proc.stop()


def test_restart_mid_burst_neither_forgets_nor_doubles(tmp_path: Path, netns: Netns) -> None:
    log = tmp_path / "auth.log"
    log.write_text("")
    bad = netns.client4[0]
    watch = f"""\
        - name: ssh
          log: {log}
          pattern: 'Failed password for .* from (?P<ip>\\S+) port'
          key: ip
          threshold: 4
          within: 5m
          actions: [{{block_ip: {{ip: "{{{{ ip }}}}", duration: 1m}}}}]
        """
    proc = agent(tmp_path, netns, watch).start()
    append(log, line(bad), line(bad))
    wait_for(lambda: ((proc.status() or {}).get("watches", {}).get("ssh") or {}).get(
        "matched") == 2, 10, "two lines counted")
    assert proc.stop() == 0
    append(log, line(bad))  # written while the agent is down: counted once, after restart
    proc2 = AgentProc(tmp_path, proc.config.read_text()).start()
    try:
        time.sleep(2)
        assert bad not in elements(netns), "3 lines must not fire a threshold of 4"
        append(log, line(bad))
        netns.wait_connect(bad, netns.fw4, False, within=10)
        proc2.signal(signal.SIGKILL)
        proc2.proc.wait(10)  # type: ignore[union-attr]
        # after a kill -9 the block stays in the kernel, and the rows in state.db
        assert bad in elements(netns)
        netns.nft("delete", "table", "inet", "opsagent")  # as after a host reboot
        proc3 = AgentProc(tmp_path, proc.config.read_text()).start()
        try:
            wait_for(lambda: bad in elements(netns), 10, "the block restored from state")
            assert not netns.connect(bad, netns.fw4)
        finally:
            proc3.stop()
    finally:
        if proc2.proc is not None and proc2.proc.poll() is None:
            proc2.stop()


def test_past_its_budget_a_watch_counts_but_does_not_act(tmp_path: Path, netns: Netns) -> None:
    log = tmp_path / "auth.log"
    log.write_text("")
    proc = agent(tmp_path, netns, f"""\
        - name: ssh
          log: {log}
          pattern: 'Failed password for .* from (?P<ip>\\S+) port'
          key: ip
          budget: {{firings: 2, per: 1m}}
          actions: [{{block_ip: {{ip: "{{{{ ip }}}}", duration: 1m}}}}]
        """).start()
    try:
        a, b, c = "203.0.113.1", "203.0.113.2", "203.0.113.3"
        append(log, line(a), line(b), line(c))
        wait_for(lambda: fired(proc) >= 3, 15, "three firings")
        assert {a, b} <= elements(netns) and c not in elements(netns)
        assert "already acted: nothing done" in proc.log_text()
        with sqlite3.connect(tmp_path / "state" / "state.db") as db:
            alerts = [m for (m,) in db.execute("SELECT message FROM alerts WHERE key = ?",
                                                ("watch:ssh",))]
        assert any("action budget exhausted" in m for m in alerts), alerts
    finally:
        proc.stop()
