"""files provider: plan tests (spec + observed -> changes) and timelines on the real filesystem.

Tests that need another identity fork a child that drops to nobody (uid/gid 65534); the
refusals to remove system paths run there too, so a regression fails the test instead of
emptying the machine's /etc.
"""

from __future__ import annotations

import grp
import hashlib
import os
import pickle
import pwd
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time

import pytest

from agent.errors import ProviderError, UnsafeOperation
from agent.playbook.models import FileSpec
from agent.providers import _fileops, files
from agent.providers.base import RESTART, Change, Outcome, ProviderContext
from agent.providers.files import FileObserved

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NOBODY = 65534
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (CI runs as root)")
ROOT_USER = pwd.getpwuid(0).pw_name
ROOT_GROUP = grp.getgrgid(0).gr_name
NOBODY_USER = pwd.getpwuid(NOBODY).pw_name
NOBODY_GROUP = grp.getgrgid(NOBODY).gr_name


@pytest.fixture
def ctx(tmp_path):
    return ProviderContext(host="test", variables={"who": "world", "port": 8080},
                           base_dir=str(tmp_path), state_dir=str(tmp_path / "state"))


def spec(**kw):
    return FileSpec.model_validate(kw)


def plan(s, ctx):
    return files.diff(s, files.observe(s, ctx))


def converge(s, ctx):
    """Apply what the plan says, then prove a new plan is empty; return (changes, outcomes)."""
    changes = plan(s, ctx)
    assert changes, "nothing to converge"
    outcomes = files.apply(s, changes, ctx)
    assert all(o.ok for o in outcomes), outcomes
    assert plan(s, ctx) == []
    return changes, outcomes


def mode_of(path):
    return stat.S_IMODE(os.lstat(path).st_mode)


def snapshot(path):
    st = os.lstat(path)
    with open(path, "rb") as fh:
        return fh.read(), stat.S_IMODE(st.st_mode), st.st_mtime_ns, st.st_ino, st.st_uid


def digest(data):
    return f"sha256:{hashlib.sha256(data).hexdigest()[:12]}… ({len(data)} bytes)"


def as_nobody(fn, *args):
    """Run fn(*args) in a forked child as nobody (when root; else as this user).

    Returns ("ok", value) or ("raised", exception class name, message).
    """
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never returns into pytest
        try:
            os.close(r)
            signal.alarm(30)  # a hung child dies instead of hanging the suite
            if os.geteuid() == 0:
                os.setgroups([])
                os.setgid(NOBODY)
                os.setuid(NOBODY)
            try:
                out = ("ok", fn(*args))
            except BaseException as e:
                out = ("raised", type(e).__name__, str(e))
            with os.fdopen(w, "wb") as fh:
                fh.write(pickle.dumps(out))
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as fh:
        data = fh.read()
    _, status = os.waitpid(pid, 0)
    assert data, f"child died: wait status {status}"
    return pickle.loads(data)


@pytest.fixture
def shared_dir():
    """A directory under /tmp that nobody can traverse (pytest's tmp_path is root-only)."""
    base = tempfile.mkdtemp(prefix="opsagent-files-", dir="/tmp")
    os.chmod(base, 0o755)
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


# ------------------------------------------------------------------ plan tests: pure diff

def test_plan_for_a_missing_file_lists_everything_apply_will_do():
    s = spec(path="/srv/app/app.env", content="A=1\n", mode="0600", owner="nobody")
    o = FileObserved("/srv/app/app.env", "absent", desired=b"A=1\n", want_uid=NOBODY,
                     want_user="nobody", missing_parents=("/srv/app",))
    changes = files.diff(s, o)
    assert [(c.field, c.before, c.after, c.reason) for c in changes] == [
        ("parents", None, ["/srv/app"], "missing parent directories, created with mode 0755"),
        ("state", "absent", "file", "missing"),
        ("content", None, digest(b"A=1\n"), "new content"),
        ("mode", None, "0600", "new file gets mode 0600"),
        ("owner", None, "nobody", "new file gets owner nobody"),
    ]
    assert changes[2].diff == ("--- /dev/null\n+++ /srv/app/app.env (wanted)\n"
                               "@@ -0,0 +1 @@\n+A=1\n")
    assert "A=1" not in repr(o)  # observations get logged; content never does


