"""FileSource on real files: latency, logrotate's two styles, restarts, huge and hostile input."""

from __future__ import annotations

import itertools
import json
import os
import random
import shutil
import statistics
import threading
import time

import pytest

from agent.watches.sources import BATCH_MAX, LineCutter, open_source
from agent.watches.sources.files import FileSource
from tests.watches.sources.follow import Follower, check_batches


def numbered(a: int, b: int, tag: str = "line") -> bytes:
    return b"".join(f"{tag} {i:06d}\n".encode() for i in range(a, b))


def append(path, data: bytes) -> None:
    with open(path, "ab") as fh:
        fh.write(data)


def test_appended_line_arrives_within_milliseconds(tmp_path) -> None:
    log = tmp_path / "app.log"
    log.write_bytes(numbered(0, 3))
    # a 10 s poll: whatever arrives sooner was brought by inotify
    with Follower(FileSource(str(log), poll_s=10)) as f:
        f.wait_lines(3)
        delays = []
        for i in range(20):
            t = time.monotonic()
            append(log, f"fresh {i}\n".encode())
            f.wait_lines(i + 1, b"fresh", timeout=2)
            delays.append(f.arrived[-1] - t)
            time.sleep(0.01)
    assert f.lines(b"fresh") == [f"fresh {i}\n".encode() for i in range(20)]
    assert statistics.median(delays) < 0.02, delays
    assert max(delays) < 0.5, delays
    assert f.errors == []


def test_rotation_by_rename_every_line_once_in_order(tmp_path) -> None:
    """logrotate's default: mv log log.1, create log, signal the writer, which writes to its
    old descriptor until it reopens the path."""
    log = tmp_path / "app.log"
    log.write_bytes(numbered(0, 10))
    with Follower(FileSource(str(log))) as f:
        f.wait_lines(10)
        old = open(log, "ab", buffering=0)  # noqa: SIM115 (the writer's descriptor)
        old.write(numbered(10, 20))
        os.rename(log, tmp_path / "app.log.1")
        old.write(numbered(20, 30))  # after the rename
        f.wait_lines(30)
        log.write_bytes(b"")  # logrotate's create: empty, the writer not yet reopened
        old.write(numbered(30, 35) + b"partial without newline")
        f.wait_lines(35)
        old.close()  # the writer reopens the path
        append(log, numbered(35, 50))
        f.wait_lines(51)
    assert f.data == numbered(0, 35) + b"partial without newline\n" + numbered(35, 50)
    check_batches(f.batches)
    assert f.errors == []


def test_rotation_under_a_busy_writer(tmp_path) -> None:
    """A writer appending as fast as it can while the log is rotated five times (it reopens
    the path a few lines after each rename, as a daemon does on SIGHUP)."""
    log = tmp_path / "busy.log"
    log.write_bytes(b"")
    reopen = threading.Event()
    done = threading.Event()
    total = 40_000

    def writer() -> None:
        fh = open(log, "ab", buffering=0)  # noqa: SIM115 (reopened on "SIGHUP")
        for i in range(total):
            fh.write(f"busy {i:06d} {'x' * random.randint(0, 80)}\n".encode())
            if reopen.is_set() and i % 97 == 0:
                fh.close()
                fh = open(log, "ab", buffering=0)  # noqa: SIM115
                reopen.clear()
        fh.close()
        done.set()

    with Follower(FileSource(str(log))) as f:
        t = threading.Thread(target=writer)
        t.start()
        rotations = 0
        while not done.is_set() and rotations < 5:
            time.sleep(0.05)
            os.rename(log, tmp_path / f"busy.log.{rotations}")
            open(log, "ab").close()
            reopen.set()
            rotations += 1
        t.join()
        f.wait_lines(total, b"busy", timeout=30)
        time.sleep(0.2)
        f.drain()
    got = [int(line.split()[1]) for line in f.lines()]
    assert rotations >= 2
    assert got == list(range(total))
    check_batches(f.batches)


def test_copytruncate(tmp_path) -> None:
    log = tmp_path / "app.log"
    log.write_bytes(numbered(0, 10))
    with Follower(FileSource(str(log))) as f:
        f.wait_lines(10)
        shutil.copyfile(log, tmp_path / "app.log.1")
        with open(log, "r+b") as fh:
            fh.truncate(0)
        append(log, numbered(10, 15))
        f.wait_lines(15)
        append(log, numbered(15, 40))  # past the old offset again
        f.wait_lines(40)
        time.sleep(0.2)
        f.drain()
    assert f.data == numbered(0, 40)
    assert f.batches[-1].position["offset"] == len(numbered(10, 40))


