"""Plumbing shared by job store implementations (not part of the contract).

Third-party stores may subclass :class:`BaseJobStore` to reuse the sync
planning and the cursor format; nothing requires it.
"""

from __future__ import annotations

import os
import re
import threading
import time
from urllib.parse import parse_qsl, urlencode, urlsplit
from datetime import datetime, timedelta, timezone
from typing import Any, Sequence

import attrs

from pjcore.exceptions import InvalidArgument, JobStateError

from pjcore import cron
from pjcore.abc import JobStore
from pjcore.manifest import JobDeclaration
from pjcore.models import Job, JobStatus, PausedBy, terminal_status

__all__ = ["BaseJobStore", "JobChange", "SyncPlan", "new_id", "plan_sync"]

MAX_PAGE = 1000


def new_id() -> str:
    """A UUID version 7 (RFC 9562): the Unix time in milliseconds, then 74
    bits that start random in each millisecond and grow by a random step
    within it (the RFC's "monotonic random" method). Ids one process makes
    sort in the order it made them, also within a millisecond, so rows a
    store inserts one after the other land side by side in its id indexes
    and in due order: the pages a round touches, all of which a commit
    writes, stay few (random order within a millisecond spread a round of
    ten jobs over seven pages of the jobs table)."""
    global _last_ms, _last_rand
    # os.urandom, not the random module: a program may seed that one, and
    # two processes would then make the same ids
    fresh = int.from_bytes(os.urandom(10), "big")
    ms = time.time_ns() // 1_000_000
    with _id_lock:
        if ms > _last_ms:
            rand = fresh & _RAND_MASK
        else:  # the same millisecond (or the clock went back): count up from the last id
            ms = _last_ms
            rand = _last_rand + 1 + (fresh >> 72)  # a random step of 1..256
            if rand > _RAND_MASK:  # a millisecond's ids used up: borrow the next one
                ms, rand = ms + 1, fresh & _RAND_MASK
        _last_ms, _last_rand = ms, rand
    # version 7 in bits 76-79, the 12 high random bits below it, variant 0b10
    # in bits 62-63, the 62 low random bits below that
    h = f"{ms << 80 | _UUID_V7 | (rand >> 62) << 64 | rand & _LOW_62:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


_RAND_MASK = (1 << 74) - 1
_LOW_62 = (1 << 62) - 1
_UUID_V7 = 0x7 << 76 | 0x2 << 62
_id_lock = threading.Lock()
_last_ms = _last_rand = 0


def _forget_last_id() -> None:
    # A forked child starts from fresh randomness, not from its parent's last
    # id, and with a lock of its own: another thread of the parent may have
    # held it at the fork, and would never release the child's copy.
    global _id_lock, _last_ms, _last_rand
    _id_lock = threading.Lock()
    _last_ms = _last_rand = 0


if hasattr(os, "register_at_fork"):  # not on Windows, which does not fork
    os.register_at_fork(after_in_child=_forget_last_id)


def first_fire(decl_schedule: str | None, tz: str, now: datetime) -> datetime | None:
    if not decl_schedule:
        return None
    return cron.next_after(decl_schedule, now, tz)


@attrs.frozen(kw_only=True)
class JobChange:
    """Fields to write on one existing job (only those listed in ``values``)."""

    job_id: str
    job_key: str
    values: dict[str, Any]
    kind: str  # "updated", "paused", "reactivated"


@attrs.frozen(kw_only=True)
class SyncPlan:
    inserts: tuple[Job, ...]
    changes: tuple[JobChange, ...]
    unchanged: tuple[str, ...]

    def result(self):
        from pjcore.models import SyncResult

        def keys(kind: str) -> tuple[str, ...]:
            return tuple(c.job_key for c in self.changes if c.kind == kind)

        return SyncResult(
            inserted=tuple(j.job_key for j in self.inserts),
            updated=keys("updated"),
            paused=keys("paused"),
            reactivated=keys("reactivated"),
            unchanged=self.unchanged,
        )


