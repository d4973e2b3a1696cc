"""A container's logs (stdout and stderr), followed across restarts and re-creations.

The Engine's log stream is asked for with timestamps: they give each line its stamp and the
position, ``{since, n_at_since}`` = the newest line's timestamp (RFC 3339 with nanoseconds,
as the Engine wrote it) and how many lines with exactly that timestamp were delivered. A
source built again from it asks the Engine for the lines since then and drops those it had
already delivered, so a restart neither repeats nor misses lines. The timestamps are removed
from the lines; the Engine's split of a long line (16 KiB pieces, each with its own
timestamp) is undone.

The stream ends when the container stops; the container is then looked up by name every
``poll_s`` and followed again when it runs again (restarted: the same id, a new start time;
re-created: a new id). Stopping closes the stream's socket from another thread, so a quiet
container never holds the loop. The SDK is imported inside functions.
"""

from __future__ import annotations

import calendar
import contextlib
import queue
import re
import threading
import time
from collections.abc import Callable
from typing import Any

from agent.errors import ProviderError
from agent.watches.sources import (
    MAX_LINE,
    Batch,
    Counters,
    Lag,
    Reporter,
    SourceError,
    put,
)

STOP_CHECK = 0.5  # seconds between the closer thread's looks at "run has returned"
RETRY = (1.0, 30.0)  # first and longest pause while the Engine does not answer

Out = queue.Queue[Batch | SourceError]
_TS = re.compile(rb"(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)(?:\.(\d{1,9}))?"
                 rb"(Z|[+-]\d\d:\d\d)")


def default_client() -> Any:
    """A docker.DockerClient from the providers' helper (its timeout bounds every call but a
    log stream, whose socket the SDK leaves without one)."""
    from agent.providers import _docker_client

    return _docker_client.client(_context())


