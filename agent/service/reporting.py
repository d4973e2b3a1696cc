"""What the agent service tells the collector: every run, alert and revision change becomes
a report document in the durable outbox (state.db) first; the sender ships it from there.

Without a ``collector:`` in the config nothing is queued (the outbox would only fill up):
alerts still land in state.db and ``opsagent status`` shows them.
"""

from __future__ import annotations

import logging
from typing import Any

from agent import __version__
from agent.engine import RunResult, report_of
from agent.errors import OpsAgentError
from agent.service.config import AgentConfig

log = logging.getLogger("opsagent.service")


class Reporter:
    def __init__(self, cfg: AgentConfig) -> None:
        self.cfg = cfg
        self.outbox: Any = None
        self.sender: Any = None
        c = cfg.collector
        if c is None:
            return
        from agent.report.outbox import Outbox
        from agent.report.sender import Sender

        self.outbox = Outbox(cfg.state_dir, cfg.host, __version__, cap_bytes=int(c.outbox_max))
        self.sender = Sender(self.outbox, c.url, c.token_file, ca_file=c.ca_file,
                             cert_file=c.cert_file, key_file=c.key_file,
                             batch_size=c.batch_size)

    def start(self) -> None:
        if self.sender is not None:
            self.sender.start()

    def stop(self, flush_s: float = 3.0) -> None:
        """Send what is waiting for a moment; whatever is left stays in the outbox."""
        if self.sender is None:
            return
        try:
            self.sender.flush(flush_s)
        finally:
            self.sender.stop()

    def _put(self, report: Any) -> None:
        if self.outbox is None:
            return
        try:
            self.outbox.put(report)
        except OpsAgentError as e:  # a full disk must not stop enforcement
            log.error("cannot write a %s report to the outbox: %s", report.type, e)
            return
        log.debug("queued %s report %s", report.type, report.id, extra={"report_id": report.id})
        self.sender.wake()

    def run(self, run: RunResult, *, heartbeat: bool) -> None:
        """A full reconcile always reports (the collector sees the host alive); a targeted
        one when it found or did something."""
        if self.outbox is None or not (heartbeat or run.drift or run.count("failed")):
            return
        self._put(report_of(run, __version__))

    def alert(self, key: str, severity: str, message: str, **more: Any) -> None:
        """``more``: state, alert_id, value, muted_by (see AlertDoc)."""
        from agent.report.document import AlertDoc, AlertReport

        self._put(AlertReport(host=self.cfg.host, agent_version=__version__,
                              alert=AlertDoc(key=key, severity=severity, message=message,
                                             **more)))

    def response(self, doc: dict[str, Any]) -> None:
        """A log watch fired (agent.watches.runtime): what it saw and did."""
        from agent.report.document import ResponseDoc, ResponseReport

        self._put(ResponseReport(host=self.cfg.host, agent_version=__version__,
                                 response=ResponseDoc.model_validate(doc)))

    def revision(self, new: str, previous: str | None, playbooks: list[str]) -> None:
        from agent.report.document import RevisionDoc, RevisionReport

        self._put(RevisionReport(host=self.cfg.host, agent_version=__version__,
                                 revision=RevisionDoc(id=new, previous=previous,
                                                      playbooks=playbooks)))

    def state(self) -> dict[str, Any] | None:
        if self.sender is None:
            return None
        try:
            doc: dict[str, Any] = self.sender.state()
        except OpsAgentError as e:
            return {"error": str(e)}
        return doc
