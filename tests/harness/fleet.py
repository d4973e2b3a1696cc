"""A fleet of systemd test hosts reachable over SSH, for fleet runs and their benchmarks.

    with Fleet(ensure_docker(), 3).start() as fleet:
        fleet.inventory              # opsagent's YAML: th1..thN, groups web and db
        fleet.ansible_inventory      # the same hosts as an Ansible INI inventory
        fleet.known_hosts            # each host's own ed25519 host key, by container IP
        fleet.ssh("th1", "systemctl", "is-active", "demo")

Each host is a tests.harness.testhost.TestHost (systemd as PID 1, sshd, nftables, sudo; the
checkout bind-mounted read-only, so ``<REPO>/.venv/bin/opsagent`` runs inside), booted in
parallel and given NET_ADMIN so nft works in the container's own network namespace. One
client key pair (ed25519, in the fleet's temp dir) logs in as:

* ``root`` — the inventory's user;
* ``ops`` — no sudo rights at all (sudo is refused: "not in the sudoers file");
* ``deploy`` — passwordless sudo (``NOPASSWD: ALL``).

Every host gets its own ed25519 host key at start-up (the image's keys are shared by every
container made from it) and sshd offers only that one. ``demo.service`` (``/bin/sleep
infinity``) is enabled and running. The agent's state dir is the default, /var/lib/opsagent.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from tests.harness.docker import HarnessError
from tests.harness.testhost import REPO, ExecResult, TestHost, ensure_testhost_image

OPSAGENT_PATH = os.path.join(REPO, ".venv", "bin", "opsagent")
STATE_DIR = "/var/lib/opsagent"
DEMO_UNIT = "demo.service"
DEMO_UNIT_TEXT = """[Unit]
Description=opsagent fleet test unit

[Service]
ExecStart=/bin/sleep infinity

[Install]
WantedBy=multi-user.target
"""
# What a fleet host's agent service enforces when started with start_agent_services(): a
# file and a disk check, nothing the fleet tests touch (demo.service stays theirs).
AGENT_PLAYBOOK = """name: fleet-host
files:
  - path: /etc/opsagent-fleet-host
    content: "managed by the agent service\\n"
checks:
  - name: root-disk
    disk: {path: /, max_used_percent: 99}
    interval: 60s
