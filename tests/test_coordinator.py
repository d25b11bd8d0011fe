"""The coordinator: lifecycle hooks called through pluggy on a Host, over a real SQLite store.

Unlike Paperclip's coordinator, errors reach the hook caller (an invalid
manifest, a bad plugin id, a store failure) and nothing is half-applied.
"""

from __future__ import annotations

import threading
import time
from datetime import datetime, timezone
from typing import Any

import pytest
from pjtest import wait_for

from pjcore import Host, ManualClock
from pjcore.exceptions import ManifestError, PjError, StoreError
from pjcore.hookspecs import hookimpl
from pjcore.manifest import JobDeclaration, Manifest
from pjcore.models import JobStatus, PausedBy, RunStatus

UTC = timezone.utc
T0 = datetime(2026, 1, 15, 10, 30, tzinfo=UTC)
PLUGIN_ID, KEY = "plugin-1", "acme"
OTHER_ID, OTHER_KEY = "plugin-2", "beta"


def hm(hour: int, minute: int, second: int = 0) -> datetime:
    return datetime(2026, 1, 15, hour, minute, second, tzinfo=UTC)


def job(job_key: str, schedule: str | None = "*/15 * * * *", **extra: Any) -> dict:
    return {"job_key": job_key, "display_name": job_key.title(), "schedule": schedule, **extra}


def manifest(*jobs: dict, key: str = KEY) -> dict:
    return {"key": key, "version": "1.0", "jobs": list(jobs)}


TWO_JOBS = manifest(job("sync"), job("report", "0 * * * *"))


class JobsPlugin:
    """Provides the handlers of both test plugins and records run notifications."""

    def __init__(self) -> None:
        self.started: list = []
        self.finished: list = []
        self.calls: list = []
        self.gate: threading.Event | None = None  # when set, "sync" waits on it
        self.saw_cancel: list[bool] = []

    def _handler(self, ctx) -> None:
        self.calls.append((ctx.plugin_key, ctx.job_key, ctx.scheduled_for))
        if ctx.job_key == "sync" and self.gate is not None:
            while not ctx.cancelled and not self.gate.is_set():
                ctx.wait(0.005)
            self.saw_cancel.append(ctx.cancelled)
            self.gate.wait(10)

    @hookimpl
    def register_job_handlers(self, register):
        for key in (KEY, OTHER_KEY):
            for job_key in ("sync", "report", "extra"):
                register(key, job_key, self._handler)

    @hookimpl
    def run_started(self, run, job):
        self.started.append(run)

    @hookimpl
    def run_finished(self, run, job):
        self.finished.append(run)


@pytest.fixture
def plugin():
    return JobsPlugin()


@pytest.fixture
def host(tmp_path, plugin):
    host = Host(f"sqlite:///{tmp_path}/host.db", load_entrypoints=False,
                clock=ManualClock(T0), plugins=[plugin], default_timeout=None)
    yield host
    if plugin.gate is not None:
        plugin.gate.set()
    host.stop(timeout=1)


def loaded(host, manifest_=TWO_JOBS, plugin_id=PLUGIN_ID, key=KEY) -> None:
    host.pm.hook.plugin_loaded(plugin_id=plugin_id, plugin_key=key, manifest=manifest_)


def disabled(host, plugin_id=PLUGIN_ID, key=KEY, reason=None) -> None:
    host.pm.hook.plugin_disabled(plugin_id=plugin_id, plugin_key=key, reason=reason)


def unloaded(host, plugin_id=PLUGIN_ID, key=KEY, remove_data=False) -> None:
    host.pm.hook.plugin_unloaded(plugin_id=plugin_id, plugin_key=key, remove_data=remove_data)


def jobs_by_key(host, plugin_id=PLUGIN_ID) -> dict:
    return {j.job_key: j for j in host.store.list_jobs(plugin_id)}


def runs(host, plugin_id=None) -> list:
    return list(host.store.list_runs(plugin_id=plugin_id, limit=1000).runs)


