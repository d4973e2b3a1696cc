"""The durable notification queue (state.db) and the dispatcher that empties it.

``put`` is a local SQLite insert and nothing else, so the agent's loop never waits on Slack,
PagerDuty or an SMTP server. The :class:`Dispatcher` runs one thread per notifier: each
delivers its own notifications oldest first, and on a failure backs off (1 s doubling to
5 min, full jitter, at least the service's Retry-After) without holding up any other
notifier. Failures that cannot heal (a 4xx that is not 408/429, an SMTP 5xx) are moved to
``notify_dead`` with their reason and logged once: kept, never silently lost. A PagerDuty
notification is queued one event per row, so a retry never repeats another event.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from dataclasses import dataclass
from typing import Any

from agent import statedb
from agent.errors import OpsAgentError
from agent.notifiers.base import DeliveryError, Notification
from agent.playbook.models import Notifier


@dataclass(frozen=True)
class Item:
    seq: int
    notifier: str
    spec: Notifier
    note: Notification
    attempts: int
    created: float


class NotifyQueue:
    def __init__(self, state_dir: str) -> None:
        self.state_dir = state_dir

    def put(self, name: str, spec: Notifier, note: Notification,
            now: float | None = None) -> None:
        now = time.time() if now is None else now
        notes = ([Notification(note.host, (e,)) for e in note.events]
                 if spec.pagerduty is not None else [note])
        spec_json = spec.model_dump_json(by_alias=True, exclude_none=True)
        with statedb.connect(self.state_dir) as db:
            assert db is not None
            with statedb.transaction(db):
                db.executemany(
                    "INSERT INTO notify_queue (notifier, spec, body, created, next_at) "
                    "VALUES (?, ?, ?, ?, ?)",
                    [(name, spec_json, json.dumps(n.to_json()), now, now) for n in notes])

    def notifiers(self) -> set[str]:
        with statedb.connect(self.state_dir, create=False) as db:
            if db is None:
                return set()
            return {r[0] for r in db.execute("SELECT DISTINCT notifier FROM notify_queue")}

    def head(self, name: str) -> tuple[Item | None, float | None]:
        """The notifier's oldest notification when it is due, else when the next one is."""
        with statedb.connect(self.state_dir, create=False) as db:
            if db is None:
                return None, None
            row = db.execute("SELECT seq, notifier, spec, body, attempts, created, next_at "
                             "FROM notify_queue WHERE notifier = ? ORDER BY seq LIMIT 1",
                             (name,)).fetchone()
        if row is None:
            return None, None
        seq, notifier, spec, body, attempts, created, next_at = row
        if next_at > time.time():
            return None, next_at
        return Item(seq, notifier, Notifier.model_validate_json(spec),
                    Notification.from_json(json.loads(body)), attempts, created), None

    def done(self, seq: int) -> None:
        with statedb.connect(self.state_dir) as db:
            assert db is not None
            db.execute("DELETE FROM notify_queue WHERE seq = ?", (seq,))

    def failed(self, seq: int, error: str, retry_at: float) -> None:
        with statedb.connect(self.state_dir) as db:
            assert db is not None
            db.execute("UPDATE notify_queue SET attempts = attempts + 1, next_at = ?, "
                       "last_error = ? WHERE seq = ?", (retry_at, error, seq))

    def dead(self, seq: int, reason: str) -> None:
        with statedb.connect(self.state_dir) as db:
            assert db is not None
            with statedb.transaction(db):
                db.execute("INSERT INTO notify_dead (seq, notifier, spec, body, created, "
                           "attempts, reason, at) SELECT seq, notifier, spec, body, created, "
                           "attempts + 1, ?, ? FROM notify_queue WHERE seq = ?",
                           (reason, time.time(), seq))
                db.execute("DELETE FROM notify_queue WHERE seq = ?", (seq,))

    def pending(self) -> dict[str, Any]:
        """For `opsagent status`: what waits, since when, the last error; what was refused."""
        with statedb.connect(self.state_dir, create=False) as db:
            if db is None:
                return {"count": 0, "dead": 0}
            rows = db.execute("SELECT notifier, COUNT(*), MIN(created), MAX(attempts) FROM "
                              "notify_queue GROUP BY notifier").fetchall()
            errors = dict(db.execute("SELECT notifier, last_error FROM notify_queue WHERE "
                                     "last_error IS NOT NULL ORDER BY seq").fetchall())
            dead = db.execute("SELECT COUNT(*) FROM notify_dead").fetchone()[0]
        by = {n: {"count": c, "oldest": oldest, "attempts": a, "last_error": errors.get(n)}
              for n, c, oldest, a in rows}
        last = next((f"{n}: {v['last_error']}" for n, v in by.items() if v["last_error"]),
                    None)
        return {"count": sum(v["count"] for v in by.values()), "by_notifier": by,
                "last_error": last, "dead": dead}


