"""Host patterns, both kinds Ansible has: ranges that name hosts, and patterns that pick them.

Ranges (in inventory files): ``web[01:10].example.com``, ``db-[a:c]``, ``node[0:20:5]``; a
zero-padded start pads every number to its width, letters run in ``string.ascii_letters``
order, several ranges in one name multiply. ``host:2222`` and ``[2001:db8::1]:2222`` carry a
port. Ansible's ``expand_hostname_range`` and ``parse_address``, with errors instead of
tracebacks, and an empty range (``[10:01]``) refused rather than silently naming no host.

Target patterns (``--limit``, a runbook's ``hosts:``), as Ansible's InventoryManager reads them:

- terms separated by ``,`` (or ``:`` when there is no comma; an IPv6 address or ``host:port``
  stays one term); ``all`` and ``*`` name every host;
- a term is a group or host name, a glob (``web*``: fnmatch, case-sensitive) or a regex
  (``~web\\d+``: ``re.match``, so anchored at the start only); a term that names a group takes
  the group's hosts (children's too), and a glob or regex also takes the hosts it matches;
- ``&term`` intersects, ``!term`` excludes; unions apply first, then intersections, then
  exclusions, whatever the order written; only ``&``/``!`` terms mean ``all`` first;
- ``group[0]``, ``group[-1]``, ``group[1:3]`` (inclusive), ``group[2:]`` pick by position;
- in a limit, ``@FILE`` reads terms from a file, one per line.

Where we are stricter than Ansible (which warns and goes on): a term that names no group and no
host is an error with the nearby names, and so is a selection that leaves no host. Hosts come
back in inventory order (the order the file first names them), not in Ansible's group-walk order.
"""

from __future__ import annotations

import difflib
import fnmatch
import ipaddress
import re
import string
from collections.abc import Sequence
from typing import TYPE_CHECKING

from agent.errors import UsageError

if TYPE_CHECKING:
    from agent.inventory.model import Host, Inventory

# --- ranges -------------------------------------------------------------------------------

_BRACKETED_HOSTPORT = re.compile(r"^\[(.+)\]:([0-9]+)$")
_HOSTPORT = re.compile(r"^((?:[^:\[\]]|\[[^\]]*\])*):([0-9]+)$")
_HOSTNAME = re.compile(r"^(?:[\w]|\[[^\]]*\])(?:[\w-]|\[[^\]]*\])*"
                       r"(?:\.(?:[\w]|\[[^\]]*\])(?:[\w-]|\[[^\]]*\])*)*$")
MAX_RANGE_HOSTS = 100_000


def split_host_port(text: str) -> tuple[str, int | None]:
    """``host:22`` → (host, 22); ``[::1]:22`` → (::1, 22); anything else is a bare name."""
    m = _BRACKETED_HOSTPORT.match(text)
    if m and _is_ip(m[1]):
        return m[1], int(m[2])
    m = _HOSTPORT.match(text)
    if m and m[1] and (_HOSTNAME.match(m[1]) or _is_ip(m[1])):
        return m[1], int(m[2])
    return text, None


def expand_range(text: str) -> list[str]:
    """The host names a name with ``[begin:end(:step)]`` ranges stands for; ValueError if bad."""
    if "[" not in text:
        if "]" in text:
            raise ValueError(f"'{text}' has a ']' without '['")
        return [text]
    head, _, rest = text.partition("[")
    body, closed, tail = rest.partition("]")
    if not closed:
        raise ValueError(f"unclosed '[' in '{text}'")
    bounds = body.split(":")
    if len(bounds) not in (2, 3):
        raise ValueError(f"range [{body}] in '{text}' is not begin:end or begin:end:step")
    beg, end = bounds[0] or "0", bounds[1]
    if not end:
        raise ValueError(f"range [{body}] in '{text}' has no end")
    step = _step(bounds, body, text)
    names = _sequence(beg, end, step, body, text)
    if not names:
        raise ValueError(f"range [{body}] in '{text}' names no host (begin is past end)")
    out: list[str] = []
    for item in names:
        out.extend(expand_range(head + item + tail))
        if len(out) > MAX_RANGE_HOSTS:
            raise ValueError(f"'{text}' expands to more than {MAX_RANGE_HOSTS} hosts")
    return out


