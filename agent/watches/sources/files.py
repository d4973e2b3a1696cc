"""A log file followed through rotation: every line once, in order, soon after it is written.

The *directory* is watched with inotify (a watch on the file itself would be lost when the
file is renamed away), with a poll every ``poll_s`` in case an event was missed. What the
source does when the file changes under it:

* renamed away (logrotate's ``create``): the old file is still read through the open
  descriptor, since the writer keeps writing there until it reopens; once a new file at the
  path has data (or the old one was deleted) the old one is read to its end, a partial last
  line is delivered with a newline added, and the new file is read from its start;
* truncated in place (``copytruncate``: smaller than what was read, or its first bytes are
  not what they were): read again from 0;
* deleted and created again: the new file from 0; missing: waited for, reported once.

The position is ``{dev, ino, offset, head}``: the file's identity, the byte after the last
delivered line, and the sha256 of the file's first ``min(offset, 256)`` bytes (bytes already
read, so they cannot still be growing, and their length needs no extra field). A new source
resumes there when the file is still that file; finds it by inode in the same directory when
it was rotated while the agent was down (reads its rest, then the new file); otherwise reads
only the last ``lookback_bytes`` (from a line start), so a reboot never re-scans a huge log.
"""

from __future__ import annotations

import hashlib
import os
import queue
import selectors
import threading
import time
from dataclasses import dataclass
from typing import Any

from agent.service.inotify import Inotify
from agent.watches.sources import (
    MAX_LINE,
    Batch,
    Counters,
    Lag,
    LineCutter,
    Reporter,
    SourceError,
    put,
)

LOOKBACK = 1 << 20  # bytes read back on first sight of a file (or an unusable position)
READ = 1 << 20  # bytes per read
STEP_MAX = 16 << 20  # bytes read per wake-up before the stop event and the path are looked at
HEAD = 256  # bytes of the file's start that identify it
STOP_CHECK = 0.2  # seconds between looks at the stop event while nothing happens

Out = queue.Queue[Batch | SourceError]


@dataclass
class _Open:
    """The file being read, by descriptor (it may no longer be at the path)."""

    fd: int
    dev: int
    ino: int
    offset: int  # the next byte to read
    size: int = -1  # as of the last fstat
    mtime_ns: int = -1
    head: bytes = b""  # the first up to HEAD bytes, as last looked at
    head_digest: str = ""  # sha256 of head once it is HEAD bytes long

    def digest(self, n: int) -> str:
        """sha256 hex of the file's first n (<= HEAD) bytes."""
        if len(self.head) < n:
            self.head = os.pread(self.fd, HEAD, 0)
        if n == HEAD == len(self.head):
            if not self.head_digest:
                self.head_digest = hashlib.sha256(self.head).hexdigest()
            return self.head_digest
        return hashlib.sha256(self.head[:n]).hexdigest()


