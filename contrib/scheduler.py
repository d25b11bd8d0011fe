"""The default scheduler: one loop thread that sleeps until the next slot.

The loop only claims slots and hands runs to the runner; it never waits for
a handler, so a slow job delays nothing else.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from concurrent.futures import Future
from datetime import datetime, timedelta, timezone
from typing import Any, Callable

import attrs
from loguru import logger

from pjcore.abc import JobStore, Outcome, Runner, Scheduler
from pjcore.clock import Clock, SystemClock
from pjcore.context import JobContext, RunCancelled
from pjcore.exceptions import (
    ConfigurationError,
    CronError,
    HandlerLookupError,
    JobAlreadyRunning,
    JobLookupError,
    JobNotActive,
    PluginNotRunning,
    SlotAlreadyClaimed,
)
from pjcore.manifest import AbandonPolicy
from pjcore.models import Job, JobRun, JobStatus, RunStatus, RunTrigger
from pjcore.slots import plan_slots

__all__ = ["ThreadScheduler"]

Resolve = Callable[[str, str], Callable[..., Any] | None]
Notify = Callable[..., None]

#: "later than any pointer": lets ``due_jobs`` list pointers in order
_FAR_FUTURE = datetime(9999, 1, 1, tzinfo=timezone.utc)
#: ``JobStore`` page limit
_MAX_LIMIT = 1000
#: clock seconds before a job whose claim was refused (a run of it in flight
#: in another process) is looked at again
BLOCKED_RETRY = 1.0
#: reason recorded on a run whose plugin was unregistered before it started
UNREGISTERED = "Plugin unregistered"
#: an abandoned slot (policy ``on_abandoned=retry``) runs at most this many
#: times in all: a handler that kills its process every time must not
#: take every scheduler down with it forever
MAX_ATTEMPTS = 3


def default_owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


@attrs.define(eq=False)
class _InFlight:
    run_id: str
    job: Job
    context: JobContext
    deadline: datetime | None
    timeout: float | None
    future: Future | None = None
    ended: bool = False  # recorded terminal (timeout, cancel) before the handler returned


class ThreadScheduler(Scheduler):
    """Dispatches due jobs of registered plugins through a :class:`Runner`.

    Guarantees, on top of the :class:`~pjcore.abc.Scheduler` contract:

    * runs of one job never overlap: a job is busy from the moment its run is
      created until its handler returns, even when the run was already
      recorded as timed out or cancelled;
    * slots are claimed in the store (compare-and-set), so several schedulers
      on one database run each slot once;
    * due jobs are taken oldest-due first, so a concurrency cap delays jobs
      but never starves the same ones.

    :param resolve: ``resolve(plugin_key, job_key)`` returns the handler or None.
    :param notify: ``notify(hook_name, run=..., job=...)`` for observability.
    :param max_concurrent: runs in flight at once. Ticks never exceed it;
        manual triggers and retries of abandoned slots are counted but not
        refused by it.
    :param default_timeout: seconds before a run is recorded as timed out,
        unless the job's policy says otherwise (``None``: never).
    :param max_idle: longest sleep in real seconds; bounds how late a change
        made by another process (sync, resume) is noticed.
    :param lease_seconds: every run this scheduler owns carries a lease in
        the store, renewed every third of it while the run is in flight. A
        run whose lease ran out (its scheduler crashed or hung) is recorded
        ``abandoned`` by any scheduler on the database, so it no longer
        blocks its job; with ``on_abandoned=retry`` its slot runs again.
    :param owner: this scheduler's identity in the store (unique per process
        by default). With a stable owner, :meth:`start` reclaims the runs a
        previous incarnation left behind at once instead of after the lease.
    """

    def __init__(
        self,
        *,
        store: JobStore,
        runner: Runner,
        resolve: Resolve,
        notify: Notify | None = None,
        clock: Clock | None = None,
        max_concurrent: int = 10,
        default_timeout: float | None = 300.0,
        max_idle: float = 30.0,
        lease_seconds: float = 60.0,
        owner: str | None = None,
    ) -> None:
        if not isinstance(store, JobStore):
            raise ConfigurationError(f"store must be a JobStore, not {type(store).__name__}")
        if not isinstance(runner, Runner):
            raise ConfigurationError(f"runner must be a Runner, not {type(runner).__name__}")
        if isinstance(max_concurrent, bool) or not isinstance(max_concurrent, int) or max_concurrent < 1:
            raise ConfigurationError(f"max_concurrent must be a positive integer, not {max_concurrent!r}")
        for name, value, optional in (("default_timeout", default_timeout, True),
                                      ("max_idle", max_idle, False),
                                      ("lease_seconds", lease_seconds, False)):
            if value is None and optional:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ConfigurationError(
                    f"{name} must be a positive number of seconds, not {value!r}")
        self.store = store
        self.runner = runner
        self.clock = clock or SystemClock()
        self.max_concurrent = max_concurrent
        self.default_timeout = default_timeout
        self.max_idle = max_idle
        self.lease_seconds = lease_seconds
        self.owner = owner or default_owner()
        self._resolve = resolve
        self._notify = notify or (lambda *a, **k: None)
        self._lock = threading.RLock()
        # notified whenever a run leaves _inflight (stop() drains on it)
        self._drained = threading.Condition(self._lock)
        # One tick at a time: a tick called by hand while the loop ticks would
        # otherwise read the same free capacity and overshoot the cap.
        self._tick_lock = threading.Lock()
        self._wake = threading.Event()
        self._plugins: dict[str, str] = {}  # plugin_id -> plugin_key
        self._inflight: dict[str, _InFlight] = {}  # run_id -> entry
        self._busy: dict[str, str] = {}  # job_id -> run_id ("" reserved), until the handler returns
        self._blocked: dict[str, datetime] = {}  # job_id -> retry at; claim refused by the store
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._tick_count = 0
        self._last_tick_at: datetime | None = None
        self._next_wake_at: datetime | None = None
        self._renew_at: datetime | None = None  # when the leases of runs in flight are renewed
        self._reconcile_at: datetime | None = None  # when expired runs are looked for again
        self._reclaim = False  # start(): end the runs a previous incarnation left
        self._errors = 0

    def __repr__(self) -> str:
        return f"ThreadScheduler(owner={self.owner!r}, max_concurrent={self.max_concurrent})"

    # -- lifecycle -------------------------------------------------------------

    def start(self) -> None:
        with self._lock:
            if self._thread is not None:
                return
            self._stopping = False
            self._reclaim = not self._inflight
            self.runner.start()
            self._thread = threading.Thread(target=self._loop, name="pjcore-scheduler", daemon=True)
            self._thread.start()

    def stop(self, timeout: float | None = 10.0) -> None:
        with self._lock:
            thread, self._thread = self._thread, None
            self._stopping = True  # tick and trigger start nothing from now on
        self._wake.set()
        if thread is not None and thread is not threading.current_thread():
            thread.join()
        # Wait for the entries to leave _inflight, not for the runner's
        # futures: a future is done before its callback has recorded the
        # outcome, and a run must not be called "shutdown" after it succeeded.
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._drained:
            while self._inflight:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    break
                self._drained.wait(left)
            leftover = [e for e in self._inflight.values() if not e.ended]
        for entry in leftover:
            self._end(entry, RunStatus.cancelled, "shutdown")

    # -- plugins ---------------------------------------------------------------

    def register_plugin(self, plugin_id: str, plugin_key: str) -> None:
        with self._lock:
            self._plugins[plugin_id] = plugin_key
        self.wake()

    def unregister_plugin(self, plugin_id: str, reason: str) -> list[str]:
        with self._lock:
            self._plugins.pop(plugin_id, None)  # from here on, nothing of it starts
            entries = [e for e in self._inflight.values() if e.job.plugin_id == plugin_id]
        # Record first, signal second: a handler that sees the signal and
        # returns at once must find its run already cancelled, or its
        # completion would win. The job stays busy until the handler returns.
        try:
            cancelled = self.store.cancel_runs(plugin_id, reason=reason, now=self.clock.now())
        finally:
            for entry in entries:
                entry.context.request_cancel(reason)
        done = set(cancelled)
        for entry in entries:
            if entry.run_id in done:
                entry.ended = True
        for run_id in cancelled:
            self._announce_end(run_id)
        self.wake()
        return cancelled

    @property
    def plugins(self) -> dict[str, str]:
        with self._lock:
            return dict(self._plugins)

    # -- the loop --------------------------------------------------------------

    def wake(self) -> None:
        self._wake.set()

    def _loop(self) -> None:
        while not self._stopping:
            self._wake.clear()  # before the tick, so a wake() during it is kept
            wake_at: datetime | None = None
            try:
                self.tick()
                wake_at = self._compute_wake_at()
                self._errors = 0
            except Exception as exc:
                self._errors += 1
                delay = min(30.0, 0.5 * 2 ** min(self._errors, 6))
                logger.opt(exception=exc).error(
                    "pjcore scheduler tick failed ({n} in a row); retrying in {delay:.1f}s",
                    n=self._errors, delay=delay,
                )
                wake_at = self.clock.now() + timedelta(seconds=delay)
            self._next_wake_at = wake_at
            if self._stopping:
                break
            self.clock.wait(self._wake, wake_at, self.max_idle)

    def _compute_wake_at(self) -> datetime | None:
        """When the next tick has something to do.

        Jobs that cannot start now are left out, or the loop would spin on
        their past-due pointers: a busy job wakes the loop when its handler
        returns, a job held by another process is retried after
        :data:`BLOCKED_RETRY`, and when the cap is reached only a finishing
        run (or a timeout deadline) can change anything.
        """
        with self._lock:
            live = [e for e in self._inflight.values() if not e.ended]
            candidates = [e.deadline for e in live if e.deadline is not None]
            if live and self._renew_at is not None:
                candidates.append(self._renew_at)
            full = len(self._inflight) >= self.max_concurrent
            plugin_ids = list(self._plugins)
            excluded = set(self._busy) | set(self._blocked)
            candidates.extend(self._blocked.values())
        if plugin_ids and not full:
            if not excluded:
                due = self.store.next_due_at(plugin_ids=plugin_ids)
            else:
                # the first pointer, in due order, of a job that could start
                limit = min(len(excluded) + 1, _MAX_LIMIT)
                due = next((j.next_run_at for j in self.store.due_jobs(
                    _FAR_FUTURE, limit=limit, plugin_ids=plugin_ids) if j.id not in excluded), None)
            if due is not None:
                candidates.append(due)
        return min(candidates) if candidates else None

    def tick(self) -> int:
        with self._tick_lock:
            return self._tick()

    def _tick(self) -> int:
        now = self.clock.now()
        with self._lock:
            self._tick_count += 1
            self._last_tick_at = now
        if self._reclaim:  # first tick after start()
            self._reconcile(now, owner=self.owner)
            self._reclaim = False
        # Own leases first: a tick that comes late must not find (and
        # abandon) this scheduler's own runs as expired.
        self._renew(now)
        self._expire(now)
        self._reconcile(now)
        with self._lock:
            self._blocked.clear()  # looked at again below
            free = self.max_concurrent - len(self._inflight)
            plugin_ids = list(self._plugins)
            busy = set(self._busy)
            stopping = self._stopping
        if free <= 0 or not plugin_ids or stopping:
            return 0
        started = 0
        limit = min(free + len(busy), _MAX_LIMIT)
        for job in self.store.due_jobs(now, limit=limit, plugin_ids=plugin_ids):
            if started >= free:
                break
            if job.id in busy:
                continue  # still running: the slot waits, the misfire policy decides later
            try:
                plan = plan_slots(job, now)
            except CronError as exc:
                # Manifests are validated, so only a stored schedule that no
                # longer evaluates (time zone data, no fire time left) gets
                # here; parking the job keeps it from failing every tick, and
                # a sync with a new schedule gives it a pointer again.
                logger.error("pjcore job {plugin}/{job} cannot be scheduled and is parked: {error}",
                             plugin=job.plugin_key, job=job.job_key, error=exc)
                self.store.claim_slot(job.id, expected=job.next_run_at, run_slot=None,
                                      next_run_at=None, now=now)
                continue
            claim = self.store.claim_slot(
                job.id,
                expected=job.next_run_at,
                run_slot=plan.run_slot,
                next_run_at=plan.next_run_at,
                missed=plan.missed,
                now=now,
                owner=self.owner,
                lease_until=self._lease_until(now),
            )
            if not claim.applied:
                # Another scheduler took the slot (the pointer moved: the next
                # tick sees the new one), the job changed, or a run of it is
                # in flight elsewhere; only the last would keep it due.
                with self._lock:
                    self._blocked[job.id] = now + timedelta(seconds=BLOCKED_RETRY)
                continue
            if plan.missed:
                logger.warning(
                    "pjcore job {plugin}/{job} missed {n} slot(s) (policy {policy})",
                    plugin=job.plugin_key, job=job.job_key, n=plan.missed,
                    policy=job.policy.misfire.value,
                )
            if claim.run is not None and self._dispatch(job, claim.run):
                started += 1
        return started

    # -- runs ------------------------------------------------------------------

    def trigger(self, job_id: str, *, trigger: str = "manual", plugin_id: str | None = None) -> str:
        try:
            trigger = RunTrigger(trigger)
        except ValueError:
            trigger = None
        if trigger is None or trigger is RunTrigger.schedule:
            raise ConfigurationError("trigger must be 'manual' or 'retry'")
        job = (self.store.get_job_for_plugin(plugin_id, job_id) if plugin_id is not None
               else self.store.get_job(job_id))
        if job is None:
            raise JobLookupError(job_id, plugin_id)
        if job.status is not JobStatus.active:
            raise JobNotActive(job.job_key, job.status.value)
        if self._resolve(job.plugin_key, job.job_key) is None:
            raise PluginNotRunning(job.plugin_key, f'has no handler for job "{job.job_key}"')
        with self._lock:
            if self._stopping:
                raise PluginNotRunning(job.plugin_key, "is not running (the scheduler is stopped)")
            if job.plugin_id not in self._plugins:
                raise PluginNotRunning(job.plugin_key)
            if job.id in self._busy:
                raise JobAlreadyRunning(job.job_key)
            self._busy[job.id] = ""  # reserved: a tick cannot start it meanwhile
        try:
            # exclusive: the store refuses if a run is in flight in any process
            now = self.clock.now()
            run = self.store.create_run(job.id, trigger=trigger, now=now, exclusive=True,
                                        owner=self.owner, lease_until=self._lease_until(now))
        except BaseException:
            with self._lock:
                if self._busy.get(job.id) == "":  # only our own reservation
                    del self._busy[job.id]
            raise
        self._dispatch(job, run)
        return run.id

    def _timeout_for(self, job: Job) -> float | None:
        return job.policy.timeout_seconds or self.default_timeout

    def _lease_until(self, now: datetime) -> datetime:
        return now + timedelta(seconds=self.lease_seconds)

    def _dispatch(self, job: Job, run: JobRun) -> bool:
        """Hand a queued run to the runner; False if it was refused and recorded."""
        timeout = self._timeout_for(job)
        context = JobContext(
            plugin_id=job.plugin_id,
            plugin_key=job.plugin_key,
            job_key=job.job_key,
            run_id=run.id,
            trigger=run.trigger,
            scheduled_for=run.scheduled_for or run.created_at,
            logger=logger.bind(pj_plugin=job.plugin_key, pj_job=job.job_key, pj_run=run.id),
        )
        entry = _InFlight(run_id=run.id, job=job, context=context, deadline=None, timeout=timeout)
        with self._lock:
            # Checked together with the insertion, so unregister_plugin and
            # stop either see this entry or make us refuse it.
            refusal = ("shutdown" if self._stopping
                       else UNREGISTERED if job.plugin_id not in self._plugins else None)
            if refusal is None:
                self._inflight[run.id] = entry
                self._busy[job.id] = run.id
                if self._renew_at is None:
                    self._renew_at = self.clock.now() + timedelta(seconds=self.lease_seconds / 3)
            elif self._busy.get(job.id) == "":
                del self._busy[job.id]
        if refusal is not None:
            self._record(run.id, job, RunStatus.cancelled, refusal)
            return False
        try:
            future = self.runner.submit(lambda ctx: self._execute(entry, ctx), context)
        except Exception as exc:  # a runner must not raise; never leave the job busy forever
            logger.opt(exception=exc).error("pjcore runner refused run {run}", run=run.id)
            future = Future()
            future.set_result(Outcome("failed", f"runner error: {exc!r}"))
        entry.future = future
        future.add_done_callback(lambda f: self._finished(entry, f))
        return True

    def _execute(self, entry: _InFlight, context: JobContext) -> Any:
        """Runs in the worker: start the run, then the handler."""
        now = self.clock.now()
        if entry.timeout:
            entry.deadline = now + timedelta(seconds=entry.timeout)
            self.wake()  # the loop must wake for this deadline
        if not self.store.mark_running(entry.run_id, now=now, owner=self.owner,
                                       lease_until=self._lease_until(now)):
            raise RunCancelled(context.cancel_reason or "cancelled before it started")
        if context.trigger is not RunTrigger.schedule:
            self._stamp_manual_start(entry.job, now)
        self._announce_start(entry)
        handler = self._resolve(entry.job.plugin_key, entry.job.job_key)
        if handler is None:
            raise HandlerLookupError(entry.job.plugin_key, entry.job.job_key)
        return handler(context)

    def _stamp_manual_start(self, job: Job, now: datetime) -> None:
        # last_run_at is "the most recent run that started", manual ones
        # included; the pointer is written back unchanged (compare-and-set),
        # so a manual run never moves the schedule.
        try:
            current = self.store.get_job(job.id)
            if current is not None:
                self.store.set_next_run(job.id, expected=current.next_run_at,
                                        next_run_at=current.next_run_at, last_run_at=now, now=now)
        except Exception:
            logger.exception("pjcore could not record the start of a manual run of {job}",
                             job=job.job_key)

    def _finished(self, entry: _InFlight, future: Future) -> None:
        try:
            outcome: Outcome = future.result()
        except BaseException as exc:  # a runner must not raise, but be safe
            outcome = Outcome("failed", f"runner error: {exc!r}")
        applied = False
        if not entry.ended:
            entry.ended = True
            applied = self._complete(entry, RunStatus(outcome.status), outcome.error,
                                     outcome.error_detail)
        with self._lock:
            if self._busy.get(entry.job.id) == entry.run_id:
                del self._busy[entry.job.id]
        # Announced once the job is free, so an observer may trigger it
        # again, and before the entry leaves _inflight, so stop() (and a
        # host closing the store after it) waits for the announcement.
        if applied:
            self._announce_end(entry.run_id, entry.job)
        with self._lock:
            self._inflight.pop(entry.run_id, None)
            self._drained.notify_all()
        self.wake()

    def _complete(self, entry: _InFlight, status: RunStatus, error: str | None,
                  detail: str | None = None) -> bool:
        try:
            return self.store.complete_run(
                entry.run_id, status=status, now=self.clock.now(), error=error, error_detail=detail
            )
        except Exception:
            logger.exception("pjcore could not record the end of run {run}", run=entry.run_id)
            return False

    def _end(self, entry: _InFlight, status: RunStatus, error: str) -> None:
        """Record a run terminal while its handler may still be running."""
        entry.ended = True
        # Record, then signal (see unregister_plugin).
        applied = self._complete(entry, status, error)
        entry.context.request_cancel(error)
        if applied:
            self._announce_end(entry.run_id, entry.job)

    def _record(self, run_id: str, job: Job, status: RunStatus, error: str) -> None:
        """Record a run that never reached the runner."""
        try:
            applied = self.store.complete_run(run_id, status=status, now=self.clock.now(),
                                              error=error)
        except Exception:
            logger.exception("pjcore could not record the end of run {run}", run=run_id)
            return
        if applied:
            self._announce_end(run_id, job)

    def _expire(self, now: datetime) -> None:
        with self._lock:
            expired = [e for e in self._inflight.values()
                       if not e.ended and e.deadline is not None and e.deadline <= now]
        for entry in expired:
            logger.warning("pjcore run {run} of {job} timed out after {t:g}s",
                           run=entry.run_id, job=entry.job.job_key, t=entry.timeout)
            self._end(entry, RunStatus.failed, f"timed out after {entry.timeout:g}s")

    # -- leases ---------------------------------------------------------------

    def _renew(self, now: datetime) -> None:
        """Extend the leases of this scheduler's runs in flight, when due."""
        with self._lock:
            if self._renew_at is None or now < self._renew_at:
                return
            ids = [e.run_id for e in self._inflight.values() if not e.ended]
        if not ids:
            with self._lock:
                self._renew_at = None
            return
        renewed = set(self.store.renew_leases(self.owner, ids,
                                              lease_until=self._lease_until(now), now=now))
        with self._lock:
            self._renew_at = now + timedelta(seconds=self.lease_seconds / 3)
            lost = [e for e in self._inflight.values()
                    if e.run_id in ids and e.run_id not in renewed and not e.ended]
        # Ended behind our back (abandoned or cancelled by another scheduler):
        # its record is final, so only the handler is left to stop.
        for entry in lost:
            run = self.store.get_run(entry.run_id)
            if run is None or not run.status.terminal:
                continue  # finished here meanwhile, or not ours to judge
            entry.ended = True
            entry.context.request_cancel(run.error or f"run {run.status.value} elsewhere")
            logger.warning("pjcore run {run} of {job} was ended by another scheduler ({status})",
                           run=entry.run_id, job=entry.job.job_key, status=run.status.value)

    def _reconcile(self, now: datetime, *, owner: str | None = None) -> None:
        """Record as abandoned the runs whose scheduler is gone; retry their
        slots when the job asks for it. Rate-limited unless *owner* is given."""
        if owner is None:
            with self._lock:
                if self._reconcile_at is not None and now < self._reconcile_at:
                    return
                self._reconcile_at = now + timedelta(seconds=self.lease_seconds / 3)
        for run in self.store.abandon_runs(now=now, owner=owner):
            logger.warning("pjcore run {run} of {job} was abandoned: {error}",
                           run=run.id, job=run.job_key, error=run.error)
            job = self.store.get_job(run.job_id)
            if job is None:
                continue
            self._notify("run_finished", run=run, job=job)
            self._retry_abandoned(run, job, now)

    def _retry_abandoned(self, run: JobRun, job: Job, now: datetime) -> None:
        if (run.trigger is not RunTrigger.schedule or run.scheduled_for is None
                or job.policy.on_abandoned is not AbandonPolicy.retry
                or job.status is not JobStatus.active):
            return
        grace = job.policy.misfire_grace_seconds
        if run.attempt >= MAX_ATTEMPTS or (
                grace is not None and (now - run.scheduled_for).total_seconds() > grace):
            logger.warning("pjcore slot {slot} of {job} is not retried (attempt {n})",
                           slot=run.scheduled_for, job=job.job_key, n=run.attempt)
            return
        with self._lock:
            if job.plugin_id not in self._plugins or job.id in self._busy or self._stopping:
                logger.warning("pjcore slot {slot} of {job} cannot be retried by this scheduler",
                               slot=run.scheduled_for, job=job.job_key)
                return
            self._busy[job.id] = ""  # as trigger(): no tick starts it meanwhile
        try:
            retry = self.store.create_run(
                job.id, trigger=RunTrigger.schedule, now=now, scheduled_for=run.scheduled_for,
                attempt=run.attempt + 1, exclusive=True, owner=self.owner,
                lease_until=self._lease_until(now))
        except (JobAlreadyRunning, SlotAlreadyClaimed):
            with self._lock:
                if self._busy.get(job.id) == "":
                    del self._busy[job.id]
            return
        except BaseException:
            with self._lock:
                if self._busy.get(job.id) == "":
                    del self._busy[job.id]
            raise
        self._dispatch(job, retry)

    def _announce_start(self, entry: _InFlight) -> None:
        run = self.store.get_run(entry.run_id)
        if run is not None:
            self._notify("run_started", run=run, job=entry.job)

    def _announce_end(self, run_id: str, job: Job | None = None) -> None:
        try:
            run = self.store.get_run(run_id)
            if run is None:
                return
            if job is None:
                job = self.store.get_job(run.job_id)
        except Exception:
            logger.exception("pjcore could not read run {run} to announce its end", run=run_id)
            return
        if job is not None:
            self._notify("run_finished", run=run, job=job)

    # -- introspection ---------------------------------------------------------

    def diagnostics(self) -> dict:
        with self._lock:
            return {
                "running": self._thread is not None,
                "owner": self.owner,
                "active_run_ids": sorted(self._inflight),
                "busy_job_ids": sorted(self._busy),
                "registered_plugins": sorted(self._plugins.values()),
                "tick_count": self._tick_count,
                "last_tick_at": self._last_tick_at,
                "next_wake_at": self._next_wake_at,
                "max_concurrent": self.max_concurrent,
                "lease_seconds": self.lease_seconds,
                "consecutive_errors": self._errors,
            }
