"""YAML in, plain data out, with the line:col of every key and value kept.

PyYAML's C composer builds the node graph (linear in the text, aliases are shared nodes);
we construct the data ourselves so we can refuse duplicate keys, count every node an alias
expands to (an alias bomb stops at MAX_NODES in bounded memory) and keep positions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml

from agent.errors import Diagnostic, InputError

Path = tuple[str | int, ...]
MAX_BYTES = 4 * 1024 * 1024
MAX_NODES = 100_000
MAX_DEPTH = 64

_Loader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@dataclass
class Document:
    """A parsed input file: its data and where each piece of it came from."""

    file: str
    data: Any
    value_marks: dict[Path, tuple[int, int]] = field(default_factory=dict)
    key_marks: dict[Path, tuple[int, int]] = field(default_factory=dict)

    def locate(self, path: Path, *, key: bool = False) -> tuple[int, int]:
        """Line and column (1-based) of the value at path, or of its nearest ancestor."""
        marks = self.key_marks if key else self.value_marks
        if key and path in marks:
            return marks[path]
        p = tuple(path)
        while p:
            if p in self.value_marks:
                return self.value_marks[p]
            p = p[:-1]
        return self.value_marks.get((), (1, 1))

    def diag(self, path: Path, message: str, expected: str = "", *, key: bool = False
             ) -> Diagnostic:
        line, col = self.locate(path, key=key)
        return Diagnostic(self.file, line, col, format_path(path), message, expected)


def format_path(path: Path) -> str:
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def read_text(file: str, *, max_bytes: int = MAX_BYTES) -> str:
    """Read a file as UTF-8 text, refusing oversized or undecodable input with a location."""
    try:
        with open(file, "rb") as fh:
            raw = fh.read(max_bytes + 1)
    except OSError as e:
        raise InputError([Diagnostic(file, 1, 1, "", f"cannot read: {e.strerror}",
                                     "a readable YAML file")]) from None
    if len(raw) > max_bytes:
        raise InputError([Diagnostic(file, 1, 1, "", f"file is larger than {max_bytes} bytes",
                                     "a playbook under 4 MiB")])
    try:
        return raw.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as e:
        before = raw[: e.start]
        line = before.count(b"\n") + 1
        col = len(before) - (before.rfind(b"\n") + 1) + 1
        raise InputError([Diagnostic(file, line, col, "",
                                     f"byte 0x{raw[e.start]:02x} is not valid UTF-8",
                                     "text encoded as UTF-8")]) from None


def parse(text: str, file: str) -> Document:
    """Parse one YAML document; every problem is an InputError with a location."""
    if not text.strip() or all(
        not ln.strip() or ln.lstrip().startswith("#") for ln in text.splitlines()
    ):
        raise InputError([Diagnostic(file, 1, 1, "", "file is empty",
                                     "a mapping with name: and resource lists")])
    try:
        node = yaml.compose(text, Loader=_Loader)
    except yaml.MarkedYAMLError as e:
        raise InputError([_yaml_diag(file, e, text)]) from None
    except yaml.YAMLError as e:  # pragma: no cover - every YAML error we know is marked
        raise InputError([Diagnostic(file, 1, 1, "", f"invalid YAML: {e}", "")]) from None
    if node is None:
        raise InputError([Diagnostic(file, 1, 1, "", "file is empty",
                                     "a mapping with name: and resource lists")])
    doc = Document(file, None)
    builder = _Builder(doc)
    doc.data = builder.build(node, (), 0)
    if builder.errors:
        raise InputError(builder.errors)
    return doc


def load(file: str) -> Document:
    return parse(read_text(file), file)


def _yaml_diag(file: str, e: yaml.MarkedYAMLError, text: str) -> Diagnostic:
    mark = e.problem_mark or e.context_mark
    line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
    problem = e.problem or "invalid YAML"
    lines = text.splitlines()
    at = lines[line - 1][col - 1: col] if 0 < line <= len(lines) else ""
    if at == "\t" or "'\\t'" in problem:
        return Diagnostic(file, line, col, "", "tab character in indentation",
                          "indent with spaces")
    if e.context and e.context_mark and ("flow" in e.context):
        opened = f"{e.context_mark.line + 1}:{e.context_mark.column + 1}"
        what = "[" if "sequence" in e.context else "{"
        return Diagnostic(file, line, col, "", f"unclosed '{what}' opened at {opened}",
                          f"a matching '{']' if what == '[' else '}'}'")
    if "expected a single document" in str(e.context or ""):
        return Diagnostic(file, line, col, "", "more than one YAML document",
                          "one document per file (remove the extra ---)")
    detail = f"{e.context}, {problem}" if e.context else problem
    return Diagnostic(file, line, col, "", f"invalid YAML: {detail}", "well-formed YAML")


class _Builder:
    def __init__(self, doc: Document) -> None:
        self.doc = doc
        self.nodes = 0
        self.errors: list[Diagnostic] = []
        self.scalars = yaml.constructor.SafeConstructor()

    def _pos(self, node: yaml.Node) -> tuple[int, int]:
        return node.start_mark.line + 1, node.start_mark.column + 1

    def _count(self, node: yaml.Node, depth: int) -> None:
        self.nodes += 1
        if self.nodes > MAX_NODES or depth > MAX_DEPTH:
            what = (f"more than {MAX_NODES} values" if self.nodes > MAX_NODES
                    else f"nesting deeper than {MAX_DEPTH} levels")
            raise InputError([Diagnostic(self.doc.file, *self._pos(node), "",
                                         f"document expands to {what} (alias bomb or "
                                         "recursive alias?)", "a playbook of ordinary size")])

    def build(self, node: yaml.Node, path: Path, depth: int) -> Any:
        self._count(node, depth)
        self.doc.value_marks.setdefault(path, self._pos(node))
        if isinstance(node, yaml.MappingNode):
            return self._mapping(node, path, depth)
        if isinstance(node, yaml.SequenceNode):
            return [self.build(item, (*path, i), depth + 1) for i, item in enumerate(node.value)]
        assert isinstance(node, yaml.ScalarNode)
        if node.tag == "tag:yaml.org,2002:timestamp":
            return node.value  # keep dates as written; no datetime objects in specs
        try:
            return self.scalars.construct_object(node, deep=True)
        except yaml.constructor.ConstructorError as e:
            self.errors.append(Diagnostic(self.doc.file, *self._pos(node), format_path(path),
                                          f"cannot read value: {e.problem}", ""))
            return None

    def _pairs(self, node: yaml.MappingNode, depth: int) -> list[tuple[yaml.Node, yaml.Node]]:
        """Key/value node pairs with YAML merge keys (<<) expanded, explicit keys winning."""
        own: list[tuple[yaml.Node, yaml.Node]] = []
        merged: list[tuple[yaml.Node, yaml.Node]] = []
        for k, v in node.value:
            if k.tag == "tag:yaml.org,2002:merge":
                sources = v.value if isinstance(v, yaml.SequenceNode) else [v]
                for src in sources:
                    self._count(src, depth)
                    if isinstance(src, yaml.MappingNode):
                        merged.extend(self._pairs(src, depth + 1))
                    else:
                        self.errors.append(Diagnostic(self.doc.file, *self._pos(src), "",
                                                      "merge key << needs a mapping", ""))
            else:
                own.append((k, v))
        own_keys = {k.value for k, _ in own if isinstance(k, yaml.ScalarNode)}
        return own + [(k, v) for k, v in merged if k.value not in own_keys]

    def _mapping(self, node: yaml.MappingNode, path: Path, depth: int) -> dict[str, Any]:
        out: dict[str, Any] = {}
        first_seen: dict[str, tuple[int, int]] = {}
        for key_node, value_node in self._pairs(node, depth):
            if not isinstance(key_node, yaml.ScalarNode):
                self.errors.append(Diagnostic(self.doc.file, *self._pos(key_node),
                                              format_path(path), "a key must be plain text", ""))
                continue
            key = key_node.value
            kpath = (*path, key)
            if key in first_seen:
                line, col = first_seen[key]
                self.errors.append(Diagnostic(
                    self.doc.file, *self._pos(key_node), format_path(kpath),
                    f"duplicate key '{key}'", f"each key once; first given at line {line}"))
                continue
            first_seen[key] = self._pos(key_node)
            self.doc.key_marks[kpath] = self._pos(key_node)
            out[key] = self.build(value_node, kpath, depth + 1)
        return out
