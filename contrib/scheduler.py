"""The default scheduler: one loop thread that sleeps until the next slot.

The loop only claims slots and hands runs to the runner; it never waits for
a handler, so a slow job delays nothing else.
"""

from __future__ import annotations

import contextlib
import inspect
import itertools
import os
import socket
import threading
import time
import uuid
import weakref
import zlib
from datetime import datetime, timedelta, timezone
from typing import Any, Callable

import attrs
from loguru import logger

from pjcore.abc import JobStore, Outcome, Runner, Scheduler
from pjcore.clock import Clock, SystemClock
from pjcore.context import JobContext, PluginJobs, RunCancelled
from pjcore.exceptions import (
    ConfigurationError,
    CronError,
    HandlerLookupError,
    JobAlreadyRunning,
    JobLookupError,
    JobNotActive,
    PluginNotRunning,
    SlotAlreadyClaimed,
    StoreError,
)
from pjcore.manifest import AbandonPolicy
from pjcore.models import Job, JobRun, JobStatus, RunStatus, RunTrigger, new_run
from pjcore.slots import plan_slots
from pjcore.store_base import duration_ms

__all__ = ["ThreadScheduler"]

Resolve = Callable[[str, str], Callable[..., Any] | None]
Notify = Callable[..., None]

#: "later than any pointer": lets ``due_jobs`` list pointers in order
_FAR_FUTURE = datetime(9999, 1, 1, tzinfo=timezone.utc)
#: ``JobStore`` page limit
_MAX_LIMIT = 1000
#: due jobs read per tick, in multiples of the free capacity (see _round)
_SPREAD = 4
#: clock seconds a round's unclaimed due jobs are kept for the next rounds
#: of the same backlog (see _round). A job changed meanwhile by another
#: process without moving its pointer (a sync that changes only its policy)
#: is planned and timed by its old policy for at most this long
BACKLOG_TTL = 1.0
#: claims sent to the store at once (one transaction in the peewee store).
#: Small, because a batch holds its job rows until it commits: schedulers
#: sharing a database then still interleave their claims job by job instead
#: of one taking every due job in a single transaction (and keeping them,
#: as it frees each job first when its handler returns). As large as the
#: default ``max_concurrent``, so a full round at the default cap is one
#: transaction.
CLAIM_BATCH = 10
#: a runner's outcome status (a string) -> the RunStatus, without Enum's
#: call; only the terminal ones, which an Outcome may end a run with
_STATUSES = {s.value: s for s in RunStatus if s.terminal}
#: clock seconds before a job whose claim was refused (a run of it in flight
#: in another process) is looked at again
BLOCKED_RETRY = 1.0
#: reason recorded on a run whose plugin was unregistered before it started
UNREGISTERED = "Plugin unregistered"
#: an abandoned slot (policy ``on_abandoned=retry``) runs at most this many
#: times in all: a handler that kills its process every time must not
#: take every scheduler down with it forever
MAX_ATTEMPTS = 3
#: real seconds of the first back-off after a failed tick (or a failed start
#: of a run); it doubles on each failure in a row, up to :data:`MAX_BACKOFF`
#: and never beyond a third of the lease, so the heartbeat of runs in
#: flight resumes within a renewal period of the store coming back
FIRST_BACKOFF = 0.5
MAX_BACKOFF = 30.0
#: clock seconds between two attempts to record the end of a run that the
#: store refused (outage); the job stays busy until it is recorded
RECORD_RETRY = 1.0


def _guarded(notify: Notify, local: threading.local) -> Notify:
    """*notify*, its exceptions logged (an observer's failure must not leave
    a run's place taken or a sweep's follow-ups undone), and counted in
    *local* as a callback while it runs, on whatever thread announces."""
    def call(hook_name: str, **kwargs: Any) -> None:
        try:
            _as_callback(local, notify, hook_name, **kwargs)
        except Exception:
            logger.exception("pjcore observer of {hook} raised; ignored", hook=hook_name)
    return call


def _as_callback(local: threading.local, function: Callable[..., Any], *args: Any,
                 **kwargs: Any) -> Any:
    """``function(*args, **kwargs)``, counted in *local* as one of the
    scheduler's callbacks on this thread while it runs (see in_callback)."""
    local.callbacks = getattr(local, "callbacks", 0) + 1
    try:
        return function(*args, **kwargs)
    finally:
        local.callbacks -= 1


def _keep_leases(ref: "weakref.ref[ThreadScheduler]") -> None:
    """The leases of a scheduler's runs in flight while no loop runs:
    renewed every third of a lease (real time), and ends the store refused
    retried, until no run is left or a loop takes over. Holds the scheduler
    weakly while it sleeps: a scheduler dropped by its owner is not kept."""
    while True:
        scheduler = ref()
        if scheduler is None:
            return
        pause = min(scheduler.lease_seconds / 3, RECORD_RETRY)
        try:
            if not scheduler._keep_leases_once():
                return
        except BaseException:
            with scheduler._lock:
                scheduler._keeper = None
            raise
        del scheduler
        time.sleep(pause)


def default_owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def _takes_keyword(function: Callable[..., Any], name: str) -> bool:
    """Whether *function* accepts the keyword argument *name*."""
    try:
        parameters = inspect.signature(function).parameters.values()
    except (TypeError, ValueError):  # no signature to read: assume the current contract
        return True
    return any(p.name == name and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)
               or p.kind is p.VAR_KEYWORD for p in parameters)


