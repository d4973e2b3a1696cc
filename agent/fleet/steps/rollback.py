"""``rollback:``: re-create a container on its previous image (or ``to``), keeping its whole
configuration, and wait until it runs (healthy, when it has a healthcheck).

The previous image is, in this order: ``to`` when given; the newest image the agent recorded
the container running before its current one (agent.providers._docker_history: written by
this step and by the containers provider whenever they replace a container's image); else the
newest other local image of the same repository created before the current one. The message
says which was used; with none of them the step fails and changes nothing.

The switch is reversible until the new container is up: the old one is stopped and renamed
aside, the new one created under its name (agent.providers._docker_clone) and started; if it
does not come up, it is removed and the old one put back as it was. The undo record names the
image it ran before, and ``undo`` rolls forward to it the same way.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from dataclasses import dataclass
from typing import Any

from agent.errors import ProviderError
from agent.fleet.models import RollbackStep
from agent.fleet.steps.base import StepContext, StepResult

WAIT_S = 60.0


@dataclass(frozen=True)
class _Target:
    image: str     # how the daemon is told: a name[:tag], or an id when no tag names it
    image_id: str
    how: str       # where it came from, for the message


class _Refused(Exception):
    """No image to go to: the step fails and nothing was changed."""


def run(spec: RollbackStep, ctx: StepContext) -> StepResult:
    from agent.providers import _docker_client as dc

    try:
        return dc.call(ctx.state_dir, f"rollback of container {spec.container}",
                       lambda client: _rollback(client.api, spec, ctx))
    except ProviderError as e:
        return StepResult("failed", str(e))


def undo(record: dict[str, Any], ctx: StepContext) -> StepResult:
    """Roll forward: the container back on the image it ran before the rollback."""
    return run(RollbackStep(container=record["container"], to=record["image"]), ctx)


def _rollback(api: Any, spec: RollbackStep, ctx: StepContext) -> StepResult:
    import docker.errors

    from agent.providers._docker_clone import image_name

    name = spec.container
    try:
        attrs = api.inspect_container(name)
    except docker.errors.NotFound:
        return StepResult("failed", f"no container {name} on this host")
    now = image_name(api, attrs["Image"], attrs["Config"].get("Image") or "")
    try:
        target = _target(api, spec, attrs, now, ctx.state_dir)
    except _Refused as e:
        return StepResult("failed", f"{e}; nothing was changed")
    if target.image_id == attrs["Image"]:
        return StepResult("ok", f"{name} already runs {target.image} ({target.how})")
    if ctx.check:
        return StepResult("would-change", f"would re-create {name} on {target.image} "
                          f"(now on {now}); {target.how}")
    error = _switch(api, attrs, target.image, ctx)
    if error is not None:
        return StepResult("failed", error)
    state = api.inspect_container(name)["State"]
    health = ", healthy" if state.get("Health") else ""
    return StepResult("changed", f"re-created {name} on {target.image} (was on {now}; "
                      f"{target.how}): running{health}" + _managed_note(attrs),
                      undo={"container": name, "image": now})


def _target(api: Any, spec: RollbackStep, attrs: dict[str, Any], now: str, state_dir: str
            ) -> _Target:
    import docker.errors

    from agent.providers._docker_clone import image_name
    from agent.providers._docker_history import read_history

    name = spec.container
    if spec.to is not None:
        try:
            return _Target(spec.to, api.inspect_image(spec.to)["Id"], "as given by to:")
        except docker.errors.ImageNotFound:
            raise _Refused(f"image {spec.to} is not on this host (no registry is used: "
                           "docker load or build it first)") from None
    for past in read_history(state_dir, name):
        if past.image_id == attrs["Image"]:
            continue
        try:
            api.inspect_image(past.image_id)
        except docker.errors.ImageNotFound:
            raise _Refused(f"{name} ran {past.ref} ({past.image_id[7:19]}) before {now}, "
                           "but that image is no longer on this host (give to:)") from None
        return _Target(image_name(api, past.image_id, past.ref), past.image_id,
                       "the image it ran before, from the agent's image history")
    return _older_local(api, name, attrs, now)


def _older_local(api: Any, name: str, attrs: dict[str, Any], now: str) -> _Target:
    """The newest other local image of the current image's repositories that was created
    before it: what "the version before" means when no history was recorded."""
    current = api.inspect_image(attrs["Image"])
    created = _created(current)
    repos = sorted({_repository(t) for t in [attrs["Config"].get("Image") or "",
                                             *(current.get("RepoTags") or [])]} - {""})
    best: tuple[dt.datetime, str, str] | None = None
    for repo in repos:
        for image in api.images(name=repo):
            tags = sorted(t for t in image.get("RepoTags") or [] if _repository(t) == repo)
            if image["Id"] == attrs["Image"] or not tags:
                continue
            when = _created(api.inspect_image(image["Id"]))  # listings round to seconds
            if when < created and (best is None or when > best[0]):
                best = (when, tags[0], str(image["Id"]))
    if best is None:
        where = ", ".join(repos) or "its image (it has no repository name)"
        raise _Refused(f"no previous image for {name}: the agent recorded none, and no other "
                       f"local image of {where} is older than {now} (give to:)")
    return _Target(best[1], best[2], f"no image history recorded: the newest other local "
                   f"image of {_repository(best[1])} created before {now} "
                   f"({best[0]:%Y-%m-%d %H:%M:%S}Z)")


def _repository(ref: str) -> str:
    """"registry:5000/app:1.4" -> "registry:5000/app"; "" for an image id."""
    if ref.startswith("sha256:") or not ref:
        return ""
    ref = ref.split("@", 1)[0]
    head, _, tail = ref.rpartition("/")
    return f"{head}/{tail.split(':', 1)[0]}" if head else tail.split(":", 1)[0]


def _created(image: dict[str, Any]) -> dt.datetime:
    """An image inspect's Created ("2024-05-01T10:00:00.123456789Z"), to the microsecond."""
    text = str(image.get("Created") or "1970-01-01T00:00:00Z").rstrip("Z")
    head, _, frac = text.partition(".")
    return dt.datetime.fromisoformat(f"{head}.{(frac + '000000')[:6]}")


