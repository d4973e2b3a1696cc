"""How the services provider changes a host: steps in a fixed order, jobs, the budget.

Order: unmask → write/remove owned files → daemon-reload → stop → mask → enable/disable →
daemon-reload → start/restart (each reload only when a step before it touched unit files).
The first step that fails ends the apply; its outcome says what systemd answered and, for a
unit that did not come up, its ActiveState/SubState/Result and last journal lines.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, NoReturn

from agent.providers import _unit_files as uf
from agent.providers.base import RESTART, Change, Outcome, ProviderContext
from agent.providers.services import (
    ACTIVE,
    NOT_ENABLEABLE,
    SETTLE_S,
    UnitStatus,
    job_timeout,
    read_status,
    take_budget,
)

if TYPE_CHECKING:
    from agent.playbook.models.services import ServiceSpec
    from agent.providers._systemd_dbus import SystemdBus

_POLL_S = 0.05


class _Failed(Exception):
    """A step's failed outcome, ending the apply."""

    def __init__(self, outcome: Outcome) -> None:
        self.outcome = outcome


def apply_changes(spec: ServiceSpec, changes: list[Change], ctx: ProviderContext,
                  bus: SystemdBus) -> list[Outcome]:
    from agent.providers._systemd_dbus import DBusCallError

    fields = {c.field for c in changes}
    done: list[Outcome] = []
    act = _Actor(spec, ctx, bus, done)
    steps: list[tuple[str, Callable[[], None]]] = []
    if "masked" in fields and spec.masked is False:
        steps.append(("unmask", act.unmask))
    if any(f == "unit_file" or f.startswith("dropins.") for f in fields):
        steps.append(("write", lambda: act.write_files(fields)))
    if "daemon_reload" in fields:
        act.reload_needed = True
    # Reload before anything reads the new files (enable reads [Install], start the unit).
    steps.append(("daemon-reload", act.reload_if_needed))
    if "state" in fields and spec.state == "stopped":
        steps.append(("stop", act.stop))
    if "masked" in fields and spec.masked:
        steps.append(("mask", act.mask))
    if "enabled" in fields:
        steps.append(("enable" if spec.enabled else "disable", act.set_enabled))
    steps.append(("daemon-reload", act.reload_if_needed))
    if "state" in fields and spec.state == "running":
        steps.append(("start", lambda: act.start_or_restart("StartUnit")))
    elif RESTART in fields:
        steps.append(("restart", act.restart))
    for action, step in steps:
        try:
            step()
        except _Failed as f:
            done.append(f.outcome)
            break
        except DBusCallError as e:
            done.append(Outcome(action, False, f"{action} {spec.unit}: systemd answered "
                                f"{e.name}: {e.text}"))
            break
    for o in done:
        ctx.log.info("services:%s: %s", spec.name, o.message.splitlines()[0])
    return done


