"""Which images each container ran before its current one, kept in the state database.

Docker forgets a container's earlier images the moment it is re-created, yet "roll back to
what it ran before" needs exactly that. So whenever the agent replaces a container's image
(the containers provider when the image drifted, a runbook's rollback step), it records the
image going out: its reference as written (``rezapp-api:1.4.2``) and its id, because a tag
can move (``:latest`` rebuilt) while the id still names the image that ran. The newest
``KEEP`` entries per container are kept.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from dataclasses import dataclass
from typing import Any

from agent import statedb
from agent.errors import ProviderError

KEEP = 20
_TABLE = "container_images"
_SCHEMA = f"""CREATE TABLE IF NOT EXISTS {_TABLE} (
    container TEXT NOT NULL, ref TEXT NOT NULL, image_id TEXT NOT NULL, at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS {_TABLE}_container ON {_TABLE} (container, at)"""

log = logging.getLogger("opsagent.containers")


@dataclass(frozen=True)
class PastImage:
    ref: str       # Config.Image of the container then: a name[:tag] or an image id
    image_id: str  # sha256:... of the image it ran
    at: float      # when it stopped running it (epoch seconds)


def record_replaced(state_dir: str, container: str, attrs: dict[str, Any]) -> None:
    """Remember the image of a container (its inspect) that is being replaced. Never raises:
    the history is a help for later rollbacks, not a reason to fail the change."""
    ref = str((attrs.get("Config") or {}).get("Image") or attrs.get("Image") or "")
    image_id = str(attrs.get("Image") or "")
    if not image_id:
        return
    try:
        with statedb.connect(state_dir) as conn:
            assert conn is not None
            conn.executescript(_SCHEMA)
            with statedb.transaction(conn) as db:
                db.execute(f"INSERT INTO {_TABLE} VALUES (?, ?, ?, ?)",
                           (container, ref, image_id, time.time()))
                db.execute(f"DELETE FROM {_TABLE} WHERE container = ? AND rowid NOT IN ("
                           f"SELECT rowid FROM {_TABLE} WHERE container = ? "
                           "ORDER BY at DESC LIMIT ?)", (container, container, KEEP))
    except (ProviderError, sqlite3.Error) as e:
        log.warning("container %s: could not record its image %s in the history: %s",
                    container, ref, e)


def read_history(state_dir: str, container: str) -> list[PastImage]:
    """The images the container ran before, newest first; [] when none was recorded."""
    with statedb.connect(state_dir, create=False) as conn:
        if conn is None or conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' "
                                        "AND name = ?", (_TABLE,)).fetchone() is None:
            return []
        rows = conn.execute(f"SELECT ref, image_id, at FROM {_TABLE} WHERE container = ? "
                            "ORDER BY at DESC, rowid DESC", (container,)).fetchall()
    return [PastImage(str(r), str(i), float(a)) for r, i, a in rows]