class Dispatcher:
    def __init__(self, state_dir: str, log: logging.Logger, *, backoff_first: float = 1.0,
                 backoff_cap: float = 300.0, timeout: float = 10.0) -> None:
        self.queue = NotifyQueue(state_dir)
        self.log = log
        self.first, self.cap, self.timeout = backoff_first, backoff_cap, timeout
        self.stopping = threading.Event()
        self.workers: dict[str, tuple[threading.Thread, threading.Event]] = {}
        self.lock = threading.Lock()

    def start(self) -> None:
        self.wake()  # a backlog from before a restart goes out now

    def wake(self) -> None:
        """Something was queued: make sure each notifier with work has a worker, awake."""
        if self.stopping.is_set():
            return
        try:
            names = self.queue.notifiers()
        except OpsAgentError as e:
            self.log.error("cannot read the notification queue: %s", e)
            return
        with self.lock:
            for name in names:
                worker = self.workers.get(name)
                if worker is None or not worker[0].is_alive():
                    event = threading.Event()
                    thread = threading.Thread(target=self._work, args=(name, event),
                                              name=f"opsagent-notify-{name}", daemon=True)
                    self.workers[name] = (thread, event)
                    thread.start()
                else:
                    worker[1].set()

    def stop(self, timeout: float = 2.0) -> None:
        self.stopping.set()
        with self.lock:
            workers = list(self.workers.values())
        for _, event in workers:
            event.set()
        deadline = time.monotonic() + timeout
        for thread, _ in workers:
            thread.join(max(0.0, deadline - time.monotonic()))

    def flush(self, timeout: float) -> None:
        """Try what is due once more, within ``timeout`` (at shutdown, after ``stop``)."""
        deadline = time.monotonic() + timeout
        for name in sorted(self.queue.notifiers()):
            while time.monotonic() < deadline:
                item, _ = self.queue.head(name)
                if item is None or not self._deliver(item, min(self.timeout, max(
                        0.5, deadline - time.monotonic()))):
                    break

    def _work(self, name: str, event: threading.Event) -> None:
        while not self.stopping.is_set():
            try:
                item, next_at = self.queue.head(name)
            except OpsAgentError as e:
                self.log.error("cannot read the notification queue: %s", e)
                item, next_at = None, time.time() + 5
            if item is not None:
                self._deliver(item, self.timeout)
                continue
            if next_at is None:  # nothing left: the worker ends; wake() starts a new one
                with self.lock:
                    if self.workers.get(name, (None, None))[1] is event:
                        del self.workers[name]
                return
            event.wait(max(0.0, next_at - time.time()))
            event.clear()

    def _deliver(self, item: Item, timeout: float) -> bool:
        from agent.notifiers import channel, send

        try:
            send(item.spec, item.note, timeout)
        except DeliveryError as e:
            return self._failed(item, e)
        except Exception as e:  # a bug of ours: keep the notification, try later
            self.log.exception("notifier %s crashed", item.notifier)
            return self._failed(item, DeliveryError(f"internal error: {e}"))
        self.queue.done(item.seq)
        waited = time.time() - item.created
        self.log.info("notified %s (%s) of %s%s", item.notifier, channel(item.spec),
                      ", ".join(f"{e.rule} {e.state}" for e in item.note.events),
                      f" after {item.attempts} failed attempt(s), {waited:.0f}s late"
                      if item.attempts else "", extra={"notifier": item.notifier})
        return True

    def _failed(self, item: Item, e: DeliveryError) -> bool:
        if not e.retry:
            self.queue.dead(item.seq, str(e))
            self.log.error("notifier %s refused a notification for good (kept in "
                           "notify_dead): %s", item.notifier, e,
                           extra={"notifier": item.notifier})
            return False
        delay = random.uniform(0, min(self.cap, self.first * 2 ** item.attempts))
        if e.retry_after is not None:
            delay = max(delay, min(e.retry_after, self.cap))
        self.queue.failed(item.seq, str(e), time.time() + delay)
        level = logging.WARNING if item.attempts == 0 else logging.DEBUG
        self.log.log(level, "notifier %s failed (attempt %d), retrying in %.1fs: %s",
                     item.notifier, item.attempts + 1, delay, e,
                     extra={"notifier": item.notifier})
        return False
