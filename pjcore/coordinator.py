"""pjcore's implementation of the lifecycle hooks: manifests into the store,
plugins into the scheduler."""

from __future__ import annotations

from typing import Any

import attrs
from loguru import logger

from pjcore.abc import JobStore, Scheduler
from pjcore.clock import Clock, SystemClock
from pjcore.exceptions import ManifestError, PjError, StoreError
from pjcore.hookspecs import hookimpl
from pjcore.manifest import Manifest
from pjcore.models import SyncResult

__all__ = ["Coordinator"]

MAX_PLUGIN_ID = 200


MAX_REASON = 2000


def _check_plugin_key(plugin_key: Any) -> None:
    if not isinstance(plugin_key, str) or not plugin_key.strip():
        raise ManifestError(f"plugin_key must be a non-empty string, not {type(plugin_key).__name__}",
                            field="plugin_key")
    if len(plugin_key) > MAX_PLUGIN_ID or "\x00" in plugin_key:
        raise ManifestError(f"plugin_key must be at most {MAX_PLUGIN_ID} characters, without NUL",
                            field="plugin_key")


def _check_reason(reason: Any, plugin_key: str) -> None:
    if reason is None:
        return
    if not isinstance(reason, str) or len(reason) > MAX_REASON or "\x00" in reason:
        raise ManifestError(f"reason must be a string of at most {MAX_REASON} characters "
                            "without NUL, or None", plugin=plugin_key, field="reason")


def _check_remove_data(remove_data: Any, plugin_key: str) -> None:
    # "no" is truthy: anything but a real bool could delete a plugin's data
    if not isinstance(remove_data, bool):
        raise ManifestError(f"remove_data must be True or False, not {remove_data!r:.40}",
                            plugin=plugin_key, field="remove_data")


def _check_plugin_id(plugin_id: Any, plugin_key: Any) -> None:
    _check_plugin_key(plugin_key)
    if not isinstance(plugin_id, str) or not plugin_id.strip():
        raise ManifestError("plugin_id must be a non-empty string",
                            plugin=plugin_key if isinstance(plugin_key, str) else None,
                            field="plugin_id")
    if len(plugin_id) > MAX_PLUGIN_ID or "\x00" in plugin_id:
        raise ManifestError(f"plugin_id must be at most {MAX_PLUGIN_ID} characters, without NUL",
                            plugin=plugin_key if isinstance(plugin_key, str) else None,
                            field="plugin_id")


@attrs.define(eq=False)
class Coordinator:
    """Registered in the plugin manager as ``pjcore.coordinator``.

    Unlike the original, errors are not swallowed: an invalid manifest raises
    :class:`ManifestError` and a store failure :class:`StoreError` to the
    host's hook call, and nothing is half-applied.
    """

    store: JobStore = attrs.field(validator=attrs.validators.instance_of(JobStore))
    scheduler: Scheduler = attrs.field(validator=attrs.validators.instance_of(Scheduler))
    clock: Clock = attrs.field(factory=SystemClock)
    last_sync: dict[str, SyncResult] = attrs.field(factory=dict, init=False)

    @hookimpl
    def plugin_loaded(self, plugin_id: str, plugin_key: str, manifest: Any) -> None:
        _check_plugin_id(plugin_id, plugin_key)
        parsed = Manifest.coerce(manifest, plugin_key=plugin_key)
        with logger.contextualize(pj_plugin=plugin_key):
            try:
                result = self.store.sync_jobs(plugin_id, parsed.key, parsed.jobs, now=self.clock.now())
            except PjError:
                raise
            except Exception as exc:
                raise StoreError(f"syncing the jobs of plugin {plugin_key!r} failed: {exc}") from exc
            self.last_sync[plugin_id] = result
            logger.info(
                "pjcore synced plugin {plugin}: {ins} new, {upd} updated, {paused} paused, "
                "{react} reactivated",
                plugin=plugin_key, ins=len(result.inserted), upd=len(result.updated),
                paused=len(result.paused), react=len(result.reactivated),
            )
            self.scheduler.register_plugin(plugin_id, parsed.key)

    @hookimpl
    def plugin_disabled(self, plugin_id: str, plugin_key: str, reason: str | None) -> None:
        _check_plugin_id(plugin_id, plugin_key)
        _check_reason(reason, plugin_key)
        self.scheduler.unregister_plugin(plugin_id, reason or "Plugin disabled")

    @hookimpl
    def plugin_unloaded(self, plugin_id: str, plugin_key: str, remove_data: bool) -> None:
        _check_plugin_id(plugin_id, plugin_key)
        _check_remove_data(remove_data, plugin_key)
        # Unregister first: if it fails (store down) the purge is not attempted,
        # so runs are never deleted while their handlers may still record them.
        self.scheduler.unregister_plugin(
            plugin_id, "Plugin uninstalled" if remove_data else "Plugin unloaded"
        )
        if remove_data:
            deleted = self.store.delete_plugin(plugin_id)
            self.last_sync.pop(plugin_id, None)
            logger.info("pjcore deleted {n} job(s) of plugin {plugin} and their runs",
                        n=deleted, plugin=plugin_key)
