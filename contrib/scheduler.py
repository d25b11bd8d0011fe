"""The default scheduler: one loop thread that sleeps until the next slot.

The loop only claims slots and hands runs to the runner; it never waits for
a handler, so a slow job delays nothing else.
"""

from __future__ import annotations

import os
import socket
import threading
import uuid
from concurrent.futures import Future
from datetime import datetime, timedelta
from typing import Any, Callable

import attrs
from loguru import logger

from pjcore.abc import JobStore, Outcome, Runner, Scheduler
from pjcore.clock import Clock, SystemClock
from pjcore.context import JobContext, RunCancelled
from pjcore.exceptions import (
    ConfigurationError,
    HandlerLookupError,
    JobAlreadyRunning,
    JobLookupError,
    JobNotActive,
    PluginNotRunning,
)
from pjcore.models import Job, JobRun, JobStatus, RunStatus, RunTrigger
from pjcore.slots import plan_slots

__all__ = ["ThreadScheduler"]

Resolve = Callable[[str, str], Callable[..., Any] | None]
Notify = Callable[..., None]


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

    :param resolve: ``resolve(plugin_key, job_key)`` returns the handler or None.
    :param notify: ``notify(hook_name, run=..., job=...)`` for observability.
    :param max_concurrent: runs in flight at once (scheduled and manual).
    :param default_timeout: seconds before a run is recorded as timed out,
        unless the job's policy says otherwise.
    :param max_idle: longest sleep in real seconds; bounds how late a change
        made by another process (sync, resume) is noticed.
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
        owner: str | None = None,
    ) -> None:
        if not isinstance(store, JobStore):
            raise ConfigurationError(f"store must be a JobStore, not {type(store).__name__}")
        if not isinstance(runner, Runner):
            raise ConfigurationError(f"runner must be a Runner, not {type(runner).__name__}")
        if isinstance(max_concurrent, bool) or not isinstance(max_concurrent, int) or max_concurrent < 1:
            raise ConfigurationError(f"max_concurrent must be a positive integer, not {max_concurrent!r}")
        self.store = store
        self.runner = runner
        self.clock = clock or SystemClock()
        self.max_concurrent = max_concurrent
        self.default_timeout = default_timeout
        self.max_idle = max_idle
        self.owner = owner or default_owner()
        self._resolve = resolve
        self._notify = notify or (lambda *a, **k: None)
        self._lock = threading.RLock()
        self._wake = threading.Event()
        self._plugins: dict[str, str] = {}  # plugin_id -> plugin_key
        self._inflight: dict[str, _InFlight] = {}  # run_id -> entry
        self._busy: dict[str, str] = {}  # job_id -> run_id, until the handler returns
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._tick_count = 0
        self._last_tick_at: datetime | None = None
        self._next_wake_at: datetime | None = None
        self._errors = 0

    def __repr__(self) -> str:
        return f"ThreadScheduler(owner={self.owner!r}, max_concurrent={self.max_concurrent})"

    # -- lifecycle -------------------------------------------------------------

    def start(self) -> None:
        with self._lock:
            if self._thread is not None:
                return
            self._stopping = False
            self.runner.start()
            self._thread = threading.Thread(target=self._loop, name="pjcore-scheduler", daemon=True)
            self._thread.start()

    def stop(self, timeout: float | None = 10.0) -> None:
        with self._lock:
            thread, self._thread = self._thread, None
            self._stopping = True
        self._wake.set()
        if thread is not None:
            thread.join()
        with self._lock:
            pending = [e for e in self._inflight.values() if e.future is not None]
        from concurrent.futures import wait

        if pending:
            wait([e.future for e in pending], timeout=timeout)
        with self._lock:
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
            self._plugins.pop(plugin_id, None)
            entries = [e for e in self._inflight.values() if e.job.plugin_id == plugin_id]
        for entry in entries:
            entry.context.request_cancel(reason)
            entry.ended = True
        now = self.clock.now()
        cancelled = self.store.cancel_runs(plugin_id, reason=reason, now=now)
        for run_id in cancelled:
            self._announce_end(run_id)
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
        with self._lock:
            deadlines = [e.deadline for e in self._inflight.values()
                         if e.deadline is not None and not e.ended]
            full = len(self._inflight) >= self.max_concurrent
            plugin_ids = list(self._plugins)
        candidates = list(deadlines)
        if plugin_ids and not full:
            due = self.store.next_due_at(plugin_ids=plugin_ids)
            if due is not None:
                candidates.append(due)
        return min(candidates) if candidates else None

    def tick(self) -> int:
        now = self.clock.now()
        with self._lock:
            self._tick_count += 1
            self._last_tick_at = now
        self._expire(now)
        with self._lock:
            free = self.max_concurrent - len(self._inflight)
            plugin_ids = list(self._plugins)
            busy = set(self._busy)
        if free <= 0 or not plugin_ids:
            return 0
        started = 0
        for job in self.store.due_jobs(now, limit=free + len(busy), plugin_ids=plugin_ids):
            if started >= free:
                break
            if job.id in busy:
                continue  # still running: the slot waits, the misfire policy decides later
            plan = plan_slots(job, now)
            claim = self.store.claim_slot(
                job.id,
                expected=job.next_run_at,
                run_slot=plan.run_slot,
                next_run_at=plan.next_run_at,
                missed=plan.missed,
                now=now,
            )
            if plan.missed:
                logger.warning(
                    "pjcore job {plugin}/{job} missed {n} slot(s) (policy {policy})",
                    plugin=job.plugin_key, job=job.job_key, n=plan.missed,
                    policy=job.policy.misfire.value,
                )
            if claim.run is not None:
                self._dispatch(job, claim.run)
                started += 1
        return started

    # -- runs ------------------------------------------------------------------

    def trigger(self, job_id: str, *, trigger: str = "manual", plugin_id: str | None = None) -> str:
        trigger = RunTrigger(trigger)
        job = (self.store.get_job_for_plugin(plugin_id, job_id) if plugin_id is not None
               else self.store.get_job(job_id))
        if job is None:
            raise JobLookupError(job_id, plugin_id)
        if job.status is not JobStatus.active:
            raise JobNotActive(job.job_key, job.status.value)
        with self._lock:
            if job.plugin_id not in self._plugins:
                raise PluginNotRunning(job.plugin_key)
            if job.id in self._busy:
                raise JobAlreadyRunning(job.job_key)
            self._busy[job.id] = ""  # reserved: a tick cannot start it meanwhile
        try:
            run = self.store.create_run(job.id, trigger=trigger, now=self.clock.now(), exclusive=True)
        except BaseException:
            with self._lock:
                self._busy.pop(job.id, None)
            raise
        self._dispatch(job, run)
        return run.id

    def _timeout_for(self, job: Job) -> float | None:
        return job.policy.timeout_seconds or self.default_timeout

    def _dispatch(self, job: Job, run: JobRun) -> None:
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
            self._inflight[run.id] = entry
            self._busy[job.id] = run.id
        future = self.runner.submit(lambda ctx: self._execute(entry, ctx), context)
        entry.future = future
        future.add_done_callback(lambda f: self._finished(entry, f))

    def _execute(self, entry: _InFlight, context: JobContext) -> Any:
        """Runs in the worker: start the run, then the handler."""
        now = self.clock.now()
        if entry.timeout:
            entry.deadline = now + timedelta(seconds=entry.timeout)
            self.wake()  # the loop must wake for this deadline
        if not self.store.mark_running(entry.run_id, now=now, owner=self.owner):
            raise RunCancelled(context.cancel_reason or "cancelled before it started")
        self._announce_start(entry)
        handler = self._resolve(entry.job.plugin_key, entry.job.job_key)
        if handler is None:
            raise HandlerLookupError(entry.job.plugin_key, entry.job.job_key)
        return handler(context)

    def _finished(self, entry: _InFlight, future: Future) -> None:
        try:
            outcome: Outcome = future.result()
        except BaseException as exc:  # a runner must not raise, but be safe
            outcome = Outcome("failed", f"runner error: {exc!r}")
        if not entry.ended:
            status = RunStatus(outcome.status)
            self._end(entry, status, outcome.error, outcome.error_detail)
        with self._lock:
            self._inflight.pop(entry.run_id, None)
            if self._busy.get(entry.job.id) == entry.run_id:
                del self._busy[entry.job.id]
        self.wake()

    def _end(self, entry: _InFlight, status: RunStatus, error: str | None,
             detail: str | None = None) -> None:
        entry.ended = True
        if status is not RunStatus.succeeded and error:
            entry.context.request_cancel(error)
        try:
            applied = self.store.complete_run(
                entry.run_id, status=status, now=self.clock.now(), error=error, error_detail=detail
            )
        except Exception:
            logger.exception("pjcore could not record the end of run {run}", run=entry.run_id)
            return
        if applied:
            self._announce_end(entry.run_id, entry.job)

    def _expire(self, now: datetime) -> None:
        with self._lock:
            expired = [e for e in self._inflight.values()
                       if not e.ended and e.deadline is not None and e.deadline <= now]
        for entry in expired:
            logger.warning("pjcore run {run} of {job} timed out after {t:g}s",
                           run=entry.run_id, job=entry.job.job_key, t=entry.timeout)
            self._end(entry, RunStatus.failed, f"timed out after {entry.timeout:g}s")

    def _announce_start(self, entry: _InFlight) -> None:
        run = self.store.get_run(entry.run_id)
        if run is not None:
            self._notify("run_started", run=run, job=entry.job)

    def _announce_end(self, run_id: str, job: Job | None = None) -> None:
        run = self.store.get_run(run_id)
        if run is None:
            return
        if job is None:
            job = self.store.get_job(run.job_id)
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
                "consecutive_errors": self._errors,
            }
