"""Stand-ins for Slack, PagerDuty, webhooks and SMTP: real servers on 127.0.0.1 that record
what they receive and answer as told (e.g. 500 twice, then 200)."""

from __future__ import annotations

import http.server
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from email import message_from_bytes
from email.message import Message
from typing import Any


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    status: int  # what the recorder answered
    at: float = field(default_factory=time.monotonic)


@dataclass
class Answer:
    status: int = 200
    body: bytes = b"ok"
    headers: dict[str, str] = field(default_factory=dict)


class HttpRecorder:
    """Records every request. ``answers`` are used in turn; the last one then repeats."""

    def __init__(self, status: int = 200, body: bytes = b"ok",
                 answers: Sequence[Answer] | None = None) -> None:
        self.answers = list(answers or [Answer(status, body)])
        self.requests: list[Recorded] = []  # requests answered 2xx and the others alike
        self.lock = threading.Lock()
        recorder = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                with recorder.lock:
                    answer = recorder.answers[0]
                    if len(recorder.answers) > 1:
                        recorder.answers.pop(0)
                    recorder.requests.append(Recorded("POST", self.path, dict(self.headers),
                                                      body, answer.status))
                self.send_response(answer.status)
                for k, v in answer.headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(answer.body)))
                self.end_headers()
                self.wfile.write(answer.body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def taken(self) -> list[Recorded]:
        """The requests answered 2xx: what the service would have accepted."""
        return [r for r in self.requests if 200 <= r.status < 300]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class SmtpRecorder:
    """aiosmtpd on a fixed 127.0.0.1 port, startable and stoppable (an SMTP outage), with
    optional STARTTLS (``tls_context``) and AUTH (``users``: login -> password)."""

    def __init__(self, port: int, tls_context: Any = None,
                 users: dict[str, str] | None = None) -> None:
        self.port = port
        self.tls_context = tls_context
        self.users = users
        self.messages: list[Message] = []
        self.envelopes: list[tuple[str, list[str]]] = []
        self.logins: list[str] = []
        self.controller: Any = None

    def start(self) -> SmtpRecorder:
        from aiosmtpd.controller import Controller
        from aiosmtpd.smtp import AuthResult

        recorder = self

        class Handler:
            async def handle_DATA(self, server: Any, session: Any,  # noqa: N802
                                  envelope: Any) -> str:
                recorder.envelopes.append((envelope.mail_from, list(envelope.rcpt_tos)))
                recorder.messages.append(message_from_bytes(envelope.original_content))
                return "250 OK"

        def authenticator(server: Any, session: Any, envelope: Any, mechanism: str,
                          auth_data: Any) -> Any:
            login = auth_data.login.decode()
            ok = recorder.users is not None and \
                recorder.users.get(login) == auth_data.password.decode()
            if ok:
                recorder.logins.append(login)
            return AuthResult(success=ok)

        kwargs: dict[str, Any] = {}
        if self.tls_context is not None:
            kwargs.update(tls_context=self.tls_context, require_starttls=True)
        if self.users is not None:
            kwargs.update(authenticator=authenticator, auth_required=True,
                          auth_require_tls=self.tls_context is not None)
        self.controller = Controller(Handler(), hostname="127.0.0.1", port=self.port,
                                     **kwargs)
        self.controller.start()
        return self

    def stop(self) -> None:
        if self.controller is not None:
            self.controller.stop()
            self.controller = None
