"""Plugin manifests: the jobs a plugin declares, validated before anything is written.

A manifest as a plain dict (the shape of ``Manifest.to_dict()``)::

    {
        "key": "acme.billing",             # the plugin key
        "version": "1.4.0",                # optional
        "jobs": [
            {
                "job_key": "send-invoices",
                "display_name": "Send invoices",
                "description": "optional",
                "schedule": "0 6 * * MON-FRI",   # optional: absent/None = manual only
                "timezone": "Europe/Paris",      # optional, default UTC
                "policy": {"timeout_seconds": 600, "misfire": "run_once"},  # optional
            },
        ],
    }

Every problem raises :class:`~pjcore.exceptions.ManifestError` naming the
plugin, the job and the field. Nothing else escapes ``Manifest.from_dict``.
"""

from __future__ import annotations

import enum
import functools
import re
from typing import Any, Mapping

import attrs

from pjcore import cron
from pjcore.exceptions import CronError, ManifestError

__all__ = [
    "AbandonPolicy",
    "JobDeclaration",
    "JobPolicy",
    "KEY_PATTERN",
    "Manifest",
    "MisfirePolicy",
    "MAX_JOBS",
]

#: plugin keys and job keys: start with a letter or digit, then letters,
#: digits, ``_``, ``.``, ``-``; at most 64 characters (``\Z``, not ``$``,
#: which would accept a trailing newline)
KEY_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z")
MAX_JOBS = 1000
MAX_DISPLAY_NAME = 200
MAX_DESCRIPTION = 2000
MAX_VERSION = 64
MAX_TIMEOUT = 7 * 24 * 3600.0


class MisfirePolicy(str, enum.Enum):
    """What to do with slots missed while the scheduler was down or the job busy."""

    #: run once for the missed slots (if the latest is within the grace window), skip the rest
    run_once = "run_once"
    #: run nothing late; every missed slot is recorded as skipped
    skip = "skip"
    #: run every missed slot within the grace window, one after another
    run_all = "run_all"


class AbandonPolicy(str, enum.Enum):
    """What to do with a slot whose scheduler died while running it."""

    #: record it as abandoned and go on with the next slot
    skip = "skip"
    #: record it as abandoned and run the slot again (handlers must be idempotent)
    retry = "retry"


def _check_str(
    value: Any, *, field: str, job: str | None, required: bool, max_len: int
) -> None:
    if value is None:
        if required:
            raise ManifestError("is required", job=job, field=field)
        return
    if not isinstance(value, str):
        raise ManifestError(
            f"must be a string, not {type(value).__name__}", job=job, field=field
        )
    if required and not value.strip():
        raise ManifestError("must not be empty", job=job, field=field)
    if len(value) > max_len:
        raise ManifestError(
            f"is {len(value)} characters long; the limit is {max_len}", job=job, field=field
        )
    if "\x00" in value:
        raise ManifestError("must not contain NUL characters", job=job, field=field)


def _check_key(value: Any, *, field: str, job: str | None) -> None:
    _check_str(value, field=field, job=job, required=True, max_len=64)
    if not KEY_PATTERN.match(value):
        raise ManifestError(
            f"{value!r} does not match {KEY_PATTERN.pattern} "
            "(letters, digits, '_', '.', '-'; at most 64 characters)",
            # a bad job key is still the best name for its job
            job=value if field == "job_key" else job,
            field=field,
        )


def _check_fields(
    data: Any,
    allowed: tuple[str, ...],
    *,
    what: str,
    job: str | None,
    field: str | None = None,
    prefix: str = "",
) -> None:
    """*data* (found at *field*) must be a mapping with no keys but *allowed*.

    An unknown key is reported as field ``prefix + key``.
    """
    if not isinstance(data, Mapping):
        raise ManifestError(
            f"{what} must be a mapping, not {type(data).__name__}", job=job, field=field
        )
    for name in data:
        if not isinstance(name, str) or name not in allowed:
            raise ManifestError(
                f"unknown field in {what} (allowed: {', '.join(allowed)})",
                job=job,
                field=prefix + str(name)[:64],
            )


def _enum_value(cls: type[enum.Enum], value: Any, *, field: str, job: str | None):
    if isinstance(value, cls):
        return value
    allowed = ", ".join(m.value for m in cls)
    if not isinstance(value, str):
        raise ManifestError(
            f"must be one of {allowed}, not {type(value).__name__}", job=job, field=field
        )
    try:
        return cls(value)
    except ValueError:
        raise ManifestError(f"must be one of {allowed}, not {value[:40]!r}", job=job, field=field) from None


def _seconds(value: Any, *, field: str, job: str | None) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ManifestError(
            f"must be a number of seconds, not {type(value).__name__}", job=job, field=field
        )
    # Compare before any float() (float(10**400) raises OverflowError); NaN
    # fails the comparison. repr() of a huge int can raise ValueError too.
    if not 0 < value <= MAX_TIMEOUT:
        shown = repr(value) if isinstance(value, float) or abs(value) < 10**20 else "a huge number"
        raise ManifestError(
            f"must be a number of seconds in (0, {MAX_TIMEOUT:g}], not {shown}",
            job=job,
            field=field,
        )
    return float(value)


