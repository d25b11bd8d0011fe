"""ThreadScheduler over real stores and a real runner, with time driven by a ManualClock.

Rounds are driven by ``tick()`` where the order matters; the loop thread is
started where waking and sleeping are the point. Handlers are gated with
events, so "in flight" is a state the test controls, not a race.
"""

from __future__ import annotations

import contextlib
import resource
import threading
import time
from datetime import datetime, timedelta, timezone
from typing import Any, Callable

import pytest
from pjtest import Concurrency, wait_for
from loguru import logger

from pjcore.abc import Outcome
from pjcore.clock import ManualClock, SystemClock
from pjcore.context import JobContext
from pjcore.contrib.memory import MemoryJobStore
from pjcore.contrib.peewee_store import PeeweeJobStore
from pjcore.contrib.runner import ThreadRunner
from pjcore.contrib.scheduler import ThreadScheduler
from pjcore.exceptions import (
    ConfigurationError,
    JobAlreadyRunning,
    JobLookupError,
    JobNotActive,
    PjError,
    PluginNotRunning,
    StoreError,
)
from pjcore.manifest import JobDeclaration, JobPolicy
from pjcore.models import RunStatus, RunTrigger

UTC = timezone.utc
T0 = datetime(2026, 1, 15, 10, 30, tzinfo=UTC)  # a Thursday
PLUGIN, KEY = "plugin-a", "acme"
OTHER, OTHER_KEY = "plugin-b", "beta"
EVERY_15 = "*/15 * * * *"


def hm(hour: int, minute: int, second: int = 0) -> datetime:
    return datetime(2026, 1, 15, hour, minute, second, tzinfo=UTC)


def decl(job_key: str, schedule: str | None = EVERY_15, **policy: Any) -> JobDeclaration:
    return JobDeclaration(job_key=job_key, display_name=job_key.title(), schedule=schedule,
                          policy=JobPolicy(**policy))


class Gate:
    """A handler that blocks until released, recording each context it gets."""

    def __init__(self, result: Callable[[JobContext], Any] | None = None) -> None:
        self.release = threading.Event()
        self.contexts: list[JobContext] = []
        self.saw_cancel: list[bool] = []
        self._result = result

    def __call__(self, ctx: JobContext) -> Any:
        self.contexts.append(ctx)
        self.release.wait(10)
        self.saw_cancel.append(ctx.cancelled)
        if self._result is not None:
            return self._result(ctx)

    @property
    def calls(self) -> int:
        return len(self.contexts)


class Env:
    """A store, a ManualClock, a ThreadRunner and a ThreadScheduler wired together."""

    def __init__(self, store, *, clock=None, handlers=None, max_concurrent: int = 10,
                 default_timeout: float | None = None, max_workers: int | None = None,
                 runner: ThreadRunner | None = None, **options: Any) -> None:
        self.store = store
        self.clock = clock or ManualClock(T0)
        self.handlers: dict[tuple[str, str], Callable] = dict(handlers or {})
        self.events: list[tuple[str, Any, Any]] = []
        #: runs whose handler has been called
        self.entered: set[str] = set()
        self.runner = runner or ThreadRunner(max_workers=max_workers or max_concurrent)
        self.scheduler = ThreadScheduler(
            store=store, runner=self.runner, clock=self.clock, resolve=self._resolve,
            notify=lambda name, run, job: self.events.append((name, run, job)),
            max_concurrent=max_concurrent, default_timeout=default_timeout, **options,
        )

    # -- setup --

    def load(self, *decls: JobDeclaration, plugin: str = PLUGIN, key: str = KEY,
             register: bool = True) -> dict[str, Any]:
        self.store.sync_jobs(plugin, key, list(decls), now=self.clock.now())
        if register:
            self.scheduler.register_plugin(plugin, key)
        return {j.job_key: j for j in self.store.list_jobs(plugin)}

    def _resolve(self, plugin_key: str, job_key: str) -> Callable | None:
        handler = self.handlers.get((plugin_key, job_key))
        if handler is None:
            return None

        def entered(ctx: JobContext) -> Any:
            self.entered.add(ctx.run_id)
            return handler(ctx)
        return entered

    def handle(self, job_key: str, handler: Callable, key: str = KEY) -> Callable:
        self.handlers[(key, job_key)] = handler
        return handler

    def run_due_together(self, count: int, hold: Callable[[], Any]) -> Concurrency:
        """*count* every-minute jobs sharing one handler that does *hold*,
        run by the started loop from their slot at 10:31 until every one has
        run and settled; the handler, with its peak concurrency."""
        self.load(*[decl(f"j{i}", "* * * * *") for i in range(count)])
        handler = Concurrency(hold)
        for i in range(count):
            self.handle(f"j{i}", handler)
        self.scheduler.start()
        self.clock.set(hm(10, 31))
        wait_for(lambda: len(handler.done) == count, what="every job run")
        self.settle()
        return handler

    # -- observation --

    def job(self, job_key: str, plugin: str = PLUGIN):
        return self.store.get_job_by_key(plugin, job_key)

    def runs(self, job_key: str | None = None, plugin: str = PLUGIN) -> list:
        """Runs oldest first."""
        job_id = None if job_key is None else self.job(job_key, plugin).id
        page = self.store.list_runs(plugin_id=plugin, job_id=job_id, limit=1000)
        # runs created in one tick share created_at: their slots order them
        return sorted(page.runs, key=lambda r: (r.created_at, r.scheduled_for or r.created_at))

    def run(self, run_id: str):
        return self.store.get_run(run_id)

    def settle(self, timeout: float = 5.0) -> None:
        """Wait until no run is in flight (recorded, announced, job released)."""
        wait_for(lambda: not self.scheduler.diagnostics()["active_run_ids"], timeout,
                 "no run in flight")

    def wait_status(self, run_id: str, *statuses: str, timeout: float = 5.0):
        """The run once it has one of *statuses*; waiting for ``running``
        alone also waits for its handler to be called (a run the loop
        starts is recorded running before its worker picks it up)."""
        handler = statuses == ("running",)
        return wait_for(lambda: (r := self.run(run_id)) is not None
                        and r.status.value in statuses
                        and (not handler or run_id in self.entered) and r, timeout,
                        f"run {run_id} in {statuses}" + (" and its handler called"
                                                         if handler else ""))

    def events_of(self, name: str) -> list:
        return [(run, job) for n, run, job in self.events if n == name]

    def close(self) -> None:
        self.scheduler.stop(timeout=0.5)
        self.runner.stop(0.5)
        self.store.close()


@pytest.fixture(params=["memory", "sqlite"])
def make_store(request, tmp_path):
    def make(name: str = "jobs"):
        if request.param == "memory":
            return MemoryJobStore()
        return PeeweeJobStore(f"sqlite:///{tmp_path}/{name}.db")
    return make


@pytest.fixture
def memory_env():
    envs: list[Env] = []

    def make(**options: Any) -> Env:
        env = Env(MemoryJobStore(), **options)
        envs.append(env)
        return env

    yield make
    for env in envs:
        env.close()


@pytest.fixture
def env_factory(make_store):
    envs: list[Env] = []

    def make(**options: Any) -> Env:
        env = Env(make_store(), **options)
        envs.append(env)
        return env

    yield make
    for env in envs:
        env.close()


# -- construction ---------------------------------------------------------------------------


@pytest.mark.parametrize("options", [
    {"max_concurrent": 0}, {"max_concurrent": True}, {"max_concurrent": 1.5},
    {"default_timeout": 0}, {"default_timeout": -1}, {"default_timeout": "5"},
    {"max_idle": 0},
])
def test_bad_options_are_refused(options):
    store = MemoryJobStore()
    with pytest.raises(ConfigurationError):
        ThreadScheduler(store=store, runner=ThreadRunner(), resolve=lambda p, j: None, **options)
    with pytest.raises(ConfigurationError):
        ThreadScheduler(store=object(), runner=ThreadRunner(), resolve=lambda p, j: None)


# -- start, stop, diagnostics ---------------------------------------------------------------


def scheduler_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "pjcore-scheduler" and t.is_alive()]


def test_diagnostics_initial_state(memory_env):
    diag = memory_env().scheduler.diagnostics()
    assert diag["running"] is False
    assert diag["tick_count"] == 0
    assert diag["last_tick_at"] is None
    assert diag["active_run_ids"] == [] and diag["busy_job_ids"] == []
    assert diag["next_wake_at"] is None
    assert diag["registered_plugins"] == []


def test_start_is_idempotent(memory_env):
    env = memory_env()
    before = len(scheduler_threads())
    env.scheduler.start()
    env.scheduler.start()
    assert env.scheduler.diagnostics()["running"] is True
    assert len(scheduler_threads()) == before + 1
    env.scheduler.stop()
    assert env.scheduler.diagnostics()["running"] is False
    assert len(scheduler_threads()) == before


def test_stop_is_safe_before_start_and_twice(memory_env):
    env = memory_env()
    env.scheduler.stop()
    env.scheduler.stop(timeout=0)
    env.scheduler.start()
    env.scheduler.stop()
    env.scheduler.stop()
    assert env.scheduler.diagnostics()["running"] is False


def test_no_tick_after_stop(memory_env):
    env = memory_env()
    env.load(decl("sync", "* * * * *"))
    env.handle("sync", lambda ctx: None)
    env.scheduler.start()
    wait_for(lambda: env.scheduler.diagnostics()["tick_count"] >= 1)
    env.scheduler.stop()
    ticks = env.scheduler.diagnostics()["tick_count"]
    env.clock.advance(hours=2)
    env.scheduler.wake()
    time.sleep(0.1)
    assert env.scheduler.diagnostics()["tick_count"] == ticks
    assert env.runs() == []


def test_ticks_are_counted_and_stamped_with_the_clock(memory_env):
    env = memory_env()
    env.scheduler.tick()
    assert env.scheduler.diagnostics()["tick_count"] == 1
    assert env.scheduler.diagnostics()["last_tick_at"] == T0
    env.clock.advance(seconds=42)
    env.scheduler.tick()
    diag = env.scheduler.diagnostics()
    assert diag["tick_count"] == 2
    assert diag["last_tick_at"] == T0 + timedelta(seconds=42)


def test_tick_count_increments_even_when_the_store_fails(memory_env):
    env = memory_env()
    env.load(decl("sync"))
    env.store.close()
    with pytest.raises(StoreError):
        env.scheduler.tick()
    with pytest.raises(StoreError):
        env.scheduler.tick()
    diag = env.scheduler.diagnostics()
    assert diag["tick_count"] == 2 and diag["last_tick_at"] == T0


def test_loop_survives_a_failing_store_and_backs_off(memory_env):
    env = memory_env()
    env.load(decl("sync"))
    env.store.close()
    env.scheduler.start()
    wait_for(lambda: env.scheduler.diagnostics()["consecutive_errors"] >= 1)
    diag = env.scheduler.diagnostics()
    assert diag["running"] and diag["tick_count"] >= 1
    # it sleeps (backs off) instead of retrying in a tight loop
    assert diag["next_wake_at"] > env.clock.now()
    time.sleep(0.1)
    assert env.scheduler.diagnostics()["tick_count"] <= 2


# -- a due job ------------------------------------------------------------------------------


def test_due_job_runs_once_for_its_slot(env_factory):
    env = env_factory()
    jobs = env.load(decl("sync"))
    gate = env.handle("sync", Gate())
    assert jobs["sync"].next_run_at == hm(10, 45)
    assert env.scheduler.tick() == 0  # 10:30: not due
    env.clock.set(hm(10, 45))
    assert env.scheduler.tick() == 1
    (run,) = env.runs()
    assert run.trigger is RunTrigger.schedule
    assert run.scheduled_for == hm(10, 45)
    env.wait_status(run.id, "running")
    env.clock.advance(minutes=2)
    gate.release.set()
    env.settle()
    done = env.run(run.id)
    assert done.status is RunStatus.succeeded
    assert done.started_at == hm(10, 45) and done.finished_at == hm(10, 47)
    assert done.duration_ms == 120_000 and done.error is None
    job = env.job("sync")
    # from the slot, not from the completion at 10:47
    assert job.next_run_at == hm(11, 0)
    assert job.last_run_at == hm(10, 45)
    assert env.scheduler.tick() == 0  # 10:47: the next slot is 11:00
    assert len(env.runs()) == 1