def test_plan_ignores_unmanaged_attributes_and_says_why_nothing_changes():
    s = spec(path="/srv/a", content="x")  # mode, owner, group unset: unmanaged
    o = FileObserved("/srv/a", "file", 0o777, 123, 456, "123", "456", 1, b"x", b"x")
    assert files.diff(s, o) == []
    assert files.describe(s, o) == "regular file, 1 bytes, mode 0777, 123:456, content matches"


def test_plan_for_attributes_only():
    s = spec(path="/srv/a", mode="0640", owner=0, group="root")
    o = FileObserved("/srv/a", "file", 0o644, NOBODY, NOBODY, "nobody", "nogroup", 3,
                     want_uid=0, want_gid=0, want_user="root", want_group="root")
    assert [(c.field, c.before, c.after, c.reason, c.diff) for c in files.diff(s, o)] == [
        ("mode", "0644", "0640", "mode is 0644, want 0640", None),
        ("owner", "nobody", "root", "owner is nobody, want root", None),
        ("group", "nogroup", "root", "group is nogroup, want root", None),
    ]
    converged = FileObserved("/srv/a", "file", 0o640, 0, 0, "root", "root", 3, want_uid=0,
                             want_gid=0, want_user="root", want_group="root")
    assert files.diff(s, converged) == []
    # no content given: the file's content is not managed, so not claimed to match
    assert files.describe(s, converged) == "regular file, 3 bytes, mode 0640, root:root"


def test_plan_content_diff_is_unified_and_the_change_holds_digests_only():
    s = spec(path="/srv/a", content="one\ntwo\nthree")
    o = FileObserved("/srv/a", "file", 0o644, 0, 0, "root", "root", 8, b"one\nTWO\n",
                     b"one\ntwo\nthree")
    [c] = files.diff(s, o)
    assert (c.field, c.before, c.after, c.reason) == (
        "content", digest(b"one\nTWO\n"), digest(b"one\ntwo\nthree"), "content differs")
    assert c.diff.splitlines() == [
        "--- /srv/a (on the host)", "+++ /srv/a (wanted)", "@@ -1,2 +1,3 @@",
        " one", "-TWO", "+two", "+three", "\\ No newline at end of file"]


def test_plan_never_shows_binary_or_unread_content():
    s = spec(path="/srv/blob", content="text\n")
    binary = FileObserved("/srv/blob", "file", 0o644, 0, 0, "root", "root", 3, b"\xff\x00\xfe",
                          b"text\n")
    [c] = files.diff(s, binary)
    assert c.diff == "binary content differs"
    # a large file of another size is not read: the sizes alone say it differs
    big = FileObserved("/srv/blob", "file", 0o644, 0, 0, "root", "root", 300_000, None,
                       b"text\n")
    [c] = files.diff(s, big)
    assert (c.before, c.diff) == ("300000 bytes",
                                  "content differs (the file on the host is too large to show)")


def test_plan_for_the_wrong_kind_of_path_is_only_the_state():
    s = spec(path="/srv/x", content="data", mode="0600")
    o = FileObserved("/srv/x", "directory", 0o755, 0, 0, "root", "root", 4096, None, b"data")
    assert [(c.field, c.before, c.after, c.reason) for c in files.diff(s, o)] == [
        ("state", "directory", "file", "is a directory, want a regular file")]


def test_plan_for_absent():
    s = spec(path="/srv/old", state="absent")
    gone = FileObserved("/srv/old", "absent")
    assert files.diff(s, gone) == []
    assert files.describe(s, gone) == "absent"
    for kind, what in [("directory", "a directory"), ("symlink", "a symlink"),
                       ("file", "a regular file")]:
        [c] = files.diff(s, FileObserved("/srv/old", kind))
        assert (c.field, c.before, c.after, c.reason) == (
            "state", kind, "absent", f"is {what}, want it absent")


# ------------------------------------------------------------- timelines on real files

