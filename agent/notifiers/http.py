"""POST a JSON document and turn the answer into success or a DeliveryError that says
whether trying again can help (5xx, 408, 429 and network errors can; other 4xx cannot)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from agent.notifiers.base import DeliveryError

RETRY_STATUSES = {408, 425, 429}


def post_json(url: str, doc: Any, timeout: float, *, headers: Mapping[str, str] | None = None,
              body: bytes | None = None) -> Any:
    """POST ``doc`` (or the exact ``body`` when the caller signed it); the response on 2xx."""
    import httpx

    data = body if body is not None else json.dumps(doc).encode()
    try:
        r = httpx.post(url, content=data, timeout=timeout,
                       headers={"Content-Type": "application/json",
                                "User-Agent": "opsagent", **(headers or {})})
    except httpx.HTTPError as e:
        raise DeliveryError(f"{_where(url)}: {type(e).__name__}: {e}") from None
    if 200 <= r.status_code < 300:
        return r
    retry = r.status_code >= 500 or r.status_code in RETRY_STATUSES
    raise DeliveryError(f"{_where(url)}: HTTP {r.status_code}: {r.text[:200].strip()}",
                        retry=retry, retry_after=_retry_after(r.headers.get("Retry-After")))


def _where(url: str) -> str:
    """Scheme, host and port only: webhook URLs carry their secret in the path."""
    from urllib.parse import urlsplit

    u = urlsplit(url)
    return f"{u.scheme}://{u.netloc}"


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None
