"""files provider: plan tests from observed state, and timelines on the real filesystem."""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import stat
import subprocess
import sys
import tempfile

import pytest

from agent.errors import ProviderError, UnsafeOperation
from agent.playbook.models import FileSpec
from agent.providers import files
from agent.providers.base import ProviderContext
from agent.providers.files import FileObserved

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture
def ctx(tmp_path):
    return ProviderContext(host="test", variables={"who": "world", "port": 8080},
                           base_dir=str(tmp_path), state_dir=str(tmp_path / "state"))


def spec(**kw):
    return FileSpec.model_validate(kw)


def plan(s, ctx):
    return files.diff(s, files.observe(s, ctx))


def converge(s, ctx):
    """apply what the plan says, then prove a new plan is empty."""
    changes = plan(s, ctx)
    outcomes = files.apply(s, changes, ctx)
    assert all(o.ok for o in outcomes), outcomes
    after = files.observe(s, ctx)
    assert files.diff(s, after) == []
    return changes, after


def mode_of(path):
    return stat.S_IMODE(os.lstat(path).st_mode)


# -------------------------------------------------------------- plan tests (pure diff)

def test_plan_for_a_missing_file_shows_state_and_new_content():
    s = spec(path="/srv/app.env", content="A=1\n", mode="0600")
    o = FileObserved("/srv/app.env", "absent", desired=b"A=1\n")
    changes = files.diff(s, o)
    assert [(c.field, c.before) for c in changes] == [("state", "absent"), ("content", None)]
    assert changes[0].after == "file"
    assert changes[1].after.startswith("sha256:") and changes[1].after.endswith("(4 bytes)")
    assert "+A=1" in changes[1].diff


def test_plan_lists_only_managed_attributes():
    s = spec(path="/srv/a", content="x")  # mode/owner/group unset: unmanaged
    o = FileObserved("/srv/a", "file", 0o777, 123, 456, 1, b"x", b"x")
    assert files.diff(s, o) == []
    assert "regular file, 1 bytes, mode 0777" in files.describe(s, o)
    assert files.describe(s, o).endswith("content matches")


def test_plan_for_mode_owner_group():
    s = spec(path="/srv/a", mode="0640", owner=0, group=0)
    o = FileObserved("/srv/a", "file", 0o644, 65534, 65534, 3, None, None, 0, 0)
    got = {c.field: (c.before, c.after, c.reason) for c in files.diff(s, o)}
    assert got["mode"] == ("0644", "0640", "mode is 0644, want 0640")
    assert got["owner"][1] == pwd.getpwuid(0).pw_name
    assert got["group"][1] == grp.getgrgid(0).gr_name


def test_plan_content_diff_is_unified_and_reports_digests_only():
    s = spec(path="/srv/a", content="one\ntwo\n")
    o = FileObserved("/srv/a", "file", 0o644, 0, 0, 8, b"one\nTWO\n", b"one\ntwo\n")
    [c] = files.diff(s, o)
    assert c.field == "content" and c.reason == "content differs"
    assert "two" not in str(c.before) + str(c.after)  # never the content itself
    assert c.diff.splitlines()[2:] == ["@@ -1,2 +1,2 @@", " one", "-TWO", "+two"]


def test_plan_for_absent():
    s = spec(path="/srv/old", state="absent")
    assert files.diff(s, FileObserved("/srv/old", "absent")) == []
    [c] = files.diff(s, FileObserved("/srv/old", "directory"))
    assert (c.field, c.before, c.after) == ("state", "directory", "absent")


# -------------------------------------------------------------- timelines on real files

