"""Which slot of a due job runs now, which are missed, and where the pointer goes.

A pure function of the job and the current instant, so every scheduler
implementation applies the misfire policy the same way.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import attrs

from pjcore import cron
from pjcore.manifest import MisfirePolicy
from pjcore.models import Job

__all__ = ["MAX_COUNTED_SLOTS", "SlotPlan", "plan_slots"]

#: a catch-up after a long outage counts at most this many missed slots
#: exactly; beyond it the count is a lower bound (a per-second job down for a
#: day would otherwise cost seconds of CPU to count)
MAX_COUNTED_SLOTS = 100_000

#: windows searched backwards from *now* for the latest slot once counting
#: stopped: the first window holding a slot bounds the forward walk to the
#: slots of that window, whatever the schedule's density
_BACK_WINDOWS = tuple(timedelta(seconds=s) for s in (
    1, 60, 3600, 86_400, 31 * 86_400, 366 * 86_400, 10 * 366 * 86_400, 60 * 366 * 86_400,
))


@attrs.frozen(kw_only=True)
class SlotPlan:
    #: the slot to run now, or None when none may run
    run_slot: datetime | None
    #: slots that will never run (coalesced or past the grace window)
    missed: int
    #: the job's next pointer once this plan is applied
    next_run_at: datetime | None


def _latest_slot(schedule: cron.CronSchedule, known: datetime, now: datetime) -> datetime:
    """The latest fire time at or before *now*; *known* is one such time."""
    for window in _BACK_WINDOWS:
        if now - window <= known:
            break  # the window reaches back to *known*: walk from there
        slot = schedule.next_after(now - window)
        if slot <= now:
            known = slot
            break
    while (following := schedule.next_after(known)) <= now:
        known = following
    return known


def plan_slots(job: Job, now: datetime) -> SlotPlan:
    """Apply the job's misfire policy to its due slots.

    The due slots are ``job.next_run_at`` and every later fire time up to
    *now*. A slot is *late* when ``now - slot`` exceeds the grace window.

    * ``run_once``: run the latest due slot unless it is late; every earlier
      one is coalesced into it (missed).
    * ``skip``: run the slot only if it is the only one due and not late;
      otherwise every due slot is missed.
    * ``run_all``: run the earliest slot that is not late; the pointer then
      moves to the slot after it, so the rest follow one by one.

    The pointer always advances from the scheduled slot, never from *now*.
    Past :data:`MAX_COUNTED_SLOTS` due slots, ``missed`` is a lower bound.

    :raises CronError: the stored schedule cannot be evaluated.
    """
    first = job.next_run_at
    if first is None or not job.schedule:
        return SlotPlan(run_slot=None, missed=0, next_run_at=None)
    if first > now:
        # not due (a caller read the job at another instant): nothing to do
        return SlotPlan(run_slot=None, missed=0, next_run_at=first)
    schedule = cron.get_schedule(job.schedule, job.timezone)
    grace = job.policy.misfire_grace_seconds
    policy = job.policy.misfire

    def late(slot: datetime) -> bool:
        return grace is not None and (now - slot).total_seconds() > grace

    if policy is MisfirePolicy.run_all:
        slot, skipped = first, 0
        while late(slot) and slot <= now and skipped < MAX_COUNTED_SLOTS:
            slot, skipped = schedule.next_after(slot), skipped + 1
        if slot > now:
            return SlotPlan(run_slot=None, missed=skipped, next_run_at=slot)
        if late(slot):  # counting cap reached: give up on this backlog
            return SlotPlan(run_slot=None, missed=skipped, next_run_at=schedule.next_after(now))
        return SlotPlan(run_slot=slot, missed=skipped, next_run_at=schedule.next_after(slot))

    latest, earlier = first, 0
    while earlier < MAX_COUNTED_SLOTS:
        following = schedule.next_after(latest)
        if following > now:
            break
        latest, earlier = following, earlier + 1
    else:
        # Counting stopped short of *now*: the slot to run is still the
        # latest one, not the one where counting stopped.
        following = schedule.next_after(now)
        latest = _latest_slot(schedule, latest, now)
    if late(latest) or (policy is MisfirePolicy.skip and earlier):
        return SlotPlan(run_slot=None, missed=earlier + 1, next_run_at=following)
    return SlotPlan(run_slot=latest, missed=earlier, next_run_at=following)
