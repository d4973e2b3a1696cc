"""`files:` — regular files (content, template, copied source), directories, absent paths."""

from __future__ import annotations

import os
from typing import Literal

from pydantic import Field, model_validator

from agent.playbook.models.base import Resource
from agent.playbook.types import Mode


class FileSpec(Resource):
    """A path whose type, content and attributes the agent keeps."""

    name: str = Field("", description="Name used in reports; defaults to the path.")
    path: str = Field(description="Absolute path of the file or directory.",
                      examples=["/etc/app/app.env"])
    state: Literal["file", "directory", "absent"] = Field(
        "file", description="file: a regular file; directory; absent: removed if present.")
    content: str | None = Field(None,
                                description="Exact content (templated with the playbook's vars).",
                                examples=["LOG_LEVEL=info\n"])
    template: str | None = Field(
        None, description="Jinja2 template file rendered with the playbook's vars "
        "(relative paths are relative to the playbook).", examples=["templates/nginx.conf.j2"])
    source: str | None = Field(None,
                               description="File copied byte for byte (relative to the playbook).",
                               examples=["files/app.env"])
    mode: Mode | None = Field(None, description="Octal permission bits, quoted. Unset: unmanaged.")
    owner: str | int | None = Field(None, description="User name or uid. Unset: unmanaged.",
                                    examples=["root"])
    group: str | int | None = Field(None, description="Group name or gid. Unset: unmanaged.",
                                    examples=["root"])
    follow: bool = Field(
        False, description="Manage the target when the path is a symlink. Without it the agent "
        "refuses to write through a symlink found in the way.")

    @model_validator(mode="after")
    def _check(self) -> FileSpec:
        if not os.path.isabs(self.path):
            raise ValueError(
                f"path {self.path!r} must be absolute (expected e.g. /etc/app/app.env)")
        given = [k for k in ("content", "template", "source") if getattr(self, k) is not None]
        if len(given) > 1:
            raise ValueError(
                f"give at most one of content, template, source (got {', '.join(given)})")
        if given and self.state != "file":
            raise ValueError(f"{given[0]} only applies to state: file (state is {self.state})")
        if not self.name:
            object.__setattr__(self, "name", os.path.normpath(self.path))
        object.__setattr__(self, "path", os.path.normpath(self.path))
        return self
