"""From a watch's pattern to one compiled regex over raw log bytes, and the literals a
prefilter looks for.

A watch's ``pattern`` is a Python regex searched in each line. A fail2ban filter becomes a
single regex that does what fail2ban does in three steps: the date at the start of the line,
the ``prefregex`` (taken atomically, as fail2ban matches it before the failregexes), then
the ``failregex`` list as one alternation tried in order — the first that matches decides,
as in fail2ban. Each failregex is a named alternative ``_K`` (``match.lastgroup`` says which)
and its groups are renamed ``NAME__K`` so that the ``<HOST>`` of every line keeps its own
``ip4``/``ip6``/``dns`` groups.

``required_literals`` gives, for each alternative, one string every matching line must
contain (the longest run of literal characters on the alternative's mandatory path); a
prefilter that finds none of them in a line proves the line cannot match.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from agent.watches.dates import DATE_AT_START
from agent.watches.fail2ban import Fail2banFilter, FilterError

_IP4 = r"(?:\d{1,3}\.){3}\d{1,3}"
_IP6 = r"(?:[0-9a-fA-F]{1,4}::?|::){1,7}(?:[0-9a-fA-F]{1,4}|(?<=:):)"
_HOST_TAGS = {
    "IP4": rf"(?:::f{{4,6}}:)?(?P<ip4>{_IP4})",
    "IP6": rf"(?P<ip6>{_IP6})",
    "DNS": r"(?P<dns>[\w\-.^_]*\w)",
    "CIDR": r"(?P<cidr>\d+)",
    "F-ID/": r"(?P<fid>\S+)",
    "F-PORT/": r"(?P<fport>\w+)",
}
_HOST_TAGS["ADDR"] = rf"\[?(?:{_HOST_TAGS['IP4']}|{_HOST_TAGS['IP6']})\]?"
_HOST_TAGS["HOST"] = rf"(?:{_HOST_TAGS['ADDR']}|{_HOST_TAGS['DNS']})"
_HOST_TAGS["SUBNET"] = (rf"\[?(?:{_HOST_TAGS['IP4']}|{_HOST_TAGS['IP6']})"
                        rf"(?:/{_HOST_TAGS['CIDR']})?\]?")
for _t in ("IP4", "IP6", "ADDR", "CIDR", "SUBNET", "DNS"):
    _HOST_TAGS[f"F-{_t}/"] = _HOST_TAGS[_t]
_TAG_NAMES = {"id": "fid", "port": "fport"}
_FTAG = re.compile(r"<(/?)F-([A-Z0-9_-]+)>|<([^ <>]+)>")
_GROUP_REF = re.compile(r"\(\?P<([A-Za-z_]\w*)>|\(\?P=([A-Za-z_]\w*)\)|\(\?\(([A-Za-z_]\w*)\)")
_GLOBAL_FLAGS = re.compile(r"^\(\?([aiLmsux]+)\)")

# Groups whose presence in a fail2ban match means "not a failure" (fail2ban's NOFAIL, and the
# "access gained" marker that forgets a session's earlier failures).
NOT_FAILURE_GROUPS = ("nofail", "mlfgained")
_ALIASES = {"ip": ("ip4", "ip6"), "host": ("ip4", "ip6", "dns")}


def translate_tags(regex: str) -> str:
    """fail2ban's ``<HOST>``, ``<ADDR>``, ``<F-NAME>…</F-NAME>`` into Python groups."""
    open_tags: set[str] = set()

    def one(m: re.Match[str]) -> str:
        closing, ftag, plain = m.group(1), m.group(2), m.group(3)
        if plain is not None:
            return _HOST_TAGS.get(plain, m.group(0))
        assert ftag is not None
        if f"F-{ftag}/" in _HOST_TAGS and not closing and m.group(0).endswith("/>"):
            return _HOST_TAGS[f"F-{ftag}/"]
        if closing:
            return ")" if ftag in open_tags else m.group(0)
        open_tags.add(ftag)
        name = ftag.lower()
        return f"(?P<{_TAG_NAMES.get(name, name)}>"

    return _FTAG.sub(one, regex)


def _rename_groups(regex: str, suffix: str) -> str:
    def one(m: re.Match[str]) -> str:
        if m.group(1):
            return f"(?P<{m.group(1)}{suffix}>"
        if m.group(2):
            return f"(?P={m.group(2)}{suffix})"
        return f"(?({m.group(3)}{suffix})"

    return _GROUP_REF.sub(one, regex)


def _scoped_flags(regex: str) -> str:
    """``(?i)rest`` → ``(?i:rest)``: a global flag may only start a whole pattern."""
    m = _GLOBAL_FLAGS.match(regex)
    return f"(?{m.group(1)}:{regex[m.end():]})" if m else regex