def test_run_goes_queued_running_succeeded_with_notifications(memory_env):
    # one worker, held by another job: the scheduled run waits queued
    env = memory_env(max_workers=1)
    env.load(decl("sync"), decl("manual", None))
    blocker = env.handle("manual", Gate())
    gate = env.handle("sync", Gate())
    env.scheduler.trigger(env.job("manual").id)
    wait_for(lambda: blocker.calls == 1)
    env.clock.set(hm(10, 45))
    assert env.scheduler.tick() == 1
    (run,) = env.runs("sync")
    assert env.run(run.id).status is RunStatus.queued
    blocker.release.set()
    env.wait_status(run.id, "running")
    gate.release.set()
    env.settle()
    assert env.run(run.id).status is RunStatus.succeeded
    started = [(r, j) for r, j in env.events_of("run_started") if r.id == run.id]
    finished = [(r, j) for r, j in env.events_of("run_finished") if r.id == run.id]
    assert len(started) == 1 and len(finished) == 1
    assert started[0][0].status is RunStatus.running and started[0][0].scheduled_for == hm(10, 45)
    assert finished[0][0].status is RunStatus.succeeded
    assert started[0][1].job_key == finished[0][1].job_key == "sync"


def test_cadence_never_drifts(env_factory):
    env = env_factory()
    env.load(decl("sync"))
    env.handle("sync", lambda ctx: None)
    slots = []
    for _ in range(4):
        slot = env.job("sync").next_run_at
        env.clock.set(slot)
        assert env.scheduler.tick() == 1
        env.clock.advance(minutes=2)  # each run "takes" two minutes
        env.settle()
        slots.append(env.runs()[-1].scheduled_for)
    assert slots == [hm(10, 45), hm(11, 0), hm(11, 15), hm(11, 30)]
    assert env.job("sync").next_run_at == hm(11, 45)


def test_handler_receives_the_context(memory_env):
    records: list[dict] = []
    logger.enable("pjcore")
    sink = logger.add(lambda m: records.append(m.record), level="DEBUG")
    try:
        env = memory_env()
        env.load(decl("sync"))
        seen = {}

        def handler(ctx: JobContext):
            seen.update(plugin_id=ctx.plugin_id, plugin_key=ctx.plugin_key, job_key=ctx.job_key,
                        run_id=ctx.run_id, trigger=ctx.trigger, scheduled_for=ctx.scheduled_for,
                        cancelled=ctx.cancelled)
            ctx.check()  # not cancelled: does not raise
            ctx.logger.info("hello from the handler")

        env.handle("sync", handler)
        env.clock.set(hm(10, 45, 30))
        env.scheduler.tick()
        env.settle()
    finally:
        logger.remove(sink)
        logger.disable("pjcore")
    (run,) = env.runs()
    assert run.status is RunStatus.succeeded
    assert seen == dict(plugin_id=PLUGIN, plugin_key=KEY, job_key="sync", run_id=run.id,
                        trigger=RunTrigger.schedule, scheduled_for=hm(10, 45), cancelled=False)
    record = next(r for r in records if r["message"] == "hello from the handler")
    assert (record["extra"]["pj_plugin"], record["extra"]["pj_job"], record["extra"]["pj_run"]) == (
        KEY, "sync", run.id)


# -- failures -------------------------------------------------------------------------------


def test_handler_error_fails_the_run_and_the_pointer_still_advances(env_factory):
    env = env_factory()
    env.load(decl("sync"))

    def broken_handler(ctx):
        raise ValueError("the API said no")

    env.handle("sync", broken_handler)
    env.clock.set(hm(10, 45))
    env.scheduler.tick()
    env.settle()
    (run,) = env.runs()
    assert run.status is RunStatus.failed
    assert run.error == "the API said no"
    assert "Traceback" in run.error_detail and "broken_handler" in run.error_detail
    assert "ValueError: the API said no" in run.error_detail
    assert len(run.error_detail) < 5000
    assert env.job("sync").next_run_at == hm(11, 0)
    (finished, _), = env.events_of("run_finished")
    assert finished.status is RunStatus.failed and finished.error == "the API said no"


def test_non_exception_raise_fails_the_run(memory_env):
    class Weird(BaseException):
        pass

    env = memory_env()
    env.load(decl("sync"))

    def handler(ctx):
        raise Weird("odd")

    env.handle("sync", handler)
    env.clock.set(hm(10, 45))
    env.scheduler.tick()
    env.settle()
    (run,) = env.runs()
    assert (run.status, run.error) == (RunStatus.failed, "Weird: odd")
    # the job is released: it runs again at its next slot
    env.clock.set(hm(11, 0))
    assert env.scheduler.tick() == 1


def test_job_without_a_handler_fails_with_the_exact_message(env_factory):
    env = env_factory()
    env.load(decl("ghost"))
    env.clock.set(hm(10, 45))
    env.scheduler.tick()
    env.settle()
    (run,) = env.runs()
    assert run.status is RunStatus.failed
    assert run.error == 'No handler registered for job "ghost"'


def test_one_failing_job_does_not_affect_another_in_the_same_tick(env_factory):
    env = env_factory()
    env.load(decl("bad"), decl("good"))

    def bad(ctx):
        raise RuntimeError("bad job")

    env.handle("bad", bad)
    env.handle("good", lambda ctx: None)
    env.clock.set(hm(10, 45))
    assert env.scheduler.tick() == 2
    env.settle()
    assert env.runs("bad")[0].status is RunStatus.failed
    assert env.runs("good")[0].status is RunStatus.succeeded
    assert env.job("bad").next_run_at == env.job("good").next_run_at == hm(11, 0)


def test_an_unschedulable_stored_job_is_parked_and_others_still_run(tmp_path):
    # A row whose schedule no longer evaluates (written by hand or another
    # version) must not fail every tick for every job.
    env = Env(PeeweeJobStore(f"sqlite:///{tmp_path}/jobs.db"))
    try:
        env.load(decl("corrupt"), decl("fine"))
        env.handle("fine", lambda ctx: None)
        env.handle("corrupt", lambda ctx: None)
        env.store.database.execute_sql(
            f"UPDATE {env.store.table_prefix}jobs SET schedule = 'not cron' "
            "WHERE job_key = 'corrupt'")
        env.clock.set(hm(10, 45))
        assert env.scheduler.tick() == 1
        env.settle()
        assert env.runs("corrupt") == []
        assert env.runs("fine")[0].status is RunStatus.succeeded
        assert env.job("corrupt").next_run_at is None
        env.clock.set(hm(11, 0))
        assert env.scheduler.tick() == 1
    finally:
        env.close()


# -- overlap --------------------------------------------------------------------------------


def test_no_second_run_while_one_is_in_flight(env_factory):
    env = env_factory()
    env.load(decl("sync", "* * * * *"))
    gate = env.handle("sync", Gate())
    env.clock.set(hm(10, 31))
    assert env.scheduler.tick() == 1
    for minute in (32, 33):  # its next slots pass while it runs
        env.clock.set(hm(10, minute))
        assert env.scheduler.tick() == 0
    assert len(env.runs()) == 1
    assert env.job("sync").next_run_at == hm(10, 32)  # left due for the misfire policy
    gate.release.set()
    env.settle()
    assert env.scheduler.tick() == 1  # at 10:33, once free
    env.settle()
    runs = env.runs()
    assert [r.scheduled_for for r in runs] == [hm(10, 31), hm(10, 33)]
    assert env.job("sync").missed_count == 1  # 10:32 was coalesced
    assert gate.calls == 2


def test_different_jobs_run_in_the_same_tick(env_factory):
    env = env_factory()
    env.load(decl("a"), decl("b"), decl("c"))
    gate = Gate()
    for key in "abc":
        env.handle(key, gate)
    env.clock.set(hm(10, 45))
    assert env.scheduler.tick() == 3
    wait_for(lambda: gate.calls == 3)  # all three in flight at once
    gate.release.set()
    env.settle()
    assert {r.status for r in env.runs()} == {RunStatus.succeeded}


# -- concurrency cap ------------------------------------------------------------------------


@pytest.mark.parametrize("cap,count", [(1, 2), (2, 3)])
def test_cap_defers_the_rest_to_the_next_tick(env_factory, cap, count):
    env = env_factory(max_concurrent=cap)
    keys = [f"job{i}" for i in range(count)]
    env.load(*(decl(k) for k in keys))
    gate = Gate()
    for key in keys:
        env.handle(key, gate)
    env.clock.set(hm(10, 45))
    assert env.scheduler.tick() == cap
    assert len(env.runs()) == cap
    assert env.scheduler.tick() == 0  # still full
    gate.release.set()
    env.settle()
    assert env.scheduler.tick() == count - cap
    env.settle()
    runs = env.runs()
    assert len(runs) == count
    assert {r.job_key for r in runs} == set(keys)
    # the deferred job still ran its own slot
    assert {r.scheduled_for for r in runs} == {hm(10, 45)}


def test_cap_never_starves_a_job(env_factory):
    env = env_factory(max_concurrent=1)
    keys = ["a", "b", "c", "d"]
    env.load(*(decl(k, "* * * * *") for k in keys))
    for key in keys:
        env.handle(key, lambda ctx: None)
    order = []
    for minute in range(31, 39):  # one tick a minute: one run a minute
        env.clock.set(hm(10, minute))
        assert env.scheduler.tick() == 1
        env.settle()
        order.append(env.runs()[-1].job_key)
    # oldest due first: every job gets a turn before any gets a second one
    assert sorted(order[:4]) == keys and sorted(order[4:]) == keys


def due_reads(env) -> list:
    """Count the store's due_jobs calls (the store still answers them)."""
    reads = []
    real = env.store.due_jobs

    def due_jobs(*args, **kwargs):
        reads.append(kwargs.get("limit"))
        return real(*args, **kwargs)
    env.store.due_jobs = due_jobs
    return reads


def backlog_env(env_factory, count: int = 30):
    """*count* jobs due at 10:45, a cap of 10, one round run: 10 started."""
    env = env_factory(max_concurrent=10)
    keys = [f"job{i:02}" for i in range(count)]
    env.load(*(decl(k) for k in keys))
    for key in keys:
        env.handle(key, lambda ctx: None)
    env.clock.set(hm(10, 45))
    reads = due_reads(env)
    assert env.scheduler.tick() == 10
    env.settle()
    assert reads == [40]  # four times the free room
    return env, keys, reads


def test_a_backlog_is_read_once_for_the_rounds_it_fills(env_factory):
    env, keys, reads = backlog_env(env_factory)
    assert env.scheduler.tick() == 10
    env.settle()
    assert env.scheduler.tick() == 10
    env.settle()
    assert reads == [40]  # the rounds after the first took what it had no room for
    runs = env.runs()
    assert sorted(r.job_key for r in runs) == keys  # each job once, its own slot
    assert {r.scheduled_for for r in runs} == {hm(10, 45)}
    assert env.scheduler.tick() == 0 and len(reads) == 2  # nothing left: read anew


def test_a_job_changed_since_the_backlog_was_read_is_refused(env_factory):
    env, keys, reads = backlog_env(env_factory)
    waiting = [k for k in keys if k not in {r.job_key for r in env.runs()}]
    for key in waiting:
        env.store.pause_job(env.job(key).id, now=env.clock.now())
    assert env.scheduler.tick() == 0  # the claims compare pointers: none applies
    assert len(env.runs()) == 10
    assert reads == [40]  # they came from the backlog, not from a new read


def test_registering_a_plugin_or_the_clock_moving_on_drops_the_backlog(env_factory):
    env, keys, reads = backlog_env(env_factory, count=50)
    env.scheduler.register_plugin(PLUGIN, KEY)  # as after a sync of its manifest
    assert env.scheduler.tick() == 10
    env.settle()
    assert reads == [40, 40]
    env.clock.advance(seconds=2)  # older than BACKLOG_TTL
    assert env.scheduler.tick() == 10
    assert reads == [40, 40, 40]


