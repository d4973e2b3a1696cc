"""`opsagent run`: keep the host at its playbooks' desired state, event by event.

One thread runs the loop and every reconcile; it sleeps in ``select`` until something
happens, so an idle agent costs nothing. What wakes it:

* a supervised process exits — a pidfd per matched pid turns readable;
* a managed file changes — inotify on the directories holding managed files;
* a systemd unit changes state — D-Bus PropertiesChanged (``watch_systemd``, a thread);
* a container dies, stops, turns unhealthy — the Docker events stream (``watch_docker``);
* a signal — SIGTERM/SIGINT stop, SIGHUP reloads the playbooks, SIGUSR1 reconciles now;
* a timer — the full reconcile (``reconcile_interval``), a budget's backoff running out,
  the next git pull, the systemd watchdog.

An event reconciles only the resource it concerns. Every automatic start and restart spends
the resource's restart budget (``ProviderContext.automatic``); when a budget runs out the
resource is reported failed, an alert is raised once, and providers refuse to act on it
until the window passes or an operator runs ``opsagent reset``.

Playbooks are swapped only as whole valid revisions: a bad edit or commit is refused with
its id and errors, and the last good revision keeps being enforced.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import selectors
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from agent import __version__
from agent.engine import Engine, ResourceResult, RunResult
from agent.errors import OpsAgentError
from agent.pending import PendingHandlers
from agent.playbook import LoadedPlaybook
from agent.playbook.models import RESOURCE_KINDS
from agent.playbook.types import format_duration
from agent.providers._budget import BudgetStore, decide
from agent.providers.base import ProviderContext
from agent.service import status as status_file
from agent.service.config import AgentConfig
from agent.service.inotify import Inotify
from agent.service.lock import StateLock
from agent.service.reporting import Reporter
from agent.service.sdnotify import Notifier
from agent.service.sources import GitRepoSource, Revision, RevisionRejected, source_of

log = logging.getLogger("opsagent.service")

FILE_SETTLE_S = 0.05  # editors write in steps: let a burst of file events settle first
WATCH_SETTLE_S = 0.5  # a resource first watched is observed once more after this
MEMORY_CHECK_EVERY_S = 1.0
STATUS_EVERY_S = 5.0  # status.json at most this stale while checks run
PROTECTED_FRESH_S = 10.0  # the never-block list (SSH session peers…) is this fresh
RETRY_FIRST_S = 0.5  # first retry of a failed resource; doubles up to the interval
_KINDS_WITH_BUDGET = ("processes", "services", "containers")


@dataclass
class _Watched:
    """What the loop listens to for each resource, rebuilt after each reconcile of it."""

    pids: dict[str, dict[int, int]] = field(default_factory=dict)  # ref -> pid -> pidfd
    fd_ref: dict[int, tuple[str, int]] = field(default_factory=dict)  # pidfd -> (ref, pid)
    files: dict[str, set[str]] = field(default_factory=dict)  # path -> refs
    units: dict[str, str] = field(default_factory=dict)  # unit name -> ref
    containers: dict[str, str] = field(default_factory=dict)  # container name -> ref


class Agent:
    def __init__(self, cfg: AgentConfig) -> None:
        self.cfg = cfg
        self.source = source_of(cfg)
        self.revision: Revision | None = None
        self.rejected: dict[str, Any] | None = None
        self.notifier = Notifier()
        self.lock = StateLock(cfg.state_dir)
        self.reporter = Reporter(cfg)
        self.metrics: Any = None
        self.observer: Any = None
        self.watches: Any = None
        self.auditor: Any = None
        self.scheduler: Any = None
        self.stale_backups: Any = None
        self._blocker: Any = None
        self._block_lock = threading.Lock()
        self.fleet_blocks: Any = None
        self._protected: tuple[float, Any] | None = None
        self.health_server: Any = None
        self.fleet_socket: Any = None
        self.next_status = 0.0
        self.next_memory_check = 0.0
        self.sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self.inbox: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        self.stopping = False
        self.reload_asked = False
        self.full_asked = False
        self.due: dict[str, float] = {}  # ref -> monotonic time of its targeted reconcile
        self.why: dict[str, str] = {}  # ref -> the event that scheduled it, for the log
        self.watched = _Watched()
        self.inotify: Inotify | None = None
        self.unit_watcher: Any = None
        self.container_watcher: Any = None
        self.results: dict[str, dict[str, Any]] = {}
        self.exhausted: set[str] = set()
        self.failures: dict[str, int] = {}  # ref -> consecutive failed reconciles
        self.started_at = time.time()
        self.next_full = 0.0
        self.next_pull = 0.0
        self.next_beat = 0.0
        self.last_full: float | None = None
        self.reloading: threading.Thread | None = None
        self.reload_told = False  # RELOADING=1 sent, READY=1 owed
        self.baseline_rss: int | None = None
        self.engine = Engine(ProviderContext(host=cfg.host, variables={}, base_dir="/",
                                             state_dir=cfg.state_dir, automatic=True),
                             should_stop=self._between_resources)

    # --- life cycle ---------------------------------------------------------------------

    def run(self) -> int:
        _malloc_tune()
        self.lock.acquire()
        try:
            self._install_signals()
            self.reporter.start()
            self._start_observer()
            self._start_watches()
            self._start_fleet_blocks()
            self._serve_metrics()
            self._serve_fleet()
            self.sel.register(self._wake_r, selectors.EVENT_READ, "wake")
            self.inotify = Inotify()
            self.sel.register(self.inotify.fd, selectors.EVENT_READ, "inotify")
            self._load_revision()
            ready = self._status_line()
            self.notifier.ready(ready)
            log.info("agent %s started (pid %d, state %s): %s", __version__, os.getpid(),
                     self.cfg.state_dir, ready)
            self._loop()
        finally:
            self._shutdown()
        return 0

    def _install_signals(self) -> None:
        signal.set_wakeup_fd(self._wake_w.fileno(), warn_on_full_buffer=False)

        def stop(signum: int, _frame: Any) -> None:
            self.stopping = True

        def reload(signum: int, _frame: Any) -> None:
            self.reload_asked = True

        def reconcile(signum: int, _frame: Any) -> None:
            self.full_asked = True

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGHUP, reload)
        signal.signal(signal.SIGUSR1, reconcile)

    def _shutdown(self) -> None:
        self.notifier.stopping()
        if self.fleet_socket is not None:
            self.fleet_socket.stop()  # the requests in hand finish first (bounded)
        for w in (self.unit_watcher, self.container_watcher):
            if w is not None:
                with contextlib.suppress(Exception):
                    w.close()
        for fd in list(self.watched.fd_ref):
            with contextlib.suppress(OSError):
                os.close(fd)
        if self.health_server is not None:
            self.health_server.shutdown()
        if self.auditor is not None:
            self.auditor.stop()
        if self.scheduler is not None:
            self.scheduler.stop()
        if self.fleet_blocks is not None:
            self.fleet_blocks.stop()
        if self.watches is not None:
            try:
                self.watches.stop()  # positions and windows saved for the next start
            except Exception:
                log.exception("stopping the log watches")
        if self.observer is not None:
            try:
                self.observer.stop()
            except Exception:  # what is unsent stays queued in state.db for the next start
                log.exception("stopping the notification dispatcher")
        with contextlib.suppress(OSError):
            self._write_status()
        try:
            self.reporter.stop()
        except Exception:  # what is unsent stays in the outbox for the next start
            log.exception("stopping the report sender")
        self.lock.release()
        log.info("agent stopped")

    def post(self, kind: str, value: Any) -> None:
        """Thread-safe: hand an event to the loop and wake it."""
        self.inbox.put((kind, value))
        self.wake()

    def wake(self) -> None:
        """Thread-safe: make the loop look at what is due now."""
        with contextlib.suppress(BlockingIOError, OSError):
            self._wake_w.send(b"\0")

    # --- the loop -----------------------------------------------------------------------

    def _loop(self) -> None:
        self.next_full = time.monotonic()  # the first full reconcile runs at once
        while not self.stopping:
            now = time.monotonic()
            if self.reload_asked:
                self.reload_asked = False
                self._start_reload(forced=True)
            if self.full_asked:
                self.full_asked = False
                self.next_full = now
            if now >= self.next_full:
                self._full_reconcile()
            else:
                refs = [r for r, t in self.due.items() if t <= now]
                if refs:
                    for r in refs:
                        del self.due[r]
                    self._run_all(set(refs))
                    self._write_status()
            if isinstance(self.source, GitRepoSource) and time.monotonic() >= self.next_pull:
                self._start_reload(forced=False)
            if self.observer is not None:
                self.observer.run_due()
            if self.auditor is not None:
                self.auditor.run_due()
            if self.scheduler is not None:
                self.scheduler.run_due()
                self.stale_backups.check()
            busy = (self.observer is not None and self.observer.active) or (
                self.watches is not None and self.watches.active) or (
                self.scheduler is not None and bool(self.scheduler.jobs))
            if busy and time.monotonic() >= self.next_status:
                self._write_status()  # checks, alerts and watches, a few seconds fresh
            self._beat()
            self._check_memory()
            if self.stopping:
                break
            self._wait()

    def _wait(self) -> None:
        now = time.monotonic()
        wake_at = [self.next_full, *self.due.values()]
        if isinstance(self.source, GitRepoSource):
            wake_at.append(self.next_pull)
        if self.notifier.watchdog_interval:
            wake_at.append(self.next_beat)
        if self.observer is not None and (due := self.observer.next_due()) is not None:
            wake_at.append(due)
        if (self.watches is not None and self.watches.active) or (
                self.scheduler is not None and self.scheduler.jobs):
            wake_at.append(self.next_status)
        if self.auditor is not None and (due := self.auditor.next_due()) is not None:
            wake_at.append(due)
        if self.scheduler is not None:
            if (at := self.scheduler.next_due()) is not None:
                wake_at.append(now + max(0.0, at - time.time()))  # an epoch slot
            if self.stale_backups.specs:
                wake_at.append(self.stale_backups.next_at)
        timeout = max(0.0, min(wake_at) - now)
        for key, _mask in self.sel.select(timeout):
            self._on_ready(key)
        self._drain_inbox()

    def _on_ready(self, key: selectors.SelectorKey) -> None:
        if key.data == "wake":
            with contextlib.suppress(BlockingIOError):
                while self._wake_r.recv(4096):
                    pass
        elif key.data == "inotify":
            assert self.inotify is not None
            now = time.monotonic()
            for path in self.inotify.read():
                refs = set(self.watched.files.get(path, ()))
                if path not in self.watched.files:  # a watched directory itself went away
                    refs = {r for p, rs in self.watched.files.items()
                            if os.path.dirname(p) == path for r in rs}
                for ref in refs:
                    self._schedule(ref, now + FILE_SETTLE_S, f"{path} changed")
        elif key.data == "pidfd":
            ref, pid = self.watched.fd_ref.pop(key.fd)
            self.sel.unregister(key.fd)
            os.close(key.fd)
            self.watched.pids.get(ref, {}).pop(pid, None)
            self._schedule(ref, time.monotonic(), f"pid {pid} exited")

    def _drain_inbox(self) -> None:
        while True:
            try:
                kind, value = self.inbox.get_nowait()
            except queue.Empty:
                return
            now = time.monotonic()
            if kind == "unit":
                if ref := self.watched.units.get(value):
                    self._schedule(ref, now, f"unit {value} changed state")
            elif kind == "container":
                if ref := self.watched.containers.get(value):
                    self._schedule(ref, now, f"container {value} changed")
            elif kind == "revision":
                self._adopt(value)

    def _schedule(self, ref: str, at: float, why: str) -> None:
        log.debug("%s: %s", ref, why)
        self.due[ref] = min(at, self.due.get(ref, at))
        self.why.setdefault(ref, why)

    def _between_resources(self) -> bool:
        self._beat()
        return self.stopping

    def _beat(self) -> None:
        interval = self.notifier.watchdog_interval
        if interval and time.monotonic() >= self.next_beat:
            self.notifier.watchdog()
            self.next_beat = time.monotonic() + interval

    # --- reconciling --------------------------------------------------------------------

    def _full_reconcile(self) -> None:
        if not isinstance(self.source, GitRepoSource):
            self._start_reload(forced=False)  # a directory edit is picked up here
        self.due.clear()
        self.why.clear()
        self._run_all(None)
        self.last_full = time.time()
        self.next_full = time.monotonic() + self.cfg.reconcile_interval
        self._write_status()
        _malloc_trim()  # an idle agent gives back what a reconcile needed for a moment

    def _run_all(self, only: set[str] | None) -> None:
        if self.revision is None:
            return
        for pb in self.revision.playbooks:
            if self.stopping:
                return
            refs = _refs_of(pb)
            mine = None if only is None else only & refs
            if mine is not None and not mine:
                continue
            run = self._run_playbook(pb, mine)
            self._after_run(pb, run)
            self.reporter.run(run, heartbeat=only is None)
            if self.metrics is not None:
                self.metrics.observe_run(run, "full" if only is None else "event")

    def _run_playbook(self, pb: LoadedPlaybook, only: set[str] | None) -> RunResult:
        self.engine.ctx = ProviderContext(
            host=self.cfg.host, variables=pb.variables, base_dir=os.path.dirname(pb.path),
            state_dir=self.cfg.state_dir, automatic=True)
        run = self.engine.run(pb, "apply", only)
        for r in run.results:
            why = self.why.pop(r.ref, None) if only is not None else "full reconcile"
            extra = {"ref": r.ref, "status": r.status, "trigger": why}
            after = f" (after: {why})" if why and only is not None else ""
            if r.status == "changed":
                log.info("%s: %s%s", r.ref, r.message, after, extra=extra)
            elif r.status == "failed":
                log.warning("%s: failed: %s%s", r.ref, r.message, after, extra=extra)
        return run

    def _after_run(self, pb: LoadedPlaybook, run: RunResult) -> None:
        specs = {f"{k}:{s.name}": (k, s) for k in RESOURCE_KINDS for s in getattr(pb.model, k)}
        now = time.time()
        for r in run.results:
            if r.status != "failed":
                self.failures.pop(r.ref, None)
            elif r.kind not in _KINDS_WITH_BUDGET and r.ref in specs:
                self._schedule(r.ref, time.monotonic() + self._retry_delay(r), "retrying")
            prev = self.results.get(r.ref, {})
            self.results[r.ref] = {
                "playbook": pb.model.name, "status": r.status, "message": r.message,
                "at": now,
                "changed_at": now if r.status == "changed" else prev.get("changed_at"),
            }
            if r.ref in specs:
                kind, spec = specs[r.ref]
                self._watch(kind, spec, r)
                self._budget_follow_up(kind, spec, r)

    def _retry_delay(self, r: ResourceResult) -> float:
        """A failed resource is tried again soon, then less and less often (0.5 s doubling,
        at most the reconcile interval); only automatic starts and restarts spend budget."""
        n = self.failures.get(r.ref, 0) + 1
        self.failures[r.ref] = n
        return float(min(self.cfg.reconcile_interval, RETRY_FIRST_S * 2 ** (n - 1)))

    def _budget_follow_up(self, kind: str, spec: Any, r: ResourceResult) -> None:
        """Alert once when a budget runs out; come back when its backoff or window ends."""
        if kind not in _KINDS_WITH_BUDGET:
            return
        b = spec.restart
        entry = self.results[r.ref]
        entry["restart"] = {"max": b.max, "within": b.within, "backoff": b.backoff}
        if r.status != "failed":
            self.exhausted.discard(r.ref)
            return
        retry = self._retry_delay(r)
        try:
            attempts = BudgetStore(self.cfg.state_dir).attempts(r.ref)
        except OpsAgentError as e:
            log.warning("%s: cannot read its restart budget: %s", r.ref, e)
            return
        verdict = decide(attempts, b.max, b.within, b.backoff, time.time())
        if verdict.exhausted:
            recent = sorted(t for t in attempts if t > time.time() - b.within)
            wait = (recent[len(recent) - b.max] + b.within - time.time()) if b.max else None
            if r.ref not in self.exhausted:
                self.exhausted.add(r.ref)
                text = (f"{r.ref}: {verdict.message}; the agent leaves it alone until "
                        + (f"the window passes ({verdict.detail})" if b.max else "reset")
                        + f" or `opsagent reset {r.ref}`; last error: {r.message}")
                log.error(text, extra={"ref": r.ref, "alert": "budget_exhausted"})
                self._alert(r.ref, "critical", text)
            if wait is not None:
                self._schedule(r.ref, time.monotonic() + max(wait, 0.0) + 0.01,
                               "restart budget window passed")
        else:
            self._schedule(r.ref, time.monotonic() + max(verdict.wait_s + 0.01, retry),
                           "retrying after a failure")

    # --- what to listen to --------------------------------------------------------------

    def _watch(self, kind: str, spec: Any, r: ResourceResult) -> None:
        ref = r.ref
        if kind == "processes":
            pids = set(r.observed.pids) if r.observed is not None else set()
            self._watch_pids(ref, pids)
        elif kind == "files":
            self.watched.files.setdefault(os.path.normpath(spec.path), set()).add(ref)
            self._refresh_dirs()
        elif kind == "services":
            if spec.unit not in self.watched.units:
                self.watched.units[spec.unit] = ref
                self._unit_watcher().watch(set(self.watched.units))
                # a change between the observation and the subscription would be missed
                self._schedule(ref, time.monotonic() + WATCH_SETTLE_S, "now watched")
        elif kind == "containers" and spec.name not in self.watched.containers:
            self.watched.containers[spec.name] = ref
            self._container_watcher().watch(set(self.watched.containers))
            self._schedule(ref, time.monotonic() + WATCH_SETTLE_S, "now watched")

    def _watch_pids(self, ref: str, pids: set[int]) -> None:
        have = self.watched.pids.setdefault(ref, {})
        for pid in set(have) - pids:
            fd = have.pop(pid)
            self.watched.fd_ref.pop(fd, None)
            self.sel.unregister(fd)
            os.close(fd)
        for pid in pids - set(have):
            try:
                fd = os.pidfd_open(pid)
            except ProcessLookupError:
                self._schedule(ref, time.monotonic(), f"pid {pid} already gone")
                continue
            os.set_inheritable(fd, False)
            have[pid] = fd
            self.watched.fd_ref[fd] = (ref, pid)
            self.sel.register(fd, selectors.EVENT_READ, "pidfd")

    def _refresh_dirs(self) -> None:
        assert self.inotify is not None
        self.inotify.watch_dirs({os.path.dirname(p) for p in self.watched.files})

    def _unit_watcher(self) -> Any:
        if self.unit_watcher is None:
            from agent.service.watch_systemd import UnitWatcher

            self.unit_watcher = UnitWatcher(lambda unit: self.post("unit", unit), log)
        return self.unit_watcher

    def _container_watcher(self) -> Any:
        if self.container_watcher is None:
            from agent.service.watch_docker import ContainerWatcher

            self.container_watcher = ContainerWatcher(
                lambda name: self.post("container", name), log)
        return self.container_watcher

    def _forget_watches(self, keep: set[str]) -> None:
        """Drop what belongs to resources no longer declared (after a reload)."""
        for ref in [r for r in self.watched.pids if r not in keep]:
            self._watch_pids(ref, set())
            del self.watched.pids[ref]
        self.watched.files = {p: rs & keep for p, rs in self.watched.files.items() if rs & keep}
        self._refresh_dirs()
        self.watched.units = {u: r for u, r in self.watched.units.items() if r in keep}
        self.watched.containers = {c: r for c, r in self.watched.containers.items() if r in keep}
        if self.unit_watcher is not None:
            self.unit_watcher.watch(set(self.watched.units))
        if self.container_watcher is not None:
            self.container_watcher.watch(set(self.watched.containers))
        self.results = {r: v for r, v in self.results.items() if r in keep}
        self.due = {r: t for r, t in self.due.items() if r in keep}

    # --- playbook revisions -------------------------------------------------------------

    def _load_revision(self) -> None:
        """At start-up: load synchronously (nothing to enforce until it is loaded)."""
        try:
            latest = self.source.latest()
            self._adopt(self.source.load(latest))
        except RevisionRejected as e:
            self._adopt(e)
        if isinstance(self.source, GitRepoSource):
            self.next_pull = time.monotonic() + self.source.interval

    def _start_reload(self, *, forced: bool) -> None:
        """Look for a new revision off the loop's thread (a git fetch may take a while)."""
        if self.reloading is not None and self.reloading.is_alive():
            if forced:
                self.reload_asked = True  # once the reload under way is over, look again
            return
        if isinstance(self.source, GitRepoSource):
            self.next_pull = time.monotonic() + self.source.interval
        elif not forced:
            latest = self.source.latest()  # a hash of a few files: cheap enough inline
            if self.revision is not None and latest == self.revision.id:
                return
            if self.rejected is not None and latest == self.rejected["revision"]:
                return
        if forced:
            self.notifier.reloading()  # systemd waits for READY=1 again (see _adopt)
            self.reload_told = True
            log.info("reloading playbooks (SIGHUP)")

        def job() -> None:
            try:
                latest = self.source.latest()
                current = self.revision.id if self.revision else None
                refused = self.rejected["revision"] if self.rejected else None
                if latest in (current, refused):
                    self.post("revision", None)
                    return
                self.post("revision", self.source.load(latest))
            except RevisionRejected as e:
                self.post("revision", e)
            except Exception as e:  # a bug here must not end enforcement
                log.exception("reload failed")
                self.post("revision", RevisionRejected("?", f"internal error: {e}"))

        self.reloading = threading.Thread(target=job, name="opsagent-reload", daemon=True)
        self.reloading.start()

    def _adopt(self, new: Revision | RevisionRejected | None) -> None:
        if self.reload_told:  # the reload systemd was told about is over, whatever came of it
            self.reload_told = False
            self.notifier.send("READY=1")
        if new is None:
            self.notifier.status(self._status_line())
            return
        if isinstance(new, RevisionRejected):
            first = self.rejected is None or self.rejected["revision"] != new.revision
            self.rejected = {"revision": new.revision, "message": new.message, "at": time.time()}
            keep = (f"; still enforcing {self.revision.short}" if self.revision
                    else "; nothing to enforce yet")
            if first:
                log.error("playbooks at revision %s refused%s:\n%s", new.revision, keep,
                          new.message, extra={"revision": new.revision})
                self._alert("playbooks", "critical", f"revision {new.revision} refused{keep}: "
                            + new.message.splitlines()[0])
            self.notifier.status(self._status_line())
            self._write_status()
            return
        old = self.revision
        self.revision = new
        self.rejected = None
        declared: set[str] = set()
        for pb in new.playbooks:
            declared |= _refs_of(pb)
        self._forget_watches(declared)
        if self.observer is not None:
            self.observer.configure(new.playbooks)
        if self.auditor is not None:
            self.auditor.configure(new.playbooks)
        if self.scheduler is not None:
            from agent.service.jobs import jobs_of

            self.scheduler.configure(jobs_of(new.playbooks, self.cfg.host))
            self.stale_backups.configure(new.playbooks)
        if self.watches is not None:
            try:
                self.watches.configure(new.playbooks)
            except Exception as e:  # a source that cannot start: the rest keep working
                log.exception("starting the log watches")
                self._alert("watches", "critical", f"log watches could not start: {e}")
        if isinstance(self.source, GitRepoSource):
            self.source.keep({new.id})
        names = ", ".join(pb.model.name for pb in new.playbooks)
        log.info("enforcing revision %s (%s)%s", new.short, names,
                 f", was {old.short}" if old else "", extra={"revision": new.id})
        self.reporter.revision(new.id, old.id if old else None,
                               [pb.model.name for pb in new.playbooks])
        self._write_status()  # also tells systemd the new STATUS=
        if old is not None:
            self.next_full = time.monotonic()  # enforce the new revision at once

    # --- self-care ----------------------------------------------------------------------

    def _check_memory(self) -> None:
        """Above memory_limit, restart in place (exec): same pid for systemd, fresh heap.
        Looked at once a second at most (checks wake the loop dozens of times a second)."""
        now = time.monotonic()
        if now < self.next_memory_check:
            return
        self.next_memory_check = now + MEMORY_CHECK_EVERY_S
        rss = _rss()
        if self.baseline_rss is None:
            self.baseline_rss = rss
            if rss > self.cfg.memory_limit:
                log.warning("memory_limit %d MiB is below the agent's own start-up size "
                            "(%d MiB): it will not restart itself", self.cfg.memory_limit >> 20,
                            rss >> 20)
            return
        if rss <= self.cfg.memory_limit or self.baseline_rss > self.cfg.memory_limit:
            return
        log.warning("resident size %d MiB is above memory_limit %d MiB: restarting cleanly",
                    rss >> 20, self.cfg.memory_limit >> 20, extra={"rss": rss})
        self._shutdown()
        os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])

    # --- status -------------------------------------------------------------------------

    def _status_line(self) -> str:
        if self.revision is None:
            return "no valid playbooks" + (f": {self.rejected['revision']} refused"
                                           if self.rejected else "")
        n = sum(len(_refs_of(pb)) for pb in self.revision.playbooks)
        failed = sum(1 for v in self.results.values() if v["status"] == "failed")
        text = f"enforcing {self.revision.short}: {n} resources"
        if failed:
            text += f", {failed} failed"
        if self.rejected:
            text += f"; refused {self.rejected['revision']}"
        return text

    def _alert(self, key: str, severity: str, text: str, **more: Any) -> None:
        """An alert event: in state.db for `opsagent status`, and to the collector
        (``more``: a rule's state, alert_id, value, muted_by)."""
        try:
            status_file.raise_alert(self.cfg.state_dir, key, severity, text)
        except OpsAgentError as e:
            log.error("cannot record the alert for %s: %s", key, e)
        self.reporter.alert(key, severity, text, **more)
        if self.metrics is not None:
            self.metrics.alerts.labels(severity).inc()

    def _start_observer(self) -> None:
        from agent.service.observing import Observer

        self.observer = Observer(self.cfg.state_dir, self.cfg.host, self._alert, self._act,
                                 self.cfg.check_workers)
        self.observer.start()
        if self.cfg.health_listen:
            from agent.service.health import serve

            host, _, port = self.cfg.health_listen.rpartition(":")
            self.health_server = serve(host or "127.0.0.1", int(port), self.observer.health,
                                       self.cfg.host)
            log.info("health on http://%s/health", self.cfg.health_listen)

    def _start_watches(self) -> None:
        from agent.rules import metrics as rule_metrics
        from agent.watches.runtime import WatchRuntime

        self.watches = WatchRuntime(self.cfg.state_dir, self.cfg.host, alert=self._alert,
                                    act=self._act, enqueue=self.observer.notify_queue_put,
                                    block=self._block, report=self.reporter.response,
                                    group=self.cfg.group)
        rule_metrics.PROVIDERS["watch."] = lambda metric: self.watches.values().get(metric)
        self._restore_blocks()
        from agent.service.auditing import Auditor

        self.auditor = Auditor(self.cfg.state_dir, self.cfg.host, self._alert,
                               self.observer.notify_queue_put, self.wake)
        rule_metrics.PROVIDERS["audit."] = lambda metric: self.auditor.values().get(metric)
        from agent.service.jobs import StaleBackups
        from agent.service.scheduling import Scheduler

        self.scheduler = Scheduler(self.cfg.state_dir, self._alert, self.wake)
        self.stale_backups = StaleBackups(self._alert, lambda key: key in self.scheduler.running)

    def _nft(self) -> Any:
        from agent.firewall.host import nft_command
        from agent.firewall.nft import Nftables

        return Nftables(nft_command(self.cfg.firewall.nft))

    def _restore_blocks(self) -> None:
        """After an agent or host restart: every unexpired block back in the kernel."""
        from agent import statedb

        with statedb.connect(self.cfg.state_dir, create=False) as db:
            if db is None or db.execute("SELECT COUNT(*) FROM blocks").fetchone()[0] == 0:
                return
        try:
            restored = self.blocker([]).restore()
            log.info("IP blocks restored: %s", restored)
        except OpsAgentError as e:
            log.error("cannot restore IP blocks: %s", e)
            self._alert("blocks", "critical", f"IP blocks not restored: {e}")

    def blocker(self, allowlist: list[str]) -> Any:
        """The firewall, guarded by what this host must never block (refreshed every few
        seconds: SSH sessions come and go) plus the playbook's allowlist."""
        from agent.firewall.blocks import Blocker
        from agent.firewall.guard import Protected

        now = time.monotonic()
        if self._protected is None or now - self._protected[0] > PROTECTED_FRESH_S:
            from agent.firewall.host import host_guard, nft_command

            self._protected = (now, host_guard(self.cfg, nft_command(self.cfg.firewall.nft)))
        base = self._protected[1]
        guard = Protected([(p.net, p.why) for p in base.entries]
                          + [(a, "in the playbook's allowlist") for a in allowlist])
        if self._blocker is None:
            self._blocker = Blocker(self.cfg.state_dir, self._nft(), guard)
        self._blocker.protected = guard
        return self._blocker

    def _block(self, target: str, ttl_s: float, rule: str, reason: str, allowlist: list[str],
               origin: str = "local") -> tuple[bool, str, str | None, float | None]:
        """Block through the firewall (the watch engine's and the fleet poller's threads)."""
        with self._block_lock:
            out = self.blocker(allowlist).block(target, ttl_s, rule=rule if origin != "local"
                                                else f"watch:{rule}", reason=reason,
                                                origin=origin)
        return out.status in ("blocked", "extended", "kept"), out.message, out.addr, out.until

    def _start_fleet_blocks(self) -> None:
        """Opt-in: apply the blocks the group's other hosts share through the collector."""
        if not (self.cfg.firewall.fleet and self.cfg.group and self.reporter.sender):
            if self.cfg.firewall.fleet:
                log.warning("firewall.fleet needs a collector and a group in the config")
            return
        from agent.service.fleet_blocks import FleetBlocks

        def allowlists() -> list[str]:
            return sorted({a for pb in (self.revision.playbooks if self.revision else [])
                           for a in pb.model.allowlist or []})

        self.fleet_blocks = FleetBlocks(self.cfg.state_dir, self.cfg.group,
                                        self.reporter.sender, self._block, allowlists)
        self.fleet_blocks.start()

    def _act(self, playbook: str, rule: str, action: Any, variables: dict[str, Any]) -> None:
        """A firing rule's automatic action (muted rules never get here); ``rule`` is a
        threshold's name or ``watch:NAME``."""
        origin = rule if rule.startswith("watch:") else f"threshold:{rule}"
        if action.restart is not None:
            # the handler path: written down first, run by the next targeted reconcile,
            # under the resource's restart budget, and reported like any restart
            PendingHandlers(self.cfg.state_dir).add(playbook, [action.restart], origin,
                                                    time.time())
            self._schedule(action.restart, time.monotonic(), f"{origin} fired")
            log.warning("%s fired: restarting %s", origin, action.restart,
                        extra={"rule": rule, "ref": action.restart})
        elif action.run is not None:
            spec = action.run

            def job() -> None:
                from agent.actions.run import run

                try:
                    out = run(spec.argv, {**variables, "rule": rule}, spec.timeout)
                except Exception as e:  # a template that fails at fire time
                    self._alert(origin, "warning", f"run action refused: {e}")
                    return
                text = (f"run {out.argv[0]}: " + ("timed out" if out.returncode is None
                                                  else f"exit {out.returncode}")
                        + (f": {out.output.strip()[-300:]}" if out.output.strip() else ""))
                level = logging.INFO if out.ok else logging.WARNING
                log.log(level, "%s: %s", origin, text, extra={"rule": rule})
                if not out.ok:
                    self._alert(origin, "warning", text)

            threading.Thread(target=job, name="opsagent-action", daemon=True).start()
        else:
            log.warning("threshold %s: %s actions belong to log watches; ignored", rule,
                        "block_ip" if action.block_ip else "snapshot")

    def _serve_metrics(self) -> None:
        if not self.cfg.metrics_listen:
            return
        from agent.service.metrics import AgentMetrics

        host, _, port = self.cfg.metrics_listen.rpartition(":")
        self.metrics = AgentMetrics(self)
        self.metrics.serve(host or "127.0.0.1", int(port))
        log.info("metrics on http://%s/metrics", self.cfg.metrics_listen)

    def _serve_fleet(self) -> None:
        """Fleet runs' requests, handed over by ``opsagent fleet-exec`` (agent.fleet.remote)."""
        if not self.cfg.fleet_requests:
            return
        from agent.fleet import remote
        from agent.fleet.service_socket import FleetSocket

        sock = FleetSocket(self.cfg.state_dir, lambda raw, pid: remote.serve(raw, self.cfg, pid),
                           remote.MAX_REQUEST)
        if sock.start():
            self.fleet_socket = sock

    def _write_status(self) -> None:
        doc = {
            "pid": os.getpid(), "host": self.cfg.host, "version": __version__,
            "started_at": self.started_at, "updated_at": time.time(),
            "last_full_reconcile": self.last_full,
            "reconcile_interval": format_duration(self.cfg.reconcile_interval),
            "revision": self.revision.id if self.revision else None,
            "playbooks": [{"name": pb.model.name, "path": pb.path, "revision": pb.revision}
                          for pb in (self.revision.playbooks if self.revision else [])],
            "rejected": self.rejected,
            "resources": self.results,
            "rss_bytes": _rss(),
            "collector": ({"url": self.cfg.collector.url, **(self.reporter.state() or {})}
                          if self.cfg.collector else None),
            **(self.observer.status() if self.observer is not None else {}),
            "watches": self.watches.status() if self.watches is not None else {},
            "jobs": self.scheduler.status() if self.scheduler is not None else {},
        }
        self.next_status = time.monotonic() + STATUS_EVERY_S
        try:
            status_file.write(self.cfg.state_dir, doc)
        except OSError as e:
            log.warning("cannot write %s: %s", status_file.STATUS_NAME, e)
        self.notifier.status(self._status_line())


def _refs_of(pb: LoadedPlaybook) -> set[str]:
    return {f"{k}:{s.name}" for k in RESOURCE_KINDS for s in getattr(pb.model, k)}


def _libc() -> Any:
    import ctypes

    return ctypes.CDLL(None)


def _malloc_tune() -> None:
    """One malloc arena for all threads (glibc's M_ARENA_MAX): the worker threads' short
    allocations then reuse the main heap instead of keeping a resident arena each."""
    with contextlib.suppress(Exception):
        _libc().mallopt(-8, 1)


def _malloc_trim() -> None:
    with contextlib.suppress(Exception):
        _libc().malloc_trim(0)


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