class FileSource:
    def __init__(self, path: str, position: dict[str, Any] | None = None, *,
                 lookback_bytes: int = LOOKBACK, max_line: int = MAX_LINE,
                 poll_s: float = 1.0) -> None:
        self.path = os.path.abspath(path)
        self.name = f"file:{self.path}"
        self.lookback_bytes = lookback_bytes
        self.poll_s = poll_s
        self._position = position
        self._cutter = LineCutter(max_line)
        self._counters = Counters()
        self._reporter = Reporter(self.name)
        self._file: _Open | None = None
        self._caught_up = time.time()  # when the source was last at the end of the file

    # -- the loop ------------------------------------------------------------------------

    def run(self, out: Out, stop: threading.Event) -> None:
        """Follow the file until `stop` is set, putting batches (and SourceErrors) on `out`."""
        directory = os.path.dirname(self.path)
        sel = selectors.DefaultSelector()
        notify: Inotify | None = None
        try:
            try:
                notify = Inotify()
                sel.register(notify.fd, selectors.EVENT_READ)
                notify.watch_dirs({directory})
            except OSError as e:  # out of inotify instances (EMFILE): polling still works
                put(out, SourceError(self.name, f"inotify unavailable ({e.strerror or e}); "
                                     f"looking every {self.poll_s:g}s"), stop)
            self._file = self._resume()
            next_poll = 0.0
            woke = more = True
            while not stop.is_set():
                now = time.monotonic()
                if woke or more or now >= next_poll:
                    if now >= next_poll and notify is not None:
                        notify.watch_dirs({directory})  # it may have appeared, or come back
                    more = self._step(out, stop)
                    next_poll = now + self.poll_s
                wait = 0 if more else min(self.poll_s, STOP_CHECK)
                if notify is None:
                    woke = False
                    stop.wait(wait)
                else:
                    woke = bool(sel.select(wait))
                    if woke:
                        notify.read()
        finally:
            sel.close()
            if notify is not None:
                notify.close()
            self._close()

    def lag(self) -> Lag:
        f = self._file
        try:
            st: os.stat_result | None = os.stat(self.path)
        except OSError:
            st = None
        if f is None:
            behind = st.st_size if st is not None else 0
        else:
            done = f.offset - self._cutter.held
            if st is not None and (st.st_dev, st.st_ino) == (f.dev, f.ino):
                behind = max(0, st.st_size - done)
            else:  # the rest of the rotated file, then all of the new one
                behind = max(0, f.size - done) + (st.st_size if st is not None else 0)
        return Lag(bytes_behind=behind,
                   seconds_behind=0.0 if behind == 0 else max(0.0, time.time() - self._caught_up),
                   lines_read=self._counters.lines, bytes_read=self._counters.bytes,
                   truncated_lines=self._cutter.truncated)

    def _step(self, out: Out, stop: threading.Event) -> bool:
        """Read what is new, then follow a rotation, truncation or replacement; True when
        there is more to read at once."""
        if self._file is None:
            self._file = self._open_path(out, stop)
            if self._file is None:
                return False
        f = self._file
        if not self._read(out, stop, f):
            return True  # STEP_MAX read: look at stop, then come back
        st = _stat(self.path)
        if st is not None and (st.st_dev, st.st_ino) == (f.dev, f.ino):
            return False
        gone = os.fstat(f.fd).st_nlink == 0
        if st is None and not gone:
            return False  # renamed away, no new file yet: the writer still writes to the old
        if st is not None and st.st_size == 0 and not gone:
            return False  # the new file is empty: until the writer reopens, the old gets lines
        if not self._read(out, stop, f):
            return True
        self._flush(out, stop, f)
        self._close()
        return st is not None  # a new file to open and read from its start

    # -- reading ---------------------------------------------------------------------------

    def _read(self, out: Out, stop: threading.Event, f: _Open) -> bool:
        """Deliver the complete lines up to the end of the file; False when STEP_MAX bytes
        were read first (or the loop was stopped)."""
        if self._rewritten(f):
            self._flush(out, stop, f)
            f.offset = 0
            f.head, f.head_digest = os.pread(f.fd, HEAD, 0), ""
        total = 0
        while total < STEP_MAX and not stop.is_set():
            chunk = os.pread(f.fd, READ, f.offset)
            if not chunk:
                self._caught_up = time.time()
                return True
            start = f.offset
            f.offset += len(chunk)
            f.size = max(f.size, f.offset)
            total += len(chunk)
            for data, end in self._cutter.feed(chunk):
                self._deliver(out, stop, f, data, start + end)
        return False

    def _rewritten(self, f: _Open) -> bool:
        """Truncated in place, or rewritten from the start since the last look."""
        st = os.fstat(f.fd)
        if st.st_size == f.size and st.st_mtime_ns == f.mtime_ns:
            return False
        f.size, f.mtime_ns = st.st_size, st.st_mtime_ns
        if st.st_size < f.offset:
            return True
        if f.head and os.pread(f.fd, len(f.head), 0) != f.head:
            return True
        if len(f.head) < HEAD and st.st_size > len(f.head):
            f.head, f.head_digest = os.pread(f.fd, HEAD, 0), ""
        return False

    def _flush(self, out: Out, stop: threading.Event, f: _Open) -> None:
        """The file ends here (rotated, truncated): deliver its partial last line."""
        line = self._cutter.flush()
        if line:
            self._deliver(out, stop, f, line, f.offset)

    def _deliver(self, out: Out, stop: threading.Event, f: _Open, data: bytes,
                 end: int) -> None:
        position = {"dev": f.dev, "ino": f.ino, "offset": end, "head": f.digest(min(end, HEAD))}
        if put(out, Batch(self.name, data, None, position), stop):
            self._counters.count(data)

    # -- opening -----------------------------------------------------------------------------

    def _resume(self) -> _Open | None:
        """The file to start with, and where, from the position given (if any)."""
        pos = _valid_position(self._position)
        if pos is not None:
            dev, ino, offset, head = pos
            st = _stat(self.path)
            if st is not None and (st.st_dev, st.st_ino) == (dev, ino):
                f = _open(self.path)
                if f is not None and _is(f, dev, ino, offset, head):
                    return f
                _close(f)
            else:  # rotated while we were away: the old file under another name, by inode
                f = self._find_rotated(dev, ino, offset, head)
                if f is not None:
                    return f
        return _open(self.path, lookback=self.lookback_bytes, cutter=self._cutter)

    def _find_rotated(self, dev: int, ino: int, offset: int, head: str) -> _Open | None:
        try:
            entries = list(os.scandir(os.path.dirname(self.path)))
        except OSError:
            return None
        for entry in entries:
            if entry.inode() == ino and entry.is_file(follow_symlinks=False):
                f = _open(entry.path)
                if f is not None and _is(f, dev, ino, offset, head):
                    return f
                _close(f)
        return None

    def _open_path(self, out: Out, stop: threading.Event) -> _Open | None:
        """The file at the path, read from its start (it is new to us); None, reported once,
        when there is none."""
        try:
            f = _open(self.path, strict=True)
        except FileNotFoundError:
            self._reporter.report(out, stop, f"{self.path} does not exist; waiting for it to "
                                  "appear", key="missing")
            return None
        except OSError as e:
            self._reporter.report(out, stop, f"cannot open {self.path}: {e.strerror or e}; "
                                  "trying again", key="unreadable")
            return None
        self._reporter.clear()
        return f

    def _close(self) -> None:
        _close(self._file)
        self._file = None
        self._cutter.reset()


