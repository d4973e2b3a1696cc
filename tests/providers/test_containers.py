"""containers provider: plans from captured inspect data, then timelines on a real Docker Engine
(create, drift, recreate, repair, states, health, images, a dead or hung daemon)."""

from __future__ import annotations

import contextlib
import copy
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
from pydantic import ValidationError

from agent.engine import run_playbook
from agent.playbook import load_playbook
from agent.playbook.models import ContainerSpec
from agent.playbook.models.containers import parse_port
from agent.providers import _docker_client, containers
from agent.providers import _docker_config as cfg
from agent.providers.base import ProviderContext

ROOT = pathlib.Path(__file__).resolve().parents[2]
# PID 1 of a container ignores SIGTERM unless it traps it: stop at once, not after 10 s
SLEEP = """[sh, -c, "echo serving; trap 'exit 0' TERM; while true; do sleep 1; done"]"""
FAST = "restart: {max: 10, backoff: 0s}"  # timelines start and restart more than a budget allows

# ---------------------------------------------------------------------------------------------
# Captured from Docker 20.10 (trimmed `docker inspect`) for CAPTURED_SPEC, created by the agent.
CAPTURED_SPEC = {
    "name": "opsagent-cap", "image": "opsagent-test/busybox:1",
    "command": ["httpd", "-f", "-p", "8080", "-h", "/www"],
    "ports": ["127.0.0.1:18080:8080", "127.0.0.1::9999/udp"], "env": {"APP_ENV": "1"},
    "labels": {"com.example.team": "web"}, "volumes": ["/tmp/cap:/data:ro"],
    "restart_policy": "unless-stopped",
    "healthcheck": {"test": ["CMD", "wget", "-q", "-O-", "http://127.0.0.1:8080/"],
                    "interval": "2s", "retries": 2},
}
CAPTURED_IMAGE = {
    "Id": "sha256:4819bb3f8b433ef61c5eaa42de170b99602f57a07fbd6eb8ed72178205ef470c",
    "Config": {"Env": ["PATH=/bin"], "Cmd": ["/bin/sh"], "Labels": None, "Healthcheck": None,
               "Entrypoint": None},
}
CAPTURED = {
    "Id": "bc8dd0e2e3d1e00201eae180ee1ea255f0655a12507081ac26d669906884727b",
    "Image": "sha256:4819bb3f8b433ef61c5eaa42de170b99602f57a07fbd6eb8ed72178205ef470c",
    "Name": "/opsagent-cap",
    "State": {"Status": "running", "Running": True, "Paused": False, "Restarting": False,
              "OOMKilled": False, "Dead": False, "Pid": 10275, "ExitCode": 0, "Error": "",
              "StartedAt": "2026-11-23T00:24:19.246731014Z",
              "FinishedAt": "0001-01-01T00:00:00Z",
              "Health": {"Status": "healthy", "FailingStreak": 0, "Log": []}},
    "Config": {
        "Image": "opsagent-test/busybox:1", "Cmd": ["httpd", "-f", "-p", "8080", "-h", "/www"],
        "Env": ["APP_ENV=1", "PATH=/bin"],
        "Labels": {"com.example.team": "web", "opsagent.config-hash": "c3ceab17293ea5a0",
                   "opsagent.managed": "true"},
        "Healthcheck": {"Test": ["CMD", "wget", "-q", "-O-", "http://127.0.0.1:8080/"],
                        "Interval": 2000000000, "Timeout": 10000000000, "Retries": 2},
        "ExposedPorts": {"8080/tcp": {}, "9999/udp": {}}, "Entrypoint": None},
    "HostConfig": {
        "Binds": ["/tmp/cap:/data:ro"],
        "PortBindings": {"8080/tcp": [{"HostIp": "127.0.0.1", "HostPort": "18080"}],
                         "9999/udp": [{"HostIp": "127.0.0.1", "HostPort": ""}]},
        "RestartPolicy": {"Name": "unless-stopped", "MaximumRetryCount": 0}},
}


def plan(spec_changes=None, attrs_changes=None, image=CAPTURED_IMAGE):
    spec = ContainerSpec.model_validate({**CAPTURED_SPEC, **(spec_changes or {})})
    attrs = copy.deepcopy(CAPTURED)
    if attrs_changes:
        attrs_changes(attrs)
    observed = containers.ContainerObserved(cfg.ImageInfo.of(image) if image else None, attrs)
    return containers.diff(spec, observed), containers.describe(spec, observed)


