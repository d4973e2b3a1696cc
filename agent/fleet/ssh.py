"""How the controller of a fleet run reaches one inventory host over SSH (paramiko).

``Connection.open(host, options)`` connects, checks the host key against known_hosts and logs
in with public keys; ``run(argv, stdin=..., timeout=...)`` runs one command, optionally under
``sudo -n``, and returns its exit code and output. Every failure is one SSHError whose ``kind``
says what happened and whose message, one line, says what to do:

    unreachable       DNS failure, connection refused, no route; the connection dropped
    timeout           no TCP connection, banner, handshake or login within connect_timeout;
                      a command still running at its timeout (channel closed, TERM asked for)
    auth              no key was accepted (names the user and every key tried or skipped)
    host-key-unknown  known_hosts has no key for the host and accept_new is off
    host-key-changed  the host's key differs from the known one, or is @revoked: refused
                      even with accept_new (someone may be in between)
    sudo              sudo wants a password or a tty, or is not installed
    protocol          anything else the SSH layer reports (no common algorithm, not an SSH
                      server, a command writing more than 64 MiB to stdout or stderr)

paramiko's Transport is driven directly rather than through SSHClient: SSHClient's key loop
reports the last key *loading* error instead of the server's refusal, cannot say which keys it
tried, nor which known_hosts line holds a changed key.
"""

from __future__ import annotations

import getpass
import os
import shlex
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import suppress
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal

import paramiko

from agent.errors import OpsAgentError
from agent.fleet.known_hosts import KnownKey, append_known_host, fingerprint, read_known_keys
from agent.inventory.model import Host

Kind = Literal["unreachable", "timeout", "auth", "host-key-unknown", "host-key-changed", "sudo",
               "protocol"]
MAX_OUTPUT = 64 << 20  # per stream; a command writing more is stopped (kind "protocol")
DEFAULT_KNOWN_HOSTS = ("~/.ssh/known_hosts", "/etc/ssh/ssh_known_hosts")
DEFAULT_IDENTITIES = ("~/.ssh/id_rsa", "~/.ssh/id_ecdsa", "~/.ssh/id_ed25519")
_CHUNK = 1 << 15


class SSHError(OpsAgentError):
    """Reaching a host or running a command on it failed; ``kind`` says how."""

    def __init__(self, kind: Kind, host: str, message: str) -> None:
        super().__init__(message)
        self.kind: Kind = kind
        self.host = host  # the inventory name
        self.message = message


@dataclass
class SSHOptions:
    """The run's SSH settings; a host's own (address, port, user, key_file, sudo) come first."""

    known_hosts: Sequence[str] | None = None  # None: DEFAULT_KNOWN_HOSTS
    accept_new: bool = False  # StrictHostKeyChecking=accept-new
    connect_timeout: float = 10.0  # TCP connect + banner + handshake + login, one deadline
    identity_files: Sequence[str] = ()  # --private-key, after the host's key_file
    user: str | None = None  # login user for hosts that set none (-u); None: the local user


@dataclass(frozen=True)
class ExecResult:
    exit_code: int  # -1 when the command ended without a status (killed by a signal)
    stdout: bytes
    stderr: bytes


def _open_socket(address: str, port: int, deadline: float) -> socket.socket:
    """socket.create_connection, but the name lookup too ends at the deadline (glibc's own
    resolver timeouts can add up to far more than a connect_timeout)."""
    found: list[tuple[Any, ...]] = []  # getaddrinfo's (family, type, proto, name, address)
    failed: list[OSError] = []

    def lookup() -> None:
        try:
            found.extend(socket.getaddrinfo(address, port, type=socket.SOCK_STREAM))
        except OSError as e:
            failed.append(e)

    resolver = threading.Thread(target=lookup, daemon=True)
    resolver.start()
    resolver.join(max(deadline - time.monotonic(), 0))
    if resolver.is_alive():
        raise socket.gaierror(socket.EAI_AGAIN, "no answer from DNS in time")
    if failed:
        raise failed[0]
    error: OSError = OSError(f"{address} has no address")
    for family, kind, proto, _, addr in found:
        sock = socket.socket(family, kind, proto)
        try:
            sock.settimeout(max(deadline - time.monotonic(), 0.01))
            sock.connect(addr)
            return sock
        except OSError as e:
            sock.close()
            error = e
    raise error


