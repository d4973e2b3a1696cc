"""Opt-in fleet-wide blocks: what another host of this host's group decided, applied here.

A watch's ``block_ip`` with ``share: true`` puts the block (address, end time) in its
``response`` report; the collector keeps it for the reporting host's ``group``. Hosts whose
config says ``firewall: {fleet: true}`` and the same ``group`` poll
``GET /api/v1/blocks?group=G&after=SEQ`` every ``POLL_S`` and block each address for what
is left of its time, through their own guard: loopback, their own addresses, management
networks and every playbook's allowlist still win. The last sequence number taken is kept
in state.db, so a restart neither repeats nor misses one.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from agent import statedb
from agent.errors import OpsAgentError

log = logging.getLogger("opsagent.fleet")

POLL_S = 10.0
_KEY = "collector:fleet-blocks"


class FleetBlocks:
    def __init__(self, state_dir: str, group: str, sender: Any,
                 block: Callable[..., tuple[bool, str, str | None, float | None]],
                 allowlists: Callable[[], list[str]], poll_s: float = POLL_S) -> None:
        self.state_dir, self.group, self.sender = state_dir, group, sender
        self._block, self._allowlists = block, allowlists
        self.poll_s = poll_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="opsagent-fleet", daemon=True)
        self.applied = 0
        self.refused = 0

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        failing = False
        while not self._stop.is_set():
            try:
                self.poll()
                failing = False
            except OpsAgentError as e:
                if not failing:  # said once per outage, not every 10 s
                    log.warning("fleet blocks: %s", e)
                failing = True
            self._stop.wait(self.poll_s)

    def poll(self) -> None:
        after = self._last()
        doc = self.sender.fetch("/api/v1/blocks", {"group": self.group, "after": after})
        now = time.time()
        for b in doc.get("blocks", []):
            ttl = float(b["until"]) - now
            if ttl < 1:
                continue
            ok, message, _, _ = self._block(str(b["addr"]), ttl, f"fleet:{b['rule']}",
                                            str(b.get("reason", ""))[:200], self._allowlists(),
                                            origin=f"fleet:{b['origin']}")
            if ok:
                self.applied += 1
                log.info("fleet block from %s: %s", b["origin"], message,
                         extra={"origin": b["origin"]})
            else:
                self.refused += 1
                log.warning("fleet block from %s refused: %s", b["origin"], message,
                            extra={"origin": b["origin"]})
        last = int(doc.get("last", after))
        if last != after:
            self._save(last)

    def _last(self) -> int:
        with statedb.connect(self.state_dir) as db:
            assert db is not None
            row = db.execute("SELECT doc FROM watch_offsets WHERE source = ?",
                             (_KEY,)).fetchone()
        return int(json.loads(row[0]).get("after", 0)) if row else 0

    def _save(self, last: int) -> None:
        with statedb.connect(self.state_dir) as db:
            assert db is not None
            db.execute("INSERT INTO watch_offsets (source, doc) VALUES (?, ?) ON CONFLICT "
                       "(source) DO UPDATE SET doc = excluded.doc",
                       (_KEY, json.dumps({"after": last, "group": self.group})))
