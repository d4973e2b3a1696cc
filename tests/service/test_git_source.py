"""GitSource against real git, ssh-keygen and gpg: fetch, checkout, verify, prune, failures."""

from __future__ import annotations

import os
import pathlib
import shutil
import socket
import subprocess
import tempfile
import time
import types

import psutil
import pytest

from agent.service.git_source import GitSettings, GitSource, SourceError

# The author's identity comes from -c, never from a global config the test would touch.
GIT_ENV = {"GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1"}
IDENT = ("-c", "user.name=T", "-c", "user.email=t@example.invalid")


def git(repo, *args: str, env: dict[str, str] | None = None) -> str:
    p = subprocess.run(["git", *IDENT, "-C", str(repo), *args], capture_output=True, text=True,
                       env={**os.environ, **GIT_ENV, **(env or {})}, timeout=60)
    assert p.returncode == 0, p.stderr
    return p.stdout.strip()


def commit(repo, files: dict[str, str], message: str, *signing: str,
           env: dict[str, str] | None = None) -> str:
    """Commit everything; with ``signing`` (``-c`` options naming the key) the commit is signed."""
    for name, text in files.items():
        path = repo / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    git(repo, "add", "-A")
    sign = ("-S",) if signing else ()
    git(repo, *signing, "commit", "-q", "--allow-empty", *sign, "-m", message, env=env)
    return git(repo, "rev-parse", "HEAD")


@pytest.fixture
def origin(tmp_path):
    r = tmp_path / "origin"
    r.mkdir()
    git(r, "init", "-q", "-b", "main")
    return r


def source(tmp_path, url, cache: str = "cache", **kw) -> GitSource:
    return GitSource(GitSettings(url=str(url), **kw), str(tmp_path / cache))


def test_fetch_returns_the_tip_and_follows_new_commits(tmp_path, origin):
    one = commit(origin, {"a.yaml": "one\n"}, "1")
    src = source(tmp_path, origin)
    assert src.fetch() == one
    assert src.fetch() == one  # nothing new: the same tip
    two = commit(origin, {"a.yaml": "two\n"}, "2")
    assert src.fetch() == two != one
    assert os.stat(tmp_path / "cache").st_mode & 0o777 == 0o700
    assert os.path.isfile(tmp_path / "cache" / "repo.git" / "HEAD")  # a private bare repo
    git(origin, "reset", "-q", "--hard", one)  # a force-push back is followed too
    assert src.fetch() == one


def test_a_relative_local_path_is_taken_from_the_working_directory(tmp_path, origin,
                                                                   monkeypatch):
    one = commit(origin, {"a.yaml": "one\n"}, "1")
    monkeypatch.chdir(tmp_path)
    assert GitSource(GitSettings(url="origin"), "cache").fetch() == one


def test_checkout_gives_each_commit_its_own_tree_never_modified(tmp_path, origin):
    one = commit(origin, {"pb/a.yaml": "one\n", "pb/gone.yaml": "g\n", "README": "r\n"}, "1")
    src = source(tmp_path, origin, path="pb")
    tree1 = src.checkout(src.fetch())
    assert tree1 == str(tmp_path / "cache" / "trees" / one / "pb")
    assert pathlib.Path(tree1, "a.yaml").read_text() == "one\n"
    assert pathlib.Path(tree1, "gone.yaml").read_text() == "g\n"
    inode = os.stat(pathlib.Path(tree1, "a.yaml")).st_ino

    (origin / "pb" / "gone.yaml").unlink()
    two = commit(origin, {"pb/a.yaml": "two\n", "pb/sub/b.yaml": "b\n"}, "2")
    tree2 = src.checkout(src.fetch())
    assert tree2 == str(tmp_path / "cache" / "trees" / two / "pb") != tree1
    assert pathlib.Path(tree2, "a.yaml").read_text() == "two\n"
    assert pathlib.Path(tree2, "sub", "b.yaml").read_text() == "b\n"
    assert not os.path.exists(pathlib.Path(tree2, "gone.yaml"))
    # the old tree is exactly as extracted, and asking again reuses it
    assert pathlib.Path(tree1, "a.yaml").read_text() == "one\n"
    assert pathlib.Path(tree1, "gone.yaml").read_text() == "g\n"
    assert src.checkout(one) == tree1
    assert os.stat(pathlib.Path(tree1, "a.yaml")).st_ino == inode
    assert sorted(os.listdir(tmp_path / "cache" / "trees")) == sorted([one, two])  # no temp


