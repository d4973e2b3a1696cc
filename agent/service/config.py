"""The agent service's configuration: ``/etc/opsagent/agent.yaml``.

Read with the playbook loader (positions, duplicate keys, size caps) and checked by a strict
model, so a bad config gets the same located one-line errors as a bad playbook and the
service refuses to start on it. The schema is published as schemas/agent.schema.json.
"""

from __future__ import annotations

import os
import socket
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from agent.errors import InputError
from agent.playbook.models.base import Spec
from agent.playbook.types import Duration, Size

DEFAULT_CONFIG = "/etc/opsagent/agent.yaml"


class GitPlaybooks(Spec):
    """Playbooks pulled from a git repository, checked out per commit."""

    url: str = Field(min_length=1, description="Repository URL or local path.",
                     examples=["https://git.example.com/ops/playbooks.git"])
    branch: str = Field("main", min_length=1, description="Branch to follow.")
    path: str = Field(".", description="Directory inside the repository holding playbooks.",
                      examples=["hosts/web"])
    interval: Duration = Field(300.0, description="How often to pull (and on SIGHUP).",
                               examples=["5m"])
    allowed_signers: str | None = Field(
        None, description="SSH allowed_signers file: only commits signed by one of these keys "
        "are enforced (git verify-commit).", examples=["/etc/opsagent/allowed_signers"])
    gpg_keyring: str | None = Field(
        None, description="OpenPGP keyring file: only commits signed by one of these keys are "
        "enforced (git verify-commit).", examples=["/etc/opsagent/trusted.gpg"])

    @field_validator("path")
    @classmethod
    def _relative(cls, v: str) -> str:
        if os.path.isabs(v) or ".." in v.split("/"):
            raise ValueError(f"{v!r} must be a path inside the repository (expected e.g. "
                             "hosts/web)")
        return v


class GitSourceConfig(Spec):
    git: GitPlaybooks = Field(description="The repository to pull playbooks from.")


class CollectorConfig(Spec):
    url: str = Field(description="Base URL of the collector.", examples=["http://127.0.0.1:8080"],
                     pattern=r"^https?://[^\s]+$")
    token_file: str | None = Field(
        None, description="File holding this host's bearer token (`opsagent server token add "
        "HOST` makes one); read again before each send, so a rotated token is picked up.",
        examples=["/etc/opsagent/token"])
    ca_file: str | None = Field(None, description="CA bundle the collector's certificate is "
                                "checked against (default: the system's).")
    cert_file: str | None = Field(None, description="Client certificate (mutual TLS).")
    key_file: str | None = Field(None, description="Client certificate's key (mutual TLS).")
    outbox_max: Size = Field(
        2**30, description="Cap of reports waiting to be sent; past it the oldest non-critical "
        "ones are dropped, and the drop is itself reported.", examples=["1GiB"])
    batch_size: int = Field(500, ge=1, le=5000, description="Reports per request at most.")

    @model_validator(mode="after")
    def _pair(self) -> CollectorConfig:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together (mutual TLS)")
        return self


class FirewallConfig(Spec):
    """How log watches block addresses (nftables, table ``inet opsagent``)."""

    nft: list[str] | None = Field(
        None, min_length=1, description="The nft command as an argv (default: nft, or the JSON "
        "list in $OPSAGENT_NFT); e.g. to act inside a network namespace.",
        examples=[["ip", "netns", "exec", "edge", "nft"]])
    management: list[str] = Field(
        default_factory=list, description="Addresses or networks never blocked, besides "
        "loopback, the host's own addresses, the collector and SSH sessions' peers.",
        examples=[["10.0.0.0/8"]])
    fleet: bool = Field(False, description="Apply the blocks other hosts of this host's "
                        "`group` share through the collector (polled every 10 s).")


