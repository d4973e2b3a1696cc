"""agent.fleet.ssh against a real sshd (tests/harness/sshd.py): commands, stdin, quoting,
known_hosts checking, login failures, unreachable and silent servers, timeouts, dropped
connections, sudo.

Commands run as a local user whose shell is /bin/sh (ensure_user), so that root's dotfiles on
the machine running the tests (bash reads ~/.bashrc for ssh commands) neither slow nor break
them; root logs in only where root matters (sudo without a password, host keys, keys)."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import threading
import time
from pathlib import Path

import psutil
import pytest

from agent.fleet import ssh
from agent.fleet.ssh import Connection, SSHError, SSHOptions
from agent.inventory.model import Host, SSHSettings
from tests.harness.collector import free_port
from tests.harness.sshd import Sshd, ensure_user, keygen

pytestmark = [pytest.mark.e2e, pytest.mark.root,
              pytest.mark.skipif(os.geteuid() != 0, reason="sshd needs root to log users in")]


@pytest.fixture(scope="module")
def sshd():
    server = Sshd().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def user_sshd():
    """A server that lets in only a local user who is not root and may not sudo."""
    server = Sshd(user=ensure_user()).start()
    yield server
    server.stop()


@pytest.fixture
def own_sshd():
    """A server of the test's own, for tests that restart it."""
    server = Sshd().start()
    yield server
    server.stop()


@pytest.fixture
def own_user_sshd():
    """A server of the test's own, for tests that kill its sessions."""
    server = Sshd(user=ensure_user()).start()
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def no_personal_keys(tmp_path, monkeypatch):
    """No ~/.ssh/id_* or ssh-agent of whoever runs the tests gets offered."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)


def make_host(server: Sshd | None = None, *, port: int | None = None, **ssh_over) -> Host:
    settings = {"address": "127.0.0.1", "port": port or server.port, "user": "root",
                "key_file": str(server.client_key) if server else None, **ssh_over}
    return Host("web01", {}, ("all",), SSHSettings(**settings))


def known_hosts(tmp_path: Path, *lines: str) -> Path:
    path = tmp_path / "known_hosts"
    path.write_text("".join(lines))
    return path


def options(known: Path, **over) -> SSHOptions:
    return SSHOptions(**{"known_hosts": [str(known)], "connect_timeout": 5.0, **over})


def connect(server: Sshd, tmp_path: Path, **over) -> Connection:
    """Logged in as the server's only user; without sudo unless that is root."""
    known = known_hosts(tmp_path, server.host_key_line())
    host = make_host(server, user=server.user, sudo=None if server.user == "root" else False)
    return Connection.open(host, options(known, **over))


def refused(host: Host, opts: SSHOptions) -> SSHError:
    with pytest.raises(SSHError) as info:
        Connection.open(host, opts).close()
    assert info.value.host == "web01" and str(info.value) == info.value.message
    return info.value


def fingerprint(pub: Path) -> str:
    return subprocess.run(["ssh-keygen", "-lf", str(pub)], capture_output=True, text=True,
                          check=True).stdout.split()[1]


# commands ------------------------------------------------------------------------------------

def test_run_returns_exit_code_stdout_and_stderr(user_sshd, tmp_path):
    with connect(user_sshd, tmp_path) as conn:
        assert (conn.user, conn.address, conn.port, conn.sudo) == (user_sshd.user, "127.0.0.1",
                                                                   user_sshd.port, False)
        r = conn.run(["sh", "-c", "echo out; echo err >&2; exit 3"], timeout=10)
        assert (r.exit_code, r.stdout, r.stderr) == (3, b"out\n", b"err\n")
        assert conn.run(["true"], timeout=10).exit_code == 0
        # exec: no login shell in between to turn the signal into status 137 for sshd
        killed = conn.run(["exec", "sh", "-c", "echo partial; kill -9 $$"], timeout=10)
        assert (killed.exit_code, killed.stdout) == (-1, b"partial\n")  # no status: a signal


def test_several_mib_of_stdin_come_back_on_stdout_and_stderr_at_once(user_sshd, tmp_path):
    data = os.urandom(6 << 20)
    with connect(user_sshd, tmp_path) as conn:
        r = conn.run(["tee", "/dev/stderr"], stdin=data, timeout=20)  # both pipes fill up
        assert r.exit_code == 0 and r.stdout == data and r.stderr == data