Run = tuple[bytes, ...]  # a literal run's options: one of them is in the line


@dataclass(frozen=True)
class Compiled:
    """A watch's pattern ready to run: ``regex`` is matched (``fail2ban``) or searched
    (plain patterns) within one line; ``alternatives`` are the failregexes in order, and
    ``needs[k]`` the literals a line must all contain for alternative ``k`` to match it."""

    regex: re.Pattern[bytes]
    fail2ban: bool
    alternatives: tuple[str, ...]
    ignore: tuple[re.Pattern[bytes], ...]
    # Per failure-capable alternative, its literal runs (each: options, one of which is in
    # every line it matches); None when some alternative has none (no prefilter).
    runs: tuple[tuple[Run, ...], ...] | None = None
    _groups: tuple[dict[str, int], ...] = field(default=(), repr=False)
    _nofail: tuple[tuple[int, ...], ...] = field(default=(), repr=False)
    _aliases: list[tuple[int, ...]] = field(default_factory=lambda: [()], repr=False)

    def __post_init__(self) -> None:
        per_alt: list[dict[str, int]] = [{} for _ in self.alternatives]
        for name, index in self.regex.groupindex.items():
            if not self.fail2ban:
                per_alt[0][name] = index
                continue
            base, sep, k = name.rpartition("__")
            if sep and k.isdigit():
                per_alt[int(k)][base] = index
        for groups in per_alt:  # fail2ban's <HOST> gives ip4, ip6 or dns; a key names "ip"
            for alias, names in _ALIASES.items():
                found = [groups[n] for n in names if n in groups]
                if found and alias not in groups:
                    groups[alias] = -len(self._aliases)
                    self._aliases.append(tuple(found))
        object.__setattr__(self, "_groups", tuple(per_alt))
        object.__setattr__(self, "_nofail", tuple(
            tuple(g[n] for n in NOT_FAILURE_GROUPS if n in g) for g in per_alt))

    def alternative(self, m: re.Match[bytes]) -> int:
        return int(m.lastgroup[1:]) if self.fail2ban and m.lastgroup else 0

    @property
    def nofail_groups(self) -> tuple[tuple[int, ...], ...]:
        """Per alternative, its fail2ban NOFAIL/MLFGAINED groups: when one takes part, the
        line is no failure."""
        return self._nofail

    def value(self, m: re.Match[bytes], k: int, name: str) -> str | None:
        """One named group of alternative ``k`` (``ip``/``host`` for fail2ban's <HOST>)."""
        for i in self.indexes(k, name):
            raw = m.group(i)
            if raw is not None:
                return raw.decode("utf-8", "replace")
        return None

    def indexes(self, k: int, name: str) -> tuple[int, ...]:
        """The group numbers that give ``name`` in alternative ``k`` (the first that took
        part wins); empty when it has none."""
        index = self._groups[k].get(name)
        if index is None:
            return ()
        return (index,) if index > 0 else self._aliases[-index]

    def literals(self, sample: bytes = b"") -> tuple[bytes, ...] | None:
        """The prefilter's literals: for each alternative the run rarest in ``sample``
        (ties: the longest), so the prefilter passes few lines no alternative matches."""
        if self.runs is None:
            return None
        out: list[bytes] = []
        for runs in self.runs:
            best = min(runs, key=lambda r: (sum(sample.count(o) for o in r),
                                            -min(len(o) for o in r)))
            out += [o for o in best if o not in out]
        return tuple(out)

    def groups(self, m: re.Match[bytes]) -> tuple[int, dict[str, str]]:
        """(alternative index, its named groups that took part, ``__K`` suffix removed)."""
        k = self.alternative(m)
        out = {name: v for name in self._groups[k] if (v := self.value(m, k, name)) is not None}
        return k, out


def compile_plain(pattern: str, ignore: list[str] | None) -> Compiled:
    regex = re.compile(pattern.encode(), re.M)
    return Compiled(regex=regex, fail2ban=False, alternatives=(pattern,),
                    ignore=tuple(re.compile(p.encode(), re.M) for p in ignore or []),
                    runs=literal_runs([pattern]))