def snapshot(host) -> tuple:
    """Everything the store holds, plus what the scheduler lets run."""
    return (host.store.list_jobs(), runs(host), host.diagnostics()["registered_plugins"])


def tick_at(host, instant: datetime) -> int:
    host.clock.set(instant)
    started = host.scheduler.tick()
    settle(host)
    return started


def settle(host) -> None:
    wait_for(lambda: not host.diagnostics()["active_run_ids"], what="no run in flight")


# -- plugin_loaded --------------------------------------------------------------------------


def test_loaded_syncs_every_manifest_job_and_registers(host, plugin):
    loaded(host)
    jobs = jobs_by_key(host)
    assert set(jobs) == {"sync", "report"}
    assert all(j.status is JobStatus.active and j.plugin_key == KEY for j in jobs.values())
    assert jobs["sync"].next_run_at == hm(10, 45)
    assert jobs["report"].next_run_at == hm(11, 0)
    assert host.diagnostics()["registered_plugins"] == [KEY]
    assert sorted(host.coordinator.last_sync[PLUGIN_ID].inserted) == ["report", "sync"]
    # registered for real: the due job runs, and observers hear of it
    assert tick_at(host, hm(10, 45)) == 1
    assert [r.job_key for r in plugin.started] == ["sync"]
    assert [(r.job_key, r.status) for r in plugin.finished] == [("sync", RunStatus.succeeded)]


def test_loaded_accepts_a_manifest_object(host):
    loaded(host, Manifest(key=KEY, jobs=[JobDeclaration(job_key="sync", display_name="Sync",
                                                          schedule="*/5 * * * *")]))
    assert jobs_by_key(host)["sync"].next_run_at == hm(10, 35)


def test_loaded_with_no_jobs_pauses_the_jobs_declared_before_and_registers(host):
    loaded(host)
    for empty in (manifest(), {"key": KEY}, {"key": KEY, "jobs": None}):
        loaded(host, empty)
        jobs = jobs_by_key(host)
        assert {j.status for j in jobs.values()} == {JobStatus.paused}
        assert {j.paused_by for j in jobs.values()} == {PausedBy.manifest}
        assert {j.next_run_at for j in jobs.values()} == {None}
        assert host.diagnostics()["registered_plugins"] == [KEY]
    assert tick_at(host, hm(12, 0)) == 0
    assert runs(host) == []


def test_loaded_with_no_jobs_for_a_new_plugin_registers_it(host):
    loaded(host, manifest())
    assert jobs_by_key(host) == {}
    assert host.diagnostics()["registered_plugins"] == [KEY]


def test_loaded_twice_is_idempotent(host):
    loaded(host)
    before = snapshot(host)
    host.clock.advance(minutes=5)
    loaded(host)
    assert snapshot(host) == before
    assert sorted(host.coordinator.last_sync[PLUGIN_ID].unchanged) == ["report", "sync"]


def test_load_disable_load_makes_the_jobs_run_again(host, plugin):
    loaded(host)
    assert tick_at(host, hm(10, 45)) == 1
    disabled(host)
    assert host.diagnostics()["registered_plugins"] == []
    assert tick_at(host, hm(11, 0)) == 0
    host.clock.set(hm(11, 5))
    loaded(host)
    jobs = jobs_by_key(host)
    assert {j.status for j in jobs.values()} == {JobStatus.active}
    assert tick_at(host, hm(11, 5)) == 2  # sync's 11:00 and report's 11:00, caught up
    assert [(r.job_key, r.scheduled_for) for r in sorted(runs(host), key=lambda r: r.created_at)
            if r.job_key == "sync"] == [("sync", hm(10, 45)), ("sync", hm(11, 0))]
    assert jobs_by_key(host)["sync"].next_run_at == hm(11, 15)
    assert {r.status for r in plugin.finished} == {RunStatus.succeeded}


def test_changed_schedule_takes_effect_at_once(host):
    loaded(host, manifest(job("sync", "0 * * * *")))
    assert jobs_by_key(host)["sync"].next_run_at == hm(11, 0)
    host.clock.set(hm(10, 31))
    loaded(host, manifest(job("sync", "*/5 * * * *")))
    assert jobs_by_key(host)["sync"].next_run_at == hm(10, 35)
    assert tick_at(host, hm(10, 35)) == 1  # not at the old 11:00