def plan_sync(
    plugin_id: str,
    plugin_key: str,
    existing: Sequence[Job],
    declarations: Sequence[JobDeclaration],
    now: datetime,
) -> SyncPlan:
    """Compute what :meth:`JobStore.sync_jobs` must write; a pure function."""
    by_key = {j.job_key: j for j in existing}
    declared = set()
    inserts: list[Job] = []
    changes: list[JobChange] = []
    unchanged: list[str] = []
    for decl in declarations:
        declared.add(decl.job_key)
        job = by_key.get(decl.job_key)
        if job is None:
            inserts.append(
                Job(
                    id=new_id(),
                    plugin_id=plugin_id,
                    plugin_key=plugin_key,
                    job_key=decl.job_key,
                    display_name=decl.display_name,
                    description=decl.description,
                    schedule=decl.schedule,
                    timezone=decl.timezone,
                    policy=decl.policy,
                    status=JobStatus.active,
                    next_run_at=first_fire(decl.schedule, decl.timezone, now),
                    created_at=now,
                    updated_at=now,
                )
            )
            continue
        values: dict[str, Any] = {}
        for field in ("display_name", "description", "schedule", "timezone", "policy"):
            if getattr(job, field) != getattr(decl, field):
                values[field] = getattr(decl, field)
        if job.plugin_key != plugin_key:
            values["plugin_key"] = plugin_key
        kind = "updated"
        timing_changed = "schedule" in values or "timezone" in values
        if job.status is JobStatus.paused and job.paused_by is PausedBy.manifest:
            kind = "reactivated"
            values.update(status=JobStatus.active, paused_by=None, status_reason=None)
            values["next_run_at"] = first_fire(decl.schedule, decl.timezone, now)
        elif job.status is JobStatus.active and timing_changed:
            values["next_run_at"] = first_fire(decl.schedule, decl.timezone, now)
        elif job.status is JobStatus.active and decl.schedule and job.next_run_at is None:
            # e.g. a pointer lost to an earlier crash: an active scheduled job
            # must always have one
            values["next_run_at"] = first_fire(decl.schedule, decl.timezone, now)
        if values:
            values["updated_at"] = now
            changes.append(JobChange(job_id=job.id, job_key=job.job_key, values=values, kind=kind))
        else:
            unchanged.append(job.job_key)
    for job in existing:
        if job.job_key in declared:
            continue
        if job.status is JobStatus.active:
            changes.append(
                JobChange(
                    job_id=job.id,
                    job_key=job.job_key,
                    kind="paused",
                    values=dict(
                        status=JobStatus.paused,
                        paused_by=PausedBy.manifest,
                        status_reason=f"no longer declared in the manifest of plugin {plugin_key!r}",
                        next_run_at=None,
                        updated_at=now,
                    ),
                )
            )
        else:
            unchanged.append(job.job_key)
    return SyncPlan(inserts=tuple(inserts), changes=tuple(changes), unchanged=tuple(unchanged))


def manifest_paused_error(job: Job) -> JobStateError:
    """The error of resuming *job*, paused because its manifest dropped it."""
    return JobStateError(
        f'Job "{job.job_key}" is paused because the manifest of plugin '
        f"{job.plugin_key!r} no longer declares it; declare it again to resume it"
    )


def encode_cursor(created_at: datetime, run_id: str) -> str:
    micros = to_micros(created_at)
    return f"{micros}:{run_id}"


_MICROS = re.compile(r"-?[0-9]+")


def decode_cursor(cursor: str) -> tuple[int, str]:
    if not isinstance(cursor, str):
        raise InvalidArgument(f"malformed cursor {cursor!r}")
    head, sep, run_id = cursor.partition(":")
    # ASCII digits only: str.isdigit() also accepts "²" (which int() refuses)
    # and "٣" (which it reads as 3).
    if not sep or not run_id or not _MICROS.fullmatch(head) or len(cursor) > 200:
        raise InvalidArgument(f"malformed cursor {cursor[:60]!r}")
    micros = int(head)
    if not -(2**63) <= micros < 2**63:  # the stores keep instants in 64-bit columns
        raise InvalidArgument(f"malformed cursor {cursor[:60]!r}")
    return micros, run_id


_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def to_micros(value: datetime) -> int:
    """An aware instant as integer microseconds since the epoch (UTC)."""
    delta = value - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


#: instants by their microseconds, shared: rows read together tend to hold
#: the same few (a burst's jobs share one pointer, a sync's rows one update
#: time), and a datetime is immutable and caches its hash (slot plans are
#: keyed by the pointer)
_INSTANTS: dict[int, datetime] = {}
_INSTANTS_MAX = 4096


def from_micros(value: int | None) -> datetime | None:
    if value is None:
        return None
    instant = _INSTANTS.get(value)
    if instant is None:
        instant = _EPOCH + timedelta(0, 0, value)
        if len(_INSTANTS) >= _INSTANTS_MAX:
            _INSTANTS.clear()  # bounded; dict operations are atomic under the GIL
        _INSTANTS[value] = instant
    return instant


def check_limit(limit: int) -> int:
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_PAGE:
        raise InvalidArgument(f"limit must be an integer between 1 and {MAX_PAGE}, not {limit!r}")
    return limit


_MILLISECOND = timedelta(milliseconds=1)


def duration_ms(started_at: datetime | None, now: datetime) -> int | None:
    if started_at is None:
        return None
    # whole milliseconds, truncated, in integer arithmetic (as the SQL
    # stores compute it): a float product could land a millisecond short
    return max(0, (now - started_at) // _MILLISECOND)


def redact_url(url: str) -> str:
    """*url* for messages: a password in the user part or in the query
    (``?password=...``, which libpq accepts too) becomes ``***``."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    secret_query = any(k.lower() == "password" for k, _ in query)
    if parts.password is None and not secret_query:
        return url
    if parts.password is not None:
        netloc = parts.netloc.rpartition("@")
        user = netloc[0].partition(":")[0]
        parts = parts._replace(netloc=f"{user}:***@{netloc[2]}")
    if secret_query:
        query = [(k, "***" if k.lower() == "password" else v) for k, v in query]
        parts = parts._replace(query=urlencode(query, safe="*"))
    return parts.geturl()


class BaseJobStore(JobStore):
    """Optional base with the helpers above bound as static methods."""

    plan_sync = staticmethod(plan_sync)
    encode_cursor = staticmethod(encode_cursor)
    decode_cursor = staticmethod(decode_cursor)
    check_limit = staticmethod(check_limit)
    terminal_status = staticmethod(terminal_status)
    duration_ms = staticmethod(duration_ms)
    new_id = staticmethod(new_id)
    first_fire = staticmethod(first_fire)
    manifest_paused_error = staticmethod(manifest_paused_error)
