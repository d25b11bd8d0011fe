"""``Host``: the one object a host application creates to run plugin jobs."""

from __future__ import annotations

import threading
from datetime import datetime
from typing import Any, Iterable, Mapping

from loguru import logger

from pjcore import cron
from pjcore.abc import JobStore, Runner, Scheduler
from pjcore.clock import Clock, SystemClock
from pjcore.context import (
    check_cursor,
    check_identifier,
    check_limit,
    check_status,
    check_text,
    shown,
)
from pjcore.coordinator import Coordinator
from pjcore.exceptions import ConfigurationError, InvalidArgument, JobLookupError, PjError
from pjcore.manifest import Manifest
from pjcore.models import Job, JobRun, JobStatus, RunPage, RunStatus, RunTrigger
from pjcore.plugins import PluginManager, listeners, make_plugin_manager, notify

__all__ = ["Host"]

DEFAULT_DATABASE = "sqlite:///pjcore.db"
#: the plugin name of a Host's coordinator on its plugin manager
_COORDINATOR = "pjcore.coordinator"
#: options the Host passes to each backend itself; the *_options may not repeat them
_RESERVED = {
    "store": {"url"},
    "runner": {"max_workers"},
    "scheduler": {"store", "runner", "resolve", "notify", "clock", "max_concurrent",
                  "default_timeout"},
}


