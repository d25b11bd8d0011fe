"""Stopping from inside: a handler or an observer that stops its own scheduler
or Host, and a stop whose loop is held up by the store."""

from __future__ import annotations

import threading
import time
from datetime import datetime, timezone

from pjtest import wait_for

from pjcore import Host, ManualClock, hookimpl
from pjcore.contrib.memory import MemoryJobStore
from pjcore.contrib.runner import ThreadRunner
from pjcore.contrib.scheduler import ThreadScheduler
from pjcore.manifest import JobDeclaration
from pjcore.models import RunStatus

UTC = timezone.utc
PLUGIN, KEY = "plugin-a", "acme"


def manual_job(store: MemoryJobStore) -> str:
    store.sync_jobs(PLUGIN, KEY, [JobDeclaration(job_key="j", display_name="J", schedule=None)],
                    now=datetime.now(UTC))
    return store.list_jobs(PLUGIN)[0].id


def loops() -> list[threading.Thread]:
    return [t for t in threading.enumerate()
            if t.name in ("pjcore-scheduler", "pjcore-stop", "pjcore-host-stop") and t.is_alive()]


def test_an_observer_on_the_loop_can_stop_its_scheduler():
    # The loop announces a round's ends holding its record lock: a stop()
    # from there used to wait for that lock, on the same thread, forever.
    store = MemoryJobStore()
    runner = ThreadRunner(max_workers=2)
    returned, called_on = threading.Event(), []

    def notify(name, run, job):
        if name == "run_finished":
            called_on.append(threading.current_thread().name)
            scheduler.stop(timeout=None)
            returned.set()

    scheduler = ThreadScheduler(store=store, runner=runner, notify=notify,
                                resolve=lambda plugin_key, job_key: (lambda ctx: None))
    try:
        job_id = manual_job(store)
        scheduler.register_plugin(PLUGIN, KEY)
        scheduler.start()
        run_id = scheduler.trigger(job_id)
        assert returned.wait(5), "stop() from the observer did not return"
        assert called_on == ["pjcore-scheduler"]
        wait_for(lambda: not loops(), 5, "the loop and the stop to end")
        assert not scheduler.diagnostics()["running"]
        assert scheduler.diagnostics()["active_run_ids"] == []
        assert store.get_run(run_id).status is RunStatus.succeeded
    finally:
        scheduler.stop(1)
        runner.stop(1)


def test_a_handler_can_stop_its_scheduler_and_its_run_still_succeeds():
    # A stop() from the handler used to wait for the handler's own run, then
    # record it cancelled ("shutdown") although it went on to succeed.
    store = MemoryJobStore()
    runner = ThreadRunner(max_workers=2)
    took = []

    def handler(ctx):
        started = time.monotonic()
        scheduler.stop(timeout=5)
        took.append(time.monotonic() - started)

    scheduler = ThreadScheduler(store=store, runner=runner,
                                resolve=lambda plugin_key, job_key: handler)
    try:
        job_id = manual_job(store)
        scheduler.register_plugin(PLUGIN, KEY)
        scheduler.start()
        run_id = scheduler.trigger(job_id)
        wait_for(lambda: took and not loops(), 8, "the handler and the stop to end")
        assert took[0] < 1
        assert store.get_run(run_id).status is RunStatus.succeeded
        assert not scheduler.diagnostics()["running"]
    finally:
        scheduler.stop(1)
        runner.stop(1)


class Handlers:
    def __init__(self, handler) -> None:
        self.handler = handler

    @hookimpl
    def register_job_handlers(self, register):
        register("acme", "sync", self.handler)


MANIFEST = {"key": "acme", "jobs": [{"job_key": "sync", "display_name": "Sync"}]}


