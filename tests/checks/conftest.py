"""Real targets for the probes: an HTTP(S) server in a thread, a test CA, PostgreSQL, Redis."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.checks import run_check
from agent.checks.base import Outcome
from agent.playbook.models.checks import CheckSpec
from tests.harness.redis import RedisServer
from tests.harness.targets import HttpTarget, mounted_tmpfs
from tests.harness.tls import TestCA, server_context


def check(**fields: Any) -> Outcome:
    """run_check on a CheckSpec built from a playbook-like mapping (name defaults to "t")."""
    return run_check(CheckSpec.model_validate({"name": "t", **fields}))


@pytest.fixture
def http_target() -> Iterator[HttpTarget]:
    target = HttpTarget()
    yield target
    target.close()


@pytest.fixture(scope="session")
def test_ca(tmp_path_factory: pytest.TempPathFactory) -> TestCA:
    return TestCA(tmp_path_factory.mktemp("ca"))


@pytest.fixture
def https_target(test_ca: TestCA) -> Iterator[HttpTarget]:
    target = HttpTarget(server_context(test_ca.issue("https", days_left=60)))
    yield target
    target.close()


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs."""
    with mounted_tmpfs(tmp_path / "tmpfs") as mountpoint:
        yield mountpoint