@attrs.define(eq=False)
class _InFlight:
    """A run this scheduler dispatched, from dispatch until its handler has
    returned *and* its end is recorded in the store."""

    run_id: str
    job: Job
    run: JobRun  # as dispatched (queued)
    context: JobContext
    deadline: datetime | None
    timeout: float | None
    #: when the loop marked the run ``running``, and the lease the store now
    #: holds for it (renewals included; only the loop writes them); the
    #: JobRun itself is built only for an observer (see :meth:`running`)
    started_at: datetime | None = None
    lease_until: datetime | None = None
    #: the loop's batched start raised: the worker starts the run on its
    #: own, and first checks whether that attempt committed all the same
    start_failed: bool = False
    #: the loop's batched start did not apply (the run was ended meanwhile):
    #: the handler is not called
    start_refused: bool = False
    #: the terminal status is decided (handler outcome, timeout, cancel,
    #: shutdown): nothing else may decide it
    ended: bool = False
    #: the handler has returned
    returned: bool = False
    #: a decided end the store refused (outage): (status, error, detail,
    #: when it ended), retried until recorded; the run keeps its lease meanwhile
    unrecorded: tuple[RunStatus, str | None, str | None, datetime] | None = None
    #: the handler's outcome, waiting for the loop to record it together
    #: with the other ends of its round (same shape as ``unrecorded``); the
    #: run keeps its lease and its job stays busy meanwhile
    queued_end: tuple[RunStatus, str | None, str | None, datetime] | None = None
    #: recorded by this scheduler; run_finished is announced once the job is free
    announce: bool = False
    #: the run as recorded, when known without reading it back
    final: JobRun | None = None
    #: whether run_started had a listener when the run was dispatched
    #: (asked once per round, not once per run); None: ask when it starts
    listen_started: bool | None = None
    #: left _inflight (guards against a double release)
    released: bool = False
    #: an end decided while the handler ran (timeout, shutdown) is being
    #: written: the release waits for the write (see :meth:`ThreadScheduler._end`)
    recording: bool = False

    def running(self, owner: str) -> JobRun:
        """The run as the store holds it since the loop marked it running."""
        return attrs.evolve(self.run, status=RunStatus.running, started_at=self.started_at,
                            owner=owner, lease_until=self.lease_until)


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
        self._claims_start = _takes_keyword(store.claim_slots, "start")
        self._cancels_by_owner = _takes_keyword(store.cancel_runs, "owner")
        self.runner = runner
        self.clock = clock or SystemClock()
        self.max_concurrent = max_concurrent
        self.default_timeout = default_timeout
        self.max_idle = max_idle
        self.lease_seconds = lease_seconds
        self.owner = owner or default_owner()
        self._spread_seed = zlib.crc32(f"{self.owner}/".encode())
        self._resolve = resolve
        # callbacks: how deep the thread is in this scheduler's calls of a
        # handler or an observer (see in_callback)
        self._local = threading.local()
        self._notify = _guarded(notify, self._local) if notify else (lambda *a, **k: None)
        # ``notify.has_listeners(hook_name)``, when the callable offers it,
        # tells whether anyone listens: nobody listening, nothing is read
        # back from the store for an announcement
        self._listening = getattr(notify, "has_listeners", None) if notify else (lambda h: False)
        self._lock = threading.RLock()
        # notified whenever a run leaves _inflight (stop() drains on it)
        self._drained = threading.Condition(self._lock)
        # One tick at a time: a tick called by hand while the loop ticks would
        # otherwise read the same free capacity and overshoot the cap.
        self._tick_lock = threading.Lock()
        self._wake = threading.Event()
        self._plugins: dict[str, str] = {}  # plugin_id -> plugin_key
        self._views: dict[tuple[str, str], PluginJobs] = {}  # see _plugin_view
        self._inflight: dict[str, _InFlight] = {}  # run_id -> entry
        self._busy: dict[str, str] = {}  # job_id -> run_id ("" reserved), until the handler returns
        self._blocked: dict[str, datetime] = {}  # job_id -> retry at; claim refused by the store
        # due jobs a round read but had no room for (see _round), and what
        # they were read under: when, the plugins, the plugins' generation
        self._backlog: tuple[list[Job], datetime, list[str], int] | None = None
        self._generation = 0  # changes whenever a plugin is (re)registered or unregistered
        self._thread: threading.Thread | None = None
        self._loop_ident: int | None = None  # thread id of the loop
        self._stopping = False
        self._joined = False  # stop() is done waiting for the loop
        self._tick_count = 0
        self._last_tick_at: datetime | None = None
        self._next_wake_at: datetime | None = None
        self._renew_at: datetime | None = None  # when the leases of runs in flight are renewed
        self._reconcile_at: datetime | None = None  # when expired runs are looked for again
        self._reclaim = False  # start(): end the runs a previous incarnation left
        self._errors = 0  # failed ticks in a row
        # a tick failed on the store: a claim (or a run creation) may have
        # committed although it raised; look for such runs once it works again
        self._orphans_possible = False
        # instants of rounds whose claims raised: a run such a claim recorded
        # running (committed all the same) has created_at == started_at == it
        self._failed_claims: set[datetime] = set()
        # runs recorded abandoned whose announcement or retry is still owed
        self._abandoned: list[tuple[JobRun, bool]] = []  # (run, announced)
        # runs whose end this scheduler gave up recording: never adopted
        self._given_up: set[str] = set()
        self._recovering = False  # the last tick failed: see _round
        # one writer of deferred end records at a time (loop thread, stop())
        self._record_lock = threading.Lock()
        # handlers' outcomes for the loop to record, a round's worth at once
        self._end_queue: list[_InFlight] = []
        #: an entry may hold an end the store refused (see _flush_records):
        #: set with it, cleared once none does, so rounds skip the search
        self._unrecorded_seen = False
        # held from reading the runner's idle workers until the runs started
        # for them are submitted (see _dispatch_many). Re-entrant: a run that
        # ended before its done callback was added announces its end in the
        # submitting thread, and an observer may trigger a run from there
        # (it freed its worker first, so the count still holds).
        self._submit_lock = threading.RLock()
        # renews leases while runs are in flight and no loop runs (see _admit)
        self._keeper: threading.Thread | None = None

    def __repr__(self) -> str:
        return f"ThreadScheduler(owner={self.owner!r}, max_concurrent={self.max_concurrent})"

    # -- lifecycle -------------------------------------------------------------

    def start(self) -> None:
        with self._lock:
            if self._thread is not None:
                return
            self._stopping = False
            self._joined = False
            reclaim = not self._inflight
        if reclaim:
            # Before the loop exists and before start() returns, so a run
            # triggered right after start() is never taken for a leftover.
            try:
                self._reconcile(self.clock.now(), owner=self.owner)
            except Exception as exc:
                logger.warning("pjcore could not reclaim the runs of {owner} yet: {error}",
                               owner=self.owner, error=exc)
                self._reclaim = True  # the first tick tries again
        with self._lock:
            if self._thread is not None:
                return
            self.runner.start()
            self._thread = threading.Thread(target=self._loop, name="pjcore-scheduler", daemon=True)
            self._thread.start()

    def in_callback(self) -> bool:
        return (threading.get_ident() == self._loop_ident
                or getattr(self._local, "callbacks", 0) > 0)

    def stop(self, timeout: float | None = 10.0) -> None:
        if self.in_callback():
            # An observer on the loop (which holds the record lock while it
            # announces) or a handler (whose run is in flight): waiting here
            # would wait for the caller. Nothing starts from now on; the
            # rest of the stop waits in a thread of its own.
            with self._lock:
                self._stopping = True
            self._wake.set()
            threading.Thread(target=self._stop, args=(timeout,), name="pjcore-stop").start()
            return
        self._stop(timeout)

    def _stop(self, timeout: float | None) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            thread, self._thread = self._thread, None
            self._stopping = True  # tick and trigger start nothing from now on
        self._wake.set()
        if thread is not None and thread is not threading.current_thread():
            # the loop ends after its round; a round held up by the store
            # is not waited for beyond the timeout
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
            if thread.is_alive():
                logger.warning("pjcore scheduler loop is still in a round (a store call?) "
                               "as it stops")
        with self._lock:
            # from here on even the loop's last claims are refused (recorded
            # cancelled): stop() no longer waits for the loop
            self._joined = True
        # Wait for the entries to leave _inflight, not for the runner's
        # futures: a future is done before its callback has recorded the
        # outcome, and a run must not be called "shutdown" after it succeeded.
        # The loop is gone, so ends the store refused are retried here.
        while True:
            self._flush_ends()
            self._flush_records()
            with self._drained:
                if not self._inflight:
                    break
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    break
                if any(e.unrecorded is not None for e in self._inflight.values()):
                    left = RECORD_RETRY if left is None else min(left, RECORD_RETRY)
                self._drained.wait(left)
        with self._lock:
            leftover = [e for e in self._inflight.values() if not e.ended]
        for entry in leftover:
            self._end(entry, RunStatus.cancelled, "shutdown")
        with self._lock:
            unrecorded = sorted(e.run_id for e in self._inflight.values()
                                if e.unrecorded is not None)
        if unrecorded:
            # Not lost: they keep their lease until it runs out, then any
            # scheduler records them abandoned (this owner at once on restart).
            logger.error("pjcore scheduler stopped before the store took the end of run(s) {runs}",
                         runs=", ".join(unrecorded))

    # -- plugins ---------------------------------------------------------------

    def register_plugin(self, plugin_id: str, plugin_key: str) -> None:
        with self._lock:
            self._plugins[plugin_id] = plugin_key
            self._generation += 1  # its jobs were just synced: read them anew
        self.wake()

    def unregister_plugin(self, plugin_id: str, reason: str) -> list[str]:
        with self._lock:
            self._plugins.pop(plugin_id, None)  # from here on, nothing of it starts
            self._generation += 1
            entries = [e for e in self._inflight.values() if e.job.plugin_id == plugin_id]
        # This scheduler's runs only: others sharing the database may still
        # run the plugin (it was unloaded here because this process stops,
        # say), and their runs are theirs to end.
        if not self._cancels_by_owner:
            # a store whose cancel_runs predates owner: ours, one by one
            cancelled = [e.run_id for e in entries if self._end(e, RunStatus.cancelled, reason)]
            self.wake()
            return cancelled
        # Record first, signal second: a handler that sees the signal and
        # returns at once must find its run already cancelled, or its
        # completion would win. The job stays busy until the handler returns.
        try:
            cancelled = self.store.cancel_runs(plugin_id, reason=reason, now=self.clock.now(),
                                               owner=self.owner)
        finally:
            for entry in entries:
                entry.context.request_cancel(reason)
        done = set(cancelled)
        with self._lock:
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
        if not self._wake.is_set():  # set() takes a lock and notifies every time
            self._wake.set()

    def _loop(self) -> None:
        ident = self._loop_ident = threading.get_ident()
        try:
            self._loop_rounds()
        finally:
            # a later thread may get the same ident; a later loop has its own
            if self._loop_ident == ident:
                self._loop_ident = None

    def _loop_rounds(self) -> None:
        last_failure: tuple | None = None
        me = threading.current_thread()
        # a loop that a stop() gave up waiting for ends, even if start() runs anew
        while not self._stopping and self._thread is me:
            self._wake.clear()  # before the tick, so a wake() during it is kept
            wake_at: datetime | None = None
            try:
                self.tick()
                wake_at = self._compute_wake_at()
            except Exception as exc:
                self._errors += 1
                delay = self._backoff(self._errors)
                # A traceback when the failure is new, one line while it
                # repeats (an outage would otherwise log one every retry).
                kind = (type(exc), str(exc).partition("\n")[0])
                log = logger.opt(exception=exc) if kind != last_failure else logger
                last_failure = kind
                log.error("pjcore scheduler tick failed ({n} in a row): {error}; "
                          "retrying in {delay:.1f}s", n=self._errors, error=exc, delay=delay)
                wake_at = self.clock.now() + timedelta(seconds=delay)
            else:
                if self._errors:
                    logger.warning("pjcore scheduler resumed after {n} failed tick(s)",
                                   n=self._errors)
                self._errors, last_failure = 0, None
            self._next_wake_at = wake_at
            if self._stopping:
                break
            self.clock.wait(self._wake, wake_at, self.max_idle)

    def _backoff(self, failures: int) -> float:
        """Real seconds to wait after *failures* failed attempts in a row."""
        return min(MAX_BACKOFF, self.lease_seconds / 3,
                   FIRST_BACKOFF * 2 ** min(failures - 1, 16))

    def _compute_wake_at(self) -> datetime | None:
        """When the next tick has something to do.

        Jobs that cannot start now are left out, or the loop would spin on
        their past-due pointers: a busy job wakes the loop when its handler
        returns, a job held by another process is retried after
        :data:`BLOCKED_RETRY`, and when the cap is reached only a finishing
        run (or a timeout deadline) can change anything.
        """
        now = self.clock.now()
        with self._lock:
            live = [e for e in self._inflight.values() if not e.ended]
            # a run not started yet gets its deadline when it starts, which
            # is later than now + timeout: wake by then at the latest
            candidates = [e.deadline if e.deadline is not None else now + timedelta(
                seconds=e.timeout) for e in live if e.timeout]
            unrecorded = self._unrecorded_seen and any(
                e.unrecorded is not None for e in self._inflight.values())
            if (live or unrecorded) and self._renew_at is not None:
                candidates.append(self._renew_at)
            if self._end_queue:
                candidates.append(now)  # ends to record: at once
            if unrecorded:
                candidates.append(now + timedelta(seconds=RECORD_RETRY))
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
        try:
            started = self._round(now)
        except Exception:
            # The store failed (an outage, most likely). A claim or a run
            # creation may have committed although it raised; and every
            # other scheduler may be missing heartbeats as well.
            self._orphans_possible = True
            self._recovering = True
            raise
        self._recovering = False
        return started

    def _round(self, now: datetime) -> int:
        # Ends the store refused before: their jobs stay busy until recorded.
        self._flush_records()
        # Handlers' outcomes since the last round: recorded together with
        # this round's first claims (one transaction where the store can),
        # or on their own at the end of the round if it claims nothing.
        # Their jobs stay busy until then; their places count as free.
        with self._lock:
            ends, self._end_queue = self._end_queue, []
        try:
            return self._claim_round(now, ends)
        finally:
            if ends:
                with self._record_lock:
                    self._record_ends(ends)

    def _claim_round(self, now: datetime, ends: list[_InFlight]) -> int:
        """The rest of :meth:`_round`; the first claims take *ends* along
        (and empty it)."""
        if self._recovering:
            # The first rounds after a store failure: other schedulers may
            # have been cut off too and not renewed their leases. Give them
            # a lease's time to renew before their runs count as abandoned
            # (their back-off is at most a third of a lease). This
            # scheduler's own runs are renewed right below.
            with self._lock:
                later = now + timedelta(seconds=self.lease_seconds)
                if self._reconcile_at is None or self._reconcile_at < later:
                    self._reconcile_at = later
        if self._reclaim:  # first tick after start()
            self._reconcile(now, owner=self.owner)
            self._reclaim = False
        # Own leases first: a tick that comes late must not find (and
        # abandon) this scheduler's own runs as expired.
        self._renew(now)
        self._expire(now)
        self._reconcile(now)
        if self._orphans_possible:
            self._adopt_orphans(now)
            self._orphans_possible = False
        with self._lock:
            self._blocked.clear()  # looked at again below
            # A run whose end waits in *ends* has returned: its place is
            # free, as its end is recorded before (in the transaction of)
            # the first claims. A store whose claim_slots predates start
            # gets the ends on their own, at the end of the round.
            together = self._claims_start
            free = self.max_concurrent - len(self._inflight) + (len(ends) if together else 0)
            plugin_ids = list(self._plugins)
            busy = set(self._busy)
            if ends and together:
                # their end is recorded first in the claims' transaction:
                # a next slot already due is claimed this round
                busy.difference_update(e.job.id for e in ends)
            stopping = self._stopping
            generation = self._generation
            backlog, self._backlog = self._backlog, None
        if free <= 0 or not plugin_ids or stopping:
            return 0
        started = 0
        # Jobs due at the same instant are tried in an order of this
        # scheduler's own (a hash of owner and job id), from a list a few
        # times longer than the free capacity: schedulers sharing a database
        # then start on different jobs instead of all going for the same rows
        # and refusing each other's claims. Older slots still come first.
        # (Reading only as many as there is room for, until a claim is
        # refused, was tried: the schedulers of a burst then all start on the
        # same rows, and the first takes the burst whole.)
        # What a round had no room for serves the next rounds of the same
        # backlog while it holds a round's worth, for at most BACKLOG_TTL
        # and with the same plugins: a claim compares each pointer with the
        # store's, so a job that changed meanwhile is refused, not run twice.
        queue = None
        if (backlog is not None and backlog[2] == plugin_ids and backlog[3] == generation
                and backlog[1] <= now < backlog[1] + timedelta(seconds=BACKLOG_TTL)):
            queue = [job for job in backlog[0] if job.id not in busy]
            read_at = backlog[1]
        if queue is None or len(queue) < free:
            limit = min(free * _SPREAD + len(busy), _MAX_LIMIT)
            due = self.store.due_jobs(now, limit=limit, plugin_ids=plugin_ids)
            seed = self._spread_seed  # crc32 of "owner/", continued over each job id
            due.sort(key=lambda j: (j.next_run_at, zlib.crc32(j.id.encode(), seed)))
            # still running: the slot waits, the misfire policy decides later
            queue = [job for job in due if job.id not in busy]
            read_at = now
        lease_until = self._lease_until(now)
        pos = 0
        # plan_slots depends on these alone; the jobs of a burst share them
        plans: dict[tuple, Any] = {}
        # Claims go to the store a batch at a time (one transaction where the
        # store can), as many as there is room for; refused claims make room
        # for the next batch.
        while started < free and pos < len(queue):
            if self._stopping:
                break  # stopping: a slot claimed now would only be recorded cancelled
            batch: list[tuple[Job, Any]] = []
            while pos < len(queue) and len(batch) < min(free - started, CLAIM_BATCH):
                job = queue[pos]
                pos += 1
                key = (job.schedule, job.timezone, job.policy, job.next_run_at)
                try:
                    plan = plans.get(key)
                    if plan is None:
                        plan = plans[key] = plan_slots(job, now)
                except CronError as exc:
                    # Manifests are validated, so only a stored schedule that
                    # no longer evaluates (time zone data, no fire time left)
                    # gets here; parking the job keeps it from failing every
                    # tick, and a sync with a new schedule gives it a pointer.
                    logger.error("pjcore job {plugin}/{job} cannot be scheduled and is parked: "
                                 "{error}", plugin=job.plugin_key, job=job.job_key, error=exc)
                    self.store.claim_slot(job.id, expected=job.next_run_at, run_slot=None,
                                          next_run_at=None, now=now)
                    continue
                batch.append((job, plan))
            if not batch:
                break
            # the round's ends go with its first claims (see _round)
            taken: list[_InFlight] = []
            if ends and self._claims_start:
                taken, ends[:] = ends[:], []
            # Under the lock, no other submit (a trigger, a retry) takes a
            # worker counted idle here before the runs the claim records
            # running reach it.
            applied: list[bool] | None = None
            with self._record_lock if taken else contextlib.nullcontext():
                try:
                    with self._submit_lock:
                        idle = self._idle_workers()
                        rows = [{"job_id": job.id, "expected": job.next_run_at,
                                 "run_slot": plan.run_slot, "next_run_at": plan.next_run_at,
                                 "missed": plan.missed, "now": now, "owner": self.owner,
                                 "lease_until": lease_until} for job, plan in batch]
                        try:
                            if taken:
                                applied, claims = self.store.complete_and_claim(
                                    self._end_rows(taken), rows, start=min(idle, len(batch)))
                            else:
                                claims = self._claim_slots(rows, min(idle, len(batch)))
                        except BaseException as exc:
                            with self._lock:
                                self._failed_claims.add(now)
                            if taken:  # they may have been recorded: the retry tells
                                self._ends_failed(taken, exc, retry=True)
                            raise
                        try:
                            started += self._dispatch_many(self._claimed(batch, claims, now),
                                                           idle)
                        except BaseException:
                            # committed claims whose runs no worker got:
                            # orphans, adopted once a round works again
                            with self._lock:
                                self._failed_claims.add(now)
                            raise
                finally:
                    # Recorded with the claims: free the jobs, announce the
                    # ends, whatever became of the dispatch. After the runs
                    # went to their workers: an observer told of an end may
                    # trigger a run, which takes an idle worker.
                    if applied is not None:
                        self._ends_recorded(taken, applied)
        if started >= free and pos < len(queue) and not self._stopping:
            with self._lock:  # more is due than there was room for
                self._backlog = (queue[pos:], read_at, plugin_ids, generation)
        return started

    def _idle_workers(self) -> int:
        try:
            return max(0, self.runner.idle_workers() or 0)
        except Exception:  # a runner's bug must not stop the round
            logger.exception("pjcore runner could not tell its idle workers")
            return 0

    def _claim_slots(self, claims: list[dict[str, Any]], start: int) -> list[Any]:
        if self._claims_start:
            return self.store.claim_slots(claims, start=start)
        # a store written before claim_slots took start: every run comes
        # back queued, and _dispatch_many starts them as before
        return self.store.claim_slots(claims)

    def _claimed(self, batch: list[tuple[Job, Any]], claims: list[Any],
                 now: datetime) -> list[tuple[Job, JobRun]]:
        """The runs of a batch's claims that applied; refused jobs wait."""
        claimed: list[tuple[Job, JobRun]] = []
        for (job, plan), claim in zip(batch, claims):
            if not claim.applied:
                # Another scheduler took the slot (the pointer moved: the
                # next tick sees the new one), the job changed, or a run of
                # it is in flight elsewhere; only the last keeps it due.
                with self._lock:
                    self._blocked[job.id] = now + timedelta(seconds=BLOCKED_RETRY)
                continue
            if plan.missed:
                logger.warning(
                    "pjcore job {plugin}/{job} missed {n} slot(s) (policy {policy})",
                    plugin=job.plugin_key, job=job.job_key, n=plan.missed,
                    policy=job.policy.misfire.value,
                )
            if claim.run is not None:
                claimed.append((job, claim.run))
        return claimed

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
        except BaseException as exc:
            with self._lock:
                if self._busy.get(job.id) == "":  # only our own reservation
                    del self._busy[job.id]
            if isinstance(exc, StoreError):
                self._orphans_possible = True  # it may have committed all the same
            raise
        self._dispatch(job, run)
        return run.id

    def _timeout_for(self, job: Job) -> float | None:
        return job.policy.timeout_seconds or self.default_timeout

    def _lease_until(self, now: datetime) -> datetime:
        return now + timedelta(seconds=self.lease_seconds)

    def _dispatch(self, job: Job, run: JobRun) -> bool:
        """Hand a run to the runner; False if it was refused and recorded.
        The worker marks a queued run running; a running one (an orphan its
        claim started) is submitted as started."""
        entry = self._admit(job, run)
        if entry is None:
            return False
        if run.status is RunStatus.running:  # an orphan a claim recorded running
            self._started(entry, run.started_at, run.lease_until)
            if entry.timeout:
                # its handler starts now, maybe long after the claim (an
                # outage): the timeout counts from now, not from the claim
                entry.deadline = self.clock.now() + timedelta(seconds=entry.timeout)
        with self._submit_lock:
            self._submit(entry)
        return True

    def _dispatch_many(self, claimed: list[tuple[Job, JobRun]], idle: int) -> int:
        """Hand a round's runs to the runner; how many went. The caller holds
        the submit lock and read *idle* under it. Runs the claim recorded
        running take idle workers first; queued runs are marked running
        together (one store call instead of one per worker) as far as idle
        workers remain, and by their worker otherwise."""
        entries = [e for e in (self._admit(job, run) for job, run in claimed) if e is not None]
        queued = []
        listening = self._listens("run_started")
        for entry in entries:
            entry.listen_started = listening
            run = entry.run
            if run.status is RunStatus.running:
                self._started(entry, run.started_at, run.lease_until)
                idle -= 1
            else:
                queued.append(entry)
        if idle > 0 and queued:
            self._start_many(queued[:idle])
        for entry in entries:
            self._submit(entry)
        return len(entries)

    def _started(self, entry: _InFlight, now: datetime, lease_until: datetime | None) -> None:
        """*entry*'s run is recorded running since *now*, leased until *lease_until*."""
        if entry.timeout:
            entry.deadline = now + timedelta(seconds=entry.timeout)
        entry.started_at, entry.lease_until = now, lease_until

    def _start_many(self, entries: list[_InFlight]) -> None:
        """``queued`` -> ``running`` for *entries*, just before they are
        submitted (the runner has room for each: ticks never exceed the cap)."""
        now = self.clock.now()
        lease_until = self._lease_until(now)
        try:
            applied = self.store.mark_runs_running([e.run_id for e in entries], now=now,
                                                   owner=self.owner, lease_until=lease_until)
        except Exception as exc:
            # Each worker starts its run on its own, retrying through an
            # outage exactly as a run dispatched alone does.
            logger.warning("pjcore could not start {n} run(s) together: {error}; starting "
                           "them one by one", n=len(entries), error=exc)
            for entry in entries:
                entry.start_failed = True
            return
        for entry, ok in zip(entries, applied):
            if ok:
                self._started(entry, now, lease_until)
            else:
                entry.start_refused = True

    def _admit(self, job: Job, run: JobRun) -> _InFlight | None:
        """The in-flight entry of a queued run, its job now busy; None if the
        run may not start (it is recorded cancelled)."""
        timeout = self._timeout_for(job)
        context = JobContext(
            plugin_id=job.plugin_id,
            plugin_key=job.plugin_key,
            job_key=job.job_key,
            run_id=run.id,
            trigger=run.trigger,
            scheduled_for=run.scheduled_for or run.created_at,
            logger=logger.bind(pj_plugin=job.plugin_key, pj_job=job.job_key, pj_run=run.id),
            # the handler's view of its own plugin's jobs, and of no other
            jobs=self._plugin_view(job.plugin_id, job.plugin_key),
        )
        entry = _InFlight(run_id=run.id, job=job, run=run, context=context, deadline=None,
                          timeout=timeout)
        with self._lock:
            # Checked together with the insertion, so unregister_plugin and
            # stop either see this entry or make us refuse it. A slot the loop
            # claimed as stop() began still runs: stop() joins the loop before
            # it drains, so it waits for this run like any other.
            stopping = self._stopping and (threading.get_ident() != self._loop_ident
                                           or self._joined)
            refusal = ("shutdown" if stopping
                       else UNREGISTERED if job.plugin_id not in self._plugins else None)
            if refusal is None:
                self._inflight[run.id] = entry
                self._busy[job.id] = run.id
                if self._renew_at is None:
                    self._renew_at = self.clock.now() + timedelta(seconds=self.lease_seconds / 3)
                if self._thread is None and self._keeper is None:
                    # Driven without its loop (``pjcore trigger``, ticks by
                    # hand): the leases still need renewing, or any other
                    # scheduler on the database would record the run
                    # abandoned while its handler runs.
                    self._keeper = threading.Thread(target=_keep_leases,
                                                    args=(weakref.ref(self),),
                                                    name="pjcore-leases", daemon=True)
                    self._keeper.start()
            elif self._busy.get(job.id) == "":
                del self._busy[job.id]
        if refusal is not None:
            self._record(run.id, job, RunStatus.cancelled, refusal)
            return None
        return entry

    def _plugin_view(self, plugin_id: str, plugin_key: str) -> PluginJobs:
        """The ``ctx.jobs`` of a plugin's handlers: one per plugin (it holds
        no state of a run)."""
        view = self._views.get((plugin_id, plugin_key))
        if view is None:
            view = PluginJobs(self.store, self, plugin_id, plugin_key)
            if len(self._views) >= 1024:
                self._views.clear()  # bounded; dict operations are atomic under the GIL
            self._views[(plugin_id, plugin_key)] = view
        return view

    def _submit(self, entry: _InFlight) -> None:
        try:
            # the outcome comes to _finished without a future (Runner.call)
            local = self._local
            self.runner.call(lambda ctx: _as_callback(local, self._execute, entry, ctx),
                             entry.context,
                             lambda outcome: _as_callback(local, self._finished, entry, outcome))
        except Exception as exc:  # a runner must not raise; never leave the job busy forever
            logger.opt(exception=exc).error("pjcore runner refused run {run}", run=entry.run_id)
            _as_callback(self._local, self._finished, entry,
                         Outcome("failed", f"runner error: {exc!r}"))

    def _execute(self, entry: _InFlight, context: JobContext) -> Any:
        """Runs in the worker: start the run (unless the loop did), then the handler."""
        started = None
        if entry.started_at is None:
            if entry.start_refused:
                raise RunCancelled(context.cancel_reason or "cancelled before it started")
            now = self.clock.now()
            if entry.timeout:
                # No wake-up needed: until the deadline is set, the loop plans
                # to wake at dispatch time + timeout at the latest, which is no
                # later than this deadline (see _compute_wake_at).
                entry.deadline = now + timedelta(seconds=entry.timeout)
            started = self._mark_running(entry, context)
            if started is None:
                raise RunCancelled(context.cancel_reason or "cancelled before it started")
        else:
            # Started by the loop: the gate mark_running keeps for a worker.
            # unregister_plugin drops the plugin before it cancels the runs in
            # the store, and _end decides a run's end before recording it:
            # either way the store may already hold the run ended, before
            # the signal reaches the context.
            with self._lock:
                unregistered = entry.job.plugin_id not in self._plugins
                ended = entry.ended
            if unregistered or ended or context.cancelled:
                raise RunCancelled(context.cancel_reason
                                   or (UNREGISTERED if unregistered else "cancelled before it started"))
        if context.trigger is not RunTrigger.schedule:
            self._stamp_manual_start(entry.job, self.clock.now())
        if (self._listens("run_started") if entry.listen_started is None
                else entry.listen_started):
            # what the store now holds, without reading it back
            if started is None:
                started = (entry.running(self.owner) if entry.lease_until is not None
                           else self.store.get_run(entry.run_id))
            if started is not None:
                self._notify("run_started", run=started, job=entry.job)
        handler = self._resolve(entry.job.plugin_key, entry.job.job_key)
        if handler is None:
            raise HandlerLookupError(entry.job.plugin_key, entry.job.job_key)
        return handler(context)

    def _mark_running(self, entry: _InFlight, context: JobContext) -> JobRun | None:
        """``queued`` -> ``running`` in the store: the run as now stored, or
        None if it may not start.

        A store failure is retried, backing off, until the store takes it or
        the run is cancelled (timeout, unregister, shutdown): the slot is
        claimed and leased to this scheduler, so it is still ours to run
        once the store is back, and recording it failed would lose it.
        """
        # a batched start that raised may have committed all the same
        failures = 1 if entry.start_failed else 0
        while True:
            now = self.clock.now()
            try:
                lease_until = self._lease_until(now)
                if self.store.mark_running(entry.run_id, now=now, owner=self.owner,
                                           lease_until=lease_until):
                    # what the store now holds, without reading it back
                    return attrs.evolve(entry.run, status=RunStatus.running, started_at=now,
                                        owner=self.owner, lease_until=lease_until)
                if not failures:
                    return None
                # A failed attempt may have committed all the same (the
                # connection was lost after the server applied it).
                run = self.store.get_run(entry.run_id)
                if run is not None and run.status is RunStatus.running and run.owner == self.owner:
                    return run
                return None
            except StoreError as exc:  # the database is unavailable: worth retrying
                failures += 1
                delay = self._backoff(failures)
                logger.warning("pjcore could not start run {run} of {job}: {error}; "
                               "retrying in {delay:.1f}s", run=entry.run_id,
                               job=entry.job.job_key, error=exc, delay=delay)
                if context.wait(delay):
                    return None

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

    def _finished(self, entry: _InFlight, outcome: Outcome) -> None:
        """A handler's *outcome*, on its worker: decided, queued for the loop
        or recorded here, and the job released."""
        kind = outcome.status if isinstance(outcome, Outcome) else None
        status = _STATUSES.get(kind) if isinstance(kind, str) else None
        if status is None:  # a runner's bug: recorded, and never leaves the job busy
            problem = (f"not an outcome status: {outcome.status!r}"
                       if isinstance(outcome, Outcome) else f"not an Outcome: {outcome!r}")
            status, outcome = RunStatus.failed, Outcome("failed", f"runner error: {problem}")
        ended_at = self.clock.now()
        with self._lock:
            entry.returned = True  # before the record: its announcement waits for the release
            # Decided here unless a timeout, a cancellation or the shutdown
            # decided first: tested and set under the lock, as _end does,
            # or both would record an end and the second would overwrite
            # the first one's announcement.
            decided = not entry.ended
            entry.ended = True
            # While the loop runs, it records the outcome with the others of
            # its round (one transaction) and then releases the job;
            # otherwise (ticks by hand, stopping) it is recorded here.
            queued = decided and self._thread is not None and not self._stopping
            if queued:
                entry.queued_end = (status, outcome.error, outcome.error_detail, ended_at)
                self._end_queue.append(entry)
        if queued:
            self.wake()
            return
        if decided:
            self._write_end(entry, status, outcome.error, outcome.error_detail)
        self._release(entry)

    def _write_end(self, entry: _InFlight, status: RunStatus, error: str | None,
                   detail: str | None = None) -> bool:
        """Record the run's end; whether it applied now. If the store refuses
        (outage), keep it for :meth:`_flush_records`: the job stays busy and
        the run keeps its lease until the end is recorded, so it is never lost
        nor recorded twice (``complete_run`` never overwrites a terminal
        status)."""
        now = self.clock.now()
        try:
            applied = self.store.complete_run(entry.run_id, status=status, now=now, error=error,
                                              error_detail=detail)
        except StoreError as exc:  # the database is unavailable: worth retrying
            logger.warning("pjcore could not record the end of run {run} of {job} ({status}): "
                           "{error}; retrying until the store takes it", run=entry.run_id,
                           job=entry.job.job_key, status=status.value, error=exc)
            with self._lock:
                entry.unrecorded = (status, error, detail, now)
                self._unrecorded_seen = True
            self.wake()  # the loop retries it
            return False
        except Exception:
            self._give_up_recording(entry)
            return False
        self._recorded(entry, applied)
        return applied

    def _give_up_recording(self, entry: _InFlight) -> None:
        # Not an outage (a store bug, a value it cannot take): retrying would
        # keep the job busy forever. Without its lease renewed, the run is
        # recorded abandoned by a scheduler once the lease runs out; its
        # handler has run, so it is never adopted as an orphan.
        with self._lock:
            self._given_up.add(entry.run_id)
        logger.exception("pjcore cannot record the end of run {run} of {job}; it is recorded "
                         "abandoned once its lease runs out", run=entry.run_id,
                         job=entry.job.job_key)
        self._recorded(entry, False)

    def _recorded(self, entry: _InFlight, applied: bool) -> None:
        """The store took the end of *entry*; announce it once (after the
        release if the handler has returned, at once otherwise)."""
        with self._lock:
            entry.unrecorded = None
            # never clears an announcement another record of the run owes
            entry.announce = entry.announce or (applied and entry.returned)
            now = applied and not entry.returned
        if now:
            self._announce_end(entry.run_id, entry.job)

    def _release(self, entry: _InFlight) -> None:
        """Free the job once the handler has returned and the end is recorded."""
        with self._lock:
            if (entry.released or not entry.returned or entry.unrecorded is not None
                    or entry.queued_end is not None or entry.recording):
                return
            entry.released = True
            if self._busy.get(entry.job.id) == entry.run_id:
                del self._busy[entry.job.id]
        # Announced once the job is free, so an observer may trigger it
        # again, and before the entry leaves _inflight, so stop() (and a
        # host closing the store after it) waits for the announcement.
        if entry.announce:
            # a final run is built only for a listener (see _ends_recorded)
            self._announce_end(entry.run_id, entry.job, entry.final,
                               listening=True if entry.final is not None else None)
        with self._lock:
            self._inflight.pop(entry.run_id, None)
            if self._stopping:  # only stop() waits for the runs to drain
                self._drained.notify_all()
        # The loop releases as part of a round, after its claims: waking it
        # would only cost an empty round.
        if threading.get_ident() != self._loop_ident:
            self.wake()

    def _flush_ends(self) -> None:
        """Record the queued outcomes of handlers, in one batch, then free
        their jobs and announce them. Never raises: if the store refuses, the
        ends go the way of any end it refused (see :meth:`_write_end`)."""
        with self._record_lock:
            with self._lock:
                batch, self._end_queue = self._end_queue, []
            self._record_ends(batch)

    def _record_ends(self, batch: list[_InFlight]) -> None:
        """:meth:`_flush_ends` for *batch*, taken from the queue. Under the
        record lock."""
        if not batch:
            return
        try:
            applied = self.store.complete_runs(self._end_rows(batch))
        except Exception as exc:
            self._ends_failed(batch, exc, retry=isinstance(exc, StoreError))
            return
        self._ends_recorded(batch, applied)

    @staticmethod
    def _end_rows(batch: list[_InFlight]) -> list[dict[str, Any]]:
        return [{"run_id": e.run_id, "status": e.queued_end[0], "now": e.queued_end[3],
                 "error": e.queued_end[1], "error_detail": e.queued_end[2]} for e in batch]

    def _ends_failed(self, batch: list[_InFlight], exc: BaseException, *, retry: bool) -> None:
        """The store raised recording *batch*: retried until it takes them
        (an outage, or a round's claims that failed with them), or given up
        (a store that cannot take them)."""
        if retry:
            for entry in batch:
                status = entry.queued_end[0]
                logger.warning("pjcore could not record the end of run {run} of {job} "
                               "({status}): {error}; retrying until the store takes it",
                               run=entry.run_id, job=entry.job.job_key,
                               status=status.value, error=exc)
                with self._lock:
                    entry.unrecorded, entry.queued_end = entry.queued_end, None
                    self._unrecorded_seen = True
            return
        for entry in batch:
            with self._lock:
                entry.queued_end = None
            self._give_up_recording(entry)
            self._release(entry)

    def _ends_recorded(self, batch: list[_InFlight], applied: list[bool]) -> None:
        """The store took *batch*'s ends (*applied*: whether each applied):
        free their jobs and announce them. :meth:`_recorded` and
        :meth:`_release` for the batch, under the lock once for all: every
        job of the batch is free before the first announcement, and every
        entry leaves _inflight after the last."""
        listening = self._listens("run_finished")
        for entry, done in zip(batch, applied):
            status, error, detail, ended_at = entry.queued_end
            if (done and listening and status is RunStatus.succeeded and error is None
                    and detail is None and entry.started_at is not None
                    and entry.lease_until is not None):
                # exactly what the store now holds (an error text could
                # come back altered by the store: those are read back);
                # built field by field: cheaper than attrs.evolve (new_run
                # takes JobRun's fields in order)
                run, started = entry.run, entry.started_at
                entry.final = new_run(
                    run.id, run.job_id, run.plugin_id, run.job_key, run.trigger, status,
                    run.scheduled_for, run.created_at, started, ended_at,
                    duration_ms(started, ended_at), None, None, self.owner, entry.lease_until,
                    run.attempt)
        released: list[_InFlight] = []
        early: list[_InFlight] = []
        busy = self._busy
        with self._lock:
            for entry, done in zip(batch, applied):
                entry.queued_end = entry.unrecorded = None
                # as _recorded and _release do one by one
                entry.announce = entry.announce or (done and entry.returned)
                if not entry.returned:
                    if done:
                        early.append(entry)
                    continue
                if entry.released:
                    continue
                entry.released = True
                if busy.get(entry.job.id) == entry.run_id:
                    del busy[entry.job.id]
                released.append(entry)
        for entry in early:
            self._announce_end(entry.run_id, entry.job)
        if not released:
            return
        try:
            for entry in released:
                if entry.announce:
                    # a final run is built only for a listener (see above)
                    self._announce_end(entry.run_id, entry.job, entry.final,
                                       listening=True if entry.final is not None else None)
        finally:
            # even if a notify callable raised: the places are free
            with self._lock:
                inflight = self._inflight
                for entry in released:
                    inflight.pop(entry.run_id, None)
                if self._stopping:  # only stop() waits for the runs to drain
                    self._drained.notify_all()
        if threading.get_ident() != self._loop_ident:
            self.wake()

    def _flush_records(self) -> None:
        """Retry the ends the store refused, oldest first. Never raises: a
        store still down leaves them for the next attempt (the tick's own
        store calls report the outage)."""
        if not self._unrecorded_seen:  # read without the lock: a writer wakes the loop
            return
        with self._record_lock:
            with self._lock:
                pending = [e for e in self._inflight.values() if e.unrecorded is not None]
                if not pending:
                    self._unrecorded_seen = False
            for entry in pending:
                status, error, detail, ended_at = entry.unrecorded
                try:
                    applied = self.store.complete_run(entry.run_id, status=status, now=ended_at,
                                                      error=error, error_detail=detail)
                    if not applied:
                        # The attempt that raised may have been applied all the
                        # same (the connection died after the server did it).
                        run = self.store.get_run(entry.run_id)
                        applied = (run is not None and run.status is status
                                   and run.finished_at == ended_at)
                except StoreError as exc:
                    logger.debug("pjcore still cannot record the end of run {run}: {error}",
                                 run=entry.run_id, error=exc)
                    return
                except Exception:
                    self._give_up_recording(entry)
                    self._release(entry)
                    continue
                if applied:
                    logger.info("pjcore recorded the end of run {run} of {job} ({status}) "
                                "once the store was back", run=entry.run_id,
                                job=entry.job.job_key, status=status.value)
                else:
                    logger.warning("pjcore run {run} of {job} was ended elsewhere before its "
                                   "end ({status}) could be recorded", run=entry.run_id,
                                   job=entry.job.job_key, status=status.value)
                self._recorded(entry, applied)
                self._release(entry)

    def _end(self, entry: _InFlight, status: RunStatus, error: str) -> bool:
        """Record a run terminal while its handler may still be running,
        unless its end is decided already (see _finished); whether the store
        took this end now."""
        with self._lock:
            if entry.ended:
                return False
            # The handler may return while the end is written: its release
            # then waits for the write, which decides the announcement (or
            # keeps the end for a retry if the store refuses it).
            entry.ended = entry.recording = True
        try:
            # Record, then signal: a handler that sees the signal and returns
            # at once must find its run ended, or its completion would win.
            applied = self._write_end(entry, status, error)
        finally:
            with self._lock:
                entry.recording = False
        entry.context.request_cancel(error)
        self._release(entry)  # if the handler returned meanwhile
        return applied

    def _record(self, run_id: str, job: Job, status: RunStatus, error: str) -> None:
        """Record a run that never reached the runner."""
        try:
            applied = self.store.complete_run(run_id, status=status, now=self.clock.now(),
                                              error=error)
        except Exception:
            # Still queued and leased to this scheduler: found again by
            # _adopt_orphans, or abandoned once its lease runs out.
            logger.exception("pjcore could not record the end of run {run}", run=run_id)
            self._orphans_possible = True
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
            # runs not yet recorded terminal: running, or ended here while
            # the store was refusing the record
            ids = [e.run_id for e in self._inflight.values()
                   if not e.ended or e.unrecorded is not None or e.queued_end is not None]
        if not ids:
            with self._lock:
                self._renew_at = None
            return
        lease_until = self._lease_until(now)
        try:
            renewed = set(self.store.renew_leases(self.owner, ids, lease_until=lease_until,
                                                  now=now))
        except BaseException:
            # It may have been applied all the same: the stored lease is
            # unknown until the next renewal (announcements read the run back)
            with self._lock:
                for e in self._inflight.values():
                    if e.run_id in ids:
                        e.lease_until = None
            raise
        with self._lock:
            self._renew_at = now + timedelta(seconds=self.lease_seconds / 3)
            for e in self._inflight.values():
                if e.run_id in renewed and e.started_at is not None:
                    e.lease_until = lease_until  # known again
            lost = [e for e in self._inflight.values()
                    if e.run_id in ids and e.run_id not in renewed and not e.ended]
        # Ended behind our back (abandoned or cancelled by another scheduler):
        # its record is final, so only the handler is left to stop.
        for entry in lost:
            run = self.store.get_run(entry.run_id)
            if run is None or not run.status.terminal:
                continue  # finished here meanwhile, or not ours to judge
            with self._lock:
                entry.ended = True
            entry.context.request_cancel(run.error or f"run {run.status.value} elsewhere")
            logger.warning("pjcore run {run} of {job} was ended by another scheduler ({status})",
                           run=entry.run_id, job=entry.job.job_key, status=run.status.value)

    def _keep_leases_once(self) -> bool:
        """One turn of :func:`_keep_leases`; False once it is done."""
        with self._lock:
            if not self._inflight or self._thread is not None:
                self._keeper = None  # a loop renews from now on, or nothing is left
                return False
        try:
            self._flush_records()
            with self._tick_lock:  # not while a tick by hand renews
                self._renew(self.clock.now())
        except Exception as exc:
            logger.warning("pjcore could not renew the leases of runs in flight: {error}",
                           error=exc)
        return True

    def _reconcile(self, now: datetime, *, owner: str | None = None) -> None:
        """Record as abandoned the runs whose scheduler is gone; retry their
        slots when the job asks for it. Rate-limited unless *owner* is given."""
        if owner is None:
            with self._lock:
                if self._reconcile_at is not None and now < self._reconcile_at:
                    return
                self._reconcile_at = now + timedelta(seconds=self.lease_seconds / 3)
        abandoned = self.store.abandon_runs(now=now, owner=owner)
        for run in abandoned:
            logger.warning("pjcore run {run} of {job} was abandoned: {error}",
                           run=run.id, job=run.job_key, error=run.error)
        with self._lock:
            # runs an earlier sweep recorded abandoned but could not follow up
            owed, self._abandoned = self._abandoned + [(r, False) for r in abandoned], []
        # The store no longer lists them as in flight: a follow-up the store
        # refuses now is kept for the next sweep, or it would never happen.
        for i, (run, announced) in enumerate(owed):
            try:
                job = self.store.get_job(run.job_id)
                if job is None:
                    continue
                if not announced:
                    self._notify("run_finished", run=run, job=job)
                    owed[i] = (run, True)
                self._retry_abandoned(run, job, now)
            except StoreError as exc:
                with self._lock:
                    self._abandoned.extend(owed[i:])
                logger.warning("pjcore could not follow up {n} abandoned run(s) yet: {error}",
                               n=len(owed) - i, error=exc)
                raise
            except Exception:
                logger.exception("pjcore could not follow up abandoned run {run} of {job}",
                                 run=run.id, job=run.job_key)

    def _adopt_orphans(self, now: datetime) -> None:
        """Dispatch runs of this scheduler that it does not know about.

        A claim or run creation whose connection died at commit raised here
        although the database committed it: its run is queued (or running,
        as a claim records the runs it starts at once) and owned by this
        scheduler, and nobody would start it (it would block its job
        until the lease ran out and then be recorded abandoned, its slot
        never run). A run whose slot is past the misfire grace is recorded
        ``skipped`` instead.
        """
        with self._lock:
            plugin_ids = list(self._plugins)
        # running too: a claim records the runs it can start at once running
        for plugin_id, status in itertools.product(plugin_ids,
                                                   (RunStatus.queued, RunStatus.running)):
            cursor = None
            while True:
                page = self.store.list_runs(plugin_id=plugin_id, status=status,
                                            limit=_MAX_LIMIT, cursor=cursor)
                for run in page.runs:
                    if run.owner == self.owner:
                        self._adopt(run, now)
                cursor = page.next_cursor
                if cursor is None:
                    break
        with self._lock:
            self._failed_claims.clear()  # all looked at

    def _adopt(self, run: JobRun, now: datetime) -> None:
        with self._lock:
            if run.id in self._inflight or run.job_id in self._busy or self._stopping:
                return  # known here (a trigger's or retry's reservation included)
            if run.status is RunStatus.running and not (
                    run.created_at in self._failed_claims and run.started_at == run.created_at
                    and run.id not in self._given_up):
                return  # not one a claim that raised left running: its handler may have run
            self._busy[run.job_id] = ""  # as trigger(): no tick starts it meanwhile
        dispatched = False
        try:
            # read again now that the job is reserved: a run of ours that
            # ended and left in between is not adopted
            current = self.store.get_run(run.id)
            if current is None or current.status is not run.status or current.owner != self.owner:
                return
            job = self.store.get_job(run.job_id)
            if job is None:
                return
            grace = job.policy.misfire_grace_seconds
            slot = run.scheduled_for
            if slot is not None and grace is not None and (now - slot).total_seconds() > grace:
                self._record(run.id, job, RunStatus.skipped,
                             "slot past its misfire grace by the time the store came back")
                return
            logger.warning("pjcore run {run} of {job} was created although the store reported "
                           "an error; starting it now", run=run.id, job=job.job_key)
            dispatched = True
            self._dispatch(job, run)
        finally:
            if not dispatched:
                with self._lock:
                    if self._busy.get(run.job_id) == "":
                        del self._busy[run.job_id]

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

    def _listens(self, hook_name: str) -> bool:
        if self._listening is None:
            return True
        try:
            return bool(self._listening(hook_name))
        except Exception:  # an observer's problem must not stop a run
            return True

    def _announce_end(self, run_id: str, job: Job | None = None,
                      run: JobRun | None = None, *, listening: bool | None = None) -> None:
        if not (self._listens("run_finished") if listening is None else listening):
            return
        if run is not None and job is not None:
            self._notify("run_finished", run=run, job=job)
            return
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