# the hash is cached: the scheduler keys its slot plans by the policy, for
# every due job of a round
@attrs.frozen(kw_only=True, cache_hash=True)
class JobPolicy:
    """Per-job execution policies; every field has a safe default.

    :ivar timeout_seconds: stop waiting for a run after this long (``None``:
        the runner's default).
    :ivar misfire: how missed slots are handled, see :class:`MisfirePolicy`.
    :ivar misfire_grace_seconds: a missed slot later than this is not run
        late but recorded as skipped (``None``: no limit).
    :ivar on_abandoned: see :class:`AbandonPolicy`.
    """

    # Validated on construction too: a plugin may hand over a ready-made
    # Manifest (see Manifest.coerce), which never goes through from_dict.
    timeout_seconds: float | None = attrs.field(
        default=None,
        converter=functools.partial(_seconds, field="policy.timeout_seconds", job=None),
    )
    misfire: MisfirePolicy = attrs.field(
        default=MisfirePolicy.run_once,
        converter=functools.partial(
            _enum_value, MisfirePolicy, field="policy.misfire", job=None
        ),
    )
    misfire_grace_seconds: float | None = attrs.field(
        default=3600.0,
        converter=functools.partial(_seconds, field="policy.misfire_grace_seconds", job=None),
    )
    on_abandoned: AbandonPolicy = attrs.field(
        default=AbandonPolicy.skip,
        converter=functools.partial(
            _enum_value, AbandonPolicy, field="policy.on_abandoned", job=None
        ),
    )

    FIELDS = ("timeout_seconds", "misfire", "misfire_grace_seconds", "on_abandoned")

    @classmethod
    def from_dict(cls, data: Any, *, job: str | None = None) -> "JobPolicy":
        _check_fields(data, cls.FIELDS, what="policy", job=job, field="policy",
                      prefix="policy.")
        try:
            return cls(**data)
        except ManifestError as exc:
            raise ManifestError(exc.reason, job=job, field=exc.field) from None

    def to_dict(self) -> dict[str, Any]:
        return {
            "timeout_seconds": self.timeout_seconds,
            "misfire": self.misfire.value,
            "misfire_grace_seconds": self.misfire_grace_seconds,
            "on_abandoned": self.on_abandoned.value,
        }


@attrs.frozen(kw_only=True)
class JobDeclaration:
    """One job as a plugin declares it in its manifest.

    Constructing one validates it; a bad value raises :class:`ManifestError`.

    :ivar schedule: a cron expression (see :mod:`pjcore.cron`), or ``None``
        for a job that only runs when triggered.
    :ivar timezone: IANA name the schedule is read in.
    """

    job_key: str
    display_name: str
    description: str | None = None
    schedule: str | None = None
    timezone: str = "UTC"
    policy: JobPolicy = attrs.field(factory=JobPolicy)

    FIELDS = ("job_key", "display_name", "description", "schedule", "timezone", "policy")

    def __attrs_post_init__(self) -> None:
        _check_key(self.job_key, field="job_key", job=None)
        job = self.job_key
        _check_str(self.display_name, field="display_name", job=job, required=True,
                   max_len=MAX_DISPLAY_NAME)
        _check_str(self.description, field="description", job=job, required=False,
                   max_len=MAX_DESCRIPTION)
        _check_str(self.timezone, field="timezone", job=job, required=True, max_len=64)
        if not isinstance(self.policy, JobPolicy):
            raise ManifestError("must be a JobPolicy", job=job, field="policy")
        try:
            cron.validate_timezone(self.timezone)
        except CronError as exc:
            raise ManifestError(exc.reason, job=job, field="timezone") from None
        if self.schedule is not None:
            _check_str(self.schedule, field="schedule", job=job, required=False,
                       max_len=cron.MAX_EXPRESSION_LENGTH)
            if not self.schedule.strip():
                raise ManifestError(
                    "must not be empty (omit it or use null for a manual-only job)",
                    job=job, field="schedule",
                )
            try:
                cron.validate(self.schedule, self.timezone)
            except CronError as exc:
                raise ManifestError(
                    f"invalid cron expression {self.schedule!r}: {exc.reason}",
                    job=job, field="schedule",
                ) from None

    @classmethod
    def from_dict(cls, data: Any) -> "JobDeclaration":
        job = None
        if isinstance(data, Mapping) and isinstance(data.get("job_key"), str):
            job = data["job_key"][:64]
        _check_fields(data, cls.FIELDS, what="job declaration", job=job, field="jobs")
        if "job_key" not in data:
            raise ManifestError("is required", field="job_key")
        if "display_name" not in data:
            raise ManifestError("is required", job=job, field="display_name")
        kwargs = {k: data[k] for k in cls.FIELDS if k in data and k != "policy"}
        if kwargs.get("timezone", "UTC") is None:
            kwargs.pop("timezone")
        if data.get("policy") is not None:
            kwargs["policy"] = JobPolicy.from_dict(data["policy"], job=job)
        return cls(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"job_key": self.job_key, "display_name": self.display_name}
        if self.description is not None:
            out["description"] = self.description
        if self.schedule is not None:
            out["schedule"] = self.schedule
        out["timezone"] = self.timezone
        out["policy"] = self.policy.to_dict()
        return out


