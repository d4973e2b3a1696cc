"""`thresholds:` and `watches:` — conditions that fire actions.

Actions are templated when they fire, with the watch's named groups (e.g. ``{{ ip }}``) or
the threshold's ``value``/``metric``; their variables are checked when the playbook loads.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from agent.playbook.models.alerting import Flapping
from agent.playbook.models.base import Spec
from agent.playbook.types import Duration

# Host metrics a threshold can name besides a check's (check.NAME.KEY); disk.* take `path`.
HOST_METRICS = ("disk.used_percent", "disk.inodes_percent", "memory.used_percent",
                "swap.used_percent", "cpu.percent", "load.per_core", "load.1")
# Log metrics a watch publishes, as watch.NAME.KEY.
WATCH_METRICS = ("lines_per_s", "matches_per_s", "match_percent", "lag_s", "bytes_behind")
ACTIONS = ("notify", "block_ip", "restart", "run", "snapshot")


class BlockIp(Spec):
    ip: str = Field(examples=["{{ ip }}"])
    duration: Duration = Field(3600.0, examples=["1h"])
    share: bool = Field(False, description="Also block it on the other hosts of this host's "
                        "group (agent config `group`), through the collector; each applies "
                        "its own allowlist.")


class Run(Spec):
    argv: list[str] = Field(min_length=1, examples=[["/usr/local/bin/rotate-keys", "{{ ip }}"]])
    timeout: Duration = Field(60.0, examples=["60s"])


class Snapshot(Spec):
    lines: int = Field(50, ge=0, description="Matching lines kept as evidence.")
    sockets: bool = True
    processes: bool = True


class Action(Spec):
    """Exactly one action: notify, block_ip, restart, run or snapshot."""

    notify: str | None = Field(None, description="A notifier's name.", examples=["ops"])
    block_ip: BlockIp | None = None
    restart: str | None = Field(None, description="KIND:NAME of the resource to restart.",
                                examples=["containers:rezapp-api"])
    run: Run | None = None
    snapshot: Snapshot | None = None

    @model_validator(mode="after")
    def _one(self) -> Action:
        given = [a for a in ACTIONS if a in self.model_fields_set]
        if len(given) != 1:
            raise ValueError(f"give exactly one action: {', '.join(ACTIONS)}")
        return self


class ThresholdSpec(Spec):
    """A metric compared with a limit, held for a while before it fires."""

    name: str = Field(min_length=1, examples=["disk-root"])
    metric: str = Field(pattern=r"^[a-z_]+(\.[A-Za-z0-9_-]+)+$",
                        examples=["disk.used_percent", "check.api-health.latency_ms",
                                  "watch.nginx-errors.match_percent"])
    path: str | None = Field(None, description="Mount point for disk metrics.", examples=["/"])
    above: float | None = None
    below: float | None = None
    clear_above: float | None = Field(None, description="Hysteresis: resolves only above this.")
    clear_below: float | None = Field(None, description="Hysteresis: resolves only below this.")
    hold: Duration = Field(0.0, alias="for", description="How long the condition must hold.",
                           examples=["5m"])
    severity: Literal["info", "warning", "critical"] = "warning"
    labels: dict[str, str] | None = None
    interval: Duration = Field(10.0, description="How often a host metric is sampled; a "
                               "check's metric is evaluated on each of its results.",
                               examples=["10s"])
    repeat: Duration = Field(14400.0, description="Notify again this often while it keeps "
                             "firing unacknowledged (0s: never).", examples=["4h"])
    escalation: str | None = Field(None, description="An escalation policy's name.",
                                   examples=["high-priority"])
    flapping: Flapping = Field(default_factory=Flapping)
    actions: list[Action] = Field(default_factory=list)

    @model_validator(mode="after")
    def _limits(self) -> ThresholdSpec:
        if (self.above is None) == (self.below is None):
            raise ValueError("give exactly one of above, below")
        if self.above is not None:
            if self.clear_above is not None:
                raise ValueError("an `above` rule clears with clear_below, not clear_above")
            if self.clear_below is not None and self.clear_below > self.above:
                raise ValueError(f"clear_below ({self.clear_below:g}) must not exceed above "
                                 f"({self.above:g})")
        if self.below is not None:
            if self.clear_below is not None:
                raise ValueError("a `below` rule clears with clear_above, not clear_below")
            if self.clear_above is not None and self.clear_above < self.below:
                raise ValueError(f"clear_above ({self.clear_above:g}) must not be under below "
                                 f"({self.below:g})")
        if self.interval < 1:
            raise ValueError("interval must be at least 1s")
        return self

    def firing(self, value: float) -> bool:
        """Is the condition met?"""
        if self.above is not None:
            return value > self.above
        assert self.below is not None
        return value < self.below

    def cleared(self, value: float) -> bool:
        """Has a firing alert recovered (past the hysteresis limit when one is given)?"""
        if self.above is not None:
            return value < self.clear_below if self.clear_below is not None else \
                value <= self.above
        assert self.below is not None
        return value > self.clear_above if self.clear_above is not None else value >= self.below


class WatchBudget(Spec):
    """At most ``firings`` firings act within ``per``."""

    firings: int = Field(100, ge=1, examples=[100])
    per: Duration = Field(600.0, examples=["10m"])


class Fail2banPattern(Spec):
    """A stock fail2ban filter, read unchanged (with its includes and .local overrides)."""

    fail2ban_filter: str = Field(examples=["/etc/fail2ban/filter.d/sshd.conf"])
    options: dict[str, str] | None = Field(
        None, description="The filter's parameters, as fail2ban's `filter = sshd[mode=...]`.",
        examples=[{"mode": "aggressive"}])


class WatchSpec(Spec):
    """A log source, a pattern, and what to do when it matches often enough."""

    name: str = Field(min_length=1, examples=["ssh-bruteforce"])
    log: str | None = Field(None, description="Log file followed across rotation.",
                            examples=["/var/log/auth.log"])
    journal: str | None = Field(None, description="systemd unit whose journal is read.")
    container: str | None = Field(None, description="Docker container whose logs are read.")
    pattern: str | Fail2banPattern = Field(
        description="Regex with named groups, or a stock fail2ban filter.",
        examples=[r"Failed password for .* from (?P<ip>\S+)"])
    ignore: list[str] | None = Field(None, description="Lines matching any of these are skipped.")
    key: str | None = Field(None, description="Named group counted separately.", examples=["ip"])
    threshold: int = Field(1, ge=1, description="Matches per key within the window that fire.")
    within: Duration = Field(3600.0, examples=["1h"])
    severity: Literal["info", "warning", "critical"] = Field(
        "warning", description="Of the alert a firing raises.")
    rate_window: Duration = Field(
        60.0, description="Window of the log metrics watch.NAME.lines_per_s, "
        ".matches_per_s and .match_percent (the share of matching lines).", examples=["1m"])
    budget: WatchBudget = Field(default_factory=lambda: WatchBudget(),
                                description="How many firings may act; past it the watch "
                                "still counts and reports but does nothing, and alerts.")
    actions: list[Action] = Field(default_factory=list)

    @field_validator("pattern")
    @classmethod
    def _regex(cls, v: str | Fail2banPattern) -> str | Fail2banPattern:
        if isinstance(v, str):
            try:
                re.compile(v)
            except re.error as e:
                raise ValueError(f"invalid regex: {e}") from None
        return v

    @field_validator("ignore")
    @classmethod
    def _ignore(cls, v: list[str] | None) -> list[str] | None:
        for p in v or []:
            try:
                re.compile(p)
            except re.error as e:
                raise ValueError(f"invalid regex {p!r}: {e}") from None
        return v

    @model_validator(mode="after")
    def _check(self) -> WatchSpec:
        sources = [s for s in ("log", "journal", "container") if getattr(self, s)]
        if len(sources) != 1:
            raise ValueError("give exactly one source: log, journal, container")
        if self.rate_window < 1:
            raise ValueError("rate_window must be at least 1s")
        if self.key and isinstance(self.pattern, str):
            groups = re.compile(self.pattern).groupindex
            if self.key not in groups:
                have = ", ".join(groups) or "none"
                raise ValueError(f"key {self.key!r} is not a named group of pattern "
                                 f"(named groups: {have}; write (?P<{self.key}>...))")
        return self

    def group_names(self) -> set[str]:
        if isinstance(self.pattern, str):
            return set(re.compile(self.pattern).groupindex)
        return {"ip", "host", "user"}  # fail2ban's <HOST>/<ADDR> and <F-USER>
