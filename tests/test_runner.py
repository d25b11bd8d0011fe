"""The thread runner and call_handler: outcomes, async handlers, logging context, stop()."""

from __future__ import annotations

import asyncio
import random
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest
from pjtest import Concurrency, wait_for
from loguru import logger

from pjcore.abc import Outcome
from pjcore.context import JobContext, RunCancelled
from pjcore.contrib.runner import MAX_DETAIL, ThreadRunner, call_handler
from pjcore.exceptions import ConfigurationError
from pjcore.models import RunTrigger

T0 = datetime(2026, 1, 15, 10, 30, tzinfo=timezone.utc)


def make_context(run_id: str = "run-1", **fields) -> JobContext:
    fields.setdefault("plugin_id", "plugin-a")
    fields.setdefault("plugin_key", "acme")
    fields.setdefault("job_key", "sync")
    return JobContext(
        run_id=run_id,
        trigger=RunTrigger.schedule,
        scheduled_for=T0,
        logger=logger.bind(pj_run=run_id),
        **fields,
    )


@pytest.fixture
def captured():
    """Records pjcore-visible loguru messages with their extras."""
    records: list[dict] = []
    logger.enable("pjcore")
    sink = logger.add(lambda message: records.append(message.record), level="DEBUG")
    yield records
    logger.remove(sink)
    logger.disable("pjcore")


@pytest.fixture
def ended(monkeypatch):
    """The exception types that ended threads (threading.excepthook)."""
    types: list[type] = []
    monkeypatch.setattr(threading, "excepthook", lambda args: types.append(args.exc_type))
    return types


@pytest.fixture
def runner():
    runner = ThreadRunner(max_workers=4)
    yield runner
    runner.stop(5)


# -- call_handler: outcomes -----------------------------------------------------------------


def test_sync_handler_succeeds_and_receives_the_context():
    seen = []
    outcome = call_handler(seen.append, ctx := make_context())
    assert (outcome.status, outcome.error, outcome.error_detail) == ("succeeded", None, None)
    assert seen == [ctx]


def test_return_value_of_a_sync_handler_is_ignored():
    assert call_handler(lambda ctx: 42, make_context()).status == "succeeded"


def test_async_handler_is_awaited():
    steps = []

    async def handler(ctx):
        steps.append("start")
        await asyncio.sleep(0.01)
        assert not await ctx.sleep(0.01)  # not cancelled: slept the whole time
        steps.append("end")

    assert call_handler(handler, make_context()).status == "succeeded"
    assert steps == ["start", "end"]


def test_sync_function_returning_an_awaitable_is_awaited():
    done = []

    async def work():
        done.append(True)

    assert call_handler(lambda ctx: work(), make_context()).status == "succeeded"
    assert done == [True]


def test_exception_gives_failed_with_message_and_short_traceback():
    def explode(ctx):
        raise ValueError("boom")

    outcome = call_handler(explode, make_context())
    assert outcome.status == "failed"
    assert outcome.error == "boom"
    assert outcome.error_detail.startswith("Traceback")
    assert "ValueError: boom" in outcome.error_detail
    assert "explode" in outcome.error_detail


def test_exception_without_message_is_named_by_its_class():
    class QuietError(Exception):
        pass

    def handler(ctx):
        raise QuietError()

    assert call_handler(handler, make_context()).error == "QuietError"


def test_traceback_summary_keeps_only_the_last_frames():
    def recurse(n):
        if n == 0:
            raise RuntimeError("deep")
        recurse(n - 1)

    outcome = call_handler(lambda ctx: recurse(30), make_context())
    assert outcome.error == "deep"
    assert outcome.error_detail.count('File "') <= 5
    assert "<lambda>" not in outcome.error_detail  # the outer frames were dropped
    assert outcome.error_detail.rstrip().endswith("RuntimeError: deep")


