"""The models' hot-path constructors: the same objects as the classes make."""

from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import attrs

from pjcore.manifest import JobPolicy
from pjcore.models import (Job, JobRun, JobStatus, PausedBy, RunStatus, RunTrigger, is_utc,
                           job_as_is, run_as_is)

T0 = datetime(2026, 1, 15, 10, 30, tzinfo=timezone.utc)


def test_a_run_stored_as_is_equals_the_one_the_class_builds():
    fields = dict(id="r1", job_id="j1", plugin_id="p1", job_key="sync",
                  trigger=RunTrigger.schedule, status=RunStatus.succeeded, scheduled_for=T0,
                  created_at=T0, started_at=T0, finished_at=T0 + timedelta(seconds=2),
                  duration_ms=2000, error=None, error_detail=None, owner="me",
                  lease_until=T0 + timedelta(minutes=1), attempt=1)
    built = run_as_is(*(fields[f.name] for f in attrs.fields(JobRun)))
    assert built == JobRun(**fields) and type(built) is JobRun
    assert attrs.asdict(built, recurse=False) == fields
    assert hash(built) == hash(JobRun(**fields))


def test_a_job_stored_as_is_equals_the_one_the_class_builds():
    fields = dict(id="j1", plugin_id="p1", plugin_key="acme", job_key="sync",
                  display_name="Sync", description=None, schedule="*/15 * * * *",
                  timezone="UTC", policy=JobPolicy(), status=JobStatus.paused,
                  paused_by=PausedBy.operator, status_reason="maintenance", missed_count=3,
                  next_run_at=None, last_run_at=T0, created_at=T0, updated_at=T0)
    built = job_as_is(*(fields[f.name] for f in attrs.fields(Job)))
    assert built == Job(**fields) and type(built) is Job
    assert attrs.evolve(built, missed_count=4).missed_count == 4  # a real Job


def test_is_utc_is_what_the_converters_leave_unchanged():
    assert is_utc(T0)
    assert not is_utc(T0.astimezone(ZoneInfo("Asia/Tokyo")))
    assert not is_utc(T0.replace(tzinfo=None))
    assert not is_utc(T0.astimezone(ZoneInfo("UTC")))  # UTC, but another tzinfo
    assert not is_utc(None) and not is_utc("2026-01-15T10:30:00+00:00")
