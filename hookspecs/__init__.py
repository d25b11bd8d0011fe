"""The pjcore hook specifications (installed as ``pjcore.hookspecs``).

Plugins implement these with ``@pjcore.hookimpl`` and are found through the
``pjcore`` entry-point group. Hook calls are keyword-only; an implementation
may accept fewer arguments than the spec, but must not give them defaults.

Four groups:

* **lifecycle** (``plugin_loaded``, ``plugin_disabled``, ``plugin_unloaded``):
  called by the host application; pjcore's coordinator implements them.
* **backends** (``register_backends``): named factories of job stores,
  schedulers and runners.
* **job handlers** (``register_job_handlers``): the code behind each job.
* **observability** (``run_started``, ``run_finished``): notifications.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Mapping

import pluggy

if TYPE_CHECKING:
    from pjcore.backends import RegisterBackend
    from pjcore.handlers import RegisterHandler
    from pjcore.manifest import Manifest
    from pjcore.models import Job, JobRun

__all__ = [
    "PROJECT",
    "hookimpl",
    "hookspec",
    "plugin_disabled",
    "plugin_loaded",
    "plugin_unloaded",
    "register_backends",
    "register_job_handlers",
    "register_manifests",
    "run_finished",
    "run_started",
]

PROJECT = "pjcore"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


# -- lifecycle: called by the host --------------------------------------------


@hookspec
def plugin_loaded(plugin_id: str, plugin_key: str, manifest: "Manifest | Mapping[str, Any]") -> None:
    """A plugin was loaded, enabled, restarted or upgraded.

    Called by the host as ``pm.hook.plugin_loaded(plugin_id=..., plugin_key=...,
    manifest=...)`` every time the plugin (re)starts. *manifest* is a
    :class:`~pjcore.manifest.Manifest` or its dict form. pjcore validates it,
    syncs the declared jobs into the job store (an empty job list pauses all
    of the plugin's jobs) and registers the plugin with the scheduler. Calling
    it again for a running plugin is safe.

    Raises :class:`~pjcore.exceptions.ManifestError` to the caller for an
    invalid manifest, in which case nothing was changed. Returns nothing.
    """


@hookspec
def plugin_disabled(plugin_id: str, plugin_key: str, reason: str | None) -> None:
    """A plugin was disabled.

    No new runs of its jobs start; runs in flight are asked to stop and are
    recorded ``cancelled`` with *reason*. Job definitions and run history are
    kept. Harmless for a plugin pjcore does not know. Returns nothing.
    """


@hookspec
def plugin_unloaded(plugin_id: str, plugin_key: str, remove_data: bool) -> None:
    """A plugin was unloaded or uninstalled.

    As :func:`plugin_disabled`; with ``remove_data=True`` every job and run
    of the plugin is also deleted. Returns nothing.
    """


# -- backends -------------------------------------------------------------------


@hookspec
def register_backends(register: "RegisterBackend") -> None:
    """Register named backend factories.

    Called when the plugin manager is built, and again whenever a plugin is
    registered or unregistered later, so it must do nothing but register. Call
    ``register(kind, name, factory)`` once per backend, where *kind* is
    ``"store"``, ``"scheduler"`` or ``"runner"`` and *factory* is a callable
    whose keyword arguments are the backend's options (for a store:
    ``factory(url=..., **options)`` returning a :class:`~pjcore.abc.JobStore`).
    A host selects a backend by ``(kind, name)``. Registering a name that is
    already registered, or an unknown *kind*, raises
    :class:`~pjcore.exceptions.RegistrationConflict`; for a plugin loaded
    from an entry point that is a load failure (the plugin is skipped, or
    :class:`~pjcore.exceptions.PluginLoadError` in strict mode). Returns
    nothing.
    """


# -- job handlers ---------------------------------------------------------------


@hookspec
def register_job_handlers(register: "RegisterHandler") -> None:
    """Provide the code of jobs.

    Called when the plugin manager is built (and again whenever a plugin is
    registered or unregistered later, so it must do nothing but register), in
    every process that builds one, so a runner in another process finds the
    same handlers by loading the same entry points. Call ``register(plugin_key, job_key, handler)`` once per
    job; *handler* is a function or ``async def`` function taking one argument,
    the run's :class:`~pjcore.context.JobContext` (defined by the engine).
    Registering the same ``(plugin_key, job_key)`` twice raises
    :class:`~pjcore.exceptions.RegistrationConflict` (a load failure for a
    plugin loaded from an entry point, as in :func:`register_backends`).
    Returns nothing.
    """


@hookspec
def register_manifests(register: "Callable[[Manifest | Mapping[str, Any]], None]") -> None:
    """Declare the manifest of a plugin that ships its own jobs.

    Called when the plugin manager is built (and again whenever plugins
    change), so it must only register. Call ``register(manifest)`` with a
    :class:`~pjcore.manifest.Manifest` or its dict form. Hosts that own
    their plugins' manifests (most do) never need this; ``pjcore run`` and
    :meth:`pjcore.Host.load_declared_plugins` load every plugin declared here,
    with its key as plugin id. An invalid manifest is a load failure of the
    plugin that declared it; two plugins declaring one key raise
    :class:`~pjcore.exceptions.RegistrationConflict`. Returns nothing.
    """


# -- observability ----------------------------------------------------------------


@hookspec
def run_started(run: "JobRun", job: "Job") -> None:
    """A run has started (its status is ``running``).

    Called from the scheduler's worker, before the handler. An exception is
    logged and ignored: it neither stops other implementations nor the run.
    Should return quickly. Returns nothing.
    """


@hookspec
def run_finished(run: "JobRun", job: "Job") -> None:
    """A run has ended; *run* holds its terminal status, error and duration.

    Called once per run whatever the outcome (succeeded, failed, cancelled,
    ...). An exception is logged and ignored. Returns nothing.
    """