def test_traceback_summary_is_bounded():
    def handler(ctx):
        raise ValueError("x" * 20_000)

    outcome = call_handler(handler, make_context())
    assert len(outcome.error_detail) <= MAX_DETAIL + 3
    assert outcome.error_detail.startswith("...")
    assert outcome.error == "x" * 20_000  # the message itself is kept whole


def test_non_exception_base_exception_gives_failed():
    class Weird(BaseException):
        pass

    def handler(ctx):
        raise Weird("odd")

    outcome = call_handler(handler, make_context())
    assert (outcome.status, outcome.error) == ("failed", "Weird: odd")
    assert "Weird: odd" in outcome.error_detail


def test_system_exit_in_a_handler_gives_failed():
    def handler(ctx):
        raise SystemExit(3)

    outcome = call_handler(handler, make_context())
    assert (outcome.status, outcome.error) == ("failed", "SystemExit: 3")


def test_run_cancelled_gives_cancelled():
    def handler(ctx):
        raise RunCancelled("stop now")

    outcome = call_handler(handler, make_context())
    assert (outcome.status, outcome.error, outcome.error_detail) == ("cancelled", "stop now", None)


def test_check_after_a_cancel_request_gives_cancelled_with_the_reason():
    ctx = make_context()
    ctx.request_cancel("timed out after 5s")
    ctx.request_cancel("later reasons do not replace the first")
    outcome = call_handler(lambda c: c.check(), ctx)
    assert (outcome.status, outcome.error) == ("cancelled", "timed out after 5s")
    assert ctx.cancelled and ctx.cancel_reason == "timed out after 5s"


def test_async_exceptions_and_cancellation():
    async def failing(ctx):
        await asyncio.sleep(0)
        raise KeyError("missing")

    async def cancelled(ctx):
        ctx.check()

    async def task_cancelled(ctx):
        raise asyncio.CancelledError()

    failed = call_handler(failing, make_context())
    assert (failed.status, failed.error) == ("failed", "'missing'")
    assert "KeyError" in failed.error_detail

    ctx = make_context()
    ctx.request_cancel("Plugin disabled")
    assert (call_handler(cancelled, ctx).status, call_handler(cancelled, ctx).error) == (
        "cancelled", "Plugin disabled")
    assert call_handler(task_cancelled, ctx).status == "cancelled"


def test_async_sleep_returns_early_when_cancelled():
    ctx = make_context()

    async def handler(c):
        return await c.sleep(30)

    threading.Timer(0.05, ctx.request_cancel, args=("stop",)).start()
    started = time.monotonic()
    assert call_handler(handler, ctx).status == "succeeded"
    assert time.monotonic() - started < 5


# -- logging context ------------------------------------------------------------------------


def test_logs_inside_a_handler_carry_plugin_job_and_run(captured):
    def handler(ctx):
        logger.info("from the global logger")
        ctx.logger.info("from the context logger")

    call_handler(handler, make_context(run_id="run-42"))
    logger.info("after the call")
    inside = [r for r in captured if r["message"].startswith("from the")]
    assert len(inside) == 2
    for record in inside:
        assert record["extra"]["pj_plugin"] == "acme"
        assert record["extra"]["pj_job"] == "sync"
        assert record["extra"]["pj_run"] == "run-42"
    after = next(r for r in captured if r["message"] == "after the call")
    assert "pj_run" not in after["extra"]  # the context does not leak out of the call


def test_async_handler_logs_carry_the_context(captured):
    async def handler(ctx):
        await asyncio.sleep(0)
        logger.info("async")

    call_handler(handler, make_context(run_id="run-7"))
    record = next(r for r in captured if r["message"] == "async")
    assert record["extra"]["pj_run"] == "run-7"


# -- ThreadRunner ---------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [0, -1, True, 2.0, "2", None])
def test_max_workers_must_be_a_positive_integer(bad):
    with pytest.raises(ConfigurationError):
        ThreadRunner(max_workers=bad)