class Connection:
    """One logged-in SSH connection to one inventory host."""

    def __init__(self, host: Host, options: SSHOptions, user: str, port: int) -> None:
        self.host = host
        self.options = options
        self.user = user
        self.address = host.ssh.address
        self.port = port
        self.sudo = host.ssh.sudo if host.ssh.sudo is not None else user != "root"
        addr = f"[{self.address}]" if ":" in self.address else self.address
        self.where = f"{host.name} ({addr}:{port})"
        lower = self.address.lower()  # as ssh writes and hashes names in known_hosts
        self.known_name = lower if port == 22 else f"[{lower}]:{port}"
        self._sock: socket.socket | None = None
        self._transport: paramiko.Transport | None = None
        self._agent: paramiko.Agent | None = None

    @classmethod
    def open(cls, host: Host, options: SSHOptions) -> Connection:
        """Connect, check the host key and log in; SSHError when any of it fails."""
        user = host.ssh.user or options.user or getpass.getuser()
        conn = cls(host, options, user, host.ssh.port or 22)
        try:
            conn._connect(time.monotonic() + options.connect_timeout)
        except BaseException:
            conn.close()
            raise
        return conn

    def _error(self, kind: Kind, text: str) -> SSHError:
        return SSHError(kind, self.host.name, f"{self.where}: {text}")

    def _connect(self, deadline: float) -> None:
        limit = self.options.connect_timeout
        files = [os.path.expanduser(f) for f in self.options.known_hosts or DEFAULT_KNOWN_HOSTS]
        try:
            known = read_known_keys(files, self.known_name)
        except OSError as e:
            raise self._error("host-key-unknown", f"cannot read known_hosts: {e}") from None
        try:
            sock = _open_socket(self.address, self.port, deadline)
        except socket.gaierror as e:
            raise self._error("unreachable", f"cannot resolve {self.address}: {e.strerror}"
                              ) from None
        except TimeoutError:
            raise self._error("timeout", f"no TCP connection within {limit:g}s (host down or "
                              "a firewall dropping packets?)") from None
        except ConnectionRefusedError:
            raise self._error("unreachable", f"connection refused: is sshd running and "
                              f"listening on port {self.port}?") from None
        except OSError as e:
            raise self._error("unreachable", e.strerror or str(e)) from None
        self._sock = sock  # Transport.close() leaves it open when the handshake never began
        t = self._transport = paramiko.Transport(sock)
        left = max(deadline - time.monotonic(), 0.01)
        t.banner_timeout = t.handshake_timeout = t.auth_timeout = left
        self._prefer_known_types(t, [k for k in known if not k.revoked])
        try:
            t.start_client(timeout=left)
        except (paramiko.SSHException, EOFError, OSError) as e:
            raise self._handshake_failed(t, e, deadline) from None
        if not t.initial_kex_done:  # start_client returns quietly at its timeout
            raise self._handshake_failed(t, None, deadline)
        self._check_host_key(t.get_remote_server_key(), known, files)
        self._authenticate(t, deadline)
        t.handshake_timeout = max(limit, 15.0)  # for later re-keying, not bound by the deadline

    def _handshake_failed(self, t: paramiko.Transport, e: BaseException | None,
                          deadline: float) -> SSHError:
        limit = self.options.connect_timeout
        if e is None or time.monotonic() >= deadline - 0.05:
            if not t.remote_version:
                return self._error("timeout", f"connected, but no SSH banner within {limit:g}s "
                                   "(not an SSH server, or sshd overloaded?)")
            return self._error("timeout", f"SSH handshake did not finish within {limit:g}s")
        if isinstance(e, EOFError | ConnectionError):
            return self._error("protocol", "the server closed the connection during the SSH "
                               "handshake (sshd MaxStartups, TCP wrappers, a blocklist?)")
        return self._error("protocol", f"SSH handshake failed: {e or type(e).__name__}")

    @staticmethod
    def _prefer_known_types(t: paramiko.Transport, known: list[KnownKey]) -> None:
        """Ask for the key types known_hosts has first, as OpenSSH does."""
        first: list[str] = []
        for k in known:
            name = k.key.get_name()
            first += ["rsa-sha2-512", "rsa-sha2-256", name] if name == "ssh-rsa" else [name]
        options = t.get_security_options()
        offered = list(options.key_types)
        wanted = [n for n in dict.fromkeys(first) if n in offered]
        options.key_types = wanted + [n for n in offered if n not in wanted]

    def _check_host_key(self, key: paramiko.PKey, known: list[KnownKey],
                        files: list[str]) -> None:
        blob = key.asbytes()
        for k in known:
            if k.revoked and k.key.asbytes() == blob:
                raise self._error("host-key-changed", f"host key {fingerprint(key)} is marked "
                                  f"@revoked in {k.file} line {k.line}; refusing to connect")
        valid = [k for k in known if not k.revoked]
        if any(k.key.asbytes() == blob for k in valid):
            return
        if valid:
            same = [k for k in valid if k.key.get_name() == key.get_name()] or valid
            old = same[0]
            f = "" if old.file == os.path.expanduser(DEFAULT_KNOWN_HOSTS[0]) else \
                f" -f {shlex.quote(old.file)}"
            raise self._error(
                "host-key-changed",
                f"host key CHANGED: the server offers {fingerprint(key)}, {old.file} line "
                f"{old.line} has {fingerprint(old.key)}; refusing to connect (someone may be "
                "in between) — if the host was reinstalled, remove the old key with: "
                f"ssh-keygen -R {shlex.quote(self.known_name)}{f}")
        if not self.options.accept_new:
            raise self._error(
                "host-key-unknown",
                f"host key {fingerprint(key)} is not known (no entry for {self.known_name} "
                f"in {', '.join(files)}); compare it with the host's own (ssh-keygen -lf "
                "/etc/ssh/ssh_host_*_key.pub there), then add it to known_hosts, or connect "
                "once with accept_new")
        try:
            append_known_host(files[0], self.known_name, key)
        except OSError as e:
            raise self._error("host-key-unknown", f"host key {fingerprint(key)} is new and "
                              f"could not be recorded in {files[0]}: {e}") from None

    def _candidate_keys(self, notes: list[str]) -> Iterator[tuple[str, paramiko.PKey]]:
        """(label, key) to offer in order: the host's key_file, --private-key, the ssh-agent's
        keys, ~/.ssh/id_*; what cannot be offered goes into notes."""
        explicit = [f for f in (self.host.ssh.key_file, *self.options.identity_files) if f]
        defaults = [f for f in map(os.path.expanduser, DEFAULT_IDENTITIES) if os.path.isfile(f)]
        paths = list(dict.fromkeys(os.path.expanduser(f) for f in explicit))
        for path in paths:
            yield from self._load_key(path, notes)
        if os.environ.get("SSH_AUTH_SOCK"):
            try:
                self._agent = paramiko.Agent()
                agent_keys = self._agent.get_keys()
            except (paramiko.SSHException, OSError) as e:
                notes.append(f"ssh-agent (unusable: {e})")
                agent_keys = ()
            for key in agent_keys:
                yield f"ssh-agent key {key.fingerprint}", key
        for path in defaults:
            if path not in paths:
                yield from self._load_key(path, notes)

    @staticmethod
    def _load_key(path: str, notes: list[str]) -> Iterator[tuple[str, paramiko.PKey]]:
        try:
            key = paramiko.PKey.from_path(path)
        except FileNotFoundError:
            notes.append(f"{path} (missing)")
            return
        except (paramiko.PasswordRequiredException, TypeError):  # TypeError: cryptography's
            notes.append(f"{path} (needs a passphrase: load it into ssh-agent)")
            return
        except (paramiko.SSHException, OSError, ValueError) as e:
            notes.append(f"{path} (unreadable: {e})")
            return
        yield f"{path} ({key.fingerprint})", key

    def _authenticate(self, t: paramiko.Transport, deadline: float) -> None:
        tried: list[str] = []
        notes: list[str] = []
        why = ""
        for label, key in self._candidate_keys(notes):
            t.auth_timeout = max(deadline - time.monotonic(), 0.01)
            try:
                t.auth_publickey(self.user, key)
            except paramiko.BadAuthenticationType as e:
                why = f"; the server takes no keys, only {', '.join(e.allowed_types)}"
                break
            except (paramiko.SSHException, EOFError, OSError):
                if time.monotonic() >= deadline - 0.05:
                    raise self._error("timeout", f"login as {self.user} did not finish within "
                                      f"{self.options.connect_timeout:g}s") from None
                tried.append(label)
                if not t.is_active():
                    why = "; then the server hung up (too many keys for its MaxAuthTries?)"
                    break
                continue
            if t.is_authenticated():
                return
            why = "; a key was accepted but the server wants more (two-factor login)"
            tried.append(label)
            break
        offered = f"tried {', '.join(tried)}" if tried else "no key to offer"
        skipped = f"; skipped {', '.join(notes)}" if notes else ""
        if not tried and not notes:
            offered += (" (no --private-key, no key_file, nothing in ~/.ssh/id_*, "
                        "no ssh-agent)")
        raise self._error("auth", f"login as {self.user} refused: {offered}{skipped}{why}")

    def run(self, argv: Sequence[str], *, stdin: bytes = b"", timeout: float,
            sudo: bool | None = None) -> ExecResult:
        """Run argv (quoted with shlex.join, never interpreted), stdin as its input, within
        timeout seconds overall; under ``sudo -n --`` when sudo (default: self.sudo)."""
        if not argv:
            raise ValueError("run() needs a command")
        use_sudo = self.sudo if sudo is None else sudo
        line = shlex.join(["sudo", "-n", "--", *argv] if use_sudo else list(argv))
        shown = line if len(line) <= 80 else line[:77] + "..."
        t = self._transport
        if t is None or not t.is_active():
            raise self._error("unreachable", f"the connection is closed; cannot run {shown}")
        deadline = time.monotonic() + timeout
        try:
            chan = t.open_session(timeout=timeout)
        except (paramiko.SSHException, EOFError, OSError) as e:
            if not t.is_active():
                raise self._error("unreachable", f"connection lost before {shown}") from None
            if time.monotonic() >= deadline:
                raise self._error("timeout", f"no session opened within {timeout:g}s for "
                                  f"{shown}") from None
            raise self._error("protocol", f"cannot open a session for {shown}: {e}") from None
        exchange = _Exchange(chan, deadline)
        try:
            outcome = exchange.run(line, stdin)
        finally:
            exchange.close()
        if outcome.expired:
            raise self._error("timeout", f"{shown} still running after {timeout:g}s; closed its "
                              "channel and asked sshd to TERM it")
        if outcome.overflow:
            raise self._error("protocol", f"{shown} wrote more than {MAX_OUTPUT >> 20} MiB to "
                              f"{outcome.overflow}; stopped it")
        if outcome.refused:
            raise self._error("protocol", f"the server would not run {shown}: "
                              f"{outcome.refused}")
        if outcome.lost or (chan.exit_status == -1 and not chan.eof_received):
            raise self._error("unreachable", f"connection lost while running {shown}")
        result = ExecResult(chan.exit_status, bytes(outcome.out), bytes(outcome.err))
        if use_sudo:
            self._check_sudo(result)
        return result

    def _check_sudo(self, r: ExecResult) -> None:
        first = r.stderr.split(b"\n", 1)[0]
        name = self.host.name
        if r.exit_code == 1 and first.startswith(b"sudo: a password is required"):
            raise SSHError("sudo", name, f"{name}: sudo needs a password for {self.user}; give "
                           "it NOPASSWD for opsagent, or log in as root")
        if r.exit_code == 1 and b"must have a tty" in first:
            raise SSHError("sudo", name, f"{name}: sudo requires a tty for {self.user}; add "
                           f"'Defaults:{self.user} !requiretty' to sudoers, or log in as root")
        if r.exit_code == 127 and first.endswith((b"sudo: not found", b"sudo: command not found")):
            raise SSHError("sudo", name, f"{name}: sudo is not installed; install it, or log "
                           "in as root")

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
        if self._sock is not None:
            self._sock.close()
        if self._agent is not None:
            self._agent.close()

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


