"""A systemd unit's journal, read through ``journalctl --follow --output=json``.

Each entry becomes one line the way fail2ban's journal backend presents it, so the stock
filters' journal prefix matches: ``HOSTNAME IDENTIFIER[PID]: MESSAGE`` (the identifier is
SYSLOG_IDENTIFIER, else _COMM; the pid SYSLOG_PID, else _PID). A message's own newlines
are written ``#012`` as rsyslog writes them into /var/log, so one entry stays one line with
one stamp. The position is the journal cursor of the last entry delivered; journalctl
resumes after it (``--after-cursor``), or shows the last ``lookback_lines`` the first time.

journalctl is a child process (the argv prefix is a parameter, so ``docker exec HOST
journalctl`` reads a test host's journal). It is killed on stop; when it dies it is started
again after a growing pause, and the death reported. ``journalctl --follow --unit X`` never
shows anything when X had no entry at all when it started (systemd 252, systemd#25649), so
until the unit has one the source asks every ``poll_s`` whether it has, and follows then.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import selectors
import signal
import subprocess
import threading
import time
from collections.abc import Sequence
from typing import Any

from agent.watches.sources import (
    BATCH_MAX,
    MAX_LINE,
    Batch,
    Counters,
    Lag,
    SourceError,
    cut_line,
    put,
)

JSON_MAX = 16 << 20  # bytes of one JSON entry; a bigger one is skipped (and counted)
READ = 1 << 20
STOP_CHECK = 0.2  # seconds between looks at the stop event while journalctl is quiet
BACKOFF = (1.0, 30.0)  # first and longest pause before journalctl is started again
PROBE_TIMEOUT = 30  # seconds for `journalctl --lines 1` (is there any entry of the unit?)
STEADY = 60.0  # a journalctl that ran this long was healthy: the next pause is the first

Out = queue.Queue[Batch | SourceError]


class JournalSource:
    def __init__(self, unit: str, position: dict[str, Any] | None = None, *,
                 journalctl: Sequence[str] = ("journalctl",), lookback_lines: int = 1000,
                 max_line: int = MAX_LINE, backoff: tuple[float, float] = BACKOFF,
                 poll_s: float = 1.0) -> None:
        self.unit = unit
        self.name = f"journal:{unit}"
        self.journalctl = tuple(journalctl)
        self.lookback_lines = lookback_lines
        self.max_line = max_line
        self.backoff = backoff
        self.poll_s = poll_s
        cursor = (position or {}).get("cursor")
        self._cursor: str | None = cursor if isinstance(cursor, str) and cursor else None
        self._counters = Counters()
        self._newest_delay: float | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        # journalctl --follow with a unit match that no entry has matched yet never shows
        # the unit's entries (systemd 252, systemd#25649): until it has one, it is polled
        self._has_entries = False

    def argv(self) -> list[str]:
        where = (["--after-cursor", self._cursor] if self._cursor
                 else ["--lines", str(self.lookback_lines)])
        return [*self.journalctl, "--unit", self.unit, "--follow", "--output=json",
                "--no-pager", "--all", *where]

    def lag(self) -> Lag:
        return Lag(bytes_behind=None, seconds_behind=self._newest_delay,
                   lines_read=self._counters.lines, bytes_read=self._counters.bytes,
                   truncated_lines=self._counters.truncated)

    def run(self, out: Out, stop: threading.Event) -> None:
        """Follow the unit's journal until `stop` is set, restarting journalctl when it dies."""
        pause = self.backoff[0]
        while not stop.is_set():
            began = time.monotonic()
            used_cursor = self._cursor
            delivered = self._counters.lines
            why = "" if self._has_entries else self._probe()
            if not why and not self._has_entries:  # nothing yet: look again in poll_s
                stop.wait(self.poll_s)
                continue
            why = why or self._follow(out, stop)
            if stop.is_set():
                return
            if time.monotonic() - began >= STEADY:
                pause = self.backoff[0]
            note = ""
            if used_cursor and self._counters.lines == delivered and "cursor" in why.lower():
                # the journal no longer knows the cursor (vacuumed, another machine's)
                self._cursor = None
                note = f"; starting again from its last {self.lookback_lines} lines"
            put(out, SourceError(self.name, f"journalctl {why}{note}; started again in "
                                 f"{pause:.0f}s"), stop)
            if stop.wait(pause):
                return
            pause = min(pause * 2, self.backoff[1])

    def _probe(self) -> str:
        """Whether the unit has any entry yet (sets _has_entries); what failed, if journalctl
        did."""
        argv = [*self.journalctl, "--unit", self.unit, "--lines", "1", "--output=json",
                "--no-pager", "--quiet"]
        try:
            p = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True,
                               timeout=PROBE_TIMEOUT)
        except subprocess.TimeoutExpired:
            return f"did not answer within {PROBE_TIMEOUT}s"
        except OSError as e:
            return f"could not be started: {e.strerror or e}"
        if p.returncode != 0:
            text = p.stderr.decode(errors="replace").strip().splitlines()
            return f"exited with status {p.returncode}" + (f": {text[-1]}" if text else "")
        self._has_entries = b"__CURSOR" in p.stdout
        return ""

    def _follow(self, out: Out, stop: threading.Event) -> str:
        """Run journalctl once, delivering its entries; how it ended (when not stopped)."""
        try:
            proc = subprocess.Popen(self.argv(), stdin=subprocess.DEVNULL,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    start_new_session=True)
        except OSError as e:
            return f"could not be started: {e.strerror or e}"
        self._proc = proc
        assert proc.stdout is not None and proc.stderr is not None
        sel = selectors.DefaultSelector()
        sel.register(proc.stdout, selectors.EVENT_READ, "out")
        sel.register(proc.stderr, selectors.EVENT_READ, "err")
        pending = b""  # an incomplete JSON line
        skipping = False  # inside an entry longer than JSON_MAX
        stderr_tail = b""
        try:
            open_pipes = 2
            while open_pipes and not stop.is_set():
                for key, _ in sel.select(STOP_CHECK):
                    chunk = os.read(key.fd, READ)
                    if not chunk:
                        sel.unregister(key.fileobj)
                        open_pipes -= 1
                    elif key.data == "err":
                        stderr_tail = (stderr_tail + chunk)[-2000:]
                    else:
                        if skipping:  # the rest of an entry too big to keep
                            nl = chunk.find(b"\n")
                            if nl < 0:
                                continue
                            chunk, skipping = chunk[nl + 1:], False
                        lines = (pending + chunk).split(b"\n")
                        pending = lines.pop()
                        if len(pending) > JSON_MAX:
                            pending, skipping = b"", True
                            self._counters.truncated += 1
                        self._deliver(out, stop, lines)
        finally:
            sel.close()
            self._stop_child(proc)
        if stop.is_set():
            return ""
        text = stderr_tail.decode(errors="replace").strip().splitlines()
        return (f"exited with status {proc.returncode}"
                + (f": {text[-1]}" if text else ""))

    def _deliver(self, out: Out, stop: threading.Event, lines: list[bytes]) -> None:
        data: list[bytes] = []
        stamps: list[float] = []
        size = 0
        cursor = self._cursor
        for raw in lines:
            if not raw.strip():
                continue
            try:
                entry = json.loads(raw)
            except ValueError:
                continue  # not an entry (journalctl's own notes go to stderr)
            if not isinstance(entry, dict):
                continue
            line, cut = cut_line(format_entry(entry), self.max_line)
            self._counters.truncated += cut
            if size + len(line) > BATCH_MAX:
                self._put(out, stop, data, stamps, cursor)
                data, stamps, size = [], [], 0
            data.append(line)
            size += len(line)
            stamps.append(_stamp(entry))
            cursor = str(entry.get("__CURSOR") or cursor or "")
        self._put(out, stop, data, stamps, cursor)

    def _put(self, out: Out, stop: threading.Event, data: list[bytes], stamps: list[float],
             cursor: str | None) -> None:
        if not data:
            return
        blob = b"".join(data)
        if put(out, Batch(self.name, blob, stamps, {"cursor": cursor}), stop):
            self._cursor = cursor
            self._has_entries = True
            self._counters.count(blob)
            self._newest_delay = max(0.0, time.time() - stamps[-1])

    @staticmethod
    def _stop_child(proc: subprocess.Popen[bytes]) -> None:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(2)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()