def test_submit_never_blocks_and_resolves_to_an_outcome(runner):
    gate = threading.Event()
    started = time.monotonic()
    futures = [runner.submit(lambda ctx: gate.wait(5), make_context(f"r{i}")) for i in range(8)]
    assert time.monotonic() - started < 0.5  # 8 submissions, 4 workers: none waited
    assert not any(f.done() for f in futures)
    gate.set()
    outcomes = [f.result(5) for f in futures]
    assert all(isinstance(o, Outcome) and o.status == "succeeded" for o in outcomes)


def test_failing_handler_resolves_the_future_with_a_failed_outcome(runner):
    def handler(ctx):
        raise RuntimeError("nope")

    outcome = runner.submit(handler, make_context()).result(5)
    assert (outcome.status, outcome.error) == ("failed", "nope")


def test_at_most_max_workers_calls_run_at_once():
    runner = ThreadRunner(max_workers=2)
    gate = threading.Event()
    handler = Concurrency(lambda: gate.wait(5))
    try:
        futures = [runner.submit(handler, make_context(f"r{i}")) for i in range(5)]
        wait_for(lambda: handler.level == 2)
        time.sleep(0.05)
        assert handler.level == 2
        gate.set()
        for f in futures:
            assert f.result(5).status == "succeeded"
        assert handler.peak == 2
    finally:
        runner.stop(5)


def test_async_handlers_run_concurrently_in_separate_loops(runner):
    both = threading.Barrier(2, timeout=5)

    async def handler(ctx):
        await asyncio.sleep(0)
        both.wait()  # blocks its own loop only; the other handler still arrives

    futures = [runner.submit(handler, make_context(f"r{i}")) for i in range(2)]
    assert [f.result(5).status for f in futures] == ["succeeded", "succeeded"]


def test_submit_starts_the_runner_on_first_use():
    runner = ThreadRunner(max_workers=1)
    try:
        assert runner.submit(lambda ctx: None, make_context()).result(5).status == "succeeded"
    finally:
        assert runner.stop(5)


def test_stop_waits_up_to_timeout_and_reports_unfinished_calls():
    runner = ThreadRunner(max_workers=2)
    gate = threading.Event()
    future = runner.submit(lambda ctx: gate.wait(5), make_context())
    wait_for(lambda: future.running())
    started = time.monotonic()
    assert runner.stop(timeout=0.1) is False
    assert 0.09 <= time.monotonic() - started < 2
    # a second stop still sees the call in flight
    assert runner.stop(timeout=0) is False
    gate.set()
    assert future.result(5).status == "succeeded"
    assert runner.stop(timeout=1) is True


def test_stop_returns_true_once_every_call_finished():
    runner = ThreadRunner(max_workers=2)
    futures = [runner.submit(lambda ctx: time.sleep(0.05), make_context(f"r{i}")) for i in range(3)]
    assert runner.stop(timeout=5) is True
    assert all(f.done() and f.result().status == "succeeded" for f in futures)


def test_stop_is_idempotent_and_safe_before_start():
    runner = ThreadRunner()
    assert runner.stop() is True
    assert runner.stop(0) is True


def test_calls_queued_before_stop_still_run():
    runner = ThreadRunner(max_workers=1)
    gate = threading.Event()
    ran = []
    first = runner.submit(lambda ctx: gate.wait(5), make_context("a"))
    queued = runner.submit(lambda ctx: ran.append(ctx.run_id), make_context("b"))
    wait_for(first.running)
    assert runner.stop(timeout=0) is False
    gate.set()
    assert queued.result(5).status == "succeeded"
    assert ran == ["b"]


def test_no_work_is_accepted_after_stop_until_started_again():
    runner = ThreadRunner(max_workers=1)
    called = []
    runner.submit(called.append, make_context("a")).result(5)
    runner.stop(5)
    refused = runner.submit(called.append, make_context("b")).result(1)
    assert refused.status == "cancelled" and "stopped" in refused.error
    runner.start()
    try:
        assert runner.submit(called.append, make_context("c")).result(5).status == "succeeded"
    finally:
        runner.stop(5)
    assert [c.run_id for c in called] == ["a", "c"]


