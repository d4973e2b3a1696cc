"""``opsagent fleet-exec``: what a fleet run's controller runs on each host over SSH.

One JSON request on stdin, one JSON answer on stdout; the command line holds nothing but the
verb, so no data ever passes through a shell. Requests:

    {"op": "remediate", "host": NAME, "incident": ID, "who": USER@HOST, "check": bool,
     "on_failure": "stop", "notifiers": {...}, "steps": [bound step, ...],
     "indices": [i, ...], "undo_log": [...], "state_dir": DIR | null}
        -> {"ok": true, "run": HostRun.to_json()}

    {"op": "plan" | "apply" | "check", "host": NAME, "playbooks": [{"path": controller path,
     "name": relative name, "files": {relative name: base64}}], "extra_vars": {...},
     "state_dir": DIR | null}
        -> {"ok": true, "exit": code, "reports": [run report, ...]}

The run reports of plan and apply also go into this host's outbox, so its agent delivers them
to the collector with its own token. A request this side cannot read is answered
{"ok": false, "error": "..."} with exit status 2.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import shutil
import sys
import tempfile
from typing import Any

from agent import __version__

MAX_REQUEST = 64 * 2**20


DEFAULT_CONFIG = "/etc/opsagent/agent.yaml"  # agent.service.config's, not imported for it


def _default_state_dir() -> str:
    return "/var/lib/opsagent" if os.geteuid() == 0 else os.path.expanduser(
        "~/.local/state/opsagent")


def _config(state_dir: str | None) -> Any:
    from agent.service.config import AgentConfig, load_config

    overrides = {"state_dir": state_dir} if state_dir else {}
    if os.path.exists(DEFAULT_CONFIG):
        return load_config(DEFAULT_CONFIG, overrides)
    return AgentConfig.model_validate({"state_dir": state_dir or _default_state_dir()})


def main() -> int:
    raw = sys.stdin.buffer.read(MAX_REQUEST + 1)
    try:
        if len(raw) > MAX_REQUEST:
            raise ValueError(f"the request is over {MAX_REQUEST >> 20} MiB")
        req = json.loads(raw)
        if not isinstance(req, dict) or req.get("op") not in ("remediate", "plan", "apply",
                                                              "check"):
            raise ValueError("expected a JSON object with op: remediate, plan, apply or check")
        answer = remediate(req) if req["op"] == "remediate" else reconcile(req)
    except (ValueError, KeyError, TypeError, binascii.Error) as e:
        _write({"ok": False, "error": f"{type(e).__name__}: {e}", "version": __version__})
        return 2
    _write({**answer, "ok": True, "version": __version__})
    return 0


def _write(doc: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(doc, default=str))
    sys.stdout.flush()


def remediate(req: dict[str, Any]) -> dict[str, Any]:
    from agent.fleet.execute import run_steps, steps_of
    from agent.fleet.steps.base import StepContext

    # Without an agent config the defaults apply; the steps that need it (block_ip) build
    # them, so the common case does not pay for the config's validators.
    cfg = _config(req.get("state_dir")) if os.path.exists(DEFAULT_CONFIG) else None
    state_dir = cfg.state_dir if cfg else req.get("state_dir") or _default_state_dir()
    steps = steps_of(req["steps"])
    notifiers = _notifiers(req.get("notifiers"))
    ctx = StepContext(host=str(req["host"]), state_dir=state_dir, check=bool(req["check"]),
                      incident=str(req.get("incident") or ""), who=str(req.get("who") or ""),
                      config=cfg, notifiers=notifiers)
    indices = [int(i) for i in req["indices"] if 0 <= int(i) < len(steps)]
    run = run_steps(steps, indices, ctx, req.get("on_failure", "stop"),
                    list(req.get("undo_log") or []))
    return {"run": run.to_json()}


def _notifiers(data: Any) -> dict[str, Any]:
    if not data:
        return {}
    from pydantic import TypeAdapter

    from agent.playbook.models.notifiers import Notifier

    return TypeAdapter(dict[str, Notifier]).validate_python(data)


def reconcile(req: dict[str, Any]) -> dict[str, Any]:
    """plan / apply / check of the playbooks the controller sent, on this host."""
    from agent.engine import report_of, run_playbook
    from agent.errors import InputError
    from agent.playbook import load_playbook
    from agent.providers.base import ProviderContext
    from agent.report.document import PlaybookRef

    cfg = _config(req.get("state_dir"))
    mode = req["op"]
    work = tempfile.mkdtemp(prefix="opsagent-fleet-")
    reports: list[dict[str, Any]] = []
    code = 0
    try:
        loaded = []
        for n, pb in enumerate(req["playbooks"]):
            base = os.path.join(work, str(n))
            for rel, data in pb["files"].items():
                dest = os.path.normpath(os.path.join(base, rel))
                if not dest.startswith(base + os.sep):
                    raise ValueError(f"file name {rel!r} leaves the playbook's directory")
                os.makedirs(os.path.dirname(dest), mode=0o700, exist_ok=True)
                with open(dest, "wb") as fh:
                    fh.write(base64.b64decode(data, validate=True))
            try:
                loaded.append((pb, load_playbook(os.path.join(base, pb["name"]),
                                                 req.get("extra_vars") or {},
                                                 schema_check=False)))
            except InputError as e:
                return {"exit": 2, "reports": [], "errors": [d.format().replace(base + "/", "")
                                                             for d in e.diagnostics]}
        docs = []
        for pb, lp in loaded:
            ctx = ProviderContext(host=cfg.host, variables=lp.variables,
                                  base_dir=os.path.dirname(lp.path), state_dir=cfg.state_dir)
            run = run_playbook(lp, mode, ctx)
            doc = report_of(run, __version__)
            doc = doc.model_copy(update={"playbook": PlaybookRef(
                name=doc.playbook.name, path=str(pb["path"]), revision=doc.playbook.revision)})
            docs.append(doc)
            if run.count("failed"):
                code = 4
            elif run.drift and mode != "apply" and code == 0:
                code = 3
        _queue(cfg, docs)
        reports = [d.model_dump(mode="json") for d in docs]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {"exit": code, "reports": reports}


def _queue(cfg: Any, docs: list[Any]) -> None:
    """Into this host's outbox, for its agent to deliver; never fails the run."""
    import logging

    from agent.report.outbox import Outbox

    try:
        Outbox(cfg.state_dir, cfg.host, __version__).put_many(docs)
    except Exception as e:  # a full disk, a locked database: the controller still has them
        logging.getLogger("opsagent").warning("reports not queued: %s", e)
