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


_KEEP = ("Walking from the newest backup back, keep the newest backup of each of the N most "
         "recent {what} that have a backup (local time); -1 keeps one for every {one}. "
         "Rules are independent: a backup kept by any rule is kept.")


class Retention(Spec):
    """restic forget / borg prune semantics (agent/backups/retention.py documents the rules):
    each rule keeps the newest backup of each of its N most recent periods that hold one, plus
    the oldest backup while it has slots left; a backup kept by any rule is kept."""

    keep_last: int | None = Field(None, ge=-1, description="Keep the N newest backups; -1: all.",
                                  examples=[3])
    keep_hourly: int | None = Field(None, ge=-1, examples=[24],
                                    description=_KEEP.format(what="hours", one="hour"))
    keep_daily: int | None = Field(None, ge=-1, examples=[7],
                                   description=_KEEP.format(what="days", one="day"))
    keep_weekly: int | None = Field(None, ge=-1, examples=[4], description=_KEEP.format(
        what="ISO weeks (Monday to Sunday)", one="week"))
    keep_monthly: int | None = Field(None, ge=-1, examples=[12],
                                     description=_KEEP.format(what="months", one="month"))
    keep_yearly: int | None = Field(None, ge=-1, examples=[3],
                                    description=_KEEP.format(what="years", one="year"))

    @model_validator(mode="after")
    def _some_rule(self) -> Retention:
        rules = (self.keep_last, self.keep_hourly, self.keep_daily, self.keep_weekly,
                 self.keep_monthly, self.keep_yearly)
        if not any(rules):
            raise ValueError("retention has no keep_* rule above 0, so it would keep every "
                             "backup (give e.g. keep_daily: 7, or leave retention out to "
                             "keep everything)")
        return self


class Encryption(Spec):
    """Encrypt every artefact after compression: age (recipients) or AES-256-GCM (a key)."""

    age_recipients_file: str | None = Field(
        None, description="age recipients, one per line (age1..., ssh-ed25519 ...); # comments.",
        examples=["/etc/opsagent/backup.recipients"])
    age_identity_file: str | None = Field(
        None, description="age identities (AGE-SECRET-KEY-1... or an SSH private key) that "
        "decrypt the backups; needed only by verify and restore, so it may live elsewhere.",
        examples=["/etc/opsagent/backup.key"])
    key_file: str | None = Field(None, description="AES-256-GCM key file: 32 raw bytes, or "
                                 "them as 64 hex digits or base64.",
                                 examples=["/etc/opsagent/backup.aes"])

    @model_validator(mode="after")
    def _one(self) -> Encryption:
        if (self.age_recipients_file is None) == (self.key_file is None):
            raise ValueError("give exactly one of age_recipients_file, key_file")
        if self.age_identity_file is not None and self.age_recipients_file is None:
            raise ValueError("age_identity_file goes with age_recipients_file")
        return self


class Verify(Spec):
    """After each run: checksums, every artefact decompressed (and decrypted) in full."""

    restore: bool = Field(False, description="PostgreSQL: restore the dump into a scratch "
                          "database (created and dropped on the source's server) and query it.")
    query: str | None = Field(
        None, description="Run in the scratch database; verification fails when it errors, "
        "returns no row, or its first value is false or NULL.",
        examples=["SELECT count(*) > 0 FROM users"])
    database: str | None = Field(None, description="Which dumped database to restore "
                                 "(default: the first one dumped).", examples=["app"])

    @model_validator(mode="after")
    def _query_needs_restore(self) -> Verify:
        if (self.query is not None or self.database is not None) and not self.restore:
            raise ValueError("query and database need restore: true")
        return self


class SftpTarget(Spec):
    """A directory on another host over SSH (SFTP); a run lands in PATH/NAME/RUN/."""

    host: str = Field(min_length=1, description="Host name or address of the SSH server.",
                      examples=["backup01.example.com"])
    port: int = Field(22, ge=1, le=65535, description="SSH port.", examples=[22])
    user: str = Field(min_length=1, description="Login name on the remote host.",
                      examples=["backup"])
    key_file: str | None = Field(
        None, description="Private key file (OpenSSH or PEM, no passphrase). Default: the keys "
        "of the running ssh-agent (SSH_AUTH_SOCK).", examples=["/etc/opsagent/backup_ed25519"])
    known_hosts: str = Field(
        "~/.ssh/known_hosts", description="known_hosts file the server's host key is checked "
        "against. An unknown host key is refused unless accept_new is true; a changed one is "
        "always refused.", examples=["/etc/opsagent/known_hosts"])
    accept_new: bool = Field(
        False, description="Trust a host key seen for the first time and record it in "
        "known_hosts (ssh's StrictHostKeyChecking=accept-new).", examples=[False])
    path: str = Field(description="Absolute directory on the remote host; runs are copied to "
                      "PATH/NAME/RUN/.", examples=["/srv/backups/web01"])
    timeout: Duration = Field(30.0, description="Upper bound for connecting, authenticating and "
                              "each SFTP request.", examples=["30s"])

    @model_validator(mode="after")
    def _paths(self) -> SftpTarget:
        if not self.path.startswith("/"):
            raise ValueError(f"path {self.path!r} must be absolute (e.g. /srv/backups/web01)")
        if any(c.isspace() for c in self.host):
            raise ValueError(f"host {self.host!r} contains whitespace (expected a host name "
                             "or an address)")
        return self


