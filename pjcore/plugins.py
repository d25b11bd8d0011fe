"""Building the plugin manager: specs first, built-ins, then entry points in isolation."""

from __future__ import annotations

import importlib
import importlib.metadata
import os
from typing import Any, Iterable

import attrs
import pluggy
from loguru import logger

from pjcore import hookspecs
from pjcore.backends import BackendRegistry
from pjcore.exceptions import PluginLoadError, RegistrationConflict
from pjcore.handlers import HandlerRegistry

__all__ = [
    "DEFAULT_PLUGINS",
    "ENTRY_POINT_GROUP",
    "PluginFailure",
    "PluginManager",
    "make_plugin_manager",
    "notify",
]

ENTRY_POINT_GROUP = "pjcore"
#: built-in plugin modules, registered under their dotted name
DEFAULT_PLUGINS = ("pjcore.contrib.defaults",)
#: comma-separated names of the entry points to load (unset: all; empty: none)
ENV_LOAD = "PJCORE_LOAD_PLUGINS"
#: comma-separated names of entry points never to load
ENV_BLOCK = "PJCORE_BLOCK_PLUGINS"
#: "1" makes a failing entry point raise instead of being skipped
ENV_STRICT = "PJCORE_STRICT_PLUGINS"


@attrs.frozen(kw_only=True)
class PluginFailure:
    """An entry point that could not be loaded, and why."""

    name: str
    distribution: str | None
    version: str | None
    error: str


@attrs.frozen(kw_only=True)
class PluginInfo:
    name: str
    distribution: str | None = None
    version: str | None = None
    builtin: bool = False


class PluginManager(pluggy.PluginManager):
    """pluggy's manager plus what pjcore needs: load failures, origins, registries."""

    def __init__(self) -> None:
        super().__init__(hookspecs.PROJECT)
        self.failures: list[PluginFailure] = []
        self.origins: dict[str, PluginInfo] = {}
        self._backends: BackendRegistry | None = None
        self._handlers: HandlerRegistry | None = None

    # Registries are collected lazily and dropped whenever the set of plugins
    # changes, so a plugin registered after the build is seen as well.
    def register(self, plugin: Any, name: str | None = None) -> str | None:
        self._backends = self._handlers = None
        return super().register(plugin, name)

    def unregister(self, plugin: Any = None, name: str | None = None) -> Any:
        self._backends = self._handlers = None
        return super().unregister(plugin, name)

    @property
    def backends(self) -> BackendRegistry:
        """Every backend registered through ``register_backends``."""
        if self._backends is None:
            registry = BackendRegistry()
            self._collect("register_backends", registry.register)
            self._backends = registry
        return self._backends

    @property
    def handlers(self) -> HandlerRegistry:
        """Every job handler registered through ``register_job_handlers``."""
        if self._handlers is None:
            registry = HandlerRegistry()
            self._collect("register_job_handlers", registry.register)
            self._handlers = registry
        return self._handlers

    def _collect(self, hook_name: str, register: Any) -> None:
        caller = getattr(self.hook, hook_name)
        # Called impl by impl so each registration is attributed to its plugin.
        for impl in reversed(caller.get_hookimpls()):
            plugin_name = impl.plugin_name

            def bound(*args: Any, _plugin: str = plugin_name, **kwargs: Any) -> None:
                register(*args, plugin=_plugin, **kwargs)

            kwargs = {"register": bound} if "register" in impl.argnames else {}
            try:
                impl.function(**kwargs)
            except RegistrationConflict:
                raise
            except Exception as exc:
                raise PluginLoadError(
                    f"plugin {plugin_name!r} failed in {hook_name}: {exc!r}", plugin=plugin_name
                ) from exc

    def plugin_infos(self) -> list[PluginInfo]:
        """Every registered plugin, with its distribution when known."""
        out = []
        for name, plugin in self.list_name_plugin():
            if plugin is None:
                continue
            out.append(self.origins.get(name) or PluginInfo(name=name))
        return sorted(out, key=lambda p: p.name)


def _names_from_env(var: str) -> set[str] | None:
    raw = os.environ.get(var)
    if raw is None:
        return None
    return {n.strip() for n in raw.split(",") if n.strip()}


def _unknown_hooks(pm: pluggy.PluginManager, plugin: Any) -> list[str]:
    unknown = []
    for caller in pm.get_hookcallers(plugin) or []:
        if caller.spec is None:
            for impl in caller.get_hookimpls():
                if impl.plugin is plugin and not impl.optionalhook:
                    unknown.append(caller.name)
    return unknown