def _options(value: Any, kind: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise ConfigurationError(f"{kind}_options must be a mapping of option names to values, "
                                 f"not {type(value).__name__}")
    clash = sorted(set(value) & _RESERVED[kind])
    if clash:
        raise ConfigurationError(f"{kind}_options may not set {', '.join(clash)}: "
                                 "the Host passes it itself")
    return dict(value)


def _create(backends: Any, kind: str, name: Any, **options: Any) -> Any:
    """A backend from its factory. A factory that rejects an option raises
    TypeError (unexpected keyword) or ValueError (a value it cannot convert):
    those are the caller's configuration, so they become ConfigurationError."""
    try:
        return backends.create(kind, name, **options)
    except PjError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigurationError(f"cannot create the {kind} backend {name!r}: {exc}") from exc


class _Notifier:
    """The scheduler's ``notify``: observability hooks, impl by impl, and
    whether anyone listens (nobody listening, runs are not read back)."""

    def __init__(self, pm: PluginManager) -> None:
        self._pm = pm

    def __call__(self, hook_name: str, **kwargs: Any) -> None:
        notify(self._pm, hook_name, **kwargs)

    def has_listeners(self, hook_name: str) -> bool:
        return bool(listeners(self._pm, hook_name))


class Host:
    """Builds the plugin manager and the backends, and runs them.

    :param database: store URL: ``sqlite:///path.db`` (default
        ``sqlite:///pjcore.db``) or ``postgresql://user@host/db``.
    :param store, scheduler, runner: backend names (see ``pjcore backends``).
    :param plugins: plugin objects or modules to register besides entry points
        (job handlers, observers, manifests).
    :param load_entrypoints: load the ``pjcore`` entry-point group.
    :param clock: inject a :class:`~pjcore.clock.ManualClock` in tests.
    :param max_concurrent: runs in flight at once.
    :param default_timeout: seconds before a run is recorded as timed out.

    Use as a context manager, or call :meth:`start` and :meth:`stop`.
    """

    def __init__(
        self,
        database: str | None = None,
        *,
        store: str = "peewee",
        scheduler: str = "thread",
        runner: str = "thread",
        plugins: Iterable[Any] = (),
        load_entrypoints: bool = True,
        strict_plugins: bool | None = None,
        clock: Clock | None = None,
        max_concurrent: int = 10,
        default_timeout: float | None = 300.0,
        store_options: Mapping[str, Any] | None = None,
        scheduler_options: Mapping[str, Any] | None = None,
        plugin_manager: PluginManager | None = None,
    ) -> None:
        if clock is not None and not isinstance(clock, Clock):
            raise ConfigurationError(f"clock must be a pjcore Clock, not {type(clock).__name__}")
        if isinstance(plugins, (str, bytes)) or not isinstance(plugins, Iterable):
            raise ConfigurationError(f"plugins must be a list of plugin objects or modules, "
                                     f"not {type(plugins).__name__}")
        plugins = tuple(plugins)
        if plugin_manager is not None and plugins:
            # A manager given is used as it is: these plugins would never be registered.
            raise ConfigurationError("pass plugins or plugin_manager, not both: register the "
                                     "plugins on the plugin manager instead")
        if isinstance(database, str) and not database.strip():
            # only None means the default: "" is a mistake, not a request for ./pjcore.db
            raise ConfigurationError("the database URL is empty: expected a URL such as "
                                     "sqlite:///path.db or postgresql://user@host/db")
        store_options = _options(store_options, "store")
        scheduler_options = _options(scheduler_options, "scheduler")
        self.clock = clock or SystemClock()
        self.pm = plugin_manager or make_plugin_manager(
            load_entrypoints=load_entrypoints, plugins=plugins, strict=strict_plugins
        )
        backends = self.pm.backends
        self.store: JobStore = _create(
            backends, "store", store, url=DEFAULT_DATABASE if database is None else database,
            **store_options
        )
        try:
            self.runner: Runner = _create(backends, "runner", runner, max_workers=max_concurrent)
            self.scheduler: Scheduler = _create(
                backends,
                "scheduler",
                scheduler,
                store=self.store,
                runner=self.runner,
                resolve=self._resolve,
                notify=_Notifier(self.pm),
                clock=self.clock,
                max_concurrent=max_concurrent,
                default_timeout=default_timeout,
                **scheduler_options,
            )
            self.coordinator = Coordinator(store=self.store, scheduler=self.scheduler,
                                           clock=self.clock)
            if self.pm.has_plugin(_COORDINATOR):
                # Its coordinator would sync plugins into the other Host's store.
                raise ConfigurationError(
                    "this plugin manager already belongs to another Host (it has a "
                    f"{_COORDINATOR!r}); give each Host a plugin manager of its own")
            self.pm.register(self.coordinator, name=_COORDINATOR)
        except BaseException:
            self.store.close()
            raise
        self._started = False
        self._closed = False

    def __repr__(self) -> str:
        return f"Host(store={self.store!r}, scheduler={self.scheduler!r})"

    # -- wiring ----------------------------------------------------------------

    def _resolve(self, plugin_key: str, job_key: str):
        handler = self.pm.handlers.find(plugin_key, job_key)
        return None if handler is None else handler.func

    # -- lifecycle -------------------------------------------------------------

    def start(self) -> "Host":
        if self._closed:
            raise ConfigurationError("this Host was stopped; create a new one")
        if not self._started:
            self.runner.start()
            self.scheduler.start()
            self._started = True
        return self

    def stop(self, timeout: float | None = 10.0) -> None:
        """Stop the scheduler, draining runs up to *timeout*, then close the store.

        Called from a handler or an observer of this Host's scheduler, it
        returns at once and stops in a thread of its own: the drain waits
        for the caller's own run or announcement to end."""
        if self._closed:
            return
        self._closed = True
        in_callback = getattr(self.scheduler, "in_callback", None)
        if in_callback is not None and in_callback():
            threading.Thread(target=self._stop, args=(timeout,), name="pjcore-host-stop").start()
            return
        self._stop(timeout)

    def _stop(self, timeout: float | None) -> None:
        try:
            self.scheduler.stop(timeout)
            self.runner.stop(0)
        finally:
            self.store.close()

    close = stop

    def __enter__(self) -> "Host":
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- plugin lifecycle (what a host application calls) ----------------------

    def load_plugin(self, plugin_id: str, plugin_key: str, manifest: Manifest | Mapping[str, Any]) -> None:
        self.pm.hook.plugin_loaded(plugin_id=plugin_id, plugin_key=plugin_key, manifest=manifest)

    def disable_plugin(self, plugin_id: str, plugin_key: str, reason: str | None = None) -> None:
        self.pm.hook.plugin_disabled(plugin_id=plugin_id, plugin_key=plugin_key, reason=reason)

    def unload_plugin(self, plugin_id: str, plugin_key: str, remove_data: bool = False) -> None:
        self.pm.hook.plugin_unloaded(plugin_id=plugin_id, plugin_key=plugin_key,
                                     remove_data=remove_data)

    def declared_manifests(self) -> list[Manifest]:
        """Manifests that installed plugins declare through ``register_manifests``."""
        return self.pm.manifests()

    def load_declared_plugins(self) -> list[str]:
        """Load every plugin that declares its manifest itself (plugin id = key).

        A plugin whose manifest is invalid, or whose loading makes a
        ``plugin_loaded`` hook raise, is logged and skipped; the others load.
        :return: the keys of the plugins loaded.
        """
        loaded = []
        for manifest in self.declared_manifests():
            try:
                self.load_plugin(manifest.key, manifest.key, manifest)
            except PjError as exc:
                logger.error("pjcore could not load plugin {plugin}: {error}",
                             plugin=manifest.key, error=exc)
                continue
            except Exception as exc:
                # Any installed plugin's plugin_loaded hook runs here: its bug
                # must not keep every other plugin (and `pjcore run`) from loading.
                logger.opt(exception=exc).error(
                    "pjcore could not load plugin {plugin}: a plugin_loaded hook raised "
                    "{error_type}: {error}",
                    plugin=manifest.key, error_type=type(exc).__name__, error=exc)
                continue
            loaded.append(manifest.key)
        return loaded

    # -- queries and commands --------------------------------------------------
    #
    # Arguments are checked before they reach the store (see pjcore.context):
    # a wrong type or value is an InvalidArgument naming the argument.

    def _plugin_id(self, plugin: str) -> str:
        """Accept a plugin id or a plugin key."""
        plugin = check_identifier(plugin, "plugin")
        return self.store.find_plugin(plugin) or plugin

    def job(self, plugin: str, job_key: str) -> Job:
        plugin = check_identifier(plugin, "plugin")
        job_key = check_identifier(job_key, "job_key")
        # the plugin id is the common case and needs no scan of the plugin's jobs
        job = self.store.get_job_by_key(plugin, job_key)
        if job is not None:
            return job
        plugin_id = self._plugin_id(plugin)
        job = self.store.get_job_by_key(plugin_id, job_key)
        if job is None:
            raise JobLookupError(job_key, plugin)
        return job

    def jobs(self, plugin: str | None = None, *, status: str | None = None) -> list[Job]:
        status = check_status(status, JobStatus)
        return self.store.list_jobs(None if plugin is None else self._plugin_id(plugin),
                                    status=status)

    def runs(
        self,
        plugin: str | None = None,
        job_key: str | None = None,
        *,
        status: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> RunPage:
        status = check_status(status, RunStatus)
        cursor = check_cursor(cursor)
        plugin_id = None if plugin is None else self._plugin_id(plugin)
        job_id = None
        if job_key is not None:
            if plugin is None:
                raise InvalidArgument("a job key needs its plugin")
            job_id = self.job(plugin, job_key).id
        return self.store.list_runs(plugin_id=plugin_id, job_id=job_id, status=status,
                                    limit=check_limit(limit), cursor=cursor)

    def run(self, run_id: str) -> JobRun | None:
        return self.store.get_run(check_identifier(run_id, "run_id"))

    def trigger(self, plugin: str, job_key: str, *, trigger: str = "manual") -> str:
        """Start a run now; returns its id at once (see ``Scheduler.trigger``)."""
        if trigger not in (RunTrigger.manual, RunTrigger.retry):
            raise InvalidArgument(f"trigger must be 'manual' or 'retry', not {shown(trigger)}")
        job = self.job(plugin, job_key)
        return self.scheduler.trigger(job.id, trigger=RunTrigger(trigger).value,
                                      plugin_id=job.plugin_id)

    def pause(self, plugin: str, job_key: str, reason: str | None = None) -> Job:
        reason = check_text(reason, "reason")
        job = self.store.pause_job(self.job(plugin, job_key).id, reason=reason, now=self.clock.now())
        self.scheduler.wake()
        return job

    def resume(self, plugin: str, job_key: str) -> Job:
        job = self.store.resume_job(self.job(plugin, job_key).id, now=self.clock.now())
        self.scheduler.wake()
        return job

    def upcoming(self, count: int = 5, plugin: str | None = None,
                 after: datetime | None = None) -> list[tuple[Job, list[datetime]]]:
        """The next *count* fire times of every active scheduled job (of *plugin*).

        They start at each job's pointer (the slot the scheduler runs next,
        which may be overdue), or strictly after *after* when it is given.
        """
        if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= 1000:
            raise InvalidArgument(
                f"count must be an integer between 1 and 1000, not {shown(count)}")
        if after is not None:
            if not isinstance(after, datetime):
                raise InvalidArgument(f"after must be a datetime, not {shown(after)}")
            if after.tzinfo is None or after.utcoffset() is None:
                raise InvalidArgument(f"after must be timezone-aware, not the naive {after!r}")
        start = after or self.clock.now()
        out = []
        for job in self.jobs(plugin):
            if job.status.value != "active" or not job.schedule:
                continue
            first = ((after is None and job.next_run_at)
                     or cron.next_after(job.schedule, start, job.timezone))
            times = [first] + cron.preview(job.schedule, first, count - 1, job.timezone)
            out.append((job, times[:count]))
        out.sort(key=lambda pair: pair[1][0])
        return out

    def diagnostics(self) -> dict:
        return self.scheduler.diagnostics()

