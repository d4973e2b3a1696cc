"""Probes of things the host runs: a ``container`` (Docker), a ``service`` (systemd over
D-Bus) and a ``command`` (argv, never a shell).

Checks run for as long as the agent does, so the Docker client and the systemd connection
are made once and shared by every check (both are safe to use from several threads). The
Docker client follows the providers' policy (``providers._docker_client``): once the daemon
did not answer, the checks of the same moment fail at once, and it is asked again after
``_DOCKER_RETRY_S``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import tempfile
import threading
import time
from typing import TYPE_CHECKING, Any

from agent.checks import elapsed_ms, one_line
from agent.checks.base import Outcome
from agent.errors import ProviderError
from agent.playbook.models.checks import CommandProbe, NamedProbe

if TYPE_CHECKING:
    from agent.providers._systemd_dbus import SystemdBus
    from agent.providers.base import ProviderContext

_DOCKER_RETRY_S = 5.0
_OUTPUT_TAIL = 4096  # bytes of a command's output read back for its last line
_LINE_MAX = 200  # characters of that line in the message

_lock = threading.Lock()
# the context holding the Docker client, and when it was first seen down
_docker: tuple[ProviderContext, float | None] | None = None
_bus: SystemdBus | None = None


# --- container --------------------------------------------------------------------------

def probe_container(spec: NamedProbe, timeout: float) -> Outcome:
    import docker  # noqa: F401 - imported before the clock starts: the first import is slow

    start = time.monotonic()
    try:
        state = _inspect_state(spec.name)
    except ProviderError as e:
        return Outcome("unhealthy", one_line(str(e)), elapsed_ms(start))
    if state is None:
        return Outcome("unhealthy", f"no container named {spec.name}", elapsed_ms(start))
    outcome = container_health(spec.name, state)
    outcome.latency_ms = elapsed_ms(start)
    return outcome


def _inspect_state(name: str) -> dict[str, Any] | None:
    """The container's State as the daemon reports it, None when there is no such container."""
    import docker.errors

    from agent.providers import _docker_client

    ctx = _docker_context()
    client = _docker_client.client(ctx)
    with _docker_client.translated(ctx, f"inspecting container {name}"):
        try:
            attrs = client.api.inspect_container(name)
        except docker.errors.NotFound:
            return None
    return dict(attrs.get("State") or {})


def container_health(name: str, state: dict[str, Any]) -> Outcome:
    """Running and (if it has a healthcheck) healthy; degraded while the healthcheck starts."""
    status = str(state.get("Status", "unknown"))
    health = str((state.get("Health") or {}).get("Status", ""))
    if status != "running":
        code = f", exit code {state.get('ExitCode')}" if status == "exited" else ""
        return Outcome("unhealthy", f"container {name} is {status}{code}")
    if health in ("", "none", "healthy"):
        text = f"container {name} is running" + (", healthcheck healthy" if health else "")
        return Outcome("healthy", text)
    if health == "starting":
        return Outcome("degraded", f"container {name} is running, healthcheck starting")
    return Outcome("unhealthy", f"container {name} is running, healthcheck {health}")


def _docker_context() -> ProviderContext:
    """The context whose cache holds the shared client. Once the daemon was found down, checks
    fail at once for _DOCKER_RETRY_S; then a fresh context makes the next check ask again."""
    global _docker
    from agent.providers.base import ProviderContext

    with _lock:
        now = time.monotonic()
        if _docker is not None:
            ctx, down_seen = _docker
            if not ctx.cache.get("docker-down"):
                return ctx
            if down_seen is None:
                _docker = (ctx, now)
                return ctx
            if now - down_seen < _DOCKER_RETRY_S:
                return ctx
        ctx = ProviderContext(host="localhost", variables={}, base_dir="/", state_dir="/")
        _docker = (ctx, None)
        return ctx


# --- service ----------------------------------------------------------------------------

def probe_service(spec: NamedProbe, timeout: float) -> Outcome:
    from agent.playbook.models.services import unit_name
    from agent.providers.services import parse_status

    unit = unit_name(spec.name)
    bus = _systemd()
    start = time.monotonic()
    try:
        status = parse_status(bus.unit_properties(unit, timeout))
    except ProviderError as e:
        return Outcome("unhealthy", one_line(f"{unit}: {e}"), elapsed_ms(start))
    latency = elapsed_ms(start)
    if status.load_state == "not-found":
        return Outcome("unhealthy", f"{unit}: no such unit", latency)
    outcome = service_health(unit, status.active_state, status.text())
    outcome.latency_ms = latency
    return outcome


def service_health(unit: str, active_state: str, text: str) -> Outcome:
    """active = healthy; activating or reloading = degraded; anything else = unhealthy."""
    if active_state == "active":
        return Outcome("healthy", f"{unit} is {text}")
    if active_state in ("activating", "reloading"):
        return Outcome("degraded", f"{unit} is {text}")
    return Outcome("unhealthy", f"{unit} is {text}")


def _systemd() -> SystemdBus:
    global _bus
    with _lock:
        if _bus is None:
            import dbus_fast.aio  # noqa: F401 - here, not in the first (timed) call

            from agent.providers._systemd_dbus import SystemdBus

            _bus = SystemdBus()
        return _bus


# --- command ----------------------------------------------------------------------------

def probe_command(spec: CommandProbe, timeout: float) -> Outcome:
    """Run argv in its own session (a timeout kills its children too); output goes to a
    temporary file so a chatty command cannot fill the agent's memory."""
    name = os.path.basename(spec.argv[0])
    with tempfile.TemporaryFile() as out:
        try:
            code = _run(spec.argv, out, timeout)
        except OSError as e:
            return Outcome("unhealthy", one_line(f"cannot run {spec.argv[0]}: {e.strerror}"))
        last = _last_line(out)
    values = {"exit_code": float(code)} if code is not None else {}
    said = f": {last}" if last else ""
    if code is None:
        return Outcome("unhealthy", f"{name} did not finish within {timeout:g}s{said}", None,
                       values)
    if code != spec.expect_exit:
        return Outcome("unhealthy", f"{name} exited {code} (expected {spec.expect_exit}){said}",
                       None, values)
    return Outcome("healthy", f"{name} exited {code}{said}", None, values)


def _run(argv: list[str], out: Any, timeout: float) -> int | None:
    """The exit code, or None when it ran out of time (its process group is then killed)."""
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):  # the whole group already ended
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        return None


def _last_line(out: Any) -> str:
    size = out.seek(0, os.SEEK_END)
    out.seek(max(0, size - _OUTPUT_TAIL))
    lines = out.read().decode("utf-8", errors="replace").splitlines()
    last = next((line.strip() for line in reversed(lines) if line.strip()), "")
    return one_line(last, _LINE_MAX)
