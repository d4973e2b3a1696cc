"""Plain-regex watches, the prefilter engines giving one answer, line times, hostile lines."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pytest

from agent.playbook.models.rules import WatchSpec
from agent.watches.dates import LineClock
from agent.watches.matcher import Matcher, ScanStats, compile_watch
from agent.watches.prefilter import Prefilter
from tests.watches.corpus import sshd_log

SSH = r"Failed password for (invalid user )?\S+ from (?P<ip>[0-9a-fA-F.:]+) port \d+"


def spec(pattern: object, **kw: object) -> WatchSpec:
    return WatchSpec.model_validate({"name": "w", "log": "/x", "pattern": pattern, **kw})


def scan(w: WatchSpec, buf: bytes, engine: str | None = None) -> tuple[list[tuple], ScanStats]:
    m = Matcher(compile_watch(w))
    if engine == "bytes.find":
        m.prefilter = Prefilter(m.compiled.literals())
        m.prefilter._db = None
        m._tuned = True
    elif engine == "every line":
        m.prefilter = Prefilter(None)
        m._tuned = True
    stats = ScanStats()
    found = [(lm.line, lm.counts, lm.why_not, lm.groups, lm.at) for lm in m.scan(buf, stats)]
    if engine:
        assert m.prefilter.engine == engine
    return found, stats


def test_plain_pattern_groups_ignore_and_counts() -> None:
    buf = (b"Mar 14 10:00:00 h sshd[1]: Failed password for root from 192.0.2.1 port 22 ssh2\n"
           b"Mar 14 10:00:01 h sshd[2]: Accepted password for bob from 192.0.2.9 port 22\n"
           b"Mar 14 10:00:02 h sshd[3]: Failed password for invalid user x from 127.0.0.1 "
           b"port 9 ssh2\n")
    found, stats = scan(spec(SSH, key="ip", ignore=[r"from 127\.0\.0\.1 "]), buf)
    assert stats.lines == 3 and stats.matched == 1 and stats.ignored == 1
    assert [(f[1], f[2], f[3].get("ip")) for f in found] == [
        (True, "", "192.0.2.1"), (False, "ignored", "127.0.0.1")]


@pytest.mark.parametrize("pattern", [SSH, {"fail2ban_filter": "/etc/fail2ban/filter.d/sshd.conf"}])
def test_prefilter_engines_agree(pattern: object) -> None:
    buf = sshd_log(copies=5)
    results = {e: scan(spec(pattern), buf, e) for e in ("hyperscan", "bytes.find", "every line")}
    counted = {e: [f[:2] + (f[3],) for f in r[0] if f[1]] for e, r in results.items()}
    assert counted["hyperscan"] == counted["bytes.find"] == counted["every line"]
    assert len(counted["hyperscan"]) >= 5 * 5


def test_pattern_without_literals_tries_every_line() -> None:
    w = spec(r"^(?P<ip>\S+) \S+ \S+ \[")
    m = Matcher(compile_watch(w))
    assert m.prefilter.engine == "every line"
    found = m.scan(b'192.0.2.7 - - [14/Mar/2026:10:00:00 +0000] "GET / HTTP/1.1" 500 1\n'
                   b"junk\n", ScanStats())
    assert [lm.value("ip") for lm in found] == ["192.0.2.7"]
    assert found[0].at == datetime(2026, 3, 14, 10, tzinfo=UTC).timestamp()


def test_hostile_lines_are_data() -> None:
    buf = sshd_log()
    found, stats = scan(spec(SSH, key="ip"), buf)
    ips = {f[3]["ip"] for f in found}
    # the command-looking user names are part of the line, never of the key
    assert not any(";" in ip or "$" in ip or " " in ip for ip in ips)
    assert "203.0.113.39" in ips  # the line ending in bytes that are not UTF-8
    assert stats.lines == buf.count(b"\n")
    long_line = [f for f in found if len(f[0]) > 4000]
    assert long_line and long_line[0][3]["ip"] == "203.0.113.38"


def test_line_times() -> None:
    clock = LineClock(now=datetime(2026, 3, 20).timestamp())
    assert clock.parse(b"Mar 14 00:00:07") == datetime(2026, 3, 14, 0, 0, 7).timestamp()
    # December lines read in January belong to last year
    jan = LineClock(now=datetime(2027, 1, 2).timestamp())
    assert jan.parse(b"Dec 31 23:59:59") == datetime(2026, 12, 31, 23, 59, 59).timestamp()
    assert clock.find(b"x 2026-03-14T01:02:03.5+01:00 y") == \
        datetime(2026, 3, 14, 0, 2, 3, 500000, tzinfo=UTC).timestamp()
    assert clock.find(b"2026-03-14 01:02:03 local") == datetime(2026, 3, 14, 1, 2, 3).timestamp()
    assert clock.find(b'1.2.3.4 - - [14/Mar/2026:10:00:00 -0200] "GET /"') == \
        datetime(2026, 3, 14, 12, tzinfo=UTC).timestamp()
    assert clock.find(b"no time here") is None
    assert clock.parse(b"Feb 30 00:00:00") is None
    assert abs((LineClock().parse(time.strftime("%b %d %H:%M:%S").encode()) or 0)
               - time.time()) < 5
