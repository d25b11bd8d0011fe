"""What a job handler receives: the run's identity, a logger, a cancel signal,
and a view of its own plugin's jobs.

The argument checks at the end are shared by the two query surfaces that take
caller input, :class:`PluginJobs` and :class:`pjcore.Host`: values are checked
before they reach a store, so a wrong type is an :class:`InvalidArgument` and
never a query of another shape (peewee turns ``field == [a, b]`` into ``IN``).
"""

from __future__ import annotations

import asyncio
import threading
import time
from datetime import datetime
from enum import Enum
from typing import TYPE_CHECKING, Any

import attrs

from pjcore.exceptions import InvalidArgument, JobLookupError, RunLookupError
from pjcore.models import JobStatus, RunStatus, RunTrigger

if TYPE_CHECKING:
    from pjcore.abc import JobStore, Scheduler
    from pjcore.models import Job, JobRun, RunPage

__all__ = ["JobContext", "PluginJobs", "RunCancelled"]

#: longest plugin id the coordinator accepts; plugin keys and job keys are shorter
MAX_IDENTIFIER = 200
#: longest free text (a pause reason) taken from a caller
MAX_TEXT = 2000
#: most runs in one page (the JobStore contract)
MAX_PAGE = 1000


class RunCancelled(Exception):
    """Raised by :meth:`JobContext.check` when the run was asked to stop.

    A control-flow signal, not an error: a handler may let it propagate.
    """


class _CancelSignal:
    """A run's cancellation: a flag, and the reason given first. The
    :class:`threading.Event` a handler can wait on is made only when one
    waits: most runs are never cancelled nor wait, and an Event (a Condition
    and its lock) costs more than the rest of a context."""

    __slots__ = ("_event", "_lock", "_set", "reason")

    def __init__(self, event: threading.Event | None = None) -> None:
        self._event = event
        self._lock = threading.Lock()
        self._set = False
        self.reason: str | None = None

    def is_set(self) -> bool:
        event = self._event
        return self._set or (event is not None and event.is_set())

    def set(self, reason: str) -> None:
        with self._lock:
            if self.reason is None:
                self.reason = reason
            self._set = True
            event = self._event
        if event is not None:
            event.set()

    def wait(self, seconds: float) -> bool:
        with self._lock:
            if self._set:
                return True
            if self._event is None:
                self._event = threading.Event()
            event = self._event
        return event.wait(seconds)


def _signal(event: threading.Event | _CancelSignal | None) -> _CancelSignal:
    return event if isinstance(event, _CancelSignal) else _CancelSignal(event)


@attrs.frozen(kw_only=True)
class JobContext:
    """Passed to every handler call.

    :ivar scheduled_for: the slot of a scheduled run; the trigger time of a
        manual run.
    :ivar logger: a loguru logger bound with ``pj_plugin``, ``pj_job`` and
        ``pj_run``.
    :ivar jobs: the jobs of the handler's own plugin (:class:`PluginJobs`):
        list them, read their runs, trigger one. ``None`` when the scheduler
        that built the context does not provide it.
    """

    plugin_id: str
    plugin_key: str
    job_key: str
    run_id: str
    trigger: RunTrigger
    scheduled_for: datetime
    logger: Any
    jobs: PluginJobs | None = None
    #: an Event given here is set on cancellation (and one set elsewhere
    #: counts as cancelled); by default none is made unless a handler waits
    _cancel: _CancelSignal = attrs.field(default=None, converter=_signal, alias="cancel_event")

    @property
    def cancelled(self) -> bool:
        """Whether the run was asked to stop (timeout, disable, shutdown)."""
        return self._cancel.is_set()

    @property
    def cancel_reason(self) -> str | None:
        return self._cancel.reason

    def check(self) -> None:
        """Raise :class:`RunCancelled` if the run was asked to stop."""
        if self._cancel.is_set():
            raise RunCancelled(self.cancel_reason or "cancelled")

    def wait(self, seconds: float) -> bool:
        """Sleep up to *seconds*, returning early (True) if the run is cancelled."""
        return self._cancel.wait(seconds)

    async def sleep(self, seconds: float) -> bool:
        """``await``-able :meth:`wait` for ``async def`` handlers."""
        end = time.monotonic() + seconds
        while not self._cancel.is_set():
            left = end - time.monotonic()
            if left <= 0:
                return False
            await asyncio.sleep(min(left, 0.05))
        return True

    def request_cancel(self, reason: str) -> None:
        """Used by the scheduler; handlers only read the signal."""
        self._cancel.set(reason)


