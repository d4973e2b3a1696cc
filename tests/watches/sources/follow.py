"""A source run the way the agent runs one: in its own thread, its output collected."""

from __future__ import annotations

import queue
import threading
import time
from typing import Any

from agent.watches.sources import Batch, SourceError


class Follower:
    """Runs `source` in a thread; `batches` and `errors` fill as its queue is drained."""

    def __init__(self, source: Any) -> None:
        self.source = source
        self.out: queue.Queue[Batch | SourceError] = queue.Queue()
        self.stop_event = threading.Event()
        self.batches: list[Batch] = []
        self.errors: list[SourceError] = []
        self.arrived: list[float] = []  # monotonic time each batch was taken off the queue
        self.thread = threading.Thread(target=source.run, args=(self.out, self.stop_event),
                                       daemon=True)

    def __enter__(self) -> Follower:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self, within: float = 5.0) -> float:
        """Stop the source; how long its thread took to end."""
        t = time.monotonic()
        self.stop_event.set()
        self.thread.join(within)
        assert not self.thread.is_alive(), f"{self.source.name} did not stop within {within}s"
        self.drain(0)
        return time.monotonic() - t

    def drain(self, timeout: float = 0.05) -> None:
        end = time.monotonic() + timeout
        while True:
            try:
                item = self.out.get(timeout=max(0.0, end - time.monotonic()))
            except queue.Empty:
                return
            if isinstance(item, SourceError):
                self.errors.append(item)
            else:
                self.batches.append(item)
                self.arrived.append(time.monotonic())

    @property
    def data(self) -> bytes:
        return b"".join(b.data for b in self.batches)

    def lines(self, containing: bytes = b"") -> list[bytes]:
        return [ln for ln in self.data.splitlines(keepends=True) if containing in ln]

    def wait(self, pred: Any, timeout: float = 10.0, what: str = "") -> None:
        """Drain until pred(self) holds; fails with what was seen when it does not in time."""
        end = time.monotonic() + timeout
        while not pred(self):
            if time.monotonic() > end:
                raise AssertionError(f"timed out waiting for {what or pred}; got "
                                     f"{self.data[-2000:]!r}, errors {self.errors}")
            self.drain(0.05)

    def wait_lines(self, n: int, containing: bytes = b"", timeout: float = 10.0) -> None:
        self.wait(lambda f: len(f.lines(containing)) >= n, timeout,
                  f"{n} lines containing {containing!r}")

    def last_position(self) -> dict[str, Any]:
        return self.batches[-1].position


def check_batches(batches: list[Batch]) -> None:
    """The rules every source keeps: complete lines, at most 1 MiB, one stamp per line."""
    for b in batches:
        assert b.data.endswith(b"\n") and 0 < len(b.data) <= 1 << 20
        if b.stamps is not None:
            assert len(b.stamps) == b.data.count(b"\n")