def test_idle_workers_counts_a_worker_busy_until_its_done_callbacks_ran():
    runner = ThreadRunner(max_workers=2)
    go, in_callback, release = threading.Event(), threading.Event(), threading.Event()
    try:
        assert runner.idle_workers() == 2
        future = runner.submit(lambda ctx: go.wait(5), make_context())
        assert runner.idle_workers() == 1  # taken at submit, before the worker starts
        # a done callback runs on the worker (the scheduler records ends there)
        future.add_done_callback(lambda f: (in_callback.set(), release.wait(5)))
        go.set()
        assert in_callback.wait(5)
        assert future.done() and runner.idle_workers() == 1  # still in the callback
        release.set()
        wait_for(lambda: runner.idle_workers() == 2, 5, "the worker free again")
    finally:
        go.set()
        release.set()
        runner.stop(5)
    assert runner.idle_workers() == 0  # stopped: takes nothing


EXIT_SCRIPT = """
import sys, threading
sys.path.insert(0, {tests!r})
from test_runner import make_context
from pjcore.contrib.runner import ThreadRunner

idle = ThreadRunner(max_workers=2)
idle.submit(lambda ctx: None, make_context("idle")).result(5)  # its thread now waits for work
busy = ThreadRunner(max_workers=1)
main_done = threading.Event()
def slow(ctx):
    main_done.wait(5)  # still running when the main thread ends
    print("ran", ctx.run_id, flush=True)
busy.submit(slow, make_context("a"))
busy.submit(slow, make_context("b"))  # queued behind a
print("main done", flush=True)
main_done.set()
"""


def test_at_interpreter_exit_submitted_calls_run_and_idle_threads_do_not_hold_it(tmp_path):
    # never stopped: exit waits for the calls already submitted, as with a
    # ThreadPoolExecutor, and an idle worker does not keep the process alive
    script = tmp_path / "exit.py"
    script.write_text(EXIT_SCRIPT.format(tests=str(Path(__file__).parent)))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=30)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:3] == ["main done", "ran a", "ran b"]


def test_threads_are_started_as_calls_need_them():
    runner = ThreadRunner(max_workers=3)
    try:
        for i in range(4):  # one after the other: one thread does them all
            runner.submit(lambda ctx: None, make_context(f"r{i}")).result(5)
            wait_for(lambda: runner.idle_workers() == 3, 5, "the worker free again")
        assert len(runner._threads) == 1
        gate = threading.Event()
        futures = [runner.submit(lambda ctx: gate.wait(5), make_context(f"s{i}"))
                   for i in range(5)]
        # each call that blocks gets a thread, the one taking it starting
        # the next: never more than max_workers
        wait_for(lambda: len(runner._threads) == 3, 5, "a thread for each call up to the cap")
        time.sleep(0.05)
        assert len(runner._threads) == 3
        assert sum(f.running() for f in futures) == 3
        gate.set()
        assert [f.result(5).status for f in futures] == ["succeeded"] * 5
    finally:
        assert runner.stop(5)
    assert runner._threads == []


def test_a_call_no_thread_can_take_is_cancelled_and_says_why(monkeypatch):
    def refuse(self):
        raise RuntimeError("can't start new thread")
    monkeypatch.setattr(threading.Thread, "start", refuse)
    runner = ThreadRunner(max_workers=2)
    outcome = runner.submit(lambda ctx: None, make_context()).result(1)
    assert outcome.status == "cancelled"
    assert outcome.error == "the runner cannot start work: can't start new thread"
    assert runner.stop(1) is True


