"""A fleet run: hosts in waves, each wave's hosts in parallel (forks), each host reached once
over SSH and sent one request per part of the run (agent.fleet.remote).

Waves follow Ansible's ``serial``: a count or a percentage of all targeted hosts, or a list
of them whose last item repeats (``[1, "10%", "50%"]``: one canary host, then a tenth, then
halves). After each wave the run stops, leaving the later waves untouched, when more than
``max_fail_percentage`` of the wave's hosts failed (without it: when all of them did). An
unreachable host counts as failed; it is reported with the reason and never holds up the
others: connecting and every request have their own timeouts.

A runbook's confirm steps split it into parts; the controller asks the operator before a
part (once for the whole run: the answer holds for every host and wave), unless --yes.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

from agent.fleet.execute import now_iso

Serial = int | str | list[int | str] | None


def waves(hosts: Sequence[Any], serial: Serial) -> list[list[Any]]:
    """Split hosts into waves as Ansible's serial does (each wave at least one host)."""
    if serial is None or serial == []:
        return [list(hosts)] if hosts else []
    items = serial if isinstance(serial, list) else [serial]
    total, out, at, k = len(hosts), [], 0, 0
    while at < total:
        item = items[min(k, len(items) - 1)]
        size = max(1, int(total * float(item.rstrip("%")) / 100) if isinstance(item, str)
                   else item)
        out.append(list(hosts[at:at + size]))
        at += size
        k += 1
    return out


def too_many_failed(failed: int, size: int, max_fail_percentage: float | None) -> bool:
    if size == 0:
        return False
    if max_fail_percentage is None:
        return failed == size
    return failed * 100 / size > max_fail_percentage


class Transport(Protocol):
    """How a request reaches one host: over SSH, or in this process for the local host."""

    def call(self, request: dict[str, Any], timeout: float) -> dict[str, Any]: ...

    def close(self) -> None: ...


class Unreachable(Exception):
    """The host could not be reached, or its answer could not be read."""


@dataclass
class HostState:
    name: str
    vars: dict[str, Any]
    inventory_host: Any = None  # agent.inventory.Host; None for the local host
    transport: Transport | None = None
    # pending, ok, changed, would-change, failed, unreachable or skipped
    status: str = "pending"
    message: str = ""
    outcomes: list[dict[str, Any]] = field(default_factory=list)
    undo_log: list[dict[str, Any]] = field(default_factory=list)
    stopped: bool = False  # no further parts run on it
    served_by: str = ""  # what ran the last part there: "process" or "agent service (pid N)"
    answer: dict[str, Any] = field(default_factory=dict)

    @property
    def failed(self) -> bool:
        return self.status in ("failed", "unreachable")


@dataclass
class FleetRun:
    """The state of one run, shared with the progress printer and the incident record."""

    hosts: list[HostState]
    timeline: list[dict[str, str]] = field(default_factory=list)
    aborted: str | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def event(self, text: str) -> str:
        """Add to the timeline; the event's time."""
        at = now_iso()
        with self.lock:
            self.timeline.append({"at": at, "event": text})
        return at


Connect = Callable[[HostState], Transport]
Part = Callable[[HostState], dict[str, Any] | None]  # a host's request, None: nothing to do
Absorb = Callable[[HostState, dict[str, Any]], None]


def run_waves(run: FleetRun, *, serial: Serial, max_fail_percentage: float | None,
              forks: int, timeout: float, connect: Connect,
              parts: Sequence[tuple[str | None, Part, Absorb]],
              ask: Callable[[str], bool],
              progress: Callable[[HostState, str], None] = lambda h, s: None) -> None:
    """Run every part on every wave's hosts. A part is (confirm prompt or None, the request
    of a host, what to do with its answer). Fills the hosts' states and the timeline."""
    confirmed: dict[int, bool] = {}
    all_waves = waves(run.hosts, serial)
    try:
        for w, wave in enumerate(all_waves, 1):
            if len(all_waves) > 1:
                run.event(f"wave {w} of {len(all_waves)}: {', '.join(h.name for h in wave)}")
            for p, (prompt, request, absorb) in enumerate(parts):
                if prompt is not None:
                    if p not in confirmed:
                        confirmed[p] = ask(prompt)
                        run.event(("confirmed: " if confirmed[p] else "declined: ") + prompt)
                    if not confirmed[p]:
                        run.aborted = f"declined: {prompt}"
                        break
                live = [h for h in wave if not h.stopped]
                if not live:
                    break
                with ThreadPoolExecutor(max_workers=max(1, min(forks, len(live)))) as pool:
                    list(pool.map(_one, live, [request] * len(live), [absorb] * len(live),
                                  [connect] * len(live), [timeout] * len(live),
                                  [progress] * len(live)))
            if run.aborted:
                break
            failed = sum(1 for h in wave if h.failed)
            if w < len(all_waves) and too_many_failed(failed, len(wave), max_fail_percentage):
                limit = ("all of them" if max_fail_percentage is None
                         else f"over max_fail_percentage {max_fail_percentage:g}%")
                run.aborted = (f"stopped after wave {w}: {failed} of {len(wave)} hosts failed "
                               f"({limit})")
                run.event(run.aborted)
                break
    finally:
        for h in run.hosts:
            if h.status == "pending":
                h.status = "skipped"
                h.message = f"not run: {run.aborted}" if run.aborted else "not run"
            if h.transport is not None:
                h.transport.close()
                h.transport = None