def test_deleted_and_created_again_is_read_from_its_start(tmp_path) -> None:
    log = tmp_path / "app.log"
    log.write_bytes(numbered(0, 5))
    with Follower(FileSource(str(log))) as f:
        f.wait_lines(5)
        log.unlink()
        log.write_bytes(numbered(5, 8))
        f.wait_lines(8)
        log.unlink()
        time.sleep(0.2)
        log.write_bytes(numbered(8, 9))
        f.wait_lines(9)
    assert f.data == numbered(0, 9)


def test_restart_mid_file_resumes_after_the_last_batch(tmp_path) -> None:
    log = tmp_path / "app.log"
    log.write_bytes(numbered(0, 100) + b"half a li")
    with Follower(FileSource(str(log))) as first:
        first.wait_lines(100)
        time.sleep(0.1)
    position = json.loads(json.dumps(first.last_position()))  # as the consumer stores it
    assert position["offset"] == len(numbered(0, 100))
    append(log, b"ne\n" + numbered(100, 150))  # written while the agent was down
    with Follower(FileSource(str(log), position)) as second:
        second.wait_lines(51)
        append(log, numbered(150, 200))
        second.wait_lines(101)
        time.sleep(0.1)
        second.drain()
    assert first.data + second.data == numbered(0, 100) + b"half a line\n" + numbered(100, 200)


def test_rotated_while_stopped_reads_the_old_files_rest_then_the_new(tmp_path) -> None:
    log = tmp_path / "auth.log"
    log.write_bytes(numbered(0, 50))
    with Follower(FileSource(str(log))) as first:
        first.wait_lines(50)
    position = first.last_position()
    append(log, numbered(50, 60) + b"cut short")
    os.rename(log, tmp_path / "auth.log.1")
    log.write_bytes(numbered(60, 70))
    (tmp_path / "auth.log.2.gz").write_bytes(b"older, compressed")
    with Follower(open_source("file", str(log), position)) as second:
        second.wait_lines(21)
        append(log, numbered(70, 75))
        second.wait_lines(26)
    assert second.data == numbered(50, 60) + b"cut short\n" + numbered(60, 75)
    assert second.errors == []


def test_position_of_another_file_falls_back_to_the_look_back(tmp_path) -> None:
    log = tmp_path / "app.log"
    log.write_bytes(numbered(0, 10))
    with Follower(FileSource(str(log))) as first:
        first.wait_lines(10)
    position = first.last_position()
    log.unlink()  # gone for good; a new file of the same size and another start
    log.write_bytes(numbered(100, 110))
    with Follower(FileSource(str(log), position, lookback_bytes=len(numbered(0, 3)) + 2)) as f:
        f.wait_lines(3)
        time.sleep(0.1)
        f.drain()
    assert f.data == numbered(107, 110)  # the look-back, from the next line start


def test_first_sight_of_a_50_mib_file_reads_only_the_look_back(tmp_path) -> None:
    log = tmp_path / "big.log"
    chunk = numbered(0, 20_000, tag="old-line-with-some-padding")
    with open(log, "wb") as fh:
        while fh.tell() < 50 << 20:
            fh.write(chunk)
        fh.write(b"the last line\n")
    size = log.stat().st_size
    t = time.monotonic()
    with Follower(FileSource(str(log))) as f:
        f.wait(lambda f: f.data.endswith(b"the last line\n"), what="the last line")
        elapsed = time.monotonic() - t
        time.sleep(0.2)
        f.drain()
        lag = f.source.lag()
    assert len(f.data) <= 1 << 20
    assert len(f.data) > (1 << 20) - 100
    assert f.data.startswith(b"old-line-with-some-padding ")  # a whole line, not a tail
    assert f.batches[-1].position["offset"] == size
    assert lag.bytes_behind == 0 and lag.bytes_read == len(f.data)
    assert elapsed < 2, elapsed


