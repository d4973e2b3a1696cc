"""Backups: sources → store (zstd, optional encryption, manifest) → verify → restore.

    sources.py    what a backup reads: pg_dump/pg_dumpall, a Redis RDB, a tar of paths, a
                  command's stdout; each artefact a stream, never through a shell
    store.py      the destination's layout, atomic runs (.tmp-RUNID + rename), the manifest,
                  the per-backup lock, listing
    crypto.py     age (pyrage) and AES-256-GCM streams, keys from files only
    run.py        run_backup / list_backups / newest_age: what the CLI and the service call
    verify.py     checksums, full decompression, a scratch-database restore and query
    restore.py    put a run back: a database, a directory tree, an RDB or a command's output
    retention.py  which runs a retention policy keeps (pure)

The errors raised here, under the project's root (agent/errors.py)::

    OpsAgentError
    └── BackupError                       a run, verify or restore failed (exit 4)
        ├── BackupBusy(BlockingIOError)   another run of the same backup holds its lock
        ├── SourceError                   pg_dump, redis, tar or the command failed
        ├── KeyMaterialError              a key/recipient/identity file is missing or wrong
        ├── IntegrityError(ValueError)    a stored artefact differs from its manifest, or its
        │                                 encryption does not authenticate
        └── RestoreRefused(PermissionError) the target holds data and --force was not given
                                          (nothing was changed; the CLI exits 2)
"""

from __future__ import annotations

from typing import Protocol

from agent.errors import OpsAgentError


class BackupError(OpsAgentError):
    """A backup run, a verification or a restore failed."""


class BackupBusy(BackupError, BlockingIOError):
    """Another run of the same backup is in progress (its lock is held)."""


class SourceError(BackupError):
    """Reading the source failed: a dump tool exited non-zero, Redis did not save, …"""


class KeyMaterialError(BackupError):
    """A key, recipients or identity file is missing, unreadable, malformed or wrong."""


class IntegrityError(BackupError, ValueError):
    """A stored artefact does not match its manifest or fails authentication."""


class RestoreRefused(BackupError, PermissionError):
    """A restore would overwrite existing data and was not told to (--force)."""


class Readable(Protocol):
    """A binary stream read in chunks (a pipe, a file, a decompressor)."""

    def read(self, size: int = -1, /) -> bytes: ...


class Writable(Protocol):
    """A binary sink; ``write`` returns the number of bytes taken (all of them)."""

    def write(self, data: bytes, /) -> int: ...
