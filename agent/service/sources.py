"""Where the service's playbooks come from: directories, or a git branch, as revisions.

A revision is every playbook of the source, loaded and checked, plus an id: the commit for
git, a content hash for directories. The service only ever swaps a whole valid revision in;
a revision with any error is refused with its id and its located errors, and the last good
one stays in force.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from typing import Any

from agent.errors import InputError
from agent.playbook import LoadedPlaybook, expand_paths
from agent.service.config import AgentConfig, GitSourceConfig


@dataclass(frozen=True)
class Revision:
    id: str  # "git:1a2b3c4…" or "dir:sha256:…"
    playbooks: list[LoadedPlaybook] = field(default_factory=list)

    @property
    def short(self) -> str:
        kind, _, rest = self.id.partition(":")
        return f"{kind}:{rest.removeprefix('sha256:')[:12]}"


class RevisionRejected(Exception):
    """A revision that failed to load: its id and a multi-line error text."""

    def __init__(self, revision: str, message: str) -> None:
        self.revision = revision
        self.message = message
        super().__init__(revision, message)

    def __str__(self) -> str:
        return f"revision {self.revision}: {self.message}"


def load_tree(paths: list[str], variables: dict[str, Any], revision: str) -> Revision:
    """Every playbook under ``paths``, loaded in a child process (``loadchild``)."""
    from agent.service.loadchild import load_tree_in_child

    return load_tree_in_child(paths, variables, revision)


def load_tree_here(paths: list[str], variables: dict[str, Any], revision: str) -> Revision:
    """Every playbook under ``paths``; RevisionRejected with all errors if any is bad."""
    from agent.playbook import load_playbook

    files = expand_paths(paths)
    if not files:
        raise RevisionRejected(revision, "no playbooks (*.yaml, *.yml) under "
                               + ", ".join(paths))
    loaded: list[LoadedPlaybook] = []
    errors: list[str] = []
    for path in files:
        try:
            loaded.append(load_playbook(path, variables, schema_check=False))
        except InputError as e:
            errors.extend(d.format() for d in e.diagnostics)
    names: dict[str, str] = {}
    for pb in loaded:
        if pb.model.name in names:
            errors.append(f"{pb.path}: playbook name {pb.model.name!r} is also used by "
                          f"{names[pb.model.name]} (names must be unique)")
        names[pb.model.name] = pb.path
    if errors:
        raise RevisionRejected(revision, "\n".join(errors))
    return Revision(revision, loaded)


def fingerprint(paths: list[str]) -> str:
    """A hash of the playbook files' names and contents (what a directory revision is)."""
    h = hashlib.sha256()
    for path in expand_paths(paths):
        h.update(path.encode() + b"\0")
        try:
            with open(path, "rb") as f:
                h.update(hashlib.sha256(f.read()).digest())
        except OSError as e:
            h.update(str(e).encode())
    return "dir:sha256:" + h.hexdigest()


class DirectorySource:
    """Playbooks in files and directories: re-read when their content changes."""

    def __init__(self, paths: list[str], variables: dict[str, Any]) -> None:
        self.paths = paths
        self.variables = variables

    def latest(self) -> str:
        return fingerprint(self.paths)

    def load(self, revision: str) -> Revision:
        return load_tree(self.paths, self.variables, revision)


class GitRepoSource:
    """Playbooks on a git branch: fetched, verified when a keyring is set, checked out per
    commit into the state directory (a commit's tree is never modified once extracted)."""

    def __init__(self, cfg: GitSourceConfig, variables: dict[str, Any], state_dir: str) -> None:
        from agent.service.git_source import GitSettings, GitSource

        g = cfg.git
        self.interval = g.interval
        self.variables = variables
        self.git = GitSource(GitSettings(url=g.url, branch=g.branch, path=g.path,
                                         allowed_signers=g.allowed_signers,
                                         gpg_keyring=g.gpg_keyring),
                             os.path.join(state_dir, "git"))

    def latest(self) -> str:
        from agent.service.git_source import SourceError

        try:
            sha: str = self.git.fetch()
            return "git:" + sha
        except SourceError as e:
            raise RevisionRejected("git:?", str(e)) from e

    def load(self, revision: str) -> Revision:
        from agent.service.git_source import SourceError

        sha = revision.removeprefix("git:")
        try:
            self.git.verify(sha)
            tree = self.git.checkout(sha)
        except SourceError as e:
            raise RevisionRejected(revision, str(e)) from e
        return load_tree([tree], self.variables, revision)

    def keep(self, revisions: set[str]) -> None:
        self.git.prune({r.removeprefix("git:") for r in revisions})


Source = DirectorySource | GitRepoSource


def source_of(cfg: AgentConfig) -> Source:
    if isinstance(cfg.playbooks, list):
        return DirectorySource(cfg.playbooks, cfg.vars)
    return GitRepoSource(cfg.playbooks, cfg.vars, cfg.state_dir)
