"""How the containers provider changes a host: steps in a fixed order, each acting on a
fresh inspect, never on the plan's.

    absent          remove (force) and stop there
    image missing   build: or load: it, or fail clearly (no registry is used)
    drifted         remove, then create from the spec (labelled with its config hash)
    stopped         stop a running container
    running         start a stopped one, unpause a paused one, restart an unhealthy one or,
                    for state: restarted and notified handlers, a running one; then watch it
                    for SETTLE seconds: one that dies at once did not start

Starts and restarts of a container that already existed count against the spec's restart
budget (kept in the state directory); a container created in this run is started freely.
Every failure says what was tried and carries the container's state, health and last log
lines. Steps done before a failure stay in the outcomes.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any, NoReturn

from agent.errors import ProviderError
from agent.playbook.models import ContainerSpec
from agent.providers import _budget
from agent.providers import _docker_client as dc
from agent.providers import _docker_config as cfg
from agent.providers._budget import Verdict
from agent.providers._docker_history import record_replaced
from agent.providers.base import RESTART, Outcome, ProviderContext
from agent.providers.containers import (
    RUNNING_STATES,
    ContainerObserved,
    forget_image,
    last_probe,
    observe,
)

SETTLE = 0.5  # a started container must still run this long after start
_POLL = 0.1
STOP_TIMEOUT = 10  # seconds Docker waits after SIGTERM before SIGKILL
LOG_LINES = 20
MAX_INLINE_BACKOFF_S = 30.0  # longer backoffs fail the run instead of blocking it
SLOW_CALL_TIMEOUT = 120.0  # build and load, unless the resource's timeout says otherwise


class _Failed(Exception):
    def __init__(self, outcome: Outcome) -> None:
        super().__init__(outcome.message)
        self.outcome = outcome


def apply_container(spec: ContainerSpec, fields: set[str], ctx: ProviderContext
                    ) -> list[Outcome]:
    steps = _Steps(spec, ctx)
    try:
        steps.client = dc.client(ctx)
        steps.run(fields)
    except _Failed as f:
        steps.done.append(f.outcome)
    except ProviderError as e:
        steps.done.append(Outcome(steps.action, False, str(e)))
    except dc.errors() as e:
        err = dc.translate(ctx, f"{steps.action} of container {spec.name}", e)
        steps.done.append(Outcome(steps.action, False, str(err)))
    return steps.done


class _Steps:
    def __init__(self, spec: ContainerSpec, ctx: ProviderContext) -> None:
        self.spec, self.ctx = spec, ctx
        self.client: Any = None
        self.done: list[Outcome] = []
        self.action = "inspect"

    def run(self, fields: set[str]) -> None:
        spec = self.spec
        forget_image(self.ctx, spec.image)
        o = self.observe()
        if spec.state == "absent":
            if o.attrs is not None:
                self.act("remove", lambda: self.api.remove_container(spec.name, force=True),
                         f"removed container {spec.name} (it was {o.status})")
            return
        if o.image is None:
            self.provide_image()
            o = self.observe()
        drift = cfg.drifted(spec, o.attrs, o.image) if o.attrs is not None else []
        if drift:
            if o.attrs is not None and any(d[0] == "image" for d in drift):
                record_replaced(self.ctx.state_dir, spec.name, o.attrs)  # for rollbacks
            what = ", ".join(d[0] for d in drift)
            self.act("remove", lambda: self.api.remove_container(spec.name, force=True),
                     f"removed {spec.name} to recreate it ({what} changed)")
        created = o.attrs is None or bool(drift)
        if created:
            self.act("create", self.create,
                     f"created {spec.name} from {spec.image}"
                     + (f" ({cfg.short_id(o.image.id)})" if o.image else ""))
        o = self.observe()
        if spec.state == "stopped":
            if o.status in RUNNING_STATES:
                self.act("stop", lambda: self.api.stop(spec.name, timeout=STOP_TIMEOUT),
                         f"stopped {spec.name}")
            return
        self.start_or_restart(o, created, RESTART in fields)

    @property
    def api(self) -> Any:
        return self.client.api

    def observe(self) -> ContainerObserved:
        return observe(self.spec, self.ctx)

    def start_or_restart(self, o: ContainerObserved, created: bool, notified: bool) -> None:
        """Bring a container that should run to running (restarting it when asked to)."""
        name = self.spec.name
        if o.status == "restarting":
            policy = o.attrs["HostConfig"]["RestartPolicy"]["Name"] if o.attrs else "?"
            self.fail("start", self.failure(f"{name} keeps restarting under its restart "
                                            f"policy ({policy}): its process exits"))
        if o.status == "paused":
            verdict = self.take_budget("unpause")
            self.act("unpause", lambda: self.api.unpause(name),
                     f"unpaused {name}{verdict.note}", settle=True)
        elif o.status != "running" and created:
            self.act("start", lambda: self.api.start(name), f"started {name}", settle=True)
        elif o.status != "running":
            verdict = self.take_budget("start")
            self.act("start", lambda: self.api.start(name),
                     f"started {name}, which was {o.status}{verdict.note}", settle=True)
        elif not created and (self.spec.state == "restarted" or notified
                              or o.health == "unhealthy"):
            why = "it was unhealthy" if o.health == "unhealthy" else (
                "state: restarted" if self.spec.state == "restarted" else "notified")
            verdict = self.take_budget("restart")
            self.act("restart", lambda: self.api.restart(name, timeout=STOP_TIMEOUT),
                     f"restarted {name}: {why}{verdict.note}", settle=True)

    def create(self) -> None:
        spec, api = self.spec, self.api
        bindings = cfg.port_bindings(spec)
        host_config = api.create_host_config(
            port_bindings=bindings or None, binds=list(spec.volumes or []) or None,
            restart_policy={"Name": spec.restart_policy} if spec.restart_policy else None)
        api.create_container(
            spec.image, command=spec.command, name=spec.name, environment=spec.env or None,
            labels=cfg.labels(spec), ports=[tuple(p.split("/")) for p in bindings] or None,
            host_config=host_config, healthcheck=cfg.healthcheck(spec), detach=True)

    def act(self, action: str, fn: Callable[[], Any], message: str, settle: bool = False
            ) -> None:
        """One Docker call; the daemon refusing it fails the resource with the container's
        state and logs. settle: the call starts the container, which must then stay up."""
        import docker.errors

        self.action = action
        try:
            fn()
        except docker.errors.APIError as e:
            self.fail(action, self.failure(f"{action} of {self.spec.name} failed: "
                                           f"{dc.api_message(e)}"))
        if settle:
            self.settle(action, message)
        self.done.append(Outcome(action, True, message))

    def settle(self, action: str, message: str) -> None:
        """Watch a started container for SETTLE seconds: one that dies at once did not start."""
        deadline = time.monotonic() + SETTLE
        while True:
            o = self.observe()
            if o.status != "running":
                self.fail(action, self.failure(f"{message}, but it did not stay running"))
            if time.monotonic() >= deadline:
                return
            time.sleep(_POLL)

    def take_budget(self, action: str) -> Verdict:
        """Spend one attempt of the restart budget, waiting out a short backoff first."""
        spec = self.spec
        self.action = action
        limit = min(MAX_INLINE_BACKOFF_S, (spec.timeout or SLOW_CALL_TIMEOUT) / 2)
        verdict = _budget.spend(self.ctx, f"containers:{spec.name}", spec.restart, limit)
        if not verdict.allowed:
            detail = f" ({verdict.detail})" if verdict.detail else ""
            verb = {"start": "starting", "restart": "restarting"}.get(action, action + "ing")
            self.fail(action, self.failure(f"{verdict.message}: not {verb} {spec.name}{detail}"))
        return verdict

    def provide_image(self) -> None:
        spec = self.spec
        if spec.build is not None:
            self.build()
        elif spec.load is not None:
            self.load()
        else:
            self.fail("image", f"image {spec.image} is not on this host and no registry is "
                      "used (give build: or load:, or docker load it first)")
        forget_image(self.ctx, spec.image)
        if self.observe().image is None:
            self.fail(self.action, f"{self.action} did not produce the image {spec.image}")

    def _path(self, path: str) -> str:
        return path if os.path.isabs(path) else os.path.join(self.ctx.base_dir, path)

    def build(self) -> None:
        import docker.errors

        spec = self.spec
        assert spec.build is not None
        self.action = "build"
        context = self._path(spec.build.context)
        if not os.path.isdir(context):
            self.fail("build", f"build context {context} is not a directory")
        slow = dc.long_client(self.ctx, spec.timeout or SLOW_CALL_TIMEOUT)
        try:
            slow.images.build(path=context, dockerfile=spec.build.dockerfile, tag=spec.image,
                              rm=True, forcerm=True, pull=False)
        except docker.errors.BuildError as e:
            out = [str(c.get("stream") or c.get("error") or "").rstrip() for c in e.build_log]
            tail = "\n".join(f"  {ln}" for ln in [ln for ln in out if ln][-LOG_LINES:])
            self.fail("build", f"building {spec.image} from {context} failed: {e.msg}"
                      + (f"\nlast build output:\n{tail}" if tail else ""))
        except docker.errors.APIError as e:
            self.fail("build", f"building {spec.image} from {context} failed: "
                      f"{dc.api_message(e)}")
        finally:
            slow.close()
        self.done.append(Outcome("build", True, f"built {spec.image} from {context}"))

    def load(self) -> None:
        import docker.errors

        spec = self.spec
        assert spec.load is not None
        self.action = "load"
        path = self._path(spec.load)
        slow = dc.long_client(self.ctx, spec.timeout or SLOW_CALL_TIMEOUT)
        try:
            fh = open(path, "rb")  # noqa: SIM115 - its own try: a daemon error is an OSError too
        except OSError as e:
            slow.close()
            self.fail("load", f"cannot read the image tar {path}: {e.strerror}")
        try:
            with fh:  # streamed to the daemon, never read into memory
                images = slow.images.load(fh)
        except (docker.errors.ImageLoadError, docker.errors.APIError) as e:
            self.fail("load", f"loading {path} failed: {dc.api_message(e)}")
        finally:
            slow.close()
        tags = sorted(t for i in images for t in i.tags)
        if spec.image not in tags:
            self.fail("load", f"{path} does not hold the image {spec.image} (it holds "
                      f"{', '.join(tags) or 'no tagged image'})")
        self.done.append(Outcome("load", True, f"loaded {spec.image} from {path}"))

    def failure(self, what: str) -> str:
        return describe_failure(self.api, self.spec.name, what)

    def fail(self, action: str, message: str) -> NoReturn:
        raise _Failed(Outcome(action, False, message))


def describe_failure(api: Any, name: str, what: str) -> str:
    """`what`, then the container's state, health and last log lines."""
    import docker.errors

    try:
        attrs = api.inspect_container(name)
    except docker.errors.NotFound:
        return f"{what}; the container does not exist"
    except Exception:  # the details are a courtesy; the failure is what matters
        return what
    st = attrs["State"]
    text = f"{what}; {name} is {st.get('Status')}"
    if st.get("Status") in ("exited", "dead", "created", "restarting"):
        error = st.get("Error") or ""
        text += f" (exit code {st.get('ExitCode')}"
        text += f", error: {error})" if error and error not in what else ")"
    if st.get("Health"):
        text += f", health {st['Health'].get('Status')} ({last_probe(attrs)})"
    return text + _logs(api, name)


def _logs(api: Any, name: str) -> str:
    try:
        raw = api.logs(name, tail=LOG_LINES)
    except Exception:  # as above: never hide the failure behind a second one
        return ""
    lines = raw.decode(errors="replace").rstrip().splitlines()
    if not lines:
        return "; no log output"
    return f"\nlast {len(lines)} log lines of {name}:\n" + "\n".join(
        f"  {ln}" for ln in lines)
