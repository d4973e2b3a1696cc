"""Opt-in fleet-wide blocks: a block decided on one host (a watch's ``block_ip`` with
``share: true``) reaches the collector in its response report, and another host of the same
group applies it with what is left of its time — unless that host's own allowlist protects
the address. Real collector, real agents, real nftables in namespaces."""

from __future__ import annotations

import json
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness.collector import CollectorProc
from tests.harness.netns import Netns, unavailable
from tests.service.agentproc import AgentProc, wait_for
from tests.service.test_watch_block import append, elements, line

pytestmark = pytest.mark.skipif(unavailable() is not None, reason=str(unavailable()))


@pytest.fixture
def two() -> Iterator[tuple[Netns, Netns]]:
    a, b = Netns().start(), Netns().start()
    try:
        yield a, b
    finally:
        a.close()
        b.close()


def agent(root: Path, host: str, ns: Netns, collector: CollectorProc, playbook: str,
          fleet: bool) -> AgentProc:
    root.mkdir()
    (root / "pb").mkdir()
    (root / "pb" / "pb.yaml").write_text(textwrap.dedent(playbook))
    (root / "token").write_text(collector.token(host))
    return AgentProc(root, textwrap.dedent(f"""\
        host: {host}
        group: web
        playbooks: [pb]
        state_dir: state
        reconcile_interval: 60s
        log_format: json
        collector: {{url: "{collector.url}", token_file: token}}
        firewall: {{nft: {json.dumps(ns.nft_argv)}, fleet: {str(fleet).lower()}}}
        """)).start()


def test_a_shared_block_reaches_the_group(tmp_path: Path, two: tuple[Netns, Netns]) -> None:
    ns_a, ns_b = two
    collector = CollectorProc(str(tmp_path / "c.db"), tmp_path / "collector.log").start()
    log = tmp_path / "auth.log"
    log.write_text("")
    attacker, protected_on_b = "203.0.113.66", "203.0.113.77"
    a = agent(tmp_path / "a", "web01", ns_a, collector, f"""\
        name: edge
        watches:
          - name: ssh
            log: {log}
            pattern: 'Failed password for .* from (?P<ip>\\S+) port'
            key: ip
            actions: [{{block_ip: {{ip: "{{{{ ip }}}}", duration: 2m, share: true}}}}]
        """, fleet=False)
    b = agent(tmp_path / "b", "web02", ns_b, collector, f"""\
        name: web
        allowlist: ["{protected_on_b}/32"]
        """, fleet=True)
    try:
        started = time.time()
        append(log, line(attacker), line(protected_on_b))
        wait_for(lambda: {attacker, protected_on_b} <= elements(ns_a), 10, "blocks on web01")
        wait_for(lambda: attacker in elements(ns_b), 40, "the shared block on web02")
        assert protected_on_b not in elements(ns_b), "web02's allowlist must win"
        doc = json.loads(ns_b.nft("-j", "list", "set", "inet", "opsagent", "blocked4"))
        (elem,) = [e["elem"] for item in doc["nftables"] if "set" in item
                   for e in item["set"].get("elem", []) if isinstance(e, dict)
                   and e.get("elem", {}).get("val") == attacker]
        assert elem["timeout"] <= 120 and elem["expires"] <= 120 - (time.time() - started) + 5
        wait_for(lambda: "allowlist" in b.log_text(), 10, "the refusal logged on web02")
    finally:
        a.stop()
        b.stop()
        collector.stop()