def test_when_no_more_threads_start_calls_wait_and_no_worker_counts_idle(monkeypatch):
    runner = ThreadRunner(max_workers=4)
    gate = threading.Event()
    try:
        first = runner.submit(lambda ctx: gate.wait(5), make_context("a"))
        wait_for(first.running)

        def refuse(self):
            raise RuntimeError("can't start new thread")
        monkeypatch.setattr(threading.Thread, "start", refuse)
        second = runner.submit(lambda ctx: None, make_context("b"))  # waits for the one thread
        monkeypatch.undo()
        assert runner.idle_workers() == 0  # not 2: a run started for one would wait
        assert not second.done()
        gate.set()
        assert second.result(5).status == "succeeded"
    finally:
        gate.set()
        runner.stop(5)


# -- waking threads ------------------------------------------------------------------


def warm(runner: ThreadRunner, threads: int) -> None:
    """Give *runner* that many threads, all waiting for work again."""
    gate = threading.Event()
    futures = [runner.submit(lambda ctx: gate.wait(5), make_context(f"warm{i}"))
               for i in range(threads)]
    wait_for(lambda: sum(f.running() for f in futures) == threads, 5, "every thread busy")
    gate.set()
    for future in futures:
        future.result(5)
    wait_for(lambda: runner.idle_workers() == runner.max_workers, 5, "the threads free")
    wait_for(lambda: len(runner._pool.parked) == threads, 5, "the threads waiting")


def test_blocking_calls_wake_one_waiting_thread_each():
    # a thread that takes a call wakes the next one before it runs it
    runner = ThreadRunner(max_workers=3)
    try:
        warm(runner, 3)
        gate = threading.Event()
        futures = [runner.submit(lambda ctx: gate.wait(5), make_context(f"b{i}"))
                   for i in range(3)]
        wait_for(lambda: sum(f.running() for f in futures) == 3, 5, "all three running")
        assert len(runner._threads) == 3  # the waiting ones, no new thread
        gate.set()
        assert [f.result(5).status for f in futures] == ["succeeded"] * 3
    finally:
        runner.stop(5)


def test_a_done_callback_may_submit_again():
    runner = ThreadRunner(max_workers=1)
    second: list = []
    try:
        first = runner.submit(lambda ctx: None, make_context("a"))
        first.add_done_callback(
            lambda f: second.append(runner.submit(lambda ctx: None, make_context("b"))))
        wait_for(lambda: second, 5, "the second call submitted")
        assert second[0].result(5).status == "succeeded"
    finally:
        runner.stop(5)


def test_stop_lets_waiting_threads_go_and_start_gives_a_new_pool():
    runner = ThreadRunner(max_workers=2)
    gate = threading.Event()
    warm(runner, 2)
    old_threads = list(runner._threads)
    slow = runner.submit(lambda ctx: gate.wait(5), make_context("slow"))
    wait_for(slow.running, 5, "the slow call running")
    assert runner.stop(timeout=0) is False
    runner.start()  # while the old pool still drains its slow call
    try:
        assert runner.submit(lambda ctx: None, make_context("new")).result(5).status == "succeeded"
        assert not slow.done()
        gate.set()
        assert slow.result(5).status == "succeeded"
        for thread in old_threads:
            thread.join(5)
            assert not thread.is_alive()
    finally:
        gate.set()
        runner.stop(5)


def test_stop_wakes_a_thread_whose_wake_up_was_lost():
    # An exception between taking a waiting thread off the list and waking
    # it (KeyboardInterrupt in submit) would leave it asleep: stop() wakes
    # every thread of the pool, so the interpreter can still exit.
    runner = ThreadRunner(max_workers=1)
    warm(runner, 1)
    (thread,) = runner._threads
    with runner._lock:
        pool = runner._pool
        pool.parked.pop()  # taken, never released
        pool.searching += 1
    assert runner.stop(5) is True
    thread.join(5)
    assert not thread.is_alive()