def compile_fail2ban(flt: Fail2banFilter, ignore: list[str] | None) -> Compiled:
    alts = [translate_tags(r) for r in flt.failregex]
    body: list[str] = []
    for k, alt in enumerate(alts):
        alt = _scoped_flags(alt)
        alt = alt[1:] if alt.startswith("^") else f"(?:.*?){alt}"
        body.append(f"(?P<_{k}>{_rename_groups(alt, f'__{k}')})")
    prefix = ""
    if flt.prefregex:
        pref = translate_tags(flt.prefregex)
        head, sep, _ = pref.partition("(?P<content>")
        if not sep:
            raise FilterError(f"{flt.path}: prefregex has no <F-CONTENT> part")
        prefix = head[1:] if head.startswith("^") else head
        prefix = re.sub(r"\(\?P<(mlfforget|mlfgained)>", "(?:", prefix)
        prefix = prefix.replace("(?P<mlfid>", "(?P<_mlfid>")  # the connection: see Matcher
    start = f"(?>[ \\t]*(?:{DATE_AT_START})?{prefix})" if flt.datepattern in (
        None, "{^LN-BEG}", "{DEFAULT}") else f"(?>[ \\t]*{prefix})"
    text = f"{start}(?:{'|'.join(body)})"
    try:
        regex = re.compile(text.encode(), re.M)
    except re.error as e:
        raise FilterError(f"{flt.path}: a failregex does not compile as a Python regex: {e}"
                          ) from None
    ignores = [translate_tags(r) for r in flt.ignoreregex] + list(ignore or [])
    try:
        ignore_rx = tuple(re.compile(_scoped_flags(p).encode(), re.M) for p in ignores)
    except re.error as e:
        raise FilterError(f"{flt.path}: an ignoreregex does not compile: {e}") from None
    return Compiled(regex=regex, fail2ban=True, alternatives=tuple(alts), ignore=ignore_rx,
                    runs=literal_runs(alts))


@dataclass(frozen=True)
class _Literals:
    runs: tuple[Run, ...]            # every literal run on the mandatory path
    never_fails: bool                # a NOFAIL/MLFGAINED group is on that path


def literal_runs(alternatives: list[str], *, shortest: int = 3
                 ) -> tuple[tuple[Run, ...], ...] | None:
    """For each alternative that can count as a failure, its literal runs of at least
    ``shortest`` bytes; None when one has none (every line must then be tried)."""
    out: list[tuple[Run, ...]] = []
    for alt in alternatives:
        found = _literals_of(alt)
        if found is not None and found.never_fails:
            continue
        runs = tuple(r for r in found.runs if min(len(o) for o in r) >= shortest) \
            if found is not None else ()
        if not runs:
            return None
        out.append(runs)
    return tuple(out)


_MAX_SET = 16


def _literals_of(regex: str) -> _Literals | None:
    """The runs of literal characters on the pattern's mandatory path (small classes like
    ``[aA]`` and branches of plain words multiply out into options), and whether a
    NOFAIL/MLFGAINED group is on that path (such a line never fails)."""
    try:
        from re import _constants as c  # type: ignore[attr-defined]
        from re import _parser  # type: ignore[attr-defined]
        tree = _parser.parse(_scoped_flags(regex).encode())
    except Exception:  # a regex the parser refuses cannot be prefiltered
        return None
    if tree.state.flags & re.IGNORECASE:
        return None
    names = {v: k for k, v in tree.state.groupdict.items()}
    runs: list[list[bytes]] = []
    current: list[bytes] = [b""]
    never = False

    def flush() -> None:
        nonlocal current
        if current != [b""]:
            runs.append(current)
        current = [b""]

    def extend(options: list[bytes]) -> None:
        nonlocal current
        if len(current) * len(options) > _MAX_SET:
            flush()
            return
        current = [s + o for s in current for o in options]

    def plain(items: Any) -> bytes | None:
        if all(op is c.LITERAL for op, _ in items):
            return bytes(int(av) for _, av in items)
        return None

    def walk(items: Any) -> None:  # the parser's tree: (opcode, argument) pairs
        nonlocal never
        av: Any
        for op, av in items:
            if op is c.LITERAL:
                extend([bytes([int(av)])])
            elif op is c.IN:
                chars = [bytes([int(v)]) for o, v in av if o is c.LITERAL]
                if len(chars) == len(av) and len(chars) <= 4:
                    extend(chars)
                else:
                    flush()
            elif op is c.BRANCH:
                words = [plain(list(b)) for b in av[1]]
                if all(w for w in words):
                    extend([w for w in words if w])
                else:
                    flush()
            elif op is c.SUBPATTERN:
                group, add_flags, _del, sub = av
                if names.get(group) in NOT_FAILURE_GROUPS:
                    never = True
                if add_flags & re.IGNORECASE:
                    flush()
                else:
                    walk(list(sub))
            elif op in (c.AT, c.ASSERT, c.ASSERT_NOT):
                continue  # zero width: the text on both sides is adjacent
            elif op in (c.MAX_REPEAT, c.MIN_REPEAT, c.POSSESSIVE_REPEAT):
                lo, _hi, sub = av
                flush()
                if lo >= 1:
                    walk(list(sub))
                    flush()
            elif op is c.ATOMIC_GROUP:
                walk(list(av))
            else:
                flush()

    walk(list(tree))
    flush()
    return _Literals(runs=tuple(tuple(r) for r in runs), never_fails=never)
