"""Which backups a retention policy keeps: the rules of ``restic forget`` (and ``borg prune``).

Pure functions over ``(id, time)`` pairs; nothing here touches a disk or a network. The same
``plan`` decides for the local store and for every offsite copy.

The rules
---------
1. Backups are ordered newest first by their time, ties (two runs in the same second) broken
   by id: the greater id counts as the newer one. The input order does not matter.
2. Each backup's time is read as local wall-clock time (the host's zone, or ``tz``) and falls
   into one period per rule::

       keep_last     every backup is its own period
       keep_hourly   %Y-%m-%d %H      (the repeated hour of a DST fall-back is one period)
       keep_daily    %Y-%m-%d
       keep_weekly   ISO year and week, %G-W%V (Monday to Sunday; 2027-01-01 is in 2026-W53)
       keep_monthly  %Y-%m
       keep_yearly   %Y

3. Walking from the newest backup to the oldest, a rule with N > 0 keeps the first (newest)
   backup it meets in each new period, until it has kept N. So it keeps the newest backup of
   each of its N most recent periods *that contain a backup*: a month without backups does not
   use up a ``keep_monthly`` slot. ``-1`` means no limit (every period).
4. If a rule still has slots left when it reaches the oldest backup, it keeps the oldest backup
   too, even when a newer one of the same period was kept (restic ≥ 0.16 and borg ≥ 1.2 do the
   same): the history reaches back as far as it can while the policy is not yet full.
5. Rules are independent: one backup may fill a slot in several rules at once, and a backup
   kept by any rule is kept. (Borg differs here: it applies the rules from the shortest period
   to the longest and a backup kept by one does not count for the next. We follow restic.)
6. A rule of 0 keeps nothing. A policy with no rule other than 0 — or no policy at all — prunes
   nothing: every backup is kept, as ``restic forget`` refuses to act on an empty policy. (The
   playbook model refuses such a ``retention:`` block outright.)
7. A backup whose time is later than ``now`` is kept and flagged (a clock set wrong, on this
   host or another one); it takes no slot in any rule, so it cannot push a good backup out.

Example: daily runs at 02:00 from 2026-10-20 to 2026-11-20 with ``keep_daily: 3, keep_weekly: 2,
keep_monthly: 2`` keep 2026-11-20 (keep_daily #1, keep_weekly #1 2026-W47, keep_monthly #1
2026-11), 2026-11-19 (keep_daily #2), 2026-11-18 (keep_daily #3), 2026-11-15 (keep_weekly #2
2026-W46), 2026-10-31 (keep_monthly #2 2026-10); every other run is pruned. The oldest, 10-20,
is pruned too: every rule filled its slots before reaching it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, tzinfo

from agent.playbook.models.backups import Retention

RULES = ("keep_last", "keep_hourly", "keep_daily", "keep_weekly", "keep_monthly", "keep_yearly")


@dataclass(frozen=True, slots=True)
class Backup:
    """One backup as retention sees it: an id (the run directory's name) and when it ran."""

    id: str
    time: datetime


@dataclass(frozen=True, slots=True)
class Decision:
    """Keep or prune one backup; ``reasons`` names every rule slot that keeps it."""

    backup: Backup
    keep: bool
    reasons: tuple[str, ...] = ()
    flags: tuple[str, ...] = ()

    def explain(self) -> str:
        """One line for ``--explain``: verdict, id, local time and why."""
        verdict = "keep " if self.keep else "prune"
        why = "; ".join((*self.flags, *self.reasons)) or "no rule keeps it"
        return f"{verdict} {self.backup.id}  {self.backup.time.isoformat()}  {why}"


def period(rule: str, local: datetime) -> str:
    """The period of ``rule`` that a local time falls in, as shown by ``--explain``."""
    if rule == "keep_hourly":
        return local.strftime("%Y-%m-%d %H")
    if rule == "keep_daily":
        return local.strftime("%Y-%m-%d")
    if rule == "keep_weekly":
        year, week, _ = local.isocalendar()
        return f"{year}-W{week:02d}"
    if rule == "keep_monthly":
        return local.strftime("%Y-%m")
    if rule == "keep_yearly":
        return local.strftime("%Y")
    raise ValueError(f"{rule!r} has no calendar period (expected one of {', '.join(RULES[1:])})")


def _aware(t: datetime, tz: tzinfo | None) -> datetime:
    """A naive time is wall-clock time in ``tz`` (or the host's zone)."""
    if t.tzinfo is not None:
        return t
    return t.replace(tzinfo=tz) if tz is not None else t.astimezone()


def _counts(rules: Retention | None) -> dict[str, int]:
    if rules is None:
        return {}
    return {r: n for r in RULES if (n := getattr(rules, r)) is not None and n != 0}


def plan(backups: Iterable[Backup], rules: Retention | None, now: datetime,
         tz: tzinfo | None = None) -> list[Decision]:
    """Decide for each backup whether ``rules`` keep it; newest first (see the module rules).

    ``tz`` is the zone the periods are counted in (default: the host's local zone); naive
    times are read as wall-clock times in it.
    """
    now = _aware(now, tz)
    ordered = sorted(((_aware(b.time, tz), b.id, b) for b in backups),
                     key=lambda x: (x[0], x[1]), reverse=True)
    counts = _counts(rules)
    if not counts:
        why = ("no retention policy: nothing is pruned" if rules is None
               else "no keep_* rule above 0: nothing is pruned")
        return [Decision(b, True, (why,)) for _, _, b in ordered]

    future = [b for t, _, b in ordered if t > now]
    flagged = f"newer than now ({now.isoformat()}): kept, clock skew?"
    out = [Decision(b, True, flags=(flagged,)) for b in future]
    considered = [(t.astimezone(tz), b) for t, _, b in ordered if t <= now]
    left = dict(counts)
    last: dict[str, str | None] = dict.fromkeys(counts)
    seq = dict.fromkeys(counts, 0)
    for i, (local, b) in enumerate(considered):
        oldest = i == len(considered) - 1
        reasons: list[str] = []
        for rule in RULES:
            if left.get(rule, 0) == 0:
                continue
            p = f"#{i}" if rule == "keep_last" else period(rule, local)
            if p == last[rule] and not oldest:
                continue
            label = "" if rule == "keep_last" else f" ({p})"
            if p == last[rule]:  # the oldest backup, kept while the rule has slots left
                reasons.append(f"{rule}: oldest backup{label}, the rule has slots left")
            else:
                seq[rule] += 1
                reasons.append(f"{rule} #{seq[rule]}{label}")
            last[rule] = p
            if left[rule] > 0:
                left[rule] -= 1
        out.append(Decision(b, bool(reasons), tuple(reasons)))
    return out


def pruned(decisions: Iterable[Decision]) -> list[Backup]:
    """The backups a plan prunes, newest first."""
    return [d.backup for d in decisions if not d.keep]
