"""systemd's Manager over the system bus (dbus-fast), driven from synchronous provider code.

The engine calls providers on a worker thread it may abandon when a call hangs, so the
asyncio side lives on its own daemon thread with its own event loop: every call is submitted
there with ``run_coroutine_threadsafe`` and bounded twice (``asyncio.wait_for`` inside, the
future's timeout outside). A bus that does not answer fails the call with a message that
names what was asked; the connection is then dropped and, for a short while, later calls
fail at once instead of each waiting out its own timeout.

Jobs (start, stop, restart) are awaited through the ``JobRemoved`` signal: the connection
subscribes once, and results are kept by job path so a signal that arrives before the
method's reply is not lost.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, TypeVar

from agent.errors import ProviderError, ProviderTimeout

if TYPE_CHECKING:
    from dbus_fast import Message
    from dbus_fast.aio import MessageBus

T = TypeVar("T")

SYSTEMD = "org.freedesktop.systemd1"
MANAGER_PATH = "/org/freedesktop/systemd1"
MANAGER = "org.freedesktop.systemd1.Manager"
PROPERTIES = "org.freedesktop.DBus.Properties"
_JOB_MATCH = (f"type='signal',sender='{SYSTEMD}',path='{MANAGER_PATH}',"
              f"interface='{MANAGER}',member='JobRemoved'")
_KEEP_JOB_RESULTS = 1000  # results of jobs nobody waited for (other clients'), oldest dropped
_QUIET_AFTER_HANG_S = 30.0  # after a hang, fail fast this long instead of waiting again


class DBusCallError(ProviderError):
    """systemd answered a call with a D-Bus error (``name`` is the error's name)."""

    def __init__(self, name: str, text: str) -> None:
        self.name = name
        self.text = text
        super().__init__(text or name)


class SystemdBus:
    """One system-bus connection to systemd with a private event loop thread."""

    def __init__(self, call_timeout: float = 10.0) -> None:
        self.call_timeout = call_timeout
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True,
                                         name="opsagent-dbus")
        self._thread.start()
        self._bus: MessageBus | None = None
        self._job_results: OrderedDict[str, str] = OrderedDict()
        self._job_event: asyncio.Event | None = None
        self._subscribed = False
        self._hung: tuple[float, str] | None = None
        self._closed = False

    # --- plumbing -----------------------------------------------------------------------

    def _run(self, make: Callable[[], Coroutine[Any, Any, T]], timeout: float, what: str) -> T:
        """Run one coroutine on the loop thread; a hang becomes ProviderTimeout."""
        if self._closed:
            raise ProviderError("the systemd connection is closed")
        if self._hung is not None:
            since, message = self._hung
            if time.monotonic() - since < _QUIET_AFTER_HANG_S:
                raise ProviderTimeout(f"not asking systemd again for {_QUIET_AFTER_HANG_S:g}s: "
                                      f"earlier in this run, {message}")
            self._hung = None

        async def bounded() -> T:
            return await asyncio.wait_for(make(), timeout)

        future = asyncio.run_coroutine_threadsafe(bounded(), self._loop)
        try:
            return future.result(timeout + 2.0)
        except TimeoutError:
            future.cancel()
            message = f"systemd did not answer {what} within {timeout:g}s " \
                      "(is the system bus or systemd hung?)"
            self._hung = (time.monotonic(), message)
            self._drop_connection()
            raise ProviderTimeout(message) from None
        except ProviderError:
            raise
        except (OSError, EOFError) as e:
            self._drop_connection()
            raise ProviderError(f"lost the system bus during {what}: {e}") from e
        except Exception as e:
            self._drop_connection()
            raise ProviderError(f"system bus error during {what}: {type(e).__name__}: {e}") \
                from e

    def _drop_connection(self) -> None:
        bus, self._bus = self._bus, None
        if bus is not None:
            self._loop.call_soon_threadsafe(bus.disconnect)

    async def _connected(self) -> MessageBus:
        if self._bus is not None and self._bus.connected:
            return self._bus
        from dbus_fast import BusType
        from dbus_fast.aio import MessageBus

        try:
            bus = await MessageBus(bus_type=BusType.SYSTEM).connect()
        except OSError as e:
            raise ProviderError(f"cannot connect to the system bus: {e}") from e
        self._job_event = asyncio.Event()
        self._subscribed = False
        bus.add_message_handler(self._on_message)
        self._bus = bus
        return bus

    async def _subscribe(self, bus: MessageBus) -> None:
        """Ask for JobRemoved, once per connection (only runs that act need signals)."""
        if self._subscribed:
            return
        await self._call_on(bus, "org.freedesktop.DBus", "/org/freedesktop/DBus",
                            "org.freedesktop.DBus", "AddMatch", "s", [_JOB_MATCH])
        await self._call_on(bus, SYSTEMD, MANAGER_PATH, MANAGER, "Subscribe", "", [])
        self._subscribed = True

    def _on_message(self, msg: Message) -> None:
        from dbus_fast import MessageType

        if (msg.message_type == MessageType.SIGNAL and msg.member == "JobRemoved"
                and msg.interface == MANAGER and len(msg.body) == 4):
            _id, job, _unit, result = msg.body
            self._job_results[str(job)] = str(result)
            while len(self._job_results) > _KEEP_JOB_RESULTS:
                self._job_results.popitem(last=False)
            if self._job_event is not None:
                self._job_event.set()

    async def _call_on(self, bus: MessageBus, dest: str, path: str, iface: str, member: str,
                       signature: str, body: list[Any]) -> list[Any]:
        from dbus_fast import Message, MessageType

        reply = await bus.call(Message(destination=dest, path=path, interface=iface,
                                       member=member, signature=signature, body=body))
        if reply.message_type == MessageType.ERROR:
            text = reply.body[0] if reply.body and isinstance(reply.body[0], str) else ""
            raise DBusCallError(reply.error_name or "unknown D-Bus error", text)
        return list(reply.body)

    async def _manager(self, member: str, signature: str, body: list[Any]) -> list[Any]:
        bus = await self._connected()
        return await self._call_on(bus, SYSTEMD, MANAGER_PATH, MANAGER, member, signature, body)

    def manager(self, member: str, signature: str = "", body: list[Any] | None = None,
                timeout: float | None = None) -> list[Any]:
        """Call one org.freedesktop.systemd1.Manager method; its reply body."""
        return self._run(lambda: self._manager(member, signature, body or []),
                         timeout or self.call_timeout, member)

    # --- reading ------------------------------------------------------------------------

    def unit_properties(self, unit: str, timeout: float | None = None) -> dict[str, Any]:
        """Every property of ``unit`` (all interfaces), values unwrapped: LoadUnit + GetAll."""

        async def read() -> dict[str, Any]:
            bus = await self._connected()
            (path,) = await self._call_on(bus, SYSTEMD, MANAGER_PATH, MANAGER, "LoadUnit", "s",
                                          [unit])
            (props,) = await self._call_on(bus, SYSTEMD, str(path), PROPERTIES, "GetAll", "s",
                                           [""])
            return {k: getattr(v, "value", v) for k, v in props.items()}

        return self._run(read, timeout or self.call_timeout, f"the properties of {unit}")

    # --- acting -------------------------------------------------------------------------

    def start_job(self, method: str, unit: str, timeout: float | None = None) -> str:
        """StartUnit/StopUnit/RestartUnit/TryRestartUnit(unit, "replace"): the job path."""

        async def submit() -> str:
            bus = await self._connected()
            await self._subscribe(bus)  # before the job exists, so its JobRemoved is seen
            (job,) = await self._call_on(bus, SYSTEMD, MANAGER_PATH, MANAGER, method, "ss",
                                         [unit, "replace"])
            return str(job)

        return self._run(submit, timeout or self.call_timeout, f"{method} {unit}")

    def wait_job(self, job: str, timeout: float) -> str | None:
        """The job's result ("done", "failed", "timeout", ...), or None if still running."""

        async def wait() -> str | None:
            deadline = self._loop.time() + timeout
            while job not in self._job_results:
                left = deadline - self._loop.time()
                if left <= 0 or self._job_event is None:
                    return None
                self._job_event.clear()
                try:
                    await asyncio.wait_for(self._job_event.wait(), left)
                except TimeoutError:
                    return None
            return self._job_results.pop(job)

        # Inner wait ends first with None; the outer bound only catches a wedged loop.
        return self._run(wait, timeout + 1.0, f"the job {job}")

    def close(self) -> None:
        """Disconnect and stop the loop thread (idempotent; safe from a finalizer)."""
        if self._closed:
            return
        self._closed = True
        self._drop_connection()
        self._loop.call_soon_threadsafe(self._loop.stop)
