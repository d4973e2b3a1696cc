"""The exceptions opsagent raises, one tree under one root.

    OpsAgentError
    ├── InputError(ValueError)          bad input: playbook, inventory, arguments (exit 2)
    │                                   carries every Diagnostic found, not only the first
    ├── UsageError(ValueError)          a bad command-line request (exit 2)
    ├── ProviderError                   a provider could not observe or change the host
    │   ├── ProviderTimeout(TimeoutError)   a provider call ran past its budget
    │   └── UnsafeOperation(PermissionError) refused for safety (symlink in the way, "/")
    └── InternalError(RuntimeError)     a bug in opsagent itself (exit 1)

Third-party exceptions (OSError from the filesystem, psutil errors, later docker, dbus and
paramiko errors) are translated into these at the provider edge, with the resource attached.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Diagnostic:
    """One located problem in an input file, printed as a single line."""

    file: str
    line: int
    col: int
    path: str
    message: str
    expected: str = ""

    def format(self) -> str:
        where = f"{self.file}:{self.line}:{self.col}"
        path = self.path or "(top)"
        tail = f" ({self.expected})" if self.expected else ""
        return f"{where}: {path}: {self.message}{tail}"


class OpsAgentError(Exception):
    """Root of every error opsagent raises on purpose."""


class InputError(OpsAgentError, ValueError):
    """Invalid input; holds every diagnostic found in the files read."""

    def __init__(self, diagnostics: list[Diagnostic]) -> None:
        self.diagnostics = diagnostics
        super().__init__("\n".join(d.format() for d in diagnostics))


class UsageError(OpsAgentError, ValueError):
    """A bad command-line request that has no file position (exit 2), e.g. an unknown id."""


class ProviderError(OpsAgentError):
    """A provider failed to observe or change the host."""


class ProviderTimeout(ProviderError, TimeoutError):
    """A provider call did not finish within its timeout."""


class UnsafeOperation(ProviderError, PermissionError):
    """A change refused because it would be unsafe (the message says how to allow it)."""


class InternalError(OpsAgentError, RuntimeError):
    """A defect in opsagent."""
