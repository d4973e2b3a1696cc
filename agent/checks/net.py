"""The ``tcp`` probe (can we connect, how fast) and the ``tls`` probe (when does the server's
certificate expire, and does it verify).

The certificate is taken in DER form and parsed with ``cryptography``: ``getpeercert()``'s
dictionary is empty when verification is off, and the expiry must be readable then too
(``verify: false``, or to report ``days_left`` of a certificate that fails verification).
"""

from __future__ import annotations

import os
import socket
import ssl
import time
from datetime import UTC, datetime
from functools import lru_cache

from agent.checks import elapsed_ms, one_line
from agent.checks.base import Outcome
from agent.playbook.models.checks import TcpProbe, TlsProbe

_DAY_S = 86400.0


def probe_tcp(spec: TcpProbe, timeout: float) -> Outcome:
    where = f"{spec.host}:{spec.port}"
    start = time.monotonic()
    try:
        with socket.create_connection((spec.host, spec.port), timeout=timeout):
            latency = elapsed_ms(start)
    except TimeoutError:
        return Outcome("unhealthy", f"{where}: no connection within {timeout:g}s")
    except OSError as e:
        return Outcome("unhealthy", one_line(f"{where}: {reason(e)}"))
    return Outcome("healthy", f"{where}: connected in {latency:.1f} ms", latency)


def probe_tls(spec: TlsProbe, timeout: float) -> Outcome:
    name = spec.server_name or spec.host
    where = f"{spec.host}:{spec.port}"
    try:
        der, latency = peer_certificate(spec.host, spec.port, name,
                                        tls_context(spec.verify, spec.ca_file), timeout)
    except ssl.SSLCertVerificationError as e:
        return _unverified(spec, name, timeout, e)
    except TimeoutError:
        return Outcome("unhealthy", f"{where}: no TLS handshake within {timeout:g}s")
    except OSError as e:  # ssl.SSLError included
        return Outcome("unhealthy", one_line(f"{where}: {reason(e)}"))
    return grade_expiry(spec, name, not_valid_after(der), latency)


def peer_certificate(host: str, port: int, server_name: str, ctx: ssl.SSLContext,
                     timeout: float) -> tuple[bytes, float]:
    """The server's certificate (DER) and the handshake's latency in ms."""
    start = time.monotonic()
    with socket.create_connection((host, port), timeout=timeout) as sock, \
            ctx.wrap_socket(sock, server_hostname=server_name) as tls:
        der = tls.getpeercert(binary_form=True)
        latency = elapsed_ms(start)
    if not der:
        raise ssl.SSLError("the server sent no certificate")
    return der, latency


def not_valid_after(der: bytes) -> datetime:
    from cryptography import x509

    return x509.load_der_x509_certificate(der).not_valid_after_utc


def grade_expiry(spec: TlsProbe, name: str, expires: datetime, latency: float) -> Outcome:
    """Unhealthy when expired or below critical_days, degraded below warn_days."""
    days = (expires - datetime.now(UTC)).total_seconds() / _DAY_S
    values = {"days_left": round(days, 3)}
    date = expires.strftime("%Y-%m-%d %H:%M UTC")
    if days < 0:
        return Outcome("unhealthy", f"certificate of {name} expired {-days:.1f} days ago "
                                    f"({date})", latency, values)
    text = f"certificate of {name} expires in {days:.1f} days ({date})"
    if days < spec.critical_days:
        return Outcome("unhealthy", f"{text}, below critical_days {spec.critical_days}",
                       latency, values)
    if days < spec.warn_days:
        return Outcome("degraded", f"{text}, below warn_days {spec.warn_days}", latency, values)
    return Outcome("healthy", text, latency, values)


def _unverified(spec: TlsProbe, name: str, timeout: float,
                err: ssl.SSLCertVerificationError) -> Outcome:
    """Verification failed: unhealthy with ssl's reason, and days_left if it can be read."""
    message = f"{spec.host}:{spec.port}: TLS verification failed for {name}: " \
              f"{err.verify_message or err.reason}"
    try:
        der, latency = peer_certificate(spec.host, spec.port, name, tls_context(False, None),
                                        timeout)
    except OSError:
        return Outcome("unhealthy", one_line(message))
    days = (not_valid_after(der) - datetime.now(UTC)).total_seconds() / _DAY_S
    return Outcome("unhealthy", one_line(message), latency, {"days_left": round(days, 3)})


def tls_context(verify: bool, ca_file: str | None) -> ssl.SSLContext:
    """A client context shared by every probe with the same settings (an SSLContext is safe
    to share between threads): loading CAs costs milliseconds, far more than the handshake.
    A ca_file that changes on disk is loaded again (its mtime is part of the cache key)."""
    mtime = os.stat(ca_file).st_mtime_ns if verify and ca_file else 0
    return _tls_context(verify, ca_file if verify else None, mtime)


@lru_cache(maxsize=32)
def _tls_context(verify: bool, ca_file: str | None, mtime: int) -> ssl.SSLContext:
    if not verify:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        return ctx
    return ssl.create_default_context(cafile=ca_file)


def reason(err: BaseException) -> str:
    """"Connection refused" rather than "[Errno 111] Connection refused"."""
    if isinstance(err, ssl.SSLError) and err.reason:
        return f"TLS error: {err.reason}"
    if isinstance(err, OSError) and err.strerror:
        return f"{err.strerror}: {err.filename}" if err.filename else err.strerror
    return f"{type(err).__name__}: {err}" if str(err) else type(err).__name__
