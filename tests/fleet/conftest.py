"""Fleet fixtures: three systemd test hosts over SSH (tests/harness/fleet.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.harness.fleet import Fleet, docker_unavailable


@pytest.fixture(scope="session")
def fleet() -> Iterator[Fleet]:
    """th1..th3 (web: th1, th2; db: th3), reachable as root, ops (no sudo) and deploy
    (NOPASSWD sudo) with fleet.key_file, checked against fleet.known_hosts; demo.service
    running on each. Shared by the session: a test that breaks a host (stop_unit,
    make_unreachable, change_host_key) puts it back. Skipped only when no Docker Engine can
    be had on this machine; a set-up failure after that is an error."""
    why = docker_unavailable()
    if why is not None:
        pytest.skip(f"fleet tests need Docker: {why}")
    from tests.harness.docker import ensure_docker

    f = Fleet(ensure_docker(), 3).start()
    try:
        yield f
    finally:
        f.remove()
