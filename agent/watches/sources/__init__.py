"""Where log watches read their lines: a file, a systemd unit's journal, a container's logs.

Every source is a blocking loop (``run``) that the caller starts in its own thread; it puts
``Batch`` es of complete lines on a queue, and a ``SourceError`` when something is wrong
that an operator should hear about (once per episode, never a storm). Each batch carries the
source's position *after* it: the consumer persists that together with its own state, and a
source built again from it resumes right after the batch, so a restart repeats and misses
nothing the consumer had processed.

The same rules hold for every kind: at most ``BATCH_MAX`` bytes per batch; a line longer
than ``max_line`` is cut to ``max_line`` bytes (its newline kept) and counted; bytes are
passed through as they are (decoding is the consumer's business).
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass
from typing import Any, Protocol

from agent.errors import OpsAgentError

BATCH_MAX = 1 << 20  # bytes of line data in one batch
MAX_LINE = 64 << 10  # a longer line is cut to this many bytes
_PUT_WAIT = 0.2  # seconds between looks at the stop event while the queue is full


@dataclass(frozen=True)
class Batch:
    """Complete lines read from one source, and where to resume after them."""

    source: str  # "file:/var/log/auth.log", "journal:ssh.service", "container:api"
    data: bytes  # one or more complete lines, each ending with b"\n"
    stamps: list[float] | None  # per line, epoch seconds, when the source dates its lines
    position: dict[str, Any]  # JSON-able; given back to the source's constructor: resume here


@dataclass(frozen=True)
class Lag:
    """How far a source is behind, and what it has delivered since it started."""

    bytes_behind: int | None  # files: bytes not yet delivered (None: the source cannot tell)
    seconds_behind: float | None  # how old the newest line was when read (None: no line yet);
    # files, whose lines carry no time: for how long the source has not been at the end
    lines_read: int  # lines delivered in batches
    bytes_read: int  # bytes delivered in batches
    truncated_lines: int  # lines cut to max_line


class SourceError(OpsAgentError):
    """Something about a source an operator should know (missing file, daemon down); the
    source keeps trying on its own, so this is a report, not the end of the loop."""

    def __init__(self, source: str, message: str) -> None:
        super().__init__(f"{source}: {message}")
        self.source = source
        self.message = message


class Source(Protocol):
    name: str

    def run(self, out: queue.Queue[Batch | SourceError], stop: threading.Event) -> None: ...

    def lag(self) -> Lag: ...


def open_source(kind: str, target: str, position: dict[str, Any] | None = None,
                **opts: Any) -> Source:
    """The source of `kind` ("file", "journal" or "container") reading `target` (a path, a
    unit, a container name), resuming after `position` when one is given."""
    if kind == "file":
        from agent.watches.sources.files import FileSource

        return FileSource(target, position, **opts)
    if kind == "journal":
        from agent.watches.sources.journal import JournalSource

        return JournalSource(target, position, **opts)
    if kind in ("container", "docker"):
        from agent.watches.sources.docker import ContainerSource

        return ContainerSource(target, position, **opts)
    raise ValueError(f"unknown log source kind {kind!r} (expected file, journal or container)")


def put(out: queue.Queue[Batch | SourceError], item: Batch | SourceError,
        stop: threading.Event) -> bool:
    """Hand `item` to the consumer, waiting while its queue is full; False when stopped first."""
    while True:
        try:
            out.put(item, timeout=_PUT_WAIT)
            return True
        except queue.Full:
            if stop.is_set():
                return False


class Reporter:
    """Puts a SourceError once per episode: the same trouble is not repeated until
    ``clear()`` says it is over (the file appeared, the daemon answered)."""

    def __init__(self, source: str) -> None:
        self.source = source
        self._last: str | None = None

    def report(self, out: queue.Queue[Batch | SourceError], stop: threading.Event,
               message: str, *, key: str | None = None) -> None:
        """Report `message` unless this episode (`key`, else the message) was reported."""
        k = key or message
        if k != self._last:
            self._last = k
            put(out, SourceError(self.source, message), stop)

    def clear(self) -> None:
        self._last = None


class Counters:
    """What a source delivered; written by its thread, read by ``lag()`` from others."""

    def __init__(self) -> None:
        self.lines = 0
        self.bytes = 0
        self.truncated = 0

    def count(self, data: bytes) -> None:
        self.lines += data.count(b"\n")
        self.bytes += len(data)


def cut_line(content: bytes, max_line: int) -> tuple[bytes, bool]:
    """`content` (one line without its newline) as a line of at most max_line bytes plus
    the newline, and whether it was cut."""
    if len(content) > max_line:
        return content[:max_line] + b"\n", True
    return content + b"\n", False


class LineCutter:
    """Cuts a byte stream into complete lines, in pieces of at most BATCH_MAX bytes.

    An incomplete last line is held (at most max_line bytes of it) until its newline comes;
    ``held`` says how many bytes of the stream that line has used so far, so the stream
    position of the end of the last delivered line is always ``fed - held``.
    """

    def __init__(self, max_line: int = MAX_LINE) -> None:
        if not 0 < max_line < BATCH_MAX:
            raise ValueError(f"max_line must be between 1 and {BATCH_MAX - 1} bytes")
        self.max_line = max_line
        self.truncated = 0
        self.held = 0
        self._head = b""  # the first max_line bytes of the held line
        self._discard = False  # the held line is dropped whole (reading began inside it)

    def discard_partial(self) -> None:
        """The stream starts inside a line: drop everything up to the first newline."""
        self._discard = True

    def reset(self) -> None:
        self.held, self._head, self._discard = 0, b"", False

    def flush(self) -> bytes:
        """The held incomplete line with a newline added (b"" when none): the stream ends."""
        line = b""
        if self.held and not self._discard:
            line = cut_line(self._head, self.max_line)[0]
            self.truncated += self.held > self.max_line
        self.reset()
        return line

    def feed(self, chunk: bytes) -> list[tuple[bytes, int]]:
        """The complete lines `chunk` finishes, as (data, end) pieces: `end` is the index in
        `chunk` just after the piece's last newline."""
        first = chunk.find(b"\n")
        if first < 0:
            self._hold(chunk)
            return []
        pieces = _Pieces()
        if self._discard:
            self.reset()
        else:
            line = cut_line(self._head + chunk[:first], self.max_line)[0]
            self.truncated += self.held + first > self.max_line
            self.reset()
            pieces.add(line, first + 1)
        last = chunk.rfind(b"\n")
        if last > first:
            start, stop = first + 1, last + 1
            if stop - start <= self.max_line or max(map(len, chunk[start:last].split(b"\n"))) \
                    <= self.max_line:
                pieces.add_run(chunk, start, stop)
            else:
                self._add_cut_lines(pieces, chunk, start, stop)
        self._hold(chunk[last + 1:])
        return pieces.done()

    def _add_cut_lines(self, pieces: _Pieces, chunk: bytes, start: int, stop: int) -> None:
        while start < stop:
            end = chunk.index(b"\n", start)
            line, cut = cut_line(chunk[start:end], self.max_line)
            self.truncated += cut
            pieces.add(line, end + 1)
            start = end + 1

    def _hold(self, rest: bytes) -> None:
        if rest:
            if not self._discard and len(self._head) < self.max_line:
                self._head += rest[:self.max_line - len(self._head)]
            self.held += len(rest)


class _Pieces:
    """Complete lines gathered into pieces of at most BATCH_MAX bytes."""

    def __init__(self) -> None:
        self._out: list[tuple[bytes, int]] = []
        self._buf: list[bytes] = []
        self._size = 0
        self._end = 0

    def add(self, data: bytes, end: int) -> None:
        if self._size + len(data) > BATCH_MAX:
            self._flush()
        self._buf.append(data)
        self._size += len(data)
        self._end = end

    def add_run(self, chunk: bytes, start: int, stop: int) -> None:
        """chunk[start:stop]: whole lines, none longer than max_line (< BATCH_MAX)."""
        while start < stop:
            room = BATCH_MAX - self._size
            if stop - start <= room:
                self.add(chunk[start:stop], stop)
                return
            cut = chunk.rfind(b"\n", start, start + room)
            if cut < 0:
                self._flush()
                continue
            self.add(chunk[start:cut + 1], cut + 1)
            self._flush()
            start = cut + 1

    def _flush(self) -> None:
        if self._buf:
            self._out.append((b"".join(self._buf), self._end))
            self._buf, self._size = [], 0

    def done(self) -> list[tuple[bytes, int]]:
        self._flush()
        return self._out