def test_manual_runs_count_against_the_cap(memory_env):
    env = memory_env(max_concurrent=1)
    env.load(decl("sync"), decl("manual", None))
    gate = env.handle("manual", Gate())
    env.handle("sync", lambda ctx: None)
    env.scheduler.trigger(env.job("manual").id)
    env.clock.set(hm(10, 45))
    assert env.scheduler.tick() == 0
    gate.release.set()
    env.settle()
    assert env.scheduler.tick() == 1


# -- which jobs are dispatched --------------------------------------------------------------


def test_jobs_of_unregistered_plugins_are_not_dispatched(env_factory):
    env = env_factory()
    env.load(decl("sync"))
    env.load(decl("sync"), plugin=OTHER, key=OTHER_KEY, register=False)
    env.handle("sync", lambda ctx: None)
    env.handle("sync", lambda ctx: None, key=OTHER_KEY)
    env.clock.set(hm(12, 0))
    assert env.scheduler.tick() == 1
    env.settle()
    assert len(env.runs(plugin=PLUGIN)) == 1
    assert env.runs(plugin=OTHER) == []
    other = env.job("sync", OTHER)
    assert other.next_run_at == hm(10, 45) and other.missed_count == 0  # untouched


def test_manual_only_jobs_are_never_dispatched_by_ticks(env_factory):
    env = env_factory()
    env.load(decl("manual", None))
    env.handle("manual", lambda ctx: None)
    for days in range(3):
        env.clock.advance(days=1)
        assert env.scheduler.tick() == 0
    assert env.runs() == []
    assert env.job("manual").next_run_at is None


def test_paused_jobs_are_not_dispatched(memory_env):
    env = memory_env()
    env.load(decl("sync"))
    env.handle("sync", lambda ctx: None)
    env.store.pause_job(env.job("sync").id, now=env.clock.now())
    env.clock.set(hm(12, 0))
    assert env.scheduler.tick() == 0


# -- misfire policy -------------------------------------------------------------------------

# pointer 10:45, scheduler down until 12:10: 10:45 .. 12:00 (6 slots) were missed


def test_after_downtime_run_once_runs_the_latest_slot_once(env_factory):
    env = env_factory()
    env.load(decl("sync"))
    env.handle("sync", lambda ctx: None)
    env.clock.set(hm(12, 10))
    assert env.scheduler.tick() == 1
    env.settle()
    assert env.scheduler.tick() == 0
    (run,) = env.runs()
    assert run.scheduled_for == hm(12, 0)
    job = env.job("sync")
    assert job.missed_count == 5 and job.next_run_at == hm(12, 15)


def test_after_downtime_skip_runs_nothing_and_counts_every_slot(env_factory):
    env = env_factory()
    env.load(decl("sync", misfire="skip"))
    env.handle("sync", lambda ctx: None)
    env.clock.set(hm(12, 10))
    assert env.scheduler.tick() == 0
    assert env.runs() == []
    job = env.job("sync")
    assert job.missed_count == 6 and job.next_run_at == hm(12, 15)
    env.clock.set(hm(12, 15))  # back on schedule: runs normally
    assert env.scheduler.tick() == 1


def test_after_downtime_run_all_runs_each_missed_slot_in_turn(env_factory):
    env = env_factory()
    env.load(decl("sync", misfire="run_all", misfire_grace_seconds=None))
    env.handle("sync", lambda ctx: None)
    env.clock.set(hm(12, 10))
    while env.scheduler.tick():
        env.settle()
    assert [r.scheduled_for for r in env.runs()] == [
        hm(10, 45), hm(11, 0), hm(11, 15), hm(11, 30), hm(11, 45), hm(12, 0)]
    job = env.job("sync")
    assert job.missed_count == 0 and job.next_run_at == hm(12, 15)


def test_slots_later_than_the_grace_window_are_counted_not_run(env_factory):
    env = env_factory()
    env.load(decl("late", misfire_grace_seconds=300), decl("recent", misfire_grace_seconds=900))
    env.handle("late", lambda ctx: None)
    env.handle("recent", lambda ctx: None)
    env.clock.set(hm(12, 10))  # 12:00 is 600 s old
    assert env.scheduler.tick() == 1
    env.settle()
    assert env.runs("late") == []
    assert env.job("late").missed_count == 6
    assert env.job("late").next_run_at == hm(12, 15)
    assert [r.scheduled_for for r in env.runs("recent")] == [hm(12, 0)]


