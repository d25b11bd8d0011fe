"""The default runner: a thread pool that calls sync and ``async def`` handlers."""

from __future__ import annotations

import asyncio
import inspect
import threading
import traceback
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import Any, Callable

from loguru import logger

from pjcore.abc import Outcome, Runner
from pjcore.context import JobContext, RunCancelled
from pjcore.exceptions import ConfigurationError

__all__ = ["ThreadRunner", "call_handler"]

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
    except asyncio.CancelledError as exc:
        # an async handler whose task was cancelled stopped on request, it did not fail
        return Outcome("cancelled", context.cancel_reason or str(exc) or "cancelled")
    except Exception as exc:
        message = str(exc) or type(exc).__name__
        return Outcome("failed", message, _summary(exc))
    except BaseException as exc:  # SystemExit, KeyboardInterrupt inside a handler
        return Outcome("failed", f"{type(exc).__name__}: {exc}", _summary(exc))
    return Outcome("succeeded")


async def _await(awaitable: Any) -> Any:
    return await awaitable


def _resolved(outcome: Outcome) -> "Future[Outcome]":
    future: Future[Outcome] = Future()
    future.set_result(outcome)
    return future


class ThreadRunner(Runner):
    """Runs each handler call in a pool of *max_workers* threads.

    :meth:`submit` starts the pool on first use, so a scheduler driven by
    hand (``tick()``) needs no :meth:`start`; after :meth:`stop`, only an
    explicit :meth:`start` accepts work again.
    """

    def __init__(self, max_workers: int = 10) -> None:
        if isinstance(max_workers, bool) or not isinstance(max_workers, int) or max_workers < 1:
            raise ConfigurationError(f"max_workers must be a positive integer, not {max_workers!r}")
        self.max_workers = max_workers
        self._pool: ThreadPoolExecutor | None = None
        self._stopped = False
        self._lock = threading.Lock()
        self._inflight: set[Future] = set()

    def __repr__(self) -> str:
        return f"ThreadRunner(max_workers={self.max_workers})"

    def start(self) -> None:
        with self._lock:
            self._stopped = False
            self._ensure_pool()

    def _ensure_pool(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.max_workers, thread_name_prefix="pjcore-run")
        return self._pool

    def submit(self, handler: Callable[..., Any], context: JobContext) -> "Future[Outcome]":
        future: Future[Outcome] = Future()
        with self._lock:
            if self._stopped:
                # The contract: never raise, resolve to an Outcome.
                return _resolved(Outcome("cancelled", "the runner is stopped"))
            try:
                self._ensure_pool().submit(self._work, future, handler, context)
            except RuntimeError as exc:  # interpreter shutting down
                return _resolved(Outcome("cancelled", f"the runner cannot start work: {exc}"))
            self._inflight.add(future)
        return future

    def _work(self, future: "Future[Outcome]", handler: Callable[..., Any],
              context: JobContext) -> None:
        try:
            if future.set_running_or_notify_cancel():
                # the caller's done callbacks run here, on this worker
                future.set_result(call_handler(handler, context))
        finally:
            # only now is the worker free again (see idle_workers)
            with self._lock:
                self._inflight.discard(future)

    def idle_workers(self) -> int:
        # A call counts from submit() until its done callbacks have run on
        # its worker: never fewer busy workers than there really are.
        with self._lock:
            return 0 if self._stopped else max(0, self.max_workers - len(self._inflight))

    def stop(self, timeout: float | None = None) -> bool:
        with self._lock:
            pool, self._pool = self._pool, None
            self._stopped = True
            # Every call still in flight, also those a previous stop() gave
            # up on: a second stop() must not report them finished.
            pending = list(self._inflight)
        if pool is not None:
            # Calls already queued still run (their runs are recorded);
            # the threads exit once the queue is empty.
            pool.shutdown(wait=False, cancel_futures=False)
        if not pending:
            return True
        _, not_done = wait(pending, timeout=timeout)
        return not not_done
