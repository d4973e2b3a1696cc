"""The fleet harness itself: SSH with the fleet's key and known_hosts, nft and the agent inside,
the users, both inventories, and the ways a test breaks a host and puts it back."""

from __future__ import annotations

import subprocess
import time

import paramiko
import pytest

from agent.inventory import load_inventory
from tests.harness.fleet import Fleet

pytestmark = pytest.mark.e2e


def connect(fleet: Fleet, name: str, user: str = "root", timeout: float = 10) -> paramiko.SSHClient:
    """paramiko as a fleet run uses it: known_hosts loaded, unknown or changed keys refused."""
    client = paramiko.SSHClient()
    client.load_host_keys(str(fleet.known_hosts))
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    client.connect(fleet.host(name).address, port=22, username=user,
                   key_filename=str(fleet.key_file), timeout=timeout, banner_timeout=timeout,
                   auth_timeout=timeout, allow_agent=False, look_for_keys=False)
    return client


def run(client: paramiko.SSHClient, command: str) -> tuple[int, str]:
    _, out, err = client.exec_command(command, timeout=60)
    text = out.read().decode() + err.read().decode()
    return out.channel.recv_exit_status(), text


def test_every_host_answers_ssh_with_the_key_and_its_known_host_key(fleet):
    assert fleet.names == ["th1", "th2", "th3"]
    assert len(fleet.known_hosts.read_text().splitlines()) == 3
    addresses = set()
    for fh in fleet.hosts:
        p = fleet.ssh(fh.name, "cat", "/etc/hostname")
        assert p.returncode == 0, p.stderr
        assert p.stdout.strip() == fh.host.name
        with connect(fleet, fh.name) as client:
            assert run(client, "id -un") == (0, "root\n")
        addresses.add(fh.address)
    assert len(addresses) == 3
    keys = {line.split()[2] for line in fleet.known_hosts.read_text().splitlines()}
    assert len(keys) == 3, "each host has its own host key"


def test_nft_and_the_agent_run_inside(fleet):
    for fh in fleet.hosts:
        p = fleet.ssh(fh.name, "nft", "list", "ruleset")
        assert p.returncode == 0, p.stderr
        p = fleet.ssh(fh.name, fleet.opsagent_path, "--version")
        assert p.returncode == 0, p.stderr
        assert p.stdout.startswith("opsagent "), p.stdout
        assert fleet.unit_property(fh.name, "ActiveState") == "active"
        assert fleet.unit_property(fh.name, "UnitFileState") == "enabled"


def test_ops_has_no_sudo_and_deploy_has_passwordless_sudo(fleet):
    p = fleet.ssh("th1", "sudo", "-n", "true", user="ops")
    assert p.returncode != 0
    assert "not in the sudoers file" in p.stderr or "password is required" in p.stderr
    p = fleet.ssh("th1", "sudo", "-n", "id", "-u", user="deploy")
    assert (p.returncode, p.stdout) == (0, "0\n"), p.stderr


def test_both_inventories_name_the_same_hosts(fleet):
    own = load_inventory(str(fleet.inventory))
    ini = load_inventory(str(fleet.ansible_inventory))
    assert (own.format, ini.format) == ("opsagent", "ansible-ini")
    for inv in (own, ini):
        assert list(inv.hosts) == fleet.names
        assert [h.name for h in inv.hosts_for("web")] == ["th1", "th2"]
        assert [h.name for h in inv.hosts_for("db")] == ["th3"]
        for fh in fleet.hosts:
            h = inv.hosts[fh.name]
            assert (h.ssh.address, h.ssh.user, h.ssh.key_file) == (
                fh.address, "root", str(fleet.key_file))
            assert h.vars["opsagent_path"] == fleet.opsagent_path


def test_a_changed_host_key_is_refused_until_known_hosts_has_it(fleet):
    old = fleet.host_key_line("th2")
    new = fleet.change_host_key("th2")
    try:
        assert new != old
        p = fleet.ssh("th2", "true")
        assert p.returncode == 255 and "HOST IDENTIFICATION HAS CHANGED" in p.stderr
        with pytest.raises(paramiko.BadHostKeyException):
            connect(fleet, "th2")
    finally:
        fleet.write_known_hosts()
    assert fleet.ssh("th2", "true").returncode == 0


@pytest.mark.parametrize("how", ["drop", "refuse", "pause"])
def test_an_unreachable_host_and_back(fleet, how):
    fleet.make_unreachable("th3", how)
    try:
        t0 = time.monotonic()
        with pytest.raises((OSError, paramiko.SSHException)):
            connect(fleet, "th3", timeout=2)
        assert time.monotonic() - t0 < 10
        assert fleet.ssh("th1", "true").returncode == 0, "the others still answer"
    finally:
        fleet.make_reachable("th3")
    assert fleet.ssh("th3", "true").returncode == 0


def test_a_stopped_unit_and_started_again(fleet):
    fleet.stop_unit("th1")
    try:
        p = fleet.ssh("th1", "systemctl", "is-active", "demo")
        assert (p.returncode, p.stdout.strip()) == (3, "inactive")
    finally:
        fleet.start_unit("th1")
    assert fleet.unit_property("th1", "ActiveState") == "active"


def test_openssh_refuses_a_host_missing_from_known_hosts(fleet, tmp_path):
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    argv = [a.replace(str(fleet.known_hosts), str(empty)) for a in fleet.ssh_argv("th1", "true")]
    p = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    assert p.returncode == 255 and "Host key verification failed" in p.stderr
