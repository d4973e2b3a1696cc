"""The Docker client of one run, and Docker's errors translated where they enter.

One client per run (in ``ctx.cache``), made with a timeout that bounds every API call: a
daemon that is down fails fast, a hung one within ``CLIENT_TIMEOUT``. Once the daemon did not
answer, the rest of the run's containers fail at once with the same message rather than
each waiting out its own timeout (``ctx.cache`` lives for one run, so the next run asks again).
The SDK is imported here, inside functions, so playbooks without containers never load it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from agent.errors import ProviderError
from agent.providers.base import ProviderContext

CLIENT_TIMEOUT = 10  # seconds; every API call (connect, each read) is bounded by it
_CLIENT = "docker"
_DOWN = "docker-down"
T = TypeVar("T")


def client(ctx: ProviderContext) -> Any:
    """The run's docker.DockerClient, made on first use; ProviderError when no daemon answers."""
    down = ctx.cache.get(_DOWN)
    if down:
        raise ProviderError(f"{down} (not asked again in this run)")
    if _CLIENT not in ctx.cache:
        import docker

        try:  # the SDK asks the daemon for its API version here
            ctx.cache[_CLIENT] = docker.from_env(timeout=CLIENT_TIMEOUT)
        except Exception as e:  # DockerException wrapping the connection or timeout error
            raise translate(ctx, "connecting to the Docker Engine", e) from None
    return ctx.cache[_CLIENT]


def errors() -> tuple[type[BaseException], ...]:
    """What the SDK raises: its own errors, requests' and the socket's."""
    import docker.errors
    import requests.exceptions

    return docker.errors.DockerException, requests.exceptions.RequestException, OSError


@contextlib.contextmanager
def translated(ctx: ProviderContext, what: str) -> Iterator[None]:
    """Turn the SDK's and requests' exceptions raised inside into a ProviderError about `what`."""
    try:
        yield
    except ProviderError:
        raise  # already ours (ProviderTimeout is an OSError too)
    except errors() as e:
        raise translate(ctx, what, e) from None


def translate(ctx: ProviderContext, what: str, err: BaseException) -> ProviderError:
    """A ProviderError saying what failed; a daemon that is down or silent is remembered."""
    import docker.errors
    import requests.exceptions

    if isinstance(err, docker.errors.APIError):  # the daemon answered: not an outage
        return ProviderError(f"{what}: {api_message(err)}")
    cause: BaseException = err.__cause__ or err
    text = f"{err}"
    # the SDK wraps what went wrong while it asked for the API version in its own exception
    wrapped = isinstance(err, docker.errors.DockerException)
    where = _where(ctx)
    if isinstance(cause, requests.exceptions.Timeout | TimeoutError) or (
            wrapped and "timed out" in text.lower()):
        down = f"Docker Engine at {where} did not answer within {CLIENT_TIMEOUT}s"
    elif isinstance(cause, requests.exceptions.ConnectionError | ConnectionError) or (
            wrapped and any(s in text for s in ("Connection refused", "No such file",
                                                 "Connection aborted"))):
        down = f"Docker Engine is not reachable at {where} ({_short_cause(cause)})"
    else:  # not an outage: a local file, a bad answer
        return ProviderError(f"{what}: {text}")
    ctx.cache[_DOWN] = down
    return ProviderError(f"{what}: {down}")


def api_message(err: Any) -> str:
    """The daemon's own words ("Conflict. The container name ... is already in use")."""
    return str(getattr(err, "explanation", None) or err)


def _where(ctx: ProviderContext) -> str:
    import os

    c = ctx.cache.get(_CLIENT)
    if c is not None:
        return str(c.api.base_url).replace("http+docker://localhost", "unix socket")
    return os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"


def _short_cause(err: BaseException) -> str:
    inner: BaseException | None = err
    while inner is not None:  # the OSError at the bottom says it best: "Connection refused"
        if isinstance(inner, OSError) and inner.strerror:
            return inner.strerror
        inner = inner.__cause__ or inner.__context__
    text = str(err)
    return text if len(text) < 200 else text[:200] + "..."


def long_client(ctx: ProviderContext, timeout: float) -> Any:
    """A second client for slow calls (build, load: the daemon answers when it is done),
    speaking the API version the run's client already negotiated."""
    import docker

    base = client(ctx)
    with translated(ctx, "connecting to the Docker Engine"):
        return docker.from_env(timeout=max(int(timeout), CLIENT_TIMEOUT),
                               version=base.api.api_version)


def call(state_dir: str, what: str, fn: Callable[[Any], T]) -> T:
    """fn(client) outside a provider run (a runbook step): a client of its own, closed after;
    the SDK's errors raised inside become a ProviderError about `what`."""
    ctx = ProviderContext(host="", variables={}, base_dir="/", state_dir=state_dir)
    c = client(ctx)
    try:
        with translated(ctx, what):
            return fn(c)
    finally:
        c.close()
