"""The sender against a stand-in collector on 127.0.0.1 that records what arrives and
answers what each test programs: 200, 5xx, 401, 413, 422, slow answers, an outage."""

from __future__ import annotations

import contextlib
import gzip
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from agent.report.outbox import Outbox
from agent.report.sender import Sender
from tests.harness.reports import alert_report, run_report

TOKEN = "oat_test_token_1"


@dataclass
class Answer:
    status: int
    retry_after: str | None = None


@dataclass
class Request:
    auth: str | None
    encoding: str | None
    ids: list[str]


@dataclass
class Recorder:
    """Stores reports once by id, like the collector, and counts the re-sent ones apart."""

    token: str = TOKEN
    stored: dict[str, dict[str, Any]] = field(default_factory=dict)
    duplicates: int = 0
    requests: list[Request] = field(default_factory=list)
    answers: list[Answer] = field(default_factory=list)  # answered first, in order
    max_reports: int | None = None  # more in one request: 413
    refuse: str | None = None  # a report containing this: 422
    slow_once: float = 0.0  # the next good request is stored, then answered this late
    lock: threading.Lock = field(default_factory=threading.Lock)
    server: ThreadingHTTPServer | None = None
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Recorder:
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), _handler(self))
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        assert self.server is not None
        self.server.shutdown()
        self.server.server_close()
        self.server = None

    def answer(self, body: bytes, headers: Any) -> tuple[int, dict[str, str], bytes]:
        reports = json.loads(gzip.decompress(body))["reports"]
        with self.lock:
            self.requests.append(Request(headers.get("Authorization"),
                                         headers.get("Content-Encoding"),
                                         [r["id"] for r in reports]))
            if headers.get("Authorization") != f"Bearer {self.token}":
                return 401, {}, b'{"detail": "unknown or revoked token"}'
            if self.answers:
                a = self.answers.pop(0)
                extra = {"Retry-After": a.retry_after} if a.retry_after else {}
                return a.status, extra, b'{"detail": "programmed"}'
            if self.max_reports is not None and len(reports) > self.max_reports:
                return 413, {}, b'{"detail": "request too large"}'
            bad = [r["id"] for r in reports if self.refuse and self.refuse in json.dumps(r)]
            if bad:
                detail = f"report {bad[0]}: alert.message: refused by the test"
                return 422, {}, json.dumps({"detail": detail}).encode()
            accepted = 0
            for r in reports:
                if r["id"] in self.stored:
                    self.duplicates += 1
                else:
                    self.stored[r["id"]] = r
                    accepted += 1
            delay, self.slow_once = self.slow_once, 0.0
        time.sleep(delay)
        doc = {"accepted": accepted, "duplicates": len(reports) - accepted}
        return 200, {}, json.dumps(doc).encode()


def _handler(rec: Recorder) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            assert self.path == "/api/v1/reports"
            body = self.rfile.read(int(self.headers["Content-Length"]))
            status, headers, out = rec.answer(body, self.headers)
            with contextlib.suppress(OSError):  # the sender may have given up waiting
                self.send_response(status)
                for k, v in {"Content-Type": "application/json", **headers}.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    rec = Recorder().start()
    try:
        yield rec
    finally:
        if rec.server is not None:
            rec.stop()


@pytest.fixture
def token(tmp_path):
    path = tmp_path / "token"
    path.write_text(TOKEN + "\n")
    return path