def test_a_path_missing_from_the_commit_is_an_error(tmp_path, origin):
    sha = commit(origin, {"pb/a.yaml": "x\n"}, "1")
    src = source(tmp_path, origin, path="hosts/db")
    with pytest.raises(SourceError, match=f"commit {sha[:12]} has no directory 'hosts/db'"):
        src.checkout(src.fetch())
    as_file = source(tmp_path, origin, path="pb/a.yaml")
    with pytest.raises(SourceError, match="has no directory 'pb/a.yaml'"):
        as_file.checkout(sha)
    for outside in ("../origin", "/etc"):
        with pytest.raises(SourceError, match="must be a directory inside the repository"):
            source(tmp_path, origin, path=outside).checkout(sha)


def test_a_missing_branch_is_named(tmp_path, origin):
    commit(origin, {"a.yaml": "x\n"}, "1")
    with pytest.raises(SourceError, match=f"branch 'prod' does not exist in {origin}"):
        source(tmp_path, origin, branch="prod").fetch()
    with pytest.raises(SourceError, match="'bad..name' .* is not a valid branch name"):
        source(tmp_path, origin, branch="bad..name").fetch()


def test_an_unreachable_url_is_an_error(tmp_path):
    with pytest.raises(SourceError, match=f"cannot fetch {tmp_path / 'nowhere'} branch main"):
        source(tmp_path, tmp_path / "nowhere").fetch()
    with pytest.raises(SourceError, match="cannot fetch git://127.0.0.1:1/repo branch main: .+"):
        source(tmp_path, "git://127.0.0.1:1/repo").fetch()


def test_a_password_in_the_url_stays_out_of_messages(tmp_path):
    url = "https://ops:s3cret@127.0.0.1:1/repo.git"
    with pytest.raises(SourceError) as e:
        source(tmp_path, url, timeout=20).fetch()
    assert "s3cret" not in str(e.value) and "https://ops:***@127.0.0.1:1/repo.git" in str(e.value)


def test_a_remote_that_never_answers_is_cut_at_the_timeout(tmp_path):
    with socket.socket() as server:  # the kernel accepts the connection; nobody answers
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        port = server.getsockname()[1]
        started = time.monotonic()
        with pytest.raises(SourceError, match=r"fetch of git://127.0.0.1:\d+/r took longer than 1s"):
            source(tmp_path, f"git://127.0.0.1:{port}/r", timeout=1).fetch()
        assert time.monotonic() - started < 10


def test_a_link_in_the_tree_is_refused_and_no_tree_is_left(tmp_path, origin):
    commit(origin, {"pb/a.yaml": "x\n"}, "1")
    os.symlink("/etc/passwd", origin / "pb" / "evil.yaml")
    sha = commit(origin, {}, "link")
    src = source(tmp_path, origin, path="pb")
    with pytest.raises(SourceError, match=f"commit {sha[:12]}: 'pb/evil.yaml' is a link"):
        src.checkout(src.fetch())
    assert os.listdir(tmp_path / "cache" / "trees") == []  # neither the tree nor a temp dir


def test_only_full_shas_are_taken(tmp_path, origin):
    sha = commit(origin, {"a.yaml": "x\n"}, "1")
    src = source(tmp_path, origin, allowed_signers=str(tmp_path / "signers"))
    src.fetch()
    for bad in ("../../../etc", sha[:12], "--output=/tmp/x", sha.upper()):
        with pytest.raises(SourceError, match="is not a full commit sha"):
            src.checkout(bad)
        with pytest.raises(SourceError, match="is not a full commit sha"):
            src.verify(bad)
    assert os.listdir(tmp_path / "cache") == ["repo.git"]


def test_prune_removes_unknown_trees_and_keeps_the_listed_ones(tmp_path, origin):
    src = source(tmp_path, origin)
    src.prune({"anything"})  # nothing extracted yet: nothing to do
    shas = [commit(origin, {"a.yaml": f"{n}\n"}, str(n)) for n in range(3)]
    src.fetch()
    trees = [src.checkout(sha) for sha in shas]
    leftover = tmp_path / "cache" / "trees" / ".abc-interrupted"
    leftover.mkdir()
    src.prune({shas[0], shas[2]})
    assert sorted(os.listdir(tmp_path / "cache" / "trees")) == sorted([shas[0], shas[2]])
    assert pathlib.Path(trees[0], "a.yaml").read_text() == "0\n"
    assert pathlib.Path(trees[2], "a.yaml").read_text() == "2\n"
    assert src.checkout(shas[1]) == trees[1]  # pruned trees come back on demand
    assert pathlib.Path(trees[1], "a.yaml").read_text() == "1\n"