def test_an_observer_can_stop_its_host_and_the_store_closes_after_the_drain(tmp_path):
    host_box: list[Host] = []
    returned = threading.Event()

    class StopOnFinish:
        @hookimpl
        def run_finished(self, run, job):
            host_box[0].stop(timeout=None)
            returned.set()

    host = Host(f"sqlite:///{tmp_path}/h.db", load_entrypoints=False,
                plugins=[Handlers(lambda ctx: None), StopOnFinish()])
    host_box.append(host)
    host.start()
    host.load_plugin("p1", "acme", MANIFEST)
    run_id = host.trigger("p1", "sync")
    assert returned.wait(5), "Host.stop() from an observer did not return"
    wait_for(lambda: not loops(), 5, "the Host's stop to end")
    assert not host.scheduler.diagnostics()["running"]
    reopened = Host(f"sqlite:///{tmp_path}/h.db", load_entrypoints=False)
    try:
        assert reopened.store.get_run(run_id).status is RunStatus.succeeded
    finally:
        reopened.stop()


def test_a_handler_can_stop_its_host(tmp_path):
    host_box: list[Host] = []
    took = []

    def handler(ctx):
        started = time.monotonic()
        host_box[0].stop(timeout=5)
        took.append(time.monotonic() - started)

    host = Host(f"sqlite:///{tmp_path}/h.db", load_entrypoints=False,
                plugins=[Handlers(handler)])
    host_box.append(host)
    host.start()
    host.load_plugin("p1", "acme", MANIFEST)
    run_id = host.trigger("p1", "sync")
    wait_for(lambda: took and not loops(), 8, "the handler and the Host's stop to end")
    assert took[0] < 1
    reopened = Host(f"sqlite:///{tmp_path}/h.db", load_entrypoints=False)
    try:
        assert reopened.store.get_run(run_id).status is RunStatus.succeeded
    finally:
        reopened.stop()


def test_stop_does_not_wait_past_its_timeout_for_a_round_held_up_by_the_store():
    class SlowDue(MemoryJobStore):
        reading = threading.Event()

        def due_jobs(self, now, **kwargs):
            self.reading.set()
            time.sleep(2)
            return super().due_jobs(now, **kwargs)

    store = SlowDue()
    runner = ThreadRunner(max_workers=1)
    scheduler = ThreadScheduler(store=store, runner=runner, clock=ManualClock(),
                                resolve=lambda plugin_key, job_key: None)
    manual_job(store)
    scheduler.register_plugin(PLUGIN, KEY)
    scheduler.start()
    try:
        assert store.reading.wait(5)
        started = time.monotonic()
        scheduler.stop(timeout=0.3)
        assert time.monotonic() - started < 1.5
    finally:
        runner.stop(1)
        wait_for(lambda: not loops(), 5, "the loop to end")


def test_a_run_started_without_the_loop_keeps_its_lease_while_its_handler_runs(tmp_path):
    # `pjcore trigger` runs a job without the scheduler's loop. Its lease
    # used to be renewed by the loop only: once it ran out, a scheduler
    # sharing the database recorded the run abandoned while it still ran,
    # and could start the job a second time.
    from pjcore.contrib.peewee_store import PeeweeJobStore

    url = f"sqlite:///{tmp_path}/shared.db"
    cli_store, daemon_store = PeeweeJobStore(url), PeeweeJobStore(url)
    release = threading.Event()
    cli_runner, daemon_runner = ThreadRunner(max_workers=1), ThreadRunner(max_workers=1)
    cli = ThreadScheduler(store=cli_store, runner=cli_runner, owner="cli", lease_seconds=0.6,
                          resolve=lambda plugin_key, job_key: (lambda ctx: release.wait(10)))
    daemon = ThreadScheduler(store=daemon_store, runner=daemon_runner, owner="daemon",
                             lease_seconds=0.6, max_idle=0.1,
                             resolve=lambda plugin_key, job_key: (lambda ctx: None))
    try:
        job_id = manual_job(cli_store)
        cli.register_plugin(PLUGIN, KEY)
        daemon.register_plugin(PLUGIN, KEY)
        daemon.start()  # sweeps for expired leases every 0.2 s
        run_id = cli.trigger(job_id)
        time.sleep(2)  # more than three leases
        assert cli_store.get_run(run_id).status is RunStatus.running
        release.set()
        wait_for(lambda: cli_store.get_run(run_id).status.terminal, 5, "the run's end")
        assert cli_store.get_run(run_id).status is RunStatus.succeeded
        wait_for(lambda: not [t for t in threading.enumerate()
                              if t.name == "pjcore-leases" and t.is_alive()], 5,
                 "the lease keeper to end with the run")
    finally:
        release.set()
        daemon.stop(1)
        cli.stop(1)
        cli_runner.stop(1)
        daemon_runner.stop(1)
        cli_store.close()
        daemon_store.close()


