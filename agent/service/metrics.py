"""The agent's Prometheus /metrics (``metrics_listen: 127.0.0.1:9109``): reconciles and what
they found, resources by status, budgets run out, alerts, and the outbox waiting to be sent.
Gauges are read from the agent's state when scraped, so they are never stale."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from agent.checks.base import HEALTH_RANK
from agent.engine import RunResult


class _Live(Collector):
    def __init__(self, agent: Any) -> None:
        self.agent = agent

    def collect(self) -> Iterator[GaugeMetricFamily]:
        by_status = GaugeMetricFamily("opsagent_resources", "Resources by their last status",
                                      labels=["status"])
        counts: dict[str, int] = {}
        for entry in list(self.agent.results.values()):
            counts[entry["status"]] = counts.get(entry["status"], 0) + 1
        for status in ("ok", "changed", "failed", "skipped"):
            by_status.add_metric([status], counts.get(status, 0))
        yield by_status
        yield GaugeMetricFamily("opsagent_budgets_exhausted",
                                "Resources whose restart budget is spent",
                                value=len(self.agent.exhausted))
        yield from self._checks()
        state = self.agent.reporter.state()
        if state is not None and "depth" in state:
            yield GaugeMetricFamily("opsagent_outbox_reports", "Reports waiting to be sent",
                                    value=state["depth"])
            yield GaugeMetricFamily("opsagent_outbox_bytes", "Bytes waiting to be sent",
                                    value=state.get("bytes", 0))
            yield GaugeMetricFamily("opsagent_outbox_dropped", "Reports ever dropped over "
                                    "the outbox cap (each drop is reported)",
                                    value=state.get("dropped_total", 0))
            yield GaugeMetricFamily("opsagent_reports_sent", "Reports the collector took",
                                    value=state.get("sent_total", 0))


    def _checks(self) -> Iterator[GaugeMetricFamily]:
        obs = self.agent.observer
        if obs is None:
            return
        _, detail = obs.health(history=False)
        status = GaugeMetricFamily("opsagent_check_status", "A check's health: 0 healthy, "
                                   "1 degraded, 2 unhealthy", labels=["check"])
        latency = GaugeMetricFamily("opsagent_check_latency_ms", "A check's last latency",
                                    labels=["check"])
        for name, d in detail.items():
            if d["status"] in HEALTH_RANK:
                status.add_metric([name], HEALTH_RANK[d["status"]])
            if d["latency_ms"] is not None:
                latency.add_metric([name], d["latency_ms"])
        yield status
        yield latency
        firing = GaugeMetricFamily("opsagent_alerts_active", "Alerts pending, firing or "
                                   "flapping", labels=["state", "severity"])
        counts: dict[tuple[str, str], int] = {}
        for a in obs.alerting.snapshot():
            k = (a["state"], a["severity"] or "")
            counts[k] = counts.get(k, 0) + 1
        for (state, sev), n in counts.items():
            firing.add_metric([state, sev], n)
        yield firing


class AgentMetrics:
    def __init__(self, agent: Any) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.reconciles = Counter("opsagent_reconciles", "Playbook runs", ["trigger"],
                                  registry=r)
        self.changes = Counter("opsagent_changes", "Resources changed (drift repaired or a "
                               "new spec applied)", ["kind"], registry=r)
        self.failures = Counter("opsagent_failures", "Resources that failed to converge",
                                ["kind"], registry=r)
        self.duration = Histogram("opsagent_reconcile_seconds", "Duration of a playbook run",
                                  ["trigger"], registry=r,
                                  buckets=(.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30))
        self.alerts = Counter("opsagent_alerts", "Alerts raised", ["severity"], registry=r)
        r.register(_Live(agent))

    def observe_run(self, run: RunResult, trigger: str) -> None:
        self.reconciles.labels(trigger).inc()
        self.duration.labels(trigger).observe(max(0.0, run.finished - run.started))
        for res in run.results:
            if res.status == "changed":
                self.changes.labels(res.kind).inc()
            elif res.status == "failed":
                self.failures.labels(res.kind).inc()

    def serve(self, host: str, port: int) -> None:
        start_http_server(port, addr=host, registry=self.registry)