class _Actor:
    def __init__(self, spec: ServiceSpec, ctx: ProviderContext, bus: SystemdBus,
                 done: list[Outcome]) -> None:
        self.spec, self.ctx, self.bus, self.done = spec, ctx, bus, done
        self.unit = spec.unit
        self.reload_needed = False

    def status(self) -> UnitStatus:
        return read_status(self.bus, self.spec)

    # --- unit files -----------------------------------------------------------------

    def unmask(self) -> None:
        self.bus.manager("UnmaskUnitFiles", "asb", [[self.unit], False])
        self.reload_needed = True
        self.done.append(Outcome("unmask", True, f"unmasked {self.unit}"))

    def mask(self) -> None:
        self.bus.manager("MaskUnitFiles", "asbb", [[self.unit], False, False])
        self.reload_needed = True
        self.done.append(Outcome("mask", True, f"masked {self.unit}"))

    def write_files(self, fields: set[str]) -> None:
        spec = self.spec
        if "unit_file" in fields and spec.unit_file is not None:
            path = uf.unit_path(self.unit)
            uf.write_unit_text(path, spec.unit_file)
            self.done.append(Outcome("write", True, f"wrote {path}"))
        for name, content in (spec.dropins or {}).items():
            if f"dropins.{name}" not in fields:
                continue
            path = uf.dropin_path(self.unit, name)
            if content is None:
                gone = uf.remove_unit_text(path)
                self.done.append(Outcome("remove", True,
                                         f"removed {path}" if gone else f"{path} already gone"))
            else:
                uf.write_unit_text(path, content)
                self.done.append(Outcome("write", True, f"wrote {path}"))
        self.reload_needed = True

    def set_enabled(self) -> None:
        st = self.status()
        if self.spec.enabled:
            if st.load_state == "not-found":
                self._fail("enable", f"cannot enable {self.unit}: no such unit "
                           "(give unit_file: to install one)")
            if st.unit_file_state in NOT_ENABLEABLE:
                self._fail("enable", f"cannot enable {self.unit}: it is {st.unit_file_state}"
                           + (" (its unit file has no [Install] section)"
                              if st.unit_file_state == "static" else ""))
            carries, links = self.bus.manager("EnableUnitFiles", "asbb",
                                              [[self.unit], False, False])
            if not carries and not links:
                self._fail("enable", f"cannot enable {self.unit}: its unit file has no "
                           "[Install] section")
            self.done.append(Outcome("enable", True, f"enabled {self.unit}"))
        else:
            runtime = st.unit_file_state == "enabled-runtime"
            self.bus.manager("DisableUnitFiles", "asb", [[self.unit], runtime])
            self.done.append(Outcome("disable", True, f"disabled {self.unit}"))
        self.reload_needed = True

    def reload_if_needed(self) -> None:
        if self.reload_needed:
            self.bus.manager("Reload", timeout=job_timeout(self.spec))
            self.reload_needed = False
            self.done.append(Outcome("daemon-reload", True, "reloaded systemd's unit files"))

    # --- jobs -----------------------------------------------------------------------

    def stop(self) -> None:
        st = self.status()
        if st.active_state in ("inactive", "failed"):
            self.done.append(Outcome("stop", True, f"{self.unit} was already {st.text()}"))
            return
        result = self._job("stop", "StopUnit")
        st = self.status()
        if result != "done" or st.active_state not in ("inactive", "failed"):
            self._fail("stop", self._failure(f"stop of {self.unit} ended with job result "
                                             f"{result}", st))
        self.done.append(Outcome("stop", True, f"stopped {self.unit}: now {st.text()}"))

    def restart(self) -> None:
        if self.spec.state == "stopped" or self.spec.masked:
            why = "its state is stopped" if self.spec.state == "stopped" else "it is masked"
            self.done.append(Outcome("restart", True, f"not restarted: {why}"))
            return
        # A notified unit whose state is unmanaged is restarted only if it runs.
        self.start_or_restart("TryRestartUnit" if self.spec.state is None else "RestartUnit")

    def start_or_restart(self, method: str) -> None:
        action = "start" if method == "StartUnit" else "restart"
        st = self.status()  # never act on a stale observation
        if st.load_state == "not-found":
            self._fail(action, f"cannot {action} {self.unit}: no such unit "
                       "(give unit_file: to install one)")
        if st.masked:
            self._fail(action, f"cannot {action} {self.unit}: it is masked "
                       "(masked: false unmasks it)")
        if method == "TryRestartUnit" and st.active_state not in ACTIVE:
            self.done.append(Outcome(action, True, f"not restarted: {self.unit} is "
                                     f"{st.text()} and its state is unmanaged"))
            return
        verdict = take_budget(self.spec, self.ctx)
        if not verdict.allowed:
            verb = "starting" if action == "start" else "restarting"
            why = f"{verdict.message}: not {verb} {self.unit}"
            self._fail(action, self._failure(
                why + (f" ({verdict.detail})" if verdict.detail else ""), st))
        result = self._job(action, method)
        st = self._settle() if result == "done" else self.status()
        if result != "done" or st.active_state not in ACTIVE:
            self._fail(action, self._failure(
                f"{action} of {self.unit} failed (job result: {result})", st))
        verb = "started" if action == "start" else "restarted"
        self.done.append(Outcome(action, True, f"{verb} {self.unit}{verdict.note}: "
                                 f"now {st.text()}"))

    def _job(self, action: str, method: str) -> str:
        job = self.bus.start_job(method, self.unit)
        timeout = job_timeout(self.spec)
        result = self.bus.wait_job(job, timeout)
        if result is None:
            self._fail(action, self._failure(
                f"{action} of {self.unit} did not finish within {timeout:g}s", self.status()))
        return result

    def _settle(self) -> UnitStatus:
        """Watch a started unit for SETTLE_S: one that dies at once did not start."""
        deadline = time.monotonic() + SETTLE_S
        while True:
            st = self.status()
            if st.active_state not in ACTIVE or time.monotonic() >= deadline:
                return st
            time.sleep(_POLL_S)

    def _failure(self, what: str, st: UnitStatus) -> str:
        lines = uf.read_journal(self.unit)
        return (f"{what}; {self.unit} is {st.detail()}\n"
                f"last journal lines of {self.unit}:\n" + "\n".join(f"  {ln}" for ln in lines))

    def _fail(self, action: str, message: str) -> NoReturn:
        raise _Failed(Outcome(action, False, message))