def test_operator_pause_survives_a_reload(host):
    loaded(host)
    host.pause(KEY, "sync", reason="investigating")
    loaded(host)
    sync = jobs_by_key(host)["sync"]
    assert (sync.status, sync.paused_by, sync.status_reason) == (
        JobStatus.paused, PausedBy.operator, "investigating")
    assert tick_at(host, hm(11, 0)) == 1
    assert [r.job_key for r in runs(host)] == ["report"]


def test_a_job_removed_from_the_manifest_stops_and_comes_back(host):
    loaded(host)
    loaded(host, manifest(job("report", "0 * * * *")))
    assert jobs_by_key(host)["sync"].status is JobStatus.paused
    assert tick_at(host, hm(11, 0)) == 1
    loaded(host)
    assert jobs_by_key(host)["sync"].next_run_at == hm(11, 15)
    assert tick_at(host, hm(11, 15)) == 1


# -- errors reach the caller, and change nothing --------------------------------------------

INVALID_MANIFESTS = {
    "not a mapping": "acme",
    "another plugin's key": manifest(job("sync"), key="other"),
    "one bad cron among many": manifest(*(job(f"job{i}") for i in range(50)),
                                        job("bad", "61 * * * *"), job("last")),
    "duplicate job keys": manifest(job("sync"), job("report"), job("sync")),
    "unknown job field": manifest(job("sync", retries=3)),
    "bad policy": manifest(job("sync"), job("report", policy={"timeout_seconds": -1})),
    "jobs not a list": {"key": KEY, "jobs": {"sync": {}}},
    "bad timezone": manifest(job("sync", timezone="Mars/Olympus")),
    "bad job key": manifest(job("sync"), job("no spaces")),
    "missing display name": manifest({"job_key": "sync", "schedule": "* * * * *"}),
    "empty schedule": manifest(job("sync", "")),
    "manifest object with another key": Manifest(key="other"),
}


@pytest.mark.parametrize("case", list(INVALID_MANIFESTS))
def test_invalid_manifest_raises_and_changes_nothing(host, case):
    loaded(host)
    assert tick_at(host, hm(10, 45)) == 1  # some history
    host.pause(KEY, "report")
    before = snapshot(host)
    with pytest.raises(ManifestError):
        loaded(host, INVALID_MANIFESTS[case])
    assert snapshot(host) == before
    # nor for a plugin loaded for the first time: not even registered
    with pytest.raises(ManifestError):
        loaded(host, INVALID_MANIFESTS[case], plugin_id=OTHER_ID, key=KEY)
    assert snapshot(host) == before


@pytest.mark.parametrize("bad_id", [None, 123, "", "   ", "x" * 201, "a\x00b", ["plugin-1"]])
def test_bad_plugin_id_raises_a_pjcore_error_and_changes_nothing(host, bad_id):
    loaded(host)
    before = snapshot(host)
    with pytest.raises(PjError):
        loaded(host, plugin_id=bad_id)
    with pytest.raises(PjError):
        disabled(host, plugin_id=bad_id)
    with pytest.raises(PjError):
        unloaded(host, plugin_id=bad_id, remove_data=True)
    assert snapshot(host) == before


def test_store_failure_reaches_the_caller(host):
    loaded(host)
    host.store.close()
    with pytest.raises(StoreError):
        loaded(host)
    with pytest.raises(StoreError):
        disabled(host)
    with pytest.raises(StoreError):
        unloaded(host, remove_data=True)


def test_lifecycle_events_after_the_host_stopped_raise_instead_of_being_ignored(host):
    # Paperclip's coordinator silently ignores events after stop(); a host
    # that still sends them has a bug worth hearing about.
    loaded(host)
    host.stop()
    with pytest.raises(StoreError, match="closed"):
        loaded(host)
    with pytest.raises(StoreError, match="closed"):
        disabled(host)


