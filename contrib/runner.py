"""The default runner: a thread pool that calls sync and ``async def`` handlers."""

from __future__ import annotations

import asyncio
import inspect
import threading
import time
import traceback
import weakref
from collections import deque
from concurrent.futures import Future
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


class _Pool:
    """The calls and threads of a runner between a start and a stop. Under
    the runner's lock."""

    __slots__ = ("runner", "calls", "parked", "searching", "threads", "wakes", "capacity",
                 "start_error", "closing", "busy")

    def __init__(self, runner: ThreadRunner, capacity: int) -> None:
        self.runner = runner
        #: (future or None, handler, context, done or None) of calls no
        #: thread has taken yet: a future for submit(), *done* for call()
        self.calls: deque[tuple[Future | None, Callable[..., Any], JobContext,
                                Callable[[Outcome], object] | None]] = deque()
        #: the wake-up locks of threads waiting for a call, the latest last
        self.parked: list[threading.Lock] = []
        #: threads awake and not in a call: each looks at ``calls`` before
        #: it waits, so a call submitted meanwhile needs no other thread
        self.searching = 0
        self.threads: list[threading.Thread] = []
        #: every thread's wake-up lock, parked or not (see ThreadRunner._close)
        self.wakes: list[threading.Lock] = []
        #: threads it may have: max_workers, or fewer once one failed to start
        self.capacity = capacity
        #: why the last thread that failed to start did not
        self.start_error: RuntimeError | None = None
        #: stopped: threads leave once ``calls`` is empty
        self.closing = False
        #: calls queued here until their done callbacks have run (a stop()
        #: waits for those of the pools there were when it was called)
        self.busy = 0