def test_captured_container_matches_its_spec():
    changes, text = plan()
    assert changes == []
    assert text == ("running, healthy, id bc8dd0e2e3d1, image opsagent-test/busybox:1 "
                    "(4819bb3f8b43), configuration matches")
    # the hash is part of every managed container: changing it recreates them all
    assert cfg.config_hash(ContainerSpec.model_validate(CAPTURED_SPEC)) == "c3ceab17293ea5a0"


@pytest.mark.parametrize(("spec_changes", "attrs_changes", "field", "before", "after"), [
    ({"env": {"APP_ENV": "2"}}, None, "env", "APP_ENV differ", "as declared"),
    ({"env": {}}, None, "env", "APP_ENV not declared", "as declared"),
    ({"ports": ["127.0.0.1:18081:8080"]}, None, "ports",
     ["127.0.0.1:18080:8080/tcp", "127.0.0.1::9999/udp"], ["127.0.0.1:18081:8080/tcp"]),
    ({"command": ["httpd", "-f"]}, None, "command", CAPTURED["Config"]["Cmd"], ["httpd", "-f"]),
    ({"command": None}, None, "command", CAPTURED["Config"]["Cmd"], ["/bin/sh"]),
    ({"volumes": None}, None, "volumes", ["/tmp/cap:/data:ro"], []),
    ({"restart_policy": "always"}, None, "restart_policy", "unless-stopped", "always"),
    ({"labels": {"com.example.team": "db"}}, None, "labels", {"com.example.team": "web"},
     {"com.example.team": "db"}),
    ({"labels": None}, None, "labels", {"com.example.team": "web"}, {}),
    ({"healthcheck": None}, None, "healthcheck", CAPTURED["Config"]["Healthcheck"], None),
    (None, lambda a: a.update(Image="sha256:" + "e" * 64), "image", "eeeeeeeeeeee",
     "4819bb3f8b43"),
    (None, lambda a: a["Config"]["Labels"].pop("opsagent.config-hash"), "config", None,
     "c3ceab17293ea5a0"),
    (None, lambda a: a["State"].update(Status="exited", Running=False, ExitCode=137), "state",
     "exited", "running"),
])
def test_drift_names_the_field(spec_changes, attrs_changes, field, before, after):
    changes, _ = plan(spec_changes, attrs_changes)
    assert [(c.field, c.before, c.after) for c in changes] == [(field, before, after)]


def test_plan_for_states_health_and_a_missing_image():
    def unhealthy(a):
        a["State"]["Health"] = {"Status": "unhealthy", "FailingStreak": 3, "Log": [
            {"ExitCode": 1, "Output": "wget: can't connect to remote host\n"}]}

    [c] = plan(None, unhealthy)[0]
    assert (c.field, c.before) == ("health", "unhealthy")
    assert "last probe exit 1: wget: can't connect to remote host" in c.reason
    assert [c.field for c in plan({"state": "restarted"})[0]] == ["restart"]
    assert [(c.field, c.after) for c in plan({"state": "stopped"})[0]] == [("state", "stopped")]
    assert [(c.field, c.after) for c in plan({"state": "absent"})[0]] == [("state", "absent")]
    changes, _ = plan(None, None, image=None)
    assert [c.field for c in changes] == ["image"]
    assert "no registry is used" in changes[0].reason


def test_the_model_refuses_bad_declarations():
    assert parse_port("127.0.0.1:8080:80") == ("127.0.0.1", "8080", "80/tcp")
    assert parse_port("53:53/udp") == ("", "53", "53/udp")
    assert parse_port("[::1]:8080:80") == ("::1", "8080", "80/tcp")
    assert parse_port("127.0.0.1::80") == ("127.0.0.1", "", "80/tcp")
    for bad, message in [
        ({"ports": ["8080:80/icmp"]}, "is not valid"),
        ({"ports": ["::1:8080:80"]}, "an IPv6 address goes in brackets"),
        ({"ports": ["localhost:80:80"]}, "is not an IP address"),
        ({"volumes": ["data:relative"]}, "is not an absolute path"),
        ({"volumes": ["./data:/data"]}, "neither an absolute path nor a volume name"),
        ({"volumes": ["/a:/b:rx"]}, "unknown options rx"),
        ({"labels": {"opsagent.managed": "no"}}, "is reserved"),
        ({"name": "a"}, "at least 2 characters"),
        ({"name": "-web"}, "is not a container name"),
        ({"healthcheck": {"test": ["wget", "x"]}}, "starts with CMD, CMD-SHELL or NONE"),
        ({"build": {"context": "."}, "load": "x.tar"}, "at most one of build, load"),
    ]:
        with pytest.raises(ValidationError, match=message):
            ContainerSpec.model_validate({"name": "web", "image": "i", **bad})