class AgentConfig(Spec):
    """What `opsagent run` enforces and how."""

    host: str = Field(default_factory=socket.gethostname,
                      description="Host name in reports (default: the machine's hostname).")
    playbooks: list[str] | GitSourceConfig = Field(
        default_factory=lambda: ["/etc/opsagent/playbooks"],
        description="Playbook files or directories, or {git: {...}} to pull them.",
        examples=[["/etc/opsagent/playbooks"]])
    group: str | None = Field(None, pattern=r"^[A-Za-z0-9_.-]{1,64}$",
                              description="The host's group for fleet-wide blocks.",
                              examples=["web"])
    vars: dict[str, Any] = Field(default_factory=dict,
                                 description="Variables given to every playbook (like -e).")
    state_dir: str = Field("/var/lib/opsagent", description="Budgets, pending handlers, status.")
    collector: CollectorConfig | None = Field(None, description="Where reports are sent.")
    reconcile_interval: Duration = Field(
        60.0, description="Full reconcile this often, besides the event-driven ones.",
        examples=["60s"])
    log_format: Literal["text", "json"] = Field("text", description="text or JSON lines.")
    log_level: Literal["debug", "info", "warning", "error"] = Field("info")
    metrics_listen: str | None = Field(
        None, description="Serve Prometheus /metrics on this HOST:PORT (off by default).",
        examples=["127.0.0.1:9109"], pattern=r"^[^\s:]*:[0-9]{1,5}$")
    health_listen: str | None = Field(
        None, description="Serve the checks' aggregate on http://HOST:PORT/health (200 "
        "healthy, 503 otherwise); off by default.", examples=["127.0.0.1:9110"],
        pattern=r"^[^\s:]*:[0-9]{1,5}$")
    check_workers: int = Field(8, ge=1, le=64, description="Checks running at once at most.")
    fleet_requests: bool = Field(
        True, description="Run fleet runs' requests (opsagent fleet-exec over SSH) in the "
        "agent, handed over on STATE_DIR/fleet.sock (0600, the agent's own user only): a "
        "host's part of a run then costs no Python start. false: each request runs in a "
        "process of its own.")
    firewall: FirewallConfig = Field(default_factory=lambda: FirewallConfig(),
                                     description="IP blocking by log watches.")
    memory_limit: Size = Field(
        256 * 2**20, description="Above this resident size the agent restarts itself cleanly.",
        examples=["256MiB"])

    @field_validator("reconcile_interval")
    @classmethod
    def _interval(cls, v: float) -> float:
        if v < 1:
            raise ValueError("must be at least 1s (expected e.g. 60s)")
        return v


def load_config(path: str, overrides: dict[str, Any] | None = None) -> AgentConfig:
    """Read and check the config; relative paths in it are relative to its directory."""
    from agent.playbook import pydantic_diagnostics
    from agent.playbook.loader import parse, read_text

    doc = parse(read_text(path), path)
    data = doc.data if doc.data is not None else {}
    if not isinstance(data, dict):
        raise InputError([doc.diag((), "the agent config must be a mapping",
                                   "keys like playbooks:, state_dir:")])
    data = {**data, **(overrides or {})}
    doc.data = data
    try:
        cfg = AgentConfig.model_validate(data)
    except ValidationError as e:
        raise InputError(pydantic_diagnostics(doc, e)) from None
    base = os.path.dirname(os.path.abspath(path))
    fix: dict[str, Any] = {"state_dir": os.path.join(base, cfg.state_dir)}
    if cfg.collector is not None:
        c = cfg.collector
        fix["collector"] = c.model_copy(update={
            k: os.path.join(base, v) for k in ("token_file", "ca_file", "cert_file", "key_file")
            if (v := getattr(c, k))})
    if isinstance(cfg.playbooks, list):
        fix["playbooks"] = [os.path.join(base, p) for p in cfg.playbooks]
    else:
        g = cfg.playbooks.git
        url = g.url if "://" in g.url or ":" in g.url.split("/")[0] else os.path.join(base, g.url)
        keys = {k: os.path.join(base, v) for k in ("allowed_signers", "gpg_keyring")
                if (v := getattr(g, k))}
        fix["playbooks"] = GitSourceConfig(git=g.model_copy(update={"url": url, **keys}))
    return cfg.model_copy(update=fix)
