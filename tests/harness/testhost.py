"""Test hosts: a real systemd as PID 1 in a Docker container, with dbus and sshd up.

The root filesystem comes from `debootstrap --variant=minbase` (about a minute), cached as a
tarball outside the repository (OPSAGENT_TEST_CACHE, default /var/cache/opsagent-test) and
imported once per machine. The tarball's file name and the image tag carry a short hash of
the package list, so adding a package builds a new root filesystem instead of reusing one
without it. The checkout is bind-mounted read-only at its own path, so the agent runs inside
from the checkout's .venv (Debian's python3 on both sides).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

from tests.harness.docker import HarnessError

# nftables: the firewall steps of fleet runs; sudo: logins as a user other than root.
PACKAGES = "systemd,systemd-sysv,dbus,openssh-server,python3,nftables,sudo"
MIRROR = "http://deb.debian.org/debian"
_KEY = hashlib.sha256(f"bookworm {MIRROR} {PACKAGES}".encode()).hexdigest()[:8]
IMAGE = f"opsagent-testhost:bookworm-{_KEY}"
TARBALL = f"bookworm-systemd-{_KEY}.tar"
_image_lock = threading.Lock()  # threads of one process; the flock below covers processes
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def cache_dir() -> str:
    return os.environ.get("OPSAGENT_TEST_CACHE", "/var/cache/opsagent-test")


def build_rootfs_tarball(tarball: str) -> None:
    """debootstrap a bookworm root filesystem with systemd and pack it (atomically)."""
    if shutil.which("debootstrap") is None:
        raise HarnessError("debootstrap is not installed (scripts/test.sh installs it as root)")
    work = f"{tarball}.rootfs-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    try:
        p = subprocess.run(["debootstrap", "--variant=minbase", f"--include={PACKAGES}",
                            "bookworm", work, MIRROR], capture_output=True, text=True,
                           timeout=1200)
        if p.returncode != 0:
            raise HarnessError(f"debootstrap failed ({p.returncode}): {p.stderr[-2000:]}")
        # Quiet units that need hardware or a console; keep sshd without host-key surprises.
        for unit in ("getty@tty1.service", "systemd-logind.service"):
            link = os.path.join(work, "etc/systemd/system", unit)
            os.makedirs(os.path.dirname(link), exist_ok=True)
            if not os.path.lexists(link):
                os.symlink("/dev/null", link)
        subprocess.run(["tar", "-C", work, "-cf", f"{tarball}.tmp", "."], check=True,
                       timeout=600)
        os.replace(f"{tarball}.tmp", tarball)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _has_image(client: Any) -> bool:
    import docker.errors

    try:
        client.images.get(IMAGE)
        return True
    except docker.errors.ImageNotFound:
        return False


def ensure_testhost_image(client: Any) -> str:
    """The test host image, built (debootstrap) and imported once per machine; callers in
    several threads or processes at once wait for the one that builds it."""
    if _has_image(client):
        return IMAGE
    os.makedirs(cache_dir(), exist_ok=True)
    with _image_lock, open(os.path.join(cache_dir(), f"{TARBALL}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _has_image(client):
            return IMAGE
        tarball = os.path.join(cache_dir(), TARBALL)
        if not os.path.exists(tarball):
            build_rootfs_tarball(tarball)
        repo, _, tag = IMAGE.partition(":")
        with open(tarball, "rb") as fh:
            client.api.import_image_from_data(fh, repository=repo, tag=tag)
        client.images.get(IMAGE)
    return IMAGE


@dataclass
class ExecResult:
    exit_code: int
    output: str


class TestHost:
    """One running test host. `exec` runs argv inside it (never a shell string)."""

    __test__ = False  # not a pytest test class

    def __init__(self, client: Any, name: str | None = None) -> None:
        self.client = client
        self.name = name or f"opsagent-th-{uuid.uuid4().hex[:8]}"
        self.container: Any = None

    def start(self, ready_timeout: float = 90.0,
              volumes: dict[str, dict[str, str]] | None = None,
              cap_add: list[str] | None = None) -> TestHost:
        """Boot the host; `volumes` adds bind mounts (e.g. the Docker socket), `cap_add`
        capabilities besides SYS_ADMIN (NET_ADMIN: nft in the container's own network
        namespace)."""
        caps = ["SYS_ADMIN", *(c for c in cap_add or () if c != "SYS_ADMIN")]
        self.container = self.client.containers.run(
            ensure_testhost_image(self.client), ["/sbin/init"], detach=True, name=self.name,
            hostname=self.name, cap_add=caps, security_opt=["seccomp=unconfined"],
            cgroupns="host", tmpfs={"/run": "", "/run/lock": ""},
            volumes={"/sys/fs/cgroup": {"bind": "/sys/fs/cgroup", "mode": "rw"},
                     REPO: {"bind": REPO, "mode": "ro"}, **(volumes or {})},
            labels={"opsagent-test": "testhost"}, stop_signal="SIGRTMIN+3")
        deadline = time.monotonic() + ready_timeout
        state = ""
        while time.monotonic() < deadline:
            state = self.exec(["systemctl", "is-system-running"], timeout=10).output.strip()
            if state in ("running", "degraded"):
                return self
            time.sleep(0.3)
        logs = self.container.logs(tail=50).decode(errors="replace")
        self.remove()
        raise HarnessError(f"test host {self.name}: systemd is {state!r} after "
                           f"{ready_timeout:.0f}s; console:\n{logs}")

    def exec(self, argv: list[str], *, timeout: float = 120, user: str = "root",
             env: dict[str, str] | None = None) -> ExecResult:
        res = self.container.exec_run(["timeout", "--kill-after=5", str(int(timeout)), *argv],
                                      user=user, environment=env or {}, demux=False)
        return ExecResult(res.exit_code, (res.output or b"").decode(errors="replace"))

    def write_file(self, path: str, content: str, mode: str = "0644") -> None:
        import io
        import tarfile

        data = content.encode()
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            info = tarfile.TarInfo(os.path.basename(path))
            info.size, info.mode = len(data), int(mode, 8)
            tar.addfile(info, io.BytesIO(data))
        self.exec(["mkdir", "-p", os.path.dirname(path)])
        self.container.put_archive(os.path.dirname(path), buf.getvalue())

    def opsagent(self, *args: str, timeout: float = 180) -> ExecResult:
        return self.exec([os.path.join(REPO, ".venv", "bin", "opsagent"), *args],
                         timeout=timeout)

    def remove(self) -> None:
        if self.container is not None:
            with contextlib.suppress(Exception):  # already gone
                self.container.remove(force=True)
            self.container = None