def test_a_thread_ended_by_its_done_callback_is_replaced(ended):
    # concurrent.futures lets a BaseException out of a done callback: that
    # thread ends, and the next call gets another one
    runner = ThreadRunner(max_workers=1)
    try:
        gate = threading.Event()
        first = runner.submit(lambda ctx: gate.wait(5), make_context("a"))
        (thread,) = runner._threads
        first.add_done_callback(lambda f: (_ for _ in ()).throw(SystemExit("callback")))
        queued = runner.submit(lambda ctx: None, make_context("b"))
        gate.set()
        thread.join(5)
        assert ended == [SystemExit] and thread not in runner._threads
        assert queued.result(5).status == "succeeded"
        wait_for(lambda: runner.idle_workers() == 1, 5, "the place free again")
        assert runner.submit(lambda ctx: None, make_context("c")).result(5).status == "succeeded"
    finally:
        runner.stop(5)


def test_many_submitters_short_and_blocking_calls_all_run_within_the_cap():
    runner = ThreadRunner(max_workers=5)
    rng = random.Random(7)
    holds = [rng.choice([0.0, 0.0, 0.0005, 0.002]) for _ in range(400)]
    handler = Concurrency(lambda: None)
    futures: list = []
    lock = threading.Lock()

    def submitter(offset: int) -> None:
        for i in range(offset, len(holds), 4):
            hold = holds[i]
            future = runner.submit(lambda ctx, hold=hold: (time.sleep(hold), handler(ctx)),
                                   make_context(f"r{i}"))
            with lock:
                futures.append(future)

    try:
        threads = [threading.Thread(target=submitter, args=(k,)) for k in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10)
        assert [f.result(10).status for f in futures] == ["succeeded"] * 400
        assert len(handler.done) == 400 and handler.peak <= 5 and len(runner._threads) <= 5
        wait_for(lambda: runner.idle_workers() == 5, 5, "every place free")
        # afterwards, calls that block still each get a thread at once
        gate = threading.Event()
        blocked = [runner.submit(lambda ctx: gate.wait(5), make_context(f"b{i}"))
                   for i in range(5)]
        wait_for(lambda: sum(f.running() for f in blocked) == 5, 5, "all five running")
        gate.set()
        assert [f.result(5).status for f in blocked] == ["succeeded"] * 5
    finally:
        runner.stop(5)


# -- call(): the outcome handed to a callable, without a future --------------------------


class Delivered:
    """The *done* of call(): the outcomes, the threads they came on."""

    def __init__(self, hold: threading.Event | None = None) -> None:
        self.outcomes: list[Outcome] = []
        self.threads: list[threading.Thread] = []
        self.arrived = threading.Event()
        self.hold = hold

    def __call__(self, outcome: Outcome) -> None:
        self.outcomes.append(outcome)
        self.threads.append(threading.current_thread())
        self.arrived.set()
        if self.hold is not None:
            self.hold.wait(5)


def test_call_hands_the_outcome_to_done_on_the_worker():
    runner = ThreadRunner(max_workers=2)
    seen, ok, bad = [], Delivered(), Delivered()
    try:
        runner.call(lambda ctx: seen.append(ctx.run_id), make_context("a"), ok)
        runner.call(lambda ctx: 1 / 0, make_context("b"), bad)
        assert ok.arrived.wait(5) and bad.arrived.wait(5)
    finally:
        assert runner.stop(5)
    assert seen == ["a"] and [o.status for o in ok.outcomes] == ["succeeded"]
    assert bad.outcomes[0].status == "failed" and "ZeroDivisionError" in bad.outcomes[0].error_detail
    assert ok.threads[0].name.startswith("pjcore-run")  # a worker of the runner


def test_call_on_a_stopped_runner_hands_a_cancelled_outcome_at_once():
    runner = ThreadRunner(max_workers=1)
    runner.stop(5)
    done = Delivered()
    runner.call(lambda ctx: pytest.fail("must not run"), make_context(), done)
    assert done.threads == [threading.current_thread()]  # before call() returned
    assert done.outcomes[0].status == "cancelled" and "stopped" in done.outcomes[0].error


