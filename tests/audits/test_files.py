"""world_writable and secrets_readable over real trees with real modes, owners and mounts."""

from __future__ import annotations

import os
import socket

from tests.audits.conftest import NOBODY, audit, audit_as, keys
from tests.harness.targets import mounted_tmpfs

NOGROUP = NOBODY


def touch(path, mode: int, content: str = "x\n", gid: int | None = None) -> str:
    path.write_text(content)
    path.chmod(mode)
    if gid is not None:
        os.chown(path, 0, gid)
    return str(path)


def mkdir(path, mode: int) -> str:
    path.mkdir()
    path.chmod(mode)
    return str(path)


def test_world_writable_finds_files_dirs_and_special_files_not_sticky_dirs(tmp_path):
    tree = tmp_path / "tree"
    mkdir(tree, 0o755)
    touch(tree / "ok.txt", 0o644)
    ww = touch(tree / "ww.txt", 0o666)
    wdir = mkdir(tree / "wdir", 0o777)
    touch(tree / "wdir" / "fine", 0o600)
    mkdir(tree / "sticky", 0o1777)
    inner = touch(tree / "sticky" / "inner", 0o646)  # in a sticky dir: still a finding
    os.mkfifo(tree / "fifo")
    (tree / "fifo").chmod(0o622)
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(tree / "sock"))
    (tree / "sock").chmod(0o777)
    deep = tree / "a" / "b" / "c"
    deep.mkdir(parents=True)
    deep_file = touch(deep / "deep", 0o777)

    try:
        result = audit("world_writable", paths=[str(tree)])
    finally:
        sock.close()
    assert keys(result) == {
        ("world_writable", ww, "warning"), ("world_writable", wdir, "warning"),
        ("world_writable", inner, "warning"), ("world_writable", str(tree / "fifo"), "warning"),
        ("world_writable", str(tree / "sock"), "warning"),
        ("world_writable", deep_file, "warning")}
    by_subject = {f.subject: f.detail for f in result.findings}
    assert by_subject[wdir] == "directory without the sticky bit writable by others " \
                               "(mode 0777, owner root:root)"
    assert by_subject[ww] == "file writable by others (mode 0666, owner root:root)"
    assert by_subject[str(tree / "fifo")].startswith("fifo writable by others (mode 0622")
    assert by_subject[str(tree / "sock")].startswith("socket writable by others")
    assert [f.subject for f in result.findings] == sorted(by_subject)  # stable order


def test_a_clean_tree_has_no_findings_and_the_root_itself_is_checked(tmp_path):
    tree = tmp_path / "tree"
    mkdir(tree, 0o755)
    touch(tree / "a", 0o644)
    assert audit("world_writable", paths=[str(tree)]).findings == []
    tree.chmod(0o777)
    assert keys(audit("world_writable", paths=[str(tree)])) == {
        ("world_writable", str(tree), "warning")}


def test_symlinks_are_not_followed_and_loops_do_not_hang(tmp_path):
    outside = tmp_path / "outside"
    mkdir(outside, 0o777)
    touch(outside / "ww", 0o666)
    tree = tmp_path / "tree"
    mkdir(tree, 0o755)
    ww = touch(tree / "ww", 0o666)
    (tree / "to-outside").symlink_to(outside)
    (tree / "to-ww").symlink_to(tree / "ww")
    (tree / "loop").symlink_to(tree)
    (tree / "self").symlink_to("self")
    (tree / "dangling").symlink_to(tmp_path / "nothing")
    result = audit("world_writable", paths=[str(tree)])
    assert keys(result) == {("world_writable", ww, "warning")}


def test_a_root_that_is_a_symlink_is_followed_and_overlapping_roots_report_once(tmp_path):
    tree = tmp_path / "tree"
    mkdir(tree, 0o755)
    sub = tree / "sub"
    mkdir(sub, 0o755)
    ww = touch(sub / "ww", 0o666)
    (tmp_path / "alias").symlink_to(tree)
    result = audit("world_writable", paths=[str(tree), str(sub)])
    assert keys(result) == {("world_writable", ww, "warning")}
    via_link = audit("world_writable", paths=[str(tmp_path / "alias")])
    assert keys(via_link) == {("world_writable", str(tmp_path / "alias" / "sub" / "ww"),
                               "warning")}


def test_bind_mount_loop_on_the_same_filesystem_is_walked_once(tmp_path):
    import subprocess

    tree = tmp_path / "tree"
    mkdir(tree, 0o755)
    ww = touch(tree / "ww", 0o666)
    mkdir(tree / "again", 0o755)
    subprocess.run(["mount", "--bind", str(tree), str(tree / "again")], check=True)
    try:
        result = audit("world_writable", paths=[str(tree)])
    finally:
        subprocess.run(["umount", "-l", str(tree / "again")], check=True)
    # /again is the same directory (same device and inode) as the root: not entered again
    assert keys(result) == {("world_writable", ww, "warning")}


def test_other_filesystems_are_looked_at_not_entered(tmp_path):
    tree = tmp_path / "tree"
    mkdir(tree, 0o755)
    with mounted_tmpfs(tree / "mnt", "size=1m,mode=0777") as mnt:
        touch(mnt / "inside", 0o666)
        result = audit("world_writable", paths=[str(tree)])
        assert keys(result) == {("world_writable", str(mnt), "warning")}
        # named as a root, it is audited
        assert ("world_writable", str(mnt / "inside"), "warning") in keys(
            audit("world_writable", paths=[str(mnt)]))


