"""Stored records: jobs and their runs, and the enums that describe them.

All models are frozen attrs classes; a state change is a new object made with
``attrs.evolve``. Every instant is a timezone-aware UTC ``datetime``.
"""

from __future__ import annotations

import enum
from datetime import datetime, timezone
from typing import Any, Callable

import attrs

from pjcore.exceptions import InvalidArgument

from pjcore.manifest import JobPolicy

__all__ = [
    "Claim",
    "Job",
    "JobRun",
    "JobStatus",
    "PausedBy",
    "RunPage",
    "RunStatus",
    "RunTrigger",
    "SyncResult",
    "as_aware_utc",
    "optional_aware_utc",
]


class JobStatus(str, enum.Enum):
    """Whether the scheduler may start runs of a job."""

    active = "active"
    paused = "paused"


class PausedBy(str, enum.Enum):
    """Who paused a job; it decides whether a sync may re-activate it."""

    #: the job disappeared from its plugin's manifest; re-declaring it resumes it
    manifest = "manifest"
    #: an operator paused it; it stays paused across syncs until resumed
    operator = "operator"


class RunStatus(str, enum.Enum):
    """Where a run is in its life: queued -> running -> one terminal status."""

    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"
    #: the scheduler that owned the run died and its lease expired
    abandoned = "abandoned"
    #: a scheduled slot that was not run (misfire policy, overlap); never started
    skipped = "skipped"

    @property
    def terminal(self) -> bool:
        return self not in (RunStatus.queued, RunStatus.running)


NON_TERMINAL = frozenset({RunStatus.queued, RunStatus.running})


def terminal_status(status: RunStatus | str) -> RunStatus:
    """*status* as a terminal :class:`RunStatus`, the one a run may end with.

    :raises InvalidArgument: not a status, or ``queued`` / ``running``.
    """
    if status.__class__ is not RunStatus:
        try:
            status = RunStatus(status)
        except (ValueError, TypeError):
            raise InvalidArgument(
                f"complete_run needs a terminal status ({', '.join(_TERMINAL_NAMES)}), "
                f"not {status!r}") from None
    if status is RunStatus.queued or status is RunStatus.running:
        raise InvalidArgument(f"complete_run needs a terminal status, not {status.value!r}")
    return status


_TERMINAL_NAMES = [s.value for s in RunStatus if s.terminal]


class RunTrigger(str, enum.Enum):
    """What started a run."""

    schedule = "schedule"
    manual = "manual"
    retry = "retry"


