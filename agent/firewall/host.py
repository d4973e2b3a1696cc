"""The firewall as the agent service and ``opsagent blocks`` set it up from the config: the
nft command (``firewall.nft`` in agent.yaml, else ``$OPSAGENT_NFT``, else ``nft``) and the
guard of what this host must never block."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

from agent.errors import UsageError
from agent.firewall.guard import Protected

NFT_ENV = "OPSAGENT_NFT"


def nft_command(configured: Sequence[str] | None = None,
                env: Mapping[str, str] | None = None) -> list[str]:
    """The nft argv: the config's, else ``OPSAGENT_NFT`` parsed strictly, else ``["nft"]``."""
    if configured:
        return list(configured)
    raw = (os.environ if env is None else env).get(NFT_ENV)
    if raw is None:
        return ["nft"]
    hint = f'{NFT_ENV} must be a JSON list of strings, e.g. ["ip","netns","exec","ns1","nft"]'
    try:
        argv = json.loads(raw)
    except ValueError:
        raise UsageError(f"{hint}; it is not JSON") from None
    if (not isinstance(argv, list) or not 1 <= len(argv) <= 32
            or not all(isinstance(a, str) and a and "\0" not in a for a in argv)):
        raise UsageError(f"{hint}, of 1 to 32 non-empty strings")
    return argv


def host_guard(cfg: Any, nft: Sequence[str], allowlist: Sequence[str] = ()) -> Protected:
    """What this host must never block. When nft acts through a wrapper (``ip netns exec NS
    nft``), the addresses where it acts are listed with the same wrapper around ``ip``."""
    ip_argv = [*nft[:-1], "ip"] if os.path.basename(nft[-1]) == "nft" and len(nft) > 1 \
        else None
    return Protected.for_host(collector_url=cfg.collector.url if cfg.collector else None,
                              management=cfg.firewall.management, allowlist=allowlist,
                              addresses_argv=ip_argv)


def playbook_allowlists(cfg: Any) -> list[str]:
    """The allowlists of the playbooks the running agent enforces (status.json) and of those
    the config names. A playbook that does not load is a UsageError: its allowlist is
    unknown, so nothing may be blocked."""
    from agent.errors import InputError
    from agent.playbook import expand_paths, load_playbook
    from agent.service import status as status_file

    paths: list[str] = []
    doc = status_file.read(cfg.state_dir) or {}
    paths += [str(p["path"]) for p in doc.get("playbooks") or [] if p.get("path")]
    if isinstance(cfg.playbooks, list):
        paths += expand_paths([p for p in cfg.playbooks if os.path.exists(p)])
    found: list[str] = []
    for path in dict.fromkeys(p for p in paths if os.path.exists(p)):
        try:
            found += load_playbook(path, cfg.vars, schema_check=False).model.allowlist
        except InputError as e:
            first = e.diagnostics[0].format() if e.diagnostics else str(e)
            raise UsageError(f"the allowlist of {path} is unknown, so nothing is blocked "
                             f"until it loads: {first}") from None
    return found


def host_blocker(cfg: Any, *, guarded: bool = True) -> Any:
    """The Blocker of this host as `opsagent blocks` and runbooks use it: the config's nft
    and, when ``guarded`` (anything that may add a block), the whole guard with the
    playbooks' allowlists. UsageError when the guard cannot be known."""
    from agent.firewall import Blocker, Nftables

    argv = nft_command(cfg.firewall.nft)
    if not guarded:
        return Blocker(cfg.state_dir, Nftables(argv), Protected(()))
    try:
        protected = host_guard(cfg, argv, playbook_allowlists(cfg))
    except ValueError as e:
        raise UsageError(str(e)) from None
    return Blocker(cfg.state_dir, Nftables(argv), protected)
