"""The default runner: a thread pool that calls sync and ``async def`` handlers."""

from __future__ import annotations

import asyncio
import inspect
import threading
import traceback
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable

from loguru import logger

from pjcore.abc import Outcome, Runner
from pjcore.context import JobContext, RunCancelled
from pjcore.exceptions import ConfigurationError

__all__ = ["ThreadRunner"]

MAX_DETAIL = 4000


def _summary(exc: BaseException) -> str:
    """The last frames of a traceback, short enough to keep on the run."""
    lines = traceback.format_exception(type(exc), exc, exc.__traceback__, limit=-5)
    text = "".join(lines)
    return text if len(text) <= MAX_DETAIL else "..." + text[-MAX_DETAIL:]


def call_handler(handler: Callable[..., Any], context: JobContext) -> Outcome:
    """Call *handler* with *context*; turn whatever happens into an Outcome."""
    try:
        with logger.contextualize(
            pj_plugin=context.plugin_key, pj_job=context.job_key, pj_run=context.run_id
        ):
            result = handler(context)
            if inspect.isawaitable(result):
                # Each async run gets its own loop in its worker thread: handlers
                # of different plugins never share (or block) one loop.
                asyncio.run(_await(result))
    except RunCancelled as exc:
        return Outcome("cancelled", str(exc) or "cancelled")
    except Exception as exc:
        message = str(exc) or type(exc).__name__
        return Outcome("failed", message, _summary(exc))
    except BaseException as exc:  # SystemExit, KeyboardInterrupt inside a handler
        return Outcome("failed", f"{type(exc).__name__}: {exc}", _summary(exc))
    return Outcome("succeeded")


async def _await(awaitable: Any) -> Any:
    return await awaitable


class ThreadRunner(Runner):
    """Runs each handler call in a pool of *max_workers* threads."""

    def __init__(self, max_workers: int = 10) -> None:
        if isinstance(max_workers, bool) or not isinstance(max_workers, int) or max_workers < 1:
            raise ConfigurationError(f"max_workers must be a positive integer, not {max_workers!r}")
        self.max_workers = max_workers
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        self._inflight: set[Future] = set()

    def __repr__(self) -> str:
        return f"ThreadRunner(max_workers={self.max_workers})"

    def start(self) -> None:
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.max_workers, thread_name_prefix="pjcore-run")

    def submit(self, handler: Callable[..., Any], context: JobContext) -> "Future[Outcome]":
        self.start()
        with self._lock:
            assert self._pool is not None
            future = self._pool.submit(call_handler, handler, context)
            self._inflight.add(future)
        future.add_done_callback(self._forget)
        return future

    def _forget(self, future: Future) -> None:
        with self._lock:
            self._inflight.discard(future)

    def stop(self, timeout: float | None = None) -> bool:
        with self._lock:
            pool, self._pool = self._pool, None
            pending = list(self._inflight)
        if pool is None:
            return True
        pool.shutdown(wait=False, cancel_futures=False)
        from concurrent.futures import wait

        done, not_done = wait(pending, timeout=timeout)
        return not not_done
