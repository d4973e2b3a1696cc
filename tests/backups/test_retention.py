"""Retention plans against sets computed here, independently, from the documented rules."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from pydantic import ValidationError

from agent.backups.retention import Backup, plan, pruned
from agent.playbook.models.backups import Retention

BERLIN = ZoneInfo("Europe/Berlin")
LABELS = {"keep_hourly": "%Y-%m-%d %H", "keep_daily": "%Y-%m-%d", "keep_weekly": "%G-W%V",
          "keep_monthly": "%Y-%m", "keep_yearly": "%Y"}


def expected_kept(backups: list[Backup], rules: dict[str, int], now: datetime, tz) -> set[str]:
    """The documented rules, written the other way round: group every backup into its period,
    take the newest backup of the N most recent periods, add the oldest backup when a rule has
    more slots than periods; backups after ``now`` are kept and take no slot."""
    future = {b.id for b in backups if b.time > now}
    past = sorted((b for b in backups if b.time <= now), key=lambda b: (b.time, b.id),
                  reverse=True)
    kept = set(future)
    for rule, n in rules.items():
        if n == 0 or not past:
            continue
        if rule == "keep_last":
            kept |= {b.id for b in (past if n < 0 else past[:n])}
            continue
        newest: dict[str, Backup] = {}
        for b in past:
            newest.setdefault(b.time.astimezone(tz).strftime(LABELS[rule]), b)
        periods = sorted(newest, reverse=True)
        chosen = periods if n < 0 else periods[:n]
        kept |= {newest[p].id for p in chosen}
        if n < 0 or len(periods) < n:
            kept.add(past[-1].id)
    return kept


def kept_ids(decisions) -> set[str]:
    return {d.backup.id for d in decisions if d.keep}


def daily_year() -> list[Backup]:
    day = datetime(2026, 1, 1, 2, 0, tzinfo=BERLIN)
    out = []
    while day.year == 2026:
        out.append(Backup(day.strftime("%Y-%m-%d"), day))
        day += timedelta(days=1)
    return out


def test_a_year_of_daily_runs_pruned_to_exactly_the_expected_set():
    backups = daily_year()
    rules = {"keep_daily": 7, "keep_weekly": 4, "keep_monthly": 12, "keep_yearly": 3}
    now = datetime(2027, 1, 1, 3, 0, tzinfo=BERLIN)
    decisions = plan(backups, Retention(**rules), now, BERLIN)

    # written out by hand: the last 7 days; ISO weeks 2026-W53 (Dec 28-Jan 3, newest Dec 31),
    # W52 (-> Dec 27), W51 (-> Dec 20), W50 (-> Dec 13); the last day of each month; the one
    # year with backups (-> Dec 31) and, keep_yearly having 2 slots to spare, the oldest run.
    by_hand = {f"2026-12-{d}" for d in (25, 26, 27, 28, 29, 30, 31, 20, 13)}
    by_hand |= {"2026-01-31", "2026-02-28", "2026-03-31", "2026-04-30", "2026-05-31",
                "2026-06-30", "2026-07-31", "2026-08-31", "2026-09-30", "2026-10-31",
                "2026-11-30", "2026-01-01"}
    assert kept_ids(decisions) == by_hand == expected_kept(backups, rules, now, BERLIN)
    assert len(decisions) == 365 and len(pruned(decisions)) == 365 - 21
    reasons = {d.backup.id: d.reasons for d in decisions}
    assert reasons["2026-12-31"] == ("keep_daily #1 (2026-12-31)", "keep_weekly #1 (2026-W53)",
                                     "keep_monthly #1 (2026-12)", "keep_yearly #1 (2026)")
    assert reasons["2026-12-27"] == ("keep_daily #5 (2026-12-27)", "keep_weekly #2 (2026-W52)")
    assert reasons["2026-01-01"] == (
        "keep_yearly: oldest backup (2026), the rule has slots left",)
    assert [d.backup.id for d in decisions] == sorted((b.id for b in backups), reverse=True)


def test_unlimited_rule_keeps_every_period_and_the_oldest():
    backups = daily_year()
    now = datetime(2027, 1, 1, tzinfo=BERLIN)
    decisions = plan(backups, Retention(keep_monthly=-1), now, BERLIN)
    assert len(kept_ids(decisions)) == 13
    assert kept_ids(decisions) == expected_kept(backups, {"keep_monthly": -1}, now, BERLIN)


def hourly_week() -> list[Backup]:
    """Hourly runs Mon 2026-03-23 to Sun 03-29 (Berlin, the day clocks go forward), a 5-hour
    outage on the 25th, nothing on the 27th, extra runs in one hour and in one second."""
    out = []
    t = datetime(2026, 3, 23, 0, 0, tzinfo=BERLIN).astimezone(UTC)
    end = datetime(2026, 3, 30, 0, 0, tzinfo=BERLIN).astimezone(UTC)
    while t < end:
        local = t.astimezone(BERLIN)
        outage = local.day == 25 and 8 <= local.hour < 13
        if not outage and local.day != 27:
            out.append(Backup(f"{t:%Y%m%dT%H%M%SZ}-0000", t))
        t += timedelta(hours=1)
    for minute in (5, 20, 40):
        t = datetime(2026, 3, 26, 14, minute, tzinfo=BERLIN).astimezone(UTC)
        out.append(Backup(f"{t:%Y%m%dT%H%M%SZ}-0000", t))
    twin = datetime(2026, 3, 26, 18, 0, 0, tzinfo=BERLIN).astimezone(UTC)
    out.append(Backup(f"{twin:%Y%m%dT%H%M%SZ}-ffff", twin))
    return out


def test_a_week_of_hourly_runs_with_gaps_dst_and_bursts():
    backups = hourly_week()
    random.Random(7).shuffle(backups)
    rules = {"keep_last": 3, "keep_hourly": 30, "keep_daily": 5, "keep_weekly": 2}
    now = datetime(2026, 3, 30, 0, 0, tzinfo=BERLIN)
    decisions = plan(backups, Retention(**rules), now, BERLIN)
    kept = kept_ids(decisions)
    assert kept == expected_kept(backups, rules, now, BERLIN)

    def local(i):
        return next(b.time.astimezone(BERLIN) for b in backups if b.id == i)

    # the 29th has 23 hours (02:00 does not exist), so 30 hourly slots reach 17:00 on the 28th
    hours_28 = sorted(local(i).hour for i in kept if local(i).day == 28)
    assert hours_28 == [17, 18, 19, 20, 21, 22, 23]
    assert 2 not in {local(i).hour for i in kept if local(i).day == 29}
    # five days that have backups: 29, 28, 26, 25, 24 (none on the 27th), newest of each
    daily = {local(d.backup.id).strftime("%d %H:%M") for d in decisions
             if any(r.startswith("keep_daily #") for r in d.reasons)}
    assert daily == {"29 23:00", "28 23:00", "26 23:00", "25 23:00", "24 23:00"}
    # one ISO week has backups: keep_weekly keeps its newest and, with a slot left, the oldest
    oldest = min(backups, key=lambda b: b.time)
    assert oldest.id in kept and local(oldest.id).strftime("%d %H:%M") == "23 00:00"
    assert len(kept) == 30 + 3 + 1


def test_a_rule_of_zero_keeps_nothing_by_itself():
    backups = daily_year()[:5]
    now = datetime(2026, 2, 1, tzinfo=BERLIN)
    decisions = plan(backups, Retention(keep_last=2, keep_daily=0), now, BERLIN)
    assert kept_ids(decisions) == {"2026-01-05", "2026-01-04"}
    assert [d.reasons for d in decisions if d.keep] == [("keep_last #1",), ("keep_last #2",)]


def test_no_policy_prunes_nothing_and_the_model_refuses_an_empty_one():
    backups = daily_year()[:4]
    now = datetime(2026, 2, 1, tzinfo=BERLIN)
    assert all(d.keep for d in plan(backups, None, now, BERLIN))
    assert plan(backups, None, now, BERLIN)[0].reasons == (
        "no retention policy: nothing is pruned",)
    all_zero = Retention.model_construct(keep_daily=0, keep_last=0)
    decisions = plan(backups, all_zero, now, BERLIN)
    assert all(d.keep for d in decisions)
    assert decisions[0].reasons == ("no keep_* rule above 0: nothing is pruned",)
    for given in ({}, {"keep_daily": 0}, {"keep_last": 0, "keep_yearly": 0}):
        with pytest.raises(ValidationError, match="no keep_\\* rule above 0"):
            Retention(**given)
    with pytest.raises(ValidationError):
        Retention(keep_daily=-2)


def test_fewer_backups_than_the_rule_allows():
    three = daily_year()[:3]
    now = datetime(2026, 2, 1, tzinfo=BERLIN)
    decisions = plan(three, Retention(keep_daily=7, keep_last=10), now, BERLIN)
    assert all(d.keep for d in decisions)
    assert decisions[2].reasons == ("keep_last #3", "keep_daily #3 (2026-01-01)")
    # two runs on one day: the older of the two is the oldest backup, kept while slots remain
    t = datetime(2026, 1, 1, 2, 0, tzinfo=BERLIN)
    same_day = [Backup("b", t), Backup("a", t - timedelta(hours=1)),
                Backup("c", t + timedelta(days=1))]
    decisions = plan(same_day, Retention(keep_daily=7), now, BERLIN)
    assert [(d.backup.id, d.keep) for d in decisions] == [("c", True), ("b", True), ("a", True)]
    assert decisions[2].reasons == (
        "keep_daily: oldest backup (2026-01-01), the rule has slots left",)
    decisions = plan(same_day, Retention(keep_daily=2), now, BERLIN)
    assert [(d.backup.id, d.keep) for d in decisions] == [("c", True), ("b", True), ("a", False)]


def test_dst_days_count_in_local_time():
    # clocks go back on 2026-10-25 at 03:00 CEST: 00:30Z and 01:30Z are both 02:30 local
    runs = [Backup(n, datetime(2026, 10, 25, h, 30, tzinfo=UTC))
            for n, h in (("cest-0230", 0), ("cet-0230", 1), ("cet-0330", 2))]
    now = datetime(2026, 10, 26, tzinfo=UTC)
    decisions = plan(runs, Retention(keep_hourly=2), now, BERLIN)
    assert [(d.backup.id, d.keep, d.reasons) for d in decisions] == [
        ("cet-0330", True, ("keep_hourly #1 (2026-10-25 03)",)),
        ("cet-0230", True, ("keep_hourly #2 (2026-10-25 02)",)),
        ("cest-0230", False, ())]
    # clocks go forward on 2026-03-29: 22:30Z on the 28th is 23:30 local, 23:30Z is 00:30 on
    # the 29th; in UTC both are the 28th
    runs = [Backup("late-28", datetime(2026, 3, 28, 22, 30, tzinfo=UTC)),
            Backup("early-29", datetime(2026, 3, 28, 23, 30, tzinfo=UTC)),
            Backup("after-jump", datetime(2026, 3, 29, 1, 30, tzinfo=UTC))]
    decisions = plan(runs, Retention(keep_daily=2, keep_hourly=1), now, BERLIN)
    assert {d.backup.id: d.reasons for d in decisions} == {
        "after-jump": ("keep_hourly #1 (2026-03-29 03)", "keep_daily #1 (2026-03-29)"),
        "early-29": (),
        "late-28": ("keep_daily #2 (2026-03-28)",)}
    # the same instants counted in UTC fall on one day
    decisions = plan(runs, Retention(keep_daily=2), now, UTC)
    assert kept_ids(decisions) == {"after-jump", "early-29"}
    # naive times are wall-clock times in tz
    naive = [Backup("n1", datetime(2026, 3, 29, 0, 30)), Backup("n2", datetime(2026, 3, 28, 23, 30))]
    decisions = plan(naive, Retention(keep_daily=5), datetime(2026, 4, 1), BERLIN)
    assert [d.reasons for d in decisions] == [("keep_daily #1 (2026-03-29)",),
                                              ("keep_daily #2 (2026-03-28)",)]


def test_year_boundary_with_iso_week_53():
    runs = []
    day = datetime(2026, 12, 24, 12, tzinfo=UTC)
    while day <= datetime(2027, 1, 10, 12, tzinfo=UTC):
        runs.append(Backup(day.strftime("%Y-%m-%d"), day))
        day += timedelta(days=1)
    rules = {"keep_weekly": 3, "keep_yearly": 2, "keep_monthly": 5}
    now = datetime(2027, 2, 1, tzinfo=UTC)
    decisions = plan(runs, Retention(**rules), now, UTC)
    reasons = {d.backup.id: d.reasons for d in decisions if d.keep}
    assert reasons == {
        "2027-01-10": ("keep_weekly #1 (2027-W01)", "keep_monthly #1 (2027-01)",
                       "keep_yearly #1 (2027)"),
        "2027-01-03": ("keep_weekly #2 (2026-W53)",),  # 2027-01-01..03 belong to 2026-W53
        "2026-12-31": ("keep_monthly #2 (2026-12)", "keep_yearly #2 (2026)"),
        "2026-12-27": ("keep_weekly #3 (2026-W52)",),
        "2026-12-24": ("keep_monthly: oldest backup (2026-12), the rule has slots left",),
    }
    assert set(reasons) == expected_kept(runs, rules, now, UTC)


def test_two_backups_in_the_same_second_and_any_input_order():
    t = datetime(2026, 11, 20, 2, 0, 0, tzinfo=UTC)
    runs = [Backup("20261120T020000Z-aaaa", t), Backup("20261120T020000Z-ffff", t),
            Backup("20261119T020000Z-0000", t - timedelta(days=1))]
    now = t + timedelta(hours=1)
    for order in (runs, runs[::-1], [runs[1], runs[2], runs[0]]):
        assert kept_ids(plan(order, Retention(keep_last=1), now, UTC)) == {
            "20261120T020000Z-ffff"}
        decisions = plan(order, Retention(keep_daily=1), now, UTC)
        assert [(d.backup.id, d.keep) for d in decisions] == [
            ("20261120T020000Z-ffff", True), ("20261120T020000Z-aaaa", False),
            ("20261119T020000Z-0000", False)]


def test_unsorted_input_gives_the_same_plan():
    backups = daily_year()
    rules = Retention(keep_daily=10, keep_weekly=8, keep_monthly=6)
    now = datetime(2027, 1, 1, tzinfo=BERLIN)
    reference = plan(backups, rules, now, BERLIN)
    for seed in range(5):
        shuffled = list(backups)
        random.Random(seed).shuffle(shuffled)
        assert plan(shuffled, rules, now, BERLIN) == reference


def test_backups_newer_than_now_are_kept_flagged_and_take_no_slot():
    t = datetime(2026, 11, 20, 2, 0, tzinfo=UTC)
    runs = [Backup("future", t + timedelta(days=400)), Backup("today", t),
            Backup("yesterday", t - timedelta(days=1))]
    decisions = plan(runs, Retention(keep_last=1), t + timedelta(hours=1), UTC)
    assert [(d.backup.id, d.keep) for d in decisions] == [
        ("future", True), ("today", True), ("yesterday", False)]
    assert decisions[0].flags == ("newer than now (2026-11-20T03:00:00+00:00): kept, clock skew?",)
    assert decisions[0].reasons == () and decisions[1].reasons == ("keep_last #1",)


def test_explain_lines():
    backups = []
    day = datetime(2026, 10, 20, 2, 0, tzinfo=BERLIN)
    while day <= datetime(2026, 11, 20, 2, 0, tzinfo=BERLIN):
        backups.append(Backup(day.strftime("%Y%m%d"), day))
        day += timedelta(days=1)
    backups.append(Backup("20270101", datetime(2027, 1, 1, 2, 0, tzinfo=BERLIN)))
    rules = Retention(keep_daily=3, keep_weekly=2, keep_monthly=2)
    lines = [d.explain() for d in plan(backups, rules, datetime(2026, 11, 21, tzinfo=BERLIN),
                                       BERLIN)]
    assert lines[:7] == [
        "keep  20270101  2027-01-01T02:00:00+01:00  newer than now "
        "(2026-11-21T00:00:00+01:00): kept, clock skew?",
        "keep  20261120  2026-11-20T02:00:00+01:00  keep_daily #1 (2026-11-20); "
        "keep_weekly #1 (2026-W47); keep_monthly #1 (2026-11)",
        "keep  20261119  2026-11-19T02:00:00+01:00  keep_daily #2 (2026-11-19)",
        "keep  20261118  2026-11-18T02:00:00+01:00  keep_daily #3 (2026-11-18)",
        "prune 20261117  2026-11-17T02:00:00+01:00  no rule keeps it",
        "prune 20261116  2026-11-16T02:00:00+01:00  no rule keeps it",
        "keep  20261115  2026-11-15T02:00:00+01:00  keep_weekly #2 (2026-W46)",
    ]
    assert [x for x in lines if x.startswith("keep")][-1] == (
        "keep  20261031  2026-10-31T02:00:00+01:00  keep_monthly #2 (2026-10)")
    assert lines[-1] == "prune 20261020  2026-10-20T02:00:00+02:00  no rule keeps it"