def format_entry(entry: dict[str, Any]) -> bytes:
    """One journal entry (journalctl's JSON) as the line fail2ban's backend would match:
    ``HOSTNAME IDENT[PID]: MESSAGE`` without the newline."""
    parts: list[bytes] = []
    host = _value(entry.get("_HOSTNAME"))
    if host:
        parts.append(host)
    ident = _value(entry.get("SYSLOG_IDENTIFIER")) or _value(entry.get("_COMM"))
    if ident:
        pid = _value(entry.get("SYSLOG_PID")) or _value(entry.get("_PID"))
        tag = ident + (b"[" + pid + b"]" if pid else b"") + b":"
        parts.append(tag)
        if tag == b"kernel:":
            mono = entry.get("_SOURCE_MONOTONIC_TIMESTAMP") or entry.get("__MONOTONIC_TIMESTAMP")
            if mono is not None:
                with contextlib.suppress(TypeError, ValueError):
                    parts.append(b"[%12.6f]" % (int(mono) / 1e6))
    message = _value(entry.get("MESSAGE")) or b""
    parts.append(message.rstrip(b"\r\n").replace(b"\n", b"#012"))
    return b" ".join(parts)


def _value(v: Any) -> bytes | None:
    """A field as bytes: journalctl writes text as a string, binary data as a list of byte
    values, a field set several times as a list of those, and null when it was too big."""
    if v is None:
        return None
    if isinstance(v, str):
        return v.encode("utf-8", "surrogateescape")
    if isinstance(v, list):
        if all(isinstance(x, int) and 0 <= x < 256 for x in v):
            return bytes(v)
        return b" ".join(b for b in map(_value, v) if b is not None)
    return str(v).encode()


def _stamp(entry: dict[str, Any]) -> float:
    try:
        return int(entry["__REALTIME_TIMESTAMP"]) / 1e6
    except (KeyError, TypeError, ValueError):
        return time.time()
