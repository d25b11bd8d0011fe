"""Job handlers by ``(plugin_key, job_key)``, filled through ``register_job_handlers``."""

from __future__ import annotations

from typing import Any, Callable, Protocol

import attrs

from pjcore.exceptions import HandlerLookupError, RegistrationConflict

__all__ = ["HandlerRegistry", "RegisterHandler"]


class RegisterHandler(Protocol):
    """The ``register`` callback passed to the ``register_job_handlers`` hook."""

    def __call__(self, plugin_key: str, job_key: str, handler: Callable[..., Any]) -> None: ...


def qualified_name(func: Callable[..., Any]) -> str:
    """``module:qualname`` of a handler, for logs and diagnostics."""
    module = getattr(func, "__module__", None) or "?"
    name = getattr(func, "__qualname__", None) or type(func).__qualname__
    return f"{module}:{name}"


@attrs.frozen
class Handler:
    """A registered job handler; calling it calls :attr:`func`."""

    plugin_key: str
    job_key: str
    func: Callable[..., Any]
    plugin: str  # name of the pluggy plugin that registered it

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.func(*args, **kwargs)

    @property
    def qualified_name(self) -> str:
        return qualified_name(self.func)


@attrs.define
class HandlerRegistry:
    """Handlers by ``(plugin_key, job_key)``; each key can be registered only once."""

    _handlers: dict[tuple[str, str], Handler] = attrs.field(factory=dict, init=False)

    def register(self, plugin_key: str, job_key: str, func: Callable[..., Any], *, plugin: str) -> None:
        for label, value in (("plugin_key", plugin_key), ("job_key", job_key)):
            if not isinstance(value, str) or not value:
                raise RegistrationConflict(
                    f"plugin {plugin!r} registered a job handler with an invalid {label} "
                    f"{value!r}", plugin=plugin,
                )
        if not callable(func):
            raise RegistrationConflict(
                f"plugin {plugin!r} registered a non-callable handler for job "
                f"{plugin_key}/{job_key}", plugin=plugin,
            )
        existing = self._handlers.get((plugin_key, job_key))
        if existing is not None:
            who = (
                f"twice by plugin {plugin!r}"
                if existing.plugin == plugin
                else f"by both plugin {existing.plugin!r} and plugin {plugin!r}"
            )
            raise RegistrationConflict(
                f"job {plugin_key}/{job_key} has a handler registered {who}", plugin=plugin
            )
        self._handlers[(plugin_key, job_key)] = Handler(plugin_key, job_key, func, plugin)

    def find(self, plugin_key: str, job_key: str) -> Handler | None:
        return self._handlers.get((plugin_key, job_key))

    def get(self, plugin_key: str, job_key: str) -> Handler:
        handler = self.find(plugin_key, job_key)
        if handler is None:
            raise HandlerLookupError(plugin_key, job_key)
        return handler

    def for_plugin(self, plugin_key: str) -> list[Handler]:
        return sorted(
            (h for (p, _), h in self._handlers.items() if p == plugin_key),
            key=lambda h: h.job_key,
        )

    def __len__(self) -> int:
        return len(self._handlers)
