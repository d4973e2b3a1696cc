"""Redis backups on a real server: BGSAVE and a copy of its RDB (or redis-cli --rdb when the
file is out of reach), restored into a fresh redis-server that loads it."""

from __future__ import annotations

import pytest

from agent.backups.restore import restore
from agent.backups.run import list_backups, run_backup
from agent.backups.verify import verify_run
from tests.backups.specs import backup_spec
from tests.harness.redis import RedisServer

pytestmark = pytest.mark.e2e
PASSWORD = "redis-s3cret"


def fill(client, n=5000):
    pipe = client.pipeline(transaction=False)
    for i in range(n):
        pipe.set(f"key:{i}", f"value {i} " * 3)
    pipe.hset("profile", mapping={"name": "ada", "lang": "ünïcode"})
    pipe.rpush("queue", *[str(i) for i in range(100)])
    pipe.zadd("ranks", {"a": 1.5, "b": 2.5})
    pipe.execute()


def snapshot(client):
    return (client.dbsize(), client.get("key:4321"), client.hgetall("profile"),
            client.lrange("queue", 0, -1), client.zrange("ranks", 0, -1, withscores=True))


@pytest.fixture
def server():
    srv = RedisServer(password=PASSWORD).start()
    try:
        yield srv
    finally:
        srv.stop()


def loaded_copy(rdb_path):
    """A fresh redis-server started on the restored RDB file."""
    folder, name = rdb_path.parent, rdb_path.name
    return RedisServer("--dir", str(folder), "--dbfilename", name, password=PASSWORD).start()


def test_bgsave_copy_restores_into_a_fresh_server(server, tmp_path, monkeypatch):
    monkeypatch.setenv("REDIS_PW", PASSWORD)
    client = server.client()
    fill(client)
    before = snapshot(client)
    assert client.info("persistence")["rdb_saves"] == 0
    spec = backup_spec(tmp_path / "dest", {"redis": {"port": server.port,
                                                     "password_env": "REDIS_PW"}}, verify={})
    res = run_backup(spec)
    assert res.ok and res.verified, res.error
    art = res.artefacts[0]
    assert art.kind == "redis-rdb" and art.meta["via"] == "BGSAVE + copy"
    assert art.meta["rdb"] == f"{server.dir}/dump.rdb"
    assert client.info("persistence")["rdb_saves"] == 1
    assert list_backups(spec)[-1].tools["redis"] == client.info("server")["redis_version"]
    client.set("key:4321", "changed after the backup")

    target = tmp_path / "restored" / "dump.rdb"
    target.parent.mkdir()
    restore(spec, to=str(target), yes=True)
    copy = loaded_copy(target)
    try:
        assert snapshot(copy.client()) == before
    finally:
        copy.stop()

    # a second run right away (same second as the first save) still waits for its own save
    res2 = run_backup(spec)
    assert res2.ok and client.info("persistence")["rdb_saves"] == 2
    assert len(list_backups(spec)) == 2


def test_without_config_access_the_rdb_comes_through_redis_cli(tmp_path, monkeypatch):
    # (a replica's full sync waits repl-diskless-sync-delay, 5 s by default, for company)
    srv = RedisServer("--rename-command", "CONFIG", "", "--repl-diskless-sync-delay", "0",
                      password=PASSWORD).start()
    try:
        monkeypatch.setenv("REDIS_PW", PASSWORD)
        fill(srv.client(), 2000)
        before = snapshot(srv.client())
        spec = backup_spec(tmp_path / "dest", {"redis": {"port": srv.port,
                                                         "password_env": "REDIS_PW"}})
        res = run_backup(spec)
        assert res.ok, res.error
        assert res.artefacts[0].meta["via"] == "redis-cli --rdb"
        assert "redis-cli" in list_backups(spec)[-1].tools
        assert verify_run(spec).ok
        target = tmp_path / "r" / "dump.rdb"
        target.parent.mkdir()
        restore(spec, to=str(target), yes=True)
    finally:
        srv.stop()
    copy = loaded_copy(target)
    try:
        assert snapshot(copy.client()) == before
    finally:
        copy.stop()


def test_a_wrong_password_fails_without_showing_it(server, tmp_path, monkeypatch):
    monkeypatch.setenv("REDIS_PW", "not-the-password")
    spec = backup_spec(tmp_path / "dest", {"redis": {"port": server.port,
                                                     "password_env": "REDIS_PW"}})
    res = run_backup(spec)
    assert not res.ok and "not-the-password" not in res.error
    assert f"127.0.0.1:{server.port}" in res.error
    assert list_backups(spec) == []