def test_file_timeline_create_noop_break_repair(tmp_path, ctx):
    target = tmp_path / "etc" / "app.env"
    s = spec(path=str(target), content="TOKEN=abc\nLEVEL=info\n", mode="0600")
    changes, outcomes = converge(s, ctx)
    assert [c.field for c in changes] == ["parents", "state", "content", "mode"]
    assert [o.action for o in outcomes] == ["create parent", "write"]
    assert target.read_bytes() == b"TOKEN=abc\nLEVEL=info\n" and mode_of(target) == 0o600
    assert sorted(os.listdir(target.parent)) == ["app.env"]  # no temp file left behind

    # converged: the plan is empty, says why, and a second apply has nothing to do
    before = snapshot(target)
    observed = files.observe(s, ctx)
    assert files.diff(s, observed) == []
    me = f"{pwd.getpwuid(os.geteuid()).pw_name}:{grp.getgrgid(os.getegid()).gr_name}"
    assert files.describe(s, observed) == f"regular file, 21 bytes, mode 0600, {me}, content matches"
    assert files.apply(s, [], ctx) == []
    assert snapshot(target) == before  # content, mode, mtime_ns, inode, owner unchanged

    # break it: exactly the drift shows, and apply repairs it with a new inode (rename)
    os.chmod(target, 0o644)
    target.write_text("TOKEN=abc\nLEVEL=debug\n")
    drift = plan(s, ctx)
    assert [(c.field, c.before, c.after) for c in drift] == [
        ("content", digest(b"TOKEN=abc\nLEVEL=debug\n"), digest(b"TOKEN=abc\nLEVEL=info\n")),
        ("mode", "0644", "0600")]
    assert drift[0].diff.splitlines()[2:] == [
        "@@ -1,2 +1,2 @@", " TOKEN=abc", "-LEVEL=debug", "+LEVEL=info"]
    converge(s, ctx)
    after = snapshot(target)
    assert after[:2] == (b"TOKEN=abc\nLEVEL=info\n", 0o600) and after[3] != before[3]
    assert sorted(os.listdir(target.parent)) == ["app.env"]


def test_mode_only_change_keeps_content_inode_and_mtime(tmp_path, ctx):
    target = tmp_path / "a"
    target.write_text("keep")
    os.chmod(target, 0o644)
    content, _, mtime, inode, _ = snapshot(target)
    s = spec(path=str(target), mode="0640")
    changes, outcomes = converge(s, ctx)
    assert [(c.field, c.reason) for c in changes] == [("mode", "mode is 0644, want 0640")]
    assert outcomes == [Outcome("chmod", True, "mode 0644 -> 0640")]
    assert snapshot(target)[:4] == (content, 0o640, mtime, inode)


def test_rewrite_keeps_an_existing_mode_even_0000(tmp_path, ctx):
    target = tmp_path / "locked"
    target.write_text("old")
    os.chmod(target, 0o000)
    converge(spec(path=str(target), content="new"), ctx)
    assert mode_of(target) == 0o000 and target.read_text() == "new"


def test_file_without_content_is_created_empty_and_then_left_alone(tmp_path, ctx):
    target = tmp_path / "stamp"
    s = spec(path=str(target), mode="0640")
    changes, _ = converge(s, ctx)
    assert [c.field for c in changes] == ["state", "mode"]
    assert target.read_bytes() == b"" and mode_of(target) == 0o640
    target.write_text("written by the app")
    assert plan(s, ctx) == []  # content is not managed
    assert target.read_text() == "written by the app"


def test_template_rendered_with_variables(tmp_path, ctx):
    (tmp_path / "templates").mkdir()
    (tmp_path / "templates" / "app.conf.j2").write_text(
        "hello {{ who }} on {{ port }}\n{% if port > 1024 %}unprivileged\n{% endif %}")
    target = tmp_path / "app.conf"
    s = spec(path=str(target), template="templates/app.conf.j2")
    converge(s, ctx)
    assert target.read_text() == "hello world on 8080\nunprivileged\n"
    ctx.variables = {"who": "ops", "port": 80}
    [c] = plan(s, ctx)
    assert c.diff.splitlines()[2:] == ["@@ -1,2 +1 @@", "-hello world on 8080",
                                       "-unprivileged", "+hello ops on 80"]


def test_template_with_undefined_variable_names_file_and_variable(tmp_path, ctx):
    (tmp_path / "t.j2").write_text("ok\n{{ nope }}\n")
    s = spec(path=str(tmp_path / "out"), template="t.j2")
    with pytest.raises(ProviderError, match=r"template .*/t\.j2.*: undefined template "
                       r"variable 'nope' \(define it under vars: or pass -e nope=VALUE\)"):
        files.observe(s, ctx)
    with pytest.raises(ProviderError, match="undefined template variable 'nope'"):
        files.apply(s, [Change("state", "absent", "file", "missing")], ctx)
    assert not (tmp_path / "out").exists()


