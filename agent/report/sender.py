"""The sender: ships the outbox to the collector, oldest first, in gzipped batches.

A batch leaves the outbox only after the collector answered 2xx; a crash, a timeout or a 5xx
after the collector stored it means the batch is sent again, and the collector's dedup by
report id stores it once. Failures back off exponentially (1 s doubling to 5 min, full
jitter; a Retry-After is honoured). 413 halves the batch. 400/422 mean a report the
collector refuses: the batch is bisected and that one report parked (kept in state.db,
visible in ``opsagent status``), so one bad document never blocks the rest.
"""

from __future__ import annotations

import gzip
import logging
import random
import threading
import time
from typing import Any

from agent.errors import OpsAgentError
from agent.report.outbox import Outbox

log = logging.getLogger("opsagent.sender")

RETRY_AFTER_CAP = 300.0


class _Retry(Exception):
    def __init__(self, message: str, after: float | None = None) -> None:
        super().__init__(message)
        self.after = after


class Sender:
    def __init__(self, outbox: Outbox, url: str, token_file: str | None, *,
                 ca_file: str | None = None, cert_file: str | None = None,
                 key_file: str | None = None, batch_size: int = 500,
                 max_batch_bytes: int = 4 << 20, timeout: float = 10.0,
                 backoff_first: float = 1.0, backoff_cap: float = 300.0) -> None:
        self.outbox = outbox
        self.endpoint = url.rstrip("/") + "/api/v1/reports"
        self.token_file = token_file
        self.tls = (ca_file, cert_file, key_file)
        self.batch_size = batch_size
        self.max_batch_bytes = max_batch_bytes
        self.timeout = timeout
        self.backoff_first = backoff_first
        self.backoff_cap = backoff_cap
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._idle = threading.Event()
        self._thread: threading.Thread | None = None
        self._client: Any = None
        self._delay = 0.0
        self._limit = batch_size  # shrinks on 413
        self.last_success: float | None = None
        self.last_error: str | None = None
        self.failures = 0
        self.backoff_until = 0.0
        self.sent_total = 0

    # --- life cycle -----------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="opsagent-sender", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
        if self._client is not None:
            self._client.close()
            self._client = None

    def flush(self, timeout: float) -> bool:
        """Wait until the outbox is empty (True) or ``timeout`` passes (False)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.outbox.stats()["depth"] == 0:
                return True
            if self._thread is None or not self._thread.is_alive():  # no thread: send from here
                pause = self.backoff_until - time.time()
                if pause > 0:
                    time.sleep(min(pause, max(0.0, deadline - time.monotonic())))
                    continue
                self._send_all()
                continue
            self.backoff_until = min(self.backoff_until, time.time())  # no waiting now
            self._wake.set()
            time.sleep(0.02)
        return bool(self.outbox.stats()["depth"] == 0)

    def state(self) -> dict[str, Any]:
        return {"last_success": self.last_success, "last_error": self.last_error,
                "consecutive_failures": self.failures, "backoff_until": self.backoff_until,
                "sent_total": self.sent_total, **self.outbox.stats()}

    # --- the loop ---------------------------------------------------------------------------

    def _loop(self) -> None:
        while not self._stop.is_set():
            wait = self.backoff_until - time.time()
            if wait > 0:
                self._wake.wait(wait)
                self._wake.clear()
                if time.time() < self.backoff_until and not self._stop.is_set():
                    continue
            try:
                self._send_all()
            except Exception:  # a bug here must not end reporting
                log.exception("sender crashed; retrying")
                self._failed("internal error", None)
            if self._stop.is_set():
                return
            if time.time() >= self.backoff_until:
                self._wake.wait(30.0)  # woken by the next report
                self._wake.clear()

    def _send_all(self) -> None:
        """Send until the outbox is empty, stopping at the first failure (backoff)."""
        while not self._stop.is_set():
            try:
                batch = self.outbox.peek(self._limit, self.max_batch_bytes)
            except OpsAgentError as e:
                self._failed(f"cannot read the outbox: {e}", None)
                return
            if not batch:
                return
            try:
                self._deliver(batch)
            except _Retry as e:
                self._failed(str(e), e.after)
                return

    def _deliver(self, batch: list[tuple[int, bytes]]) -> None:
        code, text, retry_after = self._post([b for _, b in batch])
        if 200 <= code < 300:
            self.outbox.ack([s for s, _ in batch])
            self.sent_total += len(batch)
            self._ok()
            return
        if code == 413 and len(batch) > 1:
            self._limit = max(1, len(batch) // 2)
            log.warning("collector: batch of %d too large; now at most %d", len(batch),
                        self._limit)
            return
        if code in (400, 422) or (code == 413 and len(batch) == 1):
            if len(batch) == 1:
                seq = batch[0][0]
                log.error("collector refused a report (%d): %s; parked in the outbox",
                          code, text[:500])
                self.outbox.park(seq, f"{code}: {text}")
                return
            half = len(batch) // 2  # find the bad one: each half on its own
            self._deliver(batch[:half])
            self._deliver(batch[half:])
            return
        if code in (401, 403):
            raise _Retry(f"collector refused the token ({code}): {text[:200]}", retry_after)
        raise _Retry(f"collector answered {code}: {text[:200]}", retry_after)

    def _post(self, bodies: list[bytes]) -> tuple[int, str, float | None]:
        import httpx

        token = self._token()
        payload = gzip.compress(b'{"reports":[' + b",".join(bodies) + b"]}", 6)
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json",
                   "Content-Encoding": "gzip"}
        try:
            r = self._http().post(self.endpoint, content=payload, headers=headers)
        except httpx.HTTPError as e:
            raise _Retry(f"cannot reach the collector: {type(e).__name__}: {e}") from None
        return r.status_code, r.text, _retry_after(r.headers.get("retry-after"))

    def _token(self) -> str:
        if self.token_file is None:
            return ""
        try:
            with open(self.token_file) as f:
                return f.read().strip()
        except OSError as e:
            raise _Retry(f"cannot read the token file {self.token_file}: "
                         f"{e.strerror or e}") from None

    def _http(self) -> Any:
        if self._client is None:
            import ssl

            import httpx

            ca, cert, key = self.tls
            ctx = ssl.create_default_context(cafile=ca)
            if cert and key:
                ctx.load_cert_chain(cert, key)  # mutual TLS
            self._client = httpx.Client(timeout=self.timeout, verify=ctx)
        return self._client

    def _ok(self) -> None:
        if self.failures:
            log.info("collector reachable again; sending resumed")
        self.failures = 0
        self._delay = 0.0
        self.last_success = time.time()
        self.last_error = None
        self.backoff_until = 0.0

    def _failed(self, message: str, retry_after: float | None) -> None:
        self.failures += 1
        self._delay = min(self.backoff_cap, (self._delay * 2) or self.backoff_first)
        wait = max(min(0.2, self._delay), random.uniform(0, self._delay))  # full jitter
        if retry_after is not None:
            wait = max(wait, min(retry_after, RETRY_AFTER_CAP))
        self.backoff_until = time.time() + wait
        if self.failures == 1 or message != self.last_error:  # once per streak and cause
            log.error("%s; retrying in %.1fs (reports stay in the outbox)", message, wait)
        self.last_error = message


def _retry_after(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None
