"""`backups:` — scheduled, verified, retained backups (provider arrives later)."""

from __future__ import annotations

from pydantic import Field, model_validator

from agent.playbook.models.base import Spec
from agent.playbook.types import Cron, Duration


class PostgresSource(Spec):
    dsn_env: str | None = Field(None, examples=["APP_DATABASE_URL"])
    dsn_file: str | None = None
    databases: list[str] | None = Field(None, description="Default: every database.")
    globals: bool = Field(True, description="Also dump roles (pg_dumpall --globals-only).")


class RedisSource(Spec):
    host: str = "127.0.0.1"
    port: int = Field(6379, ge=1, le=65535)
    password_env: str | None = None


class BackupSource(Spec):
    """Exactly one of postgres, redis, paths, command."""

    postgres: PostgresSource | None = None
    redis: RedisSource | None = None
    paths: list[str] | None = Field(None, min_length=1, examples=[["/srv/uploads"]])
    exclude: list[str] | None = Field(None, examples=[["*.tmp"]])
    command: list[str] | None = Field(None, min_length=1,
                                      description="argv whose stdout is the backup.")

    @model_validator(mode="after")
    def _one(self) -> BackupSource:
        given = [k for k in ("postgres", "redis", "paths", "command") if getattr(self, k)]
        if len(given) != 1:
            raise ValueError("give exactly one source: postgres, redis, paths, command")
        if self.exclude and not self.paths:
            raise ValueError("exclude only applies to paths")
        return self


class Retention(Spec):
    """borg/restic prune semantics: each rule keeps the newest backup of its period."""

    keep_last: int | None = Field(None, ge=0)
    keep_hourly: int | None = Field(None, ge=0)
    keep_daily: int | None = Field(None, ge=0, examples=[7])
    keep_weekly: int | None = Field(None, ge=0, examples=[4])
    keep_monthly: int | None = Field(None, ge=0, examples=[12])
    keep_yearly: int | None = Field(None, ge=0)


class Encryption(Spec):
    age_recipients_file: str | None = None
    key_file: str | None = Field(None, description="AES-GCM key file.")

    @model_validator(mode="after")
    def _one(self) -> Encryption:
        if (self.age_recipients_file is None) == (self.key_file is None):
            raise ValueError("give exactly one of age_recipients_file, key_file")
        return self


class Verify(Spec):
    restore: bool = Field(False, description="Restore into a scratch database and query it.")
    query: str | None = Field(None, examples=["SELECT count(*) FROM users"])


class BackupSpec(Spec):
    name: str = Field(min_length=1, examples=["db-daily"])
    schedule: Cron
    source: BackupSource
    destination: str = Field(examples=["/var/backups/opsagent"])
    retention: Retention | None = None
    encryption: Encryption | None = None
    verify: Verify | None = None
    max_age: Duration | None = Field(None, description="Alert when the newest backup is older.",
                                     examples=["26h"])