def _entry_points() -> Iterable[tuple[importlib.metadata.EntryPoint, Any]]:
    seen = set()
    for dist in importlib.metadata.distributions():
        for ep in dist.entry_points:
            if ep.group != ENTRY_POINT_GROUP or (ep.name, ep.value) in seen:
                continue
            seen.add((ep.name, ep.value))
            yield ep, dist


def load_entry_points(pm: PluginManager, *, strict: bool = False) -> None:
    """Register every ``pjcore`` entry point, each in isolation.

    A distribution whose import raises, or whose plugin implements a hook
    that does not exist, is logged with its name and error, recorded in
    ``pm.failures`` and skipped. With *strict*, it raises PluginLoadError.
    """
    allow = _names_from_env(ENV_LOAD)
    block = _names_from_env(ENV_BLOCK) or set()
    for ep, dist in _entry_points():
        dist_name = dist.metadata["name"] if dist.metadata else None
        names = {ep.name, dist_name}
        if names & block or (allow is not None and not names & allow):
            logger.debug("pjcore plugin {name} not loaded (allow/block list)", name=ep.name)
            continue
        if pm.has_plugin(ep.name) or pm.is_blocked(ep.name):
            continue
        try:
            plugin = ep.load()
            pm.register(plugin, name=ep.name)
            unknown = _unknown_hooks(pm, plugin)
            if unknown:
                pm.unregister(name=ep.name)
                raise PluginLoadError(
                    f"implements unknown hook(s) {', '.join(sorted(unknown))}", plugin=ep.name
                )
        except Exception as exc:
            failure = PluginFailure(
                name=ep.name,
                distribution=dist_name,
                version=dist.version,
                error=f"{type(exc).__name__}: {exc}",
            )
            if strict:
                raise PluginLoadError(
                    f"pjcore plugin {ep.name!r} from {dist_name} {dist.version} failed to load: "
                    f"{failure.error}",
                    plugin=ep.name,
                ) from exc
            pm.failures.append(failure)
            logger.opt(exception=exc).error(
                "pjcore plugin {name} from {dist} {version} failed to load and was skipped: {error}",
                name=ep.name, dist=dist_name, version=dist.version, error=failure.error,
            )
            continue
        pm.origins[ep.name] = PluginInfo(name=ep.name, distribution=dist_name, version=dist.version)


def make_plugin_manager(
    *,
    load_entrypoints: bool = True,
    plugins: Iterable[Any] = (),
    strict: bool | None = None,
    defaults: bool = True,
) -> PluginManager:
    """Build the pjcore plugin manager.

    Order matters: the hook specs are added before anything registers (pluggy
    validates implementations only against specs it already knows), then the
    built-in plugins, then the ``pjcore`` entry points (unless
    *load_entrypoints* is false), then *plugins* (objects or modules, e.g. a
    host's coordinator or test plugins). Finally ``check_pending()`` turns a
    misspelled hook name into an error.

    :param strict: raise on a failing entry point instead of skipping it;
        defaults to the ``PJCORE_STRICT_PLUGINS`` environment variable.
    """
    if strict is None:
        strict = os.environ.get(ENV_STRICT, "") not in ("", "0", "false", "no")
    pm = PluginManager()
    pm.add_hookspecs(hookspecs)
    if defaults:
        for module_name in DEFAULT_PLUGINS:
            module = importlib.import_module(module_name)
            pm.register(module, name=module_name)
            pm.origins[module_name] = PluginInfo(name=module_name, builtin=True)
    if load_entrypoints:
        load_entry_points(pm, strict=strict)
    for plugin in plugins:
        pm.register(plugin)
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        raise PluginLoadError(str(exc), plugin=getattr(exc, "plugin", None)) from exc
    return pm


def notify(pm: pluggy.PluginManager, hook_name: str, **kwargs: Any) -> None:
    """Call a notification hook impl by impl; an exception is logged, not raised."""
    caller = getattr(pm.hook, hook_name)
    for impl in reversed(caller.get_hookimpls()):
        try:
            impl.function(**{k: v for k, v in kwargs.items() if k in impl.argnames})
        except Exception:
            logger.exception(
                "pjcore hook {hook} of plugin {plugin} raised; ignored",
                hook=hook_name, plugin=impl.plugin_name,
            )
