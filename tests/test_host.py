"""Host wiring that the other suites do not reach."""

from __future__ import annotations

import pytest

from pjcore import Host, ManualClock, hookimpl
from pjcore.contrib.memory import MemoryJobStore
from pjcore.exceptions import ConfigurationError, StoreError
from pjcore.host import _Notifier
from pjcore.plugins import make_plugin_manager


class Observer:
    def __init__(self) -> None:
        self.finished = []

    @hookimpl
    def run_finished(self, run, job):
        self.finished.append((run.status.value, job.job_key))


def test_the_notifier_knows_whether_anyone_listens():
    pm = make_plugin_manager(load_entrypoints=False)
    notifier = _Notifier(pm)
    assert not notifier.has_listeners("run_finished")
    observer = Observer()
    pm.register(observer)
    assert notifier.has_listeners("run_finished")
    assert not notifier.has_listeners("run_started")


def test_runs_are_recorded_with_and_without_observers(tmp_path):
    class Handlers:
        @hookimpl
        def register_job_handlers(self, register):
            register("acme", "sync", lambda ctx: None)

    manifest = {"key": "acme", "jobs": [{"job_key": "sync", "display_name": "Sync",
                                         "schedule": "*/15 * * * *"}]}
    for observers in ([], [Observer()]):
        clock = ManualClock()
        host = Host(f"sqlite:///{tmp_path}/h{len(observers)}.db", load_entrypoints=False,
                    plugins=[Handlers(), *observers], clock=clock)
        try:
            host.load_plugin("p1", "acme", manifest)
            clock.set(host.job("p1", "sync").next_run_at)
            assert host.scheduler.tick() == 1
            host.scheduler.stop(timeout=5)
            (run,) = host.runs("p1").runs
            assert run.status.value == "succeeded"
            if observers:
                assert observers[0].finished == [("succeeded", "sync")]
        finally:
            host.stop()


def test_a_plugin_loaded_hook_that_raises_skips_that_plugin_only(pjcore_logs):
    class Declarer:
        @hookimpl
        def register_manifests(self, register):
            for key in ("acme.bad", "acme.good"):
                register({"key": key, "jobs": [{"job_key": "sync", "display_name": "Sync"}]})

    class BuggyObserver:
        @hookimpl
        def plugin_loaded(self, plugin_id, plugin_key, manifest):
            if plugin_key == "acme.bad":
                raise RuntimeError("observer bug")

    host = Host(store="memory", load_entrypoints=False, plugins=[Declarer(), BuggyObserver()])
    try:
        # acme.bad sorts first: the loop must go on past it
        assert host.load_declared_plugins() == ["acme.good"]
        assert host.job("acme.good", "sync").plugin_key == "acme.good"
    finally:
        host.stop()
    (message,) = [m for m in pjcore_logs if "could not load plugin" in m]
    assert "acme.bad" in message and "RuntimeError" in message and "observer bug" in message
    assert message.record["exception"] is not None


def test_plugins_and_a_plugin_manager_together_are_refused(tmp_path):
    class Handlers:
        @hookimpl
        def register_job_handlers(self, register):
            register("acme", "a", lambda ctx: None)

    pm = make_plugin_manager(load_entrypoints=False)
    database = tmp_path / "never.db"
    with pytest.raises(ConfigurationError, match="plugins or plugin_manager"):
        Host(f"sqlite:///{database}", plugin_manager=pm, plugins=[Handlers()])
    assert not database.exists()  # refused before the store was opened
    assert pm.handlers.find("acme", "a") is None


class StoreMaker:
    """A plugin providing a memory store, keeping each store it makes."""

    def __init__(self) -> None:
        self.made: list[MemoryJobStore] = []

    @hookimpl
    def register_backends(self, register):
        def make(**options):
            store = MemoryJobStore()
            self.made.append(store)
            return store

        register("store", "kept", make)


def test_a_second_host_on_one_plugin_manager_is_refused_and_closes_its_store():
    maker = StoreMaker()
    pm = make_plugin_manager(load_entrypoints=False, plugins=[maker])
    first = Host(store="kept", plugin_manager=pm)
    try:
        with pytest.raises(ConfigurationError, match="another Host") as excinfo:
            Host(store="kept", plugin_manager=pm)
        assert "pjcore.coordinator" in str(excinfo.value)
        first_store, second_store = maker.made
        with pytest.raises(StoreError, match="closed"):
            second_store.list_jobs()
        # the first Host keeps its coordinator and its store
        assert pm.get_plugin("pjcore.coordinator") is first.coordinator
        assert first_store.list_jobs() == []
    finally:
        first.stop()