# ---------------------------------------------------------------------------------------------
# Timelines on the real engine.


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def name(docker_client):
    """A unique container name; every container whose name contains it is removed after."""
    n = f"opsagent-ct-{uuid.uuid4().hex[:8]}"
    yield n
    for c in docker_client.containers.list(all=True, filters={"name": n}):
        c.remove(force=True)


@pytest.fixture
def image_tag(docker_client):
    """A unique image tag under opsagent-test/, removed after."""
    tags = []

    def make(what: str) -> str:
        tags.append(f"opsagent-test/{what}-{uuid.uuid4().hex[:6]}:1")
        return tags[-1]

    yield make
    for t in tags:
        with contextlib.suppress(Exception):
            docker_client.images.remove(t, force=True)


def reconcile(tmp_path, body: str, mode: str = "apply"):
    """One run of the engine over a playbook of containers, in this process, as the CLI runs it
    (a fresh context, hence a fresh Docker client and image cache, per run)."""
    pb = tmp_path / "pb.yaml"
    pb.write_text("name: ct\ncontainers:\n" + body)
    loaded = load_playbook(str(pb))
    ctx = ProviderContext(host="test", variables=loaded.variables, base_dir=str(tmp_path),
                          state_dir=str(tmp_path / "state"), automatic=True)
    return run_playbook(loaded, mode, ctx).results[0]


def cli(tmp_path, body: str, *args: str, env=None):
    pb = tmp_path / "pb.yaml"
    pb.write_text("name: ct\ncontainers:\n" + body)
    p = subprocess.run([sys.executable, "-m", "agent.cli", *args, str(pb), "--json"],
                       capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PYTHONPATH": str(ROOT),
                            "OPSAGENT_STATE_DIR": str(tmp_path / "state"), **(env or {})})
    assert p.stdout, p.stderr
    return p.returncode, json.loads(p.stdout)


def web(name, image, port, env="1", ports=None, extra=""):
    ports = ports or [f"127.0.0.1:{port}:8080"]
    return (f"  - name: {name}\n    image: '{image}'\n"
            f"    command: [httpd, -f, -p, '8080', -h, /www]\n"
            f"    ports: {json.dumps(ports)}\n    env: {{APP_ENV: '{env}'}}\n{extra}")


def sleeper(name, image, extra=""):
    return f"  - {{name: {name}, image: '{image}', command: {SLEEP}, {FAST}{extra}}}\n"


def inspect(docker_client, name):
    return docker_client.api.inspect_container(name)


def fields(result):
    return [c.field for c in result.changes]


def get(port: int) -> bytes:
    return urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5).read()


def test_cli_check_apply_and_a_second_apply(tmp_path, docker_client, busybox_image, name):
    port = free_port()
    rc, doc = cli(tmp_path, web(name, busybox_image, port), "apply", "--check")
    [r] = doc["results"]
    assert rc == 3 and [c["field"] for c in r["changes"]] == ["state"], r
    assert not docker_client.containers.list(all=True, filters={"name": name})  # --check

    rc, doc = cli(tmp_path, web(name, busybox_image, port), "apply")
    assert rc == 0 and doc["summary"]["changed"] == 1, doc["results"]
    assert get(port) == b"hello from busybox httpd\n"
    labels = inspect(docker_client, name)["Config"]["Labels"]
    assert labels[cfg.MANAGED_LABEL] == "true" and len(labels[cfg.HASH_LABEL]) == 16

    rc, doc = cli(tmp_path, web(name, busybox_image, port), "apply")
    assert rc == 0 and doc["summary"]["changed"] == 0 and doc["summary"]["ok"] == 1
    assert "configuration matches" in doc["results"][0]["message"]


