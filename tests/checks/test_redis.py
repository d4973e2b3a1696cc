"""The redis probe against Debian's redis-server, started per test (tests/harness/redis.py)."""

from __future__ import annotations

import pytest

from tests.checks.conftest import check
from tests.harness.redis import RedisServer

PASSWORD = "r3dis-Pw-77"


def redis_check(server, **fields):
    return check(redis={"host": "127.0.0.1", "port": server.port, **fields})


def test_ping_is_healthy(redis_server):
    out = redis_check(redis_server)
    assert out.status == "healthy", out.message
    assert out.message.startswith(f"redis 127.0.0.1:{redis_server.port}: PONG; ")
    assert out.values["connected_clients"] >= 1
    assert out.values["maxmemory"] == 0.0 and "memory_percent" not in out.values
    assert "(no maxmemory)" in out.message


def test_memory_near_maxmemory_is_degraded():
    server = RedisServer("--maxmemory", "4mb", "--maxmemory-policy", "noeviction").start()
    try:
        client = server.client()
        for i in range(25):
            client.set(f"fill:{i}", b"x" * 100_000)  # ~2.5 MB on top of the ~1 MB baseline
        out = redis_check(server, max_memory_percent=50)
        info = client.info("memory")
        assert out.status == "degraded", out.message
        assert out.values["maxmemory"] == 4 * 1024 * 1024
        assert out.values["memory_percent"] == pytest.approx(
            100 * info["used_memory"] / info["maxmemory"], abs=1.0)
        assert out.values["memory_percent"] > 60
        assert "above 50%" in out.message
        assert redis_check(server, max_memory_percent=99).status == "healthy"
    finally:
        server.stop()


def test_many_clients_are_degraded(redis_server):
    clients = [redis_server.client() for _ in range(15)]
    for c in clients:
        c.ping()  # connects
    try:
        out = redis_check(redis_server, max_clients=10)
        assert out.status == "degraded", out.message
        assert out.values["connected_clients"] >= 16
        assert "above max_clients 10" in out.message
        assert redis_check(redis_server, max_clients=100).status == "healthy"
    finally:
        for c in clients:
            c.close()


def test_a_server_that_is_down_is_unhealthy():
    server = RedisServer().start()
    server.stop()
    out = redis_check(server)
    assert out.status == "unhealthy"
    assert "Connection refused" in out.message
    assert out.latency_ms < 1000  # no retries


def test_password_from_env_and_url_and_never_in_messages(monkeypatch):
    server = RedisServer(password=PASSWORD).start()
    try:
        monkeypatch.setenv("CHECK_REDIS_PW", PASSWORD)
        assert redis_check(server, password_env="CHECK_REDIS_PW").status == "healthy"
        no_auth = redis_check(server)
        assert no_auth.status == "unhealthy"
        assert "Authentication required" in no_auth.message
        monkeypatch.setenv("CHECK_REDIS_URL", f"redis://:wrong-{PASSWORD}@127.0.0.1:{server.port}/0")
        wrong = check(redis={"url_env": "CHECK_REDIS_URL"})
        assert wrong.status == "unhealthy"
        assert wrong.message.startswith(f"redis 127.0.0.1:{server.port}: ")
        assert PASSWORD not in wrong.message
        monkeypatch.setenv("CHECK_REDIS_URL", f"redis://:{PASSWORD}@127.0.0.1:{server.port}/0")
        assert check(redis={"url_env": "CHECK_REDIS_URL"}).status == "healthy"
    finally:
        server.stop()


def test_unset_variables_are_unhealthy(monkeypatch):
    monkeypatch.delenv("CHECK_REDIS_URL", raising=False)
    out = check(redis={"url_env": "CHECK_REDIS_URL"})
    assert out.status == "unhealthy"
    assert out.message == "environment variable CHECK_REDIS_URL (url_env) is not set"


def test_a_malformed_url_is_not_quoted(monkeypatch):
    monkeypatch.setenv("CHECK_REDIS_URL", f"http://:{PASSWORD}@127.0.0.1:6379/0")
    out = check(redis={"url_env": "CHECK_REDIS_URL"})
    assert out.status == "unhealthy"
    assert out.message == "the URL in CHECK_REDIS_URL (url_env) is not a valid Redis URL"
