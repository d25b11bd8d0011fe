"""Host wiring that the other suites do not reach."""

from __future__ import annotations

from pjcore import Host, ManualClock, hookimpl
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
