"""Building the plugin manager: specs first, built-ins, then entry points in isolation."""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import threading
from typing import Any, Callable, Iterable

import attrs
import pluggy
from loguru import logger

from pjcore import hookspecs
from pjcore.backends import BackendRegistry
from pjcore.exceptions import ManifestError, PluginLoadError, RegistrationConflict
from pjcore.handlers import HandlerRegistry
from pjcore.manifest import Manifest

__all__ = [
    "DEFAULT_PLUGINS",
    "ENTRY_POINT_GROUP",
    "PluginFailure",
    "PluginInfo",
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
    """A registered plugin and where it came from."""

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
        self._manifests: dict[str, tuple[Manifest, str]] | None = None
        #: per notification hook, its impls as notify() calls them
        self._listeners: dict[str, tuple[_Listener, ...]] = {}
        # one collection at a time: runner threads resolving handlers at
        # once after a registration would otherwise each run every hook
        self._registries_lock = threading.RLock()

    # Registries are dropped whenever a plugin that implements their hook
    # comes or goes, so a plugin registered after the build is seen as well;
    # one that registers nothing there (an observer, the Host's coordinator)
    # leaves them be.
    def register(self, plugin: Any, name: str | None = None) -> str | None:
        """Register *plugin*, and run the registration hooks it implements now.

        :raises RegistrationConflict: it registers a backend, job handler or
            plugin key another plugin holds; it is then not registered.
        """
        with self._registries_lock:
            try:
                registered = super().register(plugin, name)
            finally:
                hooks = self._hooks_of(plugin)
                self._drop_collected(hooks)
            if registered is not None:
                try:
                    self._collect_hooks(hooks)
                except BaseException as exc:
                    # Refused here, where the caller can act on it: kept, it
                    # would make every later lookup (each run's handler) raise.
                    self.unregister(plugin)
                    if isinstance(exc, RegistrationConflict) and exc.plugin != registered:
                        # hooks run newest plugin first, so the clash surfaced
                        # in the older plugin's call; the one refused is this one
                        raise RegistrationConflict(str(exc), plugin=registered) from exc
                    raise
            return registered

    def unregister(self, plugin: Any = None, name: str | None = None) -> Any:
        with self._registries_lock:
            if plugin is None and name is not None:
                plugin = self.get_plugin(name)
            hooks = self._hooks_of(plugin)
            self._drop_collected(hooks)
            try:
                return super().unregister(plugin, name)
            finally:
                self._drop_collected(hooks)

    def _hooks_of(self, plugin: Any) -> set[str]:
        """The hooks *plugin* implements here (none if it is not registered)."""
        return {caller.name for caller in self.get_hookcallers(plugin) or ()}

    def _drop_collected(self, hooks: set[str]) -> None:
        """What was collected from *hooks* is out of date. Under the lock."""
        if "register_backends" in hooks:
            self._backends = None
        if "register_job_handlers" in hooks:
            self._handlers = None
        if "register_manifests" in hooks:
            self._manifests = None
        # a notify() racing the change may have cached the impls as they were
        self._listeners = {}

    def add_hookspecs(self, module_or_class: Any) -> None:
        try:
            super().add_hookspecs(module_or_class)
        finally:
            self._listeners = {}  # impls registered before their spec join it now

    @property
    def backends(self) -> BackendRegistry:
        """Every backend registered through ``register_backends``."""
        registry = self._backends
        if registry is not None:
            return registry
        with self._registries_lock:  # not collected while a plugin comes or goes
            if self._backends is None:
                registry = BackendRegistry()
                self._collect("register_backends", registry.register)
                self._backends = registry
            return self._backends

    @property
    def handlers(self) -> HandlerRegistry:
        """Every job handler registered through ``register_job_handlers``."""
        registry = self._handlers
        if registry is not None:
            return registry
        with self._registries_lock:
            if self._handlers is None:
                registry = HandlerRegistry()
                self._collect("register_job_handlers", registry.register)
                self._handlers = registry
            return self._handlers

    def manifests(self) -> list[Manifest]:
        """Manifests declared through ``register_manifests``, ordered by key."""
        with self._registries_lock:  # not collected while a plugin comes or goes
            return self._collected_manifests()

    def _collected_manifests(self) -> list[Manifest]:
        if self._manifests is None:
            found: dict[str, tuple[Manifest, str]] = {}

            def register(manifest: Any, *, plugin: str) -> None:
                parsed = Manifest.coerce(manifest)
                if parsed.key in found:
                    raise RegistrationConflict(
                        f"plugin key {parsed.key!r} is declared by both plugin "
                        f"{found[parsed.key][1]!r} and plugin {plugin!r}", plugin=plugin)
                found[parsed.key] = (parsed, plugin)

            self._collect("register_manifests", register)
            self._manifests = found
        return [m for _, (m, _) in sorted(self._manifests.items())]

    def _collect_registries(self) -> None:
        # Runs the registration hooks now, raising what they raise.
        self.backends
        self.handlers
        self.manifests()

    def _collect_hooks(self, hooks: set[str]) -> None:
        """Collect the registries fed by *hooks*, raising what they raise. Under the lock."""
        if "register_backends" in hooks:
            self.backends
        if "register_job_handlers" in hooks:
            self.handlers
        if "register_manifests" in hooks:
            self._collected_manifests()

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
            except (RegistrationConflict, ManifestError):
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


def _strict_from_env() -> bool:
    return os.environ.get(ENV_STRICT, "").strip().lower() not in ("", "0", "false", "no")


def _unknown_hooks(pm: pluggy.PluginManager, plugin: Any) -> list[str]:
    unknown = []
    for caller in pm.get_hookcallers(plugin) or []:
        if caller.spec is None:
            for impl in caller.get_hookimpls():
                if impl.plugin is plugin and not impl.optionalhook:
                    unknown.append(caller.name)
    return unknown


def _discard(pm: pluggy.PluginManager, name: str, plugin: Any) -> None:
    # pluggy < 1.7 leaves a plugin half-registered when one of its hookimpls
    # fails validation; remove whatever of *this* plugin got in (never another
    # plugin that already holds the name).
    if pm.get_plugin(name) is plugin:
        pm.unregister(name=name)


def _entry_points() -> list[tuple[importlib.metadata.EntryPoint, Any]]:
    found = {}
    for dist in importlib.metadata.distributions():
        for ep in dist.entry_points:
            # The same distribution can be visible twice on sys.path.
            if ep.group == ENTRY_POINT_GROUP:
                found.setdefault((ep.name, ep.value), (ep, dist))
    # Sorted, so the registration order (and so pluggy's LIFO call order)
    # does not depend on sys.path or directory listing order.
    return [found[key] for key in sorted(found)]


def load_entry_points(pm: PluginManager, *, strict: bool = False) -> None:
    """Register every ``pjcore`` entry point, each in isolation.

    A distribution whose import raises (SystemExit included), whose plugin
    implements a hook that does not exist, fails validation, reuses a plugin
    name that is taken, or raises or conflicts in a registration hook, is
    logged with its name and error, recorded in ``pm.failures`` and skipped.
    With *strict*, it raises PluginLoadError instead.
    """
    allow = _names_from_env(ENV_LOAD)
    block = _names_from_env(ENV_BLOCK) or set()
    for ep, dist in _entry_points():
        dist_name = dist.metadata["name"] if dist.metadata else None
        names = {ep.name, dist_name}
        if names & block or (allow is not None and not names & allow):
            logger.debug("pjcore plugin {name} not loaded (allow/block list)", name=ep.name)
            continue
        if pm.is_blocked(ep.name):
            continue
        plugin = None
        try:
            if pm.has_plugin(ep.name):
                taken = pm.origins.get(ep.name)
                raise PluginLoadError(
                    f"plugin name {ep.name!r} is already taken"
                    + (f" by {taken.distribution}" if taken and taken.distribution else ""),
                    plugin=ep.name,
                )
            plugin = ep.load()
            pm.register(plugin, name=ep.name)
            unknown = _unknown_hooks(pm, plugin)
            if unknown:
                raise PluginLoadError(
                    f"implements unknown hook(s) {', '.join(sorted(unknown))}", plugin=ep.name
                )
            # Run its registration hooks now: the plugins registered before it
            # are known to be consistent, so a conflict here is this plugin's.
            pm._collect_registries()
        except (Exception, SystemExit) as exc:
            # SystemExit too: a plugin calling sys.exit() on import (a missing
            # setting) must not end the host. KeyboardInterrupt is the user's.
            if plugin is not None:
                _discard(pm, ep.name, plugin)
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
    misspelled hook name into an error, and the registration hooks run, so a
    conflict is raised here rather than at first use.

    :param strict: raise on a failing entry point instead of skipping it;
        defaults to the ``PJCORE_STRICT_PLUGINS`` environment variable.
    :raises PluginLoadError: a failing entry point in strict mode, or an
        invalid plugin in *plugins* (unknown hook, bad signature).
    :raises RegistrationConflict: two plugins registered the same backend
        name or job handler.
    """
    if strict is None:
        strict = _strict_from_env()
    pm = PluginManager()
    pm.add_hookspecs(hookspecs)
    if defaults:
        for module_name in DEFAULT_PLUGINS:
            module = importlib.import_module(module_name)
            pm.register(module, name=module_name)
            pm.origins[module_name] = PluginInfo(name=module_name, builtin=True)
        # Before any entry point, so a failure here is not blamed on one.
        pm._collect_registries()
    if load_entrypoints:
        load_entry_points(pm, strict=strict)
    for plugin in plugins:
        try:
            pm.register(plugin)
        except (RegistrationConflict, ManifestError):
            raise  # about what it registers, and saying so: not a bad plugin object
        except (pluggy.PluginValidationError, ValueError) as exc:
            name = pm.get_canonical_name(plugin)
            raise PluginLoadError(
                f"plugin {name!r} cannot be registered: {exc}", plugin=name
            ) from exc
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        raise PluginLoadError(str(exc), plugin=pm.get_name(exc.plugin)) from exc
    pm._collect_registries()
    return pm


@attrs.frozen
class _Listener:
    """A notification hook impl: what notify() needs of it, read once."""

    function: Callable[..., Any]
    argnames: frozenset[str]
    plugin_name: str


def listeners(pm: pluggy.PluginManager, hook_name: str) -> tuple[_Listener, ...]:
    """The impls of *hook_name*, in call order. pjcore's manager keeps them
    until a plugin is registered or unregistered: the scheduler notifies
    for every run, and pluggy copies its impl list on every look."""
    cache = getattr(pm, "_listeners", None)
    found = None if cache is None else cache.get(hook_name)
    if found is None:
        found = tuple(_Listener(impl.function, frozenset(impl.argnames), impl.plugin_name)
                      for impl in reversed(getattr(pm.hook, hook_name).get_hookimpls()))
        if cache is not None:
            cache[hook_name] = found
    return found


def notify(pm: pluggy.PluginManager, hook_name: str, **kwargs: Any) -> None:
    """Call a notification hook impl by impl; an exception is logged, not raised."""
    for impl in listeners(pm, hook_name):
        try:
            if impl.argnames.issuperset(kwargs):
                impl.function(**kwargs)
            else:
                impl.function(**{k: v for k, v in kwargs.items() if k in impl.argnames})
        except Exception:
            logger.exception(
                "pjcore hook {hook} of plugin {plugin} raised; ignored",
                hook=hook_name, plugin=impl.plugin_name,
            )