def test_env_and_port_drift_recreate(tmp_path, docker_client, busybox_image, name):
    port = free_port()
    assert reconcile(tmp_path, web(name, busybox_image, port)).status == "changed"
    first = inspect(docker_client, name)["Id"]
    r = reconcile(tmp_path, web(name, busybox_image, port), "plan")
    assert r.status == "ok" and "configuration matches" in r.message

    r = reconcile(tmp_path, web(name, busybox_image, port, env="2"), "check")
    assert fields(r) == ["env"] and inspect(docker_client, name)["Id"] == first  # check: nothing
    r = reconcile(tmp_path, web(name, busybox_image, port, env="2"))
    assert r.status == "changed" and fields(r) == ["env"], r.message
    second = inspect(docker_client, name)
    assert second["Id"] != first and "APP_ENV=2" in second["Config"]["Env"]

    port2 = free_port()
    ports = [f"127.0.0.1:{port2}:8080", "127.0.0.1::9999/udp"]
    r = reconcile(tmp_path, web(name, busybox_image, port, env="2", ports=ports))
    assert r.status == "changed" and fields(r) == ["ports"], r.message
    third = inspect(docker_client, name)
    assert third["Id"] != second["Id"]
    assert third["NetworkSettings"]["Ports"]["9999/udp"][0]["HostIp"] == "127.0.0.1"
    assert get(port2) == b"hello from busybox httpd\n"
    r = reconcile(tmp_path, web(name, busybox_image, port, env="2", ports=ports), "plan")
    assert r.status == "ok", [(c.field, c.before, c.after) for c in r.changes]


def test_volumes_labels_policy_and_healthcheck_round_trip(tmp_path, docker_client, busybox_image,
                                                           name):
    data = tmp_path / "data"
    data.mkdir()
    (data / "greeting").write_text("from the host\n")
    extra = (f"    volumes: ['{data}:/data:ro']\n    labels: {{com.example.team: web}}\n"
             "    restart_policy: unless-stopped\n"
             "    healthcheck: {test: [CMD-SHELL, 'wget -q -O- http://127.0.0.1:8080/'], "
             "interval: 1s, start_period: 5s}\n")
    body = web(name, busybox_image, free_port(), extra=extra)
    r = reconcile(tmp_path, body)
    assert r.status == "changed", r.message
    out = docker_client.containers.get(name).exec_run(["cat", "/data/greeting"]).output
    assert out == b"from the host\n"
    r = reconcile(tmp_path, body, "plan")  # what was created reads back as declared
    assert r.status == "ok", [(c.field, c.before, c.after) for c in r.changes]
    r = reconcile(tmp_path, body.replace(":/data:ro", ":/data:rw"))
    assert fields(r) == ["volumes"] and r.status == "changed", r.message


def test_image_retagged_is_drift(tmp_path, docker_client, busybox_image, name, image_tag):
    tag = image_tag("retag")
    docker_client.images.get(busybox_image).tag(tag)
    body = sleeper(name, tag)
    assert reconcile(tmp_path, body).status == "changed"
    old = inspect(docker_client, name)["Id"]
    ctx = tmp_path / "ctx"  # a new image under the same tag: a layer on top of the old one
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(f"FROM {busybox_image}\nRUN echo v2 > /version\n")
    docker_client.images.build(path=str(ctx), tag=tag, rm=True)
    r = reconcile(tmp_path, body, "plan")
    assert r.status == "changed" and fields(r) == ["image"]
    assert f"{tag} is now image" in r.changes[0].reason
    r = reconcile(tmp_path, body)
    assert r.status == "changed" and inspect(docker_client, name)["Id"] != old
    assert reconcile(tmp_path, body, "plan").status == "ok"


def test_removed_or_stopped_by_hand_is_brought_back(tmp_path, docker_client, busybox_image, name):
    body = sleeper(name, busybox_image)
    assert reconcile(tmp_path, body).status == "changed"
    docker_client.api.remove_container(name, force=True)
    r = reconcile(tmp_path, body)
    assert r.status == "changed" and [(c.field, c.before) for c in r.changes] == [
        ("state", "absent")]
    docker_client.api.stop(name, timeout=1)
    r = reconcile(tmp_path, body)
    assert r.status == "changed" and r.changes[0].before == "exited", r.message
    assert "attempt 1 of 10" in r.outcomes[-1].message
    assert inspect(docker_client, name)["State"]["Running"]


