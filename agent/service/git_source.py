"""Playbooks from a git branch: fetch into a private bare repository, verify, extract.

Every git call is an argv list (``git -C <bare> ...``), so a url or branch name from the agent
config is data and never shell. Each runs with a minimal environment (no user or system git
config, no terminal prompt, ssh in batch mode) in its own process group, so the timeout kills
git together with the ssh or remote helper it started instead of leaving them behind.

A commit's tree is extracted once into ``trees/<sha>`` by ``git archive`` streamed into
Python's tarfile, member by member: plain files and directories at relative paths only (no
links, no devices, nothing outside the tree; the ``data`` filter on top where Python has it).
It is written to a temporary directory, synced, then renamed into place, so a crash never
leaves half a tree that a later run would take for a whole one.

Signed commits: with ``allowed_signers`` (SSH) or ``gpg_keyring`` (OpenPGP) set, ``verify``
accepts a commit only when ``git verify-commit`` checks its signature against exactly those
keys: the allowed signers file for SSH, a private throw-away GNUPGHOME holding only the
keyring for OpenPGP (the agent's own keyring, if any, never counts).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import tarfile
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO

KILL_WAIT = 5.0  # bound on reaping a git we killed at its timeout
_HAS_DATA_FILTER = hasattr(tarfile, "data_filter")  # Python >= 3.11.4
_SHA = re.compile(r"[0-9a-f]{40}(?:[0-9a-f]{24})?")  # sha1 or sha256 object names
# Proxies are what a host behind one needs to reach an https remote; nothing else leaks in.
_PASS_ENV = ("http_proxy", "https_proxy", "no_proxy", "all_proxy",
             "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "ALL_PROXY")


class SourceError(Exception):
    """A fetch/verify/checkout failure, with a one-line message naming the url and commit."""


@dataclass(frozen=True, slots=True)
class GitSettings:
    """Where the playbooks live and which commits count."""

    url: str  # any git url; a relative local path is taken from the agent's working directory
    branch: str = "main"
    path: str = "."  # sub-directory of the repository holding playbooks (relative, no "..")
    allowed_signers: str | None = None  # SSH allowed_signers file: only these keys' commits
    gpg_keyring: str | None = None  # OpenPGP keyring (binary or armored): only these keys
    timeout: float = 60.0  # bound, in seconds, for every git subprocess


def _env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {"PATH": os.environ.get("PATH") or "/usr/bin:/bin", "LANG": "C", "LC_ALL": "C",
           "GIT_TERMINAL_PROMPT": "0", "GIT_CONFIG_NOSYSTEM": "1",
           "GIT_CONFIG_GLOBAL": os.devnull, "HOME": "/nonexistent",
           "GIT_SSH_COMMAND": "ssh -o BatchMode=yes"}
    env.update({k: os.environ[k] for k in _PASS_ENV if k in os.environ})
    return {**env, **(extra or {})}


def _tail(text: str) -> str:
    """The last two non-empty lines of a tool's stderr, as one line for an error message."""
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return "; ".join(lines[-2:])[:300] or "no message"


def _redact(url: str) -> str:
    """The url without a password, for messages that end up in logs and status."""
    return re.sub(r"(//[^/@:]*):[^/@]*@", r"\1:***@", url)


def _local_url(url: str) -> str:
    """Anchor a relative local path to our working directory: git runs with ``-C <bare>``.

    Git's own rule: a url is a local path when it has no ``://`` and no colon before its
    first slash (``host:path`` is scp-like ssh).
    """
    if "://" in url:
        return url
    colon, slash = url.find(":"), url.find("/")
    if colon == -1 or (slash != -1 and slash < colon):
        return os.path.abspath(url)
    return url


def _popen(argv: list[str], *, stdout: int | IO[bytes], stderr: int | IO[bytes],
           env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    try:
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr,
                                env=_env(env), start_new_session=True)
    except OSError as e:
        raise SourceError(f"cannot run {argv[0]}: {e.strerror}") from None


