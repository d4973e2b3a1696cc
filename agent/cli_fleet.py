"""``opsagent remediate`` and the fleet form of ``plan`` and ``apply`` (``-i INVENTORY``).

    opsagent remediate RUNBOOK -e ip=203.0.113.7 --check          # this host, dry run
    opsagent remediate RUNBOOK -i inventory.yaml --limit web -e ip=203.0.113.7 --yes
    opsagent apply site.yaml -i inventory.yaml --limit 'web:!web03' --forks 20 --serial 1,50%

Everything the run needs is checked before anything runs anywhere: the runbook, the
parameters (typed), the inventory and pattern, and every step bound to every host. Exit codes:
0 done; 2 invalid input (nothing ran); 3 drift found (plan, apply --check); 4 a step or a
resource failed on some host, or a host was unreachable, or the run stopped early.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import socket
import sys
import time
from typing import Any

from agent.errors import UsageError

EXIT_OK, EXIT_INPUT, EXIT_DRIFT, EXIT_FAILED = 0, 2, 3, 4
DEFAULT_FORKS = 10


def add_fleet_options(p: argparse.ArgumentParser, *, required: bool = False) -> None:
    """-i/--limit/--forks and the SSH options, shared by plan, apply and remediate."""
    p.add_argument("-i", "--inventory", default=None, metavar="FILE", required=required,
                   help="run over SSH on this inventory's hosts (opsagent YAML, Ansible "
                   "YAML or INI) instead of this host")
    p.add_argument("-l", "--limit", default=None, metavar="PATTERN",
                   help="only these hosts: group, host, glob, !exclude, &intersection")
    p.add_argument("-f", "--forks", type=int, default=DEFAULT_FORKS, metavar="N",
                   help=f"hosts worked on at once (default {DEFAULT_FORKS})")
    p.add_argument("--serial", default=None, metavar="WAVES",
                   help="rolling waves, e.g. 2 or 1,10%%,50%% (the last repeats); "
                   "overrides the runbook's serial")
    p.add_argument("--max-fail-percentage", type=float, default=None, metavar="PCT",
                   help="stop before the next wave when more of a wave's hosts failed")
    p.add_argument("--timeout", default="10m", metavar="DURATION",
                   help="per host, for each part of the run (default 10m)")
    p.add_argument("-u", "--user", default=None, help="SSH login user when the inventory "
                   "sets none (default: yours)")
    p.add_argument("--private-key", action="append", default=[], metavar="FILE",
                   help="an SSH key to offer (besides the inventory's, ~/.ssh/id_* and "
                   "ssh-agent)")
    p.add_argument("--known-hosts", action="append", default=None, metavar="FILE",
                   help="known_hosts file (default ~/.ssh/known_hosts and "
                   "/etc/ssh/ssh_known_hosts); an unknown or changed host key is refused")
    p.add_argument("--accept-new-host-keys", action="store_true",
                   help="trust and record the key of a host never seen before (a changed "
                   "key is still refused)")
    p.add_argument("--connect-timeout", default="10s", metavar="DURATION")


def add_parsers(sub: Any) -> None:
    r = sub.add_parser("remediate", help="run an incident runbook here or on a fleet")
    r.add_argument("runbook", metavar="RUNBOOK")
    r.add_argument("-e", "--extra-vars", action="append", default=[], metavar="K=V",
                   help="a parameter (k=v, a JSON object, or @file.yaml); repeatable")
    r.add_argument("-C", "--check", action="store_true",
                   help="dry run: what each step would do on each host; changes nothing")
    r.add_argument("-y", "--yes", action="store_true",
                   help="answer yes at the runbook's confirm points")
    r.add_argument("--json", action="store_true", help="print the incident record")
    r.add_argument("--config", default=None, metavar="FILE", help="this host's agent config "
                   "(where the incident is kept and sent)")
    r.add_argument("--state-dir", default=None)
    add_fleet_options(r)
    r.set_defaults(func=cmd_remediate)
    x = sub.add_parser("fleet-exec")  # what the controller runs on each host; not for people
    x.set_defaults(func=lambda args: __import__("agent.fleet.remote",
                                                fromlist=["main"]).main())


# -- shared -----------------------------------------------------------------------------------

def _duration(value: str, flag: str) -> float:
    from agent.playbook.types import parse_duration

    try:
        return parse_duration(value)
    except ValueError as e:
        raise UsageError(f"{flag}: {e}") from None


def _serial(text: str | None) -> Any:
    if text is None:
        return None
    items: list[int | str] = []
    for part in text.split(","):
        part = part.strip()
        items.append(part if part.endswith("%") else int(part) if part.isdigit() else part)
    from agent.fleet.models import check_serial

    try:
        return check_serial(items)
    except ValueError as e:
        raise UsageError(f"--serial: {e}") from None


def _who() -> str:
    try:
        user = os.environ.get("SUDO_USER") or getpass.getuser()
    except (KeyError, OSError):
        user = "?"
    return f"{user}@{socket.gethostname()}"


def _targets(args: argparse.Namespace, pattern: str) -> list[Any]:
    """(name, vars, inventory host) of each targeted host; this host without -i."""
    from agent.fleet.orchestrate import HostState

    if not args.inventory:
        if args.limit:
            raise UsageError("--limit needs -i INVENTORY")
        return [HostState(socket.gethostname(), {})]
    from agent.inventory import load_inventory

    inv = load_inventory(args.inventory)
    return [HostState(h.name, dict(h.vars), h) for h in inv.hosts_for(pattern, limit=args.limit)]


def _connector(args: argparse.Namespace) -> Any:
    from agent.fleet.orchestrate import LocalTransport, ssh_connect

    if not args.inventory:
        return lambda h: LocalTransport()
    from agent.fleet.ssh import SSHOptions

    return ssh_connect(SSHOptions(
        known_hosts=args.known_hosts, accept_new=args.accept_new_host_keys,
        connect_timeout=_duration(args.connect_timeout, "--connect-timeout"),
        identity_files=list(args.private_key), user=args.user))


def _progress(verbose: bool) -> Any:
    def show(h: Any, what: str) -> None:
        if verbose and what != "connecting":
            print(f"  {h.name}: {what}{f' ({h.message})' if h.message else ''}",
                  file=sys.stderr, flush=True)

    return show


# -- remediate --------------------------------------------------------------------------------

def cmd_remediate(args: argparse.Namespace) -> int:
    from agent.cli import _agent_config, parse_extra_vars
    from agent.fleet import remediation
    from agent.fleet.incidents import IncidentStore, record_incident
    from agent.fleet.orchestrate import FleetRun, run_waves
    from agent.fleet.runbook import check_params, load_runbook

    rb = load_runbook(args.runbook)
    params = check_params(rb, parse_extra_vars(args.extra_vars))
    timeout = _duration(args.timeout, "--timeout")
    serial = _serial(args.serial) if args.serial else rb.model.serial
    max_fail = (args.max_fail_percentage if args.max_fail_percentage is not None
                else rb.model.max_fail_percentage)
    hosts = _targets(args, rb.model.hosts)
    bound = remediation.bind_all(rb, params, hosts)  # InputError before anything runs
    cfg = _agent_config(args)
    run = FleetRun(hosts)
    doc = remediation.open_incident(
        rb, params, bound, run, by=_who(), check=bool(args.check),
        inventory=os.path.abspath(args.inventory) if args.inventory else None,
        limit=args.limit)
    IncidentStore(cfg.state_dir).save(doc)  # a run that dies still leaves its record
    print(f"incident {doc['id']}: {rb.name}{' (dry run)' if args.check else ''} on "
          f"{len(hosts)} host{'s' if len(hosts) != 1 else ''}", file=sys.stderr)
    interrupted = False
    try:
        run_waves(run, serial=serial, max_fail_percentage=max_fail, forks=args.forks,
                  timeout=timeout, connect=_connector(args),
                  parts=remediation.parts(rb, doc, bound), ask=_asker(args, run),
                  progress=_progress(True))
    except KeyboardInterrupt:
        interrupted = True
        run.aborted = "interrupted by the operator"
        run.event(run.aborted)
    remediation.close_incident(doc, run)
    note = record_incident(doc, cfg.state_dir, cfg)
    if args.json:
        print(json.dumps(doc, indent=2, default=str))
    else:
        print(remediation.render_recap(doc))
        print(f"incident {doc['id']}: {doc['status']}; {note}; "
              f"`opsagent incident report {doc['id']}` writes the post-incident report")
    if interrupted:
        return 130
    return EXIT_FAILED if doc["status"] in ("failed", "aborted") else EXIT_OK


def _asker(args: argparse.Namespace, run: Any) -> Any:
    def ask(prompt: str) -> bool:
        if args.yes:
            return True
        if args.check:
            run.event(f"would ask: {prompt}")
            return True
        if not sys.stdin.isatty():
            print(f"opsagent: confirm point {prompt!r} needs a terminal or --yes; stopping "
                  "here", file=sys.stderr)
            return False
        try:
            answer = input(f"{prompt} [y/N] ")
        except EOFError:
            return False
        return answer.strip().lower() in ("y", "yes")

    return ask


# -- plan / apply over SSH --------------------------------------------------------------------

MAX_SHIPPED = 32 * 2**20


def _shipped(pb: Any) -> dict[str, str]:
    """The playbook and the files it names relative to itself (template:, source:), base64."""
    import base64

    base = os.path.dirname(pb.path)
    names = [os.path.basename(pb.path)]
    for f in pb.model.files:
        for ref in (f.template, f.source):
            if ref and not os.path.isabs(ref):
                names.append(os.path.normpath(ref))
    out: dict[str, str] = {}
    total = 0
    for name in dict.fromkeys(names):
        if name.startswith(".."):
            raise UsageError(f"{pb.path}: {name} is outside the playbook's directory; a fleet "
                             "run sends the playbook's directory only")
        try:
            with open(os.path.join(base, name), "rb") as fh:
                data = fh.read(MAX_SHIPPED + 1)
        except OSError as e:
            raise UsageError(f"{pb.path}: cannot read {name}: {e.strerror}") from None
        total += len(data)
        if total > MAX_SHIPPED:
            raise UsageError(f"{pb.path}: its files are over {MAX_SHIPPED >> 20} MiB")
        out[name] = base64.b64encode(data).decode()
    return out


def cmd_fleet_reconcile(args: argparse.Namespace) -> int:
    """plan / apply [--check] of local playbooks on the inventory's hosts."""
    from agent.cli import _load_all, parse_extra_vars
    from agent.errors import InputError
    from agent.fleet.orchestrate import FleetRun, run_waves, where
    from agent.inventory import load_inventory
    from agent.playbook import load_playbook

    extra = parse_extra_vars(args.extra_vars)
    mode = "check" if getattr(args, "check", False) else args.mode
    inv = load_inventory(args.inventory)
    loaded = _load_all(args.playbooks, extra)
    errors = []
    wanted: dict[str, list[int]] = {}
    hosts = []
    for n, pb in enumerate(loaded):
        for h in inv.hosts_for(pb.model.hosts or "all", limit=args.limit):
            if h.name not in wanted:
                wanted[h.name] = []
                from agent.fleet.orchestrate import HostState

                hosts.append(HostState(h.name, dict(h.vars), h))
            wanted[h.name].append(n)
    for hs in hosts:  # every template with every host's variables, before anything runs
        for n in wanted[hs.name]:
            try:
                load_playbook(loaded[n].path, _host_vars(hs, extra), schema_check=False)
            except InputError as e:
                errors.extend(e.diagnostics)
    if errors:
        raise InputError(errors)
    shipped = [{"path": pb.path, "name": os.path.basename(pb.path), "files": _shipped(pb)}
               for pb in loaded]

    def request(h: Any) -> dict[str, Any]:
        return {"op": mode, "host": h.name, "extra_vars": _host_vars(h, extra),
                "playbooks": [shipped[n] for n in wanted[h.name]], **where(h)}

    def absorb(h: Any, answer: dict[str, Any]) -> None:
        h.answer = answer
        if answer.get("errors"):
            h.status, h.message = "failed", answer["errors"][0]
            return
        failed = sum(r["summary"]["failed"] for r in answer["reports"])
        changed = sum(r["summary"]["changed"] for r in answer["reports"])
        h.status = ("failed" if failed else "would-change" if changed and mode != "apply"
                    else "changed" if changed else "ok")

    run = FleetRun(hosts)
    t0 = time.monotonic()
    run_waves(run, serial=_serial(args.serial), max_fail_percentage=args.max_fail_percentage,
              forks=args.forks, timeout=_duration(args.timeout, "--timeout"),
              connect=_connector(args), parts=[(None, request, absorb)],
              ask=lambda prompt: True, progress=_progress(args.verbose))
    if args.json:
        print(json.dumps({"hosts": [{"name": h.name, "status": h.status, "message": h.message,
                                     "served_by": h.served_by or None,
                                     "reports": h.answer.get("reports", [])} for h in hosts],
                          "timeline": run.timeline}, indent=2, default=str))
    else:
        print(_reconcile_recap(hosts, args.verbose))
        from agent.fleet.orchestrate import elapsed

        print(f"{len(hosts)} host{'s' if len(hosts) != 1 else ''} in {elapsed(t0)}"
              f"{f'; {run.aborted}' if run.aborted else ''}")
    if run.aborted or any(h.failed for h in hosts):
        return EXIT_FAILED
    if any(h.status == "would-change" for h in hosts):
        return EXIT_DRIFT
    return EXIT_OK


def _host_vars(h: Any, extra: dict[str, Any]) -> dict[str, Any]:
    """What a playbook's templates see on one host: its inventory variables and its
    inventory name, under the command line's -e (Ansible's order)."""
    return {**h.vars, "inventory_hostname": h.name, **extra}


def _reconcile_recap(hosts: list[Any], verbose: bool) -> str:
    lines = []
    width = max([len(h.name) for h in hosts] + [4])
    for h in hosts:
        for r in h.answer.get("reports", []):
            for res in r["results"]:
                if verbose or res["status"] != "ok":
                    lines.append(f"{h.name:<{width}}  {res['kind']}:{res['name']}  "
                                 f"{res['status']}  {res['message']}")
    lines += ["", "RECAP"]
    for h in hosts:
        tally: dict[str, int] = {}
        for r in h.answer.get("reports", []):
            for k, v in r["summary"].items():
                tally[k] = tally.get(k, 0) + v
        counts = "  ".join(f"{k}={v}" for k, v in tally.items())
        why = f"  {h.message}" if h.message else ""
        lines.append(f"{h.name:<{width}}  {h.status:<12} {counts}{why}".rstrip())
    return "\n".join(lines)