# -- plugin_disabled / plugin_unloaded ------------------------------------------------------


def test_disabled_stops_new_runs_and_keeps_history(host):
    loaded(host)
    assert tick_at(host, hm(10, 45)) == 1
    history = runs(host)
    disabled(host, reason="maintenance")
    assert tick_at(host, hm(12, 0)) == 0
    assert runs(host) == history
    assert {j.status for j in jobs_by_key(host).values()} == {JobStatus.active}


def test_disabled_during_a_run_cancels_it_with_the_reason(host, plugin):
    plugin.gate = threading.Event()
    loaded(host)
    host.clock.set(hm(10, 45))
    host.scheduler.tick()
    (run,) = runs(host)
    # its handler called (the claim records the run running before a worker takes it)
    wait_for(lambda: host.run(run.id).status is RunStatus.running and plugin.calls)
    disabled(host, reason="maintenance")
    assert (host.run(run.id).status, host.run(run.id).error) == (RunStatus.cancelled, "maintenance")
    wait_for(lambda: plugin.saw_cancel == [True], what="the handler saw the cancellation")
    plugin.gate.set()  # the handler returns normally afterwards
    settle(host)
    assert host.run(run.id).status is RunStatus.cancelled
    assert [(r.id, r.status) for r in plugin.finished] == [(run.id, RunStatus.cancelled)]


def test_disabled_without_a_reason_records_a_default_one(host, plugin):
    plugin.gate = threading.Event()
    loaded(host)
    host.clock.set(hm(10, 45))
    host.scheduler.tick()
    disabled(host)
    assert runs(host)[0].error == "Plugin disabled"


def test_unloaded_keeps_jobs_and_runs(host):
    loaded(host)
    tick_at(host, hm(10, 45))
    jobs, history = host.store.list_jobs(), runs(host)
    unloaded(host, remove_data=False)
    assert host.diagnostics()["registered_plugins"] == []
    assert host.store.list_jobs() == jobs and runs(host) == history
    assert tick_at(host, hm(12, 0)) == 0


def test_unloaded_with_remove_data_deletes_the_plugins_jobs_and_runs(host):
    loaded(host)
    loaded(host, manifest(job("sync"), key=OTHER_KEY), plugin_id=OTHER_ID, key=OTHER_KEY)
    tick_at(host, hm(10, 45))
    others = (host.store.list_jobs(OTHER_ID), runs(host, OTHER_ID))
    unloaded(host, remove_data=True)
    assert host.store.list_jobs(PLUGIN_ID) == [] and runs(host, PLUGIN_ID) == []
    assert (host.store.list_jobs(OTHER_ID), runs(host, OTHER_ID)) == others
    assert host.diagnostics()["registered_plugins"] == [OTHER_KEY]


def test_lifecycle_events_for_an_unknown_plugin_are_harmless(host):
    loaded(host)
    tick_at(host, hm(10, 45))
    before = snapshot(host)
    disabled(host, plugin_id="ghost", key="ghost")
    unloaded(host, plugin_id="ghost", key="ghost", remove_data=False)
    unloaded(host, plugin_id="ghost", key="ghost", remove_data=True)
    assert snapshot(host) == before


# -- with the loop running ------------------------------------------------------------------


def test_lifecycle_with_the_scheduler_loop_running(host, plugin):
    host.start()
    host.clock.set(hm(10, 45))
    loaded(host)  # loaded at 10:45: the first slot is 11:00, the loop sleeps until then
    wait_for(lambda: host.diagnostics()["next_wake_at"] == hm(11, 0))
    host.clock.set(hm(11, 0))
    wait_for(lambda: len(plugin.finished) == 2, what="both 11:00 runs")
    disabled(host)
    host.clock.set(hm(12, 0))
    time.sleep(0.05)
    assert len(runs(host)) == 2
    loaded(host)  # registering wakes the loop: the missed 12:00 slots run at once
    wait_for(lambda: len(plugin.finished) == 4, what="catch-up runs after re-enable")
    assert {r.scheduled_for for r in plugin.finished[2:]} == {hm(12, 0)}