def _step(bounds: list[str], body: str, text: str) -> int:
    if len(bounds) < 3:
        return 1
    if not bounds[2].isdigit() or int(bounds[2]) == 0:
        raise ValueError(f"range [{body}] in '{text}' has step '{bounds[2]}'"
                         " (a whole number from 1)")
    return int(bounds[2])


def _sequence(beg: str, end: str, step: int, body: str, text: str) -> list[str]:
    letters = string.ascii_letters
    if len(beg) == 1 and len(end) == 1 and beg in letters and end in letters:
        i, j = letters.index(beg), letters.index(end)
        return list(letters[i:j + 1:step])
    if not (beg.isdigit() and end.isdigit()):
        raise ValueError(f"range [{body}] in '{text}' mixes or misspells its bounds"
                         " (numbers like [01:10] or single letters like [a:f])")
    numbers = range(int(beg), int(end) + 1, step)
    if len(numbers) > MAX_RANGE_HOSTS:
        raise ValueError(f"'{text}' expands to more than {MAX_RANGE_HOSTS} hosts")
    if beg[0] == "0" and len(beg) > 1:
        if len(beg) != len(end):
            raise ValueError(f"range [{body}] in '{text}' pads '{beg}' but not '{end}'"
                             " (begin and end of the same width)")
        return [str(n).zfill(len(beg)) for n in numbers]
    return [str(n) for n in numbers]


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


# --- target patterns ----------------------------------------------------------------------


class PatternError(UsageError):
    """A target pattern that is malformed or selects no host (exit 2)."""

    def __init__(self, message: str, *, pattern: str, term: str = "",
                 near: Sequence[str] = ()) -> None:
        self.pattern, self.term, self.near = pattern, term, list(near)
        super().__init__(message)


_SUBSCRIPT = re.compile(r"^(.+)\[(?:(-?[0-9]+)|([0-9]+)([:-])([0-9]*))\]$")
_TERM_SPLIT = re.compile(r"(?:[^\s:\[\]]|\[[^\]]*\])+")


def split_pattern(pattern: str) -> list[str]:
    """Ansible's split_host_pattern: ``a,b[1], c`` → [a, b[1], c]; ``web:&db`` → [web, &db]."""
    if "," in pattern:
        parts = pattern.split(",")
    elif _is_ip(pattern.strip()) or split_host_port(pattern.strip())[1] is not None:
        parts = [pattern]
    else:
        parts = _TERM_SPLIT.findall(pattern)
    return [p.strip() for p in parts if p.strip()]


def order_terms(terms: Sequence[str]) -> list[str]:
    """Unions, then intersections, then exclusions; ``all`` first when there is no union."""
    plain = [t for t in terms if t[0] not in "&!"]
    return ((plain or ["all"]) + [t for t in terms if t[0] == "&"]
            + [t for t in terms if t[0] == "!"])


def select(inv: Inventory, pattern: str = "all", limit: str | None = None) -> list[Host]:
    """The hosts pattern (restricted to limit) selects, in inventory order; never empty."""
    names = _evaluate(inv, pattern, split_pattern(pattern))
    if limit is not None:
        allowed = set(_evaluate(inv, limit, _limit_terms(limit)))
        names = [n for n in names if n in allowed]
    if not names:
        what = f"'{pattern}'" + (f" limited to '{limit}'" if limit is not None else "")
        where = inv.source or "the inventory"
        raise PatternError(f"host pattern {what} selects no hosts of {where}",
                           pattern=pattern if limit is None else limit)
    chosen = set(names)
    return [h for n, h in inv.hosts.items() if n in chosen]