def test_template_syntax_error_and_missing_template(tmp_path, ctx):
    (tmp_path / "bad.j2").write_text("line one\n{% if %}\n")
    with pytest.raises(ProviderError, match=r"template .*/bad\.j2:2: template syntax error"):
        files.observe(spec(path=str(tmp_path / "o"), template="bad.j2"), ctx)
    with pytest.raises(ProviderError, match=r"template .*/gone\.j2: No such file"):
        files.observe(spec(path=str(tmp_path / "o"), template="gone.j2"), ctx)


def test_template_cannot_escape_the_sandbox(tmp_path, ctx):
    (tmp_path / "evil.j2").write_text("{{ ''.__class__.__mro__[1].__subclasses__() }}")
    with pytest.raises(ProviderError, match=r"evil\.j2"):
        files.observe(spec(path=str(tmp_path / "o"), template="evil.j2"), ctx)


def test_source_copied_byte_for_byte(tmp_path, ctx):
    data = bytes(range(256)) * 10
    (tmp_path / "files").mkdir()
    (tmp_path / "files" / "blob.bin").write_bytes(data)
    target = tmp_path / "copy.bin"
    s = spec(path=str(target), source="files/blob.bin", mode="0640")
    converge(s, ctx)
    assert target.read_bytes() == data and mode_of(target) == 0o640
    target.write_bytes(data[:-1] + b"x")
    [c] = plan(s, ctx)
    assert (c.field, c.before, c.after, c.diff) == (
        "content", digest(data[:-1] + b"x"), digest(data), "binary content differs")
    converge(s, ctx)
    assert target.read_bytes() == data


def test_a_large_file_of_another_size_is_not_read(tmp_path, ctx):
    target = tmp_path / "big.log"
    target.write_bytes(b"y" * 300_000)
    s = spec(path=str(target), content="small\n")
    o = files.observe(s, ctx)
    assert (o.size, o.current, o.desired) == (300_000, None, b"small\n")
    [c] = files.diff(s, o)
    assert (c.before, c.after) == ("300000 bytes", digest(b"small\n"))
    converge(s, ctx)
    assert target.read_bytes() == b"small\n"


def test_missing_source_names_the_file(tmp_path, ctx):
    with pytest.raises(ProviderError, match=r"source .*/nowhere\.bin: No such file or directory"):
        files.observe(spec(path=str(tmp_path / "o"), source="nowhere.bin"), ctx)


def test_directory_mode_survives_the_umask(tmp_path, ctx):
    d = tmp_path / "shared"
    s = spec(path=str(d), state="directory", mode="0770")
    old = os.umask(0o022)
    try:
        changes, _ = converge(s, ctx)
    finally:
        os.umask(old)
    assert [(c.field, c.after) for c in changes] == [("state", "directory"), ("mode", "0770")]
    assert os.path.isdir(d) and mode_of(d) == 0o770
    o = files.observe(s, ctx)
    assert files.describe(s, o) == f"directory, mode 0770, {o.user}:{o.group}"
    os.chmod(d, 0o755)
    assert [(c.field, c.before, c.after) for c in plan(s, ctx)] == [("mode", "0755", "0770")]
    converge(s, ctx)
    assert mode_of(d) == 0o770


def test_missing_parents_are_created_0755_whatever_the_umask(tmp_path, ctx):
    target = tmp_path / "a" / "b" / "f"
    s = spec(path=str(target), content="x")
    old = os.umask(0o077)
    try:
        changes, _ = converge(s, ctx)
    finally:
        os.umask(old)
    assert changes[0].after == [str(tmp_path / "a"), str(tmp_path / "a" / "b")]
    assert mode_of(tmp_path / "a") == mode_of(tmp_path / "a" / "b") == 0o755
    assert mode_of(target) == 0o644  # the default for a new file, whatever the umask


def test_absent_removes_files_directories_and_symlinks_never_their_targets(tmp_path, ctx):
    (tmp_path / "f").write_text("x")
    (tmp_path / "d" / "sub").mkdir(parents=True)
    (tmp_path / "d" / "sub" / "x").write_text("x")
    outside = tmp_path / "outside"
    (outside / "dir").mkdir(parents=True)
    (outside / "file").write_text("keep me")
    os.symlink(outside / "file", tmp_path / "link")
    os.symlink(outside / "dir", tmp_path / "dirlink")
    for name, kind in [("f", "file"), ("d", "directory"), ("link", "symlink"),
                       ("dirlink", "symlink")]:
        s = spec(path=str(tmp_path / name), state="absent", follow=True)
        changes, _ = converge(s, ctx)
        assert [(c.field, c.before) for c in changes] == [("state", kind)]
        assert not os.path.lexists(tmp_path / name)
        assert files.describe(s, files.observe(s, ctx)) == "absent"
    assert (outside / "file").read_text() == "keep me" and (outside / "dir").is_dir()