def as_aware_utc(value: datetime) -> datetime:
    """Converter: refuse naive datetimes, normalise aware ones to UTC."""
    if value.__class__ is datetime and value.tzinfo is timezone.utc:
        return value  # the common case, and the one every evolve() repeats
    if not isinstance(value, datetime):
        raise TypeError(f"expected a datetime, got {type(value).__name__}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise InvalidArgument(f"naive datetime {value!r}: pjcore needs timezone-aware instants")
    return value.astimezone(timezone.utc)


def optional_aware_utc(value: datetime | None) -> datetime | None:
    """Converter: as :func:`as_aware_utc`, letting ``None`` through."""
    if value is None or (value.__class__ is datetime and value.tzinfo is timezone.utc):
        return value  # as_aware_utc's common case, without its call
    return as_aware_utc(value)


def _enum(cls: type[enum.Enum]):
    def convert(value: Any):
        return value if isinstance(value, cls) else cls(value)

    return convert


@attrs.frozen(kw_only=True)
class Job:
    """A job of a plugin, as stored: one row per ``(plugin_id, job_key)``.

    :ivar next_run_at: the scheduled slot the job fires at next; ``None`` for
        a manual-only or paused job.
    :ivar last_run_at: the slot (for scheduled runs) or start time (manual) of
        the most recent run that started, whatever its outcome.
    """

    id: str
    plugin_id: str
    plugin_key: str
    job_key: str
    display_name: str
    description: str | None = None
    schedule: str | None = None
    timezone: str = "UTC"
    policy: JobPolicy = attrs.field(factory=JobPolicy)
    status: JobStatus = attrs.field(converter=_enum(JobStatus), default=JobStatus.active)
    paused_by: PausedBy | None = attrs.field(
        converter=attrs.converters.optional(_enum(PausedBy)), default=None
    )
    status_reason: str | None = None
    #: slots that never ran (coalesced or past the misfire grace window)
    missed_count: int = 0
    next_run_at: datetime | None = attrs.field(converter=optional_aware_utc, default=None)
    last_run_at: datetime | None = attrs.field(converter=optional_aware_utc, default=None)
    created_at: datetime = attrs.field(converter=as_aware_utc)
    updated_at: datetime = attrs.field(converter=as_aware_utc)

    @property
    def manual_only(self) -> bool:
        return not self.schedule


@attrs.frozen(kw_only=True)
class JobRun:
    """One run of a job, from queued to a terminal status.

    :ivar scheduled_for: the slot this run fills, for scheduled runs; unique
        per job, so one slot can never run twice. ``None`` for manual runs.
    :ivar owner: identity of the scheduler running it (for leases).
    """

    id: str
    job_id: str
    plugin_id: str
    job_key: str
    trigger: RunTrigger = attrs.field(converter=_enum(RunTrigger))
    status: RunStatus = attrs.field(converter=_enum(RunStatus), default=RunStatus.queued)
    scheduled_for: datetime | None = attrs.field(converter=optional_aware_utc, default=None)
    created_at: datetime = attrs.field(converter=as_aware_utc)
    started_at: datetime | None = attrs.field(converter=optional_aware_utc, default=None)
    finished_at: datetime | None = attrs.field(converter=optional_aware_utc, default=None)
    duration_ms: int | None = None
    error: str | None = None
    error_detail: str | None = None
    owner: str | None = None
    lease_until: datetime | None = attrs.field(converter=optional_aware_utc, default=None)
    #: 1 for the first run of a slot; retries of an abandoned slot count up
    attempt: int = 1


@attrs.frozen(kw_only=True)
class Claim:
    """Result of :meth:`JobStore.claim_slot`."""

    applied: bool
    run: JobRun | None = None


@attrs.frozen(kw_only=True)
class RunPage:
    """A page of runs, newest first; pass :attr:`next_cursor` to get the next."""

    runs: tuple[JobRun, ...]
    next_cursor: str | None = None


@attrs.frozen(kw_only=True)
class SyncResult:
    """What a manifest sync changed, by job key."""

    inserted: tuple[str, ...] = ()
    updated: tuple[str, ...] = ()
    paused: tuple[str, ...] = ()
    reactivated: tuple[str, ...] = ()
    unchanged: tuple[str, ...] = ()


def _positional(cls: type) -> Callable[..., Any]:
    """A constructor of the frozen attrs class *cls* that takes every field
    positionally, in declaration order: what ``cls(**fields)`` makes, its
    converters applied, but without keyword matching and without an
    ``object.__setattr__`` call per field (each is stored through its slot).
    About 1.6 us instead of 2.8 for a :class:`JobRun`, which a burst builds
    twice per run."""
    fields = attrs.fields(cls)
    names = [field.name for field in fields]
    if ({"self", "_new", "_cls"} & set(names) or not all(name in cls.__dict__ for name in names)
            or any(field.validator is not None for field in fields)
            or hasattr(cls, "__attrs_post_init__")):
        # a clash with the generated code's own names, an inherited slot, or
        # a check this constructor would skip
        raise TypeError(f"{cls.__name__} cannot be built positionally")
    namespace: dict[str, Any] = {"_new": object.__new__, "_cls": cls}
    lines = []
    for field in fields:
        namespace[f"_set_{field.name}"] = cls.__dict__[field.name].__set__
        value = field.name
        if field.converter is not None:
            namespace[f"_convert_{field.name}"] = field.converter
            value = f"_convert_{field.name}({field.name})"
        lines.append(f"    _set_{field.name}(self, {value})\n")
    source = (f"def build({', '.join(names)}):\n    self = _new(_cls)\n" + "".join(lines)
              + "    return self\n")
    exec(source, namespace)  # noqa: S102 (field names of our own classes only)
    return namespace["build"]


#: Job(...) from every field, positionally, in declaration order (see _positional)
new_job = _positional(Job)
#: JobRun(...) from every field, positionally, in declaration order (see _positional)
new_run = _positional(JobRun)