ARGS = ["a b", "it's", '"q"', "; touch {m}", "$(touch {m})", "`touch {m}`", "*", "\\n", "", "-n",
        "x\ny", "${{HOME}}", "|", "&&"]


def test_argv_arrives_literally(user_sshd, tmp_path):
    marker = Path("/tmp") / f"opsagent-pwned-{os.getpid()}"
    args = [a.format(m=marker) for a in ARGS]
    with connect(user_sshd, tmp_path) as conn:
        r = conn.run(["printf", "%s\\0", *args], timeout=10)
        assert r.exit_code == 0, r.stderr
        assert r.stdout.decode().split("\0")[:-1] == args
    assert not marker.exists()


def test_argv_arrives_literally_through_sudo(sshd, tmp_path):
    marker = Path("/tmp") / f"opsagent-pwned-{os.getpid()}"
    args = [a.format(m=marker) for a in ARGS]
    with connect(sshd, tmp_path) as conn:  # root may sudo without a password
        r = conn.run(["sh", "-c", 'echo "$SUDO_USER"; printf "%s\\0" "$@"', "sh", *args],
                     timeout=10, sudo=True)
        assert r.exit_code == 0, r.stderr
        user, _, out = r.stdout.decode().partition("\n")
        assert user == "root" and out.split("\0")[:-1] == args
    assert not marker.exists()


def test_output_past_the_cap_stops_the_command(user_sshd, tmp_path, monkeypatch):
    monkeypatch.setattr(ssh, "MAX_OUTPUT", 1 << 20)
    with connect(user_sshd, tmp_path) as conn:
        with pytest.raises(SSHError) as info:
            conn.run(["head", "-c", "3000000", "/dev/zero"], timeout=10)
        assert info.value.kind == "protocol" and "more than 1 MiB to stdout" in str(info.value)
        assert conn.run(["echo", "ok"], timeout=10).stdout == b"ok\n"


# known_hosts ---------------------------------------------------------------------------------

def test_unknown_host_key_is_refused(sshd, tmp_path):
    known = known_hosts(tmp_path)
    e = refused(make_host(sshd), options(known))
    assert e.kind == "host-key-unknown"
    assert fingerprint(sshd.host_key.with_suffix(".pub")) in e.message
    assert e.message.startswith(f"web01 (127.0.0.1:{sshd.port}): host key ssh-ed25519 ")
    assert "accept_new" in e.message and known.read_text() == ""


def test_accept_new_records_the_key_and_then_checks_it(sshd, tmp_path):
    known = tmp_path / "ssh" / "known_hosts"  # neither the file nor its folder exist yet
    other = tmp_path / "other_known_hosts"
    other.write_text("# someone else's\n10.0.0.5 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPQk")
    with Connection.open(make_host(sshd), options(known, accept_new=True)):
        pass
    assert known.read_text() == sshd.host_key_line()
    assert (known.stat().st_mode & 0o777) == 0o600
    Connection.open(make_host(sshd), options(known)).close()  # now known, no accept_new
    with Connection.open(make_host(sshd), options(known, accept_new=True)):
        pass
    assert known.read_text() == sshd.host_key_line()  # not appended twice
    with Connection.open(make_host(sshd), SSHOptions(known_hosts=[str(other), str(known)],
                                                     accept_new=True)):
        pass  # found in the second file: nothing appended to the first
    assert other.read_text().endswith("AAAAIPQk")


def test_accept_new_starts_a_line_of_its_own(sshd, tmp_path):
    known = known_hosts(tmp_path, "10.0.0.5 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPQk")
    Connection.open(make_host(sshd), options(known, accept_new=True)).close()
    assert known.read_text().splitlines()[1] == sshd.host_key_line().strip()


def test_hashed_and_wildcard_entries_are_honoured(sshd, tmp_path):
    junk = ("# comment\n", "\n", "garbage\n", "[127.0.0.1]:1 ssh-unknown-type AAAA\n",
            f"[127.0.0.1]:{sshd.port} ssh-ed25519 not-base64!\n",
            f"@cert-authority [127.0.0.1]:{sshd.port} ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPQk\n")
    known = known_hosts(tmp_path, sshd.host_key_line())
    subprocess.run(["ssh-keygen", "-H", "-f", str(known)], check=True, capture_output=True)
    hashed = known.read_text()
    assert "127.0.0.1" not in hashed
    known.write_text("".join(junk) + "|1|damaged ssh-ed25519 AAAA\n" + hashed)
    Connection.open(make_host(sshd), options(known)).close()
    kind_b64 = sshd.host_key_line().split(" ", 1)[1]
    for pattern in (f"[127.0.0.?]:{sshd.port}", "*", f"10.0.0.1,[127.0.0.1]:{sshd.port}"):
        known.write_text(f"{pattern} {kind_b64}")
        Connection.open(make_host(sshd), options(known)).close()
    known.write_text(f"*,![127.0.0.1]:{sshd.port} {kind_b64}")  # negated: not known
    assert refused(make_host(sshd), options(known)).kind == "host-key-unknown"