def test_a_planted_symlink_is_refused_and_its_target_untouched(tmp_path, ctx):
    victim = tmp_path / "shadow"
    victim.write_text("precious")
    os.chmod(victim, 0o600)
    os.symlink(victim, tmp_path / "app.conf")
    s = spec(path=str(tmp_path / "app.conf"), content="attacker-controlled path\n", mode="0644")
    msg = (f"{tmp_path}/app.conf is a symlink to {victim}; refusing to write through it "
           r"\(set follow: true to manage the target\)")
    with pytest.raises(UnsafeOperation, match=msg):
        files.observe(s, ctx)
    # apply looks again for itself: a link planted after the plan is refused too
    with pytest.raises(UnsafeOperation, match=msg):
        files.apply(s, [Change("content", None, "x", "content differs")], ctx)
    assert victim.read_text() == "precious" and mode_of(victim) == 0o600
    assert os.path.islink(tmp_path / "app.conf")
    with pytest.raises(UnsafeOperation, match="is a symlink to"):
        files.observe(spec(path=str(tmp_path / "app.conf"), state="directory"), ctx)


def test_follow_manages_the_symlink_target(tmp_path, ctx):
    real = tmp_path / "real.conf"
    real.write_text("old\n")
    link = tmp_path / "link.conf"
    os.symlink(real, link)
    s = spec(path=str(link), content="new\n", mode="0600", follow=True)
    changes, _ = converge(s, ctx)
    assert [c.field for c in changes] == ["content", "mode"]
    assert os.path.islink(link) and os.readlink(link) == str(real)
    assert real.read_text() == "new\n" and mode_of(real) == 0o600
    assert files.describe(s, files.observe(s, ctx)).endswith(
        f"content matches, through the symlink {link}")


def _remove_refusal(path):
    ctx = ProviderContext(host="t", variables={}, base_dir="/nonexistent", state_dir="/x")
    s = FileSpec.model_validate({"path": path, "state": "absent"})
    return files.apply(s, [Change("state", "directory", "absent", "is a directory")], ctx)


@pytest.mark.parametrize("path", ["/etc", "/", "/usr", "/usr/local", "/var/lib"])
def test_system_paths_are_never_removed(path):
    # Run unprivileged: if the refusal ever regressed, rmtree would fail on permissions.
    result = as_nobody(_remove_refusal, path)
    assert result[:2] == ("raised", "UnsafeOperation"), result
    assert result[2] == f"refusing to remove {path}: a top-level system path"
    assert os.path.isdir(path)


@as_root
def test_nothing_directly_under_the_root_is_removed(ctx):
    top = tempfile.mkdtemp(prefix="opsagent-test-", dir="/")
    try:
        (open(os.path.join(top, "data"), "w")).close()
        s = spec(path=top, state="absent")
        with pytest.raises(UnsafeOperation, match=f"refusing to remove {top}: a top-level"):
            files.apply(s, plan(s, ctx), ctx)
        assert os.listdir(top) == ["data"]
    finally:
        shutil.rmtree(top)


@as_root
def test_a_mount_point_is_not_removed(tmp_path):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    code = f"""
import os
from agent.errors import UnsafeOperation
from agent.playbook.models import FileSpec
from agent.providers import files
from agent.providers.base import ProviderContext
open({str(mnt)!r} + "/data", "w").close()
ctx = ProviderContext(host="t", variables={{}}, base_dir="/", state_dir="/")
s = FileSpec.model_validate({{"path": {str(mnt)!r}, "state": "absent"}})
try:
    files.apply(s, files.diff(s, files.observe(s, ctx)), ctx)
except UnsafeOperation as e:
    print(e)
print(os.listdir({str(mnt)!r}))
"""
    p = subprocess.run(["unshare", "--mount", "--propagation", "private", "--", "sh", "-c",
                        'mount -t tmpfs opsagent-test "$1" && shift && exec "$@"', "sh",
                        str(mnt), sys.executable, "-c", code],
                       capture_output=True, text=True, timeout=60,
                       env=dict(os.environ, PYTHONPATH=ROOT))
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines() == [
        f"refusing to remove {mnt}: it is a mount point (unmount it first)", "['data']"]


