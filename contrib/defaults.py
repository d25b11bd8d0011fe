"""The built-in plugin: registers pjcore's own backends by name."""

from __future__ import annotations

from typing import Any

from pjcore.hookspecs import hookimpl


def _memory_store(url: str | None = None, **options: Any):
    from pjcore.contrib.memory import MemoryJobStore

    return MemoryJobStore(**options)


def _peewee_store(url: str | None = None, **options: Any):
    from pjcore.contrib.peewee_store import PeeweeJobStore

    return PeeweeJobStore(url or "sqlite:///pjcore.db", **options)


@hookimpl
def register_backends(register):
    register("store", "peewee", _peewee_store)
    register("store", "memory", _memory_store)
