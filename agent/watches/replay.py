"""A playbook's watches run over a whole log file (``opsagent watch test``).

The file is cut at line boundaries into one range per worker process (forked, so the
compiled patterns are shared); each worker scans its range in 1 MiB reads and returns, per
watch, its counts and the key and time of every counted match, in file order. The windows
are then replayed in order in the parent, so the answer is the one a single pass gives.
"""

from __future__ import annotations

import os
import pickle
import time
from dataclasses import dataclass, field

from agent.playbook.models.rules import WatchSpec
from agent.watches.matcher import Matcher, Raw, ScanStats, compile_watch

READ_SIZE = 1 << 20
PARALLEL_FROM = 16 << 20  # smaller files are scanned by one process
SAMPLES = 10


@dataclass
class Part:
    """What one range of the file gave one watch: the counted matches' times per key (the
    raw bytes of the key group; matches without it are not counted against a key)."""

    stats: ScanStats = field(default_factory=ScanStats)
    times: dict[bytes, list[float]] = field(default_factory=dict)
    samples: list[str] = field(default_factory=list)


@dataclass
class WatchReplay:
    spec: WatchSpec
    engine: str
    alternatives: tuple[str, ...]
    part: Part
    firings: list[tuple[str, float, int]]  # (key, when, matches in the window)
    top: list[tuple[str, int]]                    # most matched keys


def replay(path: str, watches: list[WatchSpec], *, jobs: int | None = None) -> tuple[
        list[WatchReplay], float]:
    """Scan ``path`` with every watch; (results, seconds taken)."""
    started = time.perf_counter()
    matchers = [Matcher(compile_watch(w)) for w in watches]
    size = os.path.getsize(path)
    if jobs is None:
        jobs = min(os.cpu_count() or 1, 4) if size >= PARALLEL_FROM else 1
    ranges = _ranges(path, size, max(1, jobs))
    parts = _run(path, ranges, watches, matchers)
    out: list[WatchReplay] = []
    for i, (spec, matcher) in enumerate(zip(watches, matchers, strict=True)):
        merged = _merge([p[i] for p in parts])
        firings, top = _windows(spec, merged)
        out.append(WatchReplay(spec=spec, engine=matcher.prefilter.engine,
                               alternatives=matcher.compiled.alternatives, part=merged,
                               firings=firings, top=top))
    return out, time.perf_counter() - started


def _ranges(path: str, size: int, jobs: int) -> list[tuple[int, int]]:
    cuts = [0]
    with open(path, "rb") as fh:
        for j in range(1, jobs):
            fh.seek(size * j // jobs)
            fh.readline()
            at = fh.tell()
            if cuts[-1] < at < size:
                cuts.append(at)
    cuts.append(size)
    return [(a, b) for a, b in zip(cuts, cuts[1:], strict=False) if b > a]


def _run(path: str, ranges: list[tuple[int, int]], watches: list[WatchSpec],
         matchers: list[Matcher]) -> list[list[Part]]:
    if len(ranges) == 1:
        return [_scan_range(path, *ranges[0], watches, matchers)]
    children: list[tuple[int, int]] = []
    for start, end in ranges[1:]:  # the first range is this process's own
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the worker: scan, send, and leave without running the parent's exit
            code = 0
            try:
                os.close(r)
                with os.fdopen(w, "wb") as out:
                    pickle.dump(_scan_range(path, start, end, watches, matchers), out,
                                protocol=pickle.HIGHEST_PROTOCOL)
            except BaseException:
                code = 1
            os._exit(code)
        os.close(w)
        children.append((pid, r))
    results = [_scan_range(path, *ranges[0], watches, matchers)]
    failed = False
    for pid, r in children:
        with os.fdopen(r, "rb") as fh:
            data = fh.read()
        _, status = os.waitpid(pid, 0)
        if status != 0 or not data:
            failed = True
            continue
        results.append(pickle.loads(data))
    if failed:
        raise OSError(f"{path}: a worker scanning the file failed")
    return results


def _scan_range(path: str, start: int, end: int, watches: list[WatchSpec],
                matchers: list[Matcher]) -> list[Part]:
    parts = [Part() for _ in watches]
    keys = [w.key or "" for w in watches]
    with open(path, "rb") as fh:
        fh.seek(start)
        pos, tail = start, b""
        while pos < end:
            data = fh.read(min(READ_SIZE, end - pos))
            if not data:
                break
            pos += len(data)
            buf = tail + data if tail else data
            cut = buf.rfind(b"\n") + 1 if pos < end else len(buf)
            if pos >= end and buf and not buf.endswith(b"\n"):
                buf += b"\n"
                cut = len(buf)
            tail = buf[cut:]
            chunk = buf[:cut]
            for part, key, matcher in zip(parts, keys, matchers, strict=True):
                _collect(matcher, matcher.scan_raw(chunk, part.stats), part, key)
    return parts


def _collect(matcher: Matcher, found: list[Raw], part: Part, key: str) -> None:
    c = matcher.compiled
    index_of = [c.indexes(k, key) for k in range(len(c.alternatives))] if key else []
    times = part.times
    now = time.time()
    for m, k, at, why, addr in found:
        if why:
            continue
        value: bytes | None = b""
        if key and addr is not None and key in ("ip", "host"):
            value = addr.encode()
        elif key:
            value = None
            for i in index_of[k]:
                value = m.group(i)
                if value is not None:
                    break
        if value is None:
            continue
        t = times.get(value)
        if t is None:
            t = times[value] = []
        t.append(at if at is not None else now)
    for m, _k, _at, why, _addr in found:
        if len(part.samples) >= SAMPLES:
            break
        if not why:
            part.samples.append(m.string[m.pos:m.endpos].decode("utf-8", "replace"))


def _merge(parts: list[Part]) -> Part:
    out = Part()
    s = out.stats
    for p in parts:
        s.lines += p.stats.lines
        s.matched += p.stats.matched
        s.ignored += p.stats.ignored
        s.nofail += p.stats.nofail
        for k, v in p.stats.per_alternative.items():
            s.per_alternative[k] = s.per_alternative.get(k, 0) + v
        for key, times in p.times.items():
            have = out.times.get(key)
            if have is None:
                out.times[key] = times
            else:
                have += times
        out.samples += p.samples[: SAMPLES - len(out.samples)]
    return out


def _windows(spec: WatchSpec, part: Part) -> tuple[list[tuple[str, float, int]],
                                                    list[tuple[str, int]]]:
    """Every firing, in time order: the same answer as KeyWindows fed match by match (each
    key's window is independent of the others')."""
    firings: list[tuple[float, str, int]] = []
    threshold, within = spec.threshold, spec.within
    for raw, times in part.times.items():
        key = raw.decode("utf-8", "replace")
        first = 0  # the window is times[first:j + 1]
        for j, at in enumerate(times):
            while times[first] < at - within:
                first += 1
            if j - first + 1 >= threshold:
                firings.append((at, key, j - first + 1))
                first = j + 1
    firings.sort()
    top = sorted(((k.decode("utf-8", "replace"), len(v)) for k, v in part.times.items()),
                 key=lambda kv: (-kv[1], kv[0]))
    return [(k, at, n) for at, k, n in firings], top[:10]
