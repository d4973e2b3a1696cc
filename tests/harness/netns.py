"""Network namespaces for firewall tests: the host's own addresses, routes and rules are never
touched; deleting the namespaces deletes everything made in them (their nft tables too).

    client  oa-XXXXXX-c   10.231.N.1, 10.231.N.3      fd00:231:N::1, fd00:231:N::3
              │ veth
    fw      oa-XXXXXX     10.231.N.254                fd00:231:N::fe      (nft acts here)
              │ veth      10.232.N.1                  fd00:232:N::1       (forwarding on)
    backend oa-XXXXXX-b   10.232.N.2                  fd00:232:N::2

A TCP listener runs in ``fw`` (traffic to the host itself: the input hook) and in
``backend`` (traffic routed through fw, as to a container's published port: the forward
hook). ``connect(src, dst)`` opens a TCP connection from one of the client's addresses.
The client sits in its own namespace rather than the test machine's so that the addresses
being blocked are not this machine's own, which the guard rightly refuses to block.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
import shutil
import subprocess
import sys
import time

PORT = 8000

_LISTENER = r"""
import socket, sys
s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("::", int(sys.argv[1])))
s.listen(64)
print("ready", flush=True)
while True:
    c, _ = s.accept()
    try:
        c.sendall(b"ok")
    finally:
        c.close()
"""

_CONNECT = r"""
import socket, sys
src, dst, port, timeout = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
family = socket.AF_INET6 if ":" in dst else socket.AF_INET
s = socket.socket(family, socket.SOCK_STREAM)
s.settimeout(timeout)
try:
    s.bind((src, 0))
    s.connect((dst, port))
    sys.exit(0 if s.recv(2) == b"ok" else 1)
except OSError:
    sys.exit(1)
