"""scale step: a compose service's replicas on a real Docker Engine, found and numbered by
compose's labels: up (clones of a replica, running, named and labelled as compose does),
down (the highest numbers stopped and removed), check mode, undo, and clear failures."""

from __future__ import annotations

import contextlib
import socket
import time
import uuid

import pytest

from agent.fleet.models import ScaleStep
from agent.fleet.steps import scale
from agent.fleet.steps.base import StepContext

# PID 1 ignores SIGTERM unless it traps it: stop at once rather than after the grace period
LOOP = ["sh", "-c", "echo up; trap 'exit 0' TERM; while true; do sleep 1; done"]


@pytest.fixture
def project(docker_client):
    """A unique compose project name; its containers and network are removed after."""
    p = f"opsagent-sc-{uuid.uuid4().hex[:8]}"
    docker_client.networks.create(f"{p}_default")
    yield p
    for c in docker_client.containers.list(all=True, filters={"label": f"{scale.PROJECT}={p}"}):
        c.remove(force=True, v=True)
    with contextlib.suppress(Exception):
        docker_client.networks.get(f"{p}_default").remove()


def compose_container(docker_client, image, project, service, n, *, oneoff=False,
                      ports=None, command=None):
    """A container as `docker compose up` makes it: its labels, name and network aliases."""
    api = docker_client.api
    name = f"{project}-{service}-{n}" if not oneoff else f"{project}-{service}-run-{n}"
    net = f"{project}_default"
    labels = {scale.PROJECT: project, scale.SERVICE: service, scale.NUMBER: str(n),
              scale.ONEOFF: "True" if oneoff else "False",
              "com.docker.compose.config-hash": "abc123", "com.docker.compose.version": "2.20.2"}
    host_config = api.create_host_config(network_mode=net, port_bindings=ports,
                                         restart_policy={"Name": "unless-stopped"})
    c = api.create_container(
        image, command=command or LOOP, name=name, labels=labels, environment={"ROLE": service},
        host_config=host_config, ports=list(ports) if ports else None, stop_timeout=5,
        volumes=["/cache"],
        networking_config=api.create_networking_config(
            {net: api.create_endpoint_config(aliases=[name, service])}))
    api.start(c["Id"])
    return c["Id"]


def ctx_of(tmp_path, check=False):
    return StepContext(host="test", state_dir=str(tmp_path / "state"), check=check,
                       deadline=time.monotonic() + 120)


def replicas(docker_client, project, service):
    found = docker_client.containers.list(all=True, filters={"label": [
        f"{scale.PROJECT}={project}", f"{scale.SERVICE}={service}",
        f"{scale.ONEOFF}=False"]})
    return sorted(found, key=lambda c: int(c.labels[scale.NUMBER]))


def test_scale_up_check_undo_and_down(docker_client, busybox_image, project, tmp_path):
    ids = [compose_container(docker_client, busybox_image, project, "worker", n)
           for n in (1, 2)]
    compose_container(docker_client, busybox_image, project, "worker", 1, oneoff=True)

    r = scale.run(ScaleStep(project=project, service="worker", replicas=4),
                  ctx_of(tmp_path, check=True))
    assert (r.status, r.message, r.undo) == (
        "would-change", f"would scale {project}/worker from 2 to 4", None)
    assert len(replicas(docker_client, project, "worker")) == 2

    r = scale.run(ScaleStep(project=project, service="worker", replicas=4), ctx_of(tmp_path))
    assert r.status == "changed", r.message
    assert r.message == (f"scaled {project}/worker from 2 to 4: created {project}-worker-3 "
                         f"from {project}-worker-2's configuration; created {project}-worker-4 "
                         f"from {project}-worker-2's configuration")
    assert r.undo == {"project": project, "service": "worker", "replicas": 2}
    reps = replicas(docker_client, project, "worker")
    assert [c.name for c in reps] == [f"{project}-worker-{n}" for n in (1, 2, 3, 4)]
    assert all(c.status == "running" for c in reps)
    assert [c.id for c in reps[:2]] == ids  # the existing ones were not touched
    new = docker_client.api.inspect_container(f"{project}-worker-4")
    assert new["Config"]["Labels"][scale.NUMBER] == "4"
    assert new["Config"]["Labels"]["com.docker.compose.config-hash"] == "abc123"
    assert "ROLE=worker" in new["Config"]["Env"] and new["Config"]["Cmd"] == LOOP
    assert new["Config"]["Hostname"] == new["Id"][:12]  # its own, not the template's
    assert new["HostConfig"]["RestartPolicy"]["Name"] == "unless-stopped"
    aliases = new["NetworkSettings"]["Networks"][f"{project}_default"]["Aliases"]
    assert f"{project}-worker-4" in aliases and "worker" in aliases
    assert f"{project}-worker-2" not in aliases
    assert docker_client.containers.get(f"{project}-worker-4").logs().startswith(b"up")
    volumes = [docker_client.api.inspect_container(c.id)["Mounts"][0] for c in reps]
    assert [v["Destination"] for v in volumes] == ["/cache"] * 4
    assert len({v["Name"] for v in volumes}) == 4  # each replica its own anonymous volume

    r = scale.run(ScaleStep(project=project, service="worker", replicas=4), ctx_of(tmp_path))
    assert r.status == "ok" and r.message.startswith(f"{project}/worker already runs 4 replicas")

    r = scale.undo({"project": project, "service": "worker", "replicas": 2}, ctx_of(tmp_path))
    assert r.status == "changed", r.message
    assert r.message == (f"scaled {project}/worker from 4 to 2: stopped and removed "
                         f"{project}-worker-4; stopped and removed {project}-worker-3")
    assert [c.id for c in replicas(docker_client, project, "worker")] == ids

    r = scale.run(ScaleStep(project=project, service="worker", replicas=0), ctx_of(tmp_path))
    assert r.status == "changed" and r.undo["replicas"] == 2
    assert replicas(docker_client, project, "worker") == []
    # the one-off container is not a replica: still there
    assert len(docker_client.containers.list(
        all=True, filters={"label": f"{scale.PROJECT}={project}"})) == 1