def _open(path: str, *, strict: bool = False, lookback: int | None = None,
          cutter: LineCutter | None = None) -> _Open | None:
    """Open `path` at offset 0, or `lookback` bytes before its end (from the next line
    start); None when it cannot be opened, unless `strict`."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        if strict:
            raise
        return None
    st = os.fstat(fd)
    offset = 0
    if lookback is not None and st.st_size > lookback:
        offset = st.st_size - lookback
        if os.pread(fd, 1, offset - 1) != b"\n" and cutter is not None:
            cutter.discard_partial()  # began inside a line: drop it up to its newline
    return _Open(fd, st.st_dev, st.st_ino, offset, head=os.pread(fd, HEAD, 0))


def _is(f: _Open, dev: int, ino: int, offset: int, head: str) -> bool:
    """`f` is the file a position was taken in, still holding at least `offset` bytes."""
    st = os.fstat(f.fd)
    if (st.st_dev, st.st_ino) != (dev, ino) or st.st_size < offset:
        return False
    if f.digest(min(offset, HEAD)) != head:
        return False
    f.offset = offset
    return True


def _valid_position(pos: dict[str, Any] | None) -> tuple[int, int, int, str] | None:
    if not pos:
        return None
    dev, ino, offset, head = (pos.get(k) for k in ("dev", "ino", "offset", "head"))
    if not (isinstance(dev, int) and isinstance(ino, int) and isinstance(offset, int)
            and offset >= 0 and isinstance(head, str)):
        return None
    return dev, ino, offset, head


def _stat(path: str) -> os.stat_result | None:
    try:
        return os.stat(path)
    except OSError:
        return None


def _close(f: _Open | None) -> None:
    if f is not None:
        os.close(f.fd)