def test_an_observer_of_an_end_recorded_on_retry_can_stop_its_scheduler():
    # The end the store refused once is recorded by the next round, which
    # holds the record lock while it announces: an observer stopping the
    # scheduler there (any thread that announces, not only the loop's) used
    # to wait for that lock, on its own thread, forever.
    from pjcore.exceptions import StoreError

    class RefusesOnce(MemoryJobStore):
        refused = False

        def complete_run(self, run_id, **kwargs):
            if not self.refused:
                self.refused = True
                raise StoreError("database is locked")
            return super().complete_run(run_id, **kwargs)

    store = RefusesOnce()
    runner = ThreadRunner(max_workers=1)
    stopped = threading.Event()

    def notify(name, run, job):
        if name == "run_finished":
            scheduler.stop(timeout=None)
            stopped.set()

    scheduler = ThreadScheduler(store=store, runner=runner, notify=notify, clock=ManualClock(),
                                resolve=lambda plugin_key, job_key: (lambda ctx: None))
    try:
        job_id = manual_job(store)
        scheduler.register_plugin(PLUGIN, KEY)
        run_id = scheduler.trigger(job_id)
        wait_for(lambda: store.refused, 5, "the refused end")
        ticking = threading.Thread(target=scheduler.tick, daemon=True)
        ticking.start()  # its round records the end and announces it
        ticking.join(5)
        assert not ticking.is_alive(), "the round announcing the end hangs"
        assert stopped.is_set()
        wait_for(lambda: not loops(), 5, "the stop to end")
        assert store.get_run(run_id).status is RunStatus.succeeded
    finally:
        runner.stop(1)


def test_a_loop_that_stop_gave_up_waiting_for_starts_nothing_more():
    # stop(timeout) returns while the loop is still in a claim that then
    # commits: that run is recorded cancelled, not started behind the stop.
    class SlowClaims(MemoryJobStore):
        claiming = threading.Event()

        def claim_slots(self, claims, **kwargs):
            self.claiming.set()
            time.sleep(1.0)
            return super().claim_slots(claims, **kwargs)

    store = SlowClaims()
    runner = ThreadRunner(max_workers=1)
    called = []
    clock = ManualClock(datetime(2026, 1, 15, 10, 30, tzinfo=UTC))
    scheduler = ThreadScheduler(store=store, runner=runner, clock=clock,
                                resolve=lambda plugin_key, job_key: called.append)
    try:
        store.sync_jobs(PLUGIN, KEY, [JobDeclaration(job_key="j", display_name="J",
                                                     schedule="*/15 * * * *")], now=clock.now())
        scheduler.register_plugin(PLUGIN, KEY)
        clock.set(datetime(2026, 1, 15, 10, 45, tzinfo=UTC))
        scheduler.start()
        assert store.claiming.wait(5)
        scheduler.stop(timeout=0.2)
        wait_for(lambda: not loops(), 5, "the loop to end")
        time.sleep(0.2)
        assert called == []
        (run,) = store.list_runs(plugin_id=PLUGIN).runs
        assert (run.status, run.error) == (RunStatus.cancelled, "shutdown")
    finally:
        runner.stop(1)
