"""`checks:` — observe-only health probes (provider arrives with the health-check work).

Each check's results are metrics thresholds can use: check.NAME.ok, check.NAME.latency_ms.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import Field, field_validator, model_validator

from agent.playbook.models.base import Spec
from agent.playbook.models.processes import ProcessMatch
from agent.playbook.types import Duration, Size

PROBES = ("http", "tcp", "tls", "postgres", "redis", "disk", "memory", "swap", "cpu", "load",
          "process", "container", "service", "command")


class HttpProbe(Spec):
    url: str = Field(pattern=r"^https?://", examples=["http://127.0.0.1:5001/api/health"])
    method: str = Field("GET", examples=["GET", "HEAD"])
    headers: dict[str, str] | None = None
    expect_status: list[int] = Field(default_factory=lambda: [200], examples=[[200, 204]])
    expect_body: str | None = Field(None, description="Regex the body must match.")
    expect_json: dict[str, Any] | None = Field(None, examples=[{"status": "healthy"}])
    verify_tls: bool = Field(True, description="Verify the server certificate and host name "
                             "(https only).")
    ca_file: str | None = Field(None, description="PEM file of the CA that signs the server's "
                                "certificate (a private CA); default: the system's CAs.",
                                examples=["/etc/ssl/private-ca.pem"])
    timeout: Duration = Field(10.0, examples=["15s"])

    @field_validator("expect_body")
    @classmethod
    def _regex(cls, pattern: str | None) -> str | None:
        if pattern is not None:
            try:
                re.compile(pattern)
            except re.error as e:
                raise ValueError(f"expect_body {pattern!r} is not a valid regex: {e}") from None
        return pattern


class TcpProbe(Spec):
    host: str = Field(examples=["127.0.0.1"])
    port: int = Field(ge=1, le=65535)
    timeout: Duration = Field(5.0, examples=["5s"])


class TlsProbe(Spec):
    """Days until the server certificate expires (and, by default, whether it verifies)."""

    host: str = Field(examples=["example.com"])
    port: int = Field(443, ge=1, le=65535)
    server_name: str | None = Field(None, description="Name sent as SNI and verified against "
                                    "the certificate; default: host.",
                                    examples=["api.example.com"])
    verify: bool = Field(True, description="Unhealthy when the chain or the name does not "
                         "verify; false only reads the expiry date.")
    ca_file: str | None = Field(None, description="PEM file of a private CA to verify against.",
                                examples=["/etc/ssl/private-ca.pem"])
    warn_days: int = Field(14, ge=0, description="Degraded below this many days left.",
                           examples=[14])
    critical_days: int = Field(3, ge=0, description="Unhealthy below this many days left.",
                               examples=[3])
    timeout: Duration = Field(10.0, examples=["10s"])

    @model_validator(mode="after")
    def _bands(self) -> TlsProbe:
        if self.critical_days > self.warn_days:
            raise ValueError(f"critical_days ({self.critical_days}) must not be above "
                             f"warn_days ({self.warn_days})")
        return self


class PostgresProbe(Spec):
    dsn_env: str | None = Field(None, examples=["APP_DATABASE_URL"])
    dsn_file: str | None = None
    query: str = Field("SELECT 1")
    max_connections_percent: float | None = Field(None, ge=0, le=100)
    long_query: Duration | None = Field(None, description="Queries running longer than this "
                                        "make the check degraded.", examples=["5m"])
    timeout: Duration = Field(10.0, description="Bounds the connect and each statement.",
                              examples=["10s"])

    @model_validator(mode="after")
    def _one_source(self) -> PostgresProbe:
        if (self.dsn_env is None) == (self.dsn_file is None):
            raise ValueError("give one of dsn_env (an environment variable holding the DSN) "
                             "or dsn_file (a file holding it)")
        return self


class RedisProbe(Spec):
    url_env: str | None = Field(None, examples=["REDIS_URL"])
    host: str = "127.0.0.1"
    port: int = Field(6379, ge=1, le=65535)
    password_env: str | None = None
    max_memory_percent: float | None = Field(None, ge=0, le=100)
    max_clients: int | None = Field(None, ge=0)
    timeout: Duration = Field(5.0, description="Bounds the connect and each command.",
                              examples=["5s"])


class DiskProbe(Spec):
    path: str = Field("/", examples=["/"])
    max_used_percent: float = Field(90, ge=0, le=100)
    max_inodes_percent: float | None = Field(None, ge=0, le=100)


class PercentProbe(Spec):
    max_percent: float = Field(90, ge=0, le=100)


class LoadProbe(Spec):
    max_per_core: float = Field(2.0, ge=0)


class ProcessProbe(Spec):
    match: ProcessMatch
    min_count: int = Field(1, ge=0)
    max_rss: Size | None = Field(None, examples=["512MiB"])
    max_cpu_percent: float | None = Field(None, ge=0)


class NamedProbe(Spec):
    name: str = Field(min_length=1)


class CommandProbe(Spec):
    argv: list[str] = Field(min_length=1, examples=[["/usr/bin/pg_isready", "-q"]])
    expect_exit: int = 0
    timeout: Duration = Field(30.0, examples=["30s"])


class Probes(Spec):
    """Exactly one probe: what a playbook's check and a runbook's check step look at."""

    http: HttpProbe | None = None
    tcp: TcpProbe | None = None
    tls: TlsProbe | None = None
    postgres: PostgresProbe | None = None
    redis: RedisProbe | None = None
    disk: DiskProbe | None = None
    memory: PercentProbe | None = None
    swap: PercentProbe | None = None
    cpu: PercentProbe | None = None
    load: LoadProbe | None = None
    process: ProcessProbe | None = None
    container: NamedProbe | None = None
    service: NamedProbe | None = None
    command: CommandProbe | None = None

    @model_validator(mode="after")
    def _one_probe(self) -> Probes:
        given = [p for p in PROBES if getattr(self, p) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one probe: {', '.join(PROBES)} (got {len(given)})")
        return self

    @property
    def probe(self) -> str:
        return next(p for p in PROBES if getattr(self, p) is not None)


class CheckSpec(Probes):
    """One probe, run on an interval, healthy / degraded / unhealthy."""

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$", examples=["api-health"])
    interval: Duration = Field(60.0, examples=["60s"])
    degraded_ms: float | None = Field(None, ge=0, description="Latency at which it is degraded.")
    unhealthy_ms: float | None = Field(None, ge=0, description="Latency at which it is unhealthy.")
    optional: bool = Field(False, description="A failure counts as degraded, not unhealthy.")