def test_a_1_mib_line_is_cut_and_counted(tmp_path) -> None:
    log = tmp_path / "app.log"
    log.write_bytes(b"before\n")
    with Follower(FileSource(str(log))) as f:
        f.wait_lines(1)
        with open(log, "ab", buffering=0) as fh:  # arriving in pieces, as a writer writes it
            for _ in range(16):
                fh.write(b"A" * (1 << 16))
                time.sleep(0.005)
            fh.write(b"\nafter\n")
        append(log, b"B" * (1 << 20) + b"\nlast\n")  # and in one write
        f.wait_lines(5)
        lag = f.source.lag()
    assert f.lines() == [b"before\n", b"A" * 65536 + b"\n", b"after\n", b"B" * 65536 + b"\n",
                         b"last\n"]
    assert lag.truncated_lines == 2
    check_batches(f.batches)


def test_bytes_pass_through_untouched(tmp_path) -> None:
    log = tmp_path / "app.log"
    hostile = b"bad \xff\xfe utf-8 \xc3\x28 \x00 nul \x1b[31m escape\r\n" + bytes(range(256)).replace(
        b"\n", b"") + b"\n"
    log.write_bytes(b"")
    with Follower(FileSource(str(log))) as f:
        append(log, hostile)
        f.wait_lines(2)
    assert f.data == hostile


def test_missing_file_is_reported_once_and_read_when_it_appears(tmp_path) -> None:
    log = tmp_path / "later.log"
    with Follower(FileSource(str(log), poll_s=0.1)) as f:
        f.wait(lambda f: f.errors, what="a SourceError")
        time.sleep(0.5)  # five polls: still one report
        f.drain()
        assert len(f.errors) == 1 and "does not exist" in f.errors[0].message
        log.write_bytes(numbered(0, 5))
        f.wait_lines(5)
        log.unlink()
        f.wait(lambda f: len(f.errors) == 2, what="the second absence reported")
        log.write_bytes(numbered(5, 6))
        f.wait_lines(6)
    assert f.data == numbered(0, 6)
    assert len(f.errors) == 2


def test_missing_directory_appearing_later(tmp_path) -> None:
    log = tmp_path / "not-yet" / "app.log"
    with Follower(FileSource(str(log), poll_s=0.1)) as f:
        f.wait(lambda f: f.errors, what="a SourceError")
        log.parent.mkdir()
        time.sleep(0.3)  # the directory's watch is taken at the next poll
        log.write_bytes(numbered(0, 2))
        f.wait_lines(2)
        append(log, numbered(2, 3))
        f.wait_lines(3)
    assert f.data == numbered(0, 3)
    assert len(f.errors) == 1


def test_stop_is_prompt_on_a_quiet_file(tmp_path) -> None:
    log = tmp_path / "quiet.log"
    log.write_bytes(b"")
    f = Follower(FileSource(str(log), poll_s=30)).__enter__()
    time.sleep(0.2)
    assert f.stop() < 1


@pytest.mark.parametrize("seed", range(5))
def test_line_cutter_any_chunking_gives_the_same_lines(seed: int) -> None:
    rnd = random.Random(seed)
    lines = [bytes(rnd.randrange(256) for _ in range(rnd.choice([0, 1, 5, 50, 99, 100, 101, 300])))
             .replace(b"\n", b"") for _ in range(400)]
    stream = b"".join(ln + b"\n" for ln in lines) + b"tail"
    cutter = LineCutter(max_line=100)
    got, ends = [], []
    i = 0
    while i < len(stream):
        n = rnd.choice([1, 2, 7, 64, 150, 4096])
        for data, end in cutter.feed(stream[i:i + n]):
            got.append(data)
            ends.append(i + end)  # where in the stream the piece ends
        i += n
    assert b"".join(got) == b"".join(ln[:100] + b"\n" for ln in lines)
    # each piece ends just after the newline of its last line in the stream
    line_ends = set(itertools.accumulate(len(ln) + 1 for ln in lines))
    assert set(ends) <= line_ends and ends[-1] == max(line_ends)
    assert cutter.truncated == sum(len(ln) > 100 for ln in lines)
    assert cutter.held == 4 and cutter.flush() == b"tail\n" and cutter.held == 0


def test_line_cutter_pieces_stay_under_one_mib() -> None:
    cutter = LineCutter()
    stream = numbered(0, 300_000)  # 3.6 MB in one feed
    pieces = cutter.feed(stream)
    assert all(len(d) <= BATCH_MAX and d.endswith(b"\n") for d, _ in pieces)
    assert b"".join(d for d, _ in pieces) == stream
    assert pieces[-1][1] == len(stream)
    ends = [e for _, e in pieces]
    assert ends == sorted(ends) and all(stream[e - 1:e] == b"\n" for e in ends)
