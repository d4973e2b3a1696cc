"""The ``redis`` probe: PING, then memory use and clients from INFO, in one round trip.

redis-py retries a failed command three times by default; a probe must report the first
failure within its timeout, so retries are off. It speaks RESP2, which every server version
understands. Passwords (in the URL, or from
``password_env``) never appear in a message.
"""

from __future__ import annotations

import os
import time
from typing import Any
from urllib.parse import unquote, urlsplit

from agent.checks import elapsed_ms, one_line
from agent.checks.base import Health, Outcome, worst
from agent.playbook.models.checks import RedisProbe


class _NoSetting(Exception):
    """An environment variable the probe needs is not set."""


def probe_redis(spec: RedisProbe, timeout: float) -> Outcome:
    import redis

    try:
        client, target, password = connect(spec, timeout)
    except _NoSetting as e:
        return Outcome("unhealthy", str(e))
    except ValueError:  # the parser's message may quote the URL, password and all
        return Outcome("unhealthy", f"the URL in {spec.url_env} (url_env) is not a valid "
                                    "Redis URL")
    start = time.monotonic()  # the connection is made by the first command
    try:
        pipe = client.pipeline(transaction=False)
        pipe.ping().info("memory").info("clients")
        _pong, memory, clients = pipe.execute()
    except redis.RedisError as e:
        text = str(e) or type(e).__name__
        if password:
            text = text.replace(password, "***")
        return Outcome("unhealthy", one_line(f"{target}: {text}"))
    finally:
        client.close()
    outcome = grade(spec, target, memory, clients)
    outcome.latency_ms = elapsed_ms(start)
    return outcome


def connect(spec: RedisProbe, timeout: float) -> tuple[Any, str, str]:
    """(a client that does not retry, "redis host:port" for messages, the password or "")."""
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    # RESP2: every server speaks it (RESP3 needs HELLO, Redis 6+, and hides "NOAUTH" behind
    # HELLO's own error)
    options: dict[str, Any] = {"socket_timeout": timeout, "socket_connect_timeout": timeout,
                               "retry": Retry(NoBackoff(), 0), "protocol": 2}
    if spec.url_env is not None:
        url = _env(spec.url_env, "url_env")
        parts = urlsplit(url)
        where = f"redis {parts.hostname or 'localhost'}:{parts.port or 6379}"
        return redis.Redis.from_url(url, **options), where, unquote(parts.password or "")
    password = _env(spec.password_env, "password_env") if spec.password_env else ""
    client = redis.Redis(host=spec.host, port=spec.port, password=password or None, **options)
    return client, f"redis {spec.host}:{spec.port}", password


def _env(name: str, field: str) -> str:
    value = os.environ.get(name, "")
    if not value:
        raise _NoSetting(f"environment variable {name} ({field}) is not set")
    return value


def grade(spec: RedisProbe, target: str, memory: dict[str, Any],
          clients: dict[str, Any]) -> Outcome:
    """Degraded above max_memory_percent (of maxmemory, when one is set) or max_clients."""
    used, limit = int(memory.get("used_memory", 0)), int(memory.get("maxmemory", 0))
    connected = int(clients.get("connected_clients", 0))
    values = {"used_memory": float(used), "maxmemory": float(limit),
              "connected_clients": float(connected)}
    status: Health = "healthy"
    notes = [f"PONG; {connected} clients"]
    if spec.max_clients is not None and connected > spec.max_clients:
        status = "degraded"
        notes[0] += f", above max_clients {spec.max_clients}"
    if limit > 0:
        percent = round(100.0 * used / limit, 2)
        values["memory_percent"] = percent
        note = f"memory {percent:.0f}% of maxmemory"
        if spec.max_memory_percent is not None and percent > spec.max_memory_percent:
            status = worst(status, "degraded")
            note += f", above {spec.max_memory_percent:g}%"
        notes.append(note)
    else:
        notes.append(f"memory {used} bytes (no maxmemory)")
    return Outcome(status, f"{target}: {'; '.join(notes)}", None, values)
