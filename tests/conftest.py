"""Shared fixtures: the real components the suite starts for itself (Docker, test hosts)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest


@pytest.fixture(scope="session")
def docker_client() -> Any:
    """A Docker client; dockerd is started when no daemon answers (a failure, never a skip)."""
    from tests.harness.docker import ensure_docker

    return ensure_docker()


@pytest.fixture(scope="session")
def busybox_image(docker_client: Any) -> str:
    from tests.harness.docker import ensure_busybox_image

    return ensure_busybox_image(docker_client)


@pytest.fixture
def testhost(docker_client: Any) -> Iterator[Any]:
    """A fresh systemd test host (Debian bookworm, systemd as PID 1, dbus and sshd up)."""
    from tests.harness.testhost import TestHost

    host = TestHost(docker_client).start()
    try:
        yield host
    finally:
        host.remove()


@pytest.fixture
def collector(tmp_path: Any) -> Iterator[Any]:
    """A real collector (`opsagent server` on SQLite) on a free 127.0.0.1 port."""
    from tests.harness.collector import CollectorProc

    proc = CollectorProc(str(tmp_path / "collector.db"), tmp_path / "collector.log").start()
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture
def netns() -> Iterator[Any]:
    """Three network namespaces joined by veth pairs, nftables acting in the middle one
    (tests/harness/netns.py); deleted, with everything in them, after the test."""
    from tests.harness.netns import Netns

    ns = Netns().start()
    try:
        yield ns
    finally:
        ns.close()


@pytest.fixture(scope="session")
def postgres() -> Iterator[Any]:
    """A throw-away PostgreSQL server (initdb on a free port), shared by the session."""
    from tests.harness.postgres import Postgres

    pg = Postgres().start()
    try:
        yield pg
    finally:
        pg.stop()