# --- signatures -----------------------------------------------------------------------------

def ssh_key(tmp_path, name: str) -> pathlib.Path:
    key = tmp_path / "keys" / name
    key.parent.mkdir(exist_ok=True)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(key)],
                   check=True, timeout=30)
    return key


def allowed_signers(tmp_path, key: pathlib.Path) -> str:
    kind, blob = key.with_suffix(".pub").read_text().split()[:2]
    path = tmp_path / f"allowed_signers.{key.name}"
    path.write_text(f"ops@example.invalid {kind} {blob}\n")
    return str(path)


def test_ssh_signed_commits_verify_against_the_allowed_signers_only(tmp_path, origin,
                                                                    monkeypatch):
    ops, other = ssh_key(tmp_path, "ops"), ssh_key(tmp_path, "other")
    sign = ("-c", "gpg.format=ssh", "-c", f"user.signingkey={ops}.pub")
    signed = commit(origin, {"a.yaml": "signed\n"}, "signed", *sign)

    good = source(tmp_path, origin, allowed_signers=allowed_signers(tmp_path, ops))
    assert good.fetch() == signed
    good.verify(signed)
    monkeypatch.chdir(tmp_path)  # a relative allowed_signers file is ours, not git's -C dir
    source(tmp_path, origin, allowed_signers="allowed_signers.ops").verify(signed)

    foreign = source(tmp_path, origin, "cache2", allowed_signers=allowed_signers(tmp_path, other))
    foreign.fetch()
    with pytest.raises(SourceError, match=f"commit {signed[:12]} is not signed by an allowed "
                                          "key .*No principal matched"):
        foreign.verify(signed)

    unsigned = commit(origin, {"a.yaml": "unsigned\n"}, "unsigned")
    assert good.fetch() == unsigned
    with pytest.raises(SourceError, match=f"commit {unsigned[:12]} is not signed by an allowed "
                                          "key .*: it has no signature"):
        good.verify(unsigned)
    source(tmp_path, origin).verify(unsigned)  # no keys configured: nothing to check
    missing = source(tmp_path, origin, allowed_signers=str(tmp_path / "nope"))
    with pytest.raises(SourceError, match=f"allowed_signers file {tmp_path / 'nope'} does not"):
        missing.verify(signed)


@pytest.fixture
def gpg_key(tmp_path):
    """Make an OpenPGP key in its own GNUPGHOME; (home, binary keyring, armored keyring)."""
    homes = []

    def make(name: str) -> tuple[str, str, str]:
        home = tmp_path / f"g-{name}"
        home.mkdir(mode=0o700)
        homes.append(home)
        env = {**os.environ, "GNUPGHOME": str(home)}
        subprocess.run(["gpg", "--batch", "--passphrase", "", "--quick-gen-key",
                        f"{name} <{name}@example.invalid>", "ed25519", "sign", "never"],
                       check=True, capture_output=True, env=env, timeout=60)
        keyrings = []
        for suffix, armor in ((".gpg", []), (".asc", ["--armor"])):
            keyring = tmp_path / f"{name}{suffix}"
            with open(keyring, "wb") as f:
                subprocess.run(["gpg", "--batch", *armor, "--export", f"{name}@example.invalid"],
                               check=True, stdout=f, env=env, timeout=60)
            keyrings.append(str(keyring))
        return str(home), keyrings[0], keyrings[1]

    yield make
    for home in homes:  # the agent gpg started for key generation and signing
        subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "all"], timeout=30)


@pytest.fixture
def made_dirs(monkeypatch):
    """Record the temporary directories the module makes (its GNUPGHOMEs)."""
    homes: list[str] = []
    mkdtemp = tempfile.mkdtemp

    def recording(*args, **kw):
        path = mkdtemp(*args, **kw)
        homes.append(path)
        return path

    monkeypatch.setattr("agent.service.git_source.tempfile.mkdtemp", recording)
    return types.SimpleNamespace(homes=homes)


