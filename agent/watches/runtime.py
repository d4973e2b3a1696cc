"""Log watches inside the agent service.

Each distinct source (a file, a unit's journal, a container's logs) is read by its own
thread (agent.watches.sources); one engine thread takes the batches in order, runs every
watch on that source over them, counts matches per key in sliding windows on the lines' own
times, and fires the watch's responses when a key reaches its threshold. A match older than
the window is not counted (a look-back at start-up never bans for an attack long over).

State survives a restart without a line missed or counted twice: each source's position
and its watches' windows are written together to state.db (``watch_offsets``) once a
second and on stop, and a source resumes from there.

Every firing is an alert (``watch:NAME``) and a ``response`` report with each action's
outcome; firings beyond the watch's ``budget`` count and report but do not act. Log
metrics (``watch.NAME.lines_per_s``, ``.matches_per_s``, ``.match_percent``, ``.lag_s``,
``.bytes_behind``) are what thresholds read; a source falling behind raises an alert.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from agent import statedb
from agent.playbook import LoadedPlaybook
from agent.playbook.models.rules import Action, WatchSpec
from agent.watches.matcher import Matcher, ScanStats, compile_watch
from agent.watches.windows import KeyWindows, RateWindow

log = logging.getLogger("opsagent.watches")

SAVE_EVERY_S = 1.0
LAG_EVERY_S = 5.0
LAG_ALERT_S = 60.0  # a source more than this behind its newest line raises an alert
LAG_ALERT_BYTES = 64 << 20
RECENT_LINES = 500  # matching lines kept per watch for snapshots

# (target, ttl, rule, reason, allowlist) -> (done, message, the address blocked, until)
Block = Callable[[str, float, str, str, list[str]], tuple[bool, str, str | None, float | None]]
Alert = Callable[..., None]
Act = Callable[[str, str, Action, dict[str, Any]], None]
Enqueue = Callable[[str, Any, Any], None]
ReportResponse = Callable[[dict[str, Any]], None]


@dataclass
class WatchState:
    spec: WatchSpec
    playbook: str
    notifiers: dict[str, Any]
    allowlist: list[str]
    matcher: Matcher
    windows: KeyWindows
    rates: RateWindow
    stats: ScanStats = field(default_factory=ScanStats)
    recent: deque[tuple[str, str]] = field(default_factory=lambda: deque(maxlen=RECENT_LINES))
    acted: deque[float] = field(default_factory=deque)
    fired: int = 0
    budget_told: bool = False
    last_fired: float | None = None


@dataclass
class SourceState:
    kind: str
    target: str
    watches: list[WatchState]
    source: Any = None
    thread: threading.Thread | None = None
    stop: threading.Event = field(default_factory=threading.Event)
    position: dict[str, Any] | None = None
    dirty: bool = False
    behind: bool = False

    @property
    def name(self) -> str:
        return f"{self.kind}:{self.target}"


def source_of(spec: WatchSpec) -> tuple[str, str]:
    if spec.log:
        return "file", spec.log
    if spec.journal:
        return "journal", spec.journal
    assert spec.container
    return "container", spec.container


class WatchRuntime:
    def __init__(self, state_dir: str, host: str, *, alert: Alert, act: Act, enqueue: Enqueue,
                 block: Block, report: ReportResponse, group: str | None = None,
                 source_options: dict[str, Any] | None = None) -> None:
        self.state_dir = state_dir
        self.host = host
        self.group = group
        self._alert, self._act, self._enqueue, self._block = alert, act, enqueue, block
        self._report = report
        self.source_options = source_options or {}
        self.sources: dict[str, SourceState] = {}
        self.inbox: queue.Queue[Any] = queue.Queue(maxsize=256)
        self.lock = threading.RLock()
        self._stopping = threading.Event()
        self._engine: threading.Thread | None = None

    # --- life cycle ---------------------------------------------------------------------

    def configure(self, playbooks: list[LoadedPlaybook]) -> None:
        """A new revision: sources whose watches did not change keep running untouched."""
        wanted: dict[str, list[tuple[WatchSpec, LoadedPlaybook]]] = {}
        for pb in playbooks:
            for w in pb.model.watches:
                kind, target = source_of(w)
                wanted.setdefault(f"{kind}:{target}", []).append((w, pb))
        with self.lock:
            for name, src in list(self.sources.items()):
                specs = [(ws.spec, ws.playbook) for ws in src.watches]
                if name not in wanted or specs != [(w, pb.model.name) for w, pb in wanted[name]]:
                    self._stop_source(src)
                    del self.sources[name]
            for name, items in wanted.items():
                if name not in self.sources:
                    self.sources[name] = self._start_source(name, items)
        if self.sources and self._engine is None:
            self._engine = threading.Thread(target=self._run, name="opsagent-watch",
                                            daemon=True)
            self._engine.start()

    @property
    def active(self) -> bool:
        return bool(self.sources)

    def stop(self) -> None:
        self._stopping.set()
        with self.lock:
            for src in self.sources.values():
                self._stop_source(src)
        if self._engine is not None:
            self._engine.join(timeout=5)

    def _start_source(self, name: str, items: list[tuple[WatchSpec, LoadedPlaybook]]
                      ) -> SourceState:
        from agent.watches.sources import open_source

        kind, _, target = name.partition(":")
        saved = self._load(name)
        now = time.time()
        watches = []
        for spec, pb in items:
            windows = KeyWindows(spec.threshold, spec.within)
            windows.load((saved.get("windows") or {}).get(spec.name) or {}, now)
            watches.append(WatchState(spec=spec, playbook=pb.model.name,
                                      notifiers=dict(pb.model.notifiers),
                                      allowlist=list(pb.model.allowlist or []),
                                      matcher=Matcher(compile_watch(spec)), windows=windows,
                                      rates=RateWindow(spec.rate_window)))
        src = SourceState(kind, target, watches, position=saved.get("position"))
        src.source = open_source(kind, target, src.position,
                                 **self.source_options.get(kind, {}))
        src.thread = threading.Thread(target=self._read, args=(src,), daemon=True,
                                      name=f"opsagent-read-{kind}")
        src.thread.start()
        log.info("watching %s for %s", name, ", ".join(w.spec.name for w in watches))
        return src

    def _read(self, src: SourceState) -> None:
        """The source's thread: batches go to the engine tagged with their source."""
        out: queue.Queue[Any] = _Tagged(self.inbox, src)  # type: ignore[assignment]
        try:
            src.source.run(out, src.stop)
        except Exception:
            log.exception("reading %s failed", src.name)

    def _stop_source(self, src: SourceState) -> None:
        src.stop.set()
        if src.thread is not None:
            src.thread.join(timeout=5)
        self._save(src)

    # --- the engine ---------------------------------------------------------------------

    def _run(self) -> None:
        next_save = time.monotonic() + SAVE_EVERY_S
        next_lag = time.monotonic() + LAG_EVERY_S
        while not self._stopping.is_set():
            try:
                src, item = self.inbox.get(timeout=0.5)
            except queue.Empty:
                src = item = None
            with self.lock:
                current = self.sources.get(src.name) if src is not None else None
                if current is not None and current is src:  # not a source since replaced
                    self._take(current, item)
                now = time.monotonic()
                if now >= next_save:
                    next_save = now + SAVE_EVERY_S
                    for s in self.sources.values():
                        if s.dirty:
                            self._save(s)
                if now >= next_lag:
                    next_lag = now + LAG_EVERY_S
                    self._check_lag()

    def _take(self, src: SourceState, item: Any) -> None:
        from agent.watches.sources import Batch

        if not isinstance(item, Batch):  # a SourceError: said once by the source
            log.warning("%s: %s", src.name, item)
            return
        now = time.time()
        default_at = item.stamps[-1] if item.stamps else now
        lines = item.data.count(b"\n")
        for ws in src.watches:
            before = ws.stats.matched
            for lm in ws.matcher.scan(item.data, ws.stats):
                if not lm.counts:
                    continue
                key = lm.value(ws.spec.key) if ws.spec.key else ""
                if key is None:
                    continue
                at = lm.at if lm.at is not None else default_at
                if at < now - ws.spec.within:
                    continue  # older than the window: it cannot count any more
                text = lm.line.decode("utf-8", "replace")
                ws.recent.append((key, text))
                n = ws.windows.add(key, at)
                if n:
                    self._fire(ws, key, lm.groups, text, n, now)
            ws.rates.add(now, lines, ws.stats.matched - before)
        src.position = item.position
        src.dirty = True

    # --- responses ----------------------------------------------------------------------

    def _fire(self, ws: WatchState, key: str, groups: dict[str, str], line: str, n: int,
              now: float) -> None:
        spec = ws.spec
        ws.fired += 1
        ws.last_fired = now
        summary = (f"{spec.name}: {n} matches for {key or 'the watch'} within "
                   f"{_dur(spec.within)}")
        while ws.acted and ws.acted[0] < now - spec.budget.per:
            ws.acted.popleft()
        outcomes: list[dict[str, Any]] = []
        evidence: dict[str, Any] | None = None
        shared: list[dict[str, Any]] = []
        if len(ws.acted) >= spec.budget.firings:
            outcomes.append({"action": "budget", "ok": False, "message":
                             f"{spec.budget.firings} firings within {_dur(spec.budget.per)} "
                             "already acted: nothing done"})
            if not ws.budget_told:
                ws.budget_told = True
                self._alert(f"watch:{spec.name}", "critical",
                            f"{spec.name}: action budget exhausted ({spec.budget.firings} "
                            f"per {_dur(spec.budget.per)}); counting, not acting")
        else:
            ws.acted.append(now)
            ws.budget_told = False
            variables = {**groups, "key": key, "count": n, "line": line, "watch": spec.name,
                         "host": self.host}
            for action in spec.actions:
                outcome, found = self._do(ws, action, key, variables, n)
                outcomes.append(outcome)
                if action.block_ip is not None and action.block_ip.share and found:
                    shared.append(found)
                elif found:
                    evidence = found
        log.warning("%s%s", summary, "".join(f"; {o['action']}: {o['message']}"
                                             for o in outcomes),
                    extra={"watch": spec.name, "key": key})
        self._alert(f"watch:{spec.name}", spec.severity, summary, state="firing",
                    value=float(n))
        doc = {"watch": spec.name, "playbook": ws.playbook, "key": key, "matches": n,
               "within_s": spec.within, "actions": outcomes, "evidence": evidence}
        if shared and self.group:
            doc["fleet"] = {"group": self.group, "blocks": shared}
        elif shared:
            log.warning("%s: block_ip share: this host has no `group` in its config; the "
                        "block stays local", spec.name)
        self._report(doc)

    def _do(self, ws: WatchState, action: Action, key: str, variables: dict[str, Any],
            n: int) -> tuple[dict[str, Any], dict[str, Any] | None]:
        spec = ws.spec
        try:
            if action.block_ip is not None:
                from agent.playbook.templating import has_template, render

                raw = action.block_ip.ip
                target = str(render(raw, variables)) if has_template(raw) else raw
                ok, message, addr, until = self._block(
                    target, action.block_ip.duration, spec.name,
                    f"{n} matches within {_dur(spec.within)}", ws.allowlist)
                blocked = {"addr": addr, "until": until} if ok and addr and until else None
                return {"action": "block_ip", "ok": ok, "message": message}, blocked
            if action.notify is not None:
                self._notify(ws, action.notify, key, n)
                return {"action": "notify", "ok": True, "message": f"to {action.notify}"}, None
            if action.snapshot is not None:
                from agent.watches import evidence

                snap = action.snapshot
                lines = [t for k, t in ws.recent if k == key][-snap.lines:] if snap.lines else []
                doc = evidence.take(self.state_dir, spec.name, key, lines,
                                    sockets=snap.sockets, processes=snap.processes)
                return {"action": "snapshot", "ok": True,
                        "message": f"evidence in {doc['path']}"}, doc
            name = "restart" if action.restart is not None else "run"
            self._act(ws.playbook, f"watch:{spec.name}", action, variables)
            what = action.restart if action.restart is not None else (
                action.run.argv[0] if action.run else "")
            return {"action": name, "ok": True, "message": f"{what} started"}, None
        except Exception as e:  # one action failing never stops the others
            log.exception("watch %s: an action failed", spec.name)
            return {"action": _action_name(action), "ok": False, "message": str(e)}, None

    def _notify(self, ws: WatchState, name: str, key: str, n: int) -> None:
        from agent.notifiers.base import AlertEvent, Notification

        spec = ws.spec
        now = time.time()
        event = AlertEvent(alert_id=f"watch-{spec.name}-{int(now)}",
                           dedup_key=f"{self.host}/watch:{spec.name}/{key}",
                           rule=f"watch:{spec.name}", host=self.host, state="firing",
                           severity=spec.severity,
                           summary=f"{spec.name}: {n} matches for {key or 'the watch'} "
                                   f"within {_dur(spec.within)}",
                           started_at=now, at=now, value=float(n),
                           labels={"key": key} if key else {})
        self._enqueue(name, ws.notifiers[name], Notification(self.host, (event,)))

    # --- state, lag, metrics ------------------------------------------------------------

    def _load(self, name: str) -> dict[str, Any]:
        with statedb.connect(self.state_dir) as db:
            assert db is not None
            row = db.execute("SELECT doc FROM watch_offsets WHERE source = ?",
                             (name,)).fetchone()
        return dict(json.loads(row[0])) if row else {}

    def _save(self, src: SourceState) -> None:
        doc = {"position": src.position,
               "windows": {ws.spec.name: ws.windows.dump() for ws in src.watches}}
        try:
            with statedb.connect(self.state_dir) as db:
                assert db is not None
                db.execute("INSERT INTO watch_offsets (source, doc) VALUES (?, ?) "
                           "ON CONFLICT (source) DO UPDATE SET doc = excluded.doc",
                           (src.name, json.dumps(doc)))
            src.dirty = False
        except Exception:  # kept dirty: written at the next save
            log.exception("cannot save the position of %s", src.name)

    def _check_lag(self) -> None:
        for src in self.sources.values():
            lag = _lag(src)
            behind = lag["lag_s"] > LAG_ALERT_S or lag["bytes_behind"] > LAG_ALERT_BYTES
            if behind != src.behind:
                src.behind = behind
                names = ", ".join(ws.spec.name for ws in src.watches)
                if behind:
                    self._alert(f"watch-source:{src.name}", "warning",
                                f"{src.name} is falling behind ({lag['lag_s']:.0f} s, "
                                f"{lag['bytes_behind']} bytes unread) for {names}",
                                state="firing", value=lag["lag_s"])
                else:
                    self._alert(f"watch-source:{src.name}", "info",
                                f"{src.name} caught up", state="resolved", value=lag["lag_s"])

    def values(self) -> dict[str, float]:
        """The log metrics thresholds read."""
        now = time.time()
        out: dict[str, float] = {}
        with self.lock:
            for src in self.sources.values():
                lag = _lag(src)
                for ws in src.watches:
                    lines, matches, share = ws.rates.rates(now)
                    p = f"watch.{ws.spec.name}."
                    out[p + "lines_per_s"] = lines
                    out[p + "matches_per_s"] = matches
                    out[p + "match_percent"] = share
                    out[p + "lag_s"] = lag["lag_s"]
                    out[p + "bytes_behind"] = float(lag["bytes_behind"])
        return out

    def status(self) -> dict[str, Any]:
        with self.lock:
            return {ws.spec.name: {"source": src.name, "lines": ws.stats.lines,
                                   "matched": ws.stats.matched, "keys": len(ws.windows),
                                   "fired": ws.fired, "last_fired": ws.last_fired,
                                   **_lag(src)}
                    for src in self.sources.values() for ws in src.watches}


class _Tagged:
    """A queue front that tags what a source puts with the source it came from."""

    def __init__(self, q: queue.Queue[Any], src: SourceState) -> None:
        self.q, self.src = q, src

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        while not self.src.stop.is_set():
            try:
                self.q.put((self.src, item), timeout=0.5)
                return
            except queue.Full:
                continue  # the engine is behind: the source waits (its lag grows)


def _lag(src: SourceState) -> dict[str, float]:
    lag = src.source.lag() if src.source is not None else None
    return {"lag_s": float(getattr(lag, "seconds_behind", 0.0) or 0.0),
            "bytes_behind": float(getattr(lag, "bytes_behind", 0) or 0)}


def _action_name(action: Action) -> str:
    for name in ("notify", "block_ip", "restart", "run", "snapshot"):
        if getattr(action, name) is not None:
            return name
    return "action"


def _dur(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"
