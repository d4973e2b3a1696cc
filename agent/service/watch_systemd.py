"""Changes of systemd units as they happen, from systemd's signals on the system bus.

The service re-observes a unit when systemd says its ActiveState or SubState changed instead
of asking every few seconds. The watcher owns its system-bus connection and event loop thread
(as ``SystemdBus`` does, and for the same reason: its callers are synchronous), asks systemd
to emit signals (``Manager.Subscribe``) and installs match rules for the watched units only,
so the bus daemon wakes us for nothing else: idle means no wakeups.

- Unit object paths follow systemd's bus label escaping (``unit_path``): a unit that is not
  loaded yet, or is unloaded and loaded again, is covered by the same rule.
- systemd sends every "emits change" property of a unit in each PropertiesChanged (a
  ``daemon-reload`` re-sends them all), so the last (ActiveState, SubState) of each unit is
  kept and only a different pair is reported: the agent's own reloads do not wake it up.
- A job that ends other than "done" (failed, dependency, timeout, canceled) is reported too:
  it need not change ActiveState. ``UnitRemoved`` is not listened to: systemd sends it for
  every unit on each ``daemon-reload`` and when it unloads a unit that just stopped, neither
  of which is news.
- Nothing is lost silently: when the connection drops, the watcher reconnects with capped
  exponential backoff and then reports every watched unit, and it does the same when systemd
  comes back on the bus (``daemon-reexec`` after an upgrade), since changes may have gone
  unheard meanwhile. Changes in the few milliseconds between ``watch()`` and its rule being
  installed are the caller's to cover (it observes the units it starts watching anyway).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from agent.providers._systemd_dbus import MANAGER, MANAGER_PATH, PROPERTIES, SYSTEMD

if TYPE_CHECKING:
    from dbus_fast import Message
    from dbus_fast.aio import MessageBus

UNIT = "org.freedesktop.systemd1.Unit"
DBUS = "org.freedesktop.DBus"
DBUS_PATH = "/org/freedesktop/DBus"
UNIT_PATHS = f"{MANAGER_PATH}/unit"
PER_UNIT_RULES_UP_TO = 100  # 2 rules per unit; dbus-daemon allows 512 per system-bus client
CALL_TIMEOUT_S = 10.0
BACKOFF_FIRST_S = 0.5
BACKOFF_MAX_S = 30.0
STABLE_AFTER_S = 30.0  # a connection that lasted this long resets the backoff
_ALREADY_SUBSCRIBED = "org.freedesktop.systemd1.AlreadySubscribed"


def unit_path(unit: str) -> str:
    """systemd's object path of a unit: bytes other than [A-Za-z0-9] (and a leading digit)
    become ``_xx`` in lowercase hex ("ssh.service" -> ".../unit/ssh_2eservice")."""
    out: list[str] = []
    for i, byte in enumerate(unit.encode()):
        ch = chr(byte)
        if ch.isascii() and (ch.isalpha() or (i > 0 and ch.isdigit())):
            out.append(ch)
        else:
            out.append(f"_{byte:02x}")
    return f"{UNIT_PATHS}/{''.join(out) or '_'}"


def _rule(**keys: str) -> str:
    return ",".join(["type='signal'", *(f"{k}={_quoted(v)}" for k, v in keys.items())])


def _quoted(value: str) -> str:
    # An apostrophe inside a value is written '\'' (close the quote, an escaped one, reopen).
    return "'" + value.replace("'", "'\\''") + "'"


_OWNER_RULE = _rule(sender=DBUS, path=DBUS_PATH, interface=DBUS, member="NameOwnerChanged",
                    arg0=SYSTEMD)


def match_rules(units: frozenset[str]) -> set[str]:
    """The match rules for ``units``: per unit while few, else one namespace-wide set."""
    props = {"sender": SYSTEMD, "interface": PROPERTIES, "member": "PropertiesChanged",
             "arg0": UNIT}
    manager = {"sender": SYSTEMD, "path": MANAGER_PATH, "interface": MANAGER}
    if len(units) > PER_UNIT_RULES_UP_TO:
        return {_rule(**props, path_namespace=UNIT_PATHS), _rule(**manager, member="JobRemoved")}
    rules: set[str] = set()
    for unit in units:
        rules |= {_rule(**props, path=unit_path(unit)),
                  _rule(**manager, member="JobRemoved", arg2=unit)}
    return rules


class UnitWatcher:
    """Calls on_change(unit_name) whenever a watched unit's ActiveState or SubState changes."""

    def __init__(self, on_change: Callable[[str], None],
                 log: logging.Logger | None = None) -> None:
        self._on_change = on_change
        self._log = log or logging.getLogger(__name__)
        self._lock = threading.Lock()
        self._units: frozenset[str] = frozenset()
        self._by_path: dict[str, str] = {}
        self._closed = False
        # Used on the loop thread only (an asyncio.Event binds to the loop that first uses it).
        self._wake = asyncio.Event()  # the watched set changed, or systemd came back
        self._resubscribe = False
        self._states: dict[str, tuple[str, str]] = {}  # unit -> last (ActiveState, SubState)
        self._connected_since: float | None = None
        self._loop = asyncio.new_event_loop()
        self._task = self._loop.create_task(self._main())
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name="opsagent-unit-watch")
        self._thread.start()

    # --- the caller's side ----------------------------------------------------------------

    def watch(self, units: set[str]) -> None:
        """Watch exactly ``units`` (full names: "nginx.service"); cheap when unchanged."""
        wanted = frozenset(units)
        with self._lock:
            if self._closed or wanted == self._units:
                return
            self._units = wanted
            self._by_path = {unit_path(u): u for u in wanted}
            self._loop.call_soon_threadsafe(self._wake.set)

    def close(self) -> None:
        """Stop the thread and drop the connection (idempotent)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._loop.call_soon_threadsafe(self._task.cancel)
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout=5.0)

    # --- the loop thread ------------------------------------------------------------------

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._task)
        except asyncio.CancelledError:
            pass  # close()
        except Exception:
            self._log.exception("the systemd unit watcher stopped")
        finally:
            with self._lock:
                self._closed = True  # from now on watch() and close() leave the loop alone
            rest = asyncio.all_tasks(self._loop)
            for task in rest:
                task.cancel()
            self._loop.run_until_complete(asyncio.gather(*rest, return_exceptions=True))
            self._loop.close()

    async def _main(self) -> None:
        delay, failures = BACKOFF_FIRST_S, 0
        while True:
            if not self._units:  # nothing to watch: no connection, no retries
                self._wake.clear()
                await self._wake.wait()
                continue
            started, self._connected_since = time.monotonic(), None
            try:
                await self._session(failures)
                reason = "the system bus closed the connection"
            except EOFError:
                reason = "the system bus closed the connection"
            except Exception as e:
                reason = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
            established = self._connected_since is not None
            if established and time.monotonic() - started >= STABLE_AFTER_S:
                delay, failures = BACKOFF_FIRST_S, 0
            failures += 1
            self._log.log(logging.WARNING if failures == 1 or established else logging.DEBUG,
                          "watching systemd units: %s; %s in %.1fs", reason,
                          "reconnecting" if established else "retrying", delay)
            await asyncio.sleep(delay)  # close() cancels it
            delay = min(delay * 2, BACKOFF_MAX_S)

    async def _session(self, failures: int) -> None:
        """One connection: set up, then follow watch() until the bus goes away."""
        from dbus_fast import BusType
        from dbus_fast.aio import MessageBus

        bus = await asyncio.wait_for(MessageBus(bus_type=BusType.SYSTEM).connect(),
                                     CALL_TIMEOUT_S)
        disconnected: asyncio.Future[None] = asyncio.ensure_future(
            bus.wait_for_disconnect())  # type: ignore[no-untyped-call]
        installed: set[str] = set()
        self._states.clear()
        self._resubscribe = False
        try:
            bus.add_message_handler(self._on_message)
            await self._call(bus, DBUS, DBUS_PATH, DBUS, "AddMatch", "s", [_OWNER_RULE])
            await self._subscribe(bus)
            self._wake.clear()
            await self._sync(bus, installed)
            self._connected_since = time.monotonic()
            if failures:
                self._log.info("watching systemd units again (%d attempt(s) to reconnect); "
                               "re-checking every watched unit", failures)
                self._notify_all()
            while True:
                await _first_of(self._wake.wait(), disconnected)
                if disconnected.done():
                    disconnected.result()  # raises what ended the connection, if anything
                    return
                self._wake.clear()
                if self._resubscribe:
                    self._resubscribe = False
                    await self._subscribe(bus)
                    self._log.info("systemd is back on the bus; re-checking every watched unit")
                    self._notify_all()
                await self._sync(bus, installed)
        finally:
            bus.disconnect()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(disconnected), 2.0)
            if not disconnected.done():
                disconnected.cancel()
            elif not disconnected.cancelled():
                disconnected.exception()  # retrieved: no "never retrieved" warning

    async def _subscribe(self, bus: MessageBus) -> None:
        try:
            await self._call(bus, SYSTEMD, MANAGER_PATH, MANAGER, "Subscribe", "", [])
        except _CallError as e:
            if e.name != _ALREADY_SUBSCRIBED:  # older systemd refuses a second Subscribe
                raise

    async def _sync(self, bus: MessageBus, installed: set[str]) -> None:
        """Match rules for the watched set (new ones first: no gap), then the current state
        of units new to it, so that their first signal can be compared."""
        units = self._units
        wanted = match_rules(units)
        added = sorted(wanted - installed)
        await asyncio.gather(*(self._call(bus, DBUS, DBUS_PATH, DBUS, "AddMatch", "s", [r])
                               for r in added))
        installed |= set(added)
        for rule in installed - wanted:
            installed.discard(rule)
            with contextlib.suppress(_CallError):  # already gone is fine
                await self._call(bus, DBUS, DBUS_PATH, DBUS, "RemoveMatch", "s", [rule])
        for unit in set(self._states) - units:
            del self._states[unit]
        await asyncio.gather(*(self._read_state(bus, u) for u in units
                               if u not in self._states))

    async def _read_state(self, bus: MessageBus, unit: str) -> None:
        # Reading a unit's properties loads it, as `systemctl status` does: harmless.
        try:
            (props,) = await self._call(bus, SYSTEMD, unit_path(unit), PROPERTIES, "GetAll",
                                        "s", [UNIT])
        except _CallError:  # e.g. not a valid unit name: its signals still count
            return
        state = _state_of(props, None)
        if state is not None:
            self._states.setdefault(unit, state)  # a signal that came first is newer

    async def _call(self, bus: MessageBus, dest: str, path: str, iface: str, member: str,
                    signature: str, body: list[Any]) -> list[Any]:
        from dbus_fast import Message, MessageType

        reply = await asyncio.wait_for(bus.call(Message(
            destination=dest, path=path, interface=iface, member=member, signature=signature,
            body=body)), CALL_TIMEOUT_S)
        if reply.message_type == MessageType.ERROR:
            text = reply.body[0] if reply.body and isinstance(reply.body[0], str) else ""
            raise _CallError(reply.error_name or "unknown D-Bus error", f"{member}: {text}")
        return list(reply.body)

    def _on_message(self, msg: Message) -> None:
        from dbus_fast import MessageType

        if msg.message_type != MessageType.SIGNAL:
            return
        body = msg.body
        if msg.member == "PropertiesChanged" and len(body) == 3 and body[0] == UNIT:
            unit = self._by_path.get(msg.path or "")
            if unit is not None and self._state_changed(unit, body[1], body[2]):
                active, sub = self._states.get(unit, ("?", "?"))
                self._notify(unit, f"is {active} ({sub})")
        elif msg.member == "JobRemoved" and len(body) == 4 and body[3] != "done":
            if body[2] in self._units:
                self._notify(body[2], f"job {body[1]} ended: {body[3]}")
        elif (msg.member == "NameOwnerChanged" and len(body) == 3 and body[0] == SYSTEMD
              and body[2]):  # systemd (re)appeared: subscribe again, then report every unit
            self._resubscribe = True
            self._wake.set()

    def _state_changed(self, unit: str, changed: dict[str, Any], invalidated: list[str]) -> bool:
        if {"ActiveState", "SubState"} & set(invalidated):
            self._states.pop(unit, None)
            return True
        old = self._states.get(unit)
        new = _state_of(changed, old)
        if new is None or new == old:
            return False
        self._states[unit] = new
        return True

    def _notify_all(self) -> None:
        for unit in sorted(self._units):
            self._notify(unit, "may have changed unheard")

    def _notify(self, unit: str, why: str) -> None:
        self._log.debug("%s %s", unit, why)
        try:
            self._on_change(unit)
        except Exception:  # the callback's bug must not end the watch
            self._log.exception("on_change(%r) failed", unit)


async def _first_of(waiting: Coroutine[Any, Any, Any], future: asyncio.Future[Any]) -> None:
    """Wait until the coroutine finishes or the future is done; the coroutine is cancelled."""
    task = asyncio.ensure_future(waiting)
    try:
        await asyncio.wait({task, future}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        task.cancel()

class _CallError(Exception):
    def __init__(self, name: str, text: str) -> None:
        self.name = name
        super().__init__(f"{name}: {text}")


def _state_of(props: dict[str, Any], old: tuple[str, str] | None) -> tuple[str, str] | None:
    """(ActiveState, SubState) from a property dict of Variants; missing ones from ``old``."""
    active, sub = props.get("ActiveState"), props.get("SubState")
    if active is None and sub is None:
        return None
    a = str(getattr(active, "value", active)) if active is not None else (old or ("", ""))[0]
    s = str(getattr(sub, "value", sub)) if sub is not None else (old or ("", ""))[1]
    return a, s
