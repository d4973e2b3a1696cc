"""`notifiers:` — where alerts go. Secrets are named by environment variable or file."""

from __future__ import annotations

from pydantic import Field, model_validator

from agent.playbook.models.base import Spec
from agent.playbook.types import Duration


def _one_secret(spec: Spec, *names: str) -> None:
    given = [n for n in names if getattr(spec, n) is not None]
    if len(given) != 1:
        raise ValueError(f"give exactly one of {', '.join(names)}")


class Slack(Spec):
    webhook_url_env: str | None = Field(None, examples=["SLACK_WEBHOOK_URL"])
    webhook_url_file: str | None = None
    channel: str | None = Field(None, examples=["#ops"])

    @model_validator(mode="after")
    def _check(self) -> Slack:
        _one_secret(self, "webhook_url_env", "webhook_url_file")
        return self


class PagerDuty(Spec):
    routing_key_env: str | None = Field(None, examples=["PD_ROUTING_KEY"])
    routing_key_file: str | None = None
    url: str = Field("https://events.pagerduty.com/v2/enqueue", pattern=r"^https?://",
                     description="Events API v2 endpoint (a proxy's, or a test server's).")

    @model_validator(mode="after")
    def _check(self) -> PagerDuty:
        _one_secret(self, "routing_key_env", "routing_key_file")
        return self


class Smtp(Spec):
    host: str = Field(examples=["127.0.0.1"])
    port: int = Field(25, ge=1, le=65535)
    starttls: bool = False
    username: str | None = None
    password_env: str | None = None
    password_file: str | None = None
    ca_file: str | None = Field(None, description="CA bundle for STARTTLS (default: the "
                                "system's).")
    timeout: Duration = Field(10.0, examples=["10s"])

    @model_validator(mode="after")
    def _auth(self) -> Smtp:
        if self.password_env is not None and self.password_file is not None:
            raise ValueError("give at most one of password_env, password_file")
        has_password = self.password_env is not None or self.password_file is not None
        if (self.username is None) != (not has_password):
            raise ValueError("username and a password (password_env or password_file) go "
                             "together")
        return self


class Email(Spec):
    to: list[str] = Field(min_length=1, examples=[["devops@example.com"]])
    sender: str | None = Field(None, alias="from", examples=["opsagent@example.com"])
    smtp: Smtp


class Webhook(Spec):
    url: str = Field(pattern=r"^https?://", examples=["https://hooks.example.com/ops"])
    secret_env: str | None = Field(None, description="HMAC secret used to sign the body.")
    secret_file: str | None = None
    headers: dict[str, str] | None = None


class Notifier(Spec):
    """Exactly one channel per notifier."""

    slack: Slack | None = None
    pagerduty: PagerDuty | None = None
    email: Email | None = None
    webhook: Webhook | None = None

    @model_validator(mode="after")
    def _check(self) -> Notifier:
        given = [k for k in ("slack", "pagerduty", "email", "webhook") if getattr(self, k)]
        if len(given) != 1:
            raise ValueError("give exactly one of slack, pagerduty, email, webhook")
        return self
