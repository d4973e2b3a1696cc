"""ContainerWatcher on the real Docker Engine, then on a fake Engine that can go away.

The fake (a tiny HTTP server on a unix socket speaking just /version and /events) is how the
daemon's outage is staged without stopping the Docker Engine other tests use.
"""

from __future__ import annotations

import json
import os
import socketserver
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler
from typing import Any

import pytest

from agent.service.watch_docker import ContainerWatcher


class Calls:
    """on_change's record: (monotonic time, name), with a way to wait for a name."""

    def __init__(self) -> None:
        self.got: list[tuple[float, str]] = []
        self.cond = threading.Condition()

    def __call__(self, name: str) -> None:
        with self.cond:
            self.got.append((time.monotonic(), name))
            self.cond.notify_all()

    def names(self, since: float = 0.0) -> list[str]:
        with self.cond:
            return [n for t, n in self.got if t >= since]

    def wait_for(self, name: str, since: float, timeout: float) -> float | None:
        """Seconds from `since` to the first call for `name` at or after it; None if none."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                hits = [t for t, n in self.got if n == name and t >= since]
                if hits:
                    return hits[0] - since
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self.cond.wait(left)


@pytest.fixture
def names(docker_client):
    """Unique container names; every container carrying the prefix is removed after."""
    prefix = f"opsagent-wd-{uuid.uuid4().hex[:8]}"
    yield [f"{prefix}-{i}" for i in range(3)]
    for c in docker_client.containers.list(all=True, filters={"name": prefix}):
        c.remove(force=True)


def wait_until_following(watcher_calls: Calls, container: Any, name: str) -> None:
    """The watcher connects on its own thread: signal a watched container (SIGCONT to sleep
    changes nothing but is a "kill" event) until the watcher is heard to follow."""
    for _ in range(40):
        mark = time.monotonic()
        container.kill(signal="SIGCONT")
        if watcher_calls.wait_for(name, mark, 0.25) is not None:
            return
    raise AssertionError("the watcher never reported a Docker event")


@pytest.mark.e2e
def test_a_killed_watched_container_is_reported_and_others_are_not(docker_client,
                                                                   busybox_image, names):
    watched, other, _ = names
    a = docker_client.containers.run(busybox_image, ["sleep", "1000"], name=watched,
                                     detach=True)
    b = docker_client.containers.run(busybox_image, ["sleep", "1000"], name=other,
                                     detach=True)
    calls = Calls()
    w = ContainerWatcher(calls)
    try:
        w.watch({watched})
        w.watch({watched})  # unchanged: nothing happens
        wait_until_following(calls, a, watched)

        mark = time.monotonic()
        a.kill()
        delay = calls.wait_for(watched, mark, 5.0)
        assert delay is not None, f"no on_change for {watched}: {calls.names()}"
        assert delay < 3.0
        b.kill()
        b.remove(force=True)
        time.sleep(1.0)
        assert other not in calls.names(), calls.names()

        # The watched set is replaced: the old name is dropped, a new one is followed.
        w.watch({other})
        mark = time.monotonic()
        docker_client.containers.create(busybox_image, ["sleep", "1000"], name=other)
        a.remove(force=True)
        assert calls.wait_for(other, mark, 5.0) is not None, calls.names()
        time.sleep(0.5)
        assert watched not in calls.names(mark), calls.names(mark)
    finally:
        started = time.monotonic()
        w.close()
        closed_in = time.monotonic() - started
    assert closed_in < 2.0
    assert not w._thread.is_alive()


@pytest.mark.e2e
def test_a_renamed_container_is_reported_under_both_names(docker_client, busybox_image,
                                                          names):
    old, new, _ = names
    c = docker_client.containers.run(busybox_image, ["sleep", "1000"], name=old,
                                     detach=True)
    calls = Calls()
    w = ContainerWatcher(calls)
    try:
        w.watch({old, new})
        wait_until_following(calls, c, old)
        mark = time.monotonic()
        c.rename(new)
        assert calls.wait_for(new, mark, 5.0) is not None, calls.names(mark)
        assert calls.wait_for(old, mark, 1.0) is not None, calls.names(mark)
    finally:
        w.close()


# --- a fake Engine that can go away ----------------------------------------------------

class FakeEngine:
    """GET /version and a chunked GET /events on a unix socket; `send` pushes an event to
    every open stream, `stop` drops the socket and every connection like a dying daemon."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.streams: list[tuple[threading.Event, list[bytes]]] = []
        self.lock = threading.Condition()
        self.opened = 0  # /events requests seen
        self.server: socketserver.UnixStreamServer | None = None

    def start(self) -> FakeEngine:
        engine = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                if self.path.endswith("/version"):
                    body = json.dumps({"ApiVersion": "1.43", "MinAPIVersion": "1.24",
                                       "Version": "fake"}).encode()
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                assert "/events" in self.path, self.path
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                self.wfile.flush()
                gone, queue = threading.Event(), list[bytes]()
                with engine.lock:
                    engine.streams.append((gone, queue))
                    engine.opened += 1
                    engine.lock.notify_all()
                    while not gone.is_set():
                        while queue:
                            data = queue.pop(0)
                            self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                            self.wfile.flush()
                        engine.lock.wait(1.0)
                self.close_connection = True

            def address_string(self) -> str:
                return "fake-engine-client"

        class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
            daemon_threads = True

        self.server = Server(self.path, Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def wait_opened(self, count: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self.lock:
            while self.opened < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.lock.wait(left)
            return True

    def send(self, action: str, name: str) -> None:
        event = {"Type": "container", "Action": action, "status": action,
                 "Actor": {"ID": "f" * 64, "Attributes": {"name": name}},
                 "time": int(time.time())}
        with self.lock:
            for gone, queue in self.streams:
                if not gone.is_set():
                    queue.append(json.dumps(event).encode() + b"\n")
            self.lock.notify_all()

    def stop(self) -> None:
        with self.lock:
            for gone, _ in self.streams:
                gone.set()
            self.lock.notify_all()
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None
        os.unlink(self.path)


def test_the_watcher_reconnects_after_an_outage_and_reports_every_name(tmp_path):
    sock = str(tmp_path / "engine.sock")
    engine = FakeEngine(sock).start()
    calls = Calls()
    w = ContainerWatcher(calls, base_url=f"unix://{sock}")
    try:
        w.watch({"web", "db"})
        assert engine.wait_opened(1, 5.0)
        mark = time.monotonic()
        engine.send("die", "web")
        engine.send("exec_start: sh -c true", "db")  # not a state change
        engine.send("die", "elsewhere")
        assert calls.wait_for("web", mark, 3.0) is not None
        time.sleep(0.3)
        assert calls.names(mark) == ["web"]

        engine.stop()  # the daemon goes away; the watcher retries against a missing socket
        time.sleep(1.5)
        mark = time.monotonic()
        engine = FakeEngine(sock).start()
        assert engine.wait_opened(1, 10.0), "the watcher did not reconnect"
        assert calls.wait_for("web", mark, 3.0) is not None, calls.names(mark)
        assert calls.wait_for("db", mark, 3.0) is not None, calls.names(mark)
        assert sorted(calls.names(mark)) == ["db", "web"]
        mark = time.monotonic()
        engine.send("oom", "db")
        assert calls.wait_for("db", mark, 3.0) is not None
    finally:
        started = time.monotonic()
        w.close()
        closed_in = time.monotonic() - started
        engine.stop()
    assert closed_in < 2.0  # the stream was open and blocked: close() shut it down
    assert not w._thread.is_alive()


def test_close_during_backoff_and_before_anything_is_watched_is_prompt(tmp_path):
    for watched in (set(), {"web"}):
        w = ContainerWatcher(lambda name: None, base_url=f"unix://{tmp_path}/none.sock")
        w.watch(watched)
        time.sleep(0.8)  # with a name: a failed attempt, then waiting to retry
        started = time.monotonic()
        w.close()
        assert time.monotonic() - started < 1.0
        assert not w._thread.is_alive()
        w.close()  # idempotent
