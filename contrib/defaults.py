"""The built-in plugin: registers pjcore's own backends by name."""

from __future__ import annotations

from typing import Any

from pjcore.hookspecs import hookimpl


def _memory_store(url: str | None = None, **options: Any):
    from pjcore.contrib.memory import MemoryJobStore

    return MemoryJobStore(**options)


def _peewee_store(url: str | None = None, **options: Any):
    from pjcore.contrib.peewee_store import PeeweeJobStore

    return PeeweeJobStore("sqlite:///pjcore.db" if url is None else url, **options)


def _thread_scheduler(**options: Any):
    from pjcore.contrib.scheduler import ThreadScheduler

    return ThreadScheduler(**options)


def _thread_runner(**options: Any):
    from pjcore.contrib.runner import ThreadRunner

    return ThreadRunner(**options)


@hookimpl(trylast=True)
def register_backends(register):
    register("store", "peewee", _peewee_store)
    register("store", "memory", _memory_store)
    register("scheduler", "thread", _thread_scheduler)
    register("runner", "thread", _thread_runner)
