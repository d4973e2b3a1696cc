"""Sliding windows per key: ``threshold`` matches of one key within ``within`` seconds fire.

Times are the lines' own (so a replayed log gives the answer it gave when it was written);
a firing empties that key's window, as fail2ban forgets an address's failures when it bans
it, so the same key fires again only after ``threshold`` new matches. The number of keys
held is capped (oldest activity evicted first) so a flood of distinct keys cannot exhaust
memory.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from typing import Any


class KeyWindows:
    def __init__(self, threshold: int, within: float, *, max_keys: int = 100_000) -> None:
        self.threshold = threshold
        self.within = within
        self.max_keys = max_keys
        self._keys: OrderedDict[str, deque[float]] = OrderedDict()

    def add(self, key: str, at: float) -> int:
        """Count one match; the number of matches in the window when it fires, else 0."""
        times = self._keys.get(key)
        if times is None:
            if len(self._keys) >= self.max_keys:
                self._keys.popitem(last=False)
            times = self._keys[key] = deque()
        else:
            self._keys.move_to_end(key)
        times.append(at)
        horizon = at - self.within
        while times[0] < horizon:
            times.popleft()
        if len(times) >= self.threshold:
            n = len(times)
            del self._keys[key]
            return n
        return 0

    def count(self, key: str) -> int:
        times = self._keys.get(key)
        return len(times) if times else 0

    def __len__(self) -> int:
        return len(self._keys)

    def dump(self) -> dict[str, Any]:
        """JSON-able state, persisted with the source's position."""
        return {"threshold": self.threshold, "within": self.within,
                "keys": {k: list(v) for k, v in self._keys.items()}}

    def load(self, doc: dict[str, Any], now: float) -> None:
        """Restore a dump (windows from a different threshold/window setting still apply:
        their times are kept, judged by the current setting)."""
        horizon = now - self.within
        for key, times in (doc.get("keys") or {}).items():
            kept = deque(float(t) for t in times if float(t) >= horizon)
            if kept:
                self._keys[str(key)] = kept


class RateWindow:
    """Lines and matching lines per second over a trailing window, for log metrics."""

    def __init__(self, window: float) -> None:
        self.window = window
        self._buckets: deque[list[float]] = deque()  # [second, lines, matches]

    def add(self, at: float, lines: int, matches: int) -> None:
        sec = float(int(at))
        if self._buckets and self._buckets[-1][0] == sec:
            self._buckets[-1][1] += lines
            self._buckets[-1][2] += matches
        else:
            self._buckets.append([sec, float(lines), float(matches)])
        self._trim(at)

    def _trim(self, now: float) -> None:
        while self._buckets and self._buckets[0][0] <= now - self.window:
            self._buckets.popleft()

    def rates(self, now: float) -> tuple[float, float, float]:
        """(lines per second, matches per second, share of matching lines in percent)."""
        self._trim(now)
        lines = sum(b[1] for b in self._buckets)
        matches = sum(b[2] for b in self._buckets)
        share = 100.0 * matches / lines if lines else 0.0
        return lines / self.window, matches / self.window, share
