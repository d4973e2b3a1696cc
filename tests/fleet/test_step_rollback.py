"""rollback step: a container re-created on its previous image on a real Docker Engine, its
configuration kept (env, ports, binds, volumes and their data, labels, restart policy,
networks and aliases, healthcheck), found from the agent's image history or the repository's
older images; refused when there is none; put back when the new one does not start."""

from __future__ import annotations

import contextlib
import socket
import time
import urllib.request
import uuid

import pytest

from agent.engine import run_playbook
from agent.fleet.models import RollbackStep
from agent.fleet.steps import rollback
from agent.fleet.steps.base import StepContext
from agent.playbook import load_playbook
from agent.providers.base import ProviderContext

HTTPD = ["httpd", "-f", "-p", "8080", "-h", "/www"]


@pytest.fixture
def env(docker_client, busybox_image, tmp_path):
    """A unique repository with two versions built from busybox (v1 older than v2), and
    everything the test creates under its unique prefix, removed after."""
    prefix = f"opsagent-rb-{uuid.uuid4().hex[:8]}"
    repo = f"opsagent-test/{prefix}"
    made = {"repo": repo, "prefix": prefix, "images": [], "networks": [], "volumes": []}

    def build(tag: str, version: str, cmd: str = '["sleep", "3600"]') -> str:
        ctx = tmp_path / f"build-{tag}-{version}"
        ctx.mkdir()
        (ctx / "Dockerfile").write_text(
            f"FROM {busybox_image}\nENV VERSION={version} PATH=/bin\n"
            f"LABEL app.version={version}\nVOLUME /data\nSTOPSIGNAL SIGKILL\nCMD {cmd}\n")
        image, _ = docker_client.images.build(path=str(ctx), tag=f"{repo}:{tag}", rm=True)
        made["images"].append(f"{repo}:{tag}")
        return str(image.id)

    made["build"] = build
    yield made
    for c in docker_client.containers.list(all=True, filters={"name": prefix}):
        c.remove(force=True, v=True)
    for n in made["networks"]:
        with contextlib.suppress(Exception):
            docker_client.networks.get(n).remove()
    for v in made["volumes"]:
        with contextlib.suppress(Exception):
            docker_client.volumes.get(v).remove(force=True)
    for ref in [*made["images"], repo]:
        for image in docker_client.images.list(name=ref.split(":")[0]):
            with contextlib.suppress(Exception):
                docker_client.images.remove(image.id, force=True)


def ctx_of(tmp_path, check: bool = False) -> StepContext:
    return StepContext(host="test", state_dir=str(tmp_path / "state"), check=check,
                       deadline=time.monotonic() + 120)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def running_web(docker_client, env, tmp_path, image: str) -> tuple[str, int]:
    """A container with a bit of everything, serving on a published port."""
    api = docker_client.api
    name = f"{env['prefix']}-web"
    net1, net2, vol = f"{env['prefix']}-n1", f"{env['prefix']}-n2", f"{env['prefix']}-vol"
    for n in (net1, net2):
        docker_client.networks.create(n)
        env["networks"].append(n)
    env["volumes"].append(vol)
    (tmp_path / "bind").mkdir()
    (tmp_path / "bind" / "b.txt").write_text("bound\n")
    port = free_port()
    host_config = api.create_host_config(
        port_bindings={8080: ("127.0.0.1", port)}, binds=[f"{tmp_path / 'bind'}:/bind:ro",
                                                          f"{vol}:/named"],
        restart_policy={"Name": "unless-stopped"}, network_mode=net1, mem_limit="64m")
    c = api.create_container(
        image, command=HTTPD, name=name, environment={"MYVAR": "x"}, ports=[8080],
        labels={"mine": "1"}, host_config=host_config, working_dir="/www",
        healthcheck={"test": ["CMD", "true"], "interval": 300_000_000},
        networking_config=api.create_networking_config(
            {net1: api.create_endpoint_config(aliases=["web-one"])}))
    docker_client.networks.get(net2).connect(c["Id"], aliases=["web-two"])
    api.start(c["Id"])
    api.exec_start(api.exec_create(name, ["sh", "-c", "echo kept > /data/a.txt; "
                                          "echo named > /named/n.txt"]))
    return name, port


