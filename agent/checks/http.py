"""The ``http`` probe: one request with the standard library's http.client.

Not httpx: an agent runs hundreds of these every few seconds within a few percent of a core,
and http.client costs a fraction of httpx's per-request CPU. TLS contexts are built once per
(verify, ca_file) and shared (``net.tls_context``), because loading the system's CA bundle is
the most expensive part of an HTTPS request. The body is read up to ``MAX_BODY`` bytes only.
"""

from __future__ import annotations

import http.client
import json
import re
import ssl
import time
from typing import Any
from urllib.parse import SplitResult, urlsplit

from agent.checks import elapsed_ms, one_line
from agent.checks.base import Outcome
from agent.checks.net import reason, tls_context
from agent.playbook.models.checks import HttpProbe

MAX_BODY = 1 << 20  # bytes of the body read for expect_body / expect_json
_USER_AGENT = "opsagent-check"
_MISSING = object()


def probe_http(spec: HttpProbe, timeout: float) -> Outcome:
    url = urlsplit(spec.url)
    try:
        status, body, latency = _request(spec, url, timeout)
    except ssl.SSLCertVerificationError as e:
        return Outcome("unhealthy", f"{url.netloc}: TLS verification failed: "
                                    f"{e.verify_message or e.reason}")
    except TimeoutError:
        return Outcome("unhealthy", f"{url.netloc}: no answer within {timeout:g}s")
    except (OSError, http.client.HTTPException) as e:
        return Outcome("unhealthy", one_line(f"{url.netloc}: {reason(e)}"))
    problem = _judge(spec, status, body)
    values = {"status_code": float(status)}
    if problem is not None:
        return Outcome("unhealthy", one_line(f"{spec.method} {spec.url}: {problem}"), latency,
                       values)
    return Outcome("healthy", f"{spec.method} {spec.url}: {status} in {latency:.0f} ms",
                   latency, values)


def _request(spec: HttpProbe, url: SplitResult, timeout: float) -> tuple[int, bytes, float]:
    """(status, first MAX_BODY bytes of the body, latency in ms of request + body read)."""
    conn = _connection(spec, url, timeout)
    target = (url.path or "/") + (f"?{url.query}" if url.query else "")
    headers = {"User-Agent": _USER_AGENT, "Connection": "close", **(spec.headers or {})}
    start = time.monotonic()
    try:
        conn.request(spec.method, target, headers=headers)
        response = conn.getresponse()
        body = response.read(MAX_BODY)
        return response.status, body, elapsed_ms(start)
    finally:
        conn.close()


def _connection(spec: HttpProbe, url: SplitResult, timeout: float) -> http.client.HTTPConnection:
    host, port = url.hostname or "", url.port
    if url.scheme == "https":
        return http.client.HTTPSConnection(host, port, timeout=timeout,
                                           context=tls_context(spec.verify_tls, spec.ca_file))
    return http.client.HTTPConnection(host, port, timeout=timeout)


def _judge(spec: HttpProbe, status: int, body: bytes) -> str | None:
    """Why the answer is not the expected one, or None when it is."""
    if status not in spec.expect_status:
        wanted = ", ".join(map(str, spec.expect_status))
        return f"status {status} (expected {wanted})"
    if spec.expect_body is not None:
        text = body.decode("utf-8", errors="replace")
        if re.search(spec.expect_body, text) is None:
            return f"body does not match {spec.expect_body!r}"
    if spec.expect_json is not None:
        return _judge_json(spec.expect_json, body)
    return None


def _judge_json(expected: dict[str, Any], body: bytes) -> str | None:
    try:
        data = json.loads(body)
    except ValueError:
        return "body is not JSON" + (" (cut at 1 MiB)" if len(body) >= MAX_BODY else "")
    for key, want in expected.items():
        got = json_field(data, key)
        if got is _MISSING:
            return f"JSON has no field {key!r}"
        if not _same(got, want):
            return f"JSON {key} is {got!r} (expected {want!r})"
    return None


def _same(got: Any, want: Any) -> bool:
    """Equal, and no bool passing for a number (in Python, True == 1)."""
    return got == want and isinstance(got, bool) == isinstance(want, bool)


def json_field(data: Any, key: str) -> Any:
    """``data[key]``; a dotted key ("db.status") walks nested objects when no top-level field
    has that exact name."""
    if isinstance(data, dict) and key in data:
        return data[key]
    node = data
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return _MISSING
        node = node[part]
    return node
