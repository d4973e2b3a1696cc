"""One backup run, and what is stored: what the CLI and the agent service call.

``run_backup`` never raises for an operational failure (a dump tool failing, a full disk, a
run already in progress, a failed verification): the result says what happened, so the
service can report it and go on. Only defects in opsagent propagate.
"""

from __future__ import annotations

import logging
import socket
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from agent import __version__
from agent.backups import BackupBusy, BackupError
from agent.backups.sources import SourceContext, artefacts, source_kind
from agent.backups.store import (
    ArtefactInfo,
    RunInfo,
    RunWriter,
    hold_lock,
    iso,
    list_runs,
    new_run_id,
    read_run,
    remove_leftovers,
)
from agent.errors import OpsAgentError
from agent.playbook.models.backups import BackupSpec
from agent.playbook.types import format_size

log = logging.getLogger("opsagent.backups")


@dataclass(frozen=True)
class BackupResult:
    backup: str
    run_id: str | None             # None: nothing was stored
    path: str | None
    started: datetime
    duration_s: float              # the whole call, verification included
    artefacts: tuple[ArtefactInfo, ...]
    bytes_raw: int
    bytes_stored: int
    verified: bool | None          # None: no verify: configured (or the run failed first)
    error: str | None = None       # the run's or the verification's failure
    busy: bool = False             # refused: another run of this backup holds the lock
    verify: Any = None             # the VerifyResult when verification ran

    @property
    def ok(self) -> bool:
        return self.error is None

    def as_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in asdict(self).items() if k != "verify"}
        d["started"] = iso(self.started)
        d["ok"] = self.ok
        d["verify"] = self.verify.as_dict() if self.verify is not None else None
        return d


def run_backup(spec: BackupSpec, *, now: datetime | None = None,
               host: str | None = None) -> BackupResult:
    """Read the source, store a new run atomically, then verify it when ``verify:`` says so.

    ``now`` (timezone-aware) stands for the start time in the run id and the manifest, for
    tests and catch-up runs; the duration is always measured.
    """
    started = (now or datetime.now(UTC)).astimezone(UTC)
    t0 = time.monotonic()
    stored: tuple[ArtefactInfo, ...] = ()
    run: RunInfo | None = None

    def result(error: str | None, **kw: Any) -> BackupResult:
        return BackupResult(
            backup=spec.name, run_id=run.run_id if run else None,
            path=run.path if run else None, started=started,
            duration_s=round(time.monotonic() - t0, 3), artefacts=stored,
            bytes_raw=sum(a.bytes_raw for a in stored),
            bytes_stored=sum(a.bytes_stored for a in stored), verified=kw.pop("verified", None),
            error=error, **kw)

    try:
        with hold_lock(spec):
            for name in remove_leftovers(spec):
                log.warning("backup %s: removed %s, left by a run that did not finish",
                            spec.name, name)
            run = _store_run(spec, started, t0, host or socket.gethostname())
            stored = run.artefacts
            log.info("backup %s: stored run %s (%d artefacts, %d bytes)", spec.name,
                     run.run_id, len(stored), run.bytes_stored)
            if spec.verify is None:
                return result(None)
            from agent.backups.verify import verify_locked

            outcome = verify_locked(spec, run, deadline=t0 + spec.timeout)
            return result(None if outcome.ok else f"verification failed: {outcome.error}",
                          verified=outcome.ok, verify=outcome)
    except BackupBusy as e:
        return result(str(e), busy=True)
    except (OpsAgentError, OSError) as e:
        text = (_os_error(spec, e) if isinstance(e, OSError) and not isinstance(e, OpsAgentError)
                else str(e))
        log.error("backup %s failed: %s", spec.name, text)
        return result(text)


def _store_run(spec: BackupSpec, started: datetime, t0: float, host: str) -> RunInfo:
    import zstandard

    writer = RunWriter(spec, new_run_id(started))
    try:
        ctx = SourceContext(deadline=t0 + spec.timeout, scratch=writer.scratch_path)
        for art in artefacts(spec.source, ctx):
            with art.open() as stream:
                writer.add(art.name, art.file_stem, art.kind, stream, size_hint=art.size_hint,
                           meta=art.meta)
        tools = {**ctx.tools, "zstd": ".".join(str(x) for x in zstandard.ZSTD_VERSION),
                 "python-zstandard": zstandard.__version__}
        duration = time.monotonic() - t0
        finished = datetime.fromtimestamp(started.timestamp() + duration, UTC)
        path = writer.commit(source=source_kind(spec.source), host=host, started=started,
                             finished=finished, duration_s=duration, tools=tools,
                             version=__version__)
    except BaseException:
        writer.discard()
        raise
    run = read_run(path)
    if run is None:
        raise BackupError(f"{path}: the manifest just written cannot be read back")
    return run


def _os_error(spec: BackupSpec, e: OSError) -> str:
    where = e.filename or spec.destination
    return f"{where}: {e.strerror or e}"


def list_backups(spec: BackupSpec) -> list[RunInfo]:
    """The complete runs of the backup, oldest first; half-written runs are never listed."""
    return list_runs(spec)


def newest_age(spec: BackupSpec, *, now: datetime | None = None) -> float | None:
    """Seconds since the newest complete run finished; None when there is none (max_age)."""
    runs = list_runs(spec)
    if not runs:
        return None
    ref = now.timestamp() if now is not None else time.time()
    return max(0.0, ref - max(r.finished for r in runs).timestamp())


def find_spec(specs: list[BackupSpec], name: str) -> BackupSpec:
    """The backup called ``name`` (UsageError naming the ones there are)."""
    from agent.errors import UsageError

    for spec in specs:
        if spec.name == name:
            return spec
    have = ", ".join(s.name for s in specs) or "none"
    raise UsageError(f"no backup named {name!r} in the playbooks (there are: {have})")


def describe(run: RunInfo) -> str:
    state = {None: "not verified", True: "verified", False: "verification FAILED"}[run.verified]
    return (f"{run.run_id}  {iso(run.finished)}  {len(run.artefacts)} artefacts  "
            f"{format_size(run.bytes_raw)} → {format_size(run.bytes_stored)}  {state}")