def test_a_path_of_another_kind_is_never_replaced(tmp_path, ctx):
    (tmp_path / "x").write_text("data")
    s = spec(path=str(tmp_path / "x"), state="directory")
    changes = plan(s, ctx)
    assert [(c.field, c.before, c.after) for c in changes] == [("state", "file", "directory")]
    with pytest.raises(UnsafeOperation, match=r"x is a regular file, not a directory; "
                       "refusing to replace it"):
        files.apply(s, changes, ctx)
    assert (tmp_path / "x").read_text() == "data"

    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "inside").write_text("keep")
    s = spec(path=str(tmp_path / "d"), content="file now")
    with pytest.raises(UnsafeOperation, match="d is a directory, not a regular file"):
        files.apply(s, plan(s, ctx), ctx)
    assert (tmp_path / "d" / "inside").read_text() == "keep"


def test_a_fifo_is_neither_read_nor_replaced(tmp_path, ctx):
    os.mkfifo(tmp_path / "pipe")
    s = spec(path=str(tmp_path / "pipe"), content="x")
    [c] = plan(s, ctx)  # would block forever if observe opened the FIFO
    assert (c.before, c.reason) == (
        "other", "is a special file (device, FIFO or socket), want a regular file")
    with pytest.raises(UnsafeOperation, match="refusing to replace it"):
        files.apply(s, [c], ctx)
    assert stat.S_ISFIFO(os.lstat(tmp_path / "pipe").st_mode)


def test_a_failed_rename_leaves_no_temp_file_and_the_target_intact(tmp_path):
    # what a write racing another process that put a directory at the path sees
    (tmp_path / "conf" / "busy").mkdir(parents=True)
    with pytest.raises(ProviderError, match=r"cannot write .*/conf: Is a directory"):
        _fileops.write_atomic(str(tmp_path / "conf"), b"x", 0o644, -1, -1)
    assert sorted(os.listdir(tmp_path)) == ["conf"]
    assert os.listdir(tmp_path / "conf") == ["busy"]


def test_restart_is_meaningless_for_files(tmp_path, ctx):
    s = spec(path=str(tmp_path / "f"), content="x")
    outcomes = files.apply(s, [Change(RESTART, None, "restarted", "notified")], ctx)
    assert outcomes == [Outcome("restart", True, "files have nothing to restart")]
    assert not (tmp_path / "f").exists()  # a notification is not a reason to converge


def test_unknown_owner_or_group_is_an_error(tmp_path, ctx):
    with pytest.raises(ProviderError, match="owner 'no-such-user-x' is not a user on this host"):
        files.observe(spec(path=str(tmp_path / "f"), owner="no-such-user-x"), ctx)
    with pytest.raises(ProviderError, match="group 'no-such-group-x' is not a group"):
        files.observe(spec(path=str(tmp_path / "f"), group="no-such-group-x"), ctx)
    o = files.observe(spec(path=str(tmp_path / "f"), owner=str(NOBODY), group=NOBODY), ctx)
    assert (o.want_uid, o.want_user, o.want_gid) == (NOBODY, NOBODY_USER, NOBODY)


@as_root
def test_owner_and_group_as_root(tmp_path, ctx):
    target = tmp_path / "owned"
    s = spec(path=str(target), content="x", owner="nobody", group=NOBODY_GROUP, mode="0640")
    converge(s, ctx)
    st = os.stat(target)
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (NOBODY, NOBODY, 0o640)

    os.chown(target, 0, 0)
    inode = st.st_ino
    changes, outcomes = converge(s, ctx)
    assert [(c.field, c.before, c.after, c.reason) for c in changes] == [
        ("owner", ROOT_USER, NOBODY_USER, f"owner is {ROOT_USER}, want {NOBODY_USER}"),
        ("group", ROOT_GROUP, NOBODY_GROUP, f"group is {ROOT_GROUP}, want {NOBODY_GROUP}")]
    assert outcomes == [Outcome("chown", True, f"owner {ROOT_USER}:{ROOT_GROUP} -> "
                                f"{NOBODY_USER}:{NOBODY_GROUP}")]
    assert (os.stat(target).st_uid, os.stat(target).st_ino) == (NOBODY, inode)