"""


def unavailable() -> str | None:
    """Why these tests cannot run here (None when they can)."""
    if os.geteuid() != 0:
        return "needs root (network namespaces and nftables)"
    for tool in ("ip", "nft"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (apt-get install iproute2 nftables)"
    return None


def _run(*argv: str) -> str:
    res = subprocess.run(list(argv), capture_output=True, text=True, timeout=30)
    if res.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} failed: {res.stderr.strip()}")
    return res.stdout


class Netns:
    """Three namespaces joined by veth pairs; ``start()``, use, ``close()``."""

    def __init__(self) -> None:
        h = secrets.token_hex(3)
        n = secrets.randbelow(256)
        self.fw, self.client, self.backend = f"oa-{h}", f"oa-{h}-c", f"oa-{h}-b"
        self._links = (f"oa{h}c", f"oa{h}f", f"oa{h}g", f"oa{h}b")
        self.client4 = (f"10.231.{n}.1", f"10.231.{n}.3")
        self.client6 = (f"fd00:231:{n:x}::1", f"fd00:231:{n:x}::3")
        self.fw4, self.fw6 = f"10.231.{n}.254", f"fd00:231:{n:x}::fe"
        self.fw_back4, self.fw_back6 = f"10.232.{n}.1", f"fd00:232:{n:x}::1"
        self.backend4, self.backend6 = f"10.232.{n}.2", f"fd00:232:{n:x}::2"
        # prefixes for test CIDRs, written as the kernel and ipaddress write them back
        # (fd00:231:0:: is fd00:231::)
        self.net4 = f"10.231.{n}"
        self.net6 = str(ipaddress.IPv6Address(f"fd00:231:{n:x}::")).removesuffix("::")
        self.port = PORT
        self.nft_argv = ["ip", "netns", "exec", self.fw, "nft"]
        self.ip_argv = ["ip", "netns", "exec", self.fw, "ip"]
        self._listeners: list[subprocess.Popen[str]] = []

    def start(self) -> Netns:
        try:
            self._build()
            for ns in (self.fw, self.backend):
                self._listen(ns)
            for src, dst in ((self.client4[0], self.fw4), (self.client6[0], self.fw6),
                             (self.client4[0], self.backend4),
                             (self.client6[0], self.backend6)):
                self.wait_connect(src, dst, True, within=10.0)
        except BaseException:
            self.close()
            raise
        return self

    def _build(self) -> None:
        c, f, g, b = self._links
        for ns in (self.fw, self.client, self.backend):
            _run("ip", "netns", "add", ns)
            _run("ip", "-n", ns, "link", "set", "lo", "up")
        _run("ip", "link", "add", c, "netns", self.client, "type", "veth", "peer", "name", f,
             "netns", self.fw)
        _run("ip", "link", "add", g, "netns", self.fw, "type", "veth", "peer", "name", b,
             "netns", self.backend)
        plan = ((self.client, c, [f"{a}/24" for a in self.client4],
                 [f"{a}/64" for a in self.client6]),
                (self.fw, f, [f"{self.fw4}/24"], [f"{self.fw6}/64"]),
                (self.fw, g, [f"{self.fw_back4}/24"], [f"{self.fw_back6}/64"]),
                (self.backend, b, [f"{self.backend4}/24"], [f"{self.backend6}/64"]))
        for ns, link, v4, v6 in plan:
            for a in v4:
                _run("ip", "-n", ns, "addr", "add", a, "dev", link)
            for a in v6:
                _run("ip", "-n", ns, "addr", "add", a, "dev", link, "nodad")
            _run("ip", "-n", ns, "link", "set", link, "up")
        _run("ip", "-n", self.client, "route", "add", f"{self.backend4.rsplit('.', 1)[0]}.0/24",
             "via", self.fw4)
        _run("ip", "-n", self.client, "-6", "route", "add",
             f"{self.backend6.rsplit('::', 1)[0]}::/64", "via", self.fw6)
        _run("ip", "-n", self.backend, "route", "add", "default", "via", self.fw_back4)
        _run("ip", "-n", self.backend, "-6", "route", "add", "default", "via", self.fw_back6)
        for key in ("net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"):
            _run("ip", "netns", "exec", self.fw, "sysctl", "-q", "-w", key)

    def _listen(self, ns: str) -> None:
        proc = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", _LISTENER,
                                 str(self.port)], stdout=subprocess.PIPE, text=True,
                                stdin=subprocess.DEVNULL)
        self._listeners.append(proc)
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != "ready":
            raise AssertionError(f"the listener in {ns} did not start")

    def connect(self, src: str, dst: str, port: int | None = None,
                timeout: float = 1.0) -> bool:
        """A TCP connection from ``src`` (a client address) to ``dst``: True when it was
        accepted and answered within ``timeout``."""
        res = subprocess.run(["ip", "netns", "exec", self.client, sys.executable, "-c",
                              _CONNECT, src, dst, str(port or self.port), str(timeout)],
                             capture_output=True, text=True, timeout=timeout + 20)
        return res.returncode == 0

    def wait_connect(self, src: str, dst: str, expect: bool, within: float,
                     timeout: float = 0.5) -> float:
        """Poll until connecting from src to dst gives ``expect``; the seconds it took."""
        start = time.monotonic()
        while True:
            if self.connect(src, dst, timeout=timeout) is expect:
                return time.monotonic() - start
            if time.monotonic() - start > within:
                raise AssertionError(f"{src} -> {dst}: connect is not {expect} after "
                                     f"{within:g}s")
            time.sleep(0.2)

    def nft(self, *args: str, stdin: str | None = None) -> str:
        """Run nft inside fw (for assertions and for breaking things on purpose)."""
        res = subprocess.run([*self.nft_argv, *args], input=stdin, capture_output=True,
                             text=True, timeout=30)
        if res.returncode != 0:
            raise AssertionError(f"nft {' '.join(args)}: {res.stderr.strip()}")
        return res.stdout

    def close(self) -> None:
        for proc in self._listeners:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=10)
            if proc.stdout is not None:
                proc.stdout.close()
        self._listeners.clear()
        for ns in (self.client, self.backend, self.fw):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)
