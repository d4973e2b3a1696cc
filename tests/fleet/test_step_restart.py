"""restart step on a container (real Docker Engine): restarted and waited for, check mode
changes nothing, a missing container is a failed step."""

from __future__ import annotations

import time
import uuid

import pytest

from agent.fleet.models import RestartStep
from agent.fleet.steps import restart
from agent.fleet.steps.base import StepContext

LOOP = ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 1; done"]


@pytest.fixture
def container(docker_client, busybox_image):
    c = docker_client.containers.run(busybox_image, LOOP, detach=True,
                                     name=f"opsagent-rs-{uuid.uuid4().hex[:8]}")
    yield c
    c.remove(force=True)


def ctx(tmp_path, check=False):
    return StepContext(host="test", state_dir=str(tmp_path), check=check,
                       deadline=time.monotonic() + 60)


def started_at(c):
    c.reload()
    return c.attrs["State"]["StartedAt"]


def test_a_container_is_restarted_and_waited_for(container, tmp_path):
    before = started_at(container)
    dry = restart.run(RestartStep(container=container.name), ctx(tmp_path, check=True))
    assert dry.status == "would-change" and "now running" in dry.message
    assert started_at(container) == before
    got = restart.run(RestartStep(container=container.name), ctx(tmp_path))
    assert got.status == "changed", got.message
    assert started_at(container) != before
    container.reload()
    assert container.status == "running"


def test_a_missing_container_fails_the_step(tmp_path):
    got = restart.run(RestartStep(container="opsagent-no-such-container"), ctx(tmp_path))
    assert got.status == "failed" and "no container opsagent-no-such-container" in got.message
