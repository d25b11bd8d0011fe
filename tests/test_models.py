"""The models' positional constructors: the same objects as the classes make."""

from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import attrs
import pytest

from pjcore.exceptions import InvalidArgument
from pjcore.manifest import JobPolicy
from pjcore.models import (Job, JobRun, JobStatus, PausedBy, RunStatus, RunTrigger, new_job,
                           new_run)

T0 = datetime(2026, 1, 15, 10, 30, tzinfo=timezone.utc)


def run_fields(**changes):
    fields = dict(id="r1", job_id="j1", plugin_id="p1", job_key="sync",
                  trigger=RunTrigger.schedule, status=RunStatus.succeeded, scheduled_for=T0,
                  created_at=T0, started_at=T0, finished_at=T0 + timedelta(seconds=2),
                  duration_ms=2000, error=None, error_detail=None, owner="me",
                  lease_until=T0 + timedelta(minutes=1), attempt=1)
    return {**fields, **changes}


def positional(cls, fields):
    return [fields[f.name] for f in attrs.fields(cls)]


def test_a_run_built_positionally_equals_the_one_the_class_builds():
    fields = run_fields()
    built = new_run(*positional(JobRun, fields))
    assert built == JobRun(**fields) and type(built) is JobRun
    assert attrs.asdict(built, recurse=False) == fields
    assert hash(built) == hash(JobRun(**fields))


def test_the_class_converters_apply():
    tokyo = ZoneInfo("Asia/Tokyo")
    fields = run_fields(trigger="manual", status="failed", scheduled_for=None,
                        created_at=T0.astimezone(tokyo), started_at=T0.astimezone(tokyo))
    built = new_run(*positional(JobRun, fields))
    assert built == JobRun(**fields)
    assert built.trigger is RunTrigger.manual and built.status is RunStatus.failed
    assert built.created_at.tzinfo is timezone.utc and built.started_at.tzinfo is timezone.utc
    # and refuse what they refuse
    with pytest.raises(InvalidArgument):
        new_run(*positional(JobRun, run_fields(created_at=T0.replace(tzinfo=None))))
    with pytest.raises(TypeError):
        new_run(*positional(JobRun, run_fields(created_at=None)))
    with pytest.raises(ValueError):
        new_run(*positional(JobRun, run_fields(status="no such status")))


def test_a_job_built_positionally_equals_the_one_the_class_builds():
    fields = dict(id="j1", plugin_id="p1", plugin_key="acme", job_key="sync",
                  display_name="Sync", description=None, schedule="*/15 * * * *",
                  timezone="UTC", policy=JobPolicy(), status="paused",
                  paused_by="operator", status_reason="maintenance", missed_count=3,
                  next_run_at=None, last_run_at=T0, created_at=T0, updated_at=T0)
    built = new_job(*positional(Job, fields))
    assert built == Job(**fields) and type(built) is Job
    assert built.status is JobStatus.paused and built.paused_by is PausedBy.operator
    assert attrs.evolve(built, missed_count=4).missed_count == 4  # a real Job


def test_the_instant_converters_keep_utc_convert_other_zones_and_refuse_the_rest():
    from pjcore.models import as_aware_utc, optional_aware_utc

    class Stamp(datetime):  # a datetime subclass (as some libraries make)
        pass

    utc = datetime(2026, 1, 15, 10, 30, tzinfo=timezone.utc)
    paris = datetime(2026, 1, 15, 11, 30, tzinfo=timezone(timedelta(hours=1)))
    for convert in (as_aware_utc, optional_aware_utc):
        assert convert(utc) is utc
        assert convert(paris) == utc and convert(paris).tzinfo is timezone.utc
        stamp = convert(Stamp(2026, 1, 15, 10, 30, tzinfo=timezone.utc))
        assert stamp == utc and stamp.tzinfo is timezone.utc
        with pytest.raises(InvalidArgument, match="naive"):
            convert(datetime(2026, 1, 15, 10, 30))
        with pytest.raises(TypeError, match="expected a datetime"):
            convert("2026-01-15T10:30:00Z")
    assert optional_aware_utc(None) is None
    with pytest.raises(TypeError):
        as_aware_utc(None)
