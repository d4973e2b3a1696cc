"""GitSource against real git, ssh-keygen and gpg: fetch, extract, verify, prune, errors."""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess

import pytest

from agent.service.git_source import GitSettings, GitSource, SourceError
from tests.service.test_git_reload import commit, git


@pytest.fixture
def origin(tmp_path):
    r = tmp_path / "origin"
    r.mkdir()
    git(r, "init", "-q", "-b", "main")
    return r


def source(tmp_path, origin, **kw) -> GitSource:
    return GitSource(GitSettings(url=str(origin), **kw), str(tmp_path / "cache"))


def test_fetch_checkout_per_commit_and_prune(tmp_path, origin):
    one = commit(origin, {"pb/a.yaml": "one\n"}, "1")
    src = source(tmp_path, origin, path="pb")
    assert src.fetch() == one
    tree1 = src.checkout(one)
    assert pathlib.Path(tree1, "a.yaml").read_text() == "one\n"
    two = commit(origin, {"pb/a.yaml": "two\n", "pb/sub/b.yaml": "b\n"}, "2")
    assert src.fetch() == two
    tree2 = src.checkout(two)
    assert pathlib.Path(tree2, "a.yaml").read_text() == "two\n"
    assert pathlib.Path(tree2, "sub", "b.yaml").read_text() == "b\n"
    assert pathlib.Path(tree1, "a.yaml").read_text() == "one\n"  # never modified
    assert oct(os.stat(tmp_path / "cache").st_mode & 0o777) == "0o700"
    src.prune({two})
    assert not os.path.exists(tree1) and os.path.isdir(tree2)


def test_errors_name_what_is_wrong(tmp_path, origin):
    sha = commit(origin, {"pb/a.yaml": "x\n"}, "1")
    with pytest.raises(SourceError, match="branch 'prod' does not exist"):
        source(tmp_path, origin, branch="prod").fetch()
    with pytest.raises(SourceError, match=f"commit {sha[:12]} has no directory 'hosts/db'"):
        src = source(tmp_path, origin, path="hosts/db")
        src.checkout(src.fetch())
    with pytest.raises(SourceError, match="cannot fetch"):
        source(tmp_path, tmp_path / "nowhere").fetch()


def test_a_symlink_in_the_tree_is_refused(tmp_path, origin):
    commit(origin, {"pb/a.yaml": "x\n"}, "1")
    os.symlink("/etc/shadow", origin / "pb" / "evil.yaml")
    sha = commit(origin, {}, "link")
    src = source(tmp_path, origin, path="pb")
    with pytest.raises(SourceError, match="'pb/evil.yaml' is a link"):
        src.checkout(src.fetch())
    assert not os.path.exists(tmp_path / "cache" / "trees" / sha)


@pytest.mark.skipif(shutil.which("gpg") is None, reason="gpg is not installed")
def test_gpg_signed_commits_verify_against_the_keyring_only(tmp_path, origin):
    def make_key(name: str) -> tuple[str, str]:
        home = tmp_path / f"gnupg-{name}"
        home.mkdir(mode=0o700)
        env = {**os.environ, "GNUPGHOME": str(home)}
        subprocess.run(["gpg", "--batch", "--passphrase", "", "--quick-gen-key",
                        f"{name} <{name}@example.invalid>", "ed25519", "sign", "never"],
                       check=True, capture_output=True, env=env)
        keyring = tmp_path / f"{name}.gpg"
        with open(keyring, "wb") as f:
            subprocess.run(["gpg", "--batch", "--export", f"{name}@example.invalid"],
                           check=True, stdout=f, env=env)
        return str(home), str(keyring)

    ops_home, ops_keyring = make_key("ops")
    _, other_keyring = make_key("other")
    env = {**os.environ, "GNUPGHOME": ops_home}
    (origin / "a.yaml").write_text("signed\n")
    git(origin, "add", "-A")
    p = subprocess.run(["git", "-C", str(origin), "-c", "user.name=ops", "-c",
                        "user.email=ops@example.invalid", "-c",
                        "user.signingkey=ops@example.invalid", "commit", "-q", "-S", "-m", "s"],
                       capture_output=True, text=True, env=env)
    assert p.returncode == 0, p.stderr
    good = source(tmp_path, origin, gpg_keyring=ops_keyring)
    good.verify(good.fetch())
    bad = GitSource(GitSettings(url=str(origin), gpg_keyring=other_keyring),
                    str(tmp_path / "cache2"))
    with pytest.raises(SourceError, match="is not signed by a key of"):
        bad.verify(bad.fetch())
    unsigned = commit(origin, {"b.yaml": "x\n"}, "unsigned")
    with pytest.raises(SourceError, match=f"commit {unsigned[:12]} is not signed"):
        good.verify(good.fetch())