def test_file_timeline_create_noop_break_repair(tmp_path, ctx):
    target = tmp_path / "etc" / "app.env"
    s = spec(path=str(target), content="TOKEN={{ who }}\n", mode="0600")
    changes, _ = converge(s, ctx)
    assert [c.field for c in changes] == ["parents", "state", "content"]
    assert target.read_text() == "TOKEN={{ who }}\n"  # content: is rendered by the loader
    assert mode_of(target) == 0o600
    before = os.stat(target)
    assert plan(s, ctx) == []
    assert os.stat(target).st_mtime_ns == before.st_mtime_ns  # observing changes nothing

    os.chmod(target, 0o644)
    target.write_text("edited\n")
    assert [c.field for c in plan(s, ctx)] == ["content", "mode"]
    converge(s, ctx)
    assert target.read_text() == "TOKEN={{ who }}\n" and mode_of(target) == 0o600


def test_mode_only_change_keeps_content_and_inode(tmp_path, ctx):
    target = tmp_path / "a"
    target.write_text("keep")
    inode = os.stat(target).st_ino
    s = spec(path=str(target), mode="0640")
    changes, _ = converge(s, ctx)
    assert [c.field for c in changes] == ["mode"]
    assert os.stat(target).st_ino == inode and target.read_text() == "keep"


def test_template_rendered_with_variables(tmp_path, ctx):
    (tmp_path / "t.j2").write_text("hello {{ who }} on {{ port }}\n")
    target = tmp_path / "out.conf"
    converge(spec(path=str(target), template="t.j2"), ctx)
    assert target.read_text() == "hello world on 8080\n"


def test_template_with_undefined_variable_fails_clearly(tmp_path, ctx):
    (tmp_path / "t.j2").write_text("{{ nope }}\n")
    with pytest.raises(ProviderError, match=r"t\.j2: undefined template variable 'nope'"):
        files.observe(spec(path=str(tmp_path / "o"), template="t.j2"), ctx)
    assert not (tmp_path / "o").exists()


def test_source_copied_byte_for_byte(tmp_path, ctx):
    data = bytes(range(256)) * 10
    (tmp_path / "blob.bin").write_bytes(data)
    target = tmp_path / "copy.bin"
    converge(spec(path=str(target), source="blob.bin", mode="0640"), ctx)
    assert target.read_bytes() == data and mode_of(target) == 0o640
    target.write_bytes(data[:-1] + b"x")
    [c] = plan(spec(path=str(target), source="blob.bin", mode="0640"), ctx)
    assert c.diff == "binary content differs"


def test_missing_source_fails_clearly(tmp_path, ctx):
    with pytest.raises(ProviderError, match="source .*nowhere: No such file"):
        files.observe(spec(path=str(tmp_path / "o"), source="nowhere"), ctx)


def test_directory_mode_survives_the_umask(tmp_path, ctx):
    old = os.umask(0o022)
    try:
        d = tmp_path / "shared"
        converge(spec(path=str(d), state="directory", mode="0770"), ctx)
    finally:
        os.umask(old)
    assert os.path.isdir(d) and mode_of(d) == 0o770


def test_absent_removes_files_directories_and_symlinks(tmp_path, ctx):
    (tmp_path / "f").write_text("x")
    (tmp_path / "d" / "sub").mkdir(parents=True)
    (tmp_path / "d" / "sub" / "x").write_text("x")
    outside = tmp_path / "outside"
    outside.write_text("keep me")
    os.symlink(outside, tmp_path / "link")
    for name in ("f", "d", "link"):
        converge(spec(path=str(tmp_path / name), state="absent"), ctx)
        assert not os.path.lexists(tmp_path / name)
    assert outside.read_text() == "keep me"  # the link was removed, not its target


def test_a_planted_symlink_is_refused(tmp_path, ctx):
    victim = tmp_path / "shadow"
    victim.write_text("precious")
    os.symlink(victim, tmp_path / "app.conf")
    s = spec(path=str(tmp_path / "app.conf"), content="attacker-controlled path\n")
    with pytest.raises(UnsafeOperation, match="is a symlink to .*shadow; refusing"):
        files.observe(s, ctx)
    assert victim.read_text() == "precious"