def test_a_call_counts_busy_until_its_done_returned_and_stop_waits_for_it():
    runner = ThreadRunner(max_workers=2)
    release, gate = threading.Event(), threading.Event()
    done = Delivered(hold=release)
    try:
        runner.call(lambda ctx: gate.wait(5), make_context(), done)
        assert runner.idle_workers() == 1  # taken at call(), however far it got
        gate.set()
        assert done.arrived.wait(5)
        assert runner.idle_workers() == 1  # still in done
        started = time.monotonic()
        assert runner.stop(timeout=0.1) is False  # waits for done, then gives up
        assert 0.09 <= time.monotonic() - started < 2
        assert runner.stop(timeout=0) is False  # a second stop still sees it
        release.set()
        assert runner.stop(timeout=5) is True
    finally:
        release.set()
        runner.stop(5)


def test_a_thread_ended_by_its_done_is_replaced(ended):
    runner = ThreadRunner(max_workers=1)

    def fatal(outcome: Outcome) -> None:
        raise SystemExit("done")

    try:
        gate = threading.Event()
        runner.call(lambda ctx: gate.wait(5), make_context("a"), fatal)
        (thread,) = runner._threads
        after = Delivered()
        runner.call(lambda ctx: None, make_context("b"), after)
        gate.set()
        thread.join(5)
        assert ended == [SystemExit] and thread not in runner._threads
        assert after.arrived.wait(5) and after.outcomes[0].status == "succeeded"
        wait_for(lambda: runner.idle_workers() == 1, 5, "the place free again")
    finally:
        runner.stop(5)


def test_a_subclass_that_overrides_submit_sees_the_calls_of_call():
    class Counting(ThreadRunner):
        submitted = 0

        def submit(self, handler, context):
            type(self).submitted += 1
            return super().submit(handler, context)

    runner = Counting(max_workers=1)
    done = Delivered()
    try:
        runner.call(lambda ctx: None, make_context(), done)
        assert done.arrived.wait(5) and done.outcomes[0].status == "succeeded"
    finally:
        runner.stop(5)
    assert Counting.submitted == 1


def test_the_default_call_goes_through_submit_and_reports_a_raising_future():
    from concurrent.futures import Future

    from pjcore.abc import Runner

    class FutureOnly(Runner):
        """A third party's runner that only knows submit()."""

        max_workers = 1

        def __init__(self, result) -> None:
            self.result = result

        def start(self) -> None:
            pass

        def submit(self, handler, context):
            future: Future = Future()
            if isinstance(self.result, BaseException):
                future.set_exception(self.result)
            else:
                handler(context)
                future.set_result(self.result)
            return future

        def stop(self, timeout=None) -> bool:
            return True

    good, broken = Delivered(), Delivered()
    called = []
    FutureOnly(Outcome("succeeded")).call(called.append, make_context("a"), good)
    FutureOnly(RuntimeError("lost")).call(called.append, make_context("b"), broken)
    assert [c.run_id for c in called] == ["a"]
    assert good.outcomes[0].status == "succeeded"
    assert broken.outcomes[0].status == "failed" and "lost" in broken.outcomes[0].error


def test_stop_from_a_done_waits_for_the_other_calls_not_its_own():
    runner = ThreadRunner(max_workers=2)
    gate = threading.Event()
    results: list[bool] = []
    other = Delivered()
    runner.call(lambda ctx: gate.wait(5), make_context("other"), other)
    stopper = Delivered()
    def stop_twice(outcome: Outcome) -> None:
        results.append(runner.stop(timeout=0.2))
        threading.Timer(0.05, gate.set).start()
        started = time.monotonic()
        results.append(runner.stop(timeout=5))
        results.append(time.monotonic() - started)
        stopper(outcome)

    runner.call(lambda ctx: None, make_context("stopper"), stop_twice)
    assert stopper.arrived.wait(10)
    # the other call held the first stop() to its timeout; the second saw it
    # finish, at once (woken, not at its timeout)
    assert results[:2] == [False, True] and results[2] < 1, results
    assert other.outcomes[0].status == "succeeded"
    assert runner.stop(5)


