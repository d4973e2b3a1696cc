"""Email over SMTP: one plain-text message per notification, STARTTLS with a verified
certificate when asked, AUTH when a username is given. A permanent refusal (5xx) is not
retried; a connection error, a timeout or a temporary refusal (4xx) is."""

from __future__ import annotations

import smtplib
import ssl
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from typing import Any

from agent.notifiers.base import DeliveryError, Notification, headline, render_text, secret


def message(spec: Any, note: Notification) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = spec.sender or f"opsagent@{note.host}"
    msg["To"] = ", ".join(spec.to)
    msg["Subject"] = headline(note)
    msg["Date"] = formatdate(localtime=False, usegmt=True)
    msg["Message-ID"] = make_msgid(domain=note.host)
    msg["X-Opsagent-Host"] = note.host
    msg.set_content(render_text(note) + "\n")
    return msg


def send(spec: Any, note: Notification, timeout: float) -> None:
    smtp = spec.smtp
    msg = message(spec, note)
    timeout = min(timeout, smtp.timeout) if timeout else smtp.timeout
    where = f"smtp://{smtp.host}:{smtp.port}"
    try:
        with smtplib.SMTP(smtp.host, smtp.port, timeout=timeout) as s:
            if smtp.starttls:
                ctx = ssl.create_default_context(cafile=smtp.ca_file)
                s.starttls(context=ctx)
            if smtp.username:
                s.login(smtp.username, secret(smtp, "password"))
            refused = s.send_message(msg)
    except smtplib.SMTPResponseException as e:
        text = e.smtp_error.decode("utf-8", "replace") if isinstance(e.smtp_error, bytes) \
            else str(e.smtp_error)
        raise DeliveryError(f"{where}: {e.smtp_code} {text}", retry=e.smtp_code < 500) from None
    except smtplib.SMTPRecipientsRefused as e:
        codes = [c for c, _ in e.recipients.values()]
        raise DeliveryError(f"{where}: every recipient refused ({codes})",
                            retry=any(c < 500 for c in codes)) from None
    except (TimeoutError, smtplib.SMTPException, OSError) as e:
        raise DeliveryError(f"{where}: {type(e).__name__}: {e}") from None
    if refused:
        raise DeliveryError(f"{where}: refused {', '.join(refused)}", retry=False)
