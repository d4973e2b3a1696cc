"""The engine: for each resource observe → diff → apply → observe again, with timeouts.

The engine alone decides whether ``apply`` runs (plan and check never call it). Every
provider call runs on a worker thread with a deadline: a hung call is abandoned and its
resource marked failed, and the run goes on with a fresh worker. A provider that raises
fails its own resource and nothing else. Handlers (``notify:``) run after every resource,
once each, in the order the notified resources are declared, as Ansible runs them.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import traceback
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from agent.converged import ConvergedSpecs
from agent.converged import digest as spec_digest
from agent.errors import OpsAgentError, ProviderError, ProviderTimeout
from agent.pending import PendingHandlers
from agent.playbook import LoadedPlaybook
from agent.playbook.models import OBSERVED_KINDS, RESOURCE_KINDS
from agent.providers import PENDING, load
from agent.providers.base import RESTART, Change, Outcome, Provider, ProviderContext

Mode = Literal["plan", "check", "apply"]
Status = Literal["ok", "changed", "failed", "skipped"]
Label = Literal["corrective", "intentional", "would-change", "failed"]
T = TypeVar("T")

OBSERVE_TIMEOUT = 30.0
APPLY_TIMEOUT = 120.0
OBSERVE_PARALLELISM = 8
log = logging.getLogger("opsagent.engine")


@dataclass
class ResourceResult:
    kind: str
    name: str
    status: Status
    message: str
    changes: list[Change] = field(default_factory=list)
    outcomes: list[Outcome] = field(default_factory=list)
    duration_s: float = 0.0
    # Its spec differs from the one last converged: a change is intentional, not corrective.
    spec_changed: bool = False
    # The provider's last observation (what the agent service watches: pids, paths, units).
    observed: Any = field(default=None, repr=False, compare=False)

    @property
    def ref(self) -> str:
        return f"{self.kind}:{self.name}"


@dataclass
class RunResult:
    playbook: LoadedPlaybook
    host: str
    mode: Mode
    started: float
    finished: float = 0.0
    results: list[ResourceResult] = field(default_factory=list)

    def count(self, status: Status) -> int:
        return sum(1 for r in self.results if r.status == status)

    @property
    def drift(self) -> bool:
        return any(r.status == "changed" for r in self.results)


class _Worker:
    """A daemon thread running one call at a time; abandoned (never joined) when stuck."""

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[tuple[Callable[[], Any], dict[str, Any],
                                            threading.Event]] = queue.SimpleQueue()
        self.stuck = False
        threading.Thread(target=self._loop, daemon=True, name="opsagent-provider").start()

    def _loop(self) -> None:
        while True:
            fn, box, done = self._jobs.get()
            try:
                box["value"] = fn()
            except BaseException as e:  # handed to the caller, which decides
                box["error"] = e
            done.set()

    def call(self, fn: Callable[[], T], timeout: float) -> T:
        box: dict[str, Any] = {}
        done = threading.Event()
        self._jobs.put((fn, box, done))
        if not done.wait(timeout):
            self.stuck = True
            raise ProviderTimeout(f"did not finish within {timeout:g}s")
        if "error" in box:
            raise box["error"]
        return box["value"]  # type: ignore[no-any-return]


class Engine:
    def __init__(self, ctx: ProviderContext,
                 should_stop: Callable[[], bool] | None = None) -> None:
        self.ctx = ctx
        self._worker = _Worker()
        # Asked between resources: the agent service stops after the action in flight.
        self.should_stop = should_stop or (lambda: False)

    def _call(self, fn: Callable[[], T], timeout: float) -> T:
        if self._worker.stuck:
            self._worker = _Worker()
        return self._worker.call(fn, timeout)

    def run(self, loaded: LoadedPlaybook, mode: Mode,
            only: Collection[str] | None = None) -> RunResult:
        """Reconcile every resource, or only the KIND:NAME refs in ``only`` (the service's
        targeted runs); handlers owed from earlier runs are run either way."""
        run = RunResult(loaded, self.ctx.host, mode, time.time())
        pb = loaded.model
        notified: dict[str, list[str]] = {}
        last_specs = self._converged(pb.name) if mode == "apply" else {}
        converged: dict[str, str] = {}
        for kind in RESOURCE_KINDS:
            specs = [s for s in getattr(pb, kind) if only is None or f"{kind}:{s.name}" in only]
            if not specs:
                continue
            provider = load(kind)
            early = self._observe_all(provider, specs)
            for spec in specs:
                if self.should_stop():
                    run.results.append(ResourceResult(kind, spec.name, "skipped",
                                                      "not reconciled: the agent is stopping"))
                    continue
                result = self._reconcile(kind, spec, provider, mode, early.get(id(spec)))
                run.results.append(result)
                if mode == "apply":
                    d = spec_digest(spec)
                    result.spec_changed = last_specs.get(result.ref) != d
                    if result.status in ("ok", "changed"):
                        converged[result.ref] = d
                if result.status == "changed" and spec.notify:
                    for ref in spec.notify:
                        notified.setdefault(ref, []).append(result.ref)
                    if mode == "apply":
                        self._owe(pb.name, spec.notify, result.ref)
        if only is None:
            for kind in OBSERVED_KINDS:
                for spec in getattr(pb, kind):
                    run.results.append(ResourceResult(kind, spec.name, "skipped", PENDING[kind]))
        owed = self._owed(pb.name)
        for ref, notifiers in owed.items():
            known = notified.setdefault(ref, [])
            known.extend(f"{n} (owed by an earlier run)" for n in notifiers if n not in known)
        if not self.should_stop():
            self._run_handlers(run, notified, owed)
        run.finished = time.time()
        if converged:
            try:
                ConvergedSpecs(self.ctx.state_dir).record(pb.name, converged, run.finished)
            except OpsAgentError as e:
                log.warning("cannot record the converged specs: %s", e)
        return run

    def _converged(self, playbook: str) -> dict[str, str]:
        try:
            return ConvergedSpecs(self.ctx.state_dir).digests(playbook)
        except OpsAgentError as e:
            log.warning("cannot read the converged specs: %s", e)
            return {}

    def _owe(self, playbook: str, refs: list[str], notifier: str) -> None:
        """Write the notifications down before any handler runs (replayed after a crash)."""
        try:
            PendingHandlers(self.ctx.state_dir).add(playbook, refs, notifier, time.time())
        except OpsAgentError as e:
            log.warning("cannot record the handlers owed by %s: %s", notifier, e)

    def _owed(self, playbook: str) -> dict[str, list[str]]:
        try:
            return PendingHandlers(self.ctx.state_dir).owed(playbook)
        except OpsAgentError as e:
            log.warning("cannot read the handlers owed by earlier runs: %s", e)
            return {}

    def _paid(self, run: RunResult, ref: str) -> None:
        if run.mode != "apply":
            return
        try:
            PendingHandlers(self.ctx.state_dir).done(run.playbook.model.name, ref)
        except OpsAgentError as e:
            log.warning("cannot clear the handler owed to %s: %s", ref, e)

    def _observe_all(self, provider: Provider | None, specs: list[Any]
                      ) -> dict[int, tuple[float, Any, BaseException | None]]:
        """Observe independent resources concurrently (providers that say PARALLEL_OBSERVE:
        one API round trip each, no order between them); id(spec) -> (seconds, observed,
        error). The first is observed alone so shared clients are made once."""
        if (provider is None or len(specs) < 2 or not getattr(provider, "PARALLEL_OBSERVE", False)
                or provider.supports(self.ctx)):
            return {}
        out: dict[int, tuple[float, Any, BaseException | None]] = {}
        gate = threading.Semaphore(OBSERVE_PARALLELISM)

        def one(spec: Any) -> None:
            with gate:
                t0 = time.monotonic()
                try:
                    out[id(spec)] = (time.monotonic() - t0, provider.observe(spec, self.ctx), None)
                except BaseException as e:  # handed to the resource's own reconcile
                    out[id(spec)] = (time.monotonic() - t0, None, e)

        one(specs[0])
        threads = [threading.Thread(target=one, args=(s,), daemon=True) for s in specs[1:]]
        for t in threads:
            t.start()
        deadline = time.monotonic() + max(s.timeout or OBSERVE_TIMEOUT for s in specs)
        for t in threads:
            t.join(max(0.0, deadline - time.monotonic()))
        return dict(out)  # a resource still missing here is observed again on its own

    def _reconcile(self, kind: str, spec: Any, provider: Provider | None,
                   mode: Mode, early: tuple[float, Any, BaseException | None] | None = None
                   ) -> ResourceResult:
        t0 = time.monotonic()
        result = ResourceResult(kind, spec.name, "ok", "")
        try:
            self._reconcile_into(result, spec, provider, mode, early)
        except ProviderError as e:
            result.status, result.message = "failed", str(e)
        except OpsAgentError as e:
            result.status, result.message = "failed", str(e)
        except Exception as e:  # a provider bug must not take down the run
            log.error("provider crash on %s:%s\n%s", kind, spec.name, traceback.format_exc())
            result.status = "failed"
            result.message = f"internal error in the {kind} provider: {type(e).__name__}: {e}"
        result.duration_s = time.monotonic() - t0 + (early[0] if early else 0.0)
        return result

    def _reconcile_into(self, result: ResourceResult, spec: Any, provider: Provider | None,
                        mode: Mode, early: tuple[float, Any, BaseException | None] | None
                        ) -> None:
        if provider is None:
            result.status, result.message = "skipped", PENDING.get(result.kind, "no provider")
            return
        reason = provider.supports(self.ctx)
        if reason:
            result.status, result.message = "skipped", reason
            return
        if early is not None:
            if early[2] is not None:
                raise early[2]
            observed = early[1]
        else:
            observed = self._call(lambda: provider.observe(spec, self.ctx),
                                  spec.timeout or OBSERVE_TIMEOUT)
        result.observed = observed
        changes = provider.diff(spec, observed)
        if not changes:
            result.message = provider.describe(spec, observed)
            return
        result.status, result.changes = "changed", changes
        if mode != "apply":
            result.message = "would change " + ", ".join(c.field for c in changes)
            return
        self._apply_and_verify(result, spec, provider, changes)

    def _apply_and_verify(self, result: ResourceResult, spec: Any, provider: Provider,
                          changes: list[Change]) -> None:
        apply_timeout = spec.timeout or APPLY_TIMEOUT
        outcomes = self._call(lambda: provider.apply(spec, changes, self.ctx), apply_timeout)
        result.outcomes.extend(outcomes)
        failed = [o for o in outcomes if not o.ok]
        if failed:
            result.status = "failed"
            result.message = "; ".join(o.message for o in failed)
            return
        observed = self._call(lambda: provider.observe(spec, self.ctx),
                              spec.timeout or OBSERVE_TIMEOUT)
        result.observed = observed
        left = [c for c in provider.diff(spec, observed) if c.field != RESTART]
        if left:
            result.status = "failed"
            result.message = "still differs after apply: " + "; ".join(
                f"{c.field} ({c.reason})" for c in left)
            return
        result.message = "changed " + ", ".join(dict.fromkeys(c.field for c in changes)) + \
            "; now " + provider.describe(spec, observed)

    def _run_handlers(self, run: RunResult, notified: dict[str, list[str]],
                      owed: Collection[str] = ()) -> None:
        if not notified:
            return
        by_ref = {r.ref: r for r in run.results}
        pb = run.playbook.model
        declared = {f"{k}:{s.name}" for k in RESOURCE_KINDS for s in getattr(pb, k)}
        for ref in owed:
            if ref not in declared:  # the playbook no longer has it: nothing to restart
                log.warning("dropping the handler owed to %s: not in playbook %s", ref, pb.name)
                self._paid(run, ref)
        for kind in RESOURCE_KINDS:
            for spec in getattr(pb, kind):
                ref = f"{kind}:{spec.name}"
                if ref not in notified:
                    continue
                result = by_ref.get(ref)
                if result is None:  # a targeted run: the handler's resource was not in it
                    result = ResourceResult(kind, spec.name, "ok", "")
                    run.results.append(result)
                if result.status == "failed":
                    continue  # still owed: replayed once the resource works again
                if result.status == "skipped" or _started(result):
                    self._paid(run, ref)  # started in this run: it already runs the new config
                    continue
                change = Change(RESTART, None, "restarted",
                                "notified by " + ", ".join(notified[ref]))
                t0 = time.monotonic()
                result.status = "changed"
                result.changes = [*result.changes, change]
                if run.mode != "apply":
                    result.message = "would change " + ", ".join(c.field for c in result.changes)
                    continue
                provider = load(kind)
                assert provider is not None
                try:
                    self._apply_and_verify(result, spec, provider, [change])
                    if not _failed(result):  # a failed handler stays owed
                        self._paid(run, ref)
                except OpsAgentError as e:
                    result.status, result.message = "failed", f"handler: {e}"
                except Exception as e:
                    log.error("handler crash on %s\n%s", ref, traceback.format_exc())
                    result.status = "failed"
                    result.message = f"internal error in the {kind} handler: {e}"
                result.duration_s += time.monotonic() - t0


def _failed(result: ResourceResult) -> bool:
    return result.status == "failed"


def _label(mode: Mode, r: ResourceResult) -> Label:
    if mode != "apply":
        return "would-change"
    if r.status == "failed":
        return "failed"
    return "intentional" if r.spec_changed else "corrective"


def _started(result: ResourceResult) -> bool:
    """Whether the resource was (re)started in this run, after its notifiers were applied."""
    return any(c.field == RESTART or (c.field == "state" and c.after in ("running", "restarted"))
               for c in result.changes)


def run_playbook(loaded: LoadedPlaybook, mode: Mode, ctx: ProviderContext,
                 only: Collection[str] | None = None) -> RunResult:
    return Engine(ctx).run(loaded, mode, only)


def report_of(run: RunResult, agent_version: str) -> Any:
    """The report document (agent.report.document.RunReport) of a run."""
    from agent.report.document import (
        ChangeDoc,
        OutcomeDoc,
        PlaybookRef,
        ResultDoc,
        RunReport,
        Summary,
        utc_iso,
    )

    results = [
        ResultDoc(kind=r.kind, name=r.name, status=r.status, message=r.message,
                  changes=[ChangeDoc(field=c.field, before=c.before, after=c.after,
                                     reason=c.reason, label=_label(run.mode, r))
                           for c in r.changes],
                  outcomes=[OutcomeDoc(action=o.action, ok=o.ok, message=o.message)
                            for o in r.outcomes],
                  duration_s=round(r.duration_s, 6))
        for r in run.results
    ]
    return RunReport(
        host=run.host, mode=run.mode,
        playbook=PlaybookRef(name=run.playbook.model.name, path=run.playbook.path,
                             revision=run.playbook.revision),
        started_at=utc_iso(run.started), finished_at=utc_iso(run.finished),
        duration_s=round(run.finished - run.started, 6), agent_version=agent_version,
        summary=Summary(ok=run.count("ok"), changed=run.count("changed"),
                        failed=run.count("failed"), skipped=run.count("skipped")),
        results=results,
    )
