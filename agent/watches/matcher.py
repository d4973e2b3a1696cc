"""A watch's pattern applied to buffers of complete log lines.

``Matcher.scan`` returns the lines that match (with their named groups, which failregex
matched, the line's own time, and whether an ignore pattern or fail2ban's NOFAIL marker
keeps it from counting) and counts every line; the counting and windows are the caller's.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from agent.playbook.models.rules import WatchSpec
from agent.watches.dates import LineClock
from agent.watches.fail2ban import load_filter
from agent.watches.patterns import Compiled, compile_fail2ban, compile_plain
from agent.watches.prefilter import Prefilter

_TUNE_SAMPLE = 256 * 1024
# match, alternative, time, why it does not count ("" when it does), and the address taken
# from another line of the same connection when the line itself names none
Raw = tuple[re.Match[bytes], int, float | None, str, str | None]
MLFID_PENDING_MAX = 10_000  # connections waiting for their address, at most
RECENT_BYTES = 256 * 1024  # earlier input looked back into for a connection's address


class LineMatch:
    """A matching line: which alternative matched, its own time, and whether it counts
    (not when an ignore pattern or fail2ban's NOFAIL marker says so). Groups are read on
    demand: most matches only need their key."""

    __slots__ = ("_m", "_c", "alternative", "at", "counts", "why_not", "_addr")

    def __init__(self, m: re.Match[bytes], c: Compiled, alternative: int, at: float | None,
                 why_not: str, addr: str | None = None) -> None:
        self._m, self._c = m, c
        self.alternative, self.at = alternative, at
        self.counts, self.why_not = not why_not, why_not
        self._addr = addr  # from another line of the same connection (fail2ban's mlfid)

    @property
    def line(self) -> bytes:
        m = self._m
        return m.string[m.pos:m.endpos]

    def value(self, name: str) -> str | None:
        if self._addr is not None and name in ("ip", "host"):
            return self._addr
        return self._c.value(self._m, self.alternative, name)

    @property
    def groups(self) -> dict[str, str]:
        return self._c.groups(self._m)[1]


@dataclass
class ScanStats:
    lines: int = 0
    matched: int = 0          # lines that count
    ignored: int = 0
    nofail: int = 0
    per_alternative: dict[int, int] = field(default_factory=dict)


def compile_watch(spec: WatchSpec) -> Compiled:
    """The spec's pattern compiled; fail2ban filters read from disk (FilterError)."""
    if isinstance(spec.pattern, str):
        return compile_plain(spec.pattern, spec.ignore)
    flt = load_filter(spec.pattern.fail2ban_filter, spec.pattern.options)
    return compile_fail2ban(flt, spec.ignore)


class Matcher:
    def __init__(self, compiled: Compiled, clock: LineClock | None = None) -> None:
        self.compiled = compiled
        self.prefilter = Prefilter(compiled.literals())
        self.clock = clock or LineClock()
        self._tuned = compiled.runs is None
        self._mlfid = compiled.regex.groupindex.get("_mlfid") if compiled.fail2ban else None
        self._addr_groups = [compiled.indexes(k, "ip") for k in range(len(compiled.alternatives))]
        # failures whose line names no address, by connection, until a line of the same
        # connection does (fail2ban's multi-line failure id)
        self._pending: dict[bytes, list[tuple[re.Match[bytes], int, float | None]]] = {}
        self._before = b""  # the end of what earlier buffers held, for a connection's lines

    def tune(self, sample: bytes) -> None:
        """Choose the prefilter's literals by how rare they are in real lines."""
        self.prefilter = Prefilter(self.compiled.literals(sample))
        self._tuned = True

    def scan(self, buf: bytes, stats: ScanStats) -> list[LineMatch]:
        """The matching lines of ``buf`` (complete lines), counted into ``stats``."""
        c = self.compiled
        return [LineMatch(m, c, k, at, why, addr)
                for m, k, at, why, addr in self.scan_raw(buf, stats)]

    def scan_raw(self, buf: bytes, stats: ScanStats) -> list[Raw]:
        """``scan`` without the LineMatch wrappers (the replay of big files is this loop)."""
        stats.lines += buf.count(b"\n")
        if not self._tuned and len(buf) >= _TUNE_SAMPLE:
            self.tune(buf[:_TUNE_SAMPLE])
        out: list[Raw] = []
        add = out.append
        c = self.compiled
        try_line = c.regex.match if c.fail2ban else c.regex.search
        counts = [0] * len(c.alternatives)
        clock = self.clock
        date_group = c.regex.groupindex.get("_date") if c.fail2ban else None
        alt_index = {f"_{k}": k for k in range(len(c.alternatives))} if c.fail2ban else {}
        nofail = c.nofail_groups
        ignore = c.ignore
        rfind, find = buf.rfind, buf.find
        last_date, last_at = b"", None
        line_end = -1
        matched = nofails = ignored = 0
        mlfid = self._mlfid
        for hit in self.prefilter.hits(buf):
            if hit < 0:  # no prefilter: every line, given as -(start + 1)
                start = -hit - 1
            elif hit <= line_end:
                continue  # another literal of a line already tried
            else:
                start = rfind(b"\n", 0, hit) + 1
            line_end = find(b"\n", start)
            m = try_line(buf, start, line_end)
            if m is None:
                continue
            k = alt_index.get(m.lastgroup, 0)  # type: ignore[arg-type]
            counts[k] += 1
            if date_group is not None:
                date = m.group(date_group)
                if date != last_date:
                    last_date, last_at = date, clock.parse(date) if date else None
                at = last_at
            else:
                at = clock.find(buf, start, line_end)
            why = ""
            for i in nofail[k]:
                if m.group(i) is not None:
                    why = "nofail"
                    nofails += 1
                    break
            if why:
                pass
            elif ignore and any(p.search(buf, start, line_end) for p in ignore):
                why = "ignored"
                ignored += 1
            elif mlfid is not None and not self._address(m, k) and m.group(mlfid):
                self._wait(m.group(mlfid), m, k, at)
                continue
            else:
                matched += 1
            add((m, k, at, why, None))
        if self._pending:
            for resolved in self._resolve(buf):
                matched += 1
                add(resolved)
        if self._mlfid is not None:
            self._before = (self._before + buf)[-RECENT_BYTES:] if len(buf) < RECENT_BYTES \
                else buf[-RECENT_BYTES:]
        stats.matched += matched
        stats.nofail += nofails
        stats.ignored += ignored
        per_alt = stats.per_alternative
        for k, n in enumerate(counts):
            if n:
                per_alt[k] = per_alt.get(k, 0) + n
        return out

    # --- failures named by their connection (fail2ban's mlfid) ----------------------------

    def _address(self, m: re.Match[bytes], k: int) -> bytes | None:
        for i in self._addr_groups[k]:
            v = m.group(i)
            if v is not None:
                return v
        return None

    def _wait(self, conn: bytes, m: re.Match[bytes], k: int, at: float | None) -> None:
        if conn not in self._pending and len(self._pending) >= MLFID_PENDING_MAX:
            del self._pending[next(iter(self._pending))]  # the oldest connection waits no more
        self._pending.setdefault(conn, []).append((m, k, at))

    def _resolve(self, buf: bytes) -> list[Raw]:
        """Failures waiting for an address that a line of the same connection gives: the
        nearest such line before the failure (in ``buf``, then in the last 256 KiB read
        before it), else the first after it. As fail2ban merges a connection's lines, the
        waiting failures count once, and not at all when that line is a failure itself."""
        out: list[Raw] = []
        for conn in list(self._pending):
            waiting = self._pending[conn]
            m0 = waiting[0][0]
            here = m0.string is buf
            found = self._near(buf, conn, m0.pos, backwards=True) if here else None
            if found is None and here:
                found = self._near(self._before, conn, len(self._before), backwards=True)
            if found is None:
                found = self._near(buf, conn, m0.endpos if here else 0, backwards=False)
                if found is not None and found[1]:
                    del self._pending[conn]  # that failure already counts, with its address
                    continue
            if found is None:
                continue
            m, k, at = waiting[-1]
            out.append((m, k, at, "", found[0].decode("utf-8", "replace")))
            del self._pending[conn]
        return out

    def _near(self, buf: bytes, conn: bytes, at: int, *, backwards: bool
              ) -> tuple[bytes, bool] | None:
        """(address, whether that line is a failure) of the connection's nearest line."""
        c = self.compiled
        for _ in range(16):  # lines of this connection looked at, at most
            hit = buf.rfind(conn, 0, at) if backwards else buf.find(conn, at)
            if hit == -1:
                return None
            start = buf.rfind(b"\n", 0, hit) + 1
            end = buf.find(b"\n", hit)
            end = len(buf) if end == -1 else end
            m = c.regex.match(buf, start, end)
            if m is not None and m.group("_mlfid") == conn:
                k = c.alternative(m)
                addr = self._address(m, k)
                if addr is not None:
                    nofail = any(m.group(i) is not None for i in c.nofail_groups[k])
                    return addr, not nofail
            at = start - 1 if backwards else end + 1
            if backwards and at < 0:
                return None
        return None
