"""ContainerSource against a real Docker Engine and busybox containers."""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from agent.watches.sources import open_source
from agent.watches.sources.docker import ContainerSource, parse_ns
from tests.watches.sources.follow import Follower, check_batches

pytestmark = pytest.mark.e2e

# numbered lines, a few a millisecond apart, then one every 20 ms, forever
COUNTER = "i=0; while true; do i=$((i+1)); echo n$i; [ $i -gt 50 ] && sleep 0.02; done"
# one line per boot, the boot counted in a file the container keeps across restarts
BOOTS = ("n=$(cat /tmp/boots 2>/dev/null || echo 0); n=$((n+1)); echo $n > /tmp/boots; "
         "echo boot$n; echo err$n >&2; exec sleep 1000")


@pytest.fixture
def run(docker_client: Any, busybox_image: str) -> Iterator[Any]:
    """Start a busybox container running a shell script; all removed after the test."""
    made: list[str] = []

    def start(script: str, name: str | None = None, **kw: Any) -> Any:
        name = name or f"oa-src-{uuid.uuid4().hex[:8]}"
        made.append(name)
        return docker_client.containers.run(busybox_image, ["sh", "-c", script], name=name,
                                            detach=True, labels={"opsagent-test": "sources"},
                                            **kw)

    yield start
    for name in made:
        for c in docker_client.containers.list(all=True, filters={"name": f"^{name}$"}):
            c.remove(force=True)


def numbers(f: Follower) -> list[int]:
    return [int(m) for m in re.findall(rb"^n(\d+)$", f.data, re.M)]


def test_lines_stamps_and_a_restart_from_the_position(run: Any) -> None:
    c = run(COUNTER)
    with Follower(ContainerSource(c.name)) as first:
        first.wait(lambda f: len(numbers(f)) >= 80, what="80 lines")
    position = first.last_position()
    assert set(position) == {"since", "n_at_since"}
    time.sleep(0.5)  # lines written while the agent is down
    with Follower(open_source("container", c.name, position)) as second:
        second.wait(lambda f: len(numbers(f)) >= 40, what="40 more lines")
    got = numbers(first) + numbers(second)
    assert got == list(range(1, len(got) + 1))  # none repeated, none missed, in order
    check_batches(first.batches + second.batches)
    now = time.time()
    stamps = [s for b in second.batches for s in b.stamps]
    assert all(now - 10 < s <= now + 1 for s in stamps)
    assert stamps == sorted(stamps)
    assert not any(re.match(rb"\d{4}-\d\d-\d\dT", ln) for ln in second.lines())


def test_position_with_equal_timestamps_skips_exactly_those_delivered(run: Any) -> None:
    """Lines sharing a timestamp: the position counts how many of them were delivered."""
    c = run("echo a; echo b; echo c; sleep 1000")
    time.sleep(0.5)
    raw = c.logs(timestamps=True).splitlines()
    ts = raw[0].split(b" ", 1)[0].decode()
    with Follower(ContainerSource(c.name, {"since": ts, "n_at_since": 1})) as f:
        f.wait_lines(2)
    assert f.data == b"b\nc\n"
    with Follower(ContainerSource(c.name, {"since": ts, "n_at_since": 0})) as f:
        f.wait_lines(3)
    assert f.data == b"a\nb\nc\n"


def test_restarted_container_is_followed_again(run: Any, docker_client: Any) -> None:
    c = run(BOOTS)
    with Follower(ContainerSource(c.name, poll_s=0.2)) as f:
        f.wait_lines(2)
        c.restart(timeout=0)
        f.wait_lines(4, timeout=15)
        c.stop(timeout=0)
        time.sleep(0.5)
        c.start()
        f.wait_lines(6, timeout=15)
        time.sleep(0.5)
        f.drain()
    assert sorted(f.lines()) == [b"boot1\n", b"boot2\n", b"boot3\n", b"err1\n", b"err2\n",
                                 b"err3\n"]
    assert f.lines(b"boot") == [b"boot1\n", b"boot2\n", b"boot3\n"]
    assert f.errors == []


def test_recreated_container_and_a_missing_one(run: Any, docker_client: Any) -> None:
    name = f"oa-src-{uuid.uuid4().hex[:8]}"
    with Follower(ContainerSource(name, poll_s=0.2)) as f:
        f.wait(lambda f: f.errors, what="the missing container reported")
        assert "no container named" in f.errors[0].message
        c = run("echo first-life; sleep 1000", name=name)
        f.wait_lines(1)
        c.remove(force=True)
        time.sleep(0.5)
        run("echo second-life; sleep 1000", name=name)
        f.wait_lines(2, timeout=15)
        time.sleep(0.3)
        f.drain()
    assert f.data == b"first-life\nsecond-life\n"
    assert 1 <= len(f.errors) <= 2  # missing before the first, maybe between the two


def test_long_lines_reassembled_and_cut(run: Any) -> None:
    """The Engine splits lines at 16 KiB, each piece with its own timestamp."""
    c = run("head -c 40000 /dev/zero | tr '\\0' x; echo; head -c 100000 /dev/zero | tr '\\0' y;"
            " echo; echo short; sleep 1000")
    with Follower(ContainerSource(c.name, max_line=65536)) as f:
        f.wait_lines(3)
        lag = f.source.lag()
    assert f.lines() == [b"x" * 40000 + b"\n", b"y" * 65536 + b"\n", b"short\n"]
    assert lag.truncated_lines == 1


def test_tty_container(run: Any) -> None:
    c = run("echo one; echo two; sleep 1000", tty=True)
    with Follower(ContainerSource(c.name)) as f:
        f.wait_lines(2)
    assert f.data == b"one\r\ntwo\r\n"


def test_look_back_is_capped(run: Any) -> None:
    c = run("i=0; while [ $i -lt 500 ]; do i=$((i+1)); echo n$i; done; sleep 1000")
    time.sleep(1)
    with Follower(ContainerSource(c.name, lookback_lines=20)) as f:
        f.wait(lambda f: 500 in numbers(f), what="the last line")
        time.sleep(0.3)
        f.drain()
    assert numbers(f) == list(range(481, 501))


def test_stop_is_prompt_on_a_quiet_container(run: Any) -> None:
    c = run("echo hi; sleep 1000")
    f = Follower(ContainerSource(c.name)).__enter__()
    f.wait_lines(1)
    time.sleep(0.5)
    assert f.stop() < 1.5


def test_engine_down_is_reported_and_retried() -> None:
    calls = []

    def no_engine() -> Any:
        import docker

        calls.append(time.monotonic())
        return docker.DockerClient(base_url="unix:///nonexistent/docker.sock", timeout=2)

    with Follower(ContainerSource("whatever", client_factory=no_engine)) as f:
        f.wait(lambda f: len(calls) >= 2, timeout=10, what="a second try")
    assert len(f.errors) == 1  # one report for the outage, not one per try
    assert "not reachable" in f.errors[0].message or "nonexistent" in f.errors[0].message


def test_parse_ns() -> None:
    assert parse_ns(b"1970-01-01T00:00:01.5Z") == 1_500_000_000
    assert parse_ns(b"2024-05-01T12:00:00.000000001Z") == 1714564800_000000001
    assert parse_ns(b"2024-05-01T14:00:00+02:00") == 1714564800_000000000
    assert parse_ns(b"garbage") is None