def test_exclude_patterns_skip_paths_and_their_contents(tmp_path):
    tree = tmp_path / "tree"
    mkdir(tree, 0o755)
    mkdir(tree / "alternatives", 0o777)
    touch(tree / "alternatives" / "x", 0o666)
    touch(tree / "cache.bak", 0o666)
    kept = touch(tree / "kept", 0o666)
    result = audit("world_writable", paths=[str(tree)],
                   exclude=[f"{tree}/alternatives", "*.bak"])
    assert keys(result) == {("world_writable", kept, "warning")}
    result = audit("world_writable", paths=[str(tree)], exclude=[f"{tree}/alternatives/*"])
    assert ("world_writable", str(tree / "alternatives"), "warning") in keys(result)
    assert ("world_writable", str(tree / "alternatives" / "x"), "warning") not in keys(result)


def test_missing_roots_hold_nothing_to_report(tmp_path):
    assert audit("world_writable", paths=[str(tmp_path / "absent")]).findings == []


def test_max_files_cuts_the_scan_with_one_finding(tmp_path):
    tree = tmp_path / "tree"
    mkdir(tree, 0o755)
    for i in range(20):
        touch(tree / f"f{i:02}", 0o666)
    result = audit("world_writable", paths=[str(tree)], max_files=5)
    cut = [f for f in result.findings if f.kind == "scan_truncated"]
    assert len(cut) == 1 and cut[0].subject == "max_files"
    assert "stopped after 5 entries: more than max_files (5)" in cut[0].detail
    # the root and four files were examined
    assert len(result.findings) == 1 + 4
    assert audit("world_writable", paths=[str(tree)], max_files=21).findings[-1].kind \
        == "world_writable"


def test_unreadable_directories_are_reported_and_the_rest_is_audited(shared_dir):
    open_dir = shared_dir / "open"
    mkdir(open_dir, 0o755)
    ww = touch(open_dir / "ww", 0o666)
    closed = shared_dir / "closed"
    mkdir(closed, 0o700)
    touch(closed / "hidden-ww", 0o666)
    result = audit_as(NOBODY, "world_writable", paths=[str(shared_dir)])
    assert result["error"] is None
    found = {(f["kind"], f["subject"], f["severity"]) for f in result["findings"]}
    assert found == {("world_writable", ww, "warning"), ("unreadable", str(closed), "info")}
    detail = next(f["detail"] for f in result["findings"] if f["kind"] == "unreadable")
    assert detail == "cannot read: Permission denied; what is under it was not audited"


def test_secrets_readable_by_others_and_by_non_root_groups(tmp_path):
    tree = tmp_path / "etc-app"
    mkdir(tree, 0o755)
    touch(tree / "app.env", 0o600)
    public = touch(tree / "public.env", 0o644)
    writable = touch(tree / "ww.key", 0o602)
    both = touch(tree / "both.pem", 0o666, gid=NOGROUP)  # world beats group: one finding
    grp = touch(tree / "grp.key", 0o640, gid=NOGROUP)
    grp_w = touch(tree / "grp-w.key", 0o620, gid=NOGROUP)
    touch(tree / "rootgrp.key", 0o640, gid=0)
    touch(tree / "notes.txt", 0o666)  # not a secret's name
    mkdir(tree / "sub", 0o755)
    deep = touch(tree / "sub" / "deep.pem", 0o644)
    (tree / "link.env").symlink_to(tree / "public.env")
    mkdir(tree / "dir.key", 0o755)  # a directory with a secret's name is not a file

    result = audit("secrets_readable", paths=[str(tree)], patterns=["*.env", "*.key", "*.pem"])
    assert keys(result) == {
        ("world_readable", public, "warning"), ("world_writable", writable, "warning"),
        ("world_readable", both, "warning"), ("group_readable", grp, "info"),
        ("group_writable", grp_w, "info"), ("world_readable", deep, "warning")}
    details = {f.subject: f.detail for f in result.findings}
    assert details[public] == "secret readable by others (mode 0644, owner root:root)"
    assert details[both] == "secret readable and writable by others (mode 0666, owner " \
                            "root:nogroup)"
    assert details[grp] == "secret readable by group nogroup (mode 0640, owner root:nogroup)"

    critical = audit("secrets_readable", severity="critical", paths=[str(tree)],
                     patterns=[f"{tree}/grp.key"])
    assert keys(critical) == {("group_readable", grp, "warning")}


def test_secrets_patterns_with_a_slash_match_the_whole_path(tmp_path):
    tree = tmp_path / "srv"
    mkdir(tree, 0o755)
    mkdir(tree / "keys", 0o755)
    key = touch(tree / "keys" / "api", 0o644)
    touch(tree / "api", 0o644)
    result = audit("secrets_readable", paths=[str(tree)], patterns=["*/keys/*"])
    assert keys(result) == {("world_readable", key, "warning")}


def test_the_timeout_cuts_the_scan_with_one_finding(tmp_path):
    tree = tmp_path / "tree"
    mkdir(tree, 0o755)
    for i in range(5000):
        (tree / f"f{i:04}").touch()
    result = audit("world_writable", paths=[str(tree)], timeout="1ms")
    assert [(f.kind, f.subject) for f in result.findings] == [("scan_truncated", "timeout")]
    assert "still running after the timeout (0.001s)" in result.findings[0].detail
