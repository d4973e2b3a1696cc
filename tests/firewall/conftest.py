"""Firewall fixtures: three network namespaces with real nftables (tests/harness/netns.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from agent.firewall import Blocker, Nftables, Protected
from tests.harness.netns import Netns


@pytest.fixture
def nft(netns: Netns) -> Nftables:
    return Nftables(netns.nft_argv)


def make_blocker(netns: Netns, state_dir: Path, *, allowlist: tuple[str, ...] = (),
                 **kwargs: Any) -> Blocker:
    """A Blocker acting in the fw namespace, guarding this machine's and fw's addresses."""
    protected = Protected.for_host(allowlist=allowlist, addresses_argv=netns.ip_argv)
    return Blocker(str(state_dir), Nftables(netns.nft_argv), protected, **kwargs)


@pytest.fixture
def blocker(netns: Netns, tmp_path: Path) -> Blocker:
    return make_blocker(netns, tmp_path / "state")