class PluginJobs:
    """The jobs of one plugin, as its handlers see them (``ctx.jobs``).

    Everything is scoped to the plugin the context was built for: the plugin
    id is fixed at construction and no method takes another, so a job key or
    job id of another plugin is simply not found (:class:`JobLookupError`,
    the same error as a key that exists nowhere, so nothing leaks about other
    plugins). :meth:`trigger` goes through the scheduler's own trigger, with
    every guard of a manual run (paused job, run in flight, plugin not
    running).

    This is scoping for well-behaved plugins, not a sandbox: handlers run in
    the host's process, and Python code that digs into private attributes can
    reach anything.
    """

    __slots__ = ("_store", "_scheduler", "_plugin_id", "_plugin_key")

    def __init__(self, store: "JobStore", scheduler: "Scheduler", plugin_id: str,
                 plugin_key: str) -> None:
        self._store = store
        self._scheduler = scheduler
        self._plugin_id = check_identifier(plugin_id, "plugin_id")
        self._plugin_key = check_identifier(plugin_key, "plugin_key")

    def __repr__(self) -> str:
        # no store or scheduler in the repr: a handler may log its context
        return f"PluginJobs(plugin_id={self._plugin_id!r}, plugin_key={self._plugin_key!r})"

    @property
    def plugin_id(self) -> str:
        return self._plugin_id

    @property
    def plugin_key(self) -> str:
        return self._plugin_key

    def list(self, *, status: "JobStatus | str | None" = None) -> "list[Job]":
        """This plugin's jobs, ordered by job key; only of *status* when given."""
        return self._store.list_jobs(self._plugin_id, status=check_status(status, JobStatus))

    def get(self, job_key: str) -> "Job":
        """This plugin's job with *job_key*.

        :raises JobLookupError: the plugin has no such job (a job of another
            plugin, looked up by key or by id, included).
        """
        job_key = check_identifier(job_key, "job_key")
        job = self._store.get_job_by_key(self._plugin_id, job_key)
        if job is None:
            raise JobLookupError(job_key, self._plugin_key)
        return job

    def runs(
        self,
        job_key: str | None = None,
        *,
        status: "RunStatus | str | None" = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> "RunPage":
        """This plugin's runs (of one of its jobs with *job_key*), newest first."""
        job_id = None if job_key is None else self.get(job_key).id
        return self._store.list_runs(plugin_id=self._plugin_id, job_id=job_id,
                                     status=check_status(status, RunStatus),
                                     limit=check_limit(limit), cursor=check_cursor(cursor))

    def run(self, run_id: str) -> "JobRun":
        """One run of this plugin, e.g. the one :meth:`trigger` returned.

        :raises RunLookupError: no such run, or a run of another plugin.
        """
        run_id = check_identifier(run_id, "run_id")
        run = self._store.get_run(run_id)
        if run is None or run.plugin_id != self._plugin_id:
            raise RunLookupError(run_id)
        return run

    def trigger(self, job_key: str) -> str:
        """Start a manual run of this plugin's job now; return the run id at once.

        :raises JobLookupError: the plugin has no such job.
        :raises JobNotActive, JobAlreadyRunning, PluginNotRunning: as
            :meth:`pjcore.Host.trigger`.
        """
        job = self.get(job_key)
        return self._scheduler.trigger(job.id, trigger=RunTrigger.manual.value,
                                       plugin_id=self._plugin_id)


# -- argument checks (shared with Host) -------------------------------------------


def check_identifier(value: Any, field: str) -> str:
    """A plugin id or key, job key or run id given by a caller.

    NUL is refused here because PostgreSQL cannot even compare it (the driver
    raises), and no stored identifier can hold one.
    """
    if not isinstance(value, str):
        raise InvalidArgument(f"{field} must be a string, not {type(value).__name__}")
    if not value:
        raise InvalidArgument(f"{field} must not be empty")
    if len(value) > MAX_IDENTIFIER:
        raise InvalidArgument(f"{field} is {len(value)} characters long; "
                              f"the limit is {MAX_IDENTIFIER}")
    if "\x00" in value:
        raise InvalidArgument(f"{field} must not contain NUL characters")
    return value


def check_text(value: Any, field: str) -> str | None:
    """Optional free text from a caller (a reason): stored as given, so bounded."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidArgument(f"{field} must be a string or None, not {type(value).__name__}")
    if len(value) > MAX_TEXT:
        raise InvalidArgument(f"{field} is {len(value)} characters long; the limit is {MAX_TEXT}")
    if "\x00" in value:
        raise InvalidArgument(f"{field} must not contain NUL characters")
    return value


def check_status(value: Any, enum: type[Enum]) -> str | None:
    """None, a member of *enum* or its value; returned as the value."""
    if value is None:
        return None
    if isinstance(value, enum):
        return value.value
    allowed = ", ".join(m.value for m in enum)
    if isinstance(value, str):
        try:
            return enum(value).value
        except ValueError:
            raise InvalidArgument(f"status must be one of {allowed}, not {shown(value)}") from None
    raise InvalidArgument(f"status must be one of {allowed}, not {shown(value)}")


def shown(value: Any) -> str:
    """*value* for an error message: short, and safe to compute (``repr`` of
    an int of thousands of digits raises ValueError)."""
    if isinstance(value, (bool, type(None))) or (
            isinstance(value, (int, float)) and not abs(value) >= 10**15):
        return repr(value)
    if isinstance(value, str):
        return repr(value[:40]) + ("..." if len(value) > 40 else "")
    return f"a {type(value).__name__}"


def check_limit(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_PAGE:
        raise InvalidArgument(f"limit must be an integer between 1 and {MAX_PAGE}, "
                              f"not {shown(value)}")
    return value


def check_cursor(value: Any) -> str | None:
    # The format belongs to the store, which checks the rest.
    if value is not None and not isinstance(value, str):
        raise InvalidArgument(f"cursor must be a string or None, not {type(value).__name__}")
    return value