def _limit_terms(limit: str) -> list[str]:
    terms: list[str] = []
    for term in split_pattern(limit):
        if not term.startswith("@"):
            terms.append(term)
            continue
        try:
            with open(term[1:], encoding="utf-8") as fh:
                terms.extend(line.strip() for line in fh if line.strip())
        except OSError as e:
            raise PatternError(f"limit file {term[1:]}: {e.strerror}", pattern=limit,
                               term=term) from None
    return terms


def _evaluate(inv: Inventory, pattern: str, terms: Sequence[str]) -> list[str]:
    if not terms:
        raise PatternError(f"host pattern '{pattern}' is empty (e.g. all, web, 'web:&prod')",
                           pattern=pattern)
    out: list[str] = []
    for term in order_terms(terms):
        if term in inv.hosts:  # a plain name that is a host is that host, as in Ansible
            out.extend([] if term in out else [term])
            continue
        body = term[1:] if term[0] in "&!" else term
        if not body:
            raise PatternError(f"host pattern '{pattern}': '{term}' has nothing after it",
                               pattern=pattern, term=term)
        that = _match_term(inv, pattern, body)
        if term[0] == "!":
            drop = set(that)
            out = [n for n in out if n not in drop]
        elif term[0] == "&":
            keep = set(that)
            out = [n for n in out if n in keep]
        else:
            seen = set(out)
            out.extend(n for n in that if n not in seen)
    return out


def _match_term(inv: Inventory, pattern: str, term: str) -> list[str]:
    expr, sub = _split_subscript(term)
    try:
        regex = re.compile(expr[1:] if expr.startswith("~") else fnmatch.translate(expr))
    except re.error as e:
        raise PatternError(f"host pattern '{pattern}': '{expr}' is not a valid regular "
                           f"expression: {e}", pattern=pattern, term=term) from None
    groups = [g for g in inv.groups if regex.match(g)]
    found: dict[str, None] = {}
    for g in groups:
        found.update(dict.fromkeys(h.name for h in inv.group_hosts(g)))
    if not groups or expr[0] == "~" or any(c in expr for c in ".?*["):
        found.update(dict.fromkeys(h for h in inv.hosts if regex.match(h)))
    if not groups and not found:
        names = [*inv.groups, *inv.hosts]
        near = difflib.get_close_matches(expr, names, n=3, cutoff=0.6)
        hint = (f"did you mean {', '.join(repr(n) for n in near)}?" if near
                else f"groups: {', '.join(n for n in inv.groups)}")
        raise PatternError(f"host pattern '{pattern}': no group or host matches '{expr}' "
                           f"({hint})", pattern=pattern, term=term, near=near)
    ordered = [n for n in inv.hosts if n in found]
    if sub is None:
        return ordered
    start, end = sub
    if end is None:
        try:
            return [ordered[start]]
        except IndexError:
            raise PatternError(f"host pattern '{pattern}': '{term}' is past the end of the "
                               f"{len(ordered)} hosts '{expr}' matches", pattern=pattern,
                               term=term) from None
    return ordered[start:(len(ordered) if end == -1 else end + 1)]


def _split_subscript(term: str) -> tuple[str, tuple[int, int | None] | None]:
    """``web[0]`` → (web, (0, None)); ``web[1:3]`` → (web, (1, 3)); ``web[2:]`` → (2, -1)."""
    if term.startswith("~"):
        return term, None
    m = _SUBSCRIPT.match(term)
    if not m:
        return term, None
    expr, idx, start, _sep, end = m.groups()
    if idx is not None:
        return expr, (int(idx), None)
    stop = int(end) if end else -1
    # Ansible: [x:0] has a falsy end and means the single host x
    return expr, ((int(start), None) if stop == 0 else (int(start), stop))