def _one(h: HostState, request: Part, absorb: Absorb, connect: Connect, timeout: float,
         progress: Callable[[HostState, str], None]) -> None:
    req = request(h)
    if req is None:
        return
    try:
        if h.transport is None:
            progress(h, "connecting")
            h.transport = connect(h)
        answer = h.transport.call(req, timeout)
    except Unreachable as e:
        h.status, h.message, h.stopped = "unreachable", str(e), True
        progress(h, "unreachable")
        return
    h.served_by = str(answer.get("served_by") or "")
    if not answer.get("ok"):
        h.status, h.stopped = "failed", True
        h.message = f"the agent there refused the request: {answer.get('error')}"
        progress(h, "failed")
        return
    absorb(h, answer)
    progress(h, h.status)


def where(h: HostState) -> dict[str, Any]:
    """The request fields every part carries from the host's variables: the agent's state
    directory (``opsagent_state_dir``) and whether its agent service may run the part
    (``opsagent_agent_service``, default true; false, no, off or 0 turn it off)."""
    from agent.inventory.model import as_flag

    use = as_flag(h.vars.get("opsagent_agent_service", True))
    return {"state_dir": h.vars.get("opsagent_state_dir"), "agent_service": use is not False}


# -- transports ------------------------------------------------------------------------------

class LocalTransport:
    """This host, in this process (``opsagent remediate RUNBOOK`` without -i)."""

    def call(self, request: dict[str, Any], timeout: float) -> dict[str, Any]:
        from agent.fleet import remote

        if request["op"] == "remediate":
            return {"ok": True, **remote.remediate(request)}
        return {"ok": True, **remote.reconcile(request)}

    def close(self) -> None:
        pass


class SSHTransport:
    """One paramiko connection; each request is one ``opsagent fleet-exec`` there."""

    def __init__(self, conn: Any, opsagent: str) -> None:
        self.conn, self.opsagent = conn, opsagent

    def call(self, request: dict[str, Any], timeout: float) -> dict[str, Any]:
        import json

        from agent.fleet.ssh import SSHError

        try:
            res = self.conn.run([self.opsagent, "fleet-exec"],
                                stdin=json.dumps(request).encode(), timeout=timeout)
        except SSHError as e:
            raise Unreachable(e.message) from None
        try:
            answer: dict[str, Any] = json.loads(res.stdout)
            if not isinstance(answer, dict):
                raise ValueError
        except ValueError:
            err = res.stderr.decode(errors="replace").strip().splitlines()
            why = err[-1] if err else f"exit status {res.exit_code}, no answer"
            if res.exit_code == 127:
                why = (f"{self.opsagent} is not installed there (set the host variable "
                       f"opsagent_path): {why}")
            raise Unreachable(f"no answer from the agent: {why[:300]}") from None
        return answer

    def close(self) -> None:
        self.conn.close()


def ssh_connect(options: Any) -> Connect:
    from agent.fleet.ssh import Connection, SSHError

    def connect(h: HostState) -> Transport:
        try:
            conn = Connection.open(h.inventory_host, options)
        except SSHError as e:
            raise Unreachable(e.message) from None
        return SSHTransport(conn, str(h.vars.get("opsagent_path") or "opsagent"))

    return connect


def elapsed(t0: float) -> str:
    s = time.monotonic() - t0
    return f"{s:.1f}s" if s < 120 else f"{math.floor(s / 60)}m{int(s % 60):02d}s"
