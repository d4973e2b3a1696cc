"""A throw-away OpenSSH server for the tests: Debian's /usr/sbin/sshd in the foreground on a
free 127.0.0.1 port, its own config, host key and authorized key in a temp dir. Needs root
(sshd switches to the logging-in user); it logs in as root by default, or as a local user
that ensure_user() creates."""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from tests.harness.collector import free_port
from tests.harness.procs import end

SSHD = "/usr/sbin/sshd"


def keygen(path: Path, kind: str = "ed25519") -> Path:
    """A new key pair without passphrase at path (and path.pub)."""
    subprocess.run(["ssh-keygen", "-q", "-t", kind, "-N", "", "-C", "opsagent-test", "-f",
                    str(path)], check=True, capture_output=True, timeout=30)
    return path


def ensure_user(name: str = "opsagent-ssh") -> str:
    """A local system account to log in as someone other than root: shell /bin/sh, home /,
    no sudo rights, no password but not locked (sshd refuses locked accounts); created on
    first use and left in place."""
    try:
        pwd.getpwnam(name)
    except KeyError:
        subprocess.run(["useradd", "--system", "--shell", "/bin/sh", "--home-dir", "/",
                        "--no-create-home", "--password", "*", name],
                       capture_output=True, timeout=30)
        pwd.getpwnam(name)  # KeyError here when useradd failed (and no one else made it)
    return name


class Sshd:
    def __init__(self, user: str = "root") -> None:
        if not os.path.exists(SSHD):
            raise AssertionError(f"{SSHD} is missing (apt-get install openssh-server); "
                                 "scripts/test.sh installs it")
        self.user = user
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="opsagent-sshd-"))
        self.host_key = keygen(self.dir / "ssh_host_ed25519_key")
        self.client_key = keygen(self.dir / "client_ed25519")
        (self.dir / "authorized_keys").write_text(
            (self.dir / "client_ed25519.pub").read_text())
        if user != "root":  # sshd reads authorized_keys as the user
            self.dir.chmod(0o711)
            (self.dir / "authorized_keys").chmod(0o644)
        self.config = self.dir / "sshd_config"
        self.config.write_text(
            f"ListenAddress 127.0.0.1\n"
            f"HostKey {self.host_key}\n"
            f"PidFile {self.dir / 'sshd.pid'}\n"
            f"AuthorizedKeysFile {self.dir / 'authorized_keys'}\n"
            "PubkeyAuthentication yes\nPasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\n"
            f"AllowUsers {user}\nUsePAM no\nStrictModes no\n"
            "Subsystem sftp internal-sftp\n")
        self.log = self.dir / "sshd.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 15.0) -> Sshd:
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # its privilege-separation dir
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                [SSHD, "-D", "-e", "-f", str(self.config), "-p", str(self.port)],
                stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"sshd exited {self.proc.returncode}:\n"
                                     f"{self.log.read_text(errors='replace')}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    if s.recv(64).startswith(b"SSH-"):
                        return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise AssertionError(f"sshd on port {self.port} did not answer in {timeout}s")

    def host_key_line(self, pub: Path | None = None) -> str:
        """The known_hosts line for this server ([127.0.0.1]:PORT TYPE BASE64)."""
        kind, b64 = (pub or self.host_key.with_suffix(".pub")).read_text().split()[:2]
        return f"[127.0.0.1]:{self.port} {kind} {b64}\n"

    def new_host_key(self) -> Sshd:
        """Restart on the same port with a newly generated host key (a reinstalled host)."""
        end(self.proc)
        for path in (self.host_key, self.host_key.with_suffix(".pub")):
            path.unlink()
        keygen(self.host_key)
        return self.start()

    def drop_connections(self) -> None:
        """SIGKILL the per-connection sshd processes: clients see the connection drop. The
        commands they run are left alone (killing a login shell halfway through its dotfiles
        can leave locks behind, e.g. pyenv's rehash lock)."""
        import psutil

        assert self.proc is not None
        for child in psutil.Process(self.proc.pid).children(recursive=True):
            if child.name().startswith("sshd"):
                child.kill()

    def stop(self) -> None:
        end(self.proc)
        shutil.rmtree(self.dir, ignore_errors=True)
