"""containers provider on a real Docker Engine: create, drift, recreate, health, images."""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import socket
import subprocess
import sys
import time
import urllib.request
import uuid

import pytest

from agent.playbook.models import ContainerSpec
from agent.providers import _docker_config as cfg

ROOT = pathlib.Path(__file__).resolve().parents[2]
# PID 1 of a container ignores SIGTERM unless it traps it: stop at once, not after 10 s
SLEEP = """[sh, -c, "trap 'exit 0' TERM; while true; do sleep 1; done"]"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def name(docker_client):
    n = f"opsagent-ct-{uuid.uuid4().hex[:8]}"
    yield n
    for c in docker_client.containers.list(all=True, filters={"name": n}):
        c.remove(force=True)


def run(tmp_path, body: str, *args: str, env=None):
    pb = tmp_path / "pb.yaml"
    pb.write_text("name: ct\ncontainers:\n" + body)
    p = subprocess.run([sys.executable, "-m", "agent.cli", *args, str(pb), "--json"],
                       capture_output=True, text=True, timeout=180,
                       env=dict(os.environ, PYTHONPATH=str(ROOT), **(env or {})))
    assert p.stdout, p.stderr
    return p.returncode, json.loads(p.stdout)["results"][0]


def web(name, image, port, env="1", extra=""):
    return (f"  - name: {name}\n    image: {image}\n"
            f"    command: [httpd, -f, -p, '8080', -h, /www]\n"
            f"    ports: ['127.0.0.1:{port}:8080']\n    env: {{APP_ENV: '{env}'}}\n{extra}")


def cid(docker_client, name):
    return docker_client.api.inspect_container(name)["Id"]


def fields(result):
    return [c["field"] for c in result["changes"]]


def test_port_parsing_and_normalisation():
    assert cfg.parse_port("127.0.0.1:8080:80") == ("127.0.0.1", "8080", "80/tcp")
    assert cfg.parse_port("53:53/udp") == ("", "53", "53/udp")
    assert cfg.parse_port("[::1]:8080:80") == ("::1", "8080", "80/tcp")
    spec = ContainerSpec.model_validate({"name": "a", "image": "i", "ports": ["9000"]})
    assert cfg.desired_ports(spec) == ["::9000/tcp"]


def test_timeline_create_drift_recreate(tmp_path, docker_client, busybox_image, name):
    port = free_port()
    rc, r = run(tmp_path, web(name, busybox_image, port), "apply", "--check")
    assert rc == 3 and fields(r) == ["state"]
    assert not docker_client.containers.list(all=True, filters={"name": name})  # --check

    rc, r = run(tmp_path, web(name, busybox_image, port), "apply")
    assert rc == 0 and r["status"] == "changed", r
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5).read()
    assert body == b"hello from busybox httpd\n"
    first = cid(docker_client, name)
    labels = docker_client.api.inspect_container(name)["Config"]["Labels"]
    assert labels[cfg.MANAGED_LABEL] == "true" and len(labels[cfg.HASH_LABEL]) == 16

    rc, r = run(tmp_path, web(name, busybox_image, port), "plan")
    assert rc == 0 and r["status"] == "ok" and "configuration matches" in r["message"]

    rc, r = run(tmp_path, web(name, busybox_image, port, env="2"), "apply")
    assert rc == 0 and fields(r) == ["env"], r
    assert cid(docker_client, name) != first
    assert "APP_ENV=2" in docker_client.api.inspect_container(name)["Config"]["Env"]

    port2 = free_port()
    before = cid(docker_client, name)
    rc, r = run(tmp_path, web(name, busybox_image, port2, env="2"), "apply")
    assert rc == 0 and fields(r) == ["ports"]
    assert cid(docker_client, name) != before
    urllib.request.urlopen(f"http://127.0.0.1:{port2}/", timeout=5).read()


def test_image_retagged_is_drift(tmp_path, docker_client, busybox_image, name):
    tag = f"opsagent-test/retag-{uuid.uuid4().hex[:6]}:1"
    docker_client.images.get(busybox_image).tag(tag)
    try:
        body = f"  - {{name: {name}, image: '{tag}', command: {SLEEP}}}\n"
        assert run(tmp_path, body, "apply")[0] == 0
        old = cid(docker_client, name)
        # a new image under the same tag: a layer on top of the old one
        ctx = tmp_path / "ctx"
        ctx.mkdir()
        (ctx / "Dockerfile").write_text(f"FROM {busybox_image}\nRUN echo v2 > /version\n")
        docker_client.images.build(path=str(ctx), tag=tag, rm=True)
        rc, r = run(tmp_path, body, "plan")
        assert rc == 3 and fields(r) == ["image"]
        rc, r = run(tmp_path, body, "apply")
        assert rc == 0 and cid(docker_client, name) != old
    finally:
        for c in docker_client.containers.list(all=True, filters={"name": name}):
            c.remove(force=True)
        docker_client.images.remove(tag, force=True)


def test_removed_or_stopped_by_hand_is_brought_back(tmp_path, docker_client, busybox_image,
                                                    name):
    body = f"  - {{name: {name}, image: '{busybox_image}', command: {SLEEP}}}\n"
    assert run(tmp_path, body, "apply")[0] == 0
    docker_client.api.remove_container(name, force=True)
    rc, r = run(tmp_path, body, "apply")
    assert rc == 0 and fields(r) == ["state"] and r["changes"][0]["before"] == "absent"
    docker_client.api.stop(name, timeout=1)
    rc, r = run(tmp_path, body, "apply")
    assert rc == 0 and r["changes"][0]["before"] == "exited"
    assert docker_client.api.inspect_container(name)["State"]["Running"]


def test_stopped_restarted_and_absent(tmp_path, docker_client, busybox_image, name):
    base = f"  - {{name: {name}, image: '{busybox_image}', command: {SLEEP}, state: "
    assert run(tmp_path, base + "running}\n", "apply")[0] == 0
    rc, r = run(tmp_path, base + "stopped}\n", "apply")
    assert rc == 0 and not docker_client.api.inspect_container(name)["State"]["Running"]
    assert run(tmp_path, base + "running}\n", "apply")[0] == 0
    started = docker_client.api.inspect_container(name)["State"]["StartedAt"]
    rc, r = run(tmp_path, base + "restarted}\n", "apply")
    assert rc == 0 and fields(r) == ["restart"]
    assert docker_client.api.inspect_container(name)["State"]["StartedAt"] != started
    rc, r = run(tmp_path, base + "absent}\n", "apply")
    assert rc == 0 and not docker_client.containers.list(all=True, filters={"name": name})
    assert run(tmp_path, base + "absent}\n", "plan")[0] == 0


def test_failing_healthcheck_is_reported(tmp_path, docker_client, busybox_image, name):
    body = (f"  - name: {name}\n    image: '{busybox_image}'\n    command: {SLEEP}\n"
            "    healthcheck: {test: [CMD, 'false'], interval: 1s, timeout: 1s, retries: 1}\n")
    assert run(tmp_path, body, "apply")[0] == 0
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        health = docker_client.api.inspect_container(name)["State"]["Health"]["Status"]
        if health == "unhealthy":
            break
        time.sleep(0.3)
    rc, r = run(tmp_path, body, "plan")
    assert rc == 3 and fields(r) == ["health"]
    assert r["changes"][0]["before"] == "unhealthy"
    assert "healthcheck failing: exit 1" in r["changes"][0]["reason"]


def test_a_container_that_exits_fails_with_its_logs(tmp_path, busybox_image, name):
    body = (f"  - {{name: {name}, image: '{busybox_image}', "
            "command: [sh, -c, 'echo config missing >&2; exit 3']}\n")
    rc, r = run(tmp_path, body, "apply")
    assert rc == 4 and r["status"] == "failed"
    assert "exit code 3" in r["message"] and "config missing" in r["message"]


def test_missing_image_fails_clearly(tmp_path, name):
    body = f"  - {{name: {name}, image: 'opsagent-test/nope:{uuid.uuid4().hex[:6]}'}}\n"
    rc, r = run(tmp_path, body, "apply")
    assert rc == 4 and "is not on this host and no registry is used" in r["message"]


def test_load_and_build(tmp_path, docker_client, busybox_image, name):
    tag = f"opsagent-test/loaded-{uuid.uuid4().hex[:6]}:1"
    docker_client.images.get(busybox_image).tag(tag)
    tar = tmp_path / "image.tar"
    with open(tar, "wb") as fh:
        for chunk in docker_client.images.get(tag).save(named=tag):
            fh.write(chunk)
    docker_client.images.remove(tag, force=True)
    built = f"opsagent-test/built-{uuid.uuid4().hex[:6]}:1"
    (tmp_path / "ctx").mkdir()
    (tmp_path / "ctx" / "Dockerfile").write_text(f"FROM {busybox_image}\nCMD [\"sleep\", \"1000\"]\n")
    try:
        body = (f"  - {{name: {name}, image: '{tag}', load: image.tar, command: [sleep, '99']}}\n"
                f"  - {{name: {name}-b, image: '{built}', build: {{context: ctx}}}}\n")
        pb = tmp_path / "pb.yaml"
        pb.write_text("name: ct\ncontainers:\n" + body)
        p = subprocess.run([sys.executable, "-m", "agent.cli", "apply", str(pb), "--json"],
                           capture_output=True, text=True, timeout=180,
                           env=dict(os.environ, PYTHONPATH=str(ROOT)))
        report = json.loads(p.stdout)
        assert p.returncode == 0, [(r["status"], r["message"]) for r in report["results"]]
        acts = [o["action"] for r in report["results"] for o in r["outcomes"]]
        assert "load" in acts and "build" in acts
        assert docker_client.api.inspect_container(f"{name}-b")["State"]["Running"]
    finally:
        for c in docker_client.containers.list(all=True, filters={"name": name}):
            c.remove(force=True)
        for t in (tag, built):
            with contextlib.suppress(Exception):
                docker_client.images.remove(t, force=True)


def test_a_dead_daemon_fails_the_resource_quickly(tmp_path, busybox_image, name):
    t0 = time.monotonic()
    rc, r = run(tmp_path, f"  - {{name: {name}, image: '{busybox_image}'}}\n", "plan",
                env={"DOCKER_HOST": f"unix://{tmp_path}/no-such.sock"})
    assert time.monotonic() - t0 < 30
    assert rc == 4 and r["status"] == "failed"
    assert "Docker Engine is not reachable" in r["message"]