def _kill_group(proc: subprocess.Popen[bytes]) -> bool:
    """SIGKILL a running child with its process group; False when it had already ended."""
    if proc.poll() is not None:  # reaped: its pid may belong to someone else by now
        return False
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    return True


def _run(argv: list[str], timeout: float, what: str,
         env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """Run ``argv`` to completion within ``timeout``; (returncode, stdout, stderr)."""
    proc = _popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.communicate(timeout=KILL_WAIT)
        raise SourceError(f"{what} took longer than {timeout:g}s") from None
    return proc.returncode, out.decode(errors="replace"), err.decode(errors="replace")


@contextlib.contextmanager
def _deadline(proc: subprocess.Popen[bytes], timeout: float) -> Iterator[threading.Event]:
    """Kill ``proc``'s group if it still runs after ``timeout``; the event says it was."""
    expired = threading.Event()

    def expire() -> None:
        if _kill_group(proc):
            expired.set()

    timer = threading.Timer(timeout, expire)
    timer.daemon = True
    timer.start()
    try:
        yield expired
    finally:
        timer.cancel()
        timer.join()


class GitSource:
    """One branch of one repository, cached under ``cache_dir`` (``repo.git``, ``trees/``)."""

    def __init__(self, settings: GitSettings, cache_dir: str) -> None:
        self.s = settings
        self.url = _local_url(settings.url)
        self.shown = _redact(settings.url)
        self.cache_dir = os.path.abspath(cache_dir)
        self.bare = os.path.join(self.cache_dir, "repo.git")
        self.trees = os.path.join(self.cache_dir, "trees")

    def _git(self, *args: str, what: str,
             env: dict[str, str] | None = None) -> tuple[int, str, str]:
        code, out, err = _run(["git", "-C", self.bare, *args], self.s.timeout, what, env)
        return code, out, err.replace(self.url, self.shown)

    def _ensure_cache(self) -> None:
        try:
            os.makedirs(self.cache_dir, mode=0o700, exist_ok=True)
            os.chmod(self.cache_dir, 0o700)  # also when it existed, or the umask widened it
        except OSError as e:
            raise SourceError(f"cannot create cache directory {self.cache_dir}: "
                              f"{e.strerror}") from None

    def fetch(self) -> str:
        """Fetch the branch into the private bare repository; the full sha of its tip."""
        self._ensure_cache()
        branch, ref = self.s.branch, f"refs/heads/{self.s.branch}"
        if not os.path.isdir(os.path.join(self.bare, "objects")):
            code, _, err = _run(["git", "-C", self.cache_dir, "init", "-q", "--bare",
                                 "repo.git"], self.s.timeout, f"creating {self.bare}")
            if code != 0:
                raise SourceError(f"cannot create {self.bare}: {_tail(err)}")
        code, _, err = self._git("check-ref-format", ref, what="checking the branch name")
        if code != 0:
            raise SourceError(f"branch {branch!r} of {self.shown} is not a valid branch name")
        # A detached background gc would outlive the timeout: run it inside it, if at all.
        code, _, err = self._git("-c", "gc.autoDetach=false", "-c", "maintenance.autoDetach=false",
                                 "fetch", "--quiet", "--prune", "--no-tags", "--", self.url,
                                 f"+{ref}:{ref}", what=f"fetch of {self.shown}")
        if code != 0:
            if "couldn't find remote ref" in err:
                raise SourceError(f"branch {branch!r} does not exist in {self.shown}")
            raise SourceError(f"cannot fetch {self.shown} branch {branch}: {_tail(err)}")
        code, sha, _ = self._git("rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}",
                                 what=f"reading branch {branch}")
        sha = sha.strip()
        if code != 0 or not _SHA.fullmatch(sha):
            raise SourceError(f"branch {branch!r} of {self.shown} has no commit")
        return sha

    def _commit(self, sha: str) -> str:
        """``sha`` checked to be a full object name: it becomes a path and a git argument."""
        if not _SHA.fullmatch(sha):
            raise SourceError(f"{sha!r} from {self.shown} is not a full commit sha")
        return sha

    def verify(self, sha: str) -> None:
        """Accept only commits signed by the configured keys (a no-op when none is set)."""
        signers, keyring = self.s.allowed_signers, self.s.gpg_keyring
        if signers is None and keyring is None:
            return
        short = self._commit(sha)[:12]
        whose = " or ".join(
            ([f"an allowed key (allowed_signers {signers})"] if signers is not None else [])
            + ([f"a key of {keyring}"] if keyring is not None else []))
        if not self._is_signed(sha):
            raise SourceError(f"commit {short} is not signed by {whose}: it has no signature "
                              f"(from {self.shown})")
        reasons: list[str] = []
        if signers is not None:
            reason = self._verify_ssh(sha, os.path.abspath(signers))
            if reason is None:
                return
            reasons.append(reason)
        if keyring is not None:
            reason = self._verify_gpg(sha, os.path.abspath(keyring))
            if reason is None:
                return
            reasons.append(reason)
        raise SourceError(f"commit {short} is not signed by {whose}: {'; '.join(reasons)} "
                          f"(from {self.shown})")

    def _is_signed(self, sha: str) -> bool:
        """Whether the commit carries a signature at all (git says nothing when it has none)."""
        code, text, err = self._git("cat-file", "commit", sha, what=f"reading commit {sha[:12]}")
        if code != 0:
            raise SourceError(f"cannot read commit {sha[:12]} from {self.shown}: {_tail(err)}")
        header = text.split("\n\n", 1)[0]
        return any(line.startswith(("gpgsig ", "gpgsig-sha256 "))
                   for line in header.splitlines())

    def _verify_ssh(self, sha: str, signers: str) -> str | None:
        """None when an allowed signer signed ``sha``; otherwise why not."""
        if not os.path.isfile(signers):
            return f"allowed_signers file {signers} does not exist"
        code, _, err = self._git("-c", f"gpg.ssh.allowedSignersFile={signers}",
                                 "verify-commit", "--", sha,
                                 what=f"verify-commit of commit {sha[:12]}")
        return None if code == 0 else f"signature: {_tail(err)}"

    def _verify_gpg(self, sha: str, keyring: str) -> str | None:
        """None when a key of ``keyring`` signed ``sha``; otherwise why not."""
        if not os.path.isfile(keyring):
            return f"gpg_keyring {keyring} does not exist"
        # In the system temp dir, not the cache: gpg fails outright when its agent socket
        # path would pass the 108-byte limit, even with no-autostart, and state dirs can be
        # deep. mkdtemp makes it 0700 with a name nobody else can take.
        try:
            home = tempfile.mkdtemp(prefix="opsagent-gnupg-")
        except OSError as e:
            raise SourceError(f"cannot create a temporary GNUPGHOME: {e.strerror}") from None
        try:
            # Importing and verifying need no gpg-agent; without this line gpg would start
            # one per verify and leave it running.
            with open(os.path.join(home, "gpg.conf"), "w") as f:
                f.write("no-autostart\n")
            code, _, err = _run(["gpg", "--batch", "--quiet", "--homedir", home, "--import",
                                 keyring], self.s.timeout, f"importing {keyring}")
            if code != 0:
                return f"cannot read gpg_keyring {keyring}: {_tail(err)}"
            code, _, err = self._git("verify-commit", "--", sha, env={"GNUPGHOME": home},
                                     what=f"verify-commit of commit {sha[:12]}")
            return None if code == 0 else f"signature: {_tail(err)}"
        except OSError as e:
            raise SourceError(f"cannot prepare a GNUPGHOME in {home}: {e.strerror}") from None
        finally:
            shutil.rmtree(home, ignore_errors=True)

    def checkout(self, sha: str) -> str:
        """The directory holding the tree of ``sha`` at ``path`` (extracted once)."""
        short = self._commit(sha)[:12]
        sub = os.path.normpath(self.s.path)
        if os.path.isabs(sub) or sub == ".." or sub.startswith("../"):
            raise SourceError(f"path {self.s.path!r} must be a directory inside the "
                              f"repository {self.shown}")
        root = os.path.join(self.trees, sha)
        if not os.path.isdir(root):
            self._extract_once(sha, root)
        target = os.path.normpath(os.path.join(root, sub))
        if not os.path.isdir(target):
            raise SourceError(f"commit {short} has no directory {self.s.path!r} "
                              f"in {self.shown}")
        return target

    def _extract_once(self, sha: str, root: str) -> None:
        """Extract into a temporary directory, sync it, rename it to ``root``."""
        self._ensure_cache()
        try:
            os.makedirs(self.trees, mode=0o700, exist_ok=True)
            tmp = tempfile.mkdtemp(prefix=f".{sha[:12]}-", dir=self.trees)
        except OSError as e:
            raise SourceError(f"cannot create a tree for commit {sha[:12]} in "
                              f"{self.trees}: {e.strerror}") from None
        try:
            self._extract(sha, tmp)
            _sync_tree(tmp)
            try:
                os.rename(tmp, root)
            except OSError:
                if not os.path.isdir(root):
                    raise
                shutil.rmtree(tmp, ignore_errors=True)  # extracted meanwhile: the same tree
            _sync_dir(self.trees)
        except OSError as e:
            raise SourceError(f"cannot write the tree of commit {sha[:12]} to {root}: "
                              f"{e.strerror or e}") from None
        finally:
            if os.path.isdir(tmp):
                shutil.rmtree(tmp, ignore_errors=True)

    def _extract(self, sha: str, into: str) -> None:
        short = sha[:12]
        with tempfile.TemporaryFile() as errors:  # a file, not a pipe: it can never fill up
            proc = _popen(["git", "-C", self.bare, "archive", "--format=tar", sha],
                          stdout=subprocess.PIPE, stderr=errors)
            assert proc.stdout is not None
            problem = None
            with _deadline(proc, self.s.timeout) as expired:
                try:
                    _untar(proc.stdout, into, short)
                except (tarfile.TarError, OSError) as e:
                    problem = str(e)
                finally:
                    proc.stdout.close()  # a git still writing gets EPIPE and ends
                    proc.wait()  # bounded: the deadline kills it
            errors.seek(0)
            err = errors.read().decode(errors="replace")
        if expired.is_set():
            raise SourceError(f"extracting commit {short} took longer than "
                              f"{self.s.timeout:g}s")
        if proc.returncode != 0:
            raise SourceError(f"cannot extract commit {short} from {self.shown}: {_tail(err)}")
        if problem is not None:
            raise SourceError(f"cannot extract commit {short}: {problem}")

    def prune(self, keep: set[str]) -> None:
        """Remove extracted trees (and leftovers of interrupted extractions) not in ``keep``."""
        try:
            names = os.listdir(self.trees)
        except FileNotFoundError:
            return
        except OSError as e:
            raise SourceError(f"cannot list {self.trees}: {e.strerror}") from None
        for name in names:
            if name not in keep:
                shutil.rmtree(os.path.join(self.trees, name), ignore_errors=True)


def _untar(stream: IO[bytes], into: str, short: str) -> None:
    with tarfile.open(fileobj=stream, mode="r|") as tar:
        for member in tar:
            _check_member(member, short)
            if _HAS_DATA_FILTER:
                tar.extract(member, into, set_attrs=False, filter="data")
            else:
                tar.extract(member, into, set_attrs=False)


def _check_member(member: tarfile.TarInfo, short: str) -> None:
    """Only plain files and directories at relative paths inside the tree: what tarfile's
    ``data`` filter allows, minus links (a playbook tree has no use for them, and this holds
    on Pythons without the filter)."""
    parts = member.name.split("/")
    if member.name.startswith("/") or ".." in parts:
        raise SourceError(f"commit {short}: refusing path {member.name!r} outside the tree")
    if not (member.isfile() or member.isdir()):
        raise SourceError(f"commit {short}: {member.name!r} is a link or special file; "
                          "playbook trees may hold only files and directories")


def _sync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sync_tree(root: str) -> None:
    """Flush every file and directory, so the rename never lands before their content."""
    for dirpath, _dirs, files in os.walk(root, topdown=False):
        for name in files:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _sync_dir(dirpath)
