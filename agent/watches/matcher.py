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
Raw = tuple[re.Match[bytes], int, float | None, str]  # match, alternative, time, why not


class LineMatch:
    """A matching line: which alternative matched, its own time, and whether it counts
    (not when an ignore pattern or fail2ban's NOFAIL marker says so). Groups are read on
    demand: most matches only need their key."""

    __slots__ = ("_m", "_c", "alternative", "at", "counts", "why_not")

    def __init__(self, m: re.Match[bytes], c: Compiled, alternative: int, at: float | None,
                 why_not: str) -> None:
        self._m, self._c = m, c
        self.alternative, self.at = alternative, at
        self.counts, self.why_not = not why_not, why_not

    @property
    def line(self) -> bytes:
        m = self._m
        return m.string[m.pos:m.endpos]

    def value(self, name: str) -> str | None:
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

    def tune(self, sample: bytes) -> None:
        """Choose the prefilter's literals by how rare they are in real lines."""
        self.prefilter = Prefilter(self.compiled.literals(sample))
        self._tuned = True

    def scan(self, buf: bytes, stats: ScanStats) -> list[LineMatch]:
        """The matching lines of ``buf`` (complete lines), counted into ``stats``."""
        c = self.compiled
        return [LineMatch(m, c, k, at, why) for m, k, at, why in self.scan_raw(buf, stats)]

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
            else:
                matched += 1
            add((m, k, at, why))
        stats.matched += matched
        stats.nofail += nofails
        stats.ignored += ignored
        per_alt = stats.per_alternative
        for k, n in enumerate(counts):
            if n:
                per_alt[k] = per_alt.get(k, 0) + n
        return out
