"""Secrets named in playbooks: ``<name>_env`` (an environment variable) or ``<name>_file``.

Read when used, so a rotated secret is picked up without a restart. Errors name the variable
or the file, never a value.
"""

from __future__ import annotations

import os
from typing import Any


def read_secret(spec: Any, name: str, error: type[Exception] = ValueError, *,
                strip: bool = False) -> str:
    """``spec.<name>_env`` or ``spec.<name>_file``; ``error`` (with the reason) when neither is
    given or the one given is unset, unreadable or empty. Trailing newlines are dropped
    (``strip``: all surrounding whitespace, e.g. for a DSN)."""
    env, path = getattr(spec, f"{name}_env", None), getattr(spec, f"{name}_file", None)
    if env is not None:
        value = os.environ.get(env, "")
        value = value.strip() if strip else value
        if not value:
            raise error(f"environment variable {env} ({name}_env) is not set")
        return value
    if path is not None:
        try:
            with open(path, encoding="utf-8") as f:
                value = f.read(1 << 20)
        except OSError as e:
            raise error(f"cannot read {name}_file {path}: {e.strerror or e}") from None
        value = value.strip() if strip else value.rstrip("\r\n")
        if not value:
            raise error(f"{name}_file {path} is empty")
        return value
    raise error(f"give {name}_env or {name}_file")
