"""Value types of the playbook language: durations, sizes, file modes, cron schedules.

Each is a pydantic ``Annotated`` type that parses the operator's text into a plain Python
value and publishes a JSON Schema (pattern + example) so editors can check it too.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import BeforeValidator, PlainSerializer, WithJsonSchema

DURATION_PATTERN = r"^\s*(\d+(\.\d+)?(ms|s|m|h|d|w)\s*)+$"
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}

SIZE_PATTERN = r"^\s*\d+(\.\d+)?\s*(B|KB|MB|GB|TB|KiB|MiB|GiB|TiB)?\s*$"
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(B|KB|MB|GB|TB|KiB|MiB|GiB|TiB)?\s*$")
_SIZE_FACTOR = {
    None: 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
    "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40,
}

MODE_PATTERN = r"^0?[0-7]{3,4}$"


def parse_duration(value: Any) -> float:
    """'1h30m' -> 5400.0 seconds. Numbers are refused: '60' is ambiguous, '60s' is not."""
    if isinstance(value, bool) or not isinstance(value, str):
        raise ValueError(f"{value!r} is not a duration (expected text like 30s, 5m, 1h, 7d)")
    text = value.strip()
    if not re.fullmatch(DURATION_PATTERN, text):
        raise ValueError(f"{value!r} is not a duration (expected text like 30s, 5m, 1h30m, 7d)")
    return sum(float(n) * _UNIT_SECONDS[u] for n, u in _DURATION_PART.findall(text))


def format_duration(seconds: float) -> str:
    if seconds and seconds == int(seconds):
        for unit in ("w", "d", "h", "m"):
            if seconds % _UNIT_SECONDS[unit] == 0:
                return f"{int(seconds // _UNIT_SECONDS[unit])}{unit}"
        return f"{int(seconds)}s"
    return f"{round(seconds * 1000)}ms"


def format_size(n: int) -> str:
    """Bytes for people: ``512 B``, ``1.5 KiB``, ``3.2 GiB``."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


def parse_size(value: Any) -> int:
    """'512MiB' -> 536870912 bytes; a bare integer is bytes."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a size (expected text like 512MiB, 2GB)")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("a size cannot be negative")
        return value
    if not isinstance(value, str) or not (m := _SIZE.match(value)):
        raise ValueError(f"{value!r} is not a size (expected text like 512MiB, 2GB, 4096)")
    return int(float(m.group(1)) * _SIZE_FACTOR[m.group(2)])


def parse_mode(value: Any) -> int:
    """'0640' -> 0o640. An unquoted YAML 0640 arrives as the integer 416: refuse it."""
    if isinstance(value, bool) or not isinstance(value, str):
        raise ValueError(
            f"mode {value!r} must be quoted text like \"0640\" "
            "(YAML reads an unquoted 0640 as the decimal number 416)"
        )
    if not re.fullmatch(MODE_PATTERN, value.strip()):
        raise ValueError(f"{value!r} is not an octal file mode (expected text like \"0640\")")
    return int(value.strip(), 8)


def parse_cron(value: Any) -> str:
    """A five-field cron expression (or @daily, @hourly, ...), checked with croniter."""
    if not isinstance(value, str):
        raise ValueError(f"{value!r} is not a cron expression (expected text like \"0 2 * * *\")")
    from croniter import croniter  # only playbooks with schedules pay for the import

    text = value.strip()
    fields = text.split()
    if not text.startswith("@") and len(fields) != 5:
        raise ValueError(
            f"{value!r} has {len(fields)} fields (expected 5 fields: minute hour day month weekday)"
        )
    if not croniter.is_valid(text):
        raise ValueError(f"{value!r} is not a valid cron expression (expected e.g. \"0 2 * * *\")")
    return text


Duration = Annotated[
    float,
    BeforeValidator(parse_duration),
    PlainSerializer(format_duration, return_type=str),
    WithJsonSchema({"type": "string", "pattern": DURATION_PATTERN, "examples": ["30s", "5m"],
                    "x-expected": "a duration like 30s, 5m, 1h30m, 7d"}),
]
Size = Annotated[
    int,
    BeforeValidator(parse_size),
    WithJsonSchema(
        {"anyOf": [{"type": "string", "pattern": SIZE_PATTERN,
                    "x-expected": "a size like 512MiB, 2GB or a number of bytes"},
                   {"type": "integer", "minimum": 0}],
         "examples": ["512MiB"]}
    ),
]
Mode = Annotated[
    int,
    BeforeValidator(parse_mode),
    PlainSerializer(lambda m: f"{m:04o}", return_type=str),
    WithJsonSchema({"type": "string", "pattern": MODE_PATTERN, "examples": ["0640"],
                    "x-expected": 'quoted octal text like "0640"; YAML reads an unquoted 0640 '
                                  "as the decimal number 416"}),
]
Cron = Annotated[
    str,
    BeforeValidator(parse_cron),
    WithJsonSchema({"type": "string", "examples": ["0 2 * * *", "@daily"],
                    "x-expected": 'a cron expression like "0 2 * * *"'}),
]