def test_changed_host_key_is_refused_even_with_accept_new(own_sshd, tmp_path):
    old_pub = tmp_path / "old.pub"
    old_pub.write_text(own_sshd.host_key.with_suffix(".pub").read_text())
    known = known_hosts(tmp_path, "# first line\n", own_sshd.host_key_line())
    Connection.open(make_host(own_sshd), options(known)).close()
    own_sshd.new_host_key()  # the host was reinstalled, or someone is in between
    for accept_new in (False, True):
        e = refused(make_host(own_sshd), options(known, accept_new=accept_new))
        assert e.kind == "host-key-changed", e.message
        assert e.message.startswith(f"web01 (127.0.0.1:{own_sshd.port}): host key CHANGED")
        assert f"{known} line 2 has ssh-ed25519 {fingerprint(old_pub)}" in e.message
        assert fingerprint(own_sshd.host_key.with_suffix(".pub")) in e.message
        assert f"ssh-keygen -R '[127.0.0.1]:{own_sshd.port}' -f {known}" in e.message
    assert known.read_text() == "# first line\n" + own_sshd.host_key_line(old_pub)


def test_a_known_key_of_another_type_counts_as_changed(sshd, tmp_path):
    rsa = keygen(tmp_path / "rsa_host_key", "rsa")
    known = known_hosts(tmp_path, sshd.host_key_line(rsa.with_suffix(".pub")))
    e = refused(make_host(sshd), options(known, accept_new=True))
    assert e.kind == "host-key-changed" and f"line 1 has ssh-rsa {fingerprint(rsa)}" in e.message


def test_a_revoked_host_key_is_refused(sshd, tmp_path):
    known = known_hosts(tmp_path, sshd.host_key_line(), "@revoked " + sshd.host_key_line())
    e = refused(make_host(sshd), options(known, accept_new=True))
    assert e.kind == "host-key-changed" and f"@revoked in {known} line 2" in e.message


# logging in ----------------------------------------------------------------------------------

def test_a_key_the_server_does_not_know_fails_as_auth(sshd, tmp_path):
    stranger = keygen(tmp_path / "stranger")
    missing = tmp_path / "no_such_key"
    known = known_hosts(tmp_path, sshd.host_key_line())
    e = refused(make_host(sshd, key_file=str(stranger)),
                options(known, identity_files=[str(missing)]))
    assert e.kind == "auth"
    assert f"login as root refused: tried {stranger} ({fingerprint(stranger)})" in e.message
    assert f"skipped {missing} (missing)" in e.message
    locked = tmp_path / "locked"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "secret", "-f", str(locked)],
                   check=True, capture_output=True)
    e = refused(make_host(sshd, key_file=str(locked)), options(known))
    assert e.kind == "auth" and "no key to offer" in e.message
    assert f"skipped {locked} (needs a passphrase: load it into ssh-agent)" in e.message
    e = refused(make_host(sshd, key_file=None), options(known))
    assert e.kind == "auth" and "no key to offer" in e.message


def test_keys_come_from_identity_files_and_home(sshd, tmp_path):
    known = known_hosts(tmp_path, sshd.host_key_line())
    host = make_host(sshd, key_file=None, user=None)
    with Connection.open(host, options(known, identity_files=[str(sshd.client_key)],
                                       user="root")) as conn:
        assert conn.user == "root"
    ssh_dir = Path(os.environ["HOME"]) / ".ssh"
    ssh_dir.mkdir()
    (ssh_dir / "id_ed25519").write_bytes(sshd.client_key.read_bytes())
    with Connection.open(host, options(known, user="root")) as conn:
        assert conn.user == "root" and conn.sudo is False


# unreachable, silent, slow -------------------------------------------------------------------