class _Exchange:
    """One command on one channel: stdin written, stdout and stderr read, each in its own
    thread so none waits on another; a watchdog ends it all at the deadline."""

    def __init__(self, chan: paramiko.Channel, deadline: float) -> None:
        self.chan = chan
        self.deadline = deadline
        self.out = bytearray()
        self.err = bytearray()
        self.expired = self.lost = False
        self.overflow = ""  # the stream that went past MAX_OUTPUT
        self.refused = ""  # why the server would not start the command
        self._lock = threading.Lock()
        self._done = False

    def run(self, line: str, stdin: bytes) -> _Exchange:
        chan = self.chan
        chan.settimeout(max(self.deadline - time.monotonic(), 0) + 5)  # the watchdog's backup
        watchdog = threading.Timer(max(self.deadline - time.monotonic(), 0), self._expire)
        watchdog.daemon = True
        watchdog.start()
        try:
            chan.exec_command(line)  # waits for the server's reply with no timeout of its own
        except (paramiko.SSHException, EOFError, OSError) as e:
            watchdog.cancel()
            if not self.expired and chan.get_transport().is_active():
                self.refused = str(e) or type(e).__name__
            else:
                self.lost = not self.expired
            return self
        threads = [threading.Thread(target=self._write, args=(stdin,), daemon=True),
                   threading.Thread(target=self._read, args=(chan.recv_stderr, self.err,
                                                             "stderr"), daemon=True)]
        for th in threads:
            th.start()
        self._read(chan.recv, self.out, "stdout")
        for th in threads:
            th.join(max(self.deadline - time.monotonic(), 0) + 5)
        chan.status_event.wait(max(self.deadline - time.monotonic(), 0))
        with self._lock:
            self._done = True
        watchdog.cancel()
        if not chan.status_event.is_set() and not self.expired:
            self._expire(force=True)
        return self

    def _expire(self, force: bool = False) -> None:
        with self._lock:
            if self._done and not force:
                return
            self.expired = True
        # RFC 4254 6.9 "signal": sshd (7.9+) signals the command's process group, but not in a
        # root login ("session signalling requires privilege separation"): that command goes on
        # until it next writes to the closed channel (SIGPIPE) or ends by itself. A request
        # on a channel the server has already closed could cost the whole connection.
        try:
            if self.chan.closed:
                return
            m = paramiko.Message()
            m.add_byte(paramiko.common.cMSG_CHANNEL_REQUEST)
            m.add_int(self.chan.remote_chanid)
            m.add_string("signal")
            m.add_boolean(False)
            m.add_string("TERM")
            send: Callable[[paramiko.Message], None] = getattr(  # noqa: B009
                self.chan.transport, "_send_user_message")  # not in the stubs: private
            send(m)
        except (paramiko.SSHException, EOFError, OSError, AttributeError):
            pass
        finally:
            self.close()

    def close(self) -> None:
        with suppress(paramiko.SSHException, EOFError, OSError):  # the connection is gone
            self.chan.close()

    def _write(self, data: bytes) -> None:
        try:
            view = memoryview(data)
            for start in range(0, len(view), _CHUNK):
                self.chan.sendall(view[start:start + _CHUNK].tobytes())
            self.chan.shutdown_write()
        except (paramiko.SSHException, EOFError, OSError):
            pass  # the command stopped reading or ended; its status tells the rest

    def _read(self, recv: Callable[[int], bytes], into: bytearray, name: str) -> None:
        try:
            while chunk := recv(_CHUNK):
                if len(into) + len(chunk) > MAX_OUTPUT:
                    self.overflow = name
                    self.close()
                    return
                into += chunk
        except TimeoutError:
            self._expire(force=True)
        except (paramiko.SSHException, EOFError, OSError):
            self.lost = not self.expired
