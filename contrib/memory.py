"""An in-memory job store: for tests, demos and single-process hosts.

Nothing survives the process. All state sits behind one lock, which makes
every method atomic for the threads of this process (and only for them).
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Iterator, Sequence

import attrs

from pjcore.exceptions import (
    InvalidArgument,
    JobAlreadyRunning,
    JobLookupError,
    SlotAlreadyClaimed,
    StoreError,
)
from pjcore.manifest import JobDeclaration
from pjcore.models import (
    NON_TERMINAL,
    Claim,
    Job,
    JobRun,
    JobStatus,
    PausedBy,
    RunPage,
    RunStatus,
    RunTrigger,
    SyncResult,
    as_aware_utc,
    optional_aware_utc,
)
from pjcore.store_base import BaseJobStore, to_micros

__all__ = ["MemoryJobStore"]


def _run_order(run: JobRun) -> tuple[int, str]:
    # the total order of list_runs and its cursors: (created_at, id), compared exactly
    return (to_micros(run.created_at), run.id)


class MemoryJobStore(BaseJobStore):
    """Jobs and runs in dicts of frozen models, guarded by one re-entrant lock."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._jobs: dict[str, Job] = {}
        self._runs: dict[str, JobRun] = {}
        self._closed = False

    @contextmanager
    def _open(self) -> Iterator[None]:
        with self._lock:
            if self._closed:
                raise StoreError("the job store is closed")
            yield

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._jobs.clear()
            self._runs.clear()

    def _job(self, job_id: str) -> Job:
        job = self._jobs.get(job_id)
        if job is None:
            raise JobLookupError(job_id)
        return job

    # -- jobs ----------------------------------------------------------------

    def sync_jobs(
        self,
        plugin_id: str,
        plugin_key: str,
        declarations: Sequence[JobDeclaration],
        *,
        now: datetime,
    ) -> SyncResult:
        now = as_aware_utc(now)
        with self._open():
            existing = [j for j in self._jobs.values() if j.plugin_id == plugin_id]
            plan = self.plan_sync(plugin_id, plugin_key, existing, declarations, now)
            for job in plan.inserts:
                self._jobs[job.id] = job
            for change in plan.changes:
                self._jobs[change.job_id] = attrs.evolve(self._jobs[change.job_id], **change.values)
            return plan.result()

    def list_jobs(self, plugin_id: str | None = None, *, status: str | None = None) -> list[Job]:
        wanted = None if status is None else JobStatus(status)
        with self._open():
            jobs = [
                j
                for j in self._jobs.values()
                if (plugin_id is None or j.plugin_id == plugin_id)
                and (wanted is None or j.status is wanted)
            ]
        return sorted(jobs, key=lambda j: (j.plugin_key, j.job_key))

    def get_job(self, job_id: str) -> Job | None:
        with self._open():
            return self._jobs.get(job_id)

    def get_job_by_key(self, plugin_id: str, job_key: str) -> Job | None:
        with self._open():
            return next(
                (j for j in self._jobs.values() if j.plugin_id == plugin_id and j.job_key == job_key),
                None,
            )

    def get_job_for_plugin(self, plugin_id: str, job_id: str) -> Job | None:
        with self._open():
            job = self._jobs.get(job_id)
        return job if job is not None and job.plugin_id == plugin_id else None

    def pause_job(self, job_id: str, *, reason: str | None = None, now: datetime) -> Job:
        with self._open():
            job = attrs.evolve(
                self._job(job_id),
                status=JobStatus.paused,
                paused_by=PausedBy.operator,
                status_reason=reason,
                next_run_at=None,
                updated_at=now,
            )
            self._jobs[job_id] = job
            return job

    def resume_job(self, job_id: str, *, now: datetime) -> Job:
        now = as_aware_utc(now)
        with self._open():
            job = self._job(job_id)
            if job.status is JobStatus.active:
                return job
            if job.paused_by is PausedBy.manifest:
                raise self.manifest_paused_error(job)
            job = attrs.evolve(
                job,
                status=JobStatus.active,
                paused_by=None,
                status_reason=None,
                next_run_at=self.first_fire(job.schedule, job.timezone, now),
                updated_at=now,
            )
            self._jobs[job_id] = job
            return job

    def set_next_run(
        self,
        job_id: str,
        *,
        expected: datetime | None,
        next_run_at: datetime | None,
        last_run_at: datetime | None = None,
        now: datetime,
    ) -> bool:
        # normalising first makes a naive *expected* an error, not a silent mismatch
        expected = optional_aware_utc(expected)
        with self._open():
            job = self._jobs.get(job_id)
            if job is None or job.status is not JobStatus.active or job.next_run_at != expected:
                return False
            values = dict(next_run_at=next_run_at, updated_at=now)
            if last_run_at is not None:
                values["last_run_at"] = last_run_at
            self._jobs[job_id] = attrs.evolve(job, **values)
            return True

    def due_jobs(
        self, now: datetime, *, limit: int = 100, plugin_ids: Sequence[str] | None = None
    ) -> list[Job]:
        self.check_limit(limit)
        now = as_aware_utc(now)
        wanted = None if plugin_ids is None else set(plugin_ids)
        with self._open():
            due = [
                j
                for j in self._jobs.values()
                if j.status is JobStatus.active and j.next_run_at is not None
                and j.next_run_at <= now and (wanted is None or j.plugin_id in wanted)
            ]
        due.sort(key=lambda j: (j.next_run_at, j.id))
        return due[:limit]

    def next_due_at(self, plugin_ids: Sequence[str] | None = None) -> datetime | None:
        wanted = None if plugin_ids is None else set(plugin_ids)
        with self._open():
            return min(
                (
                    j.next_run_at
                    for j in self._jobs.values()
                    if j.status is JobStatus.active and j.next_run_at is not None
                    and (wanted is None or j.plugin_id in wanted)
                ),
                default=None,
            )

    def claim_slot(
        self,
        job_id: str,
        *,
        expected: datetime | None,
        run_slot: datetime | None,
        next_run_at: datetime | None,
        missed: int = 0,
        now: datetime,
        owner: str | None = None,
        lease_until: datetime | None = None,
    ) -> Claim:
        # every instant checked before anything is written
        expected = optional_aware_utc(expected)
        run_slot = optional_aware_utc(run_slot)
        next_run_at = optional_aware_utc(next_run_at)
        now = as_aware_utc(now)
        lease_until = optional_aware_utc(lease_until)
        with self._open():
            job = self._jobs.get(job_id)
            if job is None or job.status is not JobStatus.active or job.next_run_at != expected:
                return Claim(applied=False)
            run = None
            values: dict = dict(next_run_at=next_run_at, updated_at=now,
                                missed_count=job.missed_count + missed)
            if run_slot is not None:
                runs = [r for r in self._runs.values() if r.job_id == job_id]
                if any(r.status in NON_TERMINAL for r in runs):
                    return Claim(applied=False)
                if not any(r.scheduled_for == run_slot for r in runs):
                    run = JobRun(id=self.new_id(), job_id=job_id, plugin_id=job.plugin_id,
                                 job_key=job.job_key, trigger=RunTrigger.schedule,
                                 scheduled_for=run_slot, created_at=now, owner=owner,
                                 lease_until=lease_until)
                    self._runs[run.id] = run
                values["last_run_at"] = run_slot
            self._jobs[job_id] = attrs.evolve(job, **values)
            return Claim(applied=True, run=run)

    def delete_plugin(self, plugin_id: str) -> int:
        with self._open():
            doomed = [i for i, j in self._jobs.items() if j.plugin_id == plugin_id]
            for job_id in doomed:
                del self._jobs[job_id]
            for run_id in [i for i, r in self._runs.items() if r.plugin_id == plugin_id]:
                del self._runs[run_id]
            return len(doomed)

    # -- runs ----------------------------------------------------------------

    def create_run(
        self,
        job_id: str,
        *,
        trigger: RunTrigger | str,
        now: datetime,
        scheduled_for: datetime | None = None,
        exclusive: bool = True,
        attempt: int = 1,
        owner: str | None = None,
        lease_until: datetime | None = None,
    ) -> JobRun:
        scheduled_for = optional_aware_utc(scheduled_for)
        with self._open():
            job = self._job(job_id)
            runs = [r for r in self._runs.values() if r.job_id == job_id]
            # the slot goes first: a claimed slot is final, a running run is not
            if scheduled_for is not None and any(
                r.scheduled_for == scheduled_for and r.attempt == attempt for r in runs
            ):
                raise SlotAlreadyClaimed(job.job_key, scheduled_for)
            if exclusive and any(r.status in NON_TERMINAL for r in runs):
                raise JobAlreadyRunning(job.job_key)
            run = JobRun(
                id=self.new_id(),
                job_id=job_id,
                plugin_id=job.plugin_id,
                job_key=job.job_key,
                trigger=trigger,
                scheduled_for=scheduled_for,
                created_at=now,
                attempt=attempt,
                owner=owner,
                lease_until=lease_until,
            )
            self._runs[run.id] = run
            return run

    def mark_running(
        self,
        run_id: str,
        *,
        now: datetime,
        owner: str | None = None,
        lease_until: datetime | None = None,
    ) -> bool:
        now, lease_until = as_aware_utc(now), optional_aware_utc(lease_until)
        with self._open():
            run = self._runs.get(run_id)
            if run is None or run.status is not RunStatus.queued:
                return False
            self._runs[run_id] = attrs.evolve(
                run, status=RunStatus.running, started_at=now, owner=owner, lease_until=lease_until
            )
            return True

    def _finish(self, run: JobRun, status: RunStatus, now: datetime, error, error_detail) -> JobRun:
        return attrs.evolve(
            run,
            status=status,
            finished_at=now,
            duration_ms=self.duration_ms(run.started_at, as_aware_utc(now)),
            error=error,
            error_detail=error_detail,
        )

    def complete_run(
        self,
        run_id: str,
        *,
        status: RunStatus | str,
        now: datetime,
        error: str | None = None,
        error_detail: str | None = None,
    ) -> bool:
        status, now = self.terminal_status(status), as_aware_utc(now)
        with self._open():
            run = self._runs.get(run_id)
            if run is None or run.status not in NON_TERMINAL:
                return False
            self._runs[run_id] = self._finish(run, status, now, error, error_detail)
            return True

    def renew_leases(
        self, owner: str, run_ids: Sequence[str], *, lease_until: datetime, now: datetime
    ) -> list[str]:
        lease_until, now = as_aware_utc(lease_until), as_aware_utc(now)
        renewed = []
        with self._open():
            # an id asked for twice is still one run renewed
            for run_id in dict.fromkeys(run_ids):
                run = self._runs.get(run_id)
                if run is not None and run.owner == owner and run.status in NON_TERMINAL:
                    self._runs[run_id] = attrs.evolve(run, lease_until=lease_until)
                    renewed.append(run)
        # in the order every store returns runs in: not the caller's, nor the dict's
        return [r.id for r in sorted(renewed, key=_run_order)]

    def abandon_runs(self, *, now: datetime, owner: str | None = None) -> list[JobRun]:
        now = as_aware_utc(now)
        with self._open():
            victims = sorted((
                r for r in self._runs.values()
                if r.status in NON_TERMINAL and (
                    r.owner == owner if owner is not None
                    else r.lease_until is not None and r.lease_until < now)
            ), key=_run_order)
            out = []
            for run in victims:
                error = f"scheduler {run.owner} stopped renewing its lease"
                ended = self._finish(run, RunStatus.abandoned, now, error, None)
                self._runs[run.id] = ended
                out.append(ended)
            return out

    def get_run(self, run_id: str) -> JobRun | None:
        with self._open():
            return self._runs.get(run_id)

    def list_runs(
        self,
        *,
        plugin_id: str | None = None,
        job_id: str | None = None,
        status: RunStatus | str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> RunPage:
        self.check_limit(limit)
        after = None if cursor is None else self.decode_cursor(cursor)
        wanted = None if status is None else RunStatus(status)
        with self._open():
            runs = [
                r
                for r in self._runs.values()
                if (plugin_id is None or r.plugin_id == plugin_id)
                and (job_id is None or r.job_id == job_id)
                and (wanted is None or r.status is wanted)
                and (after is None or _run_order(r) < after)
            ]
        runs.sort(key=_run_order, reverse=True)
        page = runs[:limit]
        more = len(runs) > limit
        return RunPage(
            runs=tuple(page),
            next_cursor=self.encode_cursor(page[-1].created_at, page[-1].id) if more else None,
        )

    def cancel_runs(
        self,
        plugin_id: str,
        *,
        reason: str,
        now: datetime,
        job_id: str | None = None,
        owner: str | None = None,
    ) -> list[str]:
        now = as_aware_utc(now)
        with self._open():
            victims = sorted((
                r
                for r in self._runs.values()
                if r.plugin_id == plugin_id
                and (job_id is None or r.job_id == job_id)
                and (owner is None or r.owner == owner)
                and r.status in NON_TERMINAL
            ), key=_run_order)
            for run in victims:
                self._runs[run.id] = self._finish(run, RunStatus.cancelled, now, reason, None)
            return [r.id for r in victims]

    def prune_runs(
        self,
        *,
        now: datetime,
        max_age: timedelta | None = None,
        keep_per_job: int | None = None,
    ) -> int:
        if keep_per_job is not None and keep_per_job < 0:
            raise InvalidArgument(f"keep_per_job must be >= 0, not {keep_per_job!r}")
        now = as_aware_utc(now)
        with self._open():
            terminal = [r for r in self._runs.values() if r.status not in NON_TERMINAL]
            doomed: set[str] = set()
            if max_age is not None:
                cutoff = now - max_age
                doomed.update(r.id for r in terminal if r.created_at < cutoff)
            if keep_per_job is not None:
                by_job: dict[str, list[JobRun]] = {}
                for run in terminal:
                    by_job.setdefault(run.job_id, []).append(run)
                for runs in by_job.values():
                    runs.sort(key=_run_order, reverse=True)
                    doomed.update(r.id for r in runs[keep_per_job:])
            for run_id in doomed:
                del self._runs[run_id]
            return len(doomed)
