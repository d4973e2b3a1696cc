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

Every answer says what ran it (``served_by``): when the host's agent service listens on
``STATE_DIR/fleet.sock`` (agent.fleet.service_socket), the request is handed to it and it runs
the steps, with everything imported already; otherwise, or when the request says
``"agent_service": false`` (the host variable ``opsagent_agent_service: false``), this process
runs them. Steps the service runs are inside its unit's sandbox (packaging/opsagent.service),
as its playbooks' actions are. The service leaves to this process (``declined``) what would
wait on itself: apply, and steps that name its own unit.

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
DEFAULT_STATE_DIR = "/var/lib/opsagent"  # AgentConfig.state_dir's default, likewise


def _default_state_dir() -> str:
    return DEFAULT_STATE_DIR if os.geteuid() == 0 else os.path.expanduser(
        "~/.local/state/opsagent")


def _config(state_dir: str | None) -> Any:
    from agent.service.config import AgentConfig, load_config

    overrides = {"state_dir": state_dir} if state_dir else {}
    if os.path.exists(DEFAULT_CONFIG):
        return load_config(DEFAULT_CONFIG, overrides)
    return AgentConfig.model_validate({"state_dir": state_dir or _default_state_dir()})


def main() -> int:
    """Read the request; the host's agent service answers it when one listens
    (agent.fleet.service_socket), else this process does."""
    raw = sys.stdin.buffer.read(MAX_REQUEST + 1)
    try:
        req = parse(raw)
    except ValueError as e:
        _write(_refusal(e))
        return 2
    if req.get("agent_service", True) is not False:
        answer = _ask_service(raw, req)
        if answer is not None:
            sys.stdout.buffer.write(answer)
            sys.stdout.flush()
            try:
                ok = json.loads(answer).get("ok") is True
            except (ValueError, AttributeError):
                ok = False
            return 0 if ok else 2
    doc, code = handle(req, served_by="process")
    _write(doc)
    return code


def parse(raw: bytes) -> dict[str, Any]:
    """The request, or ValueError saying what is wrong with it."""
    if len(raw) > MAX_REQUEST:
        raise ValueError(f"the request is over {MAX_REQUEST >> 20} MiB")
    req = json.loads(raw)
    if not isinstance(req, dict) or req.get("op") not in ("remediate", "plan", "apply",
                                                          "check"):
        raise ValueError("expected a JSON object with op: remediate, plan, apply or check")
    return req


def handle(req: dict[str, Any], cfg: Any = None, *, served_by: str
           ) -> tuple[dict[str, Any], int]:
    """The answer to a parsed request and fleet-exec's exit status; ``cfg`` is the agent
    service's config when it handles the request, else read here."""
    try:
        answer = remediate(req, cfg) if req["op"] == "remediate" else reconcile(req, cfg)
    except (ValueError, KeyError, TypeError, binascii.Error) as e:
        return _refusal(e), 2
    return {**answer, "ok": True, "version": __version__, "served_by": served_by}, 0


def serve(raw: bytes, cfg: Any, peer: int) -> bytes:
    """The agent service's side of the fleet socket: one raw request from process ``peer``,
    one raw answer; both ends logged."""
    import logging
    import time

    log = logging.getLogger("opsagent.fleet")
    try:
        req = parse(raw)
    except ValueError as e:
        log.warning("fleet request from pid %d refused: %s", peer, e)
        return json.dumps(_refusal(e)).encode()
    what = (f"{req['op']}{' --check' if req.get('check') else ''}"
            + (f" for incident {req.get('incident')} by {req.get('who')}"
               if req["op"] == "remediate" else ""))
    why = declined(req, own_unit())
    if why:
        log.info("fleet request from pid %d: %s left to a process of its own: %s", peer, what,
                 why)
        return DECLINED + json.dumps(why).encode() + b"}"
    log.info("fleet request from pid %d: %s", peer, what)
    t0 = time.monotonic()
    doc, _ = handle(req, cfg, served_by=f"agent service (pid {os.getpid()})")
    log.info("fleet request from pid %d: %s answered in %.2fs%s", peer, what,
             time.monotonic() - t0, "" if doc["ok"] else f": {doc['error']}")
    return json.dumps(doc, default=str).encode()


