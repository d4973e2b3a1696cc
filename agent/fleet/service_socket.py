"""The agent service's fleet socket, ``STATE_DIR/fleet.sock``: a running agent answers
``opsagent fleet-exec`` requests (agent.fleet.remote) itself, so a fleet run's part on a host
costs one local connection instead of a Python start, its imports and model building.

One request per connection: the client sends the JSON request and shuts its side for
writing; the service handles it on a thread of its own and answers one JSON document, then
closes. Only a peer running as the service's own user (root for the packaged service) is
served, checked with SO_PEERCRED; the socket is 0600 inside the 0700 state directory.

The client (``ask``) falls back to running the request in its own process only when nothing
was handed over: no socket, nobody listening, or a socket it may not open. Once the request
is sent, the service owns it; an answer that never comes is an error, never a second run.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import struct
import threading
import time
from collections.abc import Callable

SOCKET_NAME = "fleet.sock"
MAX_CONCURRENT = 4  # requests in hand at once; more wait in the listen backlog
CONNECT_TIMEOUT_S = 2.0
STOP_WAIT_S = 30.0  # a stopping service lets the requests in hand finish this long
_UNIX_PATH_MAX = 107

log = logging.getLogger("opsagent.fleet")


def socket_path(state_dir: str) -> str:
    return os.path.join(state_dir, SOCKET_NAME)


def ask(path: str, request: bytes, connect_timeout: float = CONNECT_TIMEOUT_S) -> bytes | None:
    """The service's answer to ``request``; None when no service took it (nothing ran).
    An empty answer means the service ended the connection without answering."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        s.settimeout(connect_timeout)
        try:
            s.connect(path)
            s.settimeout(None)
            s.sendall(request)
            s.shutdown(socket.SHUT_WR)
        except OSError:  # absent, stale, refused, not ours to open, gone before it had it all
            return None
        try:
            return _read_all(s, 1 << 62)
        except OSError:  # reset: handed over, never answered
            return b""
    finally:
        s.close()


Handler = Callable[[bytes, int], bytes]  # (request, peer pid) -> answer


class FleetSocket:
    """The listening side, run by the agent service (agent.service.daemon)."""

    def __init__(self, state_dir: str, handle: Handler, max_request: int) -> None:
        self.path = socket_path(state_dir)
        self.handle = handle
        self.max_request = max_request
        self._sock: socket.socket | None = None
        self._slots = threading.BoundedSemaphore(MAX_CONCURRENT)
        self._busy: set[threading.Thread] = set()
        self._lock = threading.Lock()
        self._stopping = False

    def start(self) -> bool:
        """Listen; False (logged) when the socket cannot be made. The caller holds the state
        directory's lock, so a socket file already there is a dead agent's."""
        if len(os.fsencode(self.path)) > _UNIX_PATH_MAX:
            log.warning("fleet requests are not served: %s is too long for a Unix socket "
                        "path; fleet runs start a process of their own here", self.path)
            return False
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
            s.bind(self.path)
            os.chmod(self.path, 0o600)  # before listen(): nobody connects until then
            s.listen(16)
        except OSError as e:
            s.close()
            log.warning("fleet requests are not served: cannot listen on %s: %s", self.path, e)
            return False
        self._sock = s
        threading.Thread(target=self._accept, args=(s,), name="opsagent-fleet-socket",
                         daemon=True).start()
        return True

    def stop(self) -> None:
        """Stop listening, then wait (bounded) for the requests in hand."""
        self._stopping = True
        s, self._sock = self._sock, None
        if s is None:
            return
        with contextlib.suppress(OSError):
            s.shutdown(socket.SHUT_RDWR)
        s.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        deadline = time.monotonic() + STOP_WAIT_S
        with self._lock:
            busy = list(self._busy)
        for t in busy:
            t.join(max(0.0, deadline - time.monotonic()))
        left = sum(t.is_alive() for t in busy)
        if left:
            log.warning("%d fleet request(s) still running after %gs; their controllers get "
                        "no answer", left, STOP_WAIT_S)

    def _accept(self, s: socket.socket) -> None:
        while not self._stopping:
            self._slots.acquire()
            try:
                conn, _ = s.accept()
            except OSError:  # closed by stop()
                self._slots.release()
                return
            t = threading.Thread(target=self._serve, args=(conn,), name="opsagent-fleet-request",
                                 daemon=True)
            with self._lock:
                self._busy.add(t)
            t.start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            with conn:
                pid, uid, _gid = struct.unpack(
                    "3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                          struct.calcsize("3i")))
                request = _read_all(conn, self.max_request + 1)  # read even when refused:
                if uid != os.geteuid():  # unread bytes would reset the connection
                    log.warning("fleet socket: refused pid %d of uid %d (only uid %d is "
                                "served)", pid, uid, os.geteuid())
                    conn.sendall(_error(f"only uid {os.geteuid()} may ask this agent"))
                    return
                conn.sendall(self.handle(request, pid))
        except OSError as e:  # the client went away; whatever ran is in the log
            log.warning("fleet socket: the client went away: %s", e)
        except Exception:
            log.exception("fleet socket: handling a request")
        finally:
            with self._lock:
                self._busy.discard(threading.current_thread())
            self._slots.release()


def _read_all(conn: socket.socket, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while size < limit and (chunk := conn.recv(min(1 << 16, limit - size))):
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def _error(text: str) -> bytes:
    import json

    return json.dumps({"ok": False, "error": text}).encode()