def _switch(api: Any, attrs: dict[str, Any], image: str, ctx: StepContext) -> str | None:
    """Stop the container, set it aside, create and start its copy on `image`; None once it
    is up, else why not (and the old container is back as it was)."""
    import docker.errors

    from agent.providers._docker_clone import create_clone, stop_timeout, wait_up
    from agent.providers._docker_history import record_replaced

    name, old_id = attrs["Name"].lstrip("/"), attrs["Id"]
    was_running = bool(attrs["State"].get("Running"))
    try:
        old_image = api.inspect_image(attrs["Image"])
    except docker.errors.ImageNotFound:  # forced away: keep every inherited value
        old_image = None
    if was_running:
        api.stop(old_id, timeout=int(min(stop_timeout(attrs), ctx.remaining(WAIT_S))))
    api.rename(old_id, f"{name}-rollback-{old_id[:12]}")
    new_id: str | None = None
    try:
        try:
            new_id = create_clone(api, attrs, name, image, old_image=old_image)
            api.start(new_id)
            error = wait_up(api, name, ctx.remaining(WAIT_S))
        except docker.errors.APIError as e:
            from agent.providers._docker_client import api_message

            error = f"re-creating {name} on {image} failed: {api_message(e)}"
    except BaseException:  # the daemon went away mid-way: put back what can be put back
        with contextlib.suppress(Exception):
            _put_back(api, old_id, new_id, name, was_running)
        raise
    if error is None:
        record_replaced(ctx.state_dir, name, attrs)
        api.remove_container(old_id, force=True)  # its volumes stay: the new one uses them
        return None
    _put_back(api, old_id, new_id, name, was_running)
    back = "running again" if was_running else "back as it was"
    return f"{error}\n{name} is {back} on {attrs['Config'].get('Image')}"


def _put_back(api: Any, old_id: str, new_id: str | None, name: str, was_running: bool
              ) -> None:
    if new_id is not None:
        api.remove_container(new_id, force=True)
    api.rename(old_id, name)
    if was_running:
        api.start(old_id)


def _managed_note(attrs: dict[str, Any]) -> str:
    from agent.providers._docker_config import MANAGED_LABEL

    if (attrs["Config"].get("Labels") or {}).get(MANAGED_LABEL) != "true":
        return ""
    return ("; note: a playbook manages this container: the agent re-creates it on the "
            "playbook's image at its next reconcile unless the playbook changes too")
