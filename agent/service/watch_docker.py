"""Changes of Docker containers as they happen, from the Engine's event stream.

One daemon thread holds ``GET /events`` open (filtered to container events that can change
what the containers provider observes) and reports the watched names it sees. Events of
other containers are dropped here; the stream is not re-opened when the watched set changes,
so ``watch()`` is cheap. Exec events (``exec_start`` every health-check interval), attach,
resize and the like are not asked for: they change nothing we observe.

When the Engine goes away (restart, upgrade, socket gone) the stream ends; the thread
reconnects with capped exponential backoff and then reports every watched name, since events
may have been missed meanwhile. ``close()`` shuts the stream's socket down, which ends the
blocked read at once. The SDK is imported inside the thread, so merely creating a watcher
loads nothing.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

# Container actions that can change observed state. "health_status" also matches
# "health_status: healthy" (the Engine matches it, and only it, by prefix).
ACTIONS = ("create", "start", "restart", "die", "stop", "kill", "oom", "destroy", "pause",
           "unpause", "rename", "update", "health_status")
CLIENT_TIMEOUT = 10  # seconds, for connecting (the event stream itself has no read timeout)
BACKOFF_FIRST_S = 0.5
BACKOFF_MAX_S = 30.0
STABLE_AFTER_S = 30.0  # a stream that lasted this long resets the backoff


class ContainerWatcher:
    """Calls on_change(container_name) on Docker events of watched containers."""

    def __init__(self, on_change: Callable[[str], None], log: logging.Logger | None = None,
                 base_url: str | None = None) -> None:
        self._on_change = on_change
        self._log = log or logging.getLogger(__name__)
        self._base_url = base_url
        self._lock = threading.Lock()
        self._names: frozenset[str] = frozenset()
        self._stream: Any = None  # the open docker CancellableStream, for close()
        self._closed = threading.Event()
        self._watched = threading.Event()  # set once there is something to watch, or closed
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name="opsagent-docker-events")
        self._thread.start()

    def watch(self, names: set[str]) -> None:
        """Watch exactly ``names`` (container names, without a leading slash)."""
        wanted = frozenset(n.lstrip("/") for n in names)
        with self._lock:
            if wanted == self._names:
                return
            self._names = wanted
        if wanted:
            self._watched.set()

    def close(self) -> None:
        """Stop the thread: the open stream is shut down, not waited out (idempotent)."""
        with self._lock:
            if self._closed.is_set():
                return
            self._closed.set()
            stream, self._stream = self._stream, None
        self._watched.set()
        if stream is not None:
            _close_quietly(stream)
        if threading.current_thread() is not self._thread:
            # Only a connect to a hung Engine can take longer (CLIENT_TIMEOUT); the thread
            # is a daemon and ends by itself after it.
            self._thread.join(timeout=5.0)

    # --- the thread -----------------------------------------------------------------------

    def _run(self) -> None:
        delay, failures = BACKOFF_FIRST_S, 0
        while not self._closed.is_set():
            if not self._names:  # nothing to watch: no connection, no retries
                self._watched.wait()
                self._watched.clear()
                continue
            started, connected = time.monotonic(), False
            try:
                client, stream = self._open()
            except Exception as e:
                reason = _describe(e)
            else:
                connected = True
                if failures:
                    self._log.info("following Docker events again (%d attempt(s) to reconnect);"
                                   " re-checking every watched container", failures)
                    self._notify_all()
                reason = self._follow(client, stream)
            if self._closed.is_set():
                return
            if connected and time.monotonic() - started >= STABLE_AFTER_S:
                delay, failures = BACKOFF_FIRST_S, 0
            failures += 1
            self._log.log(logging.WARNING if failures == 1 or connected else logging.DEBUG,
                          "following Docker events: %s; %s in %.1fs", reason,
                          "reconnecting" if connected else "retrying", delay)
            self._closed.wait(delay)
            delay = min(delay * 2, BACKOFF_MAX_S)

    def _open(self) -> tuple[Any, Any]:
        import docker

        if self._base_url:
            client = docker.DockerClient(base_url=self._base_url, timeout=CLIENT_TIMEOUT)
        else:
            client = docker.from_env(timeout=CLIENT_TIMEOUT)
        try:
            stream = client.events(decode=True, filters={"type": "container",
                                                         "event": list(ACTIONS)})
        except BaseException:
            client.close()
            raise
        return client, stream

    def _follow(self, client: Any, stream: Any) -> str:
        """Read events until the stream ends; why it ended."""
        with self._lock:
            if self._closed.is_set():  # close() came while we connected
                stream = None
            self._stream = stream
        try:
            for event in stream or ():
                self._handle(event)
            return "the Docker Engine ended the event stream"
        except Exception as e:  # a broken stream (the daemon went away mid-message)
            return _describe(e)
        finally:
            with self._lock:
                self._stream = None
            if stream is not None:
                _close_quietly(stream)
            with contextlib.suppress(Exception):
                client.close()

    def _handle(self, event: Any) -> None:
        if not isinstance(event, dict):
            return
        action = str(event.get("Action") or event.get("status") or "")
        if action.split(":", 1)[0].strip() not in ACTIONS:
            return
        actor = event.get("Actor")
        attributes = actor.get("Attributes") if isinstance(actor, dict) else None
        if not isinstance(attributes, dict):
            return
        names = self._names
        seen: set[str] = set()
        for key in ("name", "oldName"):  # a rename concerns both names
            name = str(attributes.get(key) or "").lstrip("/")
            if name in names and name not in seen:
                seen.add(name)
                self._notify(name)

    def _notify_all(self) -> None:
        for name in sorted(self._names):
            self._notify(name)

    def _notify(self, name: str) -> None:
        try:
            self._on_change(name)
        except Exception:  # the callback's bug must not end the watch
            self._log.exception("on_change(%r) failed", name)


def _close_quietly(stream: Any) -> None:
    with contextlib.suppress(Exception):  # already closed, or closed under our feet
        stream.close()


def _describe(err: BaseException) -> str:
    inner: BaseException | None = err
    while inner is not None:  # the OSError at the bottom says it best: "Connection refused"
        if isinstance(inner, OSError) and inner.strerror:
            return f"{type(err).__name__}: {inner.strerror}"
        inner = inner.__cause__ or inner.__context__
    text = str(err)
    return f"{type(err).__name__}: {text[:300]}" if text else type(err).__name__
