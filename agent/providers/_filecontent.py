"""Content of the files provider: the desired bytes (content, template, source) and how a
difference is shown (digests for reports, a unified diff for --diff; never the bytes).
"""

from __future__ import annotations

import difflib
import hashlib
import os

from agent.errors import ProviderError
from agent.playbook.models import FileSpec
from agent.providers.base import ProviderContext

DIFF_LIMIT = 256 * 1024  # larger content gets a one-line note instead of a unified diff


def _resolve(ctx: ProviderContext, rel: str) -> str:
    return rel if os.path.isabs(rel) else os.path.join(ctx.base_dir, rel)


def read_desired(spec: FileSpec, ctx: ProviderContext) -> bytes | None:
    if spec.content is not None:
        return spec.content.encode()  # already rendered by the loader
    if spec.source is not None:
        src = _resolve(ctx, spec.source)
        try:
            with open(src, "rb") as fh:
                return fh.read()
        except OSError as e:
            raise ProviderError(f"source {src}: {e.strerror or e} "
                                "(relative paths are relative to the playbook)") from None
    if spec.template is not None:
        return render_template(_resolve(ctx, spec.template), ctx)
    return None


def render_template(path: str, ctx: ProviderContext) -> bytes:
    # The shared sandboxed, StrictUndefined environment; jinja2 is imported on first use.
    from agent.playbook.templating import describe_error, environment

    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except OSError as e:
        raise ProviderError(f"template {path}: {e.strerror or e} "
                            "(relative paths are relative to the playbook)") from None
    except UnicodeDecodeError:
        raise ProviderError(f"template {path}: not UTF-8 text") from None
    try:
        rendered: str = environment().from_string(text).render(dict(ctx.variables))
    except Exception as e:  # jinja2's many error types, each reported with the file
        what, expected = describe_error(e)
        line = getattr(e, "lineno", None)
        where = f"{path}:{line}" if line else path
        raise ProviderError(f"template {where}: {what}" +
                            (f" ({expected})" if expected else "")) from None
    return rendered.encode()


def digest(data: bytes | None, size: int | None) -> str:
    if data is None:  # not read: the sizes alone showed a difference
        return f"{size} bytes"
    return f"sha256:{hashlib.sha256(data).hexdigest()[:12]}… ({len(data)} bytes)"


def content_diff(before: bytes | None, after: bytes, path: str, new: bool) -> str:
    if not new and before is None:
        return "content differs (the file on the host is too large to show)"
    old = before or b""
    if len(old) > DIFF_LIMIT or len(after) > DIFF_LIMIT:
        return "content differs (too large to show)"
    try:
        old_text, new_text = old.decode(), after.decode()
    except UnicodeDecodeError:
        return "binary content differs"
    lines = difflib.unified_diff(old_text.splitlines(keepends=True),
                                 new_text.splitlines(keepends=True),
                                 "/dev/null" if new else f"{path} (on the host)",
                                 f"{path} (wanted)")
    return "".join(x if x.endswith("\n") else x + "\n\\ No newline at end of file\n"
                   for x in lines)
