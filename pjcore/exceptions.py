"""Every error pjcore raises, in one module.

All of them derive from :class:`PjError`, so ``except pjcore.PjError`` catches
anything the library raises on purpose. Most also derive from the stdlib class
that says what kind of error it is (``ValueError``, ``LookupError``), so callers
can catch by kind as well.
"""

from __future__ import annotations

from typing import Any


class PjError(Exception):
    """Base class of every pjcore error."""


# -- input -------------------------------------------------------------------


class CronError(PjError, ValueError):
    """A cron expression or timezone that pjcore cannot schedule.

    :ivar expression: the expression as given.
    :ivar reason: what is wrong with it, without the expression.
    """

    def __init__(self, expression: Any, reason: str) -> None:
        self.expression = expression
        self.reason = reason
        super().__init__(f"invalid cron expression {expression!r}: {reason}")


class ManifestError(PjError, ValueError):
    """A plugin manifest (or one of its job declarations) is invalid.

    The message names the plugin, the job key and the field when they are
    known, e.g. ``plugin 'acme': job 'sync': field 'schedule': ...``.
    """

    def __init__(
        self,
        reason: str,
        *,
        plugin: str | None = None,
        job: str | None = None,
        field: str | None = None,
    ) -> None:
        self.plugin = plugin
        self.job = job
        self.field = field
        self.reason = reason
        parts = []
        if plugin is not None:
            parts.append(f"plugin {plugin!r}")
        if job is not None:
            parts.append(f"job {job!r}")
        if field is not None:
            parts.append(f"field {field!r}")
        parts.append(reason)
        super().__init__(": ".join(parts))


class InvalidArgument(PjError, ValueError):
    """A call got a value it cannot use (a naive datetime, a bad limit or cursor)."""


class ConfigurationError(PjError, ValueError):
    """pjcore was set up with options it cannot use (bad URL, bad option)."""


# -- lookups -----------------------------------------------------------------


class JobLookupError(PjError, LookupError):
    """No job with this id (or key) exists, or it belongs to another plugin."""

    def __init__(self, job: str, plugin: str | None = None) -> None:
        self.job = job
        self.plugin = plugin
        where = f" for plugin {plugin!r}" if plugin else ""
        super().__init__(f"Job not found: {job}{where}")


class RunLookupError(PjError, LookupError):
    """No run with this id exists."""

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        super().__init__(f"Run not found: {run_id}")


class BackendLookupError(PjError, LookupError):
    """No backend of this kind is registered under this name."""

    def __init__(self, kind: str, name: str, available: list[str]) -> None:
        self.kind = kind
        self.name = name
        self.available = available
        names = ", ".join(available) or "none"
        super().__init__(f"No {kind} backend named {name!r} (available: {names})")


class HandlerLookupError(PjError, LookupError):
    """No handler is registered for this ``(plugin_key, job_key)``."""

    def __init__(self, plugin_key: str, job_key: str) -> None:
        self.plugin_key = plugin_key
        self.job_key = job_key
        super().__init__(f'No handler registered for job "{job_key}"')


# -- plugins and backends ----------------------------------------------------


class PluginError(PjError):
    """A plugin misbehaved; :attr:`plugin` names it."""

    def __init__(self, message: str, *, plugin: str | None = None) -> None:
        self.plugin = plugin
        super().__init__(message)


class PluginLoadError(PluginError):
    """A ``pjcore`` entry point could not be imported or registered (strict mode)."""


class RegistrationConflict(PluginError, ValueError):
    """Two plugins registered the same backend name or the same job handler."""


# -- state -------------------------------------------------------------------


class JobStateError(PjError):
    """The job is not in a state that allows the operation."""


class JobNotActive(JobStateError):
    """The job is paused (or otherwise not active)."""

    def __init__(self, job_key: str, status: str) -> None:
        self.job_key = job_key
        self.status = status
        super().__init__(f'Job "{job_key}" is not active (status: {status})')


class JobAlreadyRunning(JobStateError):
    """A run of this job is queued or running, and runs of one job never overlap."""

    def __init__(self, job_key: str) -> None:
        self.job_key = job_key
        super().__init__(
            f'Job "{job_key}" already has a running execution '
            "- cannot trigger while in progress"
        )


class PluginNotRunning(JobStateError):
    """The job's plugin is not registered with this scheduler, or has no handler."""

    def __init__(self, plugin: str, detail: str = "is not running") -> None:
        self.plugin = plugin
        super().__init__(f'Plugin "{plugin}" {detail} - cannot trigger job')


class SlotAlreadyClaimed(JobStateError):
    """A run for this ``(job, scheduled slot)`` already exists."""

    def __init__(self, job_key: str, slot: Any) -> None:
        self.job_key = job_key
        self.slot = slot
        super().__init__(f'Job "{job_key}" already has a run for slot {slot}')


class StoreError(PjError):
    """The job store failed (database unreachable, schema too new, ...)."""