def test_stopped_restarted_and_absent(tmp_path, docker_client, busybox_image, name):
    def body(state):
        return sleeper(name, busybox_image, f", state: {state}")

    assert reconcile(tmp_path, body("stopped")).status == "changed"  # created, not started
    assert inspect(docker_client, name)["State"]["Status"] == "created"
    assert reconcile(tmp_path, body("running")).status == "changed"
    r = reconcile(tmp_path, body("stopped"))
    assert r.status == "changed" and not inspect(docker_client, name)["State"]["Running"]
    assert reconcile(tmp_path, body("stopped"), "plan").status == "ok"
    assert reconcile(tmp_path, body("running")).status == "changed"
    for _ in range(2):  # every run
        started = inspect(docker_client, name)["State"]["StartedAt"]
        r = reconcile(tmp_path, body("restarted"))
        assert r.status == "changed" and fields(r) == ["restart"], r.message
        assert inspect(docker_client, name)["State"]["StartedAt"] != started
    r = reconcile(tmp_path, body("absent"))
    assert r.status == "changed" and not docker_client.containers.list(
        all=True, filters={"name": name})
    r = reconcile(tmp_path, body("absent"), "plan")
    assert r.status == "ok" and r.message == "absent, as wanted"


def wait_health(docker_client, name, status, within=15.0):
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if inspect(docker_client, name)["State"]["Health"]["Status"] == status:
            return
        time.sleep(0.2)
    raise AssertionError(f"{name} never became {status}")


def test_failing_healthcheck_is_reported_restarted_then_failed(tmp_path, docker_client,
                                                               busybox_image, name):
    body = (f"  - name: {name}\n    image: '{busybox_image}'\n    command: {SLEEP}\n"
            "    healthcheck: {test: [CMD, 'false'], interval: 1s, timeout: 1s, retries: 1}\n"
            "    restart: {max: 1, within: 10m, backoff: 0s}\n")
    assert reconcile(tmp_path, body).status == "changed"
    wait_health(docker_client, name, "unhealthy")
    r = reconcile(tmp_path, body, "plan")
    assert r.status == "changed" and fields(r) == ["health"]
    assert r.changes[0].before == "unhealthy" and "last probe exit 1" in r.changes[0].reason

    started = inspect(docker_client, name)["State"]["StartedAt"]
    r = reconcile(tmp_path, body)  # the budget's one restart
    assert r.status == "changed" and "restarted" in r.outcomes[-1].message, r.message
    assert inspect(docker_client, name)["State"]["StartedAt"] != started
    wait_health(docker_client, name, "unhealthy")
    r = reconcile(tmp_path, body)  # the budget is spent: failed, with health and logs
    assert r.status == "failed"
    assert "restart budget exhausted (1 in 10m): not restarting" in r.message
    assert "is running, health unhealthy (last probe exit 1" in r.message
    assert "log lines of" in r.message and "serving" in r.message


def test_a_container_that_exits_fails_with_its_logs(tmp_path, busybox_image, name):
    body = (f"  - {{name: {name}, image: '{busybox_image}', "
            "command: [sh, -c, 'echo config missing >&2; exit 3']}\n")
    r = reconcile(tmp_path, body)
    assert r.status == "failed"
    assert (f"started {name}, but it did not stay running; {name} is exited (exit code 3)"
            in r.message)
    assert "config missing" in r.message
    assert [(o.action, o.ok) for o in r.outcomes] == [("create", True), ("start", False)]


def test_a_container_that_cannot_start_fails_clearly(tmp_path, busybox_image, name):
    body = f"  - {{name: {name}, image: '{busybox_image}', command: [no-such-program]}}\n"
    r = reconcile(tmp_path, body)
    assert r.status == "failed" and "start of" in r.message
    assert "no-such-program" in r.message and f"{name} is created" in r.message


def test_missing_image_fails_clearly(tmp_path, name):
    body = f"  - {{name: {name}, image: 'opsagent-test/nope:{uuid.uuid4().hex[:6]}'}}\n"
    r = reconcile(tmp_path, body, "plan")
    assert r.status == "changed" and fields(r) == ["image", "state"]
    r = reconcile(tmp_path, body)
    assert r.status == "failed"
    assert "is not on this host and no registry is used (give build: or load:" in r.message


