"""Playbooks from a git branch: fetch into a private bare repository, verify, extract.

Every git call is an argv list with a timeout, no terminal prompt and a minimal environment
(no user or system git config), so a url or branch name from the agent config is data and
never shell. A commit's tree is extracted once into ``trees/<sha>`` through ``git archive``
and Python's tarfile, member by member (no absolute paths, no links or special files),
into a temporary directory renamed into place: a crash never leaves half a tree.

Signed commits: with ``allowed_signers`` (SSH) or ``gpg_keyring`` (OpenPGP) set, ``verify``
accepts a commit only when ``git verify-commit`` checks its signature against exactly those
keys (a private GNUPGHOME holding only the keyring for OpenPGP).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass


class SourceError(Exception):
    """A fetch/verify/checkout failure, with a one-line message naming the url and commit."""


@dataclass(frozen=True, slots=True)
class GitSettings:
    url: str
    branch: str = "main"
    path: str = "."
    allowed_signers: str | None = None
    gpg_keyring: str | None = None
    timeout: float = 60.0


def _env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C", "LC_ALL": "C",
           "GIT_TERMINAL_PROMPT": "0", "GIT_CONFIG_NOSYSTEM": "1",
           "GIT_CONFIG_GLOBAL": os.devnull, "HOME": "/nonexistent",
           "GIT_SSH_COMMAND": "ssh -o BatchMode=yes"}
    return {**env, **(extra or {})}


def _tail(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return "; ".join(lines[-2:])[:300] or "no message"


class GitSource:
    def __init__(self, settings: GitSettings, cache_dir: str) -> None:
        self.s = settings
        self.cache_dir = cache_dir
        self.bare = os.path.join(cache_dir, "repo.git")
        self.trees = os.path.join(cache_dir, "trees")

    def _git(self, *args: str, env: dict[str, str] | None = None,
             what: str = "git") -> subprocess.CompletedProcess[str]:
        try:
            p = subprocess.run(["git", "-C", self.bare, *args], capture_output=True, text=True,
                               timeout=self.s.timeout, env=_env(env), stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise SourceError(f"{what} of {self.s.url} took longer than "
                              f"{self.s.timeout:g}s") from None
        except OSError as e:
            raise SourceError(f"cannot run git: {e.strerror}") from None
        return p

    def fetch(self) -> str:
        """Fetch the branch into the private bare repository; the full sha of its tip."""
        os.makedirs(self.cache_dir, mode=0o700, exist_ok=True)
        if not os.path.isdir(os.path.join(self.bare, "objects")):
            p = subprocess.run(["git", "init", "-q", "--bare", self.bare], capture_output=True,
                               text=True, env=_env(), timeout=self.s.timeout)
            if p.returncode != 0:
                raise SourceError(f"cannot create {self.bare}: {_tail(p.stderr)}")
        ref = f"refs/heads/{self.s.branch}"
        p = self._git("fetch", "--quiet", "--prune", "--no-tags", "--", self.s.url,
                      f"+{ref}:{ref}", what="fetch")
        if p.returncode != 0:
            err = _tail(p.stderr)
            if "couldn't find remote ref" in err:
                raise SourceError(f"branch {self.s.branch!r} does not exist in {self.s.url}")
            raise SourceError(f"cannot fetch {self.s.url} branch {self.s.branch}: {err}")
        p = self._git("rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}")
        sha = p.stdout.strip()
        if p.returncode != 0 or len(sha) < 40:
            raise SourceError(f"branch {self.s.branch!r} of {self.s.url} has no commit")
        return sha

    def verify(self, sha: str) -> None:
        """Accept only commits signed by the configured keys (no-op when none is set)."""
        if self.s.allowed_signers is None and self.s.gpg_keyring is None:
            return
        short = sha[:12]
        if self.s.allowed_signers is not None:
            if not os.path.isfile(self.s.allowed_signers):
                raise SourceError(f"commit {short}: allowed_signers file "
                                  f"{self.s.allowed_signers} does not exist")
            p = self._git("-c", f"gpg.ssh.allowedSignersFile={self.s.allowed_signers}",
                          "verify-commit", "--", sha, what="verify-commit")
            if p.returncode == 0:
                return
            ssh_err = _tail(p.stderr)
            if self.s.gpg_keyring is None:
                raise SourceError(f"commit {short} is not signed by an allowed key: {ssh_err}")
        assert self.s.gpg_keyring is not None
        self._verify_gpg(sha, short)

    def _verify_gpg(self, sha: str, short: str) -> None:
        keyring = self.s.gpg_keyring
        assert keyring is not None
        if not os.path.isfile(keyring):
            raise SourceError(f"commit {short}: gpg_keyring {keyring} does not exist")
        home = tempfile.mkdtemp(prefix="gnupg-", dir=self.cache_dir)
        try:
            os.chmod(home, 0o700)
            p = subprocess.run(["gpg", "--batch", "--quiet", "--homedir", home, "--import",
                                keyring], capture_output=True, text=True, env=_env(),
                               timeout=self.s.timeout)
            if p.returncode != 0:
                raise SourceError(f"cannot read gpg_keyring {keyring}: {_tail(p.stderr)}")
            p = self._git("-c", "gpg.format=openpgp", "verify-commit", "--", sha,
                          env={"GNUPGHOME": home}, what="verify-commit")
            if p.returncode != 0:
                raise SourceError(f"commit {short} is not signed by a key of {keyring}: "
                                  f"{_tail(p.stderr)}")
        finally:
            shutil.rmtree(home, ignore_errors=True)

    def checkout(self, sha: str) -> str:
        """The directory holding the tree of ``sha`` at ``path`` (extracted once)."""
        root = os.path.join(self.trees, sha)
        target = os.path.normpath(os.path.join(root, self.s.path))
        if os.path.isdir(root):
            if not os.path.isdir(target):
                raise SourceError(f"commit {sha[:12]} has no directory {self.s.path!r}")
            return target
        os.makedirs(self.trees, mode=0o700, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=f".{sha[:12]}-", dir=self.trees)
        try:
            self._extract(sha, tmp)
            if not os.path.isdir(os.path.normpath(os.path.join(tmp, self.s.path))):
                raise SourceError(f"commit {sha[:12]} has no directory {self.s.path!r}")
            os.rename(tmp, root)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return target

    def _extract(self, sha: str, into: str) -> None:
        proc = subprocess.Popen(["git", "-C", self.bare, "archive", "--format=tar", sha],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env(),
                                stdin=subprocess.DEVNULL)
        assert proc.stdout is not None and proc.stderr is not None
        try:
            with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
                for member in tar:
                    _check_member(member, sha)
                    tar.extract(member, into, set_attrs=False)
        except (tarfile.TarError, OSError) as e:
            proc.kill()
            raise SourceError(f"cannot extract commit {sha[:12]}: {e}") from None
        finally:
            err = proc.stderr.read().decode(errors="replace")
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(self.s.timeout)
        if proc.returncode != 0:
            raise SourceError(f"cannot extract commit {sha[:12]}: {_tail(err)}")

    def prune(self, keep: set[str]) -> None:
        """Remove extracted trees whose commit is not in ``keep``."""
        try:
            names = os.listdir(self.trees)
        except FileNotFoundError:
            return
        for name in names:
            if name not in keep:
                shutil.rmtree(os.path.join(self.trees, name), ignore_errors=True)


def _check_member(member: tarfile.TarInfo, sha: str) -> None:
    """Only plain files and directories at relative paths inside the tree (what tarfile's
    ``data`` filter allows, minus links: a playbook tree has no use for them)."""
    parts = member.name.split("/")
    if member.name.startswith("/") or ".." in parts:
        raise SourceError(f"commit {sha[:12]}: refusing path {member.name!r} outside the tree")
    if not (member.isfile() or member.isdir()):
        raise SourceError(f"commit {sha[:12]}: {member.name!r} is a link or special file; "
                          "playbook trees may hold only files and directories")
