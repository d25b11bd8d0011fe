"""Interfaces of the swappable parts. Backends subclass these.

The docstrings are the contract: :mod:`pjcore.testing` checks every point of
it, and a third-party backend that passes that suite can replace the default.
"""

from __future__ import annotations

from abc import ABCMeta, abstractmethod
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import attrs

from pjcore.models import (Claim, RunStatus, as_aware_utc, optional_aware_utc,
                           terminal_status)

if TYPE_CHECKING:
    from concurrent.futures import Future

    from pjcore.context import JobContext
    from pjcore.manifest import JobDeclaration
    from pjcore.models import Job, JobRun, RunPage, RunTrigger, SyncResult

__all__ = ["JobStore", "Outcome", "Runner", "Scheduler"]


class JobStore(metaclass=ABCMeta):
    """Persistent jobs and runs.

    General rules for every implementation:

    * Every instant given to or returned by a store is timezone-aware; stores
      return UTC. Every method that writes takes ``now``, the instant the
      caller's clock reads, so schedulers can run on an injected clock. An
      instant that is naive raises
      :class:`~pjcore.exceptions.InvalidArgument`, one that is no datetime
      (``None`` where an instant is required included) ``TypeError``; either
      before anything is written (``pjcore.testing`` tries every method).
    * Each method is atomic: it applies completely or not at all, and a
      concurrent caller (another thread, another process on the same
      database) never sees half of it.
    * Identifiers are opaque strings. A store never interprets them, and never
      puts them into SQL text (parameters only).
    * Lookups of something that does not exist return ``None`` (``get_*``)
      or raise :class:`~pjcore.exceptions.JobLookupError` /
      :class:`~pjcore.exceptions.RunLookupError` (commands).
    * Database failures are raised as :class:`~pjcore.exceptions.StoreError`.
    """

    # -- lifecycle -----------------------------------------------------------

    @abstractmethod
    def close(self) -> None:
        """Release connections. Idempotent. The store is unusable afterwards."""

    def __enter__(self) -> "JobStore":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- jobs ----------------------------------------------------------------

    @abstractmethod
    def sync_jobs(
        self,
        plugin_id: str,
        plugin_key: str,
        declarations: Sequence["JobDeclaration"],
        *,
        now: datetime,
    ) -> "SyncResult":
        """Make the plugin's stored jobs match its manifest, in one transaction.

        * A declaration with no stored job is inserted ``active``, with
          ``next_run_at`` the first fire time after *now* (``None`` when it
          has no schedule).
        * A stored job whose declaration changed gets the new fields. If its
          schedule or timezone changed and it is active, ``next_run_at`` is
          recomputed from *now* (the old pointer is never kept).
        * A stored job missing from *declarations* that is active is paused
          with ``paused_by=manifest`` and a reason saying it left the
          manifest; ``next_run_at`` becomes ``None``; its runs are kept.
          An empty *declarations* pauses every job of the plugin.
        * A job paused by the manifest that is declared again becomes active,
          with ``next_run_at`` computed from *now*.
        * A job paused by an operator stays paused (its fields are updated).
        * An active, unchanged job keeps its ``next_run_at``: missed slots
          are the scheduler's business (misfire policy), not the sync's.

        Declarations are assumed valid (a :class:`~pjcore.manifest.Manifest`
        validated them). Calling it twice with the same input changes nothing
        the second time.

        :return: the job keys inserted, updated, paused, reactivated, unchanged.
        """

    @abstractmethod
    def list_jobs(
        self, plugin_id: str | None = None, *, status: str | None = None
    ) -> list["Job"]:
        """Jobs of one plugin (or of all when *plugin_id* is None), optionally
        of one status, ordered by ``(plugin_key, job_key)``."""

    def find_plugin(self, plugin: str) -> str | None:
        """The id of the plugin with stored jobs named by *plugin*: its id, or
        else its key (the smallest id among plugins with that key); ``None``
        if no stored job has that plugin id or key.

        The default reads every stored job; a store with many should answer
        from an index.
        """
        if self.list_jobs(plugin):
            return plugin
        ids = sorted({job.plugin_id for job in self.list_jobs() if job.plugin_key == plugin})
        return ids[0] if ids else None

    @abstractmethod
    def get_job(self, job_id: str) -> "Job | None":
        """The job with this id, or ``None``."""

    @abstractmethod
    def get_job_by_key(self, plugin_id: str, job_key: str) -> "Job | None":
        """The job of *plugin_id* with this key, or ``None``."""

    @abstractmethod
    def get_job_for_plugin(self, plugin_id: str, job_id: str) -> "Job | None":
        """The job with this id if it belongs to *plugin_id*; ``None`` otherwise,
        including when the id belongs to another plugin."""

    @abstractmethod
    def pause_job(self, job_id: str, *, reason: str | None = None, now: datetime) -> "Job":
        """Operator pause: ``status=paused``, ``paused_by=operator``, the
        reason kept, ``next_run_at=None``. Pausing a paused job makes it
        operator-paused (so a later sync will not resume it).

        :raises JobLookupError: no such job.
        :return: the updated job.
        """

    @abstractmethod
    def resume_job(self, job_id: str, *, now: datetime) -> "Job":
        """Operator resume: ``status=active``, ``next_run_at`` the first fire
        time after *now*; slots missed while paused are not run. Resuming an
        active job changes nothing.

        :raises JobLookupError: no such job.
        :raises JobStateError: the job was paused because its manifest no
            longer declares it.
        :return: the updated job.
        """

    @abstractmethod
    def set_next_run(
        self,
        job_id: str,
        *,
        expected: datetime | None,
        next_run_at: datetime | None,
        last_run_at: datetime | None = None,
        now: datetime,
    ) -> bool:
        """Compare-and-set the schedule pointer.

        Applies only if the job exists, is active and its ``next_run_at`` still
        equals *expected* (the value the caller read); otherwise nothing is
        written. *last_run_at*, when given, is stored as well.

        :return: whether it applied.
        """

    @abstractmethod
    def due_jobs(
        self, now: datetime, *, limit: int = 100, plugin_ids: Sequence[str] | None = None
    ) -> list["Job"]:
        """Active jobs whose ``next_run_at <= now``, oldest due first
        (ties broken by id), at most *limit*; only of *plugin_ids* when given."""

    @abstractmethod
    def next_due_at(self, plugin_ids: Sequence[str] | None = None) -> datetime | None:
        """The earliest ``next_run_at`` of any active job (of *plugin_ids* when
        given), or ``None``."""

    @abstractmethod
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
    ) -> "Claim":
        """Claim a due job's slot and advance its pointer, in one atomic step.

        Applies only if the job is active and its ``next_run_at`` still equals
        *expected* (the value the caller read), and -- when *run_slot* is given
        -- no run of the job is ``queued`` or ``running``. Then:

        * with *run_slot*, a ``queued`` run with ``trigger=schedule`` and
          ``scheduled_for=run_slot`` is created (unless a run of that slot
          already exists: a slot never runs twice), and ``last_run_at`` is set
          to *run_slot*;
        * ``next_run_at`` becomes *next_run_at*;
        * ``missed_count`` grows by *missed* (slots that will never run).

        The run carries *owner* and *lease_until*. Two schedulers claiming the
        same job at once: exactly one applies, and neither waits long for the
        other (a job row locked by another claimer may simply be refused).

        :return: ``Claim(applied, run)``; *run* is None when no run was created.
        """

    def claim_slots(self, claims: Sequence[Mapping[str, Any]], *,
                    start: int = 0) -> list["Claim"]:
        """:meth:`claim_slot` for each of *claims* (each a mapping of
        ``claim_slot``'s arguments, ``job_id`` included), in order.

        Each claim applies or is refused on its own, exactly as
        :meth:`claim_slot` would decide it; a store may apply them in one
        transaction (a dispatch round claims all its due jobs at once).

        :param start: the runs created by the first *start* claims are
            recorded ``running`` at once, as :meth:`mark_running` would with
            the claim's ``now``, ``owner`` and ``lease_until`` (a scheduler
            passes how many runs it can hand to idle workers right away; the
            others stay ``queued``). A store may write them so in the claim's
            own statements. Each returned run shows the status it has.

        Every claim's instants are checked before any claim applies: a naive
        datetime, or something that is no datetime, raises and none of the
        batch is applied. The default checks them, then calls
        :meth:`claim_slot` once per claim, then :meth:`mark_running` for the
        runs to start; a store error ends the batch (claims applied before
        it stay applied).

        :return: one :class:`~pjcore.models.Claim` per claim, in order.
        """
        _check_claims(claims)
        claimed = [self.claim_slot(**claim) for claim in claims]
        return self._start_claimed(claims, claimed, start)

    def _start_claimed(self, claims: Sequence[Mapping[str, Any]], claimed: list["Claim"],
                       start: int, mark: Any = None) -> list["Claim"]:
        """*claimed* with the queued runs of the first *start* claims marked
        running (claim_slots' ``start``) one at a time by *mark*
        (:meth:`mark_running` unless given)."""
        mark = mark or self.mark_running
        out = list(claimed)
        for i, (claim, result) in enumerate(zip(claims[:max(0, start)], claimed)):
            run = result.run
            if run is None or run.status is not RunStatus.queued:
                continue
            now, owner, until = claim["now"], claim.get("owner"), claim.get("lease_until")
            if mark(run.id, now=now, owner=owner, lease_until=until):
                out[i] = Claim(applied=True, run=attrs.evolve(
                    run, status=RunStatus.running, started_at=now, owner=owner,
                    lease_until=until))
        return out

    @abstractmethod
    def delete_plugin(self, plugin_id: str) -> int:
        """Delete every job and run of the plugin, in one transaction.

        :return: the number of jobs deleted.
        """

    # -- runs ----------------------------------------------------------------

    @abstractmethod
    def create_run(
        self,
        job_id: str,
        *,
        trigger: "RunTrigger | str",
        now: datetime,
        scheduled_for: datetime | None = None,
        exclusive: bool = True,
        attempt: int = 1,
        owner: str | None = None,
        lease_until: datetime | None = None,
    ) -> "JobRun":
        """Record a new run, ``queued``, ``created_at=now``.

        :param scheduled_for: the slot this run fills. At most one run per
            ``(job, scheduled_for, attempt)`` ever exists.
        :param attempt: 1 for the first run of a slot; a retry of an
            abandoned slot is attempt 2, 3, ...
        :param owner, lease_until: the scheduler that will run it and until
            when it holds the run without renewing (see :meth:`renew_leases`).
        :param exclusive: refuse when the job has a run that is ``queued`` or
            ``running`` (runs of one job never overlap). The check and the
            insert are one atomic step, also across processes.
        :raises JobLookupError: no such job.
        :raises JobAlreadyRunning: *exclusive* and a non-terminal run exists.
        :raises SlotAlreadyClaimed: a run for this slot already exists.
        """

    @abstractmethod
    def mark_running(
        self,
        run_id: str,
        *,
        now: datetime,
        owner: str | None = None,
        lease_until: datetime | None = None,
    ) -> bool:
        """``queued`` -> ``running``, ``started_at=now``. A run in any other
        status is left alone (a cancelled run never becomes running).

        :return: whether it applied (``False`` also for an unknown id).
        """

    def mark_runs_running(
        self,
        run_ids: Sequence[str],
        *,
        now: datetime,
        owner: str | None = None,
        lease_until: datetime | None = None,
    ) -> list[bool]:
        """:meth:`mark_running` for each of *run_ids*, with the same *now*,
        *owner* and *lease_until*, in order; a store may apply them in one
        transaction. Each applies or not on its own, exactly as
        :meth:`mark_running` decides. The default calls :meth:`mark_running`
        once per run; an exception ends the batch (runs marked before it stay
        marked).

        :return: whether each applied, in order.
        """
        return [self.mark_running(run_id, now=now, owner=owner, lease_until=lease_until)
                for run_id in run_ids]

    @abstractmethod
    def complete_run(
        self,
        run_id: str,
        *,
        status: "RunStatus | str",
        now: datetime,
        error: str | None = None,
        error_detail: str | None = None,
    ) -> bool:
        """``queued``/``running`` -> a terminal *status*, ``finished_at=now``,
        ``duration_ms`` from ``started_at`` (``None`` if it never started).
        A terminal status is never overwritten.

        :raises ValueError: *status* is not terminal.
        :return: whether it applied.
        """

    def complete_runs(self, ends: Sequence[Mapping[str, Any]]) -> list[bool]:
        """:meth:`complete_run` for each of *ends* (each a mapping of
        ``complete_run``'s arguments, ``run_id`` included), in order; a store
        may apply them in one transaction. Each applies or not on its own,
        exactly as :meth:`complete_run` decides.

        Every end is checked before any is applied: a status that is not
        terminal (or no status at all) raises ``ValueError``, a naive ``now``
        :class:`~pjcore.exceptions.InvalidArgument`, and none of the batch is
        recorded. The default checks every end's status and ``now``, then
        calls :meth:`complete_run` once per end; a store error ends the batch
        (ends applied before it stay applied).

        :raises ValueError: an end's status is not terminal.
        :return: whether each applied, in order.
        """
        for end in ends:
            terminal_status(end["status"])
            as_aware_utc(end.get("now"))
        return [self.complete_run(**end) for end in ends]

    def complete_and_claim(
        self, ends: Sequence[Mapping[str, Any]], claims: Sequence[Mapping[str, Any]], *,
        start: int = 0,
    ) -> tuple[list[bool], list["Claim"]]:
        """:meth:`complete_runs` for *ends*, then :meth:`claim_slots` for
        *claims* (with *start*): a dispatch round records the ends of the
        runs that finished and claims the next slots at once. Each end and
        each claim applies or not exactly as those two methods decide; a
        store may apply all of it in one transaction.

        If it raises, the ends may or may not have been recorded (a caller
        retries them; a terminal status is never overwritten), and the
        claims are as after :meth:`claim_slots` raising.

        The default calls the two methods, one after the other.

        :return: (whether each end applied, one Claim per claim), in order.
        """
        return self.complete_runs(ends), self.claim_slots(claims, start=start)

    @abstractmethod
    def renew_leases(
        self, owner: str, run_ids: Sequence[str], *, lease_until: datetime, now: datetime
    ) -> list[str]:
        """Extend to *lease_until* the lease of those *run_ids* that *owner*
        holds and that are still ``queued`` or ``running``.

        :return: the ids renewed; a run missing from it was ended meanwhile
            (for instance abandoned by another scheduler) and must be stopped.
        """

    @abstractmethod
    def abandon_runs(self, *, now: datetime, owner: str | None = None) -> list["JobRun"]:
        """End runs whose scheduler is gone, as ``abandoned``.

        Without *owner*: every ``queued``/``running`` run whose
        ``lease_until`` is before *now*. With *owner*: every
        ``queued``/``running`` run of that owner, whatever its lease (a
        restarted scheduler reclaiming its own runs). The error names the
        owner. Runs without a lease never expire.

        :return: the abandoned runs, as now stored.
        """

    @abstractmethod
    def get_run(self, run_id: str) -> "JobRun | None":
        """The run with this id, or ``None``."""

    @abstractmethod
    def list_runs(
        self,
        *,
        plugin_id: str | None = None,
        job_id: str | None = None,
        status: "RunStatus | str | None" = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> "RunPage":
        """Runs newest first: by ``created_at`` descending, ties by id
        descending, so the order is total and stable.

        :param cursor: ``next_cursor`` of the previous page; the next page
            starts strictly after the last run of that page, so runs created
            meanwhile never shift or repeat entries.
        :param limit: 1 to 1000.
        :raises ValueError: bad *limit* or malformed *cursor*.
        """

    @abstractmethod
    def cancel_runs(
        self,
        plugin_id: str,
        *,
        reason: str,
        now: datetime,
        job_id: str | None = None,
        owner: str | None = None,
    ) -> list[str]:
        """Mark every ``queued``/``running`` run of the plugin (or of one of
        its jobs; with *owner*, only the runs leased to that scheduler)
        ``cancelled`` with *reason* as its error.

        :return: the ids of the runs cancelled.
        """

    @abstractmethod
    def prune_runs(
        self,
        *,
        now: datetime,
        max_age: timedelta | None = None,
        keep_per_job: int | None = None,
    ) -> int:
        """Delete terminal runs created before ``now - max_age``, and terminal
        runs beyond the newest *keep_per_job* of each job. Non-terminal runs
        are never pruned.

        :return: the number of runs deleted.
        """


class Outcome:
    """How a handler call ended, as a runner reports it."""

    __slots__ = ("status", "error", "error_detail")

    def __init__(self, status: str, error: str | None = None, error_detail: str | None = None):
        #: ``"succeeded"``, ``"failed"`` or ``"cancelled"``
        self.status = status
        self.error = error
        self.error_detail = error_detail

    def __repr__(self) -> str:
        return f"Outcome({self.status!r}, error={self.error!r})"


class Runner(metaclass=ABCMeta):
    """Executes job handlers, off the scheduler's thread.

    A runner knows nothing about the store: the scheduler records runs, the
    runner only calls handlers and reports how each call ended.
    """

    #: how many handler calls may run at once
    max_workers: int

    @abstractmethod
    def start(self) -> None:
        """Get ready to accept work. Idempotent."""

    @abstractmethod
    def submit(self, handler: "object", context: "JobContext") -> "Future[Outcome]":
        """Call ``handler(context)`` soon, never blocking the caller.

        The future resolves to an :class:`Outcome`, never raises: a handler
        that raises gives ``Outcome("failed", str(exc) or the class name,
        short traceback)``; one that raises
        :class:`~pjcore.context.RunCancelled` gives ``"cancelled"``. Both
        plain functions and ``async def`` functions are supported.
        """

    def call(self, handler: "object", context: "JobContext",
             done: "Callable[[Outcome], object]") -> None:
        """:meth:`submit`, with *done* called with the :class:`Outcome`
        instead of a future returned: the scheduler's way in.

        *done* is called once, on the thread that ran the handler, after the
        handler returned; or on the caller's thread, before this returns, if
        the call is refused at once (a stopped runner). An exception from
        *done* is logged, as a future's done callback's is. Never raises, as
        :meth:`submit`. The default submits and hands the future's result to
        *done* from its done callback; a runner may override it to save the
        future (a condition of its own, whose lock a call takes four times).
        """
        def deliver(future: "Future[Outcome]") -> None:
            try:
                outcome = future.result()
            except BaseException as exc:  # a runner must not raise, but be safe
                outcome = Outcome("failed", f"runner error: {exc!r}")
            done(outcome)

        self.submit(handler, context).add_done_callback(deliver)

    def idle_workers(self) -> int | None:
        """How many calls :meth:`submit` would start at once right now, each
        on a worker of its own with nothing queued ahead of it; ``None`` if
        the runner cannot tell (the default).

        A scheduler has that many runs recorded ``running`` by their claims
        (see :meth:`JobStore.claim_slots`) and submits them at once, saving
        a store write per run; every other run is recorded ``running`` by its
        worker as the handler starts. Never count
        a worker that may be busy (a call counts until its future's done
        callbacks, or the *done* of :meth:`call`, have run): a run recorded
        running must not wait. The
        scheduler reads this and submits those runs under a lock of its own,
        so a runner that takes work from elsewhere too must return ``None``.
        """
        return None

    @abstractmethod
    def stop(self, timeout: float | None = None) -> bool:
        """Stop accepting work and wait up to *timeout* seconds for the calls
        in flight when it was called (called from within a call, for the
        others: give a timeout there, as those may wait for the caller);
        calls accepted after a :meth:`start` meanwhile are not waited for.
        Idempotent.

        :return: whether every call it waited for had finished.
        """


class Scheduler(metaclass=ABCMeta):
    """Finds due jobs, claims their slots and hands runs to a runner."""

    @abstractmethod
    def start(self) -> None:
        """Start the background loop. Idempotent."""

    @abstractmethod
    def stop(self, timeout: float | None = 10.0) -> None:
        """Stop starting runs, wait up to *timeout* seconds for runs in flight,
        record those still running as ``cancelled`` with reason "shutdown".
        Idempotent; safe before :meth:`start`.

        Called from one of the scheduler's own callbacks (an observer, a
        handler), where waiting would wait for the caller itself, it starts
        no run from then on and finishes the stop in a thread of its own,
        returning at once (see :meth:`in_callback`)."""

    def in_callback(self) -> bool:
        """Whether the calling thread is inside one of this scheduler's
        callbacks (a handler, an observer it notifies). A host that stops
        its other parts after the scheduler (the runner, the store) does so
        in a thread of its own then. The default: never."""
        return False

    @abstractmethod
    def register_plugin(self, plugin_id: str, plugin_key: str) -> None:
        """Allow runs of the plugin's jobs (its jobs are already synced)."""

    @abstractmethod
    def unregister_plugin(self, plugin_id: str, reason: str) -> list[str]:
        """Start no new runs of the plugin; ask its runs in flight here to
        stop and record them ``cancelled`` with *reason*. Runs of other
        schedulers sharing the store are theirs to end. Harmless for an
        unknown plugin.

        :return: ids of the runs cancelled.
        """

    @abstractmethod
    def trigger(self, job_id: str, *, trigger: str = "manual", plugin_id: str | None = None) -> str:
        """Start a run of the job now, outside its schedule, and return the run
        id without waiting for it.

        :raises JobLookupError: no such job (or not of *plugin_id*).
        :raises JobNotActive: the job is paused.
        :raises JobAlreadyRunning: a run of the job is queued or running.
        :raises PluginNotRunning: the job's plugin is not registered here, or
            no handler is available for the job.
        """

    @abstractmethod
    def wake(self) -> None:
        """Re-read the store now: something due may have changed."""

    @abstractmethod
    def tick(self) -> int:
        """Run one dispatch round in the caller's thread.

        :return: the number of runs started.
        """

    @abstractmethod
    def diagnostics(self) -> dict:
        """``running``, ``active_run_ids``, ``tick_count``, ``last_tick_at``,
        ``next_wake_at`` and backend-specific extras."""


def _check_claims(claims: Sequence[Mapping[str, Any]]) -> None:
    """The instants of every claim, checked before any claim applies
    (claim_slots' default): naive or not a datetime raises."""
    for claim in claims:
        as_aware_utc(claim.get("now"))
        for key in ("expected", "run_slot", "next_run_at", "lease_until"):
            optional_aware_utc(claim.get(key))
