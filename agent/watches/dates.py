"""The time a log line carries, so that replaying an old log counts it in its own time.

Recognised: traditional syslog (``Mar 14 00:00:07``, local time, the year inferred as the
latest one that does not put the line more than a day in the future, optional fraction and
year), ISO 8601 / RFC 3339 (``2026-03-14T00:00:07.123+01:00``, local time when no zone), and
the common log format of web servers (``[14/Mar/2026:00:00:07 +0000]``). A line without a
recognised time is counted at the time it was read.
"""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime, timedelta

_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_MON = "(?:" + "|".join(_MONTHS) + ")"
_SYSLOG = rf"{_MON} [ \d]\d \d\d:\d\d:\d\d(?:\.\d+)?(?: \d{{4}}(?!:))?"
_ISO = r"\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d(?:[.,]\d+)?(?:Z|[+-]\d\d:?\d\d)?"
_CLF = rf"\[\d\d/{_MON}/\d{{4}}:\d\d:\d\d:\d\d [+-]\d{{4}}\]"

# Embedded in a fail2ban filter's regex: the date a line starts with.
DATE_AT_START = f"(?P<_date>{_SYSLOG}|{_ISO}|{_CLF})"
_ANYWHERE = re.compile(f"({_SYSLOG}|{_ISO}|{_CLF})".encode())
_MONTH_NO = {m.encode(): i + 1 for i, m in enumerate(_MONTHS)}
_CACHE_MAX = 4096


class LineClock:
    """Parses line times, remembering recent ones (consecutive lines share their second)."""

    def __init__(self, now: float | None = None) -> None:
        self._cache: dict[bytes, float | None] = {}
        self._midnights: dict[bytes, float] = {}
        self._now = now

    def find(self, line: bytes | memoryview, start: int = 0, end: int | None = None
             ) -> float | None:
        """The first recognised time anywhere in ``line[start:end]``."""
        m = _ANYWHERE.search(line, start, len(line) if end is None else end)
        return self.parse(m.group(1)) if m else None

    def parse(self, text: bytes) -> float | None:
        midnight = self._midnights.get(text[:6])
        if midnight is not None and len(text) == 15:  # syslog, seconds only: the hot path
            try:
                return midnight + int(text[7:9]) * 3600 + int(text[10:12]) * 60 + \
                    int(text[13:15])
            except ValueError:
                return None
        hit = self._cache.get(text, False)
        if hit is not False:
            return hit
        if len(self._cache) >= _CACHE_MAX:
            self._cache.clear()
        value = self._parse(text)
        self._cache[text] = value
        return value

    def _parse(self, text: bytes) -> float | None:
        try:
            s = text.decode("ascii")
            if s[:1] == "[":  # common log format
                return datetime.strptime(s[1:-1], "%d/%b/%Y:%H:%M:%S %z").timestamp()
            if s[:1].isdigit():
                return _iso(s)
            return self._syslog(text, s)
        except (ValueError, UnicodeDecodeError, OverflowError, KeyError):
            return None

    def _syslog(self, raw: bytes, s: str) -> float:
        midnight = self._midnights.get(raw[:6])
        if midnight is None:
            midnight = self._midnight(s)
            self._midnights[raw[:6]] = midnight
        hh, mm, rest = int(s[7:9]), int(s[10:12]), s[13:]
        sec_text, _, year_text = rest.partition(" ")
        if year_text:
            midnight = datetime(int(year_text), _MONTH_NO[s[:3].encode()], int(s[4:6])
                                ).timestamp()
        # local midnight + wall-clock offset: off by the DST shift on the two change days
        return midnight + hh * 3600 + mm * 60 + float(sec_text)

    def _midnight(self, s: str) -> float:
        """Local midnight of a year-less syslog day: this year's, unless that is more than
        a day ahead of now (then last year's: December lines read in January)."""
        month, day = _MONTH_NO[s[:3].encode()], int(s[4:6])
        now = self._now if self._now is not None else time.time()
        year = time.localtime(now).tm_year
        at = datetime(year, month, day).timestamp()
        return at if at <= now + 86400 else datetime(year - 1, month, day).timestamp()


def _iso(s: str) -> float:
    s = s.replace(",", ".").replace(" ", "T", 1)
    if s.endswith("Z"):
        s = s[:-1] + "+00:00"
    elif len(s) > 5 and s[-5] in "+-" and s[-3] != ":":
        s = s[:-2] + ":" + s[-2:]
    dt = datetime.fromisoformat(s)
    if dt.tzinfo is None:
        return dt.timestamp()
    return (dt - datetime(1970, 1, 1, tzinfo=UTC)) / timedelta(seconds=1)