def wait_for(cond: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if v := cond():
            return v
        time.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


def fill(tmp_path, n: int) -> tuple[Outbox, list[str]]:
    box = Outbox(str(tmp_path / "state"), "web01", "test")
    reports = [alert_report("web01") if i % 10 == 0 else run_report("web01") for i in range(n)]
    box.put_many(reports)
    return box, [r.id for r in reports]


def test_batches_arrive_gzipped_with_the_token_and_each_report_once(tmp_path, recorder, token):
    box, ids = fill(tmp_path, 1200)
    sender = Sender(box, recorder.url, str(token), batch_size=500)
    assert sender.flush(10), sender.state()
    assert [len(r.ids) for r in recorder.requests] == [500, 500, 200]
    assert [i for r in recorder.requests for i in r.ids] == ids  # oldest first
    assert {r.auth for r in recorder.requests} == {f"Bearer {TOKEN}"}
    assert {r.encoding for r in recorder.requests} == {"gzip"}
    assert set(recorder.stored) == set(ids) and recorder.duplicates == 0
    st = sender.state()
    assert st["sent_total"] == 1200 and st["depth"] == 0 and st["bytes"] == 0
    assert st["last_error"] is None and st["last_success"] is not None


def test_a_report_put_while_the_sender_idles_goes_out_on_wake(tmp_path, recorder, token):
    box = Outbox(str(tmp_path / "state"), "web01", "test")
    sender = Sender(box, recorder.url, str(token))
    sender.start()
    try:
        time.sleep(0.2)  # let it find the outbox empty and go idle
        r = alert_report("web01")
        box.put(r)
        sender.wake()  # the idle wait is 30 s: only the wake can explain a prompt delivery
        wait_for(lambda: r.id in recorder.stored, 5, "the report to arrive")
    finally:
        sender.stop()
    assert not sender._thread.is_alive()
    assert wait_for(lambda: box.stats()["depth"] == 0, 2, "the ack")


def test_5xx_backs_off_doubling_to_the_cap_and_resets_after_a_success(tmp_path, recorder, token):
    box, ids = fill(tmp_path, 30)
    recorder.answers = [Answer(503)] * 7
    sender = Sender(box, recorder.url, str(token), backoff_first=0.01, backoff_cap=0.08)
    seen: list[tuple[int, float]] = []
    sender.start()
    try:
        def record() -> bool:
            st = sender.state()
            seen.append((st["consecutive_failures"], st["backoff_s"]))
            return len(recorder.stored) == 30
        wait_for(record, 10, "delivery after the 503s")
    finally:
        sender.stop()
    ceilings = [c for n, c in seen if n > 0 and c > 0]  # c > 0: not torn by the reset
    assert ceilings == sorted(ceilings)  # never shrinks during the streak
    assert set(ceilings) <= {0.01, 0.02, 0.04, 0.08}
    assert 0.08 in ceilings  # doubled up to the cap, and no further
    st = sender.state()
    assert st["consecutive_failures"] == 0 and st["backoff_s"] == 0 and st["backoff_until"] == 0
    assert len(recorder.requests) == 8 and recorder.duplicates == 0
    assert set(recorder.stored) == set(ids)


def test_retry_after_is_honoured_up_to_the_cap_and_flush_tries_at_once(tmp_path, recorder, token):
    box, ids = fill(tmp_path, 3)
    recorder.answers = [Answer(429, "2"), Answer(503, "3600")]
    sender = Sender(box, recorder.url, str(token), backoff_first=0.01, backoff_cap=3.0)
    assert not sender.flush(0.3)  # one attempt, then Retry-After: 2 holds it back
    assert len(recorder.requests) == 1
    assert sender.state()["backoff_until"] - time.time() > 1.0
    assert not sender.flush(0.3)  # a flush tries once at once, even in a backoff
    assert len(recorder.requests) == 2
    assert sender.state()["backoff_until"] - time.time() <= 3.0  # 3600 s capped
    assert sender.flush(5) and set(recorder.stored) == set(ids)


def test_a_slow_answer_past_the_timeout_is_sent_again_and_stored_once(tmp_path, recorder, token):
    box, ids = fill(tmp_path, 50)
    recorder.slow_once = 1.5
    sender = Sender(box, recorder.url, str(token), timeout=0.3, backoff_first=0.05,
                    backoff_cap=0.1)
    assert sender.flush(10), sender.state()
    assert set(recorder.stored) == set(ids)
    assert recorder.duplicates == 50  # the timed-out batch, sent again: stored once
    assert len(recorder.requests) == 2 and box.stats()["depth"] == 0


def test_413_halves_the_batch_until_it_fits(tmp_path, recorder, token):
    box, ids = fill(tmp_path, 450)
    recorder.max_reports = 100
    sender = Sender(box, recorder.url, str(token), batch_size=500)
    assert sender.flush(10), sender.state()
    sizes = [len(r.ids) for r in recorder.requests]
    assert sizes[:4] == [450, 225, 112, 56] and max(sizes[4:]) <= 56
    assert set(recorder.stored) == set(ids) and recorder.duplicates == 0
    assert sender.state()["consecutive_failures"] == 0  # not a failure: no backoff


def test_a_refused_report_is_bisected_out_and_parked(tmp_path, recorder, token, caplog):
    box = Outbox(str(tmp_path / "state"), "web01", "test")
    good = [run_report("web01") for _ in range(40)]
    bad = alert_report("web01", message="REFUSE-ME please")
    box.put_many(good[:23] + [bad] + good[23:])
    recorder.refuse = "REFUSE-ME"
    sender = Sender(box, recorder.url, str(token), batch_size=500)
    with caplog.at_level(logging.ERROR, logger="opsagent.sender"):
        assert sender.flush(10), sender.state()
    assert set(recorder.stored) == {r.id for r in good} and recorder.duplicates == 0
    assert len(recorder.requests) <= 2 * 6 + 1  # a bisection, not one request per report
    (parked,) = box.parked()
    assert parked["id"] == bad.id and parked["report"]["alert"]["message"] == "REFUSE-ME please"
    assert parked["reason"].startswith("422") and f"report {bad.id}" in parked["reason"]
    assert box.stats()["parked"] == 1 and box.stats()["depth"] == 0
    (refusal,) = [r for r in caplog.records if "refused a report" in r.getMessage()]
    assert f"report {bad.id}" in refusal.getMessage()


def test_an_outage_loses_nothing_and_doubles_nothing(tmp_path, recorder, token):
    recorder.stop()
    box = Outbox(str(tmp_path / "state"), "web01", "test")
    sender = Sender(box, recorder.url, str(token), batch_size=64, backoff_first=0.02,
                    backoff_cap=0.2)
    sender.start()
    ids: list[str] = []
    try:
        for _ in range(6):
            reports = [run_report("web01") for _ in range(50)]
            box.put_many(reports)
            ids += [r.id for r in reports]
            sender.wake()
        wait_for(lambda: sender.state()["consecutive_failures"] >= 3, 10, "failed attempts")
        assert "cannot reach the collector" in sender.state()["last_error"]
        assert box.stats()["depth"] == 300
        recorder.start()  # back, on the same port
        assert sender.flush(10), sender.state()
    finally:
        sender.stop()
    assert set(recorder.stored) == set(ids) and recorder.duplicates == 0
    assert sender.state()["sent_total"] == 300


def test_a_refused_token_is_logged_once_and_a_rotated_one_is_read(tmp_path, recorder, caplog):
    box, ids = fill(tmp_path, 5)
    token = tmp_path / "token"
    token.write_text("oat_old_and_revoked\n")
    sender = Sender(box, recorder.url, str(token), backoff_first=0.01, backoff_cap=0.05)
    sender.start()
    try:
        with caplog.at_level(logging.DEBUG, logger="opsagent.sender"):
            wait_for(lambda: sender.state()["consecutive_failures"] >= 4, 10, "401s")
            errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
            assert len(errors) == 1 and "401" in errors[0].getMessage()  # once per streak
            token.write_text(TOKEN + "\n")  # rotated by the operator
            assert sender.flush(5), sender.state()
    finally:
        sender.stop()
    assert set(recorder.stored) == set(ids)
    assert recorder.requests[0].auth == "Bearer oat_old_and_revoked"
    assert recorder.requests[-1].auth == f"Bearer {TOKEN}"
    assert not any("oat_" in r.getMessage() for r in caplog.records)  # never logged
    assert sender.state()["last_error"] is None


def test_a_missing_token_file_backs_off_without_a_request(tmp_path, recorder):
    box, ids = fill(tmp_path, 2)
    token = tmp_path / "token"
    sender = Sender(box, recorder.url, str(token), backoff_first=0.02, backoff_cap=0.05)
    assert not sender.flush(0.3)
    st = sender.state()
    assert "cannot read the token file" in st["last_error"] and st["consecutive_failures"] >= 1
    assert recorder.requests == [] and st["depth"] == 2
    token.write_text(TOKEN)
    assert sender.flush(5) and set(recorder.stored) == set(ids)


def test_stop_waits_for_the_request_in_flight_and_acks_only_what_was_stored(tmp_path, recorder,
                                                                            token):
    box, ids = fill(tmp_path, 20)
    recorder.slow_once = 0.5
    sender = Sender(box, recorder.url, str(token), timeout=5)
    sender.start()
    wait_for(lambda: recorder.requests, 5, "the request")
    sender.stop(timeout=5)
    assert not sender._thread.is_alive()
    assert set(recorder.stored) == set(ids)
    assert box.stats()["depth"] == 0 and sender.state()["sent_total"] == 20
