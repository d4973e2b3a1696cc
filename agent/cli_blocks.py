"""`opsagent blocks list|add|remove`: the IP blocks the agent enforces with nftables.

    opsagent blocks add 203.0.113.7 --for 1h --reason "credential stuffing"
    opsagent blocks add 198.51.100.0/24 --for 7d
    opsagent blocks list [--json]
    opsagent blocks remove 203.0.113.7

Blocks are recorded in the agent's state.db (``--state-dir``, or the ``state_dir`` of
``--config``) and enforced in ``table inet opsagent``; the kernel ends each one on time, and
the running agent sees the same rows. Nothing is blocked that the guard protects (loopback,
this host's addresses, the collector, the playbooks' ``allowlist``, the peers of SSH sessions
to this host, gateways, DNS servers): such a request exits 2 with the reason, as does a
target that is not a plain address or CIDR network. Exit 4: recorded but nft failed.

``OPSAGENT_NFT``: the argv that runs nft, as a JSON list of strings, for acting somewhere
else than the host's own network namespace, e.g.
``OPSAGENT_NFT='["ip","netns","exec","ns1","nft"]'``. When its last element is ``nft``, the
same argv with ``ip`` in its place lists the addresses there, and those are protected too.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import getpass
import json
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any

from agent.errors import UsageError

EXIT_OK, EXIT_INPUT, EXIT_FAILED = 0, 2, 4
NFT_ENV = "OPSAGENT_NFT"


def add_parsers(sub: Any) -> None:
    def state(p: argparse.ArgumentParser) -> None:
        p.add_argument("--config", default=None, metavar="FILE")
        p.add_argument("--state-dir", default=None)

    b = sub.add_parser("blocks", help="IP blocks enforced with nftables: list, add, remove")
    bv = b.add_subparsers(dest="blocks_verb", metavar="VERB", required=True)
    bl = bv.add_parser("list", help="active blocks and whether the kernel enforces them")
    bl.add_argument("--json", action="store_true")
    state(bl)
    bl.set_defaults(func=cmd_blocks_list)
    ba = bv.add_parser("add", help="block an address or CIDR network for a while")
    ba.add_argument("target", metavar="ADDR")
    ba.add_argument("--for", dest="duration", default="1h", metavar="DURATION",
                    help="how long, 1s to 365d (default 1h)")
    ba.add_argument("--reason", default=None, help="why (shown by `blocks list`)")
    state(ba)
    ba.set_defaults(func=cmd_blocks_add)
    br = bv.add_parser("remove", help="end a block now")
    br.add_argument("target", metavar="ADDR")
    state(br)
    br.set_defaults(func=cmd_blocks_remove)


def nft_argv(env: Mapping[str, str] | None = None) -> list[str]:
    """The nft argv from ``OPSAGENT_NFT`` (agent.firewall.host.nft_command)."""
    from agent.firewall.host import nft_command

    return nft_command(None, env)


def _who() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "?"


def _blocker(args: argparse.Namespace) -> Any:
    from agent.cli import _agent_config
    from agent.firewall.host import host_blocker

    guarded = args.blocks_verb == "add"  # list and remove block nothing: no need to look around
    blocker = host_blocker(_agent_config(args), guarded=guarded)
    for w in blocker.protected.warnings:
        print(f"opsagent: warning: {w}", file=sys.stderr)
    return blocker


def _left(seconds: float | None) -> str:
    if seconds is None:
        return "no timeout"
    s = max(0, int(seconds))
    return (f"{s}s" if s < 120 else f"{s // 60}m" if s < 7200 else f"{s // 3600}h"
            if s < 2 * 86400 else f"{s // 86400}d") + " left"


def _provider_errors(cmd: Callable[[argparse.Namespace], int]
                     ) -> Callable[[argparse.Namespace], int]:
    """nft or the state database failing: one line on stderr, exit 4, never a traceback."""

    @functools.wraps(cmd)
    def run(args: argparse.Namespace) -> int:
        from agent.errors import ProviderError

        try:
            return cmd(args)
        except ProviderError as e:
            print(f"opsagent: {e}", file=sys.stderr)
            return EXIT_FAILED

    return run


@_provider_errors
def cmd_blocks_list(args: argparse.Namespace) -> int:
    blocks = _blocker(args).list()
    now = time.time()
    if args.json:
        print(json.dumps([{**dataclasses.asdict(b), "remaining_s": b.remaining_s(now)}
                          for b in blocks], indent=2))
        return EXIT_OK
    if not blocks:
        print("no blocks")
        return EXIT_OK
    width = max(len(b.addr) for b in blocks)
    for b in blocks:
        left = _left(b.remaining_s(now))
        if b.until is None:
            print(f"{b.addr:<{width}}  {b.status:<9}  in the kernel, not recorded ({left})")
            continue
        until = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(b.until))
        who = f"{b.rule} ({b.origin})" if b.rule else ""
        why = f": {b.reason}" if b.reason else ""
        print(f"{b.addr:<{width}}  {b.status:<9}  until {until} ({left})  {who}{why}"
              .rstrip())
    if any(b.status == "missing" for b in blocks):
        print("missing: recorded, but the kernel does not hold it (after a reboot, until "
              "restored); `opsagent blocks add ADDR` applies it again")
    return EXIT_OK


@_provider_errors
def cmd_blocks_add(args: argparse.Namespace) -> int:
    from agent.playbook.types import parse_duration

    try:
        ttl = parse_duration(args.duration)
    except ValueError as e:
        raise UsageError(f"--for: {e}") from None
    who = _who()
    reason = args.reason if args.reason is not None else f"blocked by {who}"
    outcome = _blocker(args).block(args.target, ttl, rule="manual", reason=reason,
                                   origin=f"cli:{who}")
    if outcome.status == "refused":
        print(f"opsagent: {outcome.message}; nothing was changed", file=sys.stderr)
        return EXIT_INPUT
    if outcome.status == "failed":
        print(f"opsagent: {outcome.message}", file=sys.stderr)
        return EXIT_FAILED
    print(outcome.message)
    return EXIT_OK


@_provider_errors
def cmd_blocks_remove(args: argparse.Namespace) -> int:
    blocker = _blocker(args)
    try:
        result = blocker.unblock(args.target)
    except ValueError as e:
        raise UsageError(str(e)) from None
    inside = (f"; it is still inside the block of {', '.join(result.covered_by)}"
              if result.covered_by else "")
    if not result.removed:
        print(f"opsagent: no block on {result.addr} (see `opsagent blocks list`){inside}",
              file=sys.stderr)
        return EXIT_INPUT
    print(f"{result.addr} unblocked{inside}")
    return EXIT_OK