DECLINED = b'{"declined": '  # the service's answer that it ran nothing: fleet-exec runs it


def declined(req: dict[str, Any], unit: str | None) -> str | None:
    """Why the agent service leaves a request to a process of its own, or None. It would
    wait on itself: apply (a playbook may upgrade or restart the agent) and a remediate step
    naming the service's own unit (``restart: {service: opsagent}``, ``run: [sh, -c,
    "systemctl restart opsagent"]``): restarting the service ends the request it is
    running."""
    if req["op"] == "apply":
        return "apply may restart the agent itself"
    if req["op"] != "remediate" or req.get("check") or not unit:
        return None  # plan, check and dry runs change nothing
    import re

    # as a word anywhere: `sh -c "systemctl restart opsagent"` too; a false match only
    # costs the request its own process
    named = re.compile(rf"(?<![\w.@-]){re.escape(unit.removesuffix('.service'))}"
                       r"(\.service)?(?![\w.@-])")

    def mentions(value: Any) -> bool:
        if isinstance(value, str):
            return named.search(value) is not None
        if isinstance(value, dict):
            return any(mentions(v) for v in value.values())
        if isinstance(value, list):
            return any(mentions(v) for v in value)
        return False

    if mentions(req.get("steps")):
        return f"a step names the agent's own unit {unit}"
    return None


def own_unit() -> str | None:
    """The systemd service this process runs in (from its cgroup), None outside one."""
    try:
        with open("/proc/self/cgroup", encoding="utf-8") as fh:
            text = fh.read()
    except OSError:
        return None
    for line in text.splitlines():
        for part in reversed(line.rsplit(":", 1)[-1].split("/")):
            if part.endswith(".service"):
                return part
    return None


def _refusal(e: Exception) -> dict[str, Any]:
    return {"ok": False, "error": f"{type(e).__name__}: {e}", "version": __version__}


def _ask_service(raw: bytes, req: dict[str, Any]) -> bytes | None:
    """The agent service's answer, None when no service took the request."""
    from agent.fleet.service_socket import ask, socket_path

    answer = ask(socket_path(_state_dir(req)), raw)
    if answer is None or answer.startswith(DECLINED):
        return None
    if answer == b"":
        return json.dumps(_refusal(RuntimeError(
            "the agent service ended the connection without answering; the steps may have "
            "run in part: see its log"))).encode()
    return answer


def _state_dir(req: dict[str, Any]) -> str:
    """The state directory whose agent would handle ``req``: the request's, else the agent
    config's (read as load_config resolves it, without validating the rest), else the
    default."""
    if req.get("state_dir"):
        return str(req["state_dir"])
    if os.path.exists(DEFAULT_CONFIG):
        import yaml

        try:
            with open(DEFAULT_CONFIG, encoding="utf-8") as fh:
                doc = yaml.load(fh, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
        except (OSError, yaml.YAMLError):
            doc = None
        configured = doc.get("state_dir") if isinstance(doc, dict) else None
        if isinstance(configured, str) and configured:
            return os.path.join(os.path.dirname(os.path.abspath(DEFAULT_CONFIG)), configured)
        return DEFAULT_STATE_DIR  # as the service, which reads this config, has it
    return _default_state_dir()


def _write(doc: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(doc, default=str))
    sys.stdout.flush()


def remediate(req: dict[str, Any], cfg: Any = None) -> dict[str, Any]:
    from agent.fleet.execute import run_steps, steps_of
    from agent.fleet.steps.base import StepContext

    # Without an agent config the defaults apply; the steps that need it (block_ip) build
    # them, so the common case does not pay for the config's validators.
    if cfg is None and os.path.exists(DEFAULT_CONFIG):
        cfg = _config(req.get("state_dir"))
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


def reconcile(req: dict[str, Any], cfg: Any = None) -> dict[str, Any]:
    """plan / apply / check of the playbooks the controller sent, on this host."""
    from agent.engine import report_of, run_playbook
    from agent.errors import InputError
    from agent.playbook import load_playbook
    from agent.providers.base import ProviderContext
    from agent.report.document import PlaybookRef

    cfg = cfg or _config(req.get("state_dir"))
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
