"""Fixtures of the agent-service tests."""

from __future__ import annotations

import uuid

import psutil
import pytest


@pytest.fixture
def mark():
    """A unique word in the command lines of the processes a test starts; killed after it."""
    word = f"opsagent-test-{uuid.uuid4().hex[:8]}"
    yield word
    for p in psutil.process_iter(["cmdline"]):
        if word in " ".join(p.info["cmdline"] or []):
            p.kill()
