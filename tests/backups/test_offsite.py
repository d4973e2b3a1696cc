"""Offsite copies against a real sshd (SFTP) and moto's standalone S3 server."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import socket
import stat
import subprocess
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pydantic import ValidationError

from agent.backups import IntegrityError, offsite, offsite_s3
from agent.backups.offsite import (
    HostKeyRefused,
    copy_run,
    list_remote,
    plan_remote,
    prune_remote,
    verify_remote,
)
from agent.backups.offsite_sftp import SftpRemote
from agent.playbook.models.backups import BackupSpec, Offsite
from tests.harness.collector import free_port
from tests.harness.sshd import Sshd, keygen

NAME = "db-daily"
root_only = pytest.mark.skipif(os.geteuid() != 0, reason="sshd needs root to log users in")


@pytest.fixture(scope="module")
def sshd():
    if os.geteuid() != 0:
        pytest.skip("sshd needs root to log users in")
    server = Sshd().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def s3server():
    from tests.harness.s3 import S3Server

    server = S3Server().start()
    yield server
    server.stop()


@pytest.fixture
def bucket(s3server, monkeypatch, request):
    name = f"bk-{request.node.name.replace('_', '-')[:40].lower()}"
    s3server.client().create_bucket(Bucket=name)
    monkeypatch.setenv("TEST_S3_KEY", "testing")
    monkeypatch.setenv("TEST_S3_SECRET", "testing")
    return name


def make_run(dest: Path, started: datetime, files: dict[str, bytes] | None = None) -> Path:
    """A finished run as store.py writes it: artefact files and a format-1 manifest."""
    run_id = f"{started:%Y%m%dT%H%M%SZ}-{hashlib.sha256(started.isoformat().encode()).hexdigest()[:4]}"
    run = dest / NAME / run_id
    run.mkdir(parents=True)
    files = files if files is not None else {"db-app.dump.zst": os.urandom(70_000),
                                             "globals.sql.zst": b"roles\n" * 100}
    arts = []
    for fname, data in files.items():
        (run / fname).write_bytes(data)
        arts.append({"name": f"postgres/{fname.split('.')[0]}", "file": fname,
                     "bytes_stored": len(data), "sha256": hashlib.sha256(data).hexdigest()})
    (run / "manifest.json").write_text(json.dumps({
        "format": 1, "backup": NAME, "run_id": run_id,
        "started": started.isoformat().replace("+00:00", "Z"), "artefacts": arts}))
    return run


def spec(tmp_path: Path, sftp: dict | None = None, s3: dict | None = None,
         retention: dict | None = None) -> BackupSpec:
    offsite_doc = {k: v for k, v in (("sftp", sftp), ("s3", s3)) if v is not None}
    return BackupSpec.model_validate({
        "name": NAME, "schedule": "0 2 * * *", "source": {"paths": ["/srv"]},
        "destination": str(tmp_path / "dest"), "retention": retention,
        "offsite": offsite_doc})


def sftp_target(server: Sshd, tmp_path: Path, **over) -> dict:
    known = tmp_path / "known_hosts"
    if not known.exists() and "known_hosts" not in over:
        known.write_text(server.host_key_line())
    return {"host": "127.0.0.1", "port": server.port, "user": "root",
            "key_file": str(server.client_key), "known_hosts": str(known),
            "path": str(tmp_path / "remote"), "timeout": "10s", **over}


def s3_target(server, bucket: str, **over) -> dict:
    return {"bucket": bucket, "prefix": "/web01/", "endpoint_url": server.url,
            "region": "us-east-1", "access_key_env": "TEST_S3_KEY",
            "secret_key_env": "TEST_S3_SECRET", "timeout": "10s", **over}


T0 = datetime(2026, 11, 20, 2, 0, tzinfo=UTC)


# -- SFTP ----------------------------------------------------------------------------------

@root_only
def test_sftp_copy_is_verified_listed_and_resumable(sshd, tmp_path):
    run = make_run(tmp_path / "dest", T0)
    s = spec(tmp_path, sftp=sftp_target(sshd, tmp_path))
    result = copy_run(s, run)
    assert result.ok, result
    t = result.targets[0]
    assert t.url == f"sftp://root@127.0.0.1:{sshd.port}{tmp_path}/remote/{NAME}/{run.name}/"
    assert [f.path for f in t.files] == ["db-app.dump.zst", "globals.sql.zst", "manifest.json"]
    assert not any(f.already_there for f in t.files)
    remote = tmp_path / "remote" / NAME / run.name
    for f in ("db-app.dump.zst", "globals.sql.zst", "manifest.json"):
        assert (remote / f).read_bytes() == (run / f).read_bytes()
        assert stat.S_IMODE((remote / f).stat().st_mode) == 0o600
    assert sorted(p.name for p in remote.iterdir()) == [
        "db-app.dump.zst", "globals.sql.zst", "manifest.json"]  # no .part left behind

    again = copy_run(s, run)
    assert again.ok and all(f.already_there for f in again.targets[0].files)

    [listing] = list_remote(s)
    assert listing.error is None
    assert [(r.id, r.time, r.complete) for r in listing.runs] == [(run.name, T0, True)]
    [check] = verify_remote(s, run.name)
    assert check.ok and check.checked == 2 and check.problems == ()

    # an interrupted copy: everything but the manifest; it lists as incomplete, then resumes
    (remote / "manifest.json").unlink()
    [listing] = list_remote(s)
    assert [(r.id, r.complete) for r in listing.runs] == [(run.name, False)]
    [check] = verify_remote(s, run.name)
    assert not check.ok and "no manifest.json" in check.problems[0]
    resumed = copy_run(s, run).targets[0]
    assert [(f.path, f.already_there) for f in resumed.files] == [
        ("db-app.dump.zst", True), ("globals.sql.zst", True), ("manifest.json", False)]
    assert list_remote(s)[0].runs[0].complete


@root_only
def test_sftp_corruption_is_detected_and_repaired(sshd, tmp_path):
    run = make_run(tmp_path / "dest", T0)
    s = spec(tmp_path, sftp=sftp_target(sshd, tmp_path))
    assert copy_run(s, run).ok
    target = tmp_path / "remote" / NAME / run.name / "db-app.dump.zst"
    data = bytearray(target.read_bytes())
    data[1234] ^= 0x01
    target.write_bytes(bytes(data))

    [check] = verify_remote(s, run.name)
    assert not check.ok
    bad = hashlib.sha256(bytes(data)).hexdigest()
    good = hashlib.sha256((run / "db-app.dump.zst").read_bytes()).hexdigest()
    assert check.problems == (
        f"{run.name}/db-app.dump.zst: sha256 is {bad}, the manifest says {good}",)

    repaired = copy_run(s, run).targets[0]
    assert [f.path for f in repaired.files if not f.already_there] == ["db-app.dump.zst"]
    assert verify_remote(s, run.name)[0].ok


@root_only
def test_a_damaged_local_run_is_not_copied(sshd, tmp_path):
    run = make_run(tmp_path / "dest", T0)
    (run / "globals.sql.zst").write_bytes(b"tampered")
    s = spec(tmp_path, sftp=sftp_target(sshd, tmp_path))
    [t] = copy_run(s, run).targets
    assert not t.ok and "the local run is damaged" in (t.error or "")
    assert not (tmp_path / "remote").exists()


def fingerprint(pub: Path) -> str:
    out = subprocess.run(["ssh-keygen", "-lf", str(pub)], capture_output=True, text=True,
                         check=True).stdout
    return out.split()[1]  # "256 SHA256:... comment (ED25519)"


@root_only
def test_unknown_host_key_is_refused(sshd, tmp_path):
    run = make_run(tmp_path / "dest", T0)
    known = tmp_path / "empty_known_hosts"
    known.write_text("")
    s = spec(tmp_path, sftp=sftp_target(sshd, tmp_path, known_hosts=str(known)))
    [t] = copy_run(s, run).targets
    assert not t.ok
    assert f"[127.0.0.1]:{sshd.port}: host key ssh-ed25519 " in t.error
    assert fingerprint(sshd.host_key.with_suffix(".pub")) in t.error
    assert "is not in" in t.error and "accept_new" in t.error
    assert known.read_text() == "" and not (tmp_path / "remote").exists()
    with pytest.raises(HostKeyRefused):
        SftpRemote(s.offsite.sftp)


@root_only
def test_accept_new_records_the_key_and_then_checks_it(sshd, tmp_path):
    run = make_run(tmp_path / "dest", T0)
    known = tmp_path / "ssh" / "known_hosts"  # neither the file nor its folder exist yet
    s = spec(tmp_path, sftp=sftp_target(sshd, tmp_path, known_hosts=str(known),
                                        accept_new=True))
    assert copy_run(s, run).ok
    assert known.read_text() == sshd.host_key_line()
    assert stat.S_IMODE(known.stat().st_mode) == 0o600
    assert copy_run(s, run).ok
    assert known.read_text() == sshd.host_key_line()  # known now: not appended twice


@root_only
def test_changed_host_key_is_refused_even_with_accept_new(sshd, tmp_path):
    run = make_run(tmp_path / "dest", T0)
    other = keygen(tmp_path / "other_host_key")
    known = tmp_path / "known_hosts"
    known.write_text(sshd.host_key_line(other.with_suffix(".pub")))
    before = known.read_text()
    for accept_new in (False, True):
        s = spec(tmp_path, sftp=sftp_target(sshd, tmp_path, accept_new=accept_new))
        [t] = copy_run(s, run).targets
        assert not t.ok and "the host key changed" in t.error
        assert fingerprint(other.with_suffix(".pub")) in t.error
        assert fingerprint(sshd.host_key.with_suffix(".pub")) in t.error
        assert f"ssh-keygen -R '[127.0.0.1]:{sshd.port}'" in t.error
        with pytest.raises(HostKeyRefused):
            SftpRemote(s.offsite.sftp)
    assert known.read_text() == before and not (tmp_path / "remote").exists()


@root_only
def test_wrong_client_key_fails_authentication(sshd, tmp_path):
    run = make_run(tmp_path / "dest", T0)
    stranger = keygen(tmp_path / "stranger")
    s = spec(tmp_path, sftp=sftp_target(sshd, tmp_path, key_file=str(stranger)))
    [t] = copy_run(s, run).targets
    assert not t.ok and f"authentication as root with {stranger} failed" in t.error


def test_a_server_that_never_answers_times_out(tmp_path):
    port = free_port()
    listener = socket.socket()
    listener.bind(("127.0.0.1", port))
    listener.listen(1)
    accepted: list[socket.socket] = []
    threading.Thread(target=lambda: accepted.append(listener.accept()[0]), daemon=True).start()
    run = make_run(tmp_path / "dest", T0)
    known = tmp_path / "known_hosts"
    known.write_text("")
    s = spec(tmp_path, sftp={"host": "127.0.0.1", "port": port, "user": "root",
                             "known_hosts": str(known), "path": "/srv/b", "timeout": "1s"})
    start = time.monotonic()
    [t] = copy_run(s, run).targets
    elapsed = time.monotonic() - start
    listener.close()
    for c in accepted:
        c.close()
    assert not t.ok and elapsed < 10
    assert "connecting" in t.error


def run_series(dest: Path) -> dict[str, datetime]:
    """Daily runs at 02:00 UTC, 2026-11-01 to 11-20."""
    runs = {}
    for i in range(20):
        started = datetime(2026, 11, 1, 2, tzinfo=UTC) + timedelta(days=i)
        runs[make_run(dest, started, {"data.zst": started.isoformat().encode()}).name] = started
    return runs


def expected_after(runs: dict[str, datetime]) -> set[str]:
    # keep_daily 3 -> 18, 19, 20; keep_weekly 2 (ISO, UTC) -> Sun 11-15 (W46) and 11-20 (W47)
    return {rid for rid, t in runs.items() if t.day in (15, 18, 19, 20)}


@root_only
def test_sftp_retention_applied_remotely(sshd, tmp_path):
    runs = run_series(tmp_path / "dest")
    s = spec(tmp_path, sftp=sftp_target(sshd, tmp_path),
             retention={"keep_daily": 3, "keep_weekly": 2})
    for rid in runs:
        assert copy_run(s, tmp_path / "dest" / NAME / rid).ok
    half = tmp_path / "remote" / NAME / "20261031T020000Z-dead"
    half.mkdir()
    (half / "data.zst").write_bytes(b"partial")  # an incomplete copy, older than all others
    manual = tmp_path / "remote" / NAME / "copied-by-hand"
    manual.mkdir()
    (manual / "manifest.json").write_text('{"artefacts": []}')  # no time in it or its name
    remote = tmp_path / "remote" / NAME
    now = datetime(2026, 11, 20, 12, tzinfo=UTC)

    [p] = plan_remote(s, now, tz=UTC)
    assert p.check and p.deleted == () and p.error is None
    assert set(p.to_delete) == set(runs) - expected_after(runs)
    assert p.incomplete == ("20261031T020000Z-dead",) and p.undated == ("copied-by-hand",)
    assert {d.name for d in remote.iterdir()} == set(runs) | {half.name, manual.name}

    [p] = prune_remote(s, now, check=False, tz=UTC)
    assert not p.check and set(p.deleted) == set(runs) - expected_after(runs)
    assert {d.name for d in remote.iterdir()} == expected_after(runs) | {half.name, manual.name}
    assert {r.id for r in list_remote(s)[0].runs if r.complete} == expected_after(runs) | {
        manual.name}
    assert prune_remote(s, now, tz=UTC)[0].deleted == ()


# -- S3 ------------------------------------------------------------------------------------

def test_s3_copy_is_verified_by_checksum_and_listed(s3server, bucket, tmp_path):
    run = make_run(tmp_path / "dest", T0)
    s = spec(tmp_path, s3=s3_target(s3server, bucket))
    result = copy_run(s, run)
    assert result.ok, result
    assert result.targets[0].url == f"s3://{bucket}/web01/{NAME}/{run.name}/"
    client = s3server.client()
    for f in ("db-app.dump.zst", "globals.sql.zst", "manifest.json"):
        key = f"web01/{NAME}/{run.name}/{f}"
        data = (run / f).read_bytes()
        assert client.get_object(Bucket=bucket, Key=key)["Body"].read() == data
        head = client.head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")
        assert head["ChecksumSHA256"] == base64.b64encode(hashlib.sha256(data).digest()).decode()
    again = copy_run(s, run)
    assert again.ok and all(f.already_there for f in again.targets[0].files)

    [listing] = list_remote(s)
    assert [(r.id, r.time, r.complete) for r in listing.runs] == [(run.name, T0, True)]
    for read_back in (False, True):
        [check] = verify_remote(s, run.name, read_back=read_back)
        assert check.ok and check.checked == 2


def test_s3_corruption_is_detected(s3server, bucket, tmp_path):
    run = make_run(tmp_path / "dest", T0)
    s = spec(tmp_path, s3=s3_target(s3server, bucket))
    assert copy_run(s, run).ok
    client = s3server.client()
    key = f"web01/{NAME}/{run.name}/db-app.dump.zst"
    data = bytearray((run / "db-app.dump.zst").read_bytes())
    data[999] ^= 0x80
    bad = hashlib.sha256(bytes(data)).hexdigest()
    good = hashlib.sha256((run / "db-app.dump.zst").read_bytes()).hexdigest()
    expected = (f"{run.name}/db-app.dump.zst: sha256 is {bad}, the manifest says {good}",)

    # rewritten without a checksum: the object is read back and hashed
    client.put_object(Bucket=bucket, Key=key, Body=bytes(data))
    [check] = verify_remote(s, run.name)
    assert not check.ok and check.problems == expected
    # rewritten with the store's own SHA-256 of the damaged bytes: the checksum tells
    client.put_object(Bucket=bucket, Key=key, Body=bytes(data), ChecksumAlgorithm="SHA256")
    [check] = verify_remote(s, run.name)
    assert not check.ok and check.problems == expected

    assert copy_run(s, run).ok
    assert verify_remote(s, run.name, read_back=True)[0].ok


def test_s3_multipart_upload_is_read_back(s3server, bucket, tmp_path, monkeypatch):
    monkeypatch.setattr(offsite_s3, "MULTIPART_THRESHOLD", 6 << 20)
    monkeypatch.setattr(offsite_s3, "PART_SIZE", 5 << 20)
    big = os.urandom(12 << 20)
    run = make_run(tmp_path / "dest", T0, {"big.tar.zst": big, "small.zst": b"x" * 10})
    s = spec(tmp_path, s3=s3_target(s3server, bucket, prefix=""))
    assert copy_run(s, run).ok
    client = s3server.client()
    key = f"{NAME}/{run.name}/big.tar.zst"
    assert client.get_object(Bucket=bucket, Key=key)["Body"].read() == big
    head = client.head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")
    assert head["ETag"].endswith("-3\"")  # three parts: its checksums are of the parts
    assert verify_remote(s, run.name)[0].ok


def test_s3_retention_applied_remotely_and_check_deletes_nothing(s3server, bucket, tmp_path):
    runs = run_series(tmp_path / "dest")
    s = spec(tmp_path, s3=s3_target(s3server, bucket),
             retention={"keep_last": 1})
    s = s.model_copy(update={"offsite": Offsite.model_validate({
        "s3": s3_target(s3server, bucket), "retention": {"keep_daily": 3, "keep_weekly": 2}})})
    for rid in runs:
        assert copy_run(s, tmp_path / "dest" / NAME / rid).ok
    client = s3server.client()

    def keys():
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
        return {o["Key"] for page in pages for o in page.get("Contents", [])}

    before = keys()
    assert len(before) == 40
    now = datetime(2026, 11, 21, tzinfo=UTC)
    [p] = plan_remote(s, now, tz=UTC)  # the offsite retention, not the backup's keep_last 1
    assert set(p.to_delete) == set(runs) - expected_after(runs) and p.deleted == ()
    assert keys() == before

    [p] = prune_remote(s, now, check=False, tz=UTC)
    assert set(p.deleted) == set(runs) - expected_after(runs)
    assert keys() == {f"web01/{NAME}/{rid}/{f}" for rid in expected_after(runs)
                      for f in ("data.zst", "manifest.json")}
    assert {r.id for r in list_remote(s)[0].runs} == expected_after(runs)


def test_s3_credentials_and_unreachable_targets(s3server, bucket, tmp_path, monkeypatch):
    run = make_run(tmp_path / "dest", T0)
    monkeypatch.delenv("TEST_S3_SECRET")
    [t] = copy_run(spec(tmp_path, s3=s3_target(s3server, bucket)), run).targets
    assert not t.ok and "environment variable TEST_S3_SECRET is not set" in t.error

    creds = tmp_path / "s3-credentials"
    creds.write_text("[default]\naws_access_key_id = a\naws_secret_access_key = b\n")
    target = s3_target(s3server, bucket, access_key_env=None, secret_key_env=None,
                       credentials_file=str(creds))
    assert copy_run(spec(tmp_path, s3=target), run).ok
    creds.write_text("[other]\naws_access_key_id = a\n")
    [t] = copy_run(spec(tmp_path, s3=target), run).targets
    assert not t.ok and "needs aws_access_key_id and aws_secret_access_key" in t.error

    monkeypatch.setenv("TEST_S3_SECRET", "testing")
    [t] = copy_run(spec(tmp_path, s3=s3_target(s3server, "no-such-bucket")), run).targets
    assert not t.ok and "NoSuchBucket" in t.error
    closed = f"http://127.0.0.1:{free_port()}"
    start = time.monotonic()
    [t] = copy_run(spec(tmp_path, s3=s3_target(s3server, bucket, endpoint_url=closed,
                                                timeout="2s")), run).targets
    assert not t.ok and "Could not connect" in t.error and time.monotonic() - start < 30


@root_only
def test_one_failing_target_does_not_stop_the_other(sshd, s3server, bucket, tmp_path):
    run = make_run(tmp_path / "dest", T0)
    s = spec(tmp_path, sftp=sftp_target(sshd, tmp_path),
             s3=s3_target(s3server, "no-such-bucket"))
    result = copy_run(s, run)
    assert not result.ok
    assert [(t.target, t.ok) for t in result.targets] == [("sftp", True), ("s3", False)]
    assert (tmp_path / "remote" / NAME / run.name / "manifest.json").exists()


# -- the model -----------------------------------------------------------------------------

@pytest.mark.parametrize(("doc", "message"), [
    ({}, "offsite needs sftp, s3 or both"),
    ({"s3": {"bucket": "ok-bucket", "access_key_env": "K"}},
     "give access_key_env and secret_key_env together"),
    ({"s3": {"bucket": "ok-bucket", "access_key_env": "K", "secret_key_env": "S",
             "credentials_file": "/etc/c"}}, "either credentials_file or access_key_env"),
    ({"s3": {"bucket": "Bad_Bucket"}}, "not a valid bucket name"),
    ({"s3": {"bucket": "ok-bucket", "endpoint_url": "127.0.0.1:9000"}},
     "must start with http:// or https://"),
    ({"sftp": {"host": "h", "user": "u", "path": "backups"}}, "must be absolute"),
    ({"sftp": {"host": "h", "user": "u", "path": "/b", "port": 0}}, "greater than or equal to 1"),
    ({"sftp": {"host": "h", "path": "/b"}}, "user"),
    ({"sftp": {"host": "h", "user": "u", "path": "/b", "known_host": "/x"}}, "known_host"),
])
def test_offsite_model_errors(doc, message):
    with pytest.raises(ValidationError, match=message):
        Offsite.model_validate(doc)


def test_manifest_paths_are_confined_to_the_run():
    doc = {"artefacts": [{"file": "../../etc/passwd", "sha256": "00"}]}
    with pytest.raises(IntegrityError, match="not a relative path in the run"):
        offsite.manifest_digests(json.dumps(doc).encode())
    with pytest.raises(IntegrityError, match="lists no artefact with a sha256"):
        offsite.manifest_digests(b'{"format": 1}')
