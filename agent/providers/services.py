"""`services:` provider — systemd units over D-Bus (dbus-fast), never by parsing systemctl.

``observe`` asks systemd for the unit (LoadUnit, then one Properties.GetAll for every
interface) and reads the unit file and drop-ins the playbook owns from /etc/systemd/system.
``diff`` compares them with the spec; ``None`` fields are unmanaged. ``apply`` observes again
and acts in one fixed order, whatever the order of the changes: unmask → write files →
daemon-reload (Manager.Reload) → stop → mask → enable/disable → daemon-reload → start/restart
(see ``_services_apply``). Jobs are awaited through JobRemoved and a start is only a start
once the unit stayed active for ``SETTLE_S``: a unit that dies at once
(``ExecStart=/bin/false``) is reported failed with ActiveState/SubState/Result and its last
journal lines.

Every start or restart the agent does counts against the spec's restart budget
(``_budget``); past it the provider refuses to act and the resource fails.
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from agent.errors import InternalError
from agent.playbook.models.services import ServiceSpec
from agent.providers import _budget
from agent.providers import _unit_files as uf
from agent.providers._budget import Verdict
from agent.providers.base import RESTART, Change, Outcome, ProviderContext

if TYPE_CHECKING:
    from agent.providers._systemd_dbus import SystemdBus

SYSTEMD_RUNTIME_DIR = "/run/systemd/system"  # exists iff systemd is PID 1 (sd_booted)
CALL_TIMEOUT_S = 10.0  # one D-Bus call; a spec's timeout lowers it
JOB_TIMEOUT_S = 90.0  # a start/stop/restart job or a daemon-reload
SETTLE_S = 0.5  # a started unit must stay active this long
MAX_INLINE_BACKOFF_S = 30.0  # longer backoffs fail the run instead of blocking it
_CACHE_KEY = "services.bus"

ACTIVE = ("active", "reloading")
MASKED = ("masked", "masked-runtime")
ENABLED = ("enabled", "alias")
# UnitFileStates that EnableUnitFiles cannot turn into "enabled".
NOT_ENABLEABLE = ("static", "generated", "transient", "indirect")


@dataclass(frozen=True, slots=True)
class UnitStatus:
    """The D-Bus properties the provider reads, from one GetAll."""

    load_state: str
    active_state: str
    sub_state: str
    result: str
    unit_file_state: str
    fragment_path: str
    need_daemon_reload: bool = False
    main_pid: int = 0
    active_enter_us: int = 0
    load_error: str = ""

    @property
    def masked(self) -> bool:
        return self.load_state == "masked" or self.unit_file_state in MASKED

    @property
    def enabled(self) -> bool:
        return self.unit_file_state in ENABLED

    def text(self) -> str:
        """'active (running, pid 42)', 'failed (failed, Result=exit-code)', 'not found'."""
        if self.load_state == "not-found":
            return "not found"
        inner = [self.sub_state]
        if self.main_pid:
            inner.append(f"pid {self.main_pid}")
        if self.result and self.result != "success":
            inner.append(f"Result={self.result}")
        return f"{self.active_state} ({', '.join(inner)})"

    def detail(self) -> str:
        return (f"ActiveState={self.active_state} SubState={self.sub_state} "
                f"Result={self.result or '-'}")


def parse_status(props: Mapping[str, Any]) -> UnitStatus:
    """The properties of one Properties.GetAll (values already unwrapped from Variants)."""
    err = props.get("LoadError")
    load_error = str(err[1]) if isinstance(err, list | tuple) and len(err) == 2 else ""
    return UnitStatus(
        load_state=str(props.get("LoadState", "")), active_state=str(props.get("ActiveState", "")),
        sub_state=str(props.get("SubState", "")), result=str(props.get("Result", "")),
        unit_file_state=str(props.get("UnitFileState", "")),
        fragment_path=str(props.get("FragmentPath", "")),
        need_daemon_reload=bool(props.get("NeedDaemonReload", False)),
        main_pid=int(props.get("MainPID", 0) or 0),
        active_enter_us=int(props.get("ActiveEnterTimestamp", 0) or 0), load_error=load_error)


@dataclass(frozen=True, slots=True)
class ServiceObserved:
    unit: str
    status: UnitStatus
    unit_file: uf.FileView | None = None  # None: the playbook does not own the unit file
    dropins: dict[str, uf.FileView] = field(default_factory=dict)  # the owned ones, by name


PARALLEL_OBSERVE = True  # one LoadUnit + GetAll per unit; no order between units


def supports(ctx: ProviderContext) -> str | None:
    if not os.path.isdir(SYSTEMD_RUNTIME_DIR):
        return f"systemd is not running on this host ({SYSTEMD_RUNTIME_DIR} does not exist)"
    return None


def observe(spec: ServiceSpec, ctx: ProviderContext) -> ServiceObserved:
    status = read_status(_bus(ctx), spec)
    unit_file = uf.read_view(uf.unit_path(spec.unit)) if spec.unit_file is not None else None
    dropins = {n: uf.read_view(uf.dropin_path(spec.unit, n)) for n in spec.dropins or {}}
    return ServiceObserved(spec.unit, status, unit_file, dropins)


def diff(spec: ServiceSpec, observed: ServiceObserved) -> list[Change]:
    st, unit = observed.status, observed.unit
    changes: list[Change] = []
    if spec.masked is False and st.masked:
        changes.append(Change("masked", True, False, f"{unit} is masked and masked is false"))
    files = _file_changes(spec, observed)
    changes += files
    if (spec.unit_file is not None or spec.dropins) and st.need_daemon_reload and not files:
        changes.append(Change("daemon_reload", "needed", "done",
                              f"{unit}'s files changed on disk since systemd loaded them"))
    if spec.state == "stopped" and st.active_state not in ("inactive", "failed"):
        changes.append(Change("state", st.text(), "stopped", f"{unit} is {st.active_state}"))
    if spec.masked is True and not st.masked:
        changes.append(Change("masked", False, True, f"{unit} is not masked"))
    if spec.enabled is not None and spec.enabled != st.enabled:
        before = st.unit_file_state or "no unit file"
        why = f"{unit} is {before}" if st.unit_file_state else f"{unit} has no unit file"
        changes.append(Change("enabled", before, spec.enabled, why))
    if spec.state == "running" and st.active_state not in ACTIVE:
        masked = "masked, " if st.masked else ""
        changes.append(Change("state", st.text(), "running", f"{unit} is {masked}{st.text()}"))
    if spec.state == "restarted":
        changes.append(Change(RESTART, st.text(), "restarted",
                              "state is restarted: restarted on every apply"))
    return changes


def _file_changes(spec: ServiceSpec, observed: ServiceObserved) -> list[Change]:
    unit, out = observed.unit, []
    if spec.unit_file is not None and observed.unit_file is not None:
        out += _content_change("unit_file", uf.unit_path(unit), observed.unit_file,
                               spec.unit_file)
    for name, content in (spec.dropins or {}).items():
        view, path = observed.dropins.get(name), uf.dropin_path(unit, name)
        if view is None:
            continue
        if content is None:
            if view.kind != "missing":
                out.append(Change(f"dropins.{name}", view.summary(), None,
                                  f"{path} exists and its content is null (remove)"))
        else:
            out += _content_change(f"dropins.{name}", path, view, content)
    return out


def _content_change(fld: str, path: str, view: uf.FileView, content: str) -> list[Change]:
    if view.kind == "file" and view.content == content:
        return []
    reason = {"missing": f"{path} does not exist", "file": f"{path} differs",
              "symlink": f"{path} is a symlink to {view.target}",
              "other": f"{path} is not a regular file"}[view.kind]
    return [Change(fld, view.summary(), uf.content_summary(content), reason,
                   diff=uf.text_diff(path, view, content))]


def describe(spec: ServiceSpec, observed: ServiceObserved) -> str:
    st = observed.status
    parts = [f"{observed.unit} is {'masked, ' if st.masked else ''}{st.text()}"]
    if st.unit_file_state and not st.masked:
        parts.append(st.unit_file_state)
    if spec.unit_file is not None:
        parts.append("unit file as declared")
    if spec.dropins:
        n = len(spec.dropins)
        parts.append(f"{n} drop-in{'s' if n != 1 else ''} as declared")
    return ", ".join(parts)


def apply(spec: ServiceSpec, changes: list[Change], ctx: ProviderContext) -> list[Outcome]:
    from agent.providers import _services_apply

    known = {"masked", "unit_file", "daemon_reload", "state", "enabled", RESTART}
    for c in changes:
        if c.field not in known and not c.field.startswith("dropins."):
            raise InternalError(f"the services provider cannot apply {c.field}={c.after!r}")
    return _services_apply.apply_changes(spec, changes, ctx, _bus(ctx))


# --- shared with _services_apply --------------------------------------------------------

def _bus(ctx: ProviderContext) -> SystemdBus:
    """The run's systemd connection, created on first use, closed with the context."""
    bus: SystemdBus | None = ctx.cache.get(_CACHE_KEY)
    if bus is None:
        from agent.providers._systemd_dbus import SystemdBus

        bus = SystemdBus(CALL_TIMEOUT_S)
        weakref.finalize(ctx, bus.close)
        ctx.cache[_CACHE_KEY] = bus
    return bus


def call_timeout(spec: ServiceSpec) -> float:
    return min(CALL_TIMEOUT_S, spec.timeout * 0.8) if spec.timeout else CALL_TIMEOUT_S


def job_timeout(spec: ServiceSpec) -> float:
    return min(JOB_TIMEOUT_S, spec.timeout * 0.8) if spec.timeout else JOB_TIMEOUT_S


def read_status(bus: SystemdBus, spec: ServiceSpec) -> UnitStatus:
    return parse_status(bus.unit_properties(spec.unit, call_timeout(spec)))


def take_budget(spec: ServiceSpec, ctx: ProviderContext) -> Verdict:
    """Spend one attempt of the spec's restart budget, waiting out a short backoff first."""
    limit = min(MAX_INLINE_BACKOFF_S, (spec.timeout or 120.0) / 2)
    return _budget.spend(ctx, f"services:{spec.name}", spec.restart, limit)