class S3Target(Spec):
    """A bucket in S3 or an S3-compatible store; a run lands under PREFIX/NAME/RUN/."""

    bucket: str = Field(description="Bucket name (3-63 characters: a-z, 0-9, '.', '-').",
                        examples=["acme-backups"])
    prefix: str = Field("", description="Key prefix the runs go under; slashes at either end "
                        "are ignored.", examples=["web01"])
    endpoint_url: str | None = Field(
        None, description="Endpoint of an S3-compatible store (MinIO, Ceph, Garage, ...). "
        "Default: AWS for the region.", examples=["https://s3.eu-central-1.amazonaws.com"])
    region: str | None = Field(None, description="Region of the bucket.",
                               examples=["eu-central-1"])
    access_key_env: str | None = Field(None, description="Environment variable holding the "
                                       "access key id.", examples=["BACKUP_S3_ACCESS_KEY"])
    secret_key_env: str | None = Field(None, description="Environment variable holding the "
                                       "secret access key.", examples=["BACKUP_S3_SECRET_KEY"])
    credentials_file: str | None = Field(
        None, description="AWS shared credentials file (aws_access_key_id, "
        "aws_secret_access_key in its [default] section). Without this or the *_env pair, "
        "boto3's usual chain applies (AWS_* variables, instance role).",
        examples=["/etc/opsagent/s3-credentials"])
    timeout: Duration = Field(60.0, description="Connect and read timeout of each S3 request.",
                              examples=["60s"])

    @model_validator(mode="after")
    def _valid(self) -> S3Target:
        b = self.bucket
        if not (3 <= len(b) <= 63 and b[0].isalnum() and b[-1].isalnum()
                and all(c.islower() or c.isdigit() or c in ".-" for c in b)):
            raise ValueError(f"bucket {b!r} is not a valid bucket name (expected 3-63 "
                             "characters of a-z, 0-9, '.', '-', starting and ending with a "
                             "letter or digit)")
        if (self.access_key_env is None) != (self.secret_key_env is None):
            raise ValueError("give access_key_env and secret_key_env together")
        if self.credentials_file and self.access_key_env:
            raise ValueError("give either credentials_file or access_key_env/secret_key_env, "
                             "not both")
        if self.endpoint_url and not self.endpoint_url.startswith(("http://", "https://")):
            raise ValueError(f"endpoint_url {self.endpoint_url!r} must start with http:// or "
                             "https://")
        if ".." in self.prefix.split("/"):
            raise ValueError(f"prefix {self.prefix!r} must not contain '..'")
        return self


class Offsite(Spec):
    """Copies of each successful run elsewhere, verified by checksum: sftp, s3 or both."""

    sftp: SftpTarget | None = Field(None, description="Copy to another host over SFTP.")
    s3: S3Target | None = Field(None, description="Copy to S3-compatible object storage.")
    retention: Retention | None = Field(
        None, description="Retention for the offsite copies. Default: the backup's own "
        "retention (no retention: nothing offsite is deleted).",
        examples=[{"keep_daily": 14, "keep_monthly": 24}])

    @model_validator(mode="after")
    def _some(self) -> Offsite:
        if self.sftp is None and self.s3 is None:
            raise ValueError("offsite needs sftp, s3 or both")
        return self


class BackupSpec(Spec):
    name: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
                      description="Also the folder under destination: letters, digits, . _ -",
                      examples=["db-daily"])
    schedule: Cron
    source: BackupSource
    destination: str = Field(examples=["/var/backups/opsagent"])
    retention: Retention | None = None
    encryption: Encryption | None = None
    offsite: Offsite | None = Field(None, description="Copy each successful run to another "
                                    "host (sftp) and/or object storage (s3).")
    verify: Verify | None = None
    max_age: Duration | None = Field(None, description="Alert when the newest backup is older.",
                                     examples=["26h"])
    timeout: Duration = Field(21600.0, description="Upper bound of one run: every dump, copy "
                              "and the verification (default 6h).", examples=["2h"])

    @model_validator(mode="after")
    def _verifiable(self) -> BackupSpec:
        v, enc = self.verify, self.encryption
        if v is not None and v.restore and self.source.postgres is None and v.query:
            raise ValueError("verify.query needs a postgres source")
        if (v is not None and v.restore and enc is not None and enc.age_recipients_file
                and enc.age_identity_file is None):
            raise ValueError("verify.restore of age-encrypted backups needs "
                             "encryption.age_identity_file")
        return self
