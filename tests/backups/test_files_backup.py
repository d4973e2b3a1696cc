"""Backups of paths: a pax tar with modes, owners, times, links, devices and excludes;
restored under a directory, never over existing files unless forced, never through a
symlink or outside the target even from a hostile archive."""

from __future__ import annotations

import io
import os
import pathlib
import stat
import tarfile
from datetime import UTC, datetime

import pytest

from agent.backups import IntegrityError, RestoreRefused
from agent.backups.restore import restore
from agent.backups.run import list_backups, run_backup
from agent.backups.store import RunWriter, new_run_id
from agent.backups.verify import verify_run
from tests.backups.specs import backup_spec

MTIME = 1_700_000_000
MARKER = b"OUTSIDE-THE-TREE-MARKER"


@pytest.fixture
def tree(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_bytes(MARKER)
    app = tmp_path / "src" / "app"
    for d in ("bin", "data", "cache", "logs", "empty"):
        (app / d).mkdir(parents=True)
    files = {"config.yml": (b"port: 80\n", 0o640), "bin/run.sh": (b"#!/bin/sh\n", 0o755),
             "secret.env": (b"TOKEN=x\n", 0o600), "data/big.bin": (os.urandom(3 << 20), 0o644),
             "x.tmp": (b"temp", 0o644), "cache/c1": (b"cached", 0o644),
             "logs/app.log": (b"log", 0o644), "logs/keep.txt": (b"keep", 0o644),
             "caf\udce9.txt": (b"latin-1 name", 0o644)}
    for rel, (data, mode) in files.items():
        path = app / rel
        path.write_bytes(data)
        os.chmod(path, mode)
    os.chmod(app / "data", 0o750)
    os.chown(app / "config.yml", 1234, 2345)
    os.chown(app / "data", 1234, 0)
    os.link(app / "config.yml", app / "config.hardlink")
    os.symlink("config.yml", app / "link-internal")
    os.symlink(str(outside / "secret"), app / "link-outside")
    os.symlink(str(outside), app / "dir-link-outside")
    os.mkfifo(app / "fifo", 0o620)
    for root, dirs, names in os.walk(app, topdown=False):
        for n in names + dirs:
            os.utime(os.path.join(root, n), (MTIME, MTIME), follow_symlinks=False)
    os.utime(app, (MTIME, MTIME))
    return app


def describe(root):
    """Relative path -> what matters about it, for every entry below root."""
    out = {}
    for dirpath, dirs, names in os.walk(root):
        for n in dirs + names:
            p = os.path.join(dirpath, n)
            st = os.lstat(p)
            rel = os.path.relpath(p, root)
            kind = stat.S_IFMT(st.st_mode)
            what = (oct(st.st_mode), st.st_uid, st.st_gid)
            if stat.S_ISLNK(st.st_mode):
                what += (os.readlink(p),)
            else:
                what += (int(st.st_mtime),)
            if kind == stat.S_IFREG:
                what += (pathlib.Path(p).read_bytes(), st.st_nlink)
            out[rel] = what
    return out


def spec_for(tree, tmp_path, **kw):
    return backup_spec(tmp_path / "dest", {"paths": [str(tree)],
                                           "exclude": ["*.tmp", "cache", "*/logs/*.log"]}, **kw)


def test_a_tree_comes_back_with_modes_owners_times_links_and_without_excludes(tree, tmp_path):
    spec = spec_for(tree, tmp_path, verify={})
    res = run_backup(spec)
    assert res.ok and res.verified, res.error
    assert res.artefacts[0].kind == "tar" and "tarfile" in list_backups(spec)[-1].tools["tar"]

    out = tmp_path / "out"
    restore(spec, to=str(out), yes=True)
    back = out / str(tree).lstrip("/")
    want = {k: v for k, v in describe(tree).items()
            if k not in ("x.tmp", "cache", "cache/c1", "logs/app.log")}
    assert describe(back) == want
    assert not (back / "cache").exists() and (back / "logs" / "keep.txt").exists()
    assert os.readlink(back / "link-outside") == str(tmp_path / "outside" / "secret")
    assert os.lstat(back / "config.yml").st_ino == os.lstat(back / "config.hardlink").st_ino
    assert stat.S_ISFIFO(os.lstat(back / "fifo").st_mode)
    assert os.stat(back / "data").st_uid == 1234


def test_symlinks_out_of_the_tree_are_stored_as_links_never_followed(tree, tmp_path):
    spec = spec_for(tree, tmp_path)
    run_backup(spec)
    out = tmp_path / "plain.tar"
    restore(spec, to=str(tmp_path / "x"), yes=True)
    run = list_backups(spec)[-1]
    from agent.backups.store import read_artefact
    with open(out, "wb") as f:
        read_artefact(run, run.artefacts[0], None, f)
    data = out.read_bytes()
    assert MARKER not in data
    with tarfile.open(out) as tar:
        names = tar.getnames()
    assert not any("dir-link-outside/" in n for n in names)
    assert not any(n.endswith("secret") and "outside" in n for n in names)


def test_existing_files_are_refused_unless_forced(tree, tmp_path):
    spec = spec_for(tree, tmp_path)
    run_backup(spec)
    out = tmp_path / "out"
    restore(spec, to=str(out), yes=True)
    back = out / str(tree).lstrip("/")
    (back / "config.yml").write_text("edited after the restore")
    (back / "added-later").write_text("not in the backup")

    with pytest.raises(RestoreRefused, match=r"\d+ paths exist already.*--force"):
        restore(spec, to=str(out))
    assert (back / "config.yml").read_text() == "edited after the restore"

    done = restore(spec, to=str(out), yes=True, force=True)
    assert done.applied and "replacing" in done.steps[0]
    assert (back / "config.yml").read_bytes() == b"port: 80\n"
    assert (back / "added-later").exists()  # merged into, not wiped
    assert os.lstat(back / "config.yml").st_ino == os.lstat(back / "config.hardlink").st_ino


def hostile_run(tmp_path, members):
    """A run whose tar holds crafted members (as a tampered destination could)."""
    spec = backup_spec(tmp_path / "dest", {"paths": [str(tmp_path)]}, name="hostile")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    os.makedirs(os.path.join(spec.destination, spec.name), exist_ok=True)
    now = datetime.now(UTC)
    w = RunWriter(spec, new_run_id(now))
    w.add("files", "files.tar", "tar", io.BytesIO(buf.getvalue()))
    w.commit(source="paths", host="h", started=now, finished=now, duration_s=0, tools={},
             version="x")
    return spec


def regular(name, data=b"pwned"):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def test_a_hostile_archive_cannot_write_outside_the_target(tmp_path):
    victim = tmp_path / "victim"
    victim.mkdir()
    link = tarfile.TarInfo("escape")
    link.type, link.linkname = tarfile.SYMTYPE, str(victim)
    for members, why in (([regular("../victim/evil")], "outside the target"),
                         ([(link, None), regular("escape/evil")], "symlink"),
                         ([regular("/abs/evil")], "outside the target")):
        spec = hostile_run(tmp_path / f"case{len(os.listdir(tmp_path))}", members)
        with pytest.raises(IntegrityError, match=why):
            restore(spec, to=str(tmp_path / "out"), yes=True)
        assert os.listdir(victim) == []


def test_verify_decompresses_every_artefact_of_a_files_backup(tree, tmp_path):
    spec = spec_for(tree, tmp_path)
    res = run_backup(spec)
    out = verify_run(spec)
    assert out.ok and out.checks[0].detail.endswith(
        f"{res.artefacts[0].bytes_raw} bytes decompressed and checked")
