"""OPSAGENT_NFT: the nft argv from the environment, parsed strictly (no root needed)."""

from __future__ import annotations

import json

import pytest

from agent.cli_blocks import nft_argv
from agent.errors import UsageError


def test_opsagent_nft_is_parsed_strictly():
    assert nft_argv({}) == ["nft"]
    assert nft_argv({"OPSAGENT_NFT": '["ip","netns","exec","ns1","nft"]'}) == [
        "ip", "netns", "exec", "ns1", "nft"]
    for bad in ("ip netns exec ns1 nft", "[]", '["nft", 1]', '[""]', '{"nft": 1}', '"nft"',
                '["nft\\u0000"]', json.dumps(["x"] * 33)):
        with pytest.raises(UsageError, match="OPSAGENT_NFT must be a JSON list of strings"):
            nft_argv({"OPSAGENT_NFT": bad})