"""
USERS = ("ops", "deploy")  # ops: no sudo; deploy: NOPASSWD sudo
HOST_KEY = "/etc/ssh/ssh_host_ed25519_key"
# Only the host's own ed25519 key is offered, so known_hosts holds exactly what is checked.
SSHD_DROPIN = f"HostKey {HOST_KEY}\n"
Unreachable = Literal["drop", "pause", "refuse"]


def docker_unavailable() -> str | None:
    """Why no Docker Engine can be had here (the only reason fleet tests skip), or None.

    A daemon that answers, or a dockerd this process may start (root), is available; any
    failure after that is a failed set-up, not a skip (tests.harness.docker.ensure_docker)."""
    try:
        import docker
    except ImportError:
        return "the docker Python package is not installed"
    try:
        docker.from_env(timeout=5).ping()
        return None
    except Exception:  # noqa: BLE001 - any failure to reach a daemon means "none answers"
        pass
    if shutil.which("dockerd") is None:
        return "no Docker daemon answers and dockerd is not installed"
    if os.geteuid() != 0:
        return "no Docker daemon answers and starting dockerd needs root"
    return None


@dataclass
class FleetHost:
    name: str          # inventory name: th1, th2, ...
    host: TestHost     # the container
    address: str = ""  # its IP on Docker's bridge
    paused: bool = False

    def exec(self, argv: list[str], **kw: Any) -> ExecResult:
        return self.host.exec(argv, **kw)


class Fleet:
    """N test hosts with SSH keys, known_hosts, inventories and a demo unit (see module doc).

    Attributes after ``start()``: ``dir`` (temp dir), ``key_file`` / ``public_key``,
    ``known_hosts``, ``inventory`` (opsagent YAML), ``ansible_inventory`` (INI),
    ``hosts`` (list of FleetHost), ``groups`` ({"web": [...], "db": [...]}).
    """

    def __init__(self, client: Any, n: int = 3, *, prefix: str = "th",
                 cap_add: Sequence[str] = ("NET_ADMIN",), ready_timeout: float = 120.0) -> None:
        if n < 1:
            raise ValueError("a fleet has at least one host")
        self.client = client
        self.n = n
        self.prefix = prefix
        self.cap_add = list(cap_add)
        self.ready_timeout = ready_timeout
        self.tag = uuid.uuid4().hex[:6]
        self._cname = f"opsagent-fleet-{self.tag}-"  # container names: this prefix + th1...
        self.dir = Path(tempfile.mkdtemp(prefix="opsagent-fleet-"))
        self.key_file = self.dir / "client_ed25519"
        self.public_key = ""
        self.known_hosts = self.dir / "known_hosts"
        self.inventory = self.dir / "inventory.yaml"
        self.ansible_inventory = self.dir / "inventory.ini"
        self.opsagent_path = OPSAGENT_PATH
        self.state_dir = STATE_DIR
        self.hosts: list[FleetHost] = []
        self.groups: dict[str, list[str]] = {}

    # -- life cycle ------------------------------------------------------------------------

    def start(self) -> Fleet:
        """Boot every host in parallel and prepare it; everything is removed on failure."""
        try:
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C",
                            "opsagent-fleet-test", "-f", str(self.key_file)], check=True,
                           capture_output=True, timeout=30)
            self.public_key = self.key_file.with_suffix(".pub").read_text()
            ensure_testhost_image(self.client)  # once, before the threads ask for it
            names = [f"{self.prefix}{i}" for i in range(1, self.n + 1)]
            self.hosts = [FleetHost(name, TestHost(self.client, f"{self._cname}{name}"))
                          for name in names]
            with ThreadPoolExecutor(max_workers=min(self.n, 10)) as pool:
                list(pool.map(self._boot, self.hosts))
            half = (self.n + 1) // 2
            self.groups = {"web": names[:half], "db": names[half:]}
            self.write_known_hosts()
            self._write_inventories()
        except BaseException:
            self.remove()
            raise
        return self

    def _boot(self, fh: FleetHost) -> None:
        fh.host.start(ready_timeout=self.ready_timeout, cap_add=self.cap_add)
        fh.address = self._address(fh.host)
        self._prepare(fh)

    def _address(self, th: TestHost) -> str:
        th.container.reload()
        nets = th.container.attrs["NetworkSettings"]["Networks"]
        addr = next((n["IPAddress"] for n in nets.values() if n.get("IPAddress")), "")
        if not addr:
            raise HarnessError(f"{th.name} has no IP address on Docker's networks: {nets}")
        return str(addr)

    def _prepare(self, fh: FleetHost) -> None:
        h = fh.host
        self._must(fh, ["rm", "-f", "/etc/ssh/ssh_host_rsa_key", "/etc/ssh/ssh_host_rsa_key.pub",
                        "/etc/ssh/ssh_host_ecdsa_key", "/etc/ssh/ssh_host_ecdsa_key.pub"])
        h.write_file("/etc/ssh/sshd_config.d/opsagent-fleet.conf", SSHD_DROPIN)
        self._new_host_key(fh)
        h.write_file("/root/.ssh/authorized_keys", self.public_key, mode="0600")
        self._must(fh, ["chmod", "0700", "/root/.ssh"])
        for user in USERS:
            self._must(fh, ["useradd", "--create-home", "--shell", "/bin/bash", user])
            h.write_file(f"/home/{user}/.ssh/authorized_keys", self.public_key, mode="0600")
            self._must(fh, ["chmod", "0700", f"/home/{user}/.ssh"])
            self._must(fh, ["chown", "-R", f"{user}:{user}", f"/home/{user}/.ssh"])
        h.write_file("/etc/sudoers.d/deploy", "deploy ALL=(ALL) NOPASSWD: ALL\n", mode="0440")
        self._must(fh, ["visudo", "-cq", "-f", "/etc/sudoers.d/deploy"])
        h.write_file(f"/etc/systemd/system/{DEMO_UNIT}", DEMO_UNIT_TEXT)
        self._must(fh, ["systemctl", "daemon-reload"])
        self._must(fh, ["systemctl", "enable", "--now", DEMO_UNIT])

    def _new_host_key(self, fh: FleetHost) -> None:
        self._must(fh, ["rm", "-f", HOST_KEY, f"{HOST_KEY}.pub"])
        self._must(fh, ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", fh.name,
                        "-f", HOST_KEY])
        self._must(fh, ["systemctl", "restart", "ssh.service"])
        self._must(fh, ["systemctl", "is-active", "--quiet", "ssh.service"])

    def _must(self, fh: FleetHost, argv: list[str], timeout: float = 60) -> str:
        r = fh.host.exec(argv, timeout=timeout)
        if r.exit_code != 0:
            raise HarnessError(f"{fh.name}: {' '.join(argv)} exited {r.exit_code}: "
                               f"{r.output[-1000:]}")
        return r.output

    def remove(self) -> None:
        """Remove every container of this fleet (by name, so also one whose start failed
        half-way, and paused ones) and the temp dir; safe to call twice."""
        try:
            found = self.client.containers.list(all=True, filters={"name": self._cname})
        except Exception:  # noqa: BLE001 - fall back to the containers we know of
            found = [fh.host.container for fh in self.hosts if fh.host.container is not None]

        def rm(c: Any) -> None:
            with contextlib.suppress(Exception):  # already gone
                if c.status == "paused":
                    c.unpause()
                c.remove(force=True)

        with ThreadPoolExecutor(max_workers=10) as pool:
            list(pool.map(rm, found))
        for fh in self.hosts:
            fh.host.container, fh.paused = None, False
        self.hosts = []
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Fleet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    # -- files for the controller ----------------------------------------------------------

    def host_key_line(self, name: str) -> str:
        """The known_hosts line for the host's current ed25519 key (`IP ssh-ed25519 B64`)."""
        fh = self.host(name)
        kind, b64 = self._must(fh, ["cat", f"{HOST_KEY}.pub"]).split()[:2]
        return f"{fh.address} {kind} {b64}\n"

    def write_known_hosts(self) -> Path:
        """(Re)write known_hosts from every host's current key."""
        self.known_hosts.write_text("".join(self.host_key_line(fh.name) for fh in self.hosts))
        return self.known_hosts

    def _write_inventories(self) -> None:
        by_name = {fh.name: fh for fh in self.hosts}
        yaml = ["# opsagent's inventory layout (tests/harness/fleet.py)",
                "user: root", f"key_file: {self.key_file}",
                "vars:", f"  opsagent_path: {self.opsagent_path}", "hosts:"]
        yaml += [f"  {fh.name}: {{address: {fh.address}}}" for fh in self.hosts]
        yaml.append("groups:")
        for group, members in self.groups.items():
            yaml.append(f"  {group}: {{hosts: [{', '.join(members)}]}}")
        self.inventory.write_text("\n".join(yaml) + "\n")
        ini: list[str] = []
        for group, members in self.groups.items():
            ini.append(f"[{group}]")
            ini += [f"{m} ansible_host={by_name[m].address}" for m in members]
            ini.append("")
        ini += ["[all:vars]", "ansible_user=root",
                f"ansible_ssh_private_key_file={self.key_file}",
                "ansible_python_interpreter=/usr/bin/python3",
                f"ansible_ssh_common_args='-o UserKnownHostsFile={self.known_hosts} "
                "-o GlobalKnownHostsFile=/dev/null -o StrictHostKeyChecking=yes'",
                f"opsagent_path={self.opsagent_path}"]
        self.ansible_inventory.write_text("\n".join(ini) + "\n")

    # -- access ----------------------------------------------------------------------------

    def host(self, name: str) -> FleetHost:
        for fh in self.hosts:
            if fh.name == name:
                return fh
        raise KeyError(f"no host {name!r} in this fleet ({', '.join(self.names)})")

    @property
    def names(self) -> list[str]:
        return [fh.name for fh in self.hosts]

    def ssh_argv(self, name: str, *command: str, user: str = "root",
                 timeout: float = 10) -> list[str]:
        """OpenSSH's argv for running `command` on the host as `user`: this fleet's key,
        its known_hosts only, strict host key checking, no agent, no password prompts."""
        return ["ssh", "-i", str(self.key_file), "-o", "IdentitiesOnly=yes",
                "-o", f"UserKnownHostsFile={self.known_hosts}",
                "-o", "GlobalKnownHostsFile=/dev/null", "-o", "StrictHostKeyChecking=yes",
                "-o", "BatchMode=yes", "-o", f"ConnectTimeout={int(timeout)}",
                "-l", user, self.host(name).address, "--", *command]

    def ssh(self, name: str, *command: str, user: str = "root",
            timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run `command` on the host over SSH (no check of the exit code)."""
        return subprocess.run(self.ssh_argv(name, *command, user=user), capture_output=True,
                              text=True, timeout=timeout, stdin=subprocess.DEVNULL)

    # -- the agent service ------------------------------------------------------------------

    def start_agent_services(self, playbook: str = AGENT_PLAYBOOK) -> None:
        """packaging/opsagent.service on every host, as production hosts run it (the agent
        at /usr/local/bin/opsagent, /etc/opsagent/agent.yaml, one playbook), started and
        READY; its fleet socket then answers the fleet runs' requests."""
        with open(os.path.join(REPO, "packaging", "opsagent.service"), encoding="utf-8") as f:
            unit = f.read()

        def start(fh: FleetHost) -> None:
            h = fh.host
            h.write_file("/etc/systemd/system/opsagent.service", unit)
            self._must(fh, ["ln", "-sf", self.opsagent_path, "/usr/local/bin/opsagent"])
            h.write_file("/etc/opsagent/agent.yaml", f"state_dir: {self.state_dir}\n"
                         "playbooks: [/etc/opsagent/playbooks]\n")
            h.write_file("/etc/opsagent/playbooks/host.yaml", playbook)
            self._must(fh, ["systemctl", "daemon-reload"])
            self._must(fh, ["systemctl", "restart", "opsagent.service"])  # returns on READY
            self._must(fh, ["test", "-S", f"{self.state_dir}/fleet.sock"])

        with ThreadPoolExecutor(max_workers=min(len(self.hosts), 10)) as pool:
            list(pool.map(start, self.hosts))

    def stop_agent_services(self) -> None:
        """Stop the agent services and remove their config (runs then start their own
        process on each host)."""
        def stop(fh: FleetHost) -> None:
            fh.host.exec(["systemctl", "stop", "opsagent.service"])
            fh.host.exec(["rm", "-rf", "/etc/opsagent"])

        with ThreadPoolExecutor(max_workers=min(len(self.hosts), 10)) as pool:
            list(pool.map(stop, self.hosts))

    def agent_log(self, name: str) -> str:
        """The agent service's journal on the host."""
        return self._must(self.host(name), ["journalctl", "-q", "-o", "cat", "--no-pager",
                                            "-u", "opsagent.service"])

    # -- breaking things for tests ---------------------------------------------------------

    def stop_unit(self, name: str, unit: str = DEMO_UNIT) -> None:
        self._must(self.host(name), ["systemctl", "stop", unit])

    def start_unit(self, name: str, unit: str = DEMO_UNIT) -> None:
        self._must(self.host(name), ["systemctl", "start", unit])

    def unit_property(self, name: str, prop: str, unit: str = DEMO_UNIT) -> str:
        return self._must(self.host(name), ["systemctl", "show", "--value", "-p", prop,
                                            unit]).strip()

    def make_unreachable(self, name: str, how: Unreachable = "drop") -> None:
        """Cut the host off from SSH clients until make_reachable():
        drop    — inbound TCP port 22 dropped in the host's own netns (an nft table
                  ``inet fleet_harness``): a connect times out, as to a host that is down;
        pause   — ``docker pause``: the kernel still completes the TCP handshake but sshd
                  never sends its banner (a hung host);
        refuse  — sshd stopped: the connection is refused at once."""
        fh = self.host(name)
        if how == "drop":
            self._must(fh, ["nft", "add table inet fleet_harness; "
                            "add chain inet fleet_harness input "
                            "{ type filter hook input priority -300; policy accept; }; "
                            "add rule inet fleet_harness input tcp dport 22 drop"])
        elif how == "pause":
            fh.host.container.pause()
            fh.paused = True
        elif how == "refuse":
            self._must(fh, ["systemctl", "stop", "ssh.service"])
        else:
            raise ValueError(f"how must be drop, pause or refuse, not {how!r}")

    def make_reachable(self, name: str) -> None:
        """Undo every make_unreachable() on the host."""
        fh = self.host(name)
        if fh.paused:
            fh.host.container.unpause()
            fh.paused = False
        fh.host.exec(["nft", "delete", "table", "inet", "fleet_harness"])  # absent: fine
        self._must(fh, ["systemctl", "start", "ssh.service"])

    def change_host_key(self, name: str, *, update_known_hosts: bool = False) -> str:
        """Give the host a new ed25519 host key and restart sshd; returns the new
        known_hosts line. known_hosts keeps the old key unless update_known_hosts."""
        fh = self.host(name)
        self._new_host_key(fh)
        if update_known_hosts:
            self.write_known_hosts()
        return self.host_key_line(name)