def test_a_stopped_replica_is_started(docker_client, busybox_image, project, tmp_path):
    first = compose_container(docker_client, busybox_image, project, "worker", 1)
    second = compose_container(docker_client, busybox_image, project, "worker", 2)
    docker_client.api.stop(second, timeout=5)
    r = scale.run(ScaleStep(project=project, service="worker", replicas=2),
                  ctx_of(tmp_path, check=True))
    assert r.message == f"would scale {project}/worker from 2 to 2 and start {project}-worker-2"
    r = scale.run(ScaleStep(project=project, service="worker", replicas=2), ctx_of(tmp_path))
    assert r.status == "changed" and f"started {project}-worker-2" in r.message
    assert [c.status for c in replicas(docker_client, project, "worker")] == ["running"] * 2
    assert [c.id for c in replicas(docker_client, project, "worker")] == [first, second]


def test_no_replica_and_a_replica_that_cannot_start(docker_client, busybox_image, project,
                                                    tmp_path):
    r = scale.run(ScaleStep(project=project, service="nope", replicas=2), ctx_of(tmp_path))
    assert r.status == "failed" and r.undo is None
    assert r.message == (f"no container of compose service {project}/nope on this host "
                         f"(labelled {scale.PROJECT}={project}, {scale.SERVICE}=nope): "
                         "no replica to copy")

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    compose_container(docker_client, busybox_image, project, "web", 1,
                      ports={8080: ("127.0.0.1", port)},
                      command=["httpd", "-f", "-p", "8080", "-h", "/www"])
    r = scale.run(ScaleStep(project=project, service="web", replicas=2), ctx_of(tmp_path))
    assert r.status == "failed", r.message
    assert r.message.startswith(f"scaling {project}/web from 1 to 2 failed: starting "
                                f"{project}-web-2 failed:")
    assert "port is already allocated" in r.message
    assert r.undo == {"project": project, "service": "web", "replicas": 1}
    reps = replicas(docker_client, project, "web")
    assert [(c.name, c.status) for c in reps] == [(f"{project}-web-1", "running")]


def test_a_replica_gets_fresh_anonymous_volumes_and_keeps_named_ones():
    """compose hands a re-created container its old anonymous volumes by name: a replica
    cloned from it must not share them (nor the template's static address or MAC)."""
    from agent.providers._docker_clone import clone_body

    anon = "a" * 64
    attrs = {
        "Id": "f" * 64, "Name": "/shop-worker-1",
        "Config": {"Hostname": "ffffffffffff", "Image": "shop/worker:1", "MacAddress": "x",
                   "Labels": {scale.NUMBER: "1"}},
        "HostConfig": {"NetworkMode": "shop_default",
                       "Binds": [f"{anon}:/old:ro", "data:/data", "/srv:/srv"],
                       "Mounts": [{"Type": "volume", "Source": anon, "Target": "/cache"},
                                  {"Type": "volume", "Source": "named", "Target": "/n"}]},
        "Mounts": [],
        "NetworkSettings": {"Networks": {"shop_default": {
            "Aliases": ["shop-worker-1", "worker", "ffffffffffff"],
            "IPAMConfig": {"IPv4Address": "10.0.0.5"}}, "other": {"Aliases": None}}},
    }
    body, extra = clone_body(attrs, "shop-worker-2", "shop/worker:1", replica=True,
                             labels={scale.NUMBER: "2"})
    assert "Hostname" not in body and "MacAddress" not in body
    assert body["Labels"] == {scale.NUMBER: "2"}
    host = body["HostConfig"]
    assert host["Binds"] == ["data:/data", "/srv:/srv"]
    assert host["Mounts"] == [{"Type": "volume", "Target": "/cache"},
                              {"Type": "volume", "Source": "named", "Target": "/n"},
                              {"Type": "volume", "Target": "/old", "ReadOnly": True}]
    assert body["NetworkingConfig"] == {"EndpointsConfig": {
        "shop_default": {"Aliases": ["shop-worker-2", "worker"]}}}
    assert extra == {"other": {}}