@pytest.mark.skipif(shutil.which("gpg") is None, reason="gpg is not installed")
def test_gpg_signed_commits_verify_against_the_keyring_only(tmp_path, origin, gpg_key,
                                                            made_dirs):
    ops_home, ops_keyring, ops_armored = gpg_key("ops")
    _, other_keyring, _ = gpg_key("other")
    signed = commit(origin, {"a.yaml": "signed\n"}, "signed",
                    "-c", "user.signingkey=ops@example.invalid",
                    env={"GNUPGHOME": ops_home})

    good = source(tmp_path, origin, gpg_keyring=ops_keyring)
    assert good.fetch() == signed
    good.verify(signed)
    source(tmp_path, origin, gpg_keyring=ops_armored).verify(signed)
    # Deep enough that a gpg-agent socket in the throw-away GNUPGHOME would not fit: verifying
    # must not need one (nor leave one running where it would fit, checked below).
    deep = source(tmp_path, origin, "state/" + "d" * 60, gpg_keyring=ops_keyring)
    deep.fetch()
    deep.verify(signed)

    foreign = source(tmp_path, origin, "cache2", gpg_keyring=other_keyring)
    foreign.fetch()
    with pytest.raises(SourceError, match=f"commit {signed[:12]} is not signed by a key of "
                                          f"{other_keyring}: signature: "):
        foreign.verify(signed)

    unsigned = commit(origin, {"a.yaml": "unsigned\n"}, "unsigned")
    good.fetch()
    with pytest.raises(SourceError, match=f"commit {unsigned[:12]} is not signed by a key of "
                                          f"{ops_keyring}: it has no signature"):
        good.verify(unsigned)
    garbage = tmp_path / "garbage.gpg"
    garbage.write_text("not a key\n")
    with pytest.raises(SourceError, match=f"cannot read gpg_keyring {garbage}"):
        source(tmp_path, origin, gpg_keyring=str(garbage)).verify(signed)

    # each verify used a throw-away GNUPGHOME of its own: gone afterwards, no gpg-agent left
    homes = made_dirs.homes
    assert len(homes) == 5 and not any(os.path.exists(h) for h in homes)
    assert all(os.path.dirname(h) == tempfile.gettempdir() for h in homes)
    assert [p.info["cmdline"] for p in psutil.process_iter(["cmdline"])
            if any(h in " ".join(p.info["cmdline"] or []) for h in homes)] == []


@pytest.mark.skipif(shutil.which("gpg") is None, reason="gpg is not installed")
def test_either_configured_key_kind_is_accepted_and_nothing_else(tmp_path, origin, gpg_key):
    ops_home, ops_keyring, _ = gpg_key("ops")
    ssh_ops, ssh_other = ssh_key(tmp_path, "ops"), ssh_key(tmp_path, "other")
    both = source(tmp_path, origin, allowed_signers=allowed_signers(tmp_path, ssh_ops),
                  gpg_keyring=ops_keyring)
    by_gpg = commit(origin, {"a.yaml": "1\n"}, "gpg", "-c", "user.signingkey=ops@example.invalid",
                    env={"GNUPGHOME": ops_home})
    both.verify(both.fetch())
    by_ssh = commit(origin, {"a.yaml": "2\n"}, "ssh", "-c", "gpg.format=ssh",
                    "-c", f"user.signingkey={ssh_ops}.pub")
    both.verify(both.fetch())
    intruder = commit(origin, {"a.yaml": "3\n"}, "intruder", "-c", "gpg.format=ssh",
                      "-c", f"user.signingkey={ssh_other}.pub")
    assert both.fetch() == intruder
    with pytest.raises(SourceError, match=f"commit {intruder[:12]} is not signed by an allowed "
                                          f"key .* or a key of {ops_keyring}"):
        both.verify(intruder)
    # a gpg signature does not satisfy allowed_signers alone, nor an ssh one a keyring alone
    with pytest.raises(SourceError, match="is not signed by an allowed key"):
        source(tmp_path, origin, allowed_signers=allowed_signers(tmp_path, ssh_ops)).verify(by_gpg)
    with pytest.raises(SourceError, match="is not signed by a key of"):
        source(tmp_path, origin, gpg_keyring=ops_keyring).verify(by_ssh)