class ContainerSource:
    def __init__(self, container: str, position: dict[str, Any] | None = None, *,
                 client_factory: Callable[[], Any] = default_client,
                 lookback_lines: int = 1000, max_line: int = MAX_LINE,
                 poll_s: float = 1.0) -> None:
        self.container = container
        self.name = f"container:{container}"
        self.client_factory = client_factory
        self.lookback_lines = lookback_lines
        self.max_line = max_line
        self.poll_s = poll_s
        self._since: bytes | None = None  # the newest delivered line's timestamp, as written
        self._since_ns: int | None = None
        self._n_at_since = 0
        since = (position or {}).get("since")
        n = (position or {}).get("n_at_since")
        if isinstance(since, str) and parse_ns(since.encode()) is not None:
            self._since, self._since_ns = since.encode(), parse_ns(since.encode())
            self._n_at_since = n if isinstance(n, int) and n >= 0 else 0
        self._first_attach_ns: int | None = None
        self._attached: tuple[str, str] | None = None  # (id, start time) read to its end
        self._client: Any = None
        self._stream: Any = None
        self._lock = threading.Lock()
        self._counters = Counters()
        self._reporter = Reporter(self.name)
        self._newest_delay: float | None = None

    def lag(self) -> Lag:
        return Lag(bytes_behind=None, seconds_behind=self._newest_delay,
                   lines_read=self._counters.lines, bytes_read=self._counters.bytes,
                   truncated_lines=self._counters.truncated)

    def run(self, out: Out, stop: threading.Event) -> None:
        """Follow the container's logs until `stop` is set."""
        done = threading.Event()
        closer = threading.Thread(target=self._close_on_stop, args=(stop, done), daemon=True,
                                  name=f"{self.name} closer")
        closer.start()
        pause = RETRY[0]
        try:
            while not stop.is_set():
                if self._cycle(out, stop):
                    pause = RETRY[0]
                else:  # the Engine did not answer
                    stop.wait(pause)
                    pause = min(pause * 2, RETRY[1])
        finally:
            done.set()
            self._close_stream()

    def _cycle(self, out: Out, stop: threading.Event) -> bool:
        """Look the container up and follow its logs until the stream ends; False when the
        Engine could not be asked."""
        import docker.errors

        from agent.providers import _docker_client

        failures: tuple[type[BaseException], ...] = (ProviderError, *_docker_client.errors())
        try:
            if self._client is None:
                self._client = self.client_factory()
            info = self._client.api.inspect_container(self.container)
        except docker.errors.NotFound:
            self._reporter.report(out, stop, f"no container named {self.container}; waiting "
                                  "for one", key="missing")
            stop.wait(self.poll_s)
            return True
        except failures as e:
            self._engine_down(out, stop, e)
            return False
        state = info.get("State") or {}
        run = (info["Id"], state.get("StartedAt", ""))
        if run == self._attached:
            # this run's stream was read to its end: wait for a restart or a new container
            # (a stream that ended while the container runs on is asked for again)
            stop.wait(0.1 if state.get("Running") else self.poll_s)
            if not state.get("Running") or stop.is_set():
                return True
        self._reporter.clear()
        try:
            self._follow(info["Id"], bool((info.get("Config") or {}).get("Tty")), out, stop)
        except Exception as e:  # a stream cut mid-read raises urllib3's errors as well
            if stop.is_set():
                return True
            self._engine_down(out, stop, e)
            return False
        self._attached = run
        return True

    def _engine_down(self, out: Out, stop: threading.Event, err: BaseException) -> None:
        from agent.providers import _docker_client

        self._client = None  # a new client (and a new look at the daemon) next time
        text = str(err) if isinstance(err, ProviderError) else str(
            _docker_client.translate(_context(), f"reading {self.name}'s logs", err))
        self._reporter.report(out, stop, text, key="engine")

    def _follow(self, cid: str, tty: bool, out: Out, stop: threading.Event) -> None:
        """Read one attachment's stream to its end, delivering the lines not seen before."""
        kwargs: dict[str, Any] = {"stdout": True, "stderr": True, "stream": True,
                                  "follow": True, "timestamps": True}
        if self._since_ns is not None:  # a microsecond early: the exact ones are dropped here
            kwargs["since"] = max(self._since_ns // 1000 - 1, 1) / 1e6
        elif self._first_attach_ns is None:
            kwargs["tail"] = self.lookback_lines
        elif self.lookback_lines == 0:  # nothing delivered yet: only what came since
            kwargs["since"] = self._first_attach_ns / 1e9
        if self._first_attach_ns is None:
            self._first_attach_ns = time.time_ns()
        stream = self._client.api.logs(cid, **kwargs)
        with self._lock:
            if stop.is_set():
                with contextlib.suppress(Exception):
                    stream.close()
                return
            self._stream = stream
        parser = _LogParser(self.max_line)
        skip = self._n_at_since  # lines at exactly `since` already delivered
        catching_up = self._since_ns is not None
        try:
            for frame in stream:
                lines: list[bytes] = []
                stamps: list[float] = []
                for content, cut, ts in parser.feed(frame, frame_start=not tty):
                    ns = parse_ns(ts)
                    if catching_up and ns is not None and self._since_ns is not None:
                        if ns < self._since_ns or (ns == self._since_ns and skip > 0):
                            skip -= ns == self._since_ns
                            continue
                        catching_up = False
                    self._counters.truncated += cut
                    lines.append(content)
                    stamps.append(ns / 1e9 if ns is not None else time.time())
                    self._advance(ts, ns)
                if lines:
                    self._deliver(out, stop, lines, stamps)
        finally:
            self._close_stream()

    def _advance(self, ts: bytes, ns: int | None) -> None:
        """The watermark: the newest timestamp delivered and how many lines carried it (a
        stderr line may come after a newer stdout one; it leaves the watermark alone)."""
        if ns is None:
            return
        if self._since_ns is None or ns > self._since_ns:
            self._since, self._since_ns, self._n_at_since = ts, ns, 1
        elif ns == self._since_ns:
            self._n_at_since += 1

    def _deliver(self, out: Out, stop: threading.Event, lines: list[bytes],
                 stamps: list[float]) -> None:
        data = b"".join(lines)
        position = {"since": (self._since or b"").decode(), "n_at_since": self._n_at_since}
        if put(out, Batch(self.name, data, stamps, position), stop):
            self._counters.count(data)
            self._newest_delay = max(0.0, time.time() - stamps[-1])

    def _close_on_stop(self, stop: threading.Event, done: threading.Event) -> None:
        while not stop.wait(STOP_CHECK):
            if done.is_set():
                return
        self._close_stream()

    def _close_stream(self) -> None:
        with self._lock:
            stream, self._stream = self._stream, None
        if stream is not None:
            with contextlib.suppress(Exception):  # already closed by the other thread
                stream.close()


class _LogParser:
    """The Engine's log stream with timestamps, back into lines: every message starts with
    ``TIMESTAMP `` and a long line comes as several messages, the last one with the newline.
    Without a TTY each frame is one message; with one the stream is cut anywhere."""

    def __init__(self, max_line: int) -> None:
        self.max_line = max_line
        self._in_ts = True  # the next bytes are a timestamp
        self._ts = b""
        self._cur_ts = b""
        self._line = bytearray()
        self._len = 0

    def feed(self, chunk: bytes, *, frame_start: bool) -> list[tuple[bytes, bool, bytes]]:
        """Complete lines: (line with newline, whether it was cut, its timestamp)."""
        if frame_start:
            self._in_ts = True
        out: list[tuple[bytes, bool, bytes]] = []
        i, n = 0, len(chunk)
        while i < n:
            if self._in_ts:
                sp = chunk.find(b" ", i)
                if sp < 0:
                    self._ts = (self._ts + chunk[i:])[-64:]
                    break
                self._cur_ts, self._ts, self._in_ts = self._ts + chunk[i:sp], b"", False
                i = sp + 1
                continue
            nl = chunk.find(b"\n", i)
            end = n if nl < 0 else nl
            room = self.max_line - len(self._line)
            if room > 0:
                self._line += chunk[i:min(end, i + room)]
            self._len += end - i
            if nl < 0:
                break
            out.append((bytes(self._line) + b"\n", self._len > self.max_line, self._cur_ts))
            self._line.clear()
            self._len, self._in_ts = 0, True
            i = nl + 1
        return out


def parse_ns(ts: bytes) -> int | None:
    """An RFC 3339 timestamp ("2024-05-01T12:34:56.123456789Z") in nanoseconds since the
    epoch; None when it is not one."""
    m = _TS.fullmatch(ts)
    if m is None:
        return None
    y, mo, d, h, mi, s = (int(g) for g in m.groups()[:6])
    frac, zone = m.group(7) or b"", m.group(8)
    seconds = calendar.timegm((y, mo, d, h, mi, s, 0, 0, 0))
    if zone != b"Z":
        sign = 1 if zone[:1] == b"+" else -1
        seconds -= sign * (int(zone[1:3]) * 3600 + int(zone[4:6]) * 60)
    return seconds * 1_000_000_000 + int(frac.ljust(9, b"0") or b"0")


def _context() -> Any:
    from agent.providers.base import ProviderContext

    return ProviderContext(host="", variables={}, base_dir="", state_dir="")