class ThreadRunner(Runner):
    """Runs each handler call on one of up to *max_workers* threads.

    :meth:`submit` starts the runner on first use, so a scheduler driven by
    hand (``tick()``) needs no :meth:`start`; after :meth:`stop`, only an
    explicit :meth:`start` accepts work again.

    Threads are started as calls need them and kept. Like
    :class:`~concurrent.futures.ThreadPoolExecutor`'s, they are not daemons:
    at interpreter exit, calls already submitted still run and the
    interpreter waits for them.

    A call wakes a waiting thread only when no thread is awake to take it,
    and a thread that takes a call wakes the next one if more calls wait:
    calls that block each get a thread of their own at once (a wake-up
    apart), while a burst of short calls runs on the few threads already
    awake instead of waking one thread per call (and passing the GIL
    around as often).
    """

    def __init__(self, max_workers: int = 10) -> None:
        if isinstance(max_workers, bool) or not isinstance(max_workers, int) or max_workers < 1:
            raise ConfigurationError(f"max_workers must be a positive integer, not {max_workers!r}")
        self.max_workers = max_workers
        self._pool: _Pool | None = None
        self._stopped = False
        self._lock = threading.Lock()
        #: the current pool and the closed ones with calls still to finish
        #: (their ``busy`` counts are every call not yet done)
        self._pools: list[_Pool] = []
        #: notified as the last calls finish (a stop() may wait on it)
        self._drained = threading.Condition(self._lock)

    def __repr__(self) -> str:
        return f"ThreadRunner(max_workers={self.max_workers})"

    @property
    def _threads(self) -> list[threading.Thread]:
        return [] if self._pool is None else self._pool.threads

    def start(self) -> None:
        with self._lock:
            self._stopped = False
            self._ensure_pool()

    def _ensure_pool(self) -> _Pool:
        if self._pool is None:
            self._pool = _Pool(self, self.max_workers)
            self._pools.append(self._pool)
            _LIVE.add(self)
        return self._pool

    def submit(self, handler: Callable[..., Any], context: JobContext) -> "Future[Outcome]":
        future: Future[Outcome] = Future()
        refused = self._queue(future, handler, context, None)
        # The contract: never raise, resolve to an Outcome.
        return future if refused is None else _resolved(refused)

    def call(self, handler: Callable[..., Any], context: JobContext,
             done: Callable[[Outcome], object]) -> None:
        if getattr(self.submit, "__func__", None) is not ThreadRunner.submit:
            # a submit() of a subclass's (or patched on this runner) sees
            # every call, as before call() was
            Runner.call(self, handler, context, done)
            return
        # no future: the worker hands the outcome to *done* itself
        refused = self._queue(None, handler, context, done)
        if refused is not None:
            _deliver(done, refused, context)

    def _queue(self, future: Future | None, handler: Callable[..., Any], context: JobContext,
               done: Callable[[Outcome], object] | None) -> Outcome | None:
        """Queue a call for a thread; None, or why it is refused."""
        with self._lock:
            if self._stopped:
                return Outcome("cancelled", "the runner is stopped")
            if _exiting:
                return Outcome("cancelled", "the interpreter is exiting")
            pool = self._ensure_pool()
            if not _summon(pool):
                return Outcome("cancelled", f"the runner cannot start work: {pool.start_error}")
            pool.busy += 1
            pool.calls.append((future, handler, context, done))
        return None

    def idle_workers(self) -> int:
        # A call counts from submit() until its done callbacks have run on
        # its worker: never fewer busy workers than there really are.
        with self._lock:
            if self._stopped or _exiting:
                return 0
            capacity = self.max_workers if self._pool is None else self._pool.capacity
            return max(0, capacity - sum(pool.busy for pool in self._pools))

    def stop(self, timeout: float | None = None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        # called from a call of this runner's (its handler, or its done):
        # that call cannot finish while this waits, and does not count
        own = 1 if getattr(_thread_state, "runner", None) is self else 0
        with self._lock:
            self._stopped = True
            # Every call in flight now, also those a previous stop() gave up
            # on (a second stop() must not report them finished), but none
            # of a start() meanwhile: work that goes on could hold this
            # stop() forever.
            pools = list(self._pools)
            self._close()
            while sum(pool.busy for pool in pools) > own:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._drained.wait(left)
        return True

    def _finished_one(self, pool: _Pool) -> None:
        """A call of *pool*'s has run, done callbacks included. Under the lock."""
        pool.busy -= 1
        if pool.busy <= 1:  # a stop() may wait (from a call of its own: for 1)
            if not pool.busy and pool.closing:
                self._pools.remove(pool)
            self._drained.notify_all()

    def _close(self) -> list[threading.Thread]:
        """Let the threads go once the calls submitted so far have run; the
        threads. Under the lock."""
        pool, self._pool = self._pool, None
        if pool is None:
            return []
        pool.closing = True
        if not pool.busy:
            self._pools.remove(pool)
        # Every thread, not only the parked ones: one whose wake-up was lost
        # (an exception between taking it off the parked list and waking
        # it) must not keep the interpreter from exiting.
        for wake in pool.wakes:
            try:
                wake.release()
            except RuntimeError:  # already released: the thread is awake
                pass
        return pool.threads


def _summon(pool: _Pool) -> bool:
    """Make sure a thread will take the next call: one awake already, a
    waiting one woken, or a new one started. False only when the pool has
    no thread and none can be started. Under the runner's lock (waking a
    thread never blocks)."""
    if pool.searching:
        return True
    if pool.parked:
        pool.searching += 1  # counted now: the next call needs no other
        pool.parked.pop().release()
        return True
    if len(pool.threads) >= pool.capacity:
        return True  # every thread is in a call: the next one free takes it
    wake = threading.Lock()
    wake.acquire()
    thread = threading.Thread(target=_worker, args=(pool, wake), daemon=False,
                              name=f"pjcore-run_{len(pool.threads)}")
    try:
        thread.start()
    except RuntimeError as exc:  # interpreter shutting down, or no threads left
        # the calls wait for the threads there are: none of the others
        # counts as idle (see idle_workers)
        pool.capacity, pool.start_error = len(pool.threads), exc
        return bool(pool.threads)
    pool.threads.append(thread)
    pool.wakes.append(wake)
    pool.searching += 1
    return True


def _worker(pool: _Pool, wake: threading.Lock) -> None:
    """A pool thread: takes calls until the pool closes. Counted searching
    by whoever started or woke it; *wake* is released to wake it."""
    runner = pool.runner
    lock = runner._lock
    _thread_state.runner = runner  # see stop()
    finished = False
    while True:
        with lock:
            if finished:
                # only now is the worker free again (see idle_workers)
                runner._finished_one(pool)
                pool.searching += 1
                finished = False
            if pool.calls:
                call = pool.calls.popleft()
                pool.searching -= 1
                if pool.calls:  # the next call gets a thread too
                    _summon(pool)
            elif pool.closing:
                return
            else:
                pool.parked.append(wake)
                pool.searching -= 1
                call = None
        if call is None:
            wake.acquire()  # until summoned, or the pool closes
            continue
        future, handler, context, done = call
        try:
            if future is None:
                _deliver(done, call_handler(handler, context), context)  # type: ignore[arg-type]
            elif future.set_running_or_notify_cancel():
                # the caller's done callbacks run here, on this worker
                future.set_result(call_handler(handler, context))
        except BaseException:
            # *done* or a done callback raised past the call (a
            # BaseException): this thread ends, so it no longer counts, and
            # another takes the calls that wait.
            with lock:
                runner._finished_one(pool)
                pool.threads.remove(threading.current_thread())
                pool.wakes.remove(wake)
                if pool.calls:
                    _summon(pool)
            raise
        finished = True
        # not kept alive (the context, the handler) while waiting
        del call, future, handler, context, done


def _deliver(done: Callable[[Outcome], object], outcome: Outcome, context: JobContext) -> None:
    """*done*(*outcome*), an Exception it raises logged, as a future logs a
    done callback's: the thread goes on (a BaseException still ends it)."""
    try:
        done(outcome)
    except Exception:
        logger.exception("pjcore runner: the done callback of run {run} raised",
                         run=context.run_id)


#: the runner whose pool thread this is (see ThreadRunner.stop)
_thread_state = threading.local()

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
