"""Stock fail2ban filters, read unchanged (``pattern: {fail2ban_filter: PATH}``).

A filter is an INI file (``filter.d/NAME.conf``) with its ``NAME.local`` override, the files
named by ``[INCLUDES] before/after`` (each with its own ``.local``), a ``[DEFAULT]``,
``[Definition]`` and ``[Init]`` section and helper sections such as ``[lt_file]``. Values are
resolved the way fail2ban resolves them:

1. ``%(name)s`` and ``%(section/name)s`` — configparser-style interpolation, the option taken
   from the same section, then ``[DEFAULT]``; ``%(known/name)s`` is the value an earlier file
   gave that option.
2. ``<name>`` tags — replaced by the option's value (innermost first, so
   ``<lt_<logtype>/__prefix_line>`` works); a filter's parameters (``mode``, ``publickey``, …)
   come from ``[Init]`` and from the watch's ``options`` (fail2ban's ``sshd[mode=aggressive]``).
   Tags that are not options (``<HOST>``, ``<F-USER>``) are left for the regex translation.

Multi-line filters (``maxlines`` > 1, ``<SKIPLINES>``) are refused with a clear message: a
watch matches one line at a time.
"""

from __future__ import annotations

import configparser
import os
import re
from dataclasses import dataclass, field

_INTERP = re.compile(r"%\(([^)]+)\)s")
_TAG = re.compile(r"<([^ <>]+)>")
_MAX_DEPTH = 30


class FilterError(ValueError):
    """A filter that cannot be read or used; the message names the file."""


@dataclass(frozen=True)
class Fail2banFilter:
    """A resolved filter: regexes still in fail2ban's syntax (``<HOST>``, ``<F-…>`` tags)."""

    path: str
    prefregex: str | None
    failregex: tuple[str, ...]
    ignoreregex: tuple[str, ...]
    datepattern: str | None
    maxlines: int
    options: dict[str, str] = field(default_factory=dict)


def _read_layers(path: str, seen: set[str]) -> list[dict[str, dict[str, str]]]:
    """Every file that makes up ``path``, lowest precedence first: before-includes, the file,
    its ``.local``, after-includes."""
    real = os.path.realpath(path)
    if real in seen:
        return []
    seen.add(real)
    layers: list[dict[str, dict[str, str]]] = []
    own: list[dict[str, dict[str, str]]] = []
    before: list[str] = []
    after: list[str] = []
    base, _ = os.path.splitext(path)
    for candidate in (path, base + ".local"):
        if not os.path.isfile(candidate):
            if candidate == path:
                raise FilterError(f"{path}: no such fail2ban filter file")
            continue
        # DEFAULT is read as a plain section: fail2ban's own lookup order is applied below.
        parser = configparser.RawConfigParser(strict=False, interpolation=None,
                                              comment_prefixes=("#", ";"),
                                              inline_comment_prefixes=None,
                                              empty_lines_in_values=False,
                                              default_section="\x00")
        parser.optionxform = str  # type: ignore[assignment,method-assign]
        try:
            with open(candidate, encoding="utf-8") as fh:
                parser.read_file(fh, source=candidate)
        except (OSError, UnicodeDecodeError, configparser.Error) as e:
            raise FilterError(f"{candidate}: {e}".replace("\n", " ")) from None
        layer = {section: dict(parser.items(section, raw=True))
                 for section in parser.sections()}
        includes = layer.pop("INCLUDES", {})
        here = os.path.dirname(candidate)
        before += [os.path.join(here, n) for n in includes.get("before", "").split()]
        after += [os.path.join(here, n) for n in includes.get("after", "").split()]
        own.append(layer)
    for inc in before:
        if os.path.isfile(inc) or not inc.endswith(".local"):
            layers += _read_layers(inc, seen)
    layers += own
    for inc in after:
        if os.path.isfile(inc):
            layers += _read_layers(inc, seen)
    return layers