@as_root
def test_rewriting_as_root_keeps_the_owner_and_chown_keeps_setuid(tmp_path, ctx):
    target = tmp_path / "tool"
    target.write_text("v1")
    os.chown(target, NOBODY, NOBODY)
    converge(spec(path=str(target), content="v2"), ctx)
    st = os.stat(target)
    assert (st.st_uid, st.st_gid, target.read_text()) == (NOBODY, NOBODY, "v2")

    os.chmod(target, 0o4755)
    s = spec(path=str(target), owner="root", mode="4755")
    changes, _ = converge(s, ctx)  # the kernel clears setuid on chown; apply restores it
    assert [c.field for c in changes] == ["owner"]
    assert mode_of(target) == 0o4755 and os.stat(target).st_uid == 0


def _write_as_nobody(home):
    ctx = ProviderContext(host="t", variables={}, base_dir=home, state_dir=home)
    mine = FileSpec.model_validate({"path": home + "/mine", "content": "a", "mode": "0600"})
    files.apply(mine, files.diff(mine, files.observe(mine, ctx)), ctx)
    st = os.stat(home + "/mine")
    return stat.S_IMODE(st.st_mode), st.st_uid, files.diff(mine, files.observe(mine, ctx))


def _apply_as_nobody(home, spec_data):
    ctx = ProviderContext(host="t", variables={}, base_dir=home, state_dir=home)
    s = FileSpec.model_validate(spec_data)
    return files.apply(s, files.diff(s, files.observe(s, ctx)), ctx)


def test_unprivileged_user_writes_its_own_files_but_cannot_chown(shared_dir):
    home = os.path.join(shared_dir, "home")
    os.mkdir(home)
    if os.geteuid() == 0:
        os.chown(home, NOBODY, NOBODY)
    uid = NOBODY if os.geteuid() == 0 else os.geteuid()
    assert as_nobody(_write_as_nobody, home) == ("ok", (0o600, uid, []))

    # chown to root fails after the temp file exists: it is removed, the old file stays
    with open(os.path.join(home, "theirs"), "w") as fh:
        fh.write("old")
    if os.geteuid() == 0:
        os.chown(os.path.join(home, "theirs"), NOBODY, NOBODY)
    kind, name, message = as_nobody(
        _apply_as_nobody, home, {"path": home + "/theirs", "content": "new", "owner": "root"})
    assert (kind, name) == ("raised", "ProviderError")
    assert message == (f"cannot write {home}/theirs: Operation not permitted (permission "
                       "denied: run as root or fix the owner of the path)")
    assert sorted(os.listdir(home)) == ["mine", "theirs"]
    with open(os.path.join(home, "theirs")) as fh:
        assert fh.read() == "old"


def test_an_unwritable_directory_gives_a_clear_error_and_no_partial_file(shared_dir):
    locked = os.path.join(shared_dir, "locked")
    os.mkdir(locked)
    with open(os.path.join(locked, "app.conf"), "w") as fh:
        fh.write("old")
    os.chmod(locked, 0o555)  # owned by root (or by us when not root): nobody may write
    kind, name, message = as_nobody(
        _apply_as_nobody, locked, {"path": locked + "/app.conf", "content": "new"})
    assert (kind, name) == ("raised", "ProviderError")
    assert message == (f"cannot write {locked}/app.conf: Permission denied (permission "
                       "denied: run as root or fix the owner of the path)")
    assert os.listdir(locked) == ["app.conf"]
    with open(os.path.join(locked, "app.conf")) as fh:
        assert fh.read() == "old"


def test_a_converged_tree_is_observed_quickly(tmp_path, ctx):
    # The S1 benchmark shape: 20 directories and 200 files of 1 KiB, one resource each.
    src = tmp_path / "src.txt"
    src.write_bytes(b"x" * 1034)
    specs = [spec(path=str(tmp_path / f"d{i}"), state="directory", mode="0750")
             for i in range(20)]
    specs += [spec(path=str(tmp_path / f"d{i % 20}" / f"f{i}"), source=str(src), mode="0640")
              for i in range(200)]
    for s in specs:
        files.apply(s, plan(s, ctx), ctx)
    t0 = time.perf_counter()
    for s in specs:
        o = files.observe(s, ctx)
        assert files.diff(s, o) == []
        files.describe(s, o)
    assert time.perf_counter() - t0 < 0.5  # about 20 ms here; the whole run must stay < 1 s
