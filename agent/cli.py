"""The `opsagent` command: parse arguments, call one function per verb, print, exit.

Exit codes: 0 success and no drift left; 1 internal error; 2 invalid input; 3 drift found
(plan, apply --check); 4 a resource failed to converge. Heavy modules are imported inside
the verbs, so `--version` and `validate` start fast.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import socket
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agent.engine import Mode

from agent import __version__
from agent.errors import UsageError

EXIT_OK, EXIT_INTERNAL, EXIT_INPUT, EXIT_DRIFT, EXIT_FAILED = 0, 1, 2, 3, 4


def main(argv: Sequence[str] | None = None) -> int:
    if (sys.argv[1:] if argv is None else list(argv)) == ["fleet-exec"]:
        # A fleet run's request, often handed straight to the agent service: no parser.
        from agent.fleet.remote import main as fleet_exec

        return fleet_exec()
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "verb", None):
        parser.print_help()
        return EXIT_INPUT
    from agent.errors import InputError

    try:
        code: int = args.func(args)
        return code
    except InputError as e:
        for d in e.diagnostics:
            print(d.format(), file=sys.stderr)
        n = len(e.diagnostics)
        print(f"{n} error{'s' if n != 1 else ''}; nothing was changed", file=sys.stderr)
        return EXIT_INPUT
    except UsageError as e:
        print(f"opsagent: {e}", file=sys.stderr)
        return EXIT_INPUT
    except KeyboardInterrupt:
        print("opsagent: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return EXIT_OK


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="opsagent", description="Keep hosts at the state their playbooks declare.")
    p.add_argument("--version", action="version", version=f"opsagent {__version__}")
    sub = p.add_subparsers(dest="verb", metavar="COMMAND")

    v = sub.add_parser("validate", help="check playbooks, runbooks and inventories; change "
                       "nothing")
    v.add_argument("paths", nargs="*", metavar="PATH", help="playbook files or directories; "
                   "an inventory among them is told by its content (agent.inventory)")
    v.add_argument("-i", "--inventory", action="append", default=[], metavar="FILE",
                   help="an inventory file to check (opsagent YAML, Ansible YAML or INI)")
    v.add_argument("-e", "--extra-vars", action="append", default=[], metavar="K=V")
    v.add_argument("--json", action="store_true", help="print diagnostics as JSON")
    v.set_defaults(func=cmd_validate)

    for name, helptext in (("plan", "observe and show drift; change nothing"),
                           ("apply", "reconcile the host to the playbooks")):
        s = sub.add_parser(name, help=helptext)
        s.add_argument("playbooks", nargs="+", metavar="PLAYBOOK")
        s.add_argument("-e", "--extra-vars", action="append", default=[], metavar="K=V",
                       help="set a variable (k=v, a JSON object, or @file.yaml); repeatable")
        s.add_argument("--diff", action="store_true", help="show content differences")
        s.add_argument("--json", action="store_true", help="print the report document(s)")
        s.add_argument("-v", "--verbose", action="store_true", help="also list ok resources")
        s.add_argument("--host", default=None, help="host name in reports (default: hostname)")
        s.add_argument("--state-dir", default=None, help="agent state (default /var/lib/opsagent)")
        from agent.cli_fleet import add_fleet_options

        add_fleet_options(s)
        if name == "apply":
            s.add_argument("-C", "--check", action="store_true",
                           help="dry run: show what would change, change nothing")
            s.add_argument("--unattended", action="store_true",
                           help="no operator is watching (cron, a timer): starts and restarts "
                           "spend restart budgets, as the agent service's do")
        s.set_defaults(func=cmd_run, mode=name)

    r = sub.add_parser("run", help="the agent service: keep the host at its playbooks' state")
    r.add_argument("--config", default=None, metavar="FILE",
                   help="agent config (default /etc/opsagent/agent.yaml)")
    r.add_argument("--state-dir", default=None, help="overrides state_dir of the config")
    r.add_argument("--log-format", choices=("text", "json"), default=None)
    r.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    r.set_defaults(func=cmd_service)

    st = sub.add_parser("status", help="what the agent service enforces, results, budgets")
    st.add_argument("--config", default=None, metavar="FILE")
    st.add_argument("--state-dir", default=None)
    st.add_argument("--json", action="store_true")
    st.set_defaults(func=cmd_status)

    rs = sub.add_parser("reset", help="give resources their restart budget back and retry now")
    rs.add_argument("resources", nargs="+", metavar="KIND:NAME")
    rs.add_argument("--config", default=None, metavar="FILE")
    rs.add_argument("--state-dir", default=None)
    rs.set_defaults(func=cmd_reset)

    from agent.cli_alerting import add_parsers

    add_parsers(sub)
    __import__("agent.cli_blocks", fromlist=["add_parsers"]).add_parsers(sub)
    from agent.cli_audit import add_parsers as add_audit_parsers

    add_audit_parsers(sub)
    from agent.cli_watch import add_parsers as add_watch_parsers

    add_watch_parsers(sub)
    __import__("agent.cli_backup", fromlist=["add_parsers"]).add_parsers(sub)
    __import__("agent.cli_db", fromlist=["add_parsers"]).add_parsers(sub)
    __import__("agent.cli_fleet", fromlist=["add_parsers"]).add_parsers(sub)
    __import__("agent.cli_incident", fromlist=["add_parsers"]).add_parsers(sub)
    _server_parser(sub)
    return p


COLLECTOR_DB = "/var/lib/opsagent-collector/collector.db"


def _server_parser(sub: Any) -> None:
    dbopt = argparse.ArgumentParser(add_help=False)
    dbopt.add_argument("--db", default=os.environ.get("OPSAGENT_COLLECTOR_DB", COLLECTOR_DB),
                       metavar="URL", help="postgresql://… or a SQLite file path "
                       f"(default {COLLECTOR_DB})")
    s = sub.add_parser("server", parents=[dbopt],
                       help="the central collector (API, dashboard, /metrics)")
    s.add_argument("--listen", default="127.0.0.1:8080", metavar="HOST:PORT")
    s.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    s.add_argument("--stale-after", default="5m", metavar="DURATION",
                   help="a host silent this long is shown as stopped reporting (default 5m)")
    s.add_argument("--tls-cert", default=None, help="serve HTTPS with this certificate")
    s.add_argument("--tls-key", default=None)
    s.add_argument("--tls-client-ca", default=None,
                   help="require client certificates signed by this CA (mutual TLS)")
    s.set_defaults(func=_collector("cmd_server"))
    tsub = s.add_subparsers(dest="server_verb", metavar="token")
    t = tsub.add_parser("token", help="add, revoke or list host tokens")
    tv = t.add_subparsers(dest="token_verb", metavar="add|revoke|list", required=True)
    for verb, text in (("add", "make a token for HOST; printed once, stored hashed"),
                       ("revoke", "revoke every token of HOST")):
        c = tv.add_parser(verb, help=text, parents=[dbopt])
        c.add_argument("host", metavar="HOST")
        c.set_defaults(func=_collector("cmd_token"))
    c = tv.add_parser("list", help="hosts and their tokens' state", parents=[dbopt])
    c.set_defaults(func=_collector("cmd_token"))


def _collector(name: str) -> Any:
    """A command of agent.collector.server, imported only when it runs."""

    def run(args: argparse.Namespace) -> int:
        from agent.collector import server

        code: int = getattr(server, name)(args)
        return code

    return run


def parse_extra_vars(items: Sequence[str]) -> dict[str, Any]:
    """-e k=v [k2=v2], -e '{"k": 1}', -e @vars.yaml (as ansible-playbook takes them)."""
    out: dict[str, Any] = {}
    for item in items:
        text = item.strip()
        if text.startswith("@"):
            from agent.playbook.loader import load

            doc = load(text[1:])
            if not isinstance(doc.data, dict):
                raise UsageError(f"-e {item}: the file must hold a mapping of variables")
            out.update(doc.data)
        elif text.startswith("{"):
            try:
                data = json.loads(text)
            except json.JSONDecodeError as e:
                raise UsageError(f"-e {item!r}: invalid JSON: {e.msg}") from None
            if not isinstance(data, dict):
                raise UsageError(f"-e {item!r}: expected a JSON object")
            out.update(data)
        else:
            for pair in text.split():
                key, sep, value = pair.partition("=")
                if not sep or not key.isidentifier():
                    raise UsageError(f"-e {pair!r}: expected NAME=VALUE")
                out[key] = value
    return out


def _expand(paths: Sequence[str]) -> list[str]:
    from agent.playbook import expand_paths

    return expand_paths(list(paths))


def _load_all(paths: Sequence[str], extra: dict[str, Any], *, schema_check: bool = False
              ) -> list[Any]:
    """Load every playbook first; report the errors of all of them together."""
    from agent.errors import InputError
    from agent.playbook import load_playbook

    loaded, errors = [], []
    for path in _expand(paths):
        try:
            loaded.append(load_playbook(path, extra, schema_check=schema_check))
        except InputError as e:
            errors.extend(e.diagnostics)
    if errors:
        raise InputError(errors)
    return loaded


def cmd_validate(args: argparse.Namespace) -> int:
    from agent.errors import InputError
    from agent.inventory import is_inventory_file, load_inventory

    files = _expand(args.paths)
    inventories = [*args.inventory, *(f for f in files if is_inventory_file(f))]
    files = [f for f in files if f not in inventories]
    from agent.fleet.runbook import is_runbook_file, load_runbook

    runbooks = [f for f in files if is_runbook_file(f)]
    files = [f for f in files if f not in runbooks]
    if not files and not inventories and not runbooks:
        raise UsageError("no playbooks found under " + ", ".join(args.paths or ["(nothing)"]))
    errors = []
    for path in inventories:
        try:
            load_inventory(path, schema_check=True)
        except InputError as e:
            errors.extend(e.diagnostics)
    for path in runbooks:
        try:
            load_runbook(path)
        except InputError as e:
            errors.extend(e.diagnostics)
    try:
        if files:
            _load_all(files, parse_extra_vars(args.extra_vars), schema_check=True)
    except InputError as e:
        errors.extend(e.diagnostics)
    if errors:
        if args.json:
            print(json.dumps([dataclasses.asdict(d) for d in errors], indent=2))
            return EXIT_INPUT
        raise InputError(errors)
    if args.json:
        print("[]")
    else:
        counts = [f"{n} {one if n == 1 else many}" for n, one, many in (
            (len(files), "playbook", "playbooks"), (len(runbooks), "runbook", "runbooks"),
            (len(inventories), "inventory", "inventories"))
            if n]
        print(" and ".join(counts) + " valid")
    return EXIT_OK


def _state_dir(arg: str | None) -> str:
    if arg:
        return arg
    if env := os.environ.get("OPSAGENT_STATE_DIR"):
        return env
    if os.geteuid() == 0:
        return "/var/lib/opsagent"
    base = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    return os.path.join(base, "opsagent")


def cmd_run(args: argparse.Namespace) -> int:
    if args.inventory:
        from agent.cli_fleet import cmd_fleet_reconcile

        return cmd_fleet_reconcile(args)
    for flag in ("limit", "serial", "max_fail_percentage"):
        if getattr(args, flag) is not None:
            raise UsageError(f"--{flag.replace('_', '-')} needs -i INVENTORY")
    loaded = _load_all(args.playbooks, parse_extra_vars(args.extra_vars))
    mode: Mode = "check" if getattr(args, "check", False) else args.mode
    host = args.host or socket.gethostname()
    from agent.console import Console
    from agent.engine import report_of, run_playbook
    from agent.providers.base import ProviderContext

    console = Console(verbose=args.verbose, show_diff=args.diff)
    failed = drift = False
    for pb in loaded:
        ctx = ProviderContext(host=host, variables=pb.variables, base_dir=os.path.dirname(pb.path),
                              state_dir=_state_dir(args.state_dir),
                              automatic=getattr(args, "unattended", False))
        run = run_playbook(pb, mode, ctx)
        failed |= run.count("failed") > 0
        drift |= run.drift
        if args.json:
            print(report_of(run, __version__).model_dump_json())
        else:
            console.run(run)
    if failed:
        return EXIT_FAILED
    if drift and mode != "apply":
        return EXIT_DRIFT
    return EXIT_OK



def _agent_config(args: argparse.Namespace) -> Any:
    from agent.service.config import DEFAULT_CONFIG, AgentConfig, load_config

    overrides: dict[str, Any] = {}
    if getattr(args, "state_dir", None):
        overrides["state_dir"] = os.path.abspath(args.state_dir)
    if getattr(args, "log_format", None):
        overrides["log_format"] = args.log_format
    path = args.config or DEFAULT_CONFIG
    if args.config is None and not os.path.exists(path):
        if args.func is cmd_service:
            raise UsageError(f"no agent config at {path} (give --config FILE)")
        return AgentConfig.model_validate(
            {"state_dir": _state_dir(getattr(args, "state_dir", None))})
    return load_config(path, overrides)


def cmd_service(args: argparse.Namespace) -> int:
    cfg = _agent_config(args)
    from agent.service import logs

    logs.setup(cfg.log_format, "debug" if args.verbose else cfg.log_level)
    from agent.service.daemon import Agent
    from agent.service.lock import AlreadyRunning

    try:
        return Agent(cfg).run()
    except AlreadyRunning as e:
        print(f"opsagent: {e}", file=sys.stderr)
        return EXIT_INPUT


def cmd_status(args: argparse.Namespace) -> int:
    cfg = _agent_config(args)
    from agent.service.report_status import gather, render

    doc = gather(cfg.state_dir)
    if args.json:
        print(json.dumps(doc, indent=2, default=str))
    else:
        print(render(doc))
    return EXIT_OK if doc["running"] else EXIT_FAILED


def cmd_reset(args: argparse.Namespace) -> int:
    import signal

    cfg = _agent_config(args)
    from agent.providers._budget import BudgetStore
    from agent.service.lock import holder

    for ref in args.resources:
        kind, sep, name = ref.partition(":")
        if not sep or not kind or not name:
            raise UsageError(f"{ref!r} is not KIND:NAME (e.g. services:nginx)")
    store = BudgetStore(cfg.state_dir)
    for ref in args.resources:
        store.reset(ref)
        print(f"{ref}: restart budget reset")
    pid = holder(cfg.state_dir)
    if pid:
        os.kill(pid, signal.SIGUSR1)  # the agent reconciles at once, budgets full again
        print(f"asked the agent (pid {pid}) to reconcile now")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