def inspect(docker_client, name):
    return docker_client.api.inspect_container(name)


def test_check_then_rollback_keeps_the_configuration_and_undo_rolls_forward(
        docker_client, env, tmp_path):
    v1 = env["build"]("1", "1")
    v2 = env["build"]("2", "2")
    name, port = running_web(docker_client, env, tmp_path, f"{env['repo']}:2")
    before = inspect(docker_client, name)

    r = rollback.run(RollbackStep(container=name), ctx_of(tmp_path, check=True))
    assert r.status == "would-change", r.message
    assert r.message.startswith(f"would re-create {name} on {env['repo']}:1 "
                                f"(now on {env['repo']}:2)")
    assert "no image history recorded" in r.message
    assert inspect(docker_client, name)["Id"] == before["Id"] and r.undo is None

    r = rollback.run(RollbackStep(container=name), ctx_of(tmp_path))
    assert r.status == "changed", r.message
    assert "no image history recorded: the newest other local image" in r.message
    assert r.message.endswith("running, healthy")
    assert r.undo == {"container": name, "image": f"{env['repo']}:2"}
    after = inspect(docker_client, name)
    assert after["Id"] != before["Id"] and after["Image"] == v1
    assert after["State"]["Running"] and after["State"]["Health"]["Status"] == "healthy"
    cfg, host = after["Config"], after["HostConfig"]
    assert cfg["Image"] == f"{env['repo']}:1" and cfg["Cmd"] == HTTPD
    assert "VERSION=1" in cfg["Env"] and "MYVAR=x" in cfg["Env"]  # the new image's own
    assert cfg["Labels"] == {"mine": "1", "app.version": "1"} and cfg["WorkingDir"] == "/www"
    assert host["RestartPolicy"]["Name"] == "unless-stopped" and host["Memory"] == 64 << 20
    assert host["Binds"] == before["HostConfig"]["Binds"]
    nets = after["NetworkSettings"]["Networks"]
    assert set(nets) == {f"{env['prefix']}-n1", f"{env['prefix']}-n2"}
    assert "web-one" in nets[f"{env['prefix']}-n1"]["Aliases"]
    assert "web-two" in nets[f"{env['prefix']}-n2"]["Aliases"]
    assert urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5).read() == \
        b"hello from busybox httpd\n"
    out = docker_client.containers.get(name).exec_run(
        ["cat", "/data/a.txt", "/named/n.txt", "/bind/b.txt"]).output
    assert out == b"kept\nnamed\nbound\n"  # the anonymous volume came along
    assert [c.name for c in docker_client.containers.list(
        all=True, filters={"name": env["prefix"]})] == [name]

    r = rollback.undo(r.undo, ctx_of(tmp_path))
    assert r.status == "changed", r.message
    fwd = inspect(docker_client, name)
    assert fwd["Image"] == v2 and fwd["State"]["Running"]
    assert "VERSION=2" in fwd["Config"]["Env"] and "MYVAR=x" in fwd["Config"]["Env"]
    # both switches were recorded: the image before the current one is v1 again
    r = rollback.run(RollbackStep(container=name), ctx_of(tmp_path, check=True))
    assert r.status == "would-change" and "from the agent's image history" in r.message
    assert f"on {env['repo']}:1 " in r.message