def _to_jobs(value: Any) -> tuple:
    if not isinstance(value, (list, tuple)):
        raise ManifestError(f"must be a list, not {type(value).__name__}", field="jobs")
    return tuple(value)


@attrs.frozen(kw_only=True)
class Manifest:
    """What a plugin declares: its key, optional version, and its jobs."""

    key: str
    version: str | None = None
    jobs: tuple[JobDeclaration, ...] = attrs.field(default=(), converter=_to_jobs)

    FIELDS = ("key", "version", "jobs")

    def __attrs_post_init__(self) -> None:
        _check_key(self.key, field="key", job=None)
        try:
            _check_str(self.version, field="version", job=None, required=False,
                       max_len=MAX_VERSION)
        except ManifestError as exc:
            raise ManifestError(exc.reason, plugin=self.key, field="version") from None
        if len(self.jobs) > MAX_JOBS:
            raise ManifestError(
                f"declares {len(self.jobs)} jobs; the limit is {MAX_JOBS}",
                plugin=self.key, field="jobs",
            )
        seen: set[str] = set()
        dupes: list[str] = []
        for decl in self.jobs:
            if not isinstance(decl, JobDeclaration):
                raise ManifestError("must hold JobDeclaration objects", plugin=self.key,
                                    field="jobs")
            if decl.job_key in seen and decl.job_key not in dupes:
                dupes.append(decl.job_key)
            seen.add(decl.job_key)
        if dupes:
            raise ManifestError(
                f"duplicate job keys: {', '.join(dupes)}",
                plugin=self.key, job=dupes[0], field="job_key",
            )

    def job(self, job_key: str) -> JobDeclaration | None:
        return next((j for j in self.jobs if j.job_key == job_key), None)

    @classmethod
    def from_dict(cls, data: Any, *, plugin_key: str | None = None) -> "Manifest":
        """Validate *data* and build a Manifest; raise :class:`ManifestError` if invalid.

        :param plugin_key: when given, the manifest's ``key`` must equal it
            (and may be omitted).
        """
        # Name the plugin being loaded when known: a manifest that claims
        # another key must not get its errors reported under that key.
        plugin = plugin_key if isinstance(plugin_key, str) else None
        if plugin is None and isinstance(data, Mapping) and isinstance(data.get("key"), str):
            plugin = data["key"][:64]
        try:
            _check_fields(data, cls.FIELDS, what="manifest", job=None)
            key = data.get("key", plugin_key)
            if key is None:
                raise ManifestError("is required", field="key")
            _check_key(key, field="key", job=None)
            if plugin_key is not None and key != plugin_key:
                raise ManifestError(
                    f"{key!r} does not match the plugin key {plugin_key!r}", field="key"
                )
            jobs_data = data.get("jobs")
            if jobs_data is None:
                jobs_data = []
            if not isinstance(jobs_data, (list, tuple)):
                raise ManifestError(
                    f"must be a list, not {type(jobs_data).__name__}", field="jobs"
                )
            if len(jobs_data) > MAX_JOBS:
                raise ManifestError(
                    f"declares {len(jobs_data)} jobs; the limit is {MAX_JOBS}", field="jobs"
                )
            jobs = []
            for index, job_data in enumerate(jobs_data):
                try:
                    jobs.append(JobDeclaration.from_dict(job_data))
                except ManifestError as exc:
                    if exc.job is not None:
                        raise
                    # no usable job key to name it by: say where it is
                    raise ManifestError(f"{exc.reason} (jobs[{index}])", field=exc.field) from None
            return cls(key=key, version=data.get("version"), jobs=jobs)
        except ManifestError as exc:
            if exc.plugin is None and plugin is not None:
                raise ManifestError(exc.reason, plugin=plugin, job=exc.job,
                                    field=exc.field) from None
            raise

    @classmethod
    def coerce(cls, value: Any, *, plugin_key: str | None = None) -> "Manifest":
        """Accept a :class:`Manifest` or a dict, as the lifecycle hooks do."""
        if isinstance(value, Manifest):
            if plugin_key is not None and value.key != plugin_key:
                raise ManifestError(
                    f"{value.key!r} does not match the plugin key {plugin_key!r}",
                    plugin=plugin_key, field="key",
                )
            return value
        return cls.from_dict(value, plugin_key=plugin_key)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"key": self.key}
        if self.version is not None:
            out["version"] = self.version
        out["jobs"] = [j.to_dict() for j in self.jobs]
        return out
