"""Named backend factories, filled through the ``register_backends`` hook."""

from __future__ import annotations

from typing import Any, Callable, Protocol

import attrs

from pjcore.exceptions import BackendLookupError, RegistrationConflict

__all__ = ["BACKEND_KINDS", "BackendRegistry", "RegisterBackend"]

#: the kinds of swappable parts a plugin can provide
BACKEND_KINDS = ("store", "scheduler", "runner")


class RegisterBackend(Protocol):
    """The ``register`` callback passed to the ``register_backends`` hook."""

    def __call__(self, kind: str, name: str, factory: Callable[..., Any]) -> None: ...


@attrs.frozen
class Backend:
    """A registered backend factory and the plugin that registered it."""

    kind: str
    name: str
    factory: Callable[..., Any]
    plugin: str  # name of the plugin that registered it


@attrs.define
class BackendRegistry:
    """Backends by ``(kind, name)``; a name can be registered only once per kind."""

    _backends: dict[tuple[str, str], Backend] = attrs.field(factory=dict, init=False)

    def register(self, kind: str, name: str, factory: Callable[..., Any], *, plugin: str) -> None:
        if kind not in BACKEND_KINDS:
            raise RegistrationConflict(
                f"plugin {plugin!r} registered a backend of unknown kind {kind!r} "
                f"(known: {', '.join(BACKEND_KINDS)})",
                plugin=plugin,
            )
        if not isinstance(name, str) or not name:
            raise RegistrationConflict(
                f"plugin {plugin!r} registered a {kind} backend without a name", plugin=plugin
            )
        if not callable(factory):
            raise RegistrationConflict(
                f"plugin {plugin!r} registered {kind} backend {name!r} with a "
                f"non-callable factory", plugin=plugin,
            )
        existing = self._backends.get((kind, name))
        if existing is not None:
            who = (
                f"twice by plugin {plugin!r}"
                if existing.plugin == plugin
                else f"by both plugin {existing.plugin!r} and plugin {plugin!r}"
            )
            raise RegistrationConflict(f"{kind} backend {name!r} is registered {who}", plugin=plugin)
        self._backends[(kind, name)] = Backend(kind, name, factory, plugin)

    def get(self, kind: str, name: str) -> Backend:
        try:
            return self._backends[(kind, name)]
        except KeyError:
            raise BackendLookupError(kind, name, self.names(kind)) from None

    def create(self, kind: str, name: str, **options: Any) -> Any:
        """Call the factory of backend *name* with *options*."""
        return self.get(kind, name).factory(**options)

    def names(self, kind: str) -> list[str]:
        return sorted(n for (k, n) in self._backends if k == kind)

    def all(self) -> list[Backend]:
        return sorted(self._backends.values(), key=lambda b: (b.kind, b.name))