def test_stop_from_the_only_call_returns_at_once():
    runner = ThreadRunner(max_workers=1)
    results: list[tuple[bool, float]] = []
    done = Delivered()

    def stop_inside(outcome: Outcome) -> None:
        started = time.monotonic()
        results.append((runner.stop(timeout=2), time.monotonic() - started))
        done(outcome)

    runner.call(lambda ctx: None, make_context(), stop_inside)
    assert done.arrived.wait(5)
    ((stopped, took),) = results
    assert stopped is True and took < 1


def test_an_exception_from_done_is_logged_and_the_thread_goes_on(captured, ended):
    runner = ThreadRunner(max_workers=1)

    def broken(outcome: Outcome) -> None:
        raise ValueError("done broke")

    try:
        runner.call(lambda ctx: None, make_context("a"), broken)
        wait_for(lambda: runner.idle_workers() == 1, 5, "the place free again")
        (thread,) = runner._threads
        after = Delivered()
        runner.call(lambda ctx: None, make_context("b"), after)
        assert after.arrived.wait(5) and after.threads == [thread]  # the same thread
    finally:
        runner.stop(5)
    assert ended == []
    (record,) = [r for r in captured if "done callback of run" in r["message"]]
    assert record["exception"].type is ValueError and "run a" in record["message"]


def test_a_refused_call_whose_done_raises_does_not_raise_from_call(captured):
    runner = ThreadRunner(max_workers=1)
    runner.stop(5)

    def broken(outcome: Outcome) -> None:
        raise ValueError("done broke")

    runner.call(lambda ctx: None, make_context("a"), broken)  # does not raise
    assert any("done callback of run a" in r["message"] for r in captured)


def test_a_stop_waiting_while_the_runner_is_started_again_still_returns():
    runner = ThreadRunner(max_workers=1)
    gate = threading.Event()
    done = Delivered()
    runner.call(lambda ctx: gate.wait(5), make_context(), done)
    results: list[bool] = []
    # no timeout: only a wake-up ends the wait (daemon: a failure must not hold the exit)
    stopper = threading.Thread(target=lambda: results.append(runner.stop()), daemon=True)
    stopper.start()
    wait_for(lambda: runner.idle_workers() == 0 and runner._stopped, 5, "the stop")
    runner.start()
    gate.set()
    stopper.join(5)
    assert not stopper.is_alive() and results == [True]
    runner.stop(5)


@pytest.mark.parametrize("later", ["one slow call", "a steady load"])
def test_a_stop_waits_for_the_calls_it_found_not_for_those_after_a_restart(later):
    runner = ThreadRunner(max_workers=2)
    gate, release = threading.Event(), threading.Event()
    runner.call(lambda ctx: gate.wait(5), make_context("before"), Delivered())
    results: list[bool] = []
    stopper = threading.Thread(target=lambda: results.append(runner.stop()), daemon=True)
    stopper.start()
    wait_for(lambda: runner._stopped, 5, "the stop")
    runner.start()
    if later == "one slow call":
        runner.call(lambda ctx: release.wait(5), make_context("after"), Delivered())
    else:
        def again(outcome):  # each call submits the next: never a moment without one
            if not release.is_set():
                runner.call(lambda ctx: time.sleep(0.001), make_context("after"), again)
        again(None)
    try:
        gate.set()
        stopper.join(3)
        assert not stopper.is_alive() and results == [True]
    finally:
        release.set()
        assert runner.stop(5)


def test_a_submit_patched_on_the_runner_sees_the_calls_of_call(monkeypatch):
    runner = ThreadRunner(max_workers=1)
    seen = []
    real = runner.submit
    monkeypatch.setattr(runner, "submit", lambda handler, ctx: (seen.append(ctx.run_id),
                                                                real(handler, ctx))[1])
    done = Delivered()
    try:
        runner.call(lambda ctx: None, make_context("a"), done)
        assert done.arrived.wait(5) and done.outcomes[0].status == "succeeded"
    finally:
        runner.stop(5)
    assert seen == ["a"]