def test_follow_manages_the_symlink_target(tmp_path, ctx):
    real = tmp_path / "real.conf"
    real.write_text("old\n")
    os.symlink(real, tmp_path / "link.conf")
    converge(spec(path=str(tmp_path / "link.conf"), content="new\n", mode="0600",
                  follow=True), ctx)
    assert os.path.islink(tmp_path / "link.conf")
    assert real.read_text() == "new\n" and mode_of(real) == 0o600


@pytest.mark.parametrize("path", ["/etc", "/", "/usr/local", "/opsagent-top-level"])
def test_protected_paths_are_never_removed(path, ctx):
    s = spec(path=path, state="absent")
    changes = files.diff(s, FileObserved(path, "directory"))
    with pytest.raises(UnsafeOperation, match="refusing to remove"):
        files.apply(s, changes, ctx)
    if path != "/opsagent-top-level":
        assert os.path.isdir(path)


def test_a_file_is_not_replaced_by_a_directory(tmp_path, ctx):
    (tmp_path / "x").write_text("data")
    s = spec(path=str(tmp_path / "x"), state="directory")
    changes = plan(s, ctx)
    assert [(c.field, c.before, c.after) for c in changes] == [("state", "file", "directory")]
    with pytest.raises(UnsafeOperation, match="is a file, not a directory"):
        files.apply(s, changes, ctx)
    assert (tmp_path / "x").read_text() == "data"


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")
def test_owner_and_group_as_root(tmp_path, ctx):
    target = tmp_path / "owned"
    s = spec(path=str(target), content="x", owner="nobody", group="nogroup", mode="0640")
    converge(s, ctx)
    st = os.stat(target)
    assert (st.st_uid, st.st_gid) == (65534, 65534)
    os.chown(target, 0, 0)
    changes = plan(s, ctx)
    assert [c.field for c in changes] == ["owner", "group"]
    assert (changes[0].before, changes[0].after) == ("root", "nobody")
    converge(s, ctx)
    assert os.stat(target).st_uid == 65534


@pytest.mark.skipif(os.geteuid() == 0 and shutil.which("setpriv") is None,
                    reason="needs setpriv to drop to an unprivileged user")
def test_unprivileged_user_writes_its_own_files_and_cannot_chown():
    base = tempfile.mkdtemp(prefix="opsagent-files-", dir="/tmp")
    os.chmod(base, 0o755)
    home = os.path.join(base, "home")
    os.mkdir(home)
    try:
        if os.geteuid() == 0:
            os.chown(home, 65534, 65534)
        code = f"""
import os
from agent.errors import ProviderError
from agent.playbook.models import FileSpec
from agent.providers import files
from agent.providers.base import ProviderContext
ctx = ProviderContext(host="t", variables={{}}, base_dir={home!r}, state_dir={home!r})
mine = FileSpec.model_validate({{"path": {home!r} + "/mine", "content": "a", "mode": "0600"}})
files.apply(mine, files.diff(mine, files.observe(mine, ctx)), ctx)
print("mine", oct(os.stat({home!r} + "/mine").st_mode & 0o777))
theirs = FileSpec.model_validate({{"path": {home!r} + "/theirs", "content": "b", "owner": "root"}})
try:
    files.apply(theirs, files.diff(theirs, files.observe(theirs, ctx)), ctx)
except ProviderError as e:
    print("refused", e)
print(sorted(os.listdir({home!r})))
"""
        argv = [sys.executable, "-c", code]
        if os.geteuid() == 0:
            argv = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *argv]
        p = subprocess.run(argv, capture_output=True, text=True, timeout=60,
                           env=dict(os.environ, PYTHONPATH=ROOT))
        assert p.returncode == 0, p.stderr
        lines = p.stdout.splitlines()
        assert lines[0] == "mine 0o600"
        assert lines[1].startswith("refused cannot write") and "permission denied" in lines[1]
        assert lines[2] == "['mine']"  # no temp file left behind
    finally:
        shutil.rmtree(base, ignore_errors=True)
