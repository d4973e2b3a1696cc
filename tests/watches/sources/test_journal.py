"""JournalSource against a real journald: a systemd test host, its journalctl through
``docker exec``, lines written by transient services of one unit name."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from typing import Any

import pytest

from agent.watches.sources import open_source
from agent.watches.sources.journal import JournalSource, format_entry
from tests.watches.sources.follow import Follower, check_batches

pytestmark = pytest.mark.e2e

UNIT = "oa-test.service"


@pytest.fixture(scope="module")
def host(docker_client: Any) -> Iterator[Any]:
    from tests.harness.testhost import TestHost

    h = TestHost(docker_client).start()
    try:
        yield h
    finally:
        h.remove()


def emit(host: Any, script: str, *props: str, unit: str = UNIT) -> None:
    """Run `script` as the unit (a transient service) and wait for it to finish."""
    r = host.exec(["systemd-run", f"--unit={unit}", "--wait", "--collect", "--quiet",
                   *(f"--property={p}" for p in props), "sh", "-c", script], timeout=60)
    assert r.exit_code == 0, r.output


def source(host: Any, position: dict | None = None, **kw: Any) -> JournalSource:
    return JournalSource(UNIT, position, journalctl=("docker", "exec", host.name, "journalctl"),
                         **kw)


def numbered(a: int, b: int, tag: str = "oa-line") -> str:
    return "; ".join(f"echo {tag}-{i}" for i in range(a, b))


def said(f: Follower, tag: str) -> list[bytes]:
    """What the unit's processes wrote (not systemd's "Started ... echo tag-0; ...")."""
    return [ln.split(b": ", 1)[1] for ln in f.lines(f": {tag}-".encode())]


def test_lines_arrive_formatted_as_fail2ban_sees_them(host: Any) -> None:
    with Follower(source(host)) as f:
        time.sleep(1)  # journalctl is following
        t = time.time()
        emit(host, "echo 'Failed password for root from 203.0.113.7 port 4242 ssh2'",
             "SyslogIdentifier=sshd")
        emit(host, "printf 'binary \\377\\376 message\\n'")
        f.wait_lines(1, b": binary")
    ssh = f.lines(b": Failed password")
    assert len(ssh) == 1
    assert re.fullmatch(rb"%s sshd\[\d+\]: Failed password for root from 203\.0\.113\.7 "
                        rb"port 4242 ssh2\n" % host.name.encode(), ssh[0]), ssh
    assert re.fullmatch(rb"%s sh\[\d+\]: binary \xff\xfe message\n" % host.name.encode(),
                        f.lines(b": binary")[0])
    stamps = [s for b in f.batches for s in (b.stamps or [])]
    assert stamps and all(t - 5 < s < time.time() + 5 for s in stamps)
    check_batches(f.batches)
    assert all(b.position["cursor"].startswith("s=") for b in f.batches)
    assert f.errors == []


def test_restart_from_the_cursor_repeats_and_misses_nothing(host: Any) -> None:
    tag = "restart"
    with Follower(source(host)) as first:
        time.sleep(1)
        emit(host, numbered(0, 20, tag))
        first.wait(lambda f: len(said(f, tag)) >= 20, what="20 lines")
    position = first.last_position()
    emit(host, numbered(20, 30, tag))  # while the agent is down
    with Follower(open_source("journal", UNIT, position,
                              journalctl=("docker", "exec", host.name, "journalctl"))) as second:
        second.wait(lambda f: len(said(f, tag)) >= 10, what="the 10 written while down")
        emit(host, numbered(30, 35, tag))
        second.wait(lambda f: len(said(f, tag)) >= 15, what="5 more")
        time.sleep(0.5)
        second.drain()
    assert said(first, tag) + said(second, tag) == [f"{tag}-{i}\n".encode() for i in range(35)]
    assert second.source.lag().lines_read == len(second.lines())
    check_batches(second.batches)


def test_look_back_on_first_start_is_capped(host: Any) -> None:
    unit = "oa-lookback.service"
    emit(host, numbered(0, 50, "back"), unit=unit)
    src = JournalSource(unit, journalctl=("docker", "exec", host.name, "journalctl"),
                        lookback_lines=10)
    with Follower(src) as f:
        f.wait_lines(1, b": back-49")
        time.sleep(0.5)
        f.drain()
    assert len(f.lines()) == 10
    assert said(f, "back")[-1] == b"back-49\n"


def test_a_unit_that_never_logged_is_followed_once_it_does(host: Any) -> None:
    """journalctl --follow --unit shows nothing for a unit without any entry when it starts
    (systemd 252); the source waits for the first entry, then follows."""
    unit = "oa-newborn.service"
    src = JournalSource(unit, journalctl=("docker", "exec", host.name, "journalctl"),
                        poll_s=0.2)
    with Follower(src) as f:
        time.sleep(1)
        emit(host, numbered(0, 3, "newborn"), unit=unit)
        f.wait(lambda f: len(said(f, "newborn")) >= 3, what="the first lines")
        emit(host, numbered(3, 6, "newborn"), unit=unit)
        f.wait(lambda f: len(said(f, "newborn")) >= 6, what="the next lines")
    assert said(f, "newborn") == [f"newborn-{i}\n".encode() for i in range(6)]
    assert f.errors == []


def test_journalctl_dying_is_reported_and_restarted_from_the_cursor(host: Any) -> None:
    tag = "dying"
    with Follower(source(host, backoff=(0.2, 1.0))) as f:
        time.sleep(1)
        emit(host, numbered(0, 5, tag))
        f.wait(lambda f: len(said(f, tag)) >= 5, what="5 lines")
        f.source._proc.kill()  # the journalctl child this source started
        f.wait(lambda f: f.errors, what="the death reported")
        emit(host, numbered(5, 10, tag))
        f.wait(lambda f: len(said(f, tag)) >= 10, what="the lines after the restart")
        time.sleep(0.5)
        f.drain()
    assert "journalctl exited" in f.errors[0].message
    assert said(f, tag) == [f"{tag}-{i}\n".encode() for i in range(10)]


def test_stop_kills_the_child_promptly(host: Any) -> None:
    f = Follower(source(host)).__enter__()
    time.sleep(1)
    proc = f.source._proc
    assert f.stop() < 3
    assert proc.poll() is not None


def test_bad_cursor_falls_back_to_the_look_back(host: Any) -> None:
    emit(host, numbered(0, 3, "badcursor"))
    with Follower(source(host, {"cursor": "not-a-cursor"}, backoff=(0.1, 0.5))) as f:
        f.wait_lines(1, b": badcursor-2")
    assert f.errors and "cursor" in f.errors[0].message


def test_format_entry_fields() -> None:
    """journalctl's JSON shapes: binary as byte lists, repeated fields, null, fallbacks."""
    base = {"_HOSTNAME": "web01", "SYSLOG_IDENTIFIER": "sshd", "_PID": "77"}
    assert format_entry({**base, "MESSAGE": "hi"}) == b"web01 sshd[77]: hi"
    assert format_entry({**base, "SYSLOG_PID": "5", "MESSAGE": "hi"}) == b"web01 sshd[5]: hi"
    assert format_entry({**base, "MESSAGE": [104, 255, 10]}) == b"web01 sshd[77]: h\xff"
    assert format_entry({**base, "MESSAGE": ["a", [98]]}) == b"web01 sshd[77]: a b"
    assert format_entry({**base, "MESSAGE": None}) == b"web01 sshd[77]: "
    assert format_entry({**base, "MESSAGE": "one\ntwo\n"}) == b"web01 sshd[77]: one#012two"
    assert format_entry({"_HOSTNAME": "h", "_COMM": "cron", "_PID": "3", "MESSAGE": "m"}) \
        == b"h cron[3]: m"
    assert format_entry({"_HOSTNAME": "h", "SYSLOG_IDENTIFIER": "kernel", "MESSAGE": "oops",
                         "__MONOTONIC_TIMESTAMP": "1500000"}) == b"h kernel: [    1.500000] oops"
