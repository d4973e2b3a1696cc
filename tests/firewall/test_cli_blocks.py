"""`opsagent blocks add|list|remove` end to end: the installed command, OPSAGENT_NFT pointing
into the test's namespace, real TCP connections to check."""

from __future__ import annotations

import json
import os
import subprocess
import time

import pytest

from tests.harness.collector import REPO
from tests.harness.netns import Netns, unavailable

OPSAGENT = str(REPO / ".venv" / "bin" / "opsagent")


def run(netns, state, *args, nft=None):
    env = {**os.environ, "OPSAGENT_NFT": nft if nft is not None else json.dumps(netns.nft_argv)}
    return subprocess.run([OPSAGENT, "blocks", *args, "--state-dir", str(state)], env=env,
                          capture_output=True, text=True, timeout=60)


if (_why := unavailable()) is not None:
    pytest.skip(_why, allow_module_level=True)


@pytest.fixture(scope="module")
def shared_netns():
    """One set of namespaces for the tests that must leave it untouched."""
    ns = Netns().start()
    try:
        yield ns
    finally:
        ns.close()


@pytest.mark.root
@pytest.mark.e2e
def test_add_list_remove(netns, tmp_path):
    state = tmp_path / "state"
    a, b = netns.client4
    r = run(netns, state, "add", a, "--for", "1h", "--reason", "credential stuffing")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"{a} blocked until ")
    assert not netns.connect(a, netns.fw4)
    assert netns.connect(b, netns.fw4)
    r = run(netns, state, "add", f"{netns.net6}::/126", "--for", "10m")
    assert r.returncode == 0, r.stderr
    assert not netns.connect(netns.client6[1], netns.fw6)

    r = run(netns, state, "list", "--json")
    assert r.returncode == 0, r.stderr
    listed = {x["addr"]: x for x in json.loads(r.stdout)}
    assert set(listed) == {a, f"{netns.net6}::/126"}
    entry = listed[a]
    assert entry["status"] == "active" and entry["reason"] == "credential stuffing"
    assert entry["rule"] == "manual" and entry["origin"].startswith("cli:")
    assert 3590 <= entry["remaining_s"] <= 3600 and 3590 <= entry["kernel_expires_s"] <= 3600
    assert abs(entry["until"] - (time.time() + 3600)) < 30
    assert 590 <= listed[f"{netns.net6}::/126"]["remaining_s"] <= 600

    r = run(netns, state, "list")
    assert r.returncode == 0
    line = next(ln for ln in r.stdout.splitlines() if ln.startswith(a))
    assert "active" in line and "manual (cli:" in line
    assert "(59m left)" in line or "(60m left)" in line
    assert line.endswith(": credential stuffing")

    r = run(netns, state, "remove", a)
    assert (r.returncode, r.stdout.strip()) == (0, f"{a} unblocked"), r.stderr
    assert netns.connect(a, netns.fw4)
    r = run(netns, state, "remove", a)
    assert r.returncode == 2 and f"no block on {a}" in r.stderr
    r = run(netns, state, "list", "--json")
    assert [x["addr"] for x in json.loads(r.stdout)] == [f"{netns.net6}::/126"]


@pytest.mark.root
@pytest.mark.e2e
@pytest.mark.parametrize(("args", "says"), [
    (("add", "127.0.0.1"), "127.0.0.1 is inside 127.0.0.0/8, protected: loopback; nothing was changed"),
    (("add", "0.0.0.0/0"), "contains 127.0.0.0/8, protected: loopback"),
    (("add", "FW4"), "FW4 is protected: an address of this host"),  # found through OPSAGENT_NFT
    (("add", "1.2.3.4; rm -rf /"), "is not an IP address or network"),
    (("add", "$(reboot)"), "is not an IP address or network"),
    (("add", " 1.2.3.4"), "has spaces around it"),
    (("add", "203.0.113.7", "--for", "0s"), "a block lasts from 1s to 365d"),
    (("add", "203.0.113.7", "--for", "soon"), "--for: 'soon' is not a duration"),
    (("add", "203.0.113.7", "--for", "400d"), "a block lasts from 1s to 365d"),
    (("remove", "$(reboot)"), "is not an IP address or network"),
])
def test_bad_or_protected_input_exits_2_and_changes_nothing(shared_netns, tmp_path, args, says):
    netns = shared_netns
    state = tmp_path / "state"
    args = tuple(netns.fw4 if x == "FW4" else x for x in args)
    r = run(netns, state, *args)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert says.replace("FW4", netns.fw4) in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    assert r.stdout == ""
    assert "opsagent" not in netns.nft("list", "tables")
    r = run(netns, state, "list", "--json")
    assert json.loads(r.stdout) == []


@pytest.mark.root
@pytest.mark.e2e
def test_a_bad_opsagent_nft_exits_2(netns, tmp_path):
    r = run(netns, tmp_path / "state", "add", "203.0.113.7", nft="nft; reboot")
    assert r.returncode == 2 and "OPSAGENT_NFT must be a JSON list of strings" in r.stderr
    assert not (tmp_path / "state" / "state.db").exists()


@pytest.mark.root
@pytest.mark.e2e
def test_the_playbooks_allowlist_is_honoured(netns, tmp_path):
    (tmp_path / "pb.yaml").write_text(f"name: web\nallowlist: ['{netns.client4[0]}']\n")
    (tmp_path / "agent.yaml").write_text(
        f"playbooks: [{tmp_path / 'pb.yaml'}]\nstate_dir: {tmp_path / 'state'}\n")
    env = {**os.environ, "OPSAGENT_NFT": json.dumps(netns.nft_argv)}
    r = subprocess.run([OPSAGENT, "blocks", "add", netns.client4[0], "--config",
                        str(tmp_path / "agent.yaml")], env=env, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 2 and "protected: in the allowlist" in r.stderr
    assert netns.connect(netns.client4[0], netns.fw4)
    (tmp_path / "pb.yaml").write_text("name: web\nallowlist: [not-an-address]\n")
    r = subprocess.run([OPSAGENT, "blocks", "add", netns.client4[1], "--config",
                        str(tmp_path / "agent.yaml")], env=env, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 2 and "the allowlist of" in r.stderr and "is unknown" in r.stderr
    assert netns.connect(netns.client4[1], netns.fw4)


@pytest.mark.root
@pytest.mark.e2e
def test_nft_failures_are_one_line_and_exit_4(netns, tmp_path):
    state = tmp_path / "state"
    broken = json.dumps(["/nonexistent/nft"])
    r = run(netns, state, "list", nft=broken)
    assert r.returncode == 4 and r.stderr.strip() == (
        "opsagent: cannot run /nonexistent/nft: No such file or directory")
    r = run(netns, state, "add", netns.client4[0], nft=broken)
    assert r.returncode == 4 and "is recorded until" in r.stderr and "but not enforced" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    # recorded: the list shows it missing, and adding it again applies it
    r = run(netns, state, "list")
    assert r.returncode == 0 and f"{netns.client4[0]}  missing" in r.stdout
    assert "`opsagent blocks add ADDR` applies it again" in r.stdout
    assert netns.connect(netns.client4[0], netns.fw4)
    r = run(netns, state, "add", netns.client4[0], "--for", "10m")
    assert r.returncode == 0 and "already blocked until" in r.stdout
    assert not netns.connect(netns.client4[0], netns.fw4)
