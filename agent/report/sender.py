"""The sender: ships the outbox to the collector, oldest first, in gzipped batches.

A batch leaves the outbox only after the collector answered 2xx; a crash, a timeout or a 5xx
after the collector stored it means the batch is sent again, and the collector's dedup by
report id stores it once. Failures back off exponentially (1 s doubling to 5 min, full
jitter; a Retry-After is honoured up to the same cap) and are logged once per streak and
cause, not on every attempt. 413 halves the batch (for the sender's lifetime: the
collector's body limit does not change between requests). 400/422 mean a report the
collector refuses: the batch is bisected and that one report parked (kept in state.db,
visible in ``opsagent status``), so one bad document never blocks the rest.

The token is read from its file on every request, so a rotated token is used at once; it
is never logged. httpx is imported only when the first request is made: nothing that
``opsagent validate`` imports pulls it in.
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


class _Retry(Exception):
    """Back off: ``cause`` groups attempts failing the same way (logged once per streak)."""

    def __init__(self, message: str, cause: str, after: float | None = None) -> None:
        super().__init__(message)
        self.cause = cause
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
        self._thread: threading.Thread | None = None
        self._client: Any = None
        self._delay = 0.0  # the backoff's ceiling now: 0, then backoff_first doubling to the cap
        self._limit = batch_size  # shrinks on 413
        self.last_success: float | None = None
        self.last_error: str | None = None
        self.failures = 0
        self._cause: str | None = None  # of the current failure streak
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
        """Send until the outbox is empty (True) or ``timeout`` passes (False): one attempt
        at once even during a backoff (shutdown is the last chance), then the backoff holds.
        Sends from the sender's thread when it runs, else from the caller's."""
        deadline = time.monotonic() + timeout
        self.backoff_until = min(self.backoff_until, time.time())
        self._wake.set()
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
            time.sleep(0.02)
        return bool(self.outbox.stats()["depth"] == 0)

    def state(self) -> dict[str, Any]:
        """What ``opsagent status`` and /metrics show; backoff_s is the current ceiling of the
        jittered wait (0 after a success)."""
        return {"last_success": self.last_success, "last_error": self.last_error,
                "consecutive_failures": self.failures, "backoff_until": self.backoff_until,
                "backoff_s": self._delay, "sent_total": self.sent_total,
                **self.outbox.stats()}

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
                self._failed(_Retry("internal error", "internal"))
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
                self._failed(_Retry(f"cannot read the outbox: {e}", "outbox"))
                return
            if not batch:
                return
            try:
                self._deliver(batch)
            except _Retry as e:
                self._failed(e)
                return

    def _deliver(self, batch: list[tuple[int, bytes]]) -> None:
        code, text, retry_after = self._post([b for _, b in batch])
        if 200 <= code < 300:
            try:
                self.outbox.ack([s for s, _ in batch])
            except OpsAgentError as e:  # sent again later; the collector stores it once
                raise _Retry(f"cannot update the outbox: {e}", "outbox") from None
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
                try:
                    self.outbox.park(seq, f"{code}: {text}")
                except OpsAgentError as e:
                    raise _Retry(f"cannot park a refused report: {e}", "outbox") from None
                return
            half = len(batch) // 2  # find the bad one: each half on its own
            self._deliver(batch[:half])
            self._deliver(batch[half:])
            return
        if code in (401, 403):
            raise _Retry(f"collector refused the token ({code}): {text[:200]}", "token",
                         retry_after)
        raise _Retry(f"collector answered {code}: {text[:200]}", f"http {code}", retry_after)

    def _post(self, bodies: list[bytes]) -> tuple[int, str, float | None]:
        import httpx

        headers = {"Content-Type": "application/json", "Content-Encoding": "gzip"}
        if self.token_file is not None:
            headers["Authorization"] = f"Bearer {self._token(self.token_file)}"
        payload = gzip.compress(b'{"reports":[' + b",".join(bodies) + b"]}", 6)
        try:
            r = self._http().post(self.endpoint, content=payload, headers=headers)
        except httpx.HTTPError as e:
            raise _Retry(f"cannot reach the collector: {type(e).__name__}: {e}",
                         type(e).__name__) from None
        return r.status_code, r.text, _retry_after(r.headers.get("retry-after"))

    def fetch(self, path: str, params: dict[str, Any]) -> Any:
        """GET ``path`` on the collector as this host (its token and TLS); the JSON answer.
        ProviderError when the collector cannot be reached or refuses."""
        import httpx

        from agent.errors import ProviderError

        headers = {}
        try:
            if self.token_file is not None:
                headers["Authorization"] = f"Bearer {self._token(self.token_file)}"
            url = self.endpoint.rsplit("/api/v1/", 1)[0] + path
            r = self._http().get(url, params=params, headers=headers)
        except _Retry as e:
            raise ProviderError(str(e)) from None
        except httpx.HTTPError as e:
            raise ProviderError(f"cannot reach the collector: {type(e).__name__}: {e}") from None
        if r.status_code != 200:
            raise ProviderError(f"the collector answered {r.status_code}: {r.text[:200]}")
        return r.json()

    def _token(self, path: str) -> str:
        try:
            with open(path) as f:
                token = f.read().strip()
        except (OSError, UnicodeDecodeError) as e:
            why = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
            raise _Retry(f"cannot read the token file {path}: {why}", "token file") from None
        if not token:
            raise _Retry(f"the token file {path} is empty", "token file")
        return token

    def _http(self) -> Any:
        if self._client is None:
            import ssl

            import httpx

            ca, cert, key = self.tls
            try:
                ctx = ssl.create_default_context(cafile=ca)
                if cert and key:
                    ctx.load_cert_chain(cert, key)  # mutual TLS
            except (OSError, ssl.SSLError) as e:  # a file missing, unreadable or not PEM
                raise _Retry(f"cannot load the TLS files {[f for f in self.tls if f]}: {e}",
                             "tls files") from None
            self._client = httpx.Client(timeout=self.timeout, verify=ctx)
        return self._client

    def _ok(self) -> None:
        if self.failures:
            log.info("collector reachable again; sending resumed")
        self.failures = 0
        self._cause = None
        self._delay = 0.0
        self.last_success = time.time()
        self.last_error = None
        self.backoff_until = 0.0

    def _failed(self, e: _Retry) -> None:
        self.failures += 1
        self._delay = min(self.backoff_cap, (self._delay * 2) or self.backoff_first)
        wait = max(min(0.2, self._delay), random.uniform(0, self._delay))  # full jitter
        if e.after is not None:
            wait = max(wait, min(e.after, self.backoff_cap))
        self.backoff_until = time.time() + wait
        if e.cause != self._cause:  # once per streak and cause, not on every attempt
            log.error("%s; retrying in %.1fs (reports stay in the outbox)", e, wait)
        else:
            log.debug("%s; retrying in %.1fs (failure %d)", e, wait, self.failures)
        self._cause = e.cause
        self.last_error = str(e)


def _retry_after(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None
