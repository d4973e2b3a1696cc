"""Which lines of a buffer can possibly match: the lines holding one of the pattern's
required literals (patterns.required_literals).

Most lines of a busy log match nothing, and a Python loop over every line costs more than
the matching itself; so the literals are searched over the whole buffer at once — by
Hyperscan (a SIMD multi-literal matcher) when it is installed, else by ``bytes.find`` per
literal — and only the lines they hit go to the regex. A pattern without usable literals
tries every line.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

Span = tuple[int, int]  # a line's start and end (the offset of its newline)


def line_spans(buf: bytes) -> Iterator[Span]:
    """Every line of ``buf`` (complete lines, each ending with a newline)."""
    find = buf.find
    start = 0
    end = find(b"\n")
    while end != -1:
        yield start, end
        start = end + 1
        end = find(b"\n", start)


class Prefilter:
    def __init__(self, literals: tuple[bytes, ...] | None) -> None:
        self.literals = literals
        self._db: Any = None
        if literals:
            self._db = _hyperscan(literals)

    @property
    def engine(self) -> str:
        if self.literals is None:
            return "every line"
        return "hyperscan" if self._db is not None else "bytes.find"

    def hits(self, buf: bytes) -> list[int]:
        """Offsets, in order, inside lines that may match (several may fall in one line;
        Hyperscan gives each line's newline once); without a prefilter, every line as
        ``-(start + 1)``."""
        if self.literals is None:
            return [-(start + 1) for start, _ in line_spans(buf)]
        hits: list[int] = []
        if self._db is not None:
            add = hits.append

            def on(_id: int, _frm: int, to: int, _flags: int, _ctx: object) -> None:
                add(to - 1)

            self._db.scan(buf, match_event_handler=on)
            return hits
        for lit in self.literals:
            find = buf.find
            at = find(lit)
            while at != -1:
                hits.append(at)
                at = find(lit, at + 1)
        hits.sort()
        return hits


def _hyperscan(literals: tuple[bytes, ...]) -> Any:
    try:
        import hyperscan
    except ImportError:
        return None
    db = hyperscan.Database(mode=hyperscan.HS_MODE_BLOCK)
    # One pattern, any literal then the rest of the line: Hyperscan reports each end offset
    # once, so a line holding several literals is one callback, at its newline. Hex escapes:
    # the literals' bytes, whatever they are, with no metacharacter to escape.
    either = "|".join("".join(f"\\x{b:02x}" for b in lit) for lit in literals)
    try:
        db.compile(expressions=[f"(?:{either})[^\\n]*\\n".encode()], ids=[0], elements=1,
                   flags=0)
    except hyperscan.error:
        return None
    return db
