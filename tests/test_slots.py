"""plan_slots: the misfire policy as a pure function of a job and the current instant."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pjcore import cron, slots
from pjcore.manifest import JobPolicy, MisfirePolicy
from pjcore.models import Job
from pjcore.slots import SlotPlan, plan_slots

UTC = timezone.utc
T0 = datetime(2026, 1, 15, 10, 30, tzinfo=UTC)


def hm(hour: int, minute: int, second: int = 0, day: int = 15) -> datetime:
    return datetime(2026, 1, day, hour, minute, second, tzinfo=UTC)


def job(next_run_at, schedule="*/15 * * * *", misfire="run_once", grace=3600.0, tz="UTC") -> Job:
    return Job(
        id="job-1", plugin_id="p", plugin_key="acme", job_key="sync", display_name="Sync",
        schedule=schedule, timezone=tz,
        policy=JobPolicy(misfire=misfire, misfire_grace_seconds=grace),
        next_run_at=next_run_at, created_at=T0, updated_at=T0,
    )


# -- nothing to plan ------------------------------------------------------------------------


def test_no_pointer_plans_nothing():
    assert plan_slots(job(None), hm(12, 0)) == SlotPlan(run_slot=None, missed=0, next_run_at=None)


def test_manual_only_job_plans_nothing_and_clears_a_stray_pointer():
    plan = plan_slots(job(hm(10, 45), schedule=None), hm(12, 0))
    assert plan == SlotPlan(run_slot=None, missed=0, next_run_at=None)


def test_a_pointer_in_the_future_is_left_alone():
    plan = plan_slots(job(hm(10, 45)), hm(10, 44, 59))
    assert plan == SlotPlan(run_slot=None, missed=0, next_run_at=hm(10, 45))


# -- one slot due ---------------------------------------------------------------------------


@pytest.mark.parametrize("policy", list(MisfirePolicy))
def test_one_due_slot_runs_and_the_pointer_moves_from_the_slot(policy):
    # due exactly now (the boundary is inclusive), and a little later
    assert plan_slots(job(hm(10, 45), misfire=policy), hm(10, 45)) == SlotPlan(
        run_slot=hm(10, 45), missed=0, next_run_at=hm(11, 0))
    # completed or looked at at 10:47: the next slot is still 11:00, not 11:02
    assert plan_slots(job(hm(10, 45), misfire=policy), hm(10, 47)) == SlotPlan(
        run_slot=hm(10, 45), missed=0, next_run_at=hm(11, 0))


def test_pointer_follows_the_job_timezone():
    # 09:00 in Paris is 08:00 UTC in January
    plan = plan_slots(job(hm(8, 0), schedule="0 9 * * *", tz="Europe/Paris"), hm(8, 0, 5))
    assert plan == SlotPlan(run_slot=hm(8, 0), missed=0, next_run_at=hm(8, 0, day=16))


# -- downtime: several slots due ------------------------------------------------------------

# pointer 10:45, now 12:10: slots 10:45 11:00 11:15 11:30 11:45 12:00 are due


def test_run_once_runs_the_latest_slot_and_counts_the_others():
    assert plan_slots(job(hm(10, 45)), hm(12, 10)) == SlotPlan(
        run_slot=hm(12, 0), missed=5, next_run_at=hm(12, 15))


def test_skip_runs_nothing_and_counts_every_slot():
    assert plan_slots(job(hm(10, 45), misfire="skip"), hm(12, 10)) == SlotPlan(
        run_slot=None, missed=6, next_run_at=hm(12, 15))


def test_run_all_runs_the_earliest_slot_and_leaves_the_rest_due():
    plan = plan_slots(job(hm(10, 45), misfire="run_all", grace=None), hm(12, 10))
    assert plan == SlotPlan(run_slot=hm(10, 45), missed=0, next_run_at=hm(11, 0))


def test_run_all_walks_every_missed_slot_in_turn():
    pointer, ran = hm(10, 45), []
    while pointer <= hm(12, 10):
        plan = plan_slots(job(pointer, misfire="run_all", grace=None), hm(12, 10))
        ran.append(plan.run_slot)
        pointer = plan.next_run_at
    assert ran == [hm(10, 45), hm(11, 0), hm(11, 15), hm(11, 30), hm(11, 45), hm(12, 0)]
    assert pointer == hm(12, 15)


# -- the grace window -----------------------------------------------------------------------


def test_run_once_latest_slot_within_grace_runs_boundary_included():
    # 12:00 is exactly 600 s old at 12:10: not later than the grace
    assert plan_slots(job(hm(10, 45), grace=600), hm(12, 10)).run_slot == hm(12, 0)


def test_run_once_latest_slot_past_grace_is_counted_not_run():
    plan = plan_slots(job(hm(10, 45), grace=600), hm(12, 10, 1))
    assert plan == SlotPlan(run_slot=None, missed=6, next_run_at=hm(12, 15))


def test_skip_single_late_slot_is_counted_not_run():
    plan = plan_slots(job(hm(10, 45), misfire="skip", grace=60), hm(10, 47))
    assert plan == SlotPlan(run_slot=None, missed=1, next_run_at=hm(11, 0))


def test_run_all_skips_the_late_slots_and_runs_the_first_within_grace():
    # grace 30 min at 12:10: 10:45 .. 11:30 are late, 11:45 is 25 min old
    plan = plan_slots(job(hm(10, 45), misfire="run_all", grace=1800), hm(12, 10))
    assert plan == SlotPlan(run_slot=hm(11, 45), missed=4, next_run_at=hm(12, 0))


def test_run_all_with_every_slot_late_runs_nothing():
    plan = plan_slots(job(hm(10, 45), misfire="run_all", grace=60), hm(12, 10))
    assert plan == SlotPlan(run_slot=None, missed=6, next_run_at=hm(12, 15))


def test_no_grace_runs_however_late():
    plan = plan_slots(job(hm(10, 45), grace=None), hm(10, 45, day=20))
    assert plan.run_slot == hm(10, 45, day=20) and plan.missed == 5 * 96


# -- long outages: the counting cap ---------------------------------------------------------


def test_counting_cap_still_runs_the_latest_slot(monkeypatch):
    monkeypatch.setattr(slots, "MAX_COUNTED_SLOTS", 50)
    # every minute, down for a day, no grace: 1440 slots, far beyond the cap
    now = hm(10, 45, 30, day=16)
    plan = plan_slots(job(hm(10, 45), schedule="* * * * *", grace=None), now)
    assert plan.run_slot == hm(10, 45, day=16)  # the latest, not where counting stopped
    assert plan.next_run_at == hm(10, 46, day=16)
    assert plan.missed >= 50  # a lower bound past the cap


def test_counting_cap_with_a_sparse_schedule(monkeypatch):
    monkeypatch.setattr(slots, "MAX_COUNTED_SLOTS", 3)
    # every minute of the first hour of each day: the latest slot is hours back
    now = hm(15, 0, day=20)
    plan = plan_slots(job(hm(0, 0), schedule="* 0 * * *", grace=None), now)
    assert plan.run_slot == hm(0, 59, day=20)
    assert plan.next_run_at == hm(0, 0, day=21)


def test_counting_cap_with_grace_counts_and_moves_on(monkeypatch):
    monkeypatch.setattr(slots, "MAX_COUNTED_SLOTS", 50)
    now = hm(10, 45, 30, day=16)
    for policy in MisfirePolicy:
        plan = plan_slots(job(hm(10, 45), schedule="* * * * *", misfire=policy, grace=10), now)
        assert plan.run_slot is None, policy
        assert plan.missed >= 50
        assert plan.next_run_at == hm(10, 46, day=16)


def test_a_per_second_job_down_for_two_hours_counts_exactly():
    now = hm(12, 45, 0) + timedelta(microseconds=500_000)
    plan = plan_slots(job(hm(10, 45), schedule="* * * * * *", grace=None), now)
    assert plan == SlotPlan(run_slot=hm(12, 45), missed=7200, next_run_at=hm(12, 45, 1))


# -- properties -----------------------------------------------------------------------------

SCHEDULES = ["*/15 * * * *", "* * * * *", "0 * * * *", "5,35 9-17 * * 1-5", "0 0 * * *",
             "*/20 * * * * *"]


@settings(max_examples=150, deadline=None)
@given(
    schedule=st.sampled_from(SCHEDULES),
    policy=st.sampled_from(list(MisfirePolicy)),
    grace=st.one_of(st.none(), st.integers(min_value=1, max_value=6 * 3600)),
    start=st.integers(min_value=0, max_value=7 * 86_400),
    down=st.integers(min_value=0, max_value=2 * 86_400),
)
def test_plan_invariants(schedule, policy, grace, start, down):
    first = cron.next_after(schedule, T0 + timedelta(seconds=start))
    now = first + timedelta(seconds=down)
    plan = plan_slots(job(first, schedule=schedule, misfire=policy, grace=grace), now)
    due = [first]
    while (following := cron.next_after(schedule, due[-1])) <= now:
        due.append(following)
    late = [s for s in due if grace is not None and (now - s).total_seconds() > grace]
    if plan.run_slot is not None:
        assert plan.run_slot in due  # a real slot, never in the future
        assert plan.run_slot not in late
    if policy is MisfirePolicy.run_all:
        # everything before the slot it runs is late; what follows stays due
        ran = 0 if plan.run_slot is None else 1
        assert plan.missed == (len(late) if plan.run_slot is None else due.index(plan.run_slot))
        assert plan.missed + ran <= len(due)
        if plan.run_slot is not None:
            assert plan.next_run_at == cron.next_after(schedule, plan.run_slot)
        else:
            assert plan.next_run_at == following
    else:
        # every due slot is accounted for: run once, or counted as missed
        assert plan.missed + (plan.run_slot is not None) == len(due)
        assert plan.next_run_at == following > now
        if policy is MisfirePolicy.run_once:
            assert (plan.run_slot is None) == (due[-1] in late)
            if plan.run_slot is not None:
                assert plan.run_slot == due[-1]
        else:
            assert (plan.run_slot is not None) == (len(due) == 1 and not late)