def test_the_history_recorded_by_the_containers_provider_finds_a_moved_tag(
        docker_client, env, tmp_path):
    """app:latest rebuilt: the provider re-creates the container and records the image id it
    ran; the rollback goes back to that very image though the tag names another now."""
    repo, name = env["repo"], f"{env['prefix']}-app"
    v1 = env["build"]("latest", "1")
    docker_client.images.get(v1).tag(repo, "1")
    env["images"].append(f"{repo}:1")
    body = (f"name: rb\ncontainers:\n  - {{name: {name}, image: '{repo}:latest', "
            "restart: {max: 10, backoff: 0s}}\n")
    (tmp_path / "pb.yaml").write_text(body)

    def reconcile():
        loaded = load_playbook(str(tmp_path / "pb.yaml"))
        ctx = ProviderContext(host="test", variables={}, base_dir=str(tmp_path),
                              state_dir=str(tmp_path / "state"))
        return run_playbook(loaded, "apply", ctx).results[0]

    assert reconcile().status == "changed"
    v2 = env["build"]("latest", "2")  # the tag moves
    assert reconcile().status == "changed" and inspect(docker_client, name)["Image"] == v2

    r = rollback.run(RollbackStep(container=name), ctx_of(tmp_path))
    assert r.status == "changed", r.message
    assert f"re-created {name} on {repo}:1 (was on {repo}:latest; the image it ran " \
           "before, from the agent's image history)" in r.message
    assert "a playbook manages this container" in r.message
    after = inspect(docker_client, name)
    assert after["Image"] == v1 and after["State"]["Running"]
    assert "VERSION=1" in after["Config"]["Env"]


def test_no_previous_image_is_refused_and_nothing_changes(docker_client, env, tmp_path):
    env["build"]("only", "1")
    name = f"{env['prefix']}-solo"
    c = docker_client.containers.run(f"{env['repo']}:only", name=name, detach=True)
    r = rollback.run(RollbackStep(container=name), ctx_of(tmp_path))
    assert r.status == "failed" and r.undo is None
    assert r.message == (f"no previous image for {name}: the agent recorded none, and no "
                         f"other local image of {env['repo']} is older than {env['repo']}:only"
                         " (give to:); nothing was changed")
    c.reload()
    assert c.status == "running" and inspect(docker_client, name)["Id"] == c.id

    r = rollback.run(RollbackStep(container=name, to=f"{env['repo']}:nope"), ctx_of(tmp_path))
    assert r.status == "failed" and "is not on this host" in r.message
    r = rollback.run(RollbackStep(container=f"{env['prefix']}-nosuch"), ctx_of(tmp_path))
    assert r.status == "failed" and r.message.endswith("-nosuch on this host")
    r = rollback.run(RollbackStep(container=name, to=f"{env['repo']}:only"), ctx_of(tmp_path))
    assert r.status == "ok" and "already runs" in r.message


def test_an_image_that_does_not_start_puts_the_old_container_back(docker_client, env, tmp_path):
    env["build"]("bad", "0", cmd='["sh", "-c", "echo broken; exit 3"]')
    env["build"]("good", "1")
    name = f"{env['prefix']}-svc"
    c = docker_client.containers.run(f"{env['repo']}:good", name=name, detach=True,
                                     environment={"KEEP": "1"})
    r = rollback.run(RollbackStep(container=name, to=f"{env['repo']}:bad"), ctx_of(tmp_path))
    assert r.status == "failed" and r.undo is None
    assert f"{name} did not stay running" in r.message and "exit code 3" in r.message
    assert "broken" in r.message  # its last log lines
    assert r.message.endswith(f"{name} is running again on {env['repo']}:good")
    c.reload()
    assert c.status == "running" and c.name == name
    assert [x.id for x in docker_client.containers.list(
        all=True, filters={"name": env["prefix"]})] == [c.id]


def test_a_later_failure_under_on_failure_rollback_rolls_it_forward(docker_client, env, tmp_path):
    from agent.fleet.execute import run_steps
    from agent.fleet.models import StepSpec

    v1 = env["build"]("1", "1")
    v2 = env["build"]("2", "2")
    name = f"{env['prefix']}-deploy"
    docker_client.containers.run(f"{env['repo']}:2", name=name, detach=True)
    steps = [StepSpec.model_validate({"rollback": {"container": name, "to": f"{env['repo']}:1"}}),
             StepSpec.model_validate({"run": {"argv": ["false"]}})]
    ran = run_steps(steps, range(2), ctx_of(tmp_path), "rollback")
    assert [o["status"] for o in ran.outcomes] == ["changed", "failed", "rolled-back"]
    assert inspect(docker_client, name)["Image"] == v2 and v1 != v2
    assert inspect(docker_client, name)["State"]["Running"]