@pytest.mark.parametrize("policy,expected,missed", [
    ("run_once", [hm(11, 15)], 1),
    ("skip", [], 2),
    ("run_all", [hm(11, 0), hm(11, 15)], 0),
])
def test_slots_passed_during_a_long_run_are_coalesced_per_policy(env_factory, policy, expected,
                                                                  missed):
    env = env_factory()
    env.load(decl("sync", misfire=policy))
    gate = Gate()
    env.handle("sync", lambda ctx: gate(ctx) if ctx.scheduled_for == hm(10, 45) else None)
    env.clock.set(hm(10, 45))
    assert env.scheduler.tick() == 1
    for minute in (11 * 60, 11 * 60 + 15):  # 11:00 and 11:15 pass while it runs
        env.clock.set(hm(minute // 60, minute % 60))
        assert env.scheduler.tick() == 0
    env.clock.set(hm(11, 20))
    gate.release.set()
    env.settle()
    while env.scheduler.tick():
        env.settle()
    assert [r.scheduled_for for r in env.runs()][1:] == expected
    job = env.job("sync")
    assert job.missed_count == missed and job.next_run_at == hm(11, 30)


# -- a slow job does not block the others (real threads, real time) -------------------------


def test_slow_job_does_not_delay_other_jobs(tmp_path):
    env = Env(PeeweeJobStore(f"sqlite:///{tmp_path}/jobs.db"), clock=SystemClock(),
              max_concurrent=4)
    try:
        # both due every second, from the same first slot; "slow" sleeps 5 s
        # (cancellable, so the test ends once the fast runs are in)
        env.load(decl("slow", "* * * * * *"), decl("fast", "* * * * * *"))
        slow_started = threading.Event()

        def slow(ctx):
            slow_started.set()
            ctx.wait(5.0)

        env.handle("slow", slow)
        env.handle("fast", lambda ctx: None)
        env.scheduler.start()
        wait_for(lambda: len([r for r in env.runs("fast") if r.status.terminal]) >= 3
                 and slow_started.is_set(), timeout=8, what="3 fast runs")
        env.scheduler.stop(timeout=0)
        first_fast = min(env.runs("fast"), key=lambda r: r.scheduled_for)
        assert first_fast.scheduled_for == min(r.scheduled_for for r in env.runs("slow"))
        (slow_run, *_) = env.runs("slow")
        fast_runs = [r for r in env.runs("fast") if r.started_at is not None]
        latencies = [(r.started_at - r.scheduled_for).total_seconds() for r in fast_runs]
        # the loop sleeps until the slot (timer accuracy ~1 ms) and a tick is a
        # few SQLite statements (a few ms); a scheduler that waited for the
        # slow handler would show ~1 s here. 100 ms leaves a 10x+ margin for a
        # loaded CI machine.
        assert max(latencies) < 0.1, latencies
        # and some of those fast runs really started while the slow one ran
        slow_end = slow_run.finished_at or datetime.now(UTC)
        overlapping = [r for r in fast_runs if slow_run.started_at < r.started_at < slow_end]
        assert overlapping
    finally:
        env.close()


# -- sleeping and waking --------------------------------------------------------------------


def test_loop_sleeps_until_the_earliest_slot(memory_env):
    env = memory_env()
    env.load(decl("quarterly"), decl("hourly", "0 * * * *"))
    # an earlier job of an unregistered plugin does not count
    env.load(decl("early", "* * * * *"), plugin=OTHER, key=OTHER_KEY, register=False)
    env.handle("quarterly", lambda ctx: None)
    env.handle("hourly", lambda ctx: None)
    env.scheduler.start()
    wait_for(lambda: env.scheduler.diagnostics()["next_wake_at"] == hm(10, 45))
    ticks = env.scheduler.diagnostics()["tick_count"]
    time.sleep(0.1)
    assert env.scheduler.diagnostics()["tick_count"] == ticks  # asleep
    env.clock.set(hm(10, 44, 59))
    time.sleep(0.05)
    assert env.scheduler.diagnostics()["tick_count"] == ticks
    assert env.runs() == []
    env.clock.set(hm(10, 45))  # the loop wakes by itself at the slot
    wait_for(lambda: len(env.runs("quarterly")) == 1)
    wait_for(lambda: env.scheduler.diagnostics()["next_wake_at"] == hm(11, 0))


def test_wake_register_and_trigger_wake_the_loop_at_once(memory_env):
    env = memory_env()  # max_idle 30 s: only a wake explains a prompt tick
    env.load(decl("sync", "0 0 1 1 *"), decl("manual", None))
    env.handle("manual", lambda ctx: None)
    env.scheduler.start()
    wait_for(lambda: env.scheduler.diagnostics()["next_wake_at"] is not None)

    def ticks():
        return env.scheduler.diagnostics()["tick_count"]

    before = ticks()
    env.scheduler.wake()
    wait_for(lambda: ticks() > before, timeout=1, what="tick after wake()")
    before = ticks()
    env.scheduler.register_plugin(OTHER, OTHER_KEY)
    wait_for(lambda: ticks() > before, timeout=1, what="tick after register")
    before = ticks()
    env.scheduler.trigger(env.job("manual").id)
    wait_for(lambda: ticks() > before, timeout=1, what="tick after a triggered run")


def test_register_makes_a_due_job_run_without_waiting(memory_env):
    env = memory_env()
    env.load(decl("sync"), register=False)
    env.handle("sync", lambda ctx: None)
    env.clock.set(hm(10, 45))
    env.scheduler.start()
    time.sleep(0.05)
    assert env.runs() == []
    env.scheduler.register_plugin(PLUGIN, KEY)
    wait_for(lambda: len(env.runs()) == 1, timeout=1)


def test_idle_with_many_jobs_uses_no_cpu(tmp_path):
    env = Env(PeeweeJobStore(f"sqlite:///{tmp_path}/jobs.db"), clock=SystemClock())
    try:
        for plugin in range(2):  # 2 x 1000 jobs, all due next New Year
            env.load(*(decl(f"job{i}", "0 0 1 1 *") for i in range(1000)),
                     plugin=f"p{plugin}", key=f"k{plugin}")
        before = resource.getrusage(resource.RUSAGE_SELF)
        env.scheduler.start()
        time.sleep(1.0)
        after = resource.getrusage(resource.RUSAGE_SELF)
        diag = env.scheduler.diagnostics()
        assert diag["tick_count"] <= 3
        assert diag["next_wake_at"] == datetime(datetime.now(UTC).year + 1, 1, 1, tzinfo=UTC)
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        assert cpu < 0.3, cpu
    finally:
        env.close()


def test_loop_does_not_spin_while_a_due_job_is_in_flight(memory_env):
    env = memory_env(lease_seconds=6 * 3600)  # no lease renewal in the way
    env.load(decl("sync", "* * * * *"), decl("later", "0 12 * * *"))
    gate = env.handle("sync", Gate())
    env.handle("later", lambda ctx: None)
    env.scheduler.start()
    env.clock.set(hm(10, 31))
    wait_for(lambda: gate.calls == 1)
    env.clock.set(hm(10, 35))  # its next slots are past due while it runs
    time.sleep(0.3)
    assert env.scheduler.diagnostics()["tick_count"] < 10
    # it sleeps until the next job that can run, not forever
    assert env.scheduler.diagnostics()["next_wake_at"] == hm(12, 0)
    gate.release.set()
    wait_for(lambda: len(env.runs("sync")) == 2, what="catch-up run once free")
    assert env.runs("sync")[1].scheduled_for == hm(10, 35)


# -- timeouts -------------------------------------------------------------------------------


def cooperative(saw_cancel: threading.Event, release: threading.Event | None = None):
    """A handler that runs until cancelled (or released), then returns normally.

    With *release*, it returns only once released, and calls made after the
    release return at once.
    """
    def handler(ctx):
        while not ctx.cancelled and not (release is not None and release.is_set()):
            ctx.wait(0.005)
        if ctx.cancelled:
            saw_cancel.set()
        if release is not None:
            release.wait(10)
    return handler


def test_timeout_fails_the_run_cancels_the_handler_and_keeps_the_job_busy(env_factory):
    env = env_factory()
    env.load(decl("sync", "* * * * *", timeout_seconds=90))
    saw_cancel, release = threading.Event(), threading.Event()
    env.handle("sync", cooperative(saw_cancel, release))
    env.clock.set(hm(10, 31))
    env.scheduler.tick()
    (run,) = env.runs()
    env.wait_status(run.id, "running")
    env.clock.advance(seconds=89)
    env.scheduler.tick()
    assert env.run(run.id).status is RunStatus.running
    env.clock.advance(seconds=2)
    env.scheduler.tick()
    failed = env.run(run.id)
    assert failed.status is RunStatus.failed and "timed out" in failed.error
    assert saw_cancel.wait(5)
    # still busy: its handler has not returned, so no new run
    env.clock.advance(minutes=3)
    assert env.scheduler.tick() == 0
    assert len(env.runs()) == 1
    assert env.scheduler.diagnostics()["busy_job_ids"] == [env.job("sync").id]
    release.set()
    env.settle()
    # the late (successful) completion did not overwrite the failure
    assert env.run(run.id).status is RunStatus.failed
    finished = [r for r, _ in env.events_of("run_finished") if r.id == run.id]
    assert len(finished) == 1 and finished[0].status is RunStatus.failed
    assert env.scheduler.tick() == 1  # free again


def test_default_timeout_applies_when_the_policy_has_none(memory_env):
    env = memory_env(default_timeout=5)
    env.load(decl("sync"))
    saw_cancel = threading.Event()
    env.handle("sync", cooperative(saw_cancel))
    env.clock.set(hm(10, 45))
    env.scheduler.tick()
    (run,) = env.runs()
    env.wait_status(run.id, "running")
    env.clock.advance(seconds=6)
    env.scheduler.tick()
    assert env.run(run.id).error == "timed out after 5s"
    env.settle()
    assert env.run(run.id).status is RunStatus.failed


def test_loop_wakes_for_a_timeout_deadline(memory_env):
    env = memory_env(lease_seconds=3600)  # no lease renewal in the way
    env.load(decl("sync", "0 12 * * *", timeout_seconds=30))
    saw_cancel = threading.Event()
    env.handle("sync", cooperative(saw_cancel))
    env.clock.set(hm(12, 0))
    env.scheduler.start()
    (run,) = wait_for(lambda: env.runs())
    env.wait_status(run.id, "running")
    wait_for(lambda: env.scheduler.diagnostics()["next_wake_at"] == hm(12, 0, 30))
    env.clock.advance(seconds=31)
    env.wait_status(run.id, "failed")
    assert saw_cancel.wait(5)


def test_a_handler_returning_as_its_timeout_is_decided_has_one_end_announced(
        env_factory, monkeypatch):
    # The timeout sweep picks the run, then the handler returns and queues
    # its end before the sweep records the timeout: one of the two decides
    # the end, and that end is the one recorded and announced (the second
    # record used to be refused and to clear the first's announcement).
    env = env_factory(lease_seconds=3600)
    env.load(decl("sync", "0 12 * * *", timeout_seconds=30))
    release = threading.Event()
    env.handle("sync", lambda ctx: release.wait(10))
    real_end = env.scheduler._end

    def end(entry, status, error):
        release.set()
        wait_for(lambda: entry.queued_end is not None, 5, "the handler's queued end")
        real_end(entry, status, error)

    monkeypatch.setattr(env.scheduler, "_end", end)
    env.clock.set(hm(12, 0))
    env.scheduler.start()
    (run,) = wait_for(lambda: env.runs())
    env.wait_status(run.id, "running")
    env.clock.advance(seconds=31)
    wait_for(lambda: env.run(run.id).status.terminal and not env.scheduler.diagnostics()[
        "active_run_ids"], 5, "the run's end")
    stored = env.run(run.id)
    assert stored.status is RunStatus.succeeded  # the handler decided first
    wait_for(lambda: [r for r, _ in env.events_of("run_finished")], 5, "run_finished")
    finished = [r for r, _ in env.events_of("run_finished") if r.id == run.id]
    assert [r.status for r in finished] == [RunStatus.succeeded]


def test_a_handler_returning_while_its_timeout_is_written_has_the_timeout_announced():
    # The sweep decided the timeout and is writing it when the handler
    # returns: the release waits for the write, so the recorded end is
    # announced (it used to be released unannounced in between).
    class SlowTimeouts(MemoryJobStore):
        writing, proceed = threading.Event(), threading.Event()

        def complete_run(self, run_id, *, status, now, error=None, error_detail=None):
            if error and "timed out" in error:
                self.writing.set()
                self.proceed.wait(5)
            return super().complete_run(run_id, status=status, now=now, error=error,
                                        error_detail=error_detail)

    env = Env(SlowTimeouts(), default_timeout=60)
    try:
        env.load(decl("sync", "0 12 * * *"))
        release = threading.Event()
        env.handle("sync", lambda ctx: release.wait(10))
        env.clock.set(hm(12, 0))
        assert env.scheduler.tick() == 1
        (run,) = env.runs()
        env.wait_status(run.id, "running")
        env.clock.advance(seconds=61)
        sweep = threading.Thread(target=env.scheduler.tick)
        sweep.start()
        assert env.store.writing.wait(5)
        release.set()  # the handler returns while the timeout is written
        time.sleep(0.2)
        assert env.scheduler.diagnostics()["active_run_ids"] == [run.id]  # waits for the write
        env.store.proceed.set()
        sweep.join(5)
        env.settle()
        assert env.run(run.id).status is RunStatus.failed
        assert [(r.id, r.status) for r, _ in env.events_of("run_finished")] == [
            (run.id, RunStatus.failed)]
        assert env.scheduler.diagnostics()["busy_job_ids"] == []
    finally:
        env.store.proceed.set()
        env.close()


# -- manual trigger -------------------------------------------------------------------------


def test_trigger_returns_the_run_id_without_waiting(env_factory):
    env = env_factory()
    env.load(decl("sync"))
    gate = env.handle("sync", Gate())
    env.clock.set(hm(10, 40))
    run_id = env.scheduler.trigger(env.job("sync").id)
    run = env.run(run_id)  # returned while the handler is still blocked
    assert run.trigger is RunTrigger.manual and not run.status.terminal
    wait_for(lambda: gate.calls == 1)
    ctx = gate.contexts[0]
    assert (ctx.run_id, ctx.trigger, ctx.scheduled_for) == (run_id, RunTrigger.manual, hm(10, 40))
    gate.release.set()
    env.settle()
    assert env.run(run_id).status is RunStatus.succeeded
    job = env.job("sync")
    assert job.next_run_at == hm(10, 45)  # a manual run does not move the schedule
    assert job.last_run_at == hm(10, 40)
    env.clock.set(hm(10, 45))
    assert env.scheduler.tick() == 1  # the slot still runs


def test_trigger_with_retry_label_reaches_the_handler(memory_env):
    env = memory_env()
    env.load(decl("sync"))
    gate = Gate()
    gate.release.set()
    env.handle("sync", gate)
    run_id = env.scheduler.trigger(env.job("sync").id, trigger="retry")
    env.settle()
    assert env.run(run_id).trigger is RunTrigger.retry
    assert gate.contexts[0].trigger is RunTrigger.retry


def test_trigger_of_a_manual_only_job(memory_env):
    env = memory_env()
    env.load(decl("manual", None))
    env.handle("manual", lambda ctx: None)
    run_id = env.scheduler.trigger(env.job("manual").id, plugin_id=PLUGIN)
    env.settle()
    assert env.run(run_id).status is RunStatus.succeeded
    assert env.job("manual").next_run_at is None


def test_trigger_errors(env_factory):
    env = env_factory()
    jobs = env.load(decl("sync"), decl("paused"), decl("orphan"))
    other = env.load(decl("theirs"), plugin=OTHER, key=OTHER_KEY, register=False)["theirs"]
    gate = env.handle("sync", Gate())
    env.handle("paused", lambda ctx: None)
    env.handle("theirs", lambda ctx: None, key=OTHER_KEY)
    env.store.pause_job(jobs["paused"].id, now=env.clock.now())

    with pytest.raises(JobLookupError):
        env.scheduler.trigger("no-such-job")
    with pytest.raises(JobLookupError):  # another plugin's job
        env.scheduler.trigger(other.id, plugin_id=PLUGIN)
    with pytest.raises(JobNotActive):
        env.scheduler.trigger(jobs["paused"].id)
    with pytest.raises(PluginNotRunning):  # plugin not registered
        env.scheduler.trigger(other.id)
    with pytest.raises(PluginNotRunning):  # no handler for the job
        env.scheduler.trigger(jobs["orphan"].id)
    for label in ("schedule", "bogus"):
        with pytest.raises(ConfigurationError):
            env.scheduler.trigger(jobs["sync"].id, trigger=label)
    env.scheduler.trigger(jobs["sync"].id)
    with pytest.raises(JobAlreadyRunning):
        env.scheduler.trigger(jobs["sync"].id)
    gate.release.set()
    env.settle()
    assert len(env.runs("sync")) == 1  # the refused calls created nothing
    assert env.runs("paused") == env.runs("orphan") == []
    assert all(issubclass(e, PjError) for e in
               (JobLookupError, JobNotActive, JobAlreadyRunning, PluginNotRunning))


def test_busy_reservation_is_cleared_after_success_and_failure(memory_env):
    env = memory_env()
    env.load(decl("sync", None))
    outcomes = iter([None, RuntimeError("x"), None])

    def handler(ctx):
        outcome = next(outcomes)
        if outcome is not None:
            raise outcome

    env.handle("sync", handler)
    job_id = env.job("sync").id
    statuses = []
    for _ in range(3):
        run_id = env.scheduler.trigger(job_id)
        env.settle()
        statuses.append(env.run(run_id).status.value)
        assert env.scheduler.diagnostics()["busy_job_ids"] == []
    assert statuses == ["succeeded", "failed", "succeeded"]


def test_observer_of_run_finished_may_trigger_again(memory_env):
    env = memory_env()
    env.load(decl("sync", None))
    env.handle("sync", lambda ctx: None)
    again = []
    job_id = env.job("sync").id

    def notify(name, run, job):
        if name == "run_finished" and not again:
            again.append(env.scheduler.trigger(job_id))

    env.scheduler._notify = notify  # the hook the Host wires to run_finished
    env.scheduler.trigger(job_id)
    wait_for(lambda: again)
    env.settle()
    assert env.run(again[0]).status is RunStatus.succeeded


def test_scheduled_and_manual_runs_never_overlap(memory_env):
    env = memory_env()
    env.load(decl("sync"))
    gate = env.handle("sync", Gate())
    job_id = env.job("sync").id
    env.scheduler.trigger(job_id)
    env.clock.set(hm(10, 45))
    assert env.scheduler.tick() == 0  # the manual run holds the job
    gate.release.set()
    env.settle()
    gate.release.clear()
    assert env.scheduler.tick() == 1  # now the slot runs
    with pytest.raises(JobAlreadyRunning):  # and a trigger waits for it
        env.scheduler.trigger(job_id)
    gate.release.set()
    env.settle()
    assert [r.trigger for r in env.runs()] == [RunTrigger.manual, RunTrigger.schedule]


def race(n: int, call: Callable[[int], Any]) -> list[tuple[str, Any]]:
    barrier = threading.Barrier(n)
    results: list = [None] * n

    def one(i: int) -> None:
        barrier.wait(timeout=10)
        try:
            results[i] = ("ok", call(i))
        except Exception as exc:  # noqa: BLE001 - inspected by the test
            results[i] = ("error", exc)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    return results


def assert_one_winner(results) -> None:
    oks = [r for kind, r in results if kind == "ok"]
    errors = [r for kind, r in results if kind == "error"]
    assert len(oks) == 1, results
    assert all(isinstance(e, JobAlreadyRunning) for e in errors), errors


def two_schedulers_race(store_a, store_b) -> None:
    """Two schedulers ("processes"), each with its own store on one database."""
    a, b = Env(store_a), Env(store_b)
    try:
        a.load(decl("sync", None))
        b.scheduler.register_plugin(PLUGIN, KEY)
        gates = []
        for env in (a, b):
            env.handle("sync", gates.append(Gate()) or gates[-1])
        job_id = a.job("sync").id
        for round_ in range(5):
            results = race(2, lambda i: (a, b)[i].scheduler.trigger(job_id))
            assert_one_winner(results)
            assert len(a.runs()) == round_ + 1
            for gate in gates:
                gate.release.set()
            a.settle()
            b.settle()
            for gate in gates:
                gate.release.clear()
        assert {r.status for r in a.runs()} == {RunStatus.succeeded}
    finally:
        for gate in gates:
            gate.release.set()
        a.close()
        b.close()


def test_concurrent_triggers_through_two_schedulers_on_sqlite(tmp_path):
    url = f"sqlite:///{tmp_path}/shared.db"
    two_schedulers_race(PeeweeJobStore(url), PeeweeJobStore(url))


@pytest.mark.postgres
def test_concurrent_triggers_through_two_schedulers_on_postgres(postgres_url):
    from conftest import make_postgres_store

    with make_postgres_store(postgres_url) as store_a:
        store_b = PeeweeJobStore(postgres_url, table_prefix=store_a.table_prefix)
        two_schedulers_race(store_a, store_b)


def test_concurrent_triggers_through_one_scheduler(env_factory):
    env = env_factory()
    env.load(decl("sync", None))
    gate = env.handle("sync", Gate())
    job_id = env.job("sync").id
    assert_one_winner(race(8, lambda i: env.scheduler.trigger(job_id)))
    gate.release.set()
    env.settle()
    assert len(env.runs()) == 1


def test_trigger_racing_a_tick_never_overlaps(env_factory):
    env = env_factory()
    env.load(decl("sync", "* * * * *"))
    gate = env.handle("sync", Gate())
    job_id = env.job("sync").id
    for minute in range(31, 36):
        env.clock.set(hm(10, minute))
        results = race(2, lambda i: env.scheduler.tick() if i == 0
                       else env.scheduler.trigger(job_id))
        wait_for(lambda: gate.calls >= minute - 30)
        assert gate.calls == minute - 30  # exactly one handler call per round
        gate.release.set()
        env.settle()
        gate.release.clear()
        kind, value = results[1]
        assert kind == "ok" or isinstance(value, JobAlreadyRunning)
    assert len(env.runs()) == 5


# -- unregister (disable during a run) ------------------------------------------------------


def test_unregister_cancels_the_run_in_flight_and_its_late_completion_is_ignored(env_factory):
    env = env_factory()
    env.load(decl("sync"))
    saw_cancel, release = threading.Event(), threading.Event()
    env.handle("sync", cooperative(saw_cancel, release))
    env.clock.set(hm(10, 45))
    env.scheduler.tick()
    (run,) = env.runs()
    env.wait_status(run.id, "running")
    env.clock.advance(seconds=30)
    assert env.scheduler.unregister_plugin(PLUGIN, "Plugin disabled") == [run.id]
    cancelled = env.run(run.id)
    assert cancelled.status is RunStatus.cancelled and cancelled.error == "Plugin disabled"
    assert cancelled.duration_ms == 30_000
    assert saw_cancel.wait(5)
    release.set()  # the handler now returns normally
    env.settle()
    assert env.run(run.id).status is RunStatus.cancelled
    finished = [r for r, _ in env.events_of("run_finished") if r.id == run.id]
    assert [r.status for r in finished] == [RunStatus.cancelled]


def test_unregister_cancels_queued_runs_and_their_handlers_never_run(memory_env):
    env = memory_env(max_workers=1)
    env.load(decl("sync"))
    env.load(decl("blocker", None), plugin=OTHER, key=OTHER_KEY)
    blocker = env.handle("blocker", Gate(), key=OTHER_KEY)
    called = []
    env.handle("sync", called.append)
    env.scheduler.trigger(env.job("blocker", OTHER).id)
    wait_for(lambda: blocker.calls == 1)
    env.clock.set(hm(10, 45))
    env.scheduler.tick()
    (queued,) = env.runs()
    assert env.run(queued.id).status is RunStatus.queued
    assert env.scheduler.unregister_plugin(PLUGIN, "Plugin disabled") == [queued.id]
    blocker.release.set()
    env.settle()
    assert called == []
    assert env.run(queued.id).status is RunStatus.cancelled
    assert env.run(queued.id).started_at is None


def test_no_new_runs_after_unregister(env_factory):
    env = env_factory()
    env.load(decl("sync"))
    env.handle("sync", lambda ctx: None)
    env.scheduler.unregister_plugin(PLUGIN, "Plugin disabled")
    env.clock.set(hm(12, 0))
    assert env.scheduler.tick() == 0
    with pytest.raises(PluginNotRunning):
        env.scheduler.trigger(env.job("sync").id)
    assert env.runs() == []
    assert env.scheduler.diagnostics()["registered_plugins"] == []


def test_a_job_stays_busy_after_unregister_until_its_handler_returns(memory_env):
    env = memory_env()
    env.load(decl("sync", "* * * * *"))
    saw_cancel, release = threading.Event(), threading.Event()
    env.handle("sync", cooperative(saw_cancel, release))
    env.clock.set(hm(10, 31))
    env.scheduler.tick()
    env.wait_status(env.runs()[0].id, "running")  # its handler called
    env.scheduler.unregister_plugin(PLUGIN, "Plugin disabled")
    assert saw_cancel.wait(5)
    env.scheduler.register_plugin(PLUGIN, KEY)  # re-enabled while the old handler still runs
    env.clock.set(hm(10, 33))
    assert env.scheduler.tick() == 0
    with pytest.raises(JobAlreadyRunning):
        env.scheduler.trigger(env.job("sync").id)
    release.set()
    env.settle()
    assert env.scheduler.tick() == 1


def test_unregister_leaves_the_runs_of_other_schedulers_alone(tmp_path):
    # A plugin unloaded by one process (it is stopping, say) still runs on
    # the others sharing the database: their runs are theirs to end. The
    # store's exclusivity check then still keeps a second run of the job out.
    store = PeeweeJobStore(f"sqlite:///{tmp_path}/shared.db")
    here, there = Env(store, owner="here"), Env(store, owner="there")
    try:
        here.load(decl("sync"))
        there.scheduler.register_plugin(PLUGIN, KEY)
        gate = there.handle("sync", Gate())
        here.handle("sync", lambda ctx: None)
        there.clock.set(hm(10, 45))
        assert there.scheduler.tick() == 1
        (run,) = there.runs()
        there.wait_status(run.id, "running")
        assert here.scheduler.unregister_plugin(PLUGIN, "Plugin unloaded") == []
        assert there.run(run.id).status is RunStatus.running
        assert gate.saw_cancel == [] and not gate.contexts[0].cancelled
        gate.release.set()
        there.settle()
        assert there.run(run.id).status is RunStatus.succeeded
    finally:
        here.close()
        there.close()


def test_unregister_of_an_unknown_plugin_is_harmless(memory_env):
    env = memory_env()
    env.load(decl("sync"))
    env.handle("sync", lambda ctx: None)
    assert env.scheduler.unregister_plugin("nobody", "Plugin disabled") == []
    env.clock.set(hm(10, 45))
    assert env.scheduler.tick() == 1


def test_unregister_only_touches_its_own_plugin(memory_env):
    env = memory_env()
    env.load(decl("sync"))
    env.load(decl("sync"), plugin=OTHER, key=OTHER_KEY)
    gate = Gate()
    env.handle("sync", gate)
    env.handle("sync", gate, key=OTHER_KEY)
    env.clock.set(hm(10, 45))
    assert env.scheduler.tick() == 2
    env.scheduler.unregister_plugin(PLUGIN, "Plugin disabled")
    gate.release.set()
    env.settle()
    assert env.runs(plugin=PLUGIN)[0].status is RunStatus.cancelled
    assert env.runs(plugin=OTHER)[0].status is RunStatus.succeeded


# -- stop(timeout) --------------------------------------------------------------------------


def test_stop_drains_runs_in_flight(env_factory):
    env = env_factory()
    env.load(decl("sync"))
    gate = env.handle("sync", Gate())
    env.clock.set(hm(10, 45))
    env.scheduler.start()
    (run,) = wait_for(lambda: env.runs())
    env.wait_status(run.id, "running")
    threading.Timer(0.1, gate.release.set).start()
    started = time.monotonic()
    env.scheduler.stop(timeout=5)
    assert time.monotonic() - started < 2
    assert env.run(run.id).status is RunStatus.succeeded
    assert env.scheduler.diagnostics()["active_run_ids"] == []


def test_stop_records_runs_still_in_flight_as_cancelled_shutdown(env_factory):
    env = env_factory()
    env.load(decl("sync"))
    saw_cancel = threading.Event()
    env.handle("sync", cooperative(saw_cancel))
    env.clock.set(hm(10, 45))
    env.scheduler.tick()
    (run,) = env.runs()
    env.wait_status(run.id, "running")
    started = time.monotonic()
    env.scheduler.stop(timeout=0.2)
    assert 0.19 <= time.monotonic() - started < 2
    stopped = env.run(run.id)
    assert (stopped.status, stopped.error) == (RunStatus.cancelled, "shutdown")
    assert saw_cancel.wait(5)
    env.settle()
    assert env.run(run.id).status is RunStatus.cancelled  # not overwritten when it returns


def test_nothing_starts_after_stop(memory_env):
    env = memory_env()
    env.load(decl("sync"))
    env.handle("sync", lambda ctx: None)
    env.scheduler.start()
    env.scheduler.stop()
    env.clock.set(hm(12, 0))
    assert env.scheduler.tick() == 0
    with pytest.raises(PluginNotRunning):
        env.scheduler.trigger(env.job("sync").id)
    assert env.runs() == []
    env.scheduler.start()  # a restart schedules again
    wait_for(lambda: len(env.runs()) == 1)


# -- leases: runs of a crashed or hung scheduler --------------------------------------------


def test_runs_carry_a_lease_that_is_renewed_while_in_flight(env_factory):
    env = env_factory()
    env.load(decl("sync"))
    gate = env.handle("sync", Gate())
    env.clock.set(hm(10, 45))
    env.scheduler.tick()
    (run,) = env.runs()
    env.wait_status(run.id, "running")
    stored = env.run(run.id)
    assert stored.owner == env.scheduler.owner
    assert stored.lease_until == hm(10, 46)  # 60 s from the start
    env.clock.set(hm(10, 45, 10))
    env.scheduler.tick()
    assert env.run(run.id).lease_until == hm(10, 46)  # not yet: every third of the lease
    env.clock.set(hm(10, 45, 20))
    env.scheduler.tick()
    assert env.run(run.id).lease_until == hm(10, 46, 20)
    # long after its original lease, a tick still renews before it looks for expired runs
    env.clock.set(hm(10, 50))
    env.scheduler.tick()
    assert env.run(run.id).status is RunStatus.running
    assert env.run(run.id).lease_until == hm(10, 51)
    gate.release.set()
    env.settle()
    assert env.run(run.id).status is RunStatus.succeeded


def test_loop_wakes_to_renew_leases(memory_env):
    env = memory_env(lease_seconds=30)
    env.load(decl("sync", "0 12 * * *"))
    gate = env.handle("sync", Gate())
    env.clock.set(hm(12, 0))
    env.scheduler.start()
    (run,) = wait_for(lambda: env.runs())
    env.wait_status(run.id, "running")
    wait_for(lambda: env.scheduler.diagnostics()["next_wake_at"] == hm(12, 0, 10))
    env.clock.set(hm(12, 0, 10))
    wait_for(lambda: env.run(run.id).lease_until == hm(12, 0, 40), what="renewed lease")
    gate.release.set()


def hung_and_alive(tmp_path, **policy):
    """Two schedulers ("processes") on one SQLite database and one clock."""
    url = f"sqlite:///{tmp_path}/shared.db"
    clock = ManualClock(T0)
    hung, alive = Env(PeeweeJobStore(url), clock=clock), Env(PeeweeJobStore(url), clock=clock)
    hung.load(decl("sync", **policy))
    alive.scheduler.register_plugin(PLUGIN, KEY)
    return hung, alive


@pytest.mark.parametrize("on_abandoned", ["skip", "retry"])
def test_a_run_of_a_hung_scheduler_is_abandoned_and_no_longer_blocks_its_job(tmp_path,
                                                                            on_abandoned):
    hung, alive = hung_and_alive(tmp_path, on_abandoned=on_abandoned)
    try:
        saw_cancel, release = threading.Event(), threading.Event()
        hung.handle("sync", cooperative(saw_cancel, release))
        alive_calls = []
        alive.handle("sync", lambda ctx: alive_calls.append(ctx.scheduled_for))
        hung.clock.set(hm(10, 45))
        assert hung.scheduler.tick() == 1
        (run,) = hung.runs()
        hung.wait_status(run.id, "running")
        # "hung" stops ticking: its lease is not renewed
        hung.clock.set(hm(10, 45, 59))
        alive.scheduler.tick()
        with pytest.raises(JobAlreadyRunning):
            alive.scheduler.trigger(run.job_id)
        # expired at 10:46; looked for every third of a lease (from 10:45:59)
        hung.clock.set(hm(10, 46, 19))
        alive.scheduler.tick()
        abandoned = alive.run(run.id)
        assert abandoned.status is RunStatus.abandoned
        assert hung.scheduler.owner in abandoned.error
        assert [(r.id, r.status) for r, _ in alive.events_of("run_finished")][:1] == [
            (run.id, RunStatus.abandoned)]
        alive.settle()
        if on_abandoned == "retry":
            # the slot ran again, here, as a second attempt
            assert alive_calls == [hm(10, 45)]
            retry = next(r for r in alive.runs() if r.id != run.id)
            assert (retry.scheduled_for, retry.attempt, retry.status) == (
                hm(10, 45), 2, RunStatus.succeeded)
        else:
            assert alive_calls == [] and len(alive.runs()) == 1
            alive.scheduler.trigger(run.job_id)  # the job is free again
            alive.settle()
        # "hung" wakes up: its renewal finds the run ended, and stops the handler
        hung.scheduler.tick()
        assert saw_cancel.wait(5)
        release.set()
        hung.settle()
        assert hung.run(run.id).status is RunStatus.abandoned  # never overwritten
    finally:
        hung.close()
        alive.close()


def test_an_abandoned_slot_is_retried_at_most_max_attempts_times(tmp_path):
    from pjcore.contrib.scheduler import MAX_ATTEMPTS

    store = PeeweeJobStore(f"sqlite:///{tmp_path}/jobs.db")
    env = Env(store)
    try:
        job = env.load(decl("sync", on_abandoned="retry"))["sync"]
        env.handle("sync", lambda ctx: None)
        # a dead scheduler's last attempt of the 10:45 slot
        store.create_run(job.id, trigger="schedule", now=hm(10, 45), scheduled_for=hm(10, 45),
                         attempt=MAX_ATTEMPTS, owner="dead", lease_until=hm(10, 46))
        env.clock.set(hm(10, 47))
        env.scheduler.tick()
        env.settle()
        assert [(r.attempt, r.status) for r in env.runs()] == [(MAX_ATTEMPTS, RunStatus.abandoned)]
    finally:
        env.close()


def test_a_late_abandoned_slot_is_not_retried(memory_env):
    env = memory_env()
    job = env.load(decl("sync", on_abandoned="retry", misfire_grace_seconds=600))["sync"]
    env.handle("sync", lambda ctx: None)
    env.store.create_run(job.id, trigger="schedule", now=hm(10, 45), scheduled_for=hm(10, 45),
                         owner="dead", lease_until=hm(10, 46))
    env.clock.set(hm(10, 56))  # the slot is 11 minutes old: past the grace
    env.scheduler.tick()
    env.settle()
    assert [r.status for r in env.runs()] == [RunStatus.abandoned]


def test_abandoned_runs_are_announced_and_retried_even_when_the_store_failed_midway(
        memory_env, monkeypatch):
    # abandon_runs commits every expired run at once; a store failure while
    # following them up must not lose the rest, which no later sweep would see
    env = memory_env()
    jobs = env.load(*[decl(f"j{i}", on_abandoned="retry") for i in range(3)])
    for i in range(3):
        env.handle(f"j{i}", lambda ctx: None)
        env.store.create_run(jobs[f"j{i}"].id, trigger="schedule", now=hm(10, 45),
                             scheduled_for=hm(10, 45), owner="dead", lease_until=hm(10, 46))
    real_get_job, failures = env.store.get_job, [1]

    def get_job(job_id):
        if failures:
            failures.pop()
            raise StoreError("database is locked")
        return real_get_job(job_id)

    monkeypatch.setattr(env.store, "get_job", get_job)
    env.clock.set(hm(10, 47))
    with pytest.raises(StoreError):
        env.scheduler.tick()
    # the round after a failed one puts the sweep off by a lease (other
    # schedulers may have been cut off too)
    env.clock.set(hm(10, 47, 1))
    env.scheduler.tick()
    env.clock.set(hm(10, 48, 2))
    env.scheduler.tick()
    env.settle()
    abandoned = [r.id for r, _ in env.events_of("run_finished")
                 if r.status is RunStatus.abandoned]
    assert len(abandoned) == len(set(abandoned)) == 3
    for i in range(3):
        assert sorted((r.attempt, r.status.value) for r in env.runs(f"j{i}")) == [
            (1, "abandoned"), (2, "succeeded")]


def test_start_reclaims_the_runs_its_owner_left_behind(memory_env):
    env = memory_env(owner="host-1")
    job = env.load(decl("sync"), decl("other"))
    env.handle("sync", lambda ctx: None)
    mine = env.store.create_run(job["sync"].id, trigger="manual", now=T0, owner="host-1",
                                lease_until=T0 + timedelta(hours=1))
    theirs = env.store.create_run(job["other"].id, trigger="manual", now=T0, owner="host-2",
                                  lease_until=T0 + timedelta(hours=1))
    env.scheduler.start()
    # its own run is ended at once, long before its lease would run out
    env.wait_status(mine.id, "abandoned")
    wait_for(lambda: env.scheduler.diagnostics()["tick_count"] >= 1)
    assert env.run(theirs.id).status is RunStatus.queued
    run_id = env.scheduler.trigger(job["sync"].id)
    env.settle()
    assert env.run(run_id).status is RunStatus.succeeded


def test_a_run_triggered_right_after_start_is_not_taken_for_a_leftover(tmp_path):
    # start() reclaims the runs a previous incarnation of this owner left; a
    # trigger made right after start() must not be among them.
    for attempt in range(20):
        env = Env(PeeweeJobStore(f"sqlite:///{tmp_path}/jobs-{attempt}.db"),
                  clock=SystemClock(), owner="stable-owner")
        try:
            env.load(decl("manual", None))
            gate = threading.Event()
            env.handle("manual", lambda ctx: gate.wait(5))
            env.scheduler.start()
            run_id = env.scheduler.trigger(env.job("manual").id)
            time.sleep(0.02)  # let the loop's first tick happen
            assert env.store.get_run(run_id).status is not RunStatus.abandoned
            gate.set()
            wait_for(lambda: env.store.get_run(run_id).status.terminal, what="run ends")
            assert env.store.get_run(run_id).status is RunStatus.succeeded
        finally:
            env.close()


# -- announcements nobody listens to ----------------------------------------------


class _Notify:
    """A notify callable that says who listens (``has_listeners``)."""

    def __init__(self, listening: set[str]) -> None:
        self.listening = listening
        self.events: list[tuple[str, Any]] = []

    def __call__(self, name: str, run: Any, job: Any) -> None:
        self.events.append((name, run))

    def has_listeners(self, name: str) -> bool:
        return name in self.listening


@pytest.mark.parametrize("listening", [set(), {"run_finished"}])
def test_announcements_are_skipped_when_nobody_listens(listening):
    store = MemoryJobStore()
    reads: list[str] = []
    get_run = store.get_run
    store.get_run = lambda run_id: reads.append(run_id) or get_run(run_id)
    notify = _Notify(listening)
    clock = ManualClock(T0)
    runner = ThreadRunner(max_workers=2)
    scheduler = ThreadScheduler(store=store, runner=runner, clock=clock, notify=notify,
                                resolve=lambda plugin_key, job_key: (lambda ctx: None))
    try:
        store.sync_jobs(PLUGIN, KEY, [decl("sync")], now=clock.now())
        scheduler.register_plugin(PLUGIN, KEY)
        clock.set(hm(10, 45))
        assert scheduler.tick() == 1
        wait_for(lambda: not scheduler.diagnostics()["active_run_ids"], 5, "run finished")
        (run,) = store.list_runs(plugin_id=PLUGIN).runs
        assert run.status is RunStatus.succeeded  # recorded all the same
        if listening:
            assert [name for name, _ in notify.events] == ["run_finished"]
            assert notify.events[0][1] == run and reads == [run.id]
        else:
            assert notify.events == [] and reads == []
    finally:
        scheduler.stop()
        runner.stop()


class ZonedClock(ManualClock):
    """A ManualClock that tells the time in another zone (an injected clock
    need not answer in UTC)."""

    def __init__(self, zone: str) -> None:
        from zoneinfo import ZoneInfo

        super().__init__(T0)
        self._zone = ZoneInfo(zone)

    def now(self) -> datetime:
        return super().now().astimezone(self._zone)


@pytest.mark.parametrize("zone", ["UTC", "Asia/Tokyo"])
def test_announced_ends_are_the_runs_as_stored(env_factory, zone):
    # The loop builds each announced run from what it knows, not reading it
    # back: field by field what the store holds, with a clock in UTC or in
    # another zone (whose instants the run converts).
    env = env_factory(clock=ManualClock(T0) if zone == "UTC" else ZonedClock(zone))
    env.load(*[decl(f"j{i}", "* * * * *") for i in range(6)])
    for i in range(6):  # each run takes a second of the clock
        env.handle(f"j{i}", lambda ctx: env.clock.advance(1))
    env.scheduler.start()
    env.clock.set(hm(10, 31))
    finished = lambda: [run for name, run, _ in env.events if name == "run_finished"]
    wait_for(lambda: len(finished()) == 6, what="six runs announced")
    env.settle()
    for run in finished():
        stored = env.store.get_run(run.id)
        assert (run.status, run.scheduled_for) == (RunStatus.succeeded, hm(10, 31))
        assert run.finished_at.tzinfo is timezone.utc and run.duration_ms >= 1000
        assert run.started_at < run.finished_at
        fields = [f.name for f in stored.__attrs_attrs__]
        assert [getattr(run, f) for f in fields] == [getattr(stored, f) for f in fields]


def with_a_raising_observer(max_concurrent: int) -> tuple[MemoryJobStore, ManualClock,
                                                         ThreadRunner, ThreadScheduler]:
    """A scheduler of no-op handlers whose notify callable (passed straight
    to it, not wrapped like the Host's) raises for every run_finished."""
    store = MemoryJobStore()
    clock = ManualClock(T0)
    runner = ThreadRunner(max_workers=max_concurrent)

    def notify(name, run, job):
        if name == "run_finished":
            raise RuntimeError("observer down")

    scheduler = ThreadScheduler(store=store, runner=runner, clock=clock, notify=notify,
                                max_concurrent=max_concurrent,
                                resolve=lambda plugin_key, job_key: (lambda ctx: None))
    return store, clock, runner, scheduler


def test_a_raising_notify_leaves_no_run_holding_a_place():
    # If it raises while the loop announces a round's ends, the runs must
    # still leave the in-flight table (and free their places).
    store, clock, runner, scheduler = with_a_raising_observer(3)
    try:
        store.sync_jobs(PLUGIN, KEY, [decl(f"j{i}", "* * * * *") for i in range(3)],
                        now=clock.now())
        scheduler.register_plugin(PLUGIN, KEY)
        scheduler.start()
        clock.set(hm(10, 31))
        wait_for(lambda: [r.status for r in store.list_runs(plugin_id=PLUGIN).runs]
                 == [RunStatus.succeeded] * 3, 5, "the three runs recorded")
        wait_for(lambda: not scheduler.diagnostics()["active_run_ids"], 5, "places free")
    finally:
        started = time.monotonic()
        scheduler.stop(5)
        assert time.monotonic() - started < 2  # nothing left to drain
        runner.stop()


def test_a_raising_notify_frees_the_place_of_a_run_ended_off_the_loop():
    # Ticks by hand: the worker records and releases its own run. An
    # observer that raised there used to keep the run in flight for good,
    # so a scheduler capped at one never started anything again.
    store, clock, runner, scheduler = with_a_raising_observer(1)
    try:
        store.sync_jobs(PLUGIN, KEY, [decl("j", "* * * * *")], now=clock.now())
        scheduler.register_plugin(PLUGIN, KEY)
        for minute in (31, 32):
            clock.set(hm(10, minute))
            assert scheduler.tick() == 1
            wait_for(lambda: not scheduler.diagnostics()["active_run_ids"], 5, "place free")
        assert [r.status for r in store.list_runs(plugin_id=PLUGIN).runs] == [
            RunStatus.succeeded] * 2
    finally:
        scheduler.stop(5)
        runner.stop()


# -- runs the loop marks running itself -------------------------------------------


class HeldRunner(ThreadRunner):
    """A ThreadRunner whose workers wait at a gate before each call."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.gate = threading.Event()
        self.waiting = threading.Event()

    def submit(self, handler, context):
        def held(ctx):
            self.waiting.set()
            self.gate.wait(10)
            return handler(ctx)

        return super().submit(held, context)


@pytest.mark.parametrize("by_owner", [True, False], ids=["cancel_runs", "one by one"])
def test_a_started_run_whose_plugin_is_unregistered_before_its_worker_takes_it_never_calls_the_handler(
        by_owner):
    runner = HeldRunner(max_workers=2)
    handler = Gate()
    handler.release.set()

    def let_the_worker_go():
        runner.gate.set()
        wait_for(lambda: handler.calls or runner.idle_workers() == 2, 5, "the worker")

    class LetTheWorkerGoFirst(MemoryJobStore):
        # the worker goes on after the store cancelled the run but before
        # the scheduler signals it: the window the scheduler must close
        def cancel_runs(self, *args, **kwargs):
            cancelled = super().cancel_runs(*args, **kwargs)
            let_the_worker_go()
            return cancelled

    class WithoutOwners(MemoryJobStore):
        # a store whose cancel_runs predates its owner argument: the
        # scheduler cancels its runs one by one, through complete_run
        def cancel_runs(self, plugin_id, *, reason, now, job_id=None):
            raise AssertionError("a store without owners is never asked to cancel them all")

        def complete_run(self, run_id, **kwargs):
            applied = super().complete_run(run_id, **kwargs)
            if kwargs.get("status") is RunStatus.cancelled:
                let_the_worker_go()
            return applied

    env = Env(LetTheWorkerGoFirst() if by_owner else WithoutOwners(), runner=runner)
    try:
        env.load(decl("sync"))
        env.handle("sync", handler)
        env.clock.set(hm(10, 45))
        assert env.scheduler.tick() == 1
        (run,) = env.runs()
        # recorded running by the loop, for an idle worker
        assert env.run(run.id).status is RunStatus.running
        assert runner.waiting.wait(5)
        assert env.scheduler.unregister_plugin(PLUGIN, "disabled") == [run.id]
        env.settle()
        assert handler.calls == 0
        assert env.run(run.id).status is RunStatus.cancelled
        assert env.events_of("run_started") == []
    finally:
        runner.gate.set()
        env.close()


def test_runs_beyond_the_idle_workers_are_marked_running_by_their_worker(memory_env):
    env = memory_env(max_workers=1, max_concurrent=3)
    env.load(decl("a"), decl("b"), decl("c"))
    gates = {key: env.handle(key, Gate()) for key in "abc"}
    env.clock.set(hm(10, 45))
    assert env.scheduler.tick() == 3
    # one worker: one run started by the loop, two wait queued in the runner
    wait_for(lambda: sum(g.calls for g in gates.values()) == 1, 5, "one handler")
    statuses = sorted(r.status.value for r in env.runs())
    assert statuses == ["queued", "queued", "running"]
    for gate in gates.values():
        gate.release.set()
    env.settle()
    assert sorted(r.status.value for r in env.runs()) == ["succeeded"] * 3
    # each started when its handler did, not when the loop dispatched it
    assert all(r.started_at is not None for r in env.runs())


# -- orphans: runs of this scheduler it does not know about ---------------------------


def test_a_run_a_failed_claim_left_running_is_adopted_and_run_once():
    class CommitsThenFails(MemoryJobStore):
        fail = False

        def claim_slots(self, claims, *, start=0):
            done = super().claim_slots(claims, start=start)
            if self.fail:  # committed, then the connection is lost
                self.fail = False
                raise StoreError("connection lost at commit")
            return done

    env = Env(CommitsThenFails())
    try:
        env.load(decl("sync"))
        handler = env.handle("sync", Gate())
        handler.release.set()
        env.clock.set(hm(10, 45))
        env.store.fail = True
        with pytest.raises(StoreError):
            env.scheduler.tick()
        (run,) = env.runs()
        assert run.status is RunStatus.running and handler.calls == 0  # nobody runs it
        env.clock.advance(1)
        assert env.scheduler.tick() == 0  # the round after the failure adopts it
        env.settle()
        assert handler.calls == 1 and env.run(run.id).status is RunStatus.succeeded
    finally:
        env.close()


def test_an_adopted_run_times_out_from_its_start_not_from_the_failed_claim():
    class CommitsThenFails(MemoryJobStore):
        fail = False

        def claim_slots(self, claims, *, start=0):
            done = super().claim_slots(claims, start=start)
            if self.fail:
                self.fail = False
                raise StoreError("connection lost at commit")
            return done

    env = Env(CommitsThenFails(), default_timeout=300)
    try:
        env.load(decl("sync"))
        handler = env.handle("sync", Gate())
        env.clock.set(hm(10, 45))
        env.store.fail = True
        with pytest.raises(StoreError):
            env.scheduler.tick()
        (run,) = env.runs()
        env.clock.set(hm(10, 51))  # back after 6 minutes: more than the timeout
        env.scheduler.tick()
        wait_for(lambda: handler.calls == 1, 5, "the adopted run's handler")
        env.clock.advance(1)
        env.scheduler.tick()
        assert env.run(run.id).status is RunStatus.running  # 1 s of its 300
        env.clock.advance(300)
        env.scheduler.tick()
        assert env.run(run.id).error == "timed out after 300s"
    finally:
        handler.release.set()
        env.close()


def test_a_run_whose_end_was_given_up_is_never_adopted():
    class Troubled(MemoryJobStore):
        fail_complete = fail_due = False

        def complete_run(self, *args, **kwargs):
            if self.fail_complete:
                self.fail_complete = False
                raise ValueError("a value the store cannot take")
            return super().complete_run(*args, **kwargs)

        def complete_runs(self, ends):
            return [self.complete_run(**end) for end in ends]

        def due_jobs(self, *args, **kwargs):
            if self.fail_due:
                self.fail_due = False
                raise StoreError("blip")
            return super().due_jobs(*args, **kwargs)

    env = Env(Troubled())
    calls = []
    try:
        env.load(decl("sync"))
        env.handle("sync", lambda ctx: calls.append(ctx.run_id))
        env.store.fail_complete = True
        env.clock.set(hm(10, 45))
        assert env.scheduler.tick() == 1
        env.settle()
        (run,) = env.runs()
        assert run.status is RunStatus.running  # its end given up; leased still
        env.store.fail_due = True
        with pytest.raises(StoreError):
            env.scheduler.tick()  # an outage: orphans are looked for next round
        env.clock.advance(1)
        env.scheduler.tick()
        env.settle()
        assert calls == [run.id]
    finally:
        env.close()


def test_a_run_of_ours_that_ends_while_orphans_are_listed_is_not_adopted():
    gate = Gate()

    class EndsDuringTheListing(MemoryJobStore):
        hook = None

        def list_runs(self, *args, **kwargs):
            page = super().list_runs(*args, **kwargs)
            if self.hook and page.runs:
                hook, self.hook = self.hook, None
                hook()
            return page

    env = Env(EndsDuringTheListing())
    try:
        env.load(decl("sync"))
        env.handle("sync", gate)
        env.clock.set(hm(10, 45))
        with pytest.raises(StoreError):
            # a claim of this round raised: its instant is one orphans may have
            real = env.store.claim_slots
            env.store.claim_slots = lambda claims, *, start=0: (
                real(claims, start=start), (_ for _ in ()).throw(StoreError("lost")))[0]
            env.scheduler.tick()
        env.store.claim_slots = real
        (run,) = env.runs()
        # the failed claim's run, dispatched by nobody, listed running ...
        def finish_now():  # ... while an adoption of it (by hand) runs elsewhere
            env.scheduler._dispatch(env.job("sync"), run)
            wait_for(lambda: gate.calls == 1, 5, "the handler")
            gate.release.set()
            env.settle()
        env.store.hook = finish_now
        env.clock.advance(1)
        env.scheduler.tick()
        env.settle()
        assert gate.calls == 1  # read again before adopting: it had ended
        assert env.run(run.id).status is RunStatus.succeeded
    finally:
        gate.release.set()
        env.close()


def test_a_store_whose_claim_slots_predates_start_still_runs_every_slot():
    class Older(MemoryJobStore):
        marked: list = []

        def claim_slots(self, claims):  # overridden for speed, before start existed
            return [self.claim_slot(**claim) for claim in claims]

        def mark_runs_running(self, run_ids, **kwargs):
            self.marked.extend(run_ids)
            return super().mark_runs_running(run_ids, **kwargs)

    env = Env(Older())
    try:
        env.load(decl("a"), decl("b"))
        env.handle("a", lambda ctx: None)
        env.handle("b", lambda ctx: None)
        env.clock.set(hm(10, 45))
        assert env.scheduler.tick() == 2
        env.settle()
        runs = env.runs()
        assert {r.status for r in runs} == {RunStatus.succeeded}
        # claimed queued, then started by the loop together, for idle workers
        assert sorted(env.store.marked) == sorted(r.id for r in runs)
    finally:
        env.close()


def test_a_refused_claim_among_those_to_start_leaves_its_worker_to_a_queued_run(memory_env):
    # 2 idle workers for 3 claims: the first two would start with their
    # claims; the first is refused, so the loop starts the third itself
    env = memory_env(max_workers=2, max_concurrent=3)
    env.load(decl("a"), decl("b"), decl("c"))
    for key in "abc":
        env.handle(key, lambda ctx: None)
    env.clock.set(hm(10, 45))
    started, refused = [], []
    real_claim, real_mark = env.store.claim_slots, env.store.mark_runs_running

    def claim_slots(claims, *, start=0):
        first = claims[0]  # taken by another scheduler just before
        env.store.set_next_run(first["job_id"], expected=first["expected"],
                               next_run_at=hm(11, 0), now=hm(10, 45))
        refused.append(first["job_id"])
        assert start == 2
        return real_claim(claims, start=start)

    def mark_runs_running(run_ids, **kwargs):
        started.extend(run_ids)
        return real_mark(run_ids, **kwargs)

    env.store.claim_slots, env.store.mark_runs_running = claim_slots, mark_runs_running
    assert env.scheduler.tick() == 2
    env.settle()
    runs = env.runs()
    assert {r.status for r in runs} == {RunStatus.succeeded} and len(runs) == 2
    assert refused[0] not in {r.job_id for r in runs}
    (third,) = started  # the queued one, marked running by the loop
    assert third in {r.id for r in runs}


# -- a round's ends go with its claims ------------------------------------------------


def counting(store_class):
    """*store_class* with a log of the batched calls the scheduler makes."""

    class Counting(store_class):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.calls: list[tuple[str, int, int]] = []

        def complete_and_claim(self, ends, claims, *, start=0):
            self.calls.append(("complete_and_claim", len(ends), len(claims)))
            self.inside = True  # the ABC's default calls complete_runs
            try:
                return super().complete_and_claim(ends, claims, start=start)
            finally:
                self.inside = False

        def complete_runs(self, ends):
            if not getattr(self, "inside", False):
                self.calls.append(("complete_runs", len(ends), 0))
            return super().complete_runs(ends)

    return Counting


@pytest.mark.parametrize("store_class", [MemoryJobStore, PeeweeJobStore])
def test_the_loop_records_a_round_s_ends_with_its_next_claims(store_class, tmp_path):
    args = [f"sqlite:///{tmp_path / 'jobs.db'}"] if store_class is PeeweeJobStore else []
    # more workers than the cap: only the scheduler keeps runs to 3 at once
    env = Env(counting(store_class)(*args), max_concurrent=3, max_workers=6,
              lease_seconds=6 * 3600)  # no lease renewal in the way
    try:
        # each run long enough for a round to come in between
        handler = env.run_due_together(12, lambda: time.sleep(0.01))
        runs = env.runs()
        assert len(runs) == 12 and {r.status for r in runs} == {RunStatus.succeeded}
        assert all(r.scheduled_for == hm(10, 31) for r in runs)
        # ends rode with claims (one call, one transaction on the peewee store) ...
        together = [c for c in env.store.calls if c[0] == "complete_and_claim"]
        assert together and sum(c[1] for c in together) >= 3
        assert all(c[2] >= 1 for c in together)
        # ... and the last ones, with nothing left to claim, went on their own
        alone = sum(c[1] for c in env.store.calls if c[0] == "complete_runs")
        assert sum(c[1] for c in together) + alone == 12
        # the places of runs whose end waited counted free, and the cap held
        assert handler.peak == 3
    finally:
        env.close()


def test_ends_committed_with_claims_are_released_though_the_dispatch_raises(monkeypatch):
    env = Env(MemoryJobStore(), max_concurrent=1, lease_seconds=6 * 3600)
    armed = []
    real = ThreadScheduler._claimed

    def claimed(self, batch, claims, now):
        if armed:
            armed.clear()
            raise RuntimeError("a bug after the commit")
        return real(self, batch, claims, now)

    monkeypatch.setattr(ThreadScheduler, "_claimed", claimed)
    try:
        env.load(decl("a", "0 * * * *"), decl("b", "0 * * * *"))
        gates = {k: env.handle(k, Gate()) for k in "ab"}
        env.scheduler.start()
        env.clock.set(hm(11, 0))
        wait_for(lambda: sum(g.calls for g in gates.values()) == 1, what="the first handler")
        first, other = sorted(gates, key=lambda k: -gates[k].calls)
        armed.append(True)
        gates[first].release.set()
        wait_for(lambda: env.scheduler.diagnostics()["consecutive_errors"] == 1,
                 what="the failed round")
        # the end went with the claim and is committed: the job is free, the
        # end announced, though the claimed run never reached a worker ...
        (done,) = env.runs(first)
        assert done.status is RunStatus.succeeded
        wait_for(lambda: [e[1].id for e in env.events if e[0] == "run_finished"] == [done.id],
                 what="the end announced")
        assert env.job(first).id not in env.scheduler.diagnostics()["busy_job_ids"]
        # ... which is adopted once a round works again, and runs once
        gates[other].release.set()
        env.clock.advance(minutes=1)
        wait_for(lambda: gates[other].calls == 1, 10, "the claimed run, adopted")
        env.settle(10)
        assert [r.status for r in env.runs(other)] == [RunStatus.succeeded]
        assert gates[first].calls == 1
    finally:
        for gate in gates.values():
            gate.release.set()
        env.close()


@pytest.mark.parametrize("applies_ends", [False, True])
def test_ends_whose_round_failed_to_claim_are_recorded_later_once(applies_ends):
    class FailsOnce(MemoryJobStore):
        fail = False

        def complete_and_claim(self, ends, claims, *, start=0):
            if self.fail:
                self.fail = False
                if applies_ends:  # the ends committed, then the claims failed
                    self.complete_runs(ends)
                raise StoreError("connection lost")
            return super().complete_and_claim(ends, claims, start=start)

    env = Env(FailsOnce(), max_concurrent=1, lease_seconds=6 * 3600)
    try:
        env.load(decl("a", "0 * * * *"), decl("b", "0 * * * *"))
        gate_a, gate_b = env.handle("a", Gate()), env.handle("b", Gate())
        env.scheduler.start()
        env.clock.set(hm(11, 0))
        wait_for(lambda: gate_a.calls + gate_b.calls == 1, what="the first handler")
        first, gate = (gate_a, gate_b) if gate_a.calls else (gate_b, gate_a)
        env.store.fail = True  # the next round: its end and the other job's claim fail
        first.release.set()
        gate.release.set()
        wait_for(lambda: env.scheduler.diagnostics()["consecutive_errors"] == 1,
                 what="the failed round")
        env.clock.advance(minutes=1)  # past the back-off (the next slots are at noon)
        wait_for(lambda: gate.calls == 1, 10, "the other job, once the store is back")
        env.settle(10)
        assert not env.store.fail  # the round with the end and the claim did fail
        runs = env.runs()
        assert sorted(r.status.value for r in runs) == ["succeeded", "succeeded"]
        assert gate_a.calls == gate_b.calls == 1
        finished = [e for e in env.events if e[0] == "run_finished"]
        assert sorted(e[1].id for e in finished) == sorted(r.id for r in runs)  # once each
    finally:
        env.close()


def test_jobs_of_one_schedule_due_from_different_slots_are_planned_apart(memory_env):
    # a round plans once per (schedule, zone, policy, pointer): jobs that
    # share all four share the plan, and only those
    env = memory_env()
    jobs = env.load(decl("a"), decl("b"), decl("c"))
    for key in "abc":
        env.handle(key, lambda ctx: None)
    behind = jobs["b"].next_run_at - timedelta(minutes=30)  # two slots further back
    assert env.store.set_next_run(jobs["b"].id, expected=jobs["b"].next_run_at,
                                  next_run_at=behind, now=T0)
    env.clock.set(hm(10, 45))
    assert env.scheduler.tick() == 3
    env.settle()
    assert [env.job(k).missed_count for k in "abc"] == [0, 2, 0]
    assert {r.scheduled_for for r in env.runs()} == {hm(10, 45)}
    assert {env.job(k).next_run_at for k in "abc"} == {hm(11, 0)}


def test_a_job_whose_run_just_ended_is_claimed_with_its_end():
    class Recording(MemoryJobStore):
        together: list = []

        def complete_and_claim(self, ends, claims, *, start=0):
            self.together.append(([e["run_id"] for e in ends], [c["job_id"] for c in claims]))
            return super().complete_and_claim(ends, claims, start=start)

    env = Env(Recording(), lease_seconds=6 * 3600)
    try:
        job = env.load(decl("tick", "* * * * * *"))["tick"]  # every second
        gate = env.handle("tick", Gate())
        env.scheduler.start()
        env.clock.set(hm(10, 31))
        wait_for(lambda: gate.calls == 1, what="the first run")
        env.clock.advance(seconds=1)  # its next slot is due while it runs
        gate.release.set()
        wait_for(lambda: len(env.runs()) == 2, what="the next slot")
        first, second = env.runs()
        assert second.scheduled_for == hm(10, 31, 1)
        # one store call: the first run's end, then the claim of the next slot
        assert ([first.id], [job.id]) in env.store.together
    finally:
        gate.release.set()
        env.close()


def test_a_store_without_start_gets_a_round_s_ends_on_their_own():
    class Older(MemoryJobStore):
        def claim_slots(self, claims):  # overridden before start existed
            return [self.claim_slot(**claim) for claim in claims]

    env = Env(Older(), max_concurrent=2, max_workers=4, lease_seconds=6 * 3600)
    try:
        handler = env.run_due_together(8, lambda: time.sleep(0.005))
        assert sorted(r.status.value for r in env.runs()) == ["succeeded"] * 8
        assert handler.peak <= 2
    finally:
        env.close()


@contextlib.contextmanager
def _cycles_found(found: list[str]):
    """Collects the pjcore and concurrent.futures objects that reference
    cycles kept alive while the block ran (the collector off meanwhile)."""
    import gc

    was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        yield
    finally:
        try:
            gc.collect()
            garbage = list(gc.garbage)
        finally:
            # the interpreter's settings first: a failure below must not
            # leave the collector off for the rest of the session
            gc.set_debug(0)
            gc.garbage.clear()
            if was_enabled:
                gc.enable()
        found.extend(sorted({type(o).__qualname__ for o in garbage
                             if str(type(o).__module__).startswith(("pjcore", "concurrent"))}))
        del garbage


def test_runs_leave_no_reference_cycles(tmp_path):
    # What a run allocates (its future, context, in-flight entry, records)
    # is freed by reference counting when the run is done. Left in a cycle,
    # a burst's runs pile up for the cyclic collector, whose passes over
    # them cost several percent of a burst and grow the heap meanwhile.
    from pjcore import bench

    found: list[str] = []
    result = bench.burst(bench.Settings(jobs=200, max_concurrent=4),
                         bench.Target(f"sqlite:///{tmp_path}/cycles.db"),
                         around=lambda: _cycles_found(found))
    assert result["ran_exactly_once"]
    assert found == []


def test_manual_failed_and_timed_out_runs_leave_no_reference_cycles(tmp_path):
    # the other ways a run ends, through the running loop
    env = Env(PeeweeJobStore(f"sqlite:///{tmp_path}/cycles.db"), clock=SystemClock())
    try:
        env.load(decl("ok", None), decl("boom", None), decl("slow", None, timeout_seconds=0.05))
        env.handle("ok", lambda ctx: None)
        env.handle("boom", lambda ctx: 1 / 0)
        env.handle("slow", lambda ctx: ctx.wait(5))
        env.scheduler.start()
        found: list[str] = []
        with _cycles_found(found):
            run_ids = [env.scheduler.trigger(env.job(key).id) for key in ("ok", "boom", "slow")]
            for run_id, status in zip(run_ids, ("succeeded", "failed", "failed")):
                env.wait_status(run_id, status)
            env.settle()
        assert found == []
        assert env.run(run_ids[2]).error == "timed out after 0.05s"
    finally:
        env.close()


# -- a runner's mistakes in call() ------------------------------------------------


class MisdeliveringRunner(ThreadRunner):
    """Hands *deliver(outcome)*'s outcomes to the scheduler's done instead of the real one."""

    def __init__(self, deliver: Callable[[Any], list], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.deliver = deliver

    def call(self, handler, context, done):
        super().call(handler, context, lambda outcome: [done(o) for o in self.deliver(outcome)])


@pytest.mark.parametrize("deliver, status, error", [
    # not an Outcome: recorded failed, the job freed
    (lambda outcome: ["succeeded"], RunStatus.failed, "not an Outcome: 'succeeded'"),
    # a status no run ends with: recorded failed, the job freed
    (lambda outcome: [Outcome("timeout")], RunStatus.failed,
     "not an outcome status: 'timeout'"),
    (lambda outcome: [Outcome("running")], RunStatus.failed,
     "not an outcome status: 'running'"),
    (lambda outcome: [Outcome(["failed"])], RunStatus.failed,
     "not an outcome status: ['failed']"),
    (lambda outcome: [type("Unhashable", (), {"status": ["failed"], "__repr__":
                                              lambda self: "Unhashable()"})()],
     RunStatus.failed, "not an Outcome: Unhashable()"),
    # two outcomes for one call: the first counts
    (lambda outcome: [outcome, Outcome("failed", "late")], RunStatus.succeeded, None),
])
def test_a_runner_that_misdelivers_an_outcome_never_leaves_the_job_busy(deliver, status, error):
    env = Env(MemoryJobStore(), runner=MisdeliveringRunner(deliver, max_workers=2))
    try:
        env.load(decl("sync"))
        calls = []
        env.handle("sync", calls.append)
        env.clock.set(hm(10, 45))
        assert env.scheduler.tick() == 1
        wait_for(lambda: calls, 5, "the handler")
        env.settle()
        (run,) = env.runs()
        assert run.status is status and run.error == (None if error is None
                                                      else f"runner error: {error}")
        assert [name for name, _, _ in env.events if name == "run_finished"] == ["run_finished"]
        # free again: the next slot runs
        env.clock.set(hm(11, 0))
        assert env.scheduler.tick() == 1
        env.settle()
        assert len(calls) == 2
    finally:
        env.close()