def test_load_and_build(tmp_path, docker_client, busybox_image, name, image_tag):
    loaded, built = image_tag("loaded"), image_tag("built")
    docker_client.images.get(busybox_image).tag(loaded)
    with open(tmp_path / "image.tar", "wb") as fh:
        for chunk in docker_client.images.get(loaded).save(named=loaded):
            fh.write(chunk)
    docker_client.images.remove(loaded)
    (tmp_path / "ctx").mkdir()
    (tmp_path / "ctx" / "Dockerfile").write_text(
        f"FROM {busybox_image}\nRUN echo built > /built\n")
    body = (f"  - {{name: {name}, image: '{loaded}', load: image.tar, command: {SLEEP}}}\n"
            f"  - {{name: {name}-b, image: '{built}', build: {{context: ctx}}, "
            f"command: {SLEEP}}}\n")
    rc, doc = cli(tmp_path, body, "apply")
    assert rc == 0, [(r["status"], r["message"]) for r in doc["results"]]
    acts = [[o["action"] for o in r["outcomes"]] for r in doc["results"]]
    assert acts == [["load", "create", "start"], ["build", "create", "start"]]
    out = docker_client.containers.get(f"{name}-b").exec_run(["cat", "/built"]).output
    assert out == b"built\n"
    assert cli(tmp_path, body, "plan")[0] == 0

    r = reconcile(tmp_path, f"  - {{name: {name}-c, image: '{image_tag('gone')}', "
                  "load: gone.tar}\n")
    assert r.status == "failed" and "cannot read the image tar" in r.message
    assert "gone.tar: No such file or directory" in r.message
    (tmp_path / "bad.tar").write_bytes(b"not a tar")
    r = reconcile(tmp_path, f"  - {{name: {name}-c, image: '{image_tag('bad')}', "
                  "load: bad.tar}\n")
    assert r.status == "failed" and "loading" in r.message and "bad.tar" in r.message
    (tmp_path / "ctx" / "Dockerfile").write_text(f"FROM {busybox_image}\nRUN exit 7\n")
    r = reconcile(tmp_path, f"  - {{name: {name}-d, image: '{image_tag('broken')}', "
                  "build: {context: ctx}}\n")
    assert r.status == "failed" and "failed: The command '/bin/sh -c exit 7'" in r.message


def test_a_dead_daemon_fails_the_resource_quickly(tmp_path, busybox_image, name):
    t0 = time.monotonic()
    rc, doc = cli(tmp_path, f"  - {{name: {name}, image: '{busybox_image}'}}\n", "plan",
                  env={"DOCKER_HOST": f"unix://{tmp_path}/no-such.sock"})
    assert time.monotonic() - t0 < 20
    [r] = doc["results"]
    assert rc == 4 and r["status"] == "failed"
    assert "Docker Engine is not reachable at unix://" in r["message"]
    assert "No such file or directory" in r["message"]


def test_a_hung_daemon_fails_every_container_within_one_timeout(tmp_path, monkeypatch, name):
    sock_path = str(tmp_path / "hung.sock")
    hung = socket.socket(socket.AF_UNIX)
    hung.bind(sock_path)
    hung.listen(16)  # accepts connections, never answers
    monkeypatch.setenv("DOCKER_HOST", f"unix://{sock_path}")
    monkeypatch.setattr(_docker_client, "CLIENT_TIMEOUT", 1)
    body = "".join(f"  - {{name: {name}-{i}, image: 'opsagent-test/busybox:1'}}\n"
                   for i in range(5))
    pb = tmp_path / "pb.yaml"
    pb.write_text("name: ct\ncontainers:\n" + body)
    loaded = load_playbook(str(pb))
    ctx = ProviderContext(host="test", variables={}, base_dir=str(tmp_path),
                          state_dir=str(tmp_path / "state"))
    t0 = time.monotonic()
    try:
        results = run_playbook(loaded, "plan", ctx).results
    finally:
        hung.close()
    assert time.monotonic() - t0 < 5  # one timeout for the run, not one per container
    assert [r.status for r in results] == ["failed"] * 5
    assert "did not answer within 1s" in results[0].message
    assert all("not asked again in this run" in r.message for r in results[1:])