class _Options:
    """The merged sections of a filter and fail2ban's two kinds of substitution."""

    def __init__(self, layers: list[dict[str, dict[str, str]]], path: str) -> None:
        self.path = path
        self.layers = layers
        self.sections: dict[str, dict[str, str]] = {}
        for layer in layers:
            for name, values in layer.items():
                self.sections.setdefault(name, {}).update(values)

    def raw(self, section: str, name: str, *, below: int | None = None) -> str | None:
        layers = self.layers if below is None else self.layers[:below]
        value = None
        for layer in layers:
            for sec in ("DEFAULT", section):
                if name in layer.get(sec, {}):
                    value = layer[sec][name]
        return value

    def get(self, section: str, name: str, depth: int = 0) -> str | None:
        value = self.raw(section, name)
        return None if value is None else self.interpolate(section, value, name, depth)

    def interpolate(self, section: str, value: str, name: str = "", depth: int = 0) -> str:
        if depth > _MAX_DEPTH:
            raise FilterError(f"{self.path}: [{section}] {name}: interpolation too deep "
                              "(a value that refers to itself?)")

        def one(m: re.Match[str]) -> str:
            ref = m.group(1)
            sec, _, opt = ref.rpartition("/")
            if sec == "known":
                layer = self._layer_of(section, name)
                found = self.raw(section, opt, below=layer) if layer is not None else None
                if found is None:
                    return ""
                return self.interpolate(section, found, opt, depth + 1)
            found = self.get(sec or section, opt, depth + 1)
            if found is None:
                raise FilterError(f"{self.path}: [{section}] {name}: %({ref})s names no "
                                  "option")
            return found

        return _INTERP.sub(one, value)

    def _layer_of(self, section: str, name: str) -> int | None:
        for i in range(len(self.layers) - 1, -1, -1):
            if name in self.layers[i].get(section, {}) or \
                    name in self.layers[i].get("DEFAULT", {}):
                return i
        return None

    def substitute_tags(self, value: str, known: dict[str, str]) -> str:
        """Replace ``<name>`` tags by option values, innermost first, until none is left
        that names an option (``<HOST>`` and ``<F-…>`` stay)."""
        for _ in range(_MAX_DEPTH):
            changed = False

            def one(m: re.Match[str]) -> str:
                nonlocal changed
                tag = m.group(1)
                if tag in known:
                    changed = True
                    return known[tag]
                sec, _, opt = tag.partition("/")
                if opt and sec in self.sections:
                    found = self.get(sec, opt)
                    if found is not None:
                        changed = True
                        return found
                return m.group(0)

            value = _TAG.sub(one, value)
            if not changed:
                return value
        raise FilterError(f"{self.path}: tags nested too deep (a tag that refers to itself?)")


def load_filter(path: str, options: dict[str, str] | None = None) -> Fail2banFilter:
    """Read a stock filter with its includes and ``.local`` overrides; ``options`` are the
    filter's parameters (fail2ban's ``filter = sshd[mode=aggressive]``)."""
    opts = _Options(_read_layers(path, set()), path)
    known: dict[str, str] = {}
    for section in ("DEFAULT", "Definition", "Init"):
        for name in opts.sections.get(section, {}):
            value = opts.get(section, name)
            if value is not None:
                known[name] = value
    unknown = sorted(set(options or {}) - set(known) - _parameters(opts))
    if unknown:
        raise FilterError(f"{path}: the filter has no parameter {', '.join(unknown)}")
    known.update(options or {})

    def regex_list(name: str) -> tuple[str, ...]:
        text = opts.substitute_tags(known.get(name, ""), known)
        return tuple(line.strip() for line in text.splitlines() if line.strip())

    failregex = regex_list("failregex")
    if not failregex:
        raise FilterError(f"{path}: the filter has no failregex")
    try:
        maxlines = int(known.get("maxlines", "1") or 1)
    except ValueError:
        raise FilterError(f"{path}: maxlines must be a number") from None
    if maxlines > 1 or any("<SKIPLINES>" in r for r in failregex):
        raise FilterError(f"{path}: multi-line filters (maxlines {maxlines}, <SKIPLINES>) are "
                          "not supported: a watch matches one line at a time")
    pref = opts.substitute_tags(known.get("prefregex", ""), known).strip() or None
    date = opts.substitute_tags(known.get("datepattern", ""), known).strip() or None
    return Fail2banFilter(path=path, prefregex=pref, failregex=failregex,
                          ignoreregex=regex_list("ignoreregex"), datepattern=date,
                          maxlines=maxlines, options=dict(options or {}))


def _parameters(opts: _Options) -> set[str]:
    """Names a filter's regexes use as ``<tag>`` parameters (``mode``, ``publickey``)."""
    names: set[str] = set()
    for section in opts.sections.values():
        for value in section.values():
            names.update(_TAG.findall(value))
    return names
