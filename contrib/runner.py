"""The default runner: a thread pool that calls sync and ``async def`` handlers."""

from __future__ import annotations

import asyncio
import inspect
import queue
import threading
import traceback
import weakref
from concurrent.futures import Future, wait
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
            if result is not None and inspect.isawaitable(result):
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
    """Runs each handler call on one of up to *max_workers* threads.

    :meth:`submit` starts the runner on first use, so a scheduler driven by
    hand (``tick()``) needs no :meth:`start`; after :meth:`stop`, only an
    explicit :meth:`start` accepts work again.

    Threads are started as calls need them and kept. Like
    :class:`~concurrent.futures.ThreadPoolExecutor`'s, they are not daemons:
    at interpreter exit, calls already submitted still run and the
    interpreter waits for them. One future per call and a plain queue (no
    executor work items and futures besides): a burst of short handlers
    spends its time in them, not in the handoff.
    """

    def __init__(self, max_workers: int = 10) -> None:
        if isinstance(max_workers, bool) or not isinstance(max_workers, int) or max_workers < 1:
            raise ConfigurationError(f"max_workers must be a positive integer, not {max_workers!r}")
        self.max_workers = max_workers
        self._queue: queue.SimpleQueue | None = None
        self._threads: list[threading.Thread] = []
        self._capacity = max_workers
        self._stopped = False
        self._lock = threading.Lock()
        self._inflight: set[Future] = set()

    def __repr__(self) -> str:
        return f"ThreadRunner(max_workers={self.max_workers})"

    def start(self) -> None:
        with self._lock:
            self._stopped = False
            self._ensure_queue()

    def _ensure_queue(self) -> queue.SimpleQueue:
        if self._queue is None:
            self._queue, self._threads = queue.SimpleQueue(), []
            self._capacity = self.max_workers  # threads it may have
            _LIVE.add(self)
        return self._queue

    def submit(self, handler: Callable[..., Any], context: JobContext) -> "Future[Outcome]":
        future: Future[Outcome] = Future()
        with self._lock:
            if self._stopped:
                # The contract: never raise, resolve to an Outcome.
                return _resolved(Outcome("cancelled", "the runner is stopped"))
            if _exiting:
                return _resolved(Outcome("cancelled", "the interpreter is exiting"))
            work = self._ensure_queue()
            # a thread per call in flight, up to max_workers
            if len(self._threads) < min(self.max_workers, len(self._inflight) + 1):
                thread = threading.Thread(target=_worker, args=(self, work), daemon=False,
                                          name=f"pjcore-run_{len(self._threads)}")
                try:
                    thread.start()
                except RuntimeError as exc:  # interpreter shutting down, or no threads left
                    if not self._threads:
                        return _resolved(Outcome("cancelled",
                                                 f"the runner cannot start work: {exc}"))
                    # the call waits for one of the threads there are: none
                    # of the others counts as idle (see idle_workers)
                    self._capacity = len(self._threads)
                else:
                    self._threads.append(thread)
            self._inflight.add(future)
            work.put((future, handler, context))
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
            if self._stopped or _exiting:
                return 0
            return max(0, self._capacity - len(self._inflight))

    def stop(self, timeout: float | None = None) -> bool:
        with self._lock:
            self._stopped = True
            self._close()
            # Every call still in flight, also those a previous stop() gave
            # up on: a second stop() must not report them finished.
            pending = list(self._inflight)
        if not pending:
            return True
        _, not_done = wait(pending, timeout=timeout)
        return not not_done

    def _close(self) -> list[threading.Thread]:
        """Let the threads go once the calls queued so far have run (one
        end marker per thread, behind them); the threads. Under the lock."""
        work, threads = self._queue, self._threads
        self._queue, self._threads = None, []
        if work is not None:
            for _ in threads:
                work.put(None)
        return threads


def _worker(runner: ThreadRunner, work: queue.SimpleQueue) -> None:
    while True:
        item = work.get()
        if item is None:
            return
        runner._work(*item)
        del item  # not kept alive (the context, the handler) while waiting


#: runners that may have threads; at interpreter exit their queued calls run
#: and their threads are joined, before non-daemon threads are waited for
_LIVE: "weakref.WeakSet[ThreadRunner]" = weakref.WeakSet()
_exiting = False


def _at_exit() -> None:
    global _exiting
    _exiting = True
    threads = []
    for runner in list(_LIVE):
        with runner._lock:
            threads += runner._close()
    for thread in threads:
        thread.join()


# The hook ThreadPoolExecutor uses: it runs before the interpreter waits for
# non-daemon threads, which would otherwise wait forever on an idle worker.
threading._register_atexit(_at_exit)  # type: ignore[attr-defined]