def test_a_closed_port_is_unreachable_at_once(tmp_path):
    start = time.monotonic()
    e = refused(make_host(port=free_port()), options(known_hosts(tmp_path)))
    assert e.kind == "unreachable" and "connection refused" in e.message
    assert time.monotonic() - start < 1


def test_an_unknown_name_is_unreachable(tmp_path):
    e = refused(make_host(port=22, address="no-such-host.invalid"), options(known_hosts(tmp_path)))
    assert e.kind == "unreachable" and "cannot resolve no-such-host.invalid" in e.message


@pytest.mark.parametrize("greeting", [None, b"", b"SSH-2.0-Silent\r\n"],
                         ids=["no-tcp-accept", "no-banner", "no-handshake"])
def test_a_silent_server_times_out_within_connect_timeout(tmp_path, greeting):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    held: list[socket.socket] = []
    if greeting is None:  # a full accept queue: the kernel drops further SYNs, like a blackhole
        for _ in range(3):
            s = socket.socket()
            s.settimeout(0.3)
            with contextlib.suppress(TimeoutError):
                s.connect(("127.0.0.1", port))
            held.append(s)
    else:
        def serve():
            conn, _ = listener.accept()
            conn.sendall(greeting)
            held.append(conn)
        threading.Thread(target=serve, daemon=True).start()
    try:
        start = time.monotonic()
        e = refused(make_host(port=port), options(known_hosts(tmp_path), connect_timeout=1.0))
        took = time.monotonic() - start
    finally:
        for s in [*held, listener]:
            s.close()
    assert e.kind == "timeout", e.message
    assert 0.9 < took < 2.5
    expected = {None: "no TCP connection within 1s", b"": "no SSH banner within 1s",
                b"SSH-2.0-Silent\r\n": "SSH handshake did not finish within 1s"}[greeting]
    assert expected in e.message


def running(argv: list[str]) -> list[psutil.Process]:
    return [p for p in psutil.process_iter(["cmdline"]) if p.info["cmdline"] == argv]


def test_a_command_past_its_timeout_is_stopped_in_time(user_sshd, tmp_path):
    """sshd signals the command (only in a non-root login: privilege separation)."""
    argv = ["sleep", "29.25"]
    with connect(user_sshd, tmp_path) as conn:
        start = time.monotonic()
        with pytest.raises(SSHError) as info:
            conn.run(argv, timeout=1.0)
        assert time.monotonic() - start < 2
        assert info.value.kind == "timeout"
        assert info.value.message == (f"web01 (127.0.0.1:{user_sshd.port}): sleep 29.25 still "
                                      "running after 1s; closed its channel and asked sshd to "
                                      "TERM it")
        deadline = time.monotonic() + 5
        while running(argv):
            assert time.monotonic() < deadline, "the timed-out command is still running"
            time.sleep(0.05)
        assert conn.run(["echo", "still usable"], timeout=10).stdout == b"still usable\n"


def test_a_dropped_connection_is_unreachable(own_user_sshd, tmp_path):
    with connect(own_user_sshd, tmp_path) as conn:
        threading.Timer(0.5, own_user_sshd.drop_connections).start()
        start = time.monotonic()
        with pytest.raises(SSHError) as info:
            conn.run(["sleep", "20"], timeout=20)
        assert info.value.kind == "unreachable", info.value.message
        assert "connection lost while running sleep 20" in info.value.message
        assert time.monotonic() - start < 3
        with pytest.raises(SSHError) as info:
            conn.run(["true"], timeout=5)
        assert info.value.kind == "unreachable"


# sudo ----------------------------------------------------------------------------------------

def test_sudo_wanting_a_password_is_reported(user_sshd, tmp_path):
    user = user_sshd.user
    known = known_hosts(tmp_path, user_sshd.host_key_line())
    with Connection.open(make_host(user_sshd, user=user), options(known)) as conn:
        assert conn.sudo  # not root, and the inventory left it unset
        with pytest.raises(SSHError) as info:
            conn.run(["true"], timeout=10)
        assert info.value.kind == "sudo"
        assert info.value.message == (f"web01: sudo needs a password for {user}; give it "
                                      "NOPASSWD for opsagent, or log in as root")
        assert conn.run(["id", "-un"], timeout=10, sudo=False).stdout == f"{user}\n".encode()
    with Connection.open(make_host(user_sshd, user=user, sudo=False), options(known)) as conn:
        assert not conn.sudo
        assert conn.run(["id", "-un"], timeout=10).stdout == f"{user}\n".encode()
