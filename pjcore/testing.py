"""Conformance suite for :class:`~pjcore.abc.JobStore` implementations.

The docstrings of :class:`pjcore.abc.JobStore` are the contract; this suite
checks every point of it through the public API only. A backend that passes
it can replace the default store.

To check your backend, subclass :class:`JobStoreContract` in a test module
(its name must start with ``Test`` so pytest collects it) and define a
``store`` fixture that yields a fresh, empty store and closes it afterwards::

    # tests/test_my_store.py
    import pytest

    from pjcore.testing import JobStoreContract
    from my_package import MyJobStore


    class TestMyJobStore(JobStoreContract):
        @pytest.fixture
        def store(self, tmp_path):
            store = MyJobStore(tmp_path / "jobs.db")
            yield store
            store.close()

For pytest's detailed assertion messages, add
``pytest.register_assert_rewrite("pjcore.testing")`` to your ``conftest.py``
before anything imports this module.

The store is used from several threads at once by the concurrency tests, as
the contract requires. Every instant passed in is timezone-aware, derived
from the fixed :data:`T0`, so no test depends on the wall clock.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from typing import Any, Callable
from zoneinfo import ZoneInfo

import pytest

from pjcore.exceptions import (
    JobAlreadyRunning,
    JobLookupError,
    JobStateError,
    SlotAlreadyClaimed,
    StoreError,
)
from pjcore.manifest import JobDeclaration, JobPolicy, MisfirePolicy
from pjcore.models import Job, JobRun, JobStatus, PausedBy, RunStatus, RunTrigger

__all__ = ["JobStoreContract", "T0", "at", "declaration"]

#: the instant every test starts from: a Thursday, 10:30 UTC
T0 = datetime(2026, 1, 15, 10, 30, tzinfo=timezone.utc)

PLUGIN, PLUGIN_KEY = "plugin-a", "acme.alpha"
OTHER, OTHER_KEY = "plugin-b", "acme.beta"
EVERY_15 = "*/15 * * * *"


def at(minutes: float = 0, seconds: float = 0) -> datetime:
    """``T0`` plus an offset."""
    return T0 + timedelta(minutes=minutes, seconds=seconds)


def hm(hour: int, minute: int, second: float = 0) -> datetime:
    """An instant on T0's day, UTC."""
    return T0.replace(hour=hour, minute=minute) + timedelta(seconds=second)


def declaration(
    job_key: str, schedule: str | None = EVERY_15, **fields: Any
) -> JobDeclaration:
    fields.setdefault("display_name", f"Job {job_key}")
    return JobDeclaration(job_key=job_key, schedule=schedule, **fields)


def assert_utc(value: datetime | None) -> None:
    assert value is not None
    assert value.tzinfo is not None and value.utcoffset() == timedelta(0), value


def race(n: int, call: Callable[[int], Any]) -> list[tuple[str, Any]]:
    """Call ``call(i)`` from *n* threads released at once; ``("ok", result)``
    or ``("error", exception)`` per thread."""
    barrier = threading.Barrier(n)

    def one(i: int) -> tuple[str, Any]:
        barrier.wait(timeout=30)
        try:
            return ("ok", call(i))
        except Exception as exc:  # noqa: BLE001 - the test inspects it
            return ("error", exc)

    with ThreadPoolExecutor(max_workers=n) as pool:
        return list(pool.map(one, range(n)))


class JobStoreContract:
    """The contract of :class:`pjcore.abc.JobStore` as pytest tests.

    Subclasses provide a ``store`` fixture yielding a fresh, empty store.
    """

    # -- helpers -------------------------------------------------------------

    def sync(self, store, *decls: JobDeclaration, plugin=PLUGIN, key=PLUGIN_KEY, now=T0):
        return store.sync_jobs(plugin, key, list(decls), now=now)

    def seed(self, store, *decls: JobDeclaration, plugin=PLUGIN, key=PLUGIN_KEY, now=T0) -> dict[str, Job]:
        """Sync *decls* (as the plugin's whole manifest) and return the jobs by key."""
        self.sync(store, *decls, plugin=plugin, key=key, now=now)
        return {j.job_key: j for j in store.list_jobs(plugin)}

    def one_job(self, store, schedule: str | None = EVERY_15, **kw: Any) -> Job:
        return self.seed(store, declaration("tick", schedule), **kw)["tick"]

    def run(self, store, job: Job, now: datetime, status: str = "queued", **kw: Any) -> JobRun:
        """A run of *job* created at *now* and driven to *status*."""
        kw.setdefault("exclusive", False)
        kw.setdefault("trigger", "manual")
        run = store.create_run(job.id, now=now, **kw)
        if status != "queued":
            if status != "skipped":
                assert store.mark_running(run.id, now=now)
            if status != "running":
                assert store.complete_run(run.id, status=status, now=now)
        return store.get_run(run.id)

    def ids(self, runs) -> list[str]:
        return [r.id for r in runs]

    def newest_first(self, runs) -> list[str]:
        return [r.id for r in sorted(runs, key=lambda r: (r.created_at, r.id), reverse=True)]

    # -- sync: inserts -------------------------------------------------------

    def test_sync_inserts_active_jobs_with_first_fire_time(self, store):
        policy = JobPolicy(timeout_seconds=30.0, misfire=MisfirePolicy.skip)
        result = self.sync(
            store,
            declaration("every15", EVERY_15, description="often", policy=policy),
            declaration("manual", None),
        )
        assert sorted(result.inserted) == ["every15", "manual"]
        assert result.updated == result.paused == result.reactivated == result.unchanged == ()

        every15 = store.get_job_by_key(PLUGIN, "every15")
        assert every15.next_run_at == hm(10, 45)
        assert every15.status is JobStatus.active
        assert every15.paused_by is None and every15.status_reason is None
        assert (every15.plugin_id, every15.plugin_key) == (PLUGIN, PLUGIN_KEY)
        assert every15.display_name == "Job every15" and every15.description == "often"
        assert every15.schedule == EVERY_15 and every15.timezone == "UTC"
        assert every15.policy == policy
        assert every15.last_run_at is None
        assert every15.created_at == every15.updated_at == T0
        assert isinstance(every15.id, str) and every15.id

        manual = store.get_job_by_key(PLUGIN, "manual")
        assert manual.status is JobStatus.active
        assert manual.next_run_at is None
        assert manual.id != every15.id

    def test_sync_first_fire_is_strictly_after_now_in_the_job_timezone(self, store):
        self.sync(
            store,
            declaration("on-the-slot", "30 10 * * *"),
            declaration("paris-noon", "0 12 * * *", timezone="Europe/Paris"),
        )
        # 10:30 is now itself, so the next one is tomorrow
        assert store.get_job_by_key(PLUGIN, "on-the-slot").next_run_at == hm(10, 30) + timedelta(days=1)
        # noon in Paris is 11:00 UTC in January
        assert store.get_job_by_key(PLUGIN, "paris-noon").next_run_at == hm(11, 0)

    # -- sync: updates -------------------------------------------------------

    def test_sync_twice_is_a_noop(self, store):
        decls = [declaration("a"), declaration("b", None), declaration("c", "0 9 * * MON")]
        self.sync(store, *decls)
        before = store.list_jobs(PLUGIN)
        result = self.sync(store, *decls, now=at(5))
        assert sorted(result.unchanged) == ["a", "b", "c"]
        assert result.inserted == result.updated == result.paused == result.reactivated == ()
        assert store.list_jobs(PLUGIN) == before

    def test_sync_keeps_the_pointer_of_an_unchanged_active_job_even_when_missed(self, store):
        self.sync(store, declaration("a"))
        result = self.sync(store, declaration("a"), now=at(90))
        assert result.unchanged == ("a",)
        assert store.get_job_by_key(PLUGIN, "a").next_run_at == hm(10, 45)

    def test_sync_changed_schedule_recomputes_next_run_from_now(self, store):
        created = self.seed(store, declaration("a", "*/7 * * * *"))["a"]
        assert created.next_run_at == hm(10, 35)
        result = self.sync(store, declaration("a", "*/5 * * * *"), now=hm(10, 52))
        assert result.updated == ("a",)
        job = store.get_job(created.id)
        assert job.schedule == "*/5 * * * *"
        assert job.next_run_at == hm(10, 55)  # from now, not from the old 10:35
        assert job.created_at == T0 and job.updated_at == hm(10, 52)
        assert job.status is JobStatus.active

    def test_sync_schedule_to_manual_and_back(self, store):
        job_id = self.seed(store, declaration("a"))["a"].id
        self.sync(store, declaration("a", None), now=at(1))
        assert store.get_job(job_id).next_run_at is None
        self.sync(store, declaration("a", "*/7 * * * *"), now=hm(10, 50))
        assert store.get_job(job_id).next_run_at == hm(10, 56)

    def test_sync_changed_timezone_recomputes_next_run(self, store):
        job_id = self.seed(store, declaration("a", "0 12 * * *"))["a"].id
        assert store.get_job(job_id).next_run_at == hm(12, 0)
        result = self.sync(store, declaration("a", "0 12 * * *", timezone="Europe/Paris"), now=at(10))
        assert result.updated == ("a",)
        job = store.get_job(job_id)
        assert job.timezone == "Europe/Paris"
        assert job.next_run_at == hm(11, 0)

    def test_sync_other_field_changes_update_the_job_and_keep_its_pointer(self, store):
        job_id = self.seed(store, declaration("a"))["a"].id
        policy = JobPolicy(misfire=MisfirePolicy.run_all, misfire_grace_seconds=60.0)
        changed = declaration("a", display_name="Renamed", description="new", policy=policy)
        result = self.sync(store, changed, now=at(60))
        assert result.updated == ("a",)
        job = store.get_job(job_id)
        assert (job.display_name, job.description, job.policy) == ("Renamed", "new", policy)
        assert job.next_run_at == hm(10, 45)
        assert job.updated_at == at(60)

    def test_sync_updates_every_job_of_a_large_manifest(self, store):
        # more jobs than a store writes in one statement or one round trip;
        # a quarter unchanged, the rest rescheduled, some renamed as well
        keys = [f"job-{i:03d}" for i in range(600)]
        ids = {k: j.id for k, j in self.seed(store, *(declaration(k) for k in keys)).items()}
        changed = [declaration(k) if i % 4 == 0 else
                   declaration(k, "*/5 * * * *", description=f"now {i}" if i % 4 == 1 else None)
                   for i, k in enumerate(keys)]
        result = self.sync(store, *changed, now=hm(10, 52))
        assert sorted(result.unchanged) == keys[::4]
        assert sorted(result.updated) == [k for i, k in enumerate(keys) if i % 4]
        jobs = {j.job_key: j for j in store.list_jobs(PLUGIN)}
        assert {k: j.id for k, j in jobs.items()} == ids
        for i, key in enumerate(keys):
            job = jobs[key]
            if i % 4 == 0:
                assert (job.schedule, job.next_run_at, job.updated_at) == (EVERY_15, hm(10, 45), T0), key
            else:
                assert (job.schedule, job.next_run_at, job.updated_at) == (
                    "*/5 * * * *", hm(10, 55), hm(10, 52)), key
            assert job.description == (f"now {i}" if i % 4 == 1 else None), key

    # -- sync: pauses and re-activation --------------------------------------

    def test_sync_pauses_jobs_missing_from_the_manifest_and_keeps_their_runs(self, store):
        jobs = self.seed(store, declaration("a"), declaration("b"))
        run = self.run(store, jobs["b"], at(1), "succeeded")
        result = self.sync(store, declaration("a"), now=at(5))
        assert result.paused == ("b",)
        assert result.unchanged == ("a",)
        b = store.get_job(jobs["b"].id)
        assert b.status is JobStatus.paused
        assert b.paused_by is PausedBy.manifest
        assert "manifest" in (b.status_reason or "").lower()
        assert b.next_run_at is None
        assert b.updated_at == at(5)
        assert store.get_run(run.id) == run
        assert store.get_job(jobs["a"].id) == jobs["a"]
        # and again: nothing more to do
        again = self.sync(store, declaration("a"), now=at(6))
        assert again.paused == () and sorted(again.unchanged) == ["a", "b"]
        assert store.get_job(jobs["b"].id) == b

    def test_sync_with_no_declarations_pauses_every_job_of_the_plugin(self, store):
        self.seed(store, declaration("a"), declaration("b", None))
        result = self.sync(store, now=at(1))
        assert sorted(result.paused) == ["a", "b"]
        for job in store.list_jobs(PLUGIN):
            assert job.status is JobStatus.paused and job.paused_by is PausedBy.manifest
            assert job.next_run_at is None
        assert store.list_jobs(PLUGIN, status="active") == []

    def test_sync_reactivates_a_job_declared_again(self, store):
        job_id = self.seed(store, declaration("a"))["a"].id
        self.sync(store, now=at(5))
        result = self.sync(store, declaration("a", display_name="Back"), now=hm(11, 20))
        assert result.reactivated == ("a",)
        job = store.get_job(job_id)
        assert job.status is JobStatus.active
        assert job.paused_by is None and job.status_reason is None
        assert job.next_run_at == hm(11, 30)  # from now, not the old 10:45
        assert job.display_name == "Back"

    def test_sync_keeps_an_operator_paused_job_paused_but_updates_it(self, store):
        job_id = self.seed(store, declaration("a"))["a"].id
        store.pause_job(job_id, reason="maintenance", now=at(1))

        result = self.sync(store, declaration("a"), now=at(2))
        assert result.reactivated == () and result.unchanged == ("a",)

        result = self.sync(store, declaration("a", "*/7 * * * *", display_name="Renamed"), now=at(3))
        assert result.reactivated == () and result.updated == ("a",)
        job = store.get_job(job_id)
        assert (job.schedule, job.display_name) == ("*/7 * * * *", "Renamed")
        assert job.status is JobStatus.paused and job.paused_by is PausedBy.operator
        assert job.status_reason == "maintenance"
        assert job.next_run_at is None

        # leaving the manifest does not turn an operator pause into a manifest one
        result = self.sync(store, now=at(4))
        assert result.paused == ()
        assert store.get_job(job_id).paused_by is PausedBy.operator
        self.sync(store, declaration("a", "*/7 * * * *", display_name="Renamed"), now=at(5))
        assert store.get_job(job_id).status is JobStatus.paused

        job = store.resume_job(job_id, now=hm(11, 30))
        assert job.status is JobStatus.active and job.next_run_at == hm(11, 35)

    # -- listing and lookups -------------------------------------------------

    def test_list_jobs_orders_by_plugin_key_then_job_key(self, store):
        # plugin ids sort the other way round from plugin keys on purpose
        self.sync(store, declaration("zeta"), declaration("alpha"), declaration("mid"),
                  plugin="p-1", key="beta.plugin")
        self.sync(store, declaration("omega"), declaration("beta"),
                  plugin="p-2", key="alpha.plugin")
        listed = [(j.plugin_key, j.job_key) for j in store.list_jobs()]
        assert listed == [
            ("alpha.plugin", "beta"), ("alpha.plugin", "omega"),
            ("beta.plugin", "alpha"), ("beta.plugin", "mid"), ("beta.plugin", "zeta"),
        ]
        assert [j.job_key for j in store.list_jobs("p-1")] == ["alpha", "mid", "zeta"]
        assert store.list_jobs("no-such-plugin") == []

    def test_list_jobs_filters_by_status(self, store):
        jobs = self.seed(store, declaration("a"), declaration("b"), declaration("c"))
        store.pause_job(jobs["b"].id, now=at(1))
        assert [j.job_key for j in store.list_jobs(PLUGIN, status="paused")] == ["b"]
        assert [j.job_key for j in store.list_jobs(status=JobStatus.active)] == ["a", "c"]
        assert [j.job_key for j in store.list_jobs(OTHER, status="active")] == []

    def test_get_job_lookups(self, store):
        job = self.one_job(store)
        other = self.one_job(store, plugin=OTHER, key=OTHER_KEY)
        assert store.get_job(job.id) == job
        assert store.get_job("no-such-job") is None
        assert store.get_job_by_key(PLUGIN, "tick") == job
        assert store.get_job_by_key(OTHER, "tick") == other
        assert store.get_job_by_key(PLUGIN, "nope") is None
        assert store.get_job_by_key("no-such-plugin", "tick") is None
        assert store.get_job_for_plugin(PLUGIN, job.id) == job
        assert store.get_job_for_plugin(OTHER, job.id) is None
        assert store.get_job_for_plugin(PLUGIN, other.id) is None
        assert store.get_job_for_plugin(PLUGIN, "no-such-job") is None

    # -- pause and resume ----------------------------------------------------

    def test_pause_job(self, store):
        job = self.one_job(store)
        paused = store.pause_job(job.id, reason="too noisy", now=at(1))
        assert paused.status is JobStatus.paused
        assert paused.paused_by is PausedBy.operator
        assert paused.status_reason == "too noisy"
        assert paused.next_run_at is None
        assert paused.updated_at == at(1)
        assert store.get_job(job.id) == paused
        assert store.due_jobs(at(60)) == []

    def test_pause_without_reason(self, store):
        job = self.one_job(store)
        assert store.pause_job(job.id, now=at(1)).status_reason is None

    def test_pausing_a_manifest_paused_job_makes_it_operator_paused(self, store):
        job = self.one_job(store)
        self.sync(store, now=at(1))
        assert store.pause_job(job.id, now=at(2)).paused_by is PausedBy.operator
        result = self.sync(store, declaration("tick"), now=at(3))
        assert result.reactivated == ()
        assert store.get_job(job.id).status is JobStatus.paused

    def test_pause_and_resume_unknown_job_raise(self, store):
        with pytest.raises(JobLookupError):
            store.pause_job("no-such-job", now=T0)
        with pytest.raises(JobLookupError):
            store.resume_job("no-such-job", now=T0)

    def test_resume_recomputes_next_run_from_now(self, store):
        job = self.one_job(store)
        store.pause_job(job.id, reason="x", now=at(1))
        resumed = store.resume_job(job.id, now=hm(12, 31))
        assert resumed.status is JobStatus.active
        assert resumed.paused_by is None
        assert resumed.next_run_at == hm(12, 45)  # slots missed while paused are not run
        assert store.get_job(job.id) == resumed
        assert self.ids(store.due_jobs(hm(12, 44))) == []

    def test_resume_of_a_manual_job_has_no_next_run(self, store):
        job = self.one_job(store, None)
        store.pause_job(job.id, now=at(1))
        resumed = store.resume_job(job.id, now=at(2))
        assert resumed.status is JobStatus.active and resumed.next_run_at is None

    def test_resume_of_an_active_job_changes_nothing(self, store):
        job = self.one_job(store)
        assert store.resume_job(job.id, now=at(60)) == job
        assert store.get_job(job.id) == job

    def test_resume_of_a_manifest_paused_job_raises(self, store):
        job = self.one_job(store)
        self.sync(store, now=at(1))
        paused = store.get_job(job.id)
        with pytest.raises(JobStateError) as excinfo:
            store.resume_job(job.id, now=at(2))
        assert store.get_job(job.id) == paused
        # the operator is told which job, and which plugin must declare it again
        assert '"tick"' in str(excinfo.value) and repr(PLUGIN_KEY) in str(excinfo.value)

    # -- set_next_run ---------------------------------------------------------

    def test_set_next_run_applies_when_expected_matches(self, store):
        job = self.one_job(store)
        assert store.set_next_run(
            job.id, expected=hm(10, 45), next_run_at=hm(11, 0), last_run_at=hm(10, 45), now=hm(10, 45, 1)
        )
        stored = store.get_job(job.id)
        assert (stored.next_run_at, stored.last_run_at) == (hm(11, 0), hm(10, 45))
        # without last_run_at the old one stays
        assert store.set_next_run(job.id, expected=hm(11, 0), next_run_at=hm(11, 15), now=hm(11, 0))
        stored = store.get_job(job.id)
        assert (stored.next_run_at, stored.last_run_at) == (hm(11, 15), hm(10, 45))

    def test_set_next_run_compares_instants_not_timezones(self, store):
        job = self.one_job(store)
        tokyo = hm(10, 45).astimezone(ZoneInfo("Asia/Tokyo"))
        assert store.set_next_run(job.id, expected=tokyo, next_run_at=hm(11, 0), now=at(15))
        assert store.get_job(job.id).next_run_at == hm(11, 0)

    def test_set_next_run_refuses_a_stale_expected_value(self, store):
        job = self.one_job(store)
        assert not store.set_next_run(job.id, expected=hm(10, 30), next_run_at=hm(11, 0), now=at(1))
        assert not store.set_next_run(job.id, expected=None, next_run_at=hm(11, 0), now=at(1))
        assert store.get_job(job.id) == job

    def test_set_next_run_only_one_of_two_readers_wins(self, store):
        job = self.one_job(store)
        assert store.set_next_run(job.id, expected=hm(10, 45), next_run_at=hm(11, 0), now=at(15))
        assert not store.set_next_run(job.id, expected=hm(10, 45), next_run_at=hm(11, 30), now=at(15))
        assert store.get_job(job.id).next_run_at == hm(11, 0)

    def test_set_next_run_refuses_a_paused_job(self, store):
        job = self.one_job(store)
        paused = store.pause_job(job.id, now=at(1))
        # the pointer does equal expected (None): only the status refuses it
        assert not store.set_next_run(job.id, expected=None, next_run_at=hm(11, 0), now=at(2))
        assert store.get_job(job.id) == paused

    def test_set_next_run_on_a_manual_job_and_unknown_job(self, store):
        job = self.one_job(store, None)
        assert store.set_next_run(job.id, expected=None, next_run_at=hm(11, 0), now=at(1))
        assert store.get_job(job.id).next_run_at == hm(11, 0)
        assert not store.set_next_run("no-such-job", expected=None, next_run_at=hm(11, 0), now=at(1))

    # -- due jobs --------------------------------------------------------------

    def _due_fixture(self, store) -> dict[str, Job]:
        keys = ["a", "b", "c", "d", "e", "f", "paused"]
        jobs = self.seed(store, *(declaration(k) for k in keys), declaration("manual", None))
        for key, when in {"a": hm(10, 40), "b": hm(10, 35), "d": hm(10, 50), "paused": hm(10, 0)}.items():
            assert store.set_next_run(jobs[key].id, expected=hm(10, 45), next_run_at=when, now=T0)
        store.pause_job(jobs["paused"].id, now=T0)
        return jobs

    def test_due_jobs_oldest_first_ties_by_id_boundary_included(self, store):
        jobs = self._due_fixture(store)
        ties = sorted(jobs[k].id for k in ("c", "e", "f"))  # all due at exactly 10:45
        assert self.ids(store.due_jobs(hm(10, 45))) == [jobs["b"].id, jobs["a"].id, *ties]
        assert self.ids(store.due_jobs(hm(10, 44, 59.999))) == [jobs["b"].id, jobs["a"].id]
        assert store.due_jobs(hm(10, 34)) == []
        assert len(store.due_jobs(hm(10, 50))) == 6
        assert jobs["d"].id in self.ids(store.due_jobs(hm(10, 50)))

    def test_due_jobs_limit(self, store):
        jobs = self._due_fixture(store)
        assert self.ids(store.due_jobs(hm(10, 45), limit=2)) == [jobs["b"].id, jobs["a"].id]
        three = store.due_jobs(hm(10, 45), limit=3)
        assert self.ids(three)[2] == min(jobs[k].id for k in ("c", "e", "f"))
        assert len(store.due_jobs(hm(23, 0), limit=1)) == 1

    def test_due_jobs_excludes_paused_and_manual_jobs(self, store):
        jobs = self._due_fixture(store)
        due = self.ids(store.due_jobs(hm(23, 0)))
        assert jobs["paused"].id not in due and jobs["manual"].id not in due
        assert all(j.status is JobStatus.active for j in store.due_jobs(hm(23, 0)))

    def test_next_due_at(self, store):
        assert store.next_due_at() is None
        self.seed(store, declaration("manual", None))
        assert store.next_due_at() is None
        jobs = self._due_fixture(store)
        assert store.next_due_at() == hm(10, 35)
        store.pause_job(jobs["b"].id, now=at(1))
        assert store.next_due_at() == hm(10, 40)

    def test_due_jobs_and_next_due_at_filter_by_plugin(self, store):
        mine = self.one_job(store)
        theirs = self.one_job(store, "*/5 * * * *", plugin=OTHER, key=OTHER_KEY)
        later = at(minutes=30)
        assert [j.id for j in store.due_jobs(later, plugin_ids=[PLUGIN])] == [mine.id]
        assert [j.id for j in store.due_jobs(later, plugin_ids=[OTHER])] == [theirs.id]
        assert store.due_jobs(later, plugin_ids=[]) == []
        assert store.next_due_at(plugin_ids=[PLUGIN]) == mine.next_run_at
        assert store.next_due_at(plugin_ids=[OTHER]) == theirs.next_run_at
        assert store.next_due_at(plugin_ids=["nobody"]) is None

    # -- claim_slot ------------------------------------------------------------

    def test_claim_slot_creates_a_queued_scheduled_run_and_advances(self, store):
        job = self.one_job(store)
        slot = job.next_run_at
        claim = store.claim_slot(job.id, expected=slot, run_slot=slot,
                                 next_run_at=slot + timedelta(minutes=15), now=slot)
        assert claim.applied and claim.run is not None
        run = store.get_run(claim.run.id)
        assert run == claim.run
        assert run.status is RunStatus.queued and run.trigger is RunTrigger.schedule
        assert run.scheduled_for == slot and run.job_id == job.id and run.job_key == "tick"
        after = store.get_job(job.id)
        assert after.next_run_at == slot + timedelta(minutes=15)
        assert after.last_run_at == slot and after.missed_count == 0

    def test_claim_slot_refuses_a_stale_pointer(self, store):
        job = self.one_job(store)
        slot = job.next_run_at
        first = store.claim_slot(job.id, expected=slot, run_slot=slot,
                                 next_run_at=slot + timedelta(minutes=15), now=slot)
        store.complete_run(first.run.id, status="succeeded", now=slot)
        again = store.claim_slot(job.id, expected=slot, run_slot=slot,
                                 next_run_at=slot + timedelta(minutes=15), now=slot)
        assert not again.applied and again.run is None
        assert len(store.list_runs(job_id=job.id).runs) == 1

    def test_claim_slot_refuses_while_a_run_is_in_flight_and_keeps_the_pointer(self, store):
        job = self.one_job(store)
        store.create_run(job.id, trigger="manual", now=T0)
        slot = job.next_run_at
        claim = store.claim_slot(job.id, expected=slot, run_slot=slot,
                                 next_run_at=slot + timedelta(minutes=15), now=slot)
        assert not claim.applied
        assert store.get_job(job.id).next_run_at == slot

    def test_claim_slot_refuses_paused_and_unknown_jobs(self, store):
        job = self.one_job(store)
        slot = job.next_run_at
        store.pause_job(job.id, now=T0)
        assert not store.claim_slot(job.id, expected=None, run_slot=slot, next_run_at=None,
                                    now=slot).applied
        assert not store.claim_slot("nope", expected=slot, run_slot=slot, next_run_at=None,
                                    now=slot).applied

    def test_claim_slot_without_a_run_counts_missed_slots(self, store):
        job = self.one_job(store)
        slot = job.next_run_at
        nxt = slot + timedelta(minutes=45)
        claim = store.claim_slot(job.id, expected=slot, run_slot=None, next_run_at=nxt,
                                 missed=3, now=nxt)
        assert claim.applied and claim.run is None
        after = store.get_job(job.id)
        assert after.missed_count == 3 and after.next_run_at == nxt
        assert after.last_run_at is None
        assert store.list_runs(job_id=job.id).runs == ()
        store.claim_slot(job.id, expected=nxt, run_slot=nxt, next_run_at=nxt + timedelta(minutes=15),
                         missed=2, now=nxt)
        assert store.get_job(job.id).missed_count == 5

    def test_claim_slot_never_runs_a_slot_twice(self, store):
        job = self.one_job(store)
        slot = job.next_run_at
        run = store.create_run(job.id, trigger="schedule", now=slot, scheduled_for=slot)
        store.complete_run(run.id, status="succeeded", now=slot)
        claim = store.claim_slot(job.id, expected=slot, run_slot=slot,
                                 next_run_at=slot + timedelta(minutes=15), now=slot)
        assert claim.run is None
        assert [r.id for r in store.list_runs(job_id=job.id).runs] == [run.id]
        assert store.get_job(job.id).next_run_at == slot + timedelta(minutes=15)

    def test_claim_slots_decides_each_claim_as_claim_slot_would(self, store):
        jobs = self.seed(store, declaration("a", EVERY_15), declaration("b", EVERY_15),
                         declaration("c", EVERY_15), declaration("d", EVERY_15),
                         declaration("e", EVERY_15))
        a, b, c, d, e = (jobs[k] for k in "abcde")
        slot = a.next_run_at
        nxt = slot + timedelta(minutes=15)
        store.create_run(b.id, trigger="manual", now=T0)  # b: a run in flight
        done = store.create_run(d.id, trigger="schedule", now=slot, scheduled_for=slot)
        store.complete_run(done.id, status="succeeded", now=slot)  # d: slot already ran
        store.pause_job(e.id, now=T0)  # e: paused

        def claim(job, expected=slot, run_slot=slot, **kw):
            return {"job_id": job.id, "expected": expected, "run_slot": run_slot,
                    "next_run_at": nxt, "now": slot, "owner": "me",
                    "lease_until": slot + timedelta(minutes=1), **kw}

        results = store.claim_slots([
            claim(a), claim(b), claim(c, expected=slot - timedelta(minutes=15)), claim(d),
            claim(e), {"job_id": "no-such-job", "expected": slot, "run_slot": slot,
                       "next_run_at": nxt, "now": slot}])
        assert [r.applied for r in results] == [True, False, False, True, False, False]
        run = results[0].run
        assert run is not None and store.get_run(run.id) == run
        assert run.status is RunStatus.queued and run.scheduled_for == slot
        assert run.owner == "me" and run.job_key == "a"
        assert results[3].run is None  # a slot never runs twice; the pointer still moves
        assert all(r.run is None for r in results[1:])
        assert store.get_job(a.id).next_run_at == nxt and store.get_job(a.id).last_run_at == slot
        assert store.get_job(b.id).next_run_at == slot  # refused: pointer kept
        assert store.get_job(c.id).next_run_at == slot
        assert store.get_job(d.id).next_run_at == nxt
        # missed slots only, and an empty batch
        more = store.claim_slots([claim(c, run_slot=None, missed=2)])
        assert more[0].applied and more[0].run is None
        assert store.get_job(c.id).missed_count == 2 and store.get_job(c.id).next_run_at == nxt
        assert store.claim_slots([]) == []

    #: store calls with an instant to check: (name, call with the instant *v*)
    INSTANT_CALLS = [
        ("claim_slot now", lambda s, a, b, run, v: s.claim_slot(
            b.id, expected=b.next_run_at, run_slot=None, next_run_at=b.next_run_at, now=v)),
        ("claim_slot next_run_at", lambda s, a, b, run, v: s.claim_slot(
            b.id, expected=b.next_run_at, run_slot=None, next_run_at=v or "x", now=T0)),
        ("set_next_run now", lambda s, a, b, run, v: s.set_next_run(
            b.id, expected=b.next_run_at, next_run_at=b.next_run_at, now=v)),
        ("pause_job now", lambda s, a, b, run, v: s.pause_job(b.id, now=v)),
        ("resume_job now", lambda s, a, b, run, v: s.resume_job(b.id, now=v)),
        ("due_jobs now", lambda s, a, b, run, v: s.due_jobs(v)),
        ("create_run now", lambda s, a, b, run, v: s.create_run(b.id, trigger="manual", now=v)),
        ("mark_running now", lambda s, a, b, run, v: s.mark_running(run.id, now=v)),
        ("mark_runs_running now", lambda s, a, b, run, v: s.mark_runs_running([run.id], now=v)),
        ("complete_run now", lambda s, a, b, run, v: s.complete_run(
            run.id, status="failed", now=v)),
        ("complete_runs now", lambda s, a, b, run, v: s.complete_runs(
            [{"run_id": run.id, "status": "failed", "now": v}])),
        ("renew_leases lease_until", lambda s, a, b, run, v: s.renew_leases(
            "me", [run.id], lease_until=v, now=T0)),
        ("renew_leases now", lambda s, a, b, run, v: s.renew_leases(
            "me", [run.id], lease_until=at(5), now=v)),
        ("abandon_runs now", lambda s, a, b, run, v: s.abandon_runs(now=v)),
        ("cancel_runs now", lambda s, a, b, run, v: s.cancel_runs(PLUGIN, reason="x", now=v)),
        ("prune_runs now", lambda s, a, b, run, v: s.prune_runs(now=v, max_age=timedelta(0))),
    ]

    @pytest.mark.parametrize("value", [None, datetime(2026, 1, 15, 10, 31), "10:31"],
                             ids=["none", "naive", "str"])
    @pytest.mark.parametrize("name, call", INSTANT_CALLS, ids=[n for n, _ in INSTANT_CALLS])
    def test_a_bad_instant_is_refused_and_nothing_changes(self, store, name, call, value):
        jobs = self.seed(store, declaration("a", EVERY_15), declaration("b", EVERY_15))
        run = store.create_run(jobs["a"].id, trigger="manual", now=T0, owner="me",
                               lease_until=at(1))
        self.run(store, jobs["a"], T0, "succeeded")  # something prune_runs could delete

        def state():
            return (store.list_jobs(PLUGIN),
                    store.list_runs(plugin_id=PLUGIN, limit=100).runs)

        before = state()
        with pytest.raises((ValueError, TypeError)):
            call(store, jobs["a"], jobs["b"], run, value)
        assert state() == before, name

    @pytest.mark.parametrize("bad", [
        {"next_run_at": datetime(2026, 1, 15, 11, 0)},  # naive
        {"run_slot": "10:45"},
        {"lease_until": datetime(2026, 1, 15, 10, 46)},  # naive
        {"now": None},
        {"now": None, "run_slot": None, "missed": 1},  # a pointer move alone
    ])
    def test_a_bad_claim_in_a_batch_is_refused_before_any_claim_applies(self, store, bad):
        jobs = self.seed(store, declaration("a", EVERY_15), declaration("b", EVERY_15))
        a, b = jobs["a"], jobs["b"]
        slot = a.next_run_at

        def claim(job, **kw):
            return {"job_id": job.id, "expected": slot, "run_slot": slot,
                    "next_run_at": slot + timedelta(minutes=15), "now": slot, "owner": "me",
                    "lease_until": slot + timedelta(minutes=1), **kw}

        for call in (lambda: store.claim_slots([claim(a), claim(b, **bad)], start=1),
                     lambda: store.complete_and_claim([], [claim(a), claim(b, **bad)]),
                     lambda: store.claim_slot(**claim(b, **bad))):
            with pytest.raises((ValueError, TypeError)):
                call()
            assert store.get_job(a.id) == a and store.get_job(b.id) == b
            assert store.list_runs(plugin_id=PLUGIN).runs == ()

    def test_claim_slots_records_the_first_start_runs_running(self, store):
        jobs = self.seed(store, *[declaration(k, EVERY_15) for k in "abcd"])
        a, b, c, d = (jobs[k] for k in "abcd")
        slot = a.next_run_at
        until = slot + timedelta(minutes=1)
        store.create_run(b.id, trigger="manual", now=T0)  # b: refused, a run in flight

        def claim(job, **kw):
            return {"job_id": job.id, "expected": slot, "run_slot": slot,
                    "next_run_at": slot + timedelta(minutes=15), "now": slot, "owner": "me",
                    "lease_until": until, **kw}

        # start counts claims by position: b is refused, c stays queued
        results = store.claim_slots([claim(a), claim(b), claim(c), claim(d)], start=2)
        assert [r.applied for r in results] == [True, False, True, True]
        started, queued, also = results[0].run, results[2].run, results[3].run
        assert started.status is RunStatus.running and started.started_at == slot
        assert (started.owner, started.lease_until) == ("me", until)
        assert store.get_run(started.id) == started  # as stored
        for run in (queued, also):
            assert run.status is RunStatus.queued and run.started_at is None
            assert store.get_run(run.id) == run
        # a started run ends like any other, and its duration counts from the claim
        assert store.complete_run(started.id, status="succeeded", now=slot + timedelta(seconds=2))
        assert store.get_run(started.id).duration_ms == 2000
        # the same job twice in a batch (one claim after the other): the first starts
        e = self.seed(store, declaration("e", EVERY_15))["e"]
        twice = store.claim_slots([claim(e), claim(e)], start=1)
        assert [r.applied for r in twice] == [True, False]
        assert store.get_run(twice[0].run.id).status is RunStatus.running

    def test_concurrent_claim_batches_apply_each_slot_once(self, store):
        jobs = self.seed(store, *[declaration(f"j{i}", EVERY_15) for i in range(6)])
        slot = next(iter(jobs.values())).next_run_at
        batch = [{"job_id": j.id, "expected": slot, "run_slot": slot,
                  "next_run_at": slot + timedelta(minutes=15), "now": slot}
                 for j in jobs.values()]
        results = race(6, lambda i: store.claim_slots(batch[i:] + batch[:i]))
        assert [kind for kind, _ in results] == ["ok"] * 6
        for job in jobs.values():  # every slot claimed, by one batch only
            assert len(store.list_runs(job_id=job.id).runs) == 1
        total = sum(c.applied for _, claims in results for c in claims)
        assert total == len(jobs)

    def test_complete_runs_decides_each_end_as_complete_run_would(self, store):
        jobs = self.seed(store, declaration("a", EVERY_15), declaration("b", EVERY_15),
                         declaration("c", EVERY_15))
        now = hm(10, 46)
        running = self.run(store, jobs["a"], hm(10, 45), "running")
        queued = self.run(store, jobs["b"], hm(10, 45))
        done = self.run(store, jobs["c"], hm(10, 45), "succeeded")
        applied = store.complete_runs([
            {"run_id": running.id, "status": "succeeded", "now": now},
            {"run_id": queued.id, "status": RunStatus.failed, "now": now, "error": "boom",
             "error_detail": "trace"},
            {"run_id": done.id, "status": "failed", "now": now},
            {"run_id": "no-such-run", "status": "failed", "now": now},
        ])
        assert applied == [True, True, False, False]
        a, b, c = (store.get_run(r.id) for r in (running, queued, done))
        assert a.status is RunStatus.succeeded and a.finished_at == now
        assert a.duration_ms == 60_000
        assert b.status is RunStatus.failed and b.error == "boom" and b.error_detail == "trace"
        assert b.duration_ms is None  # never started
        assert c.status is RunStatus.succeeded  # a terminal status is never overwritten
        assert store.complete_runs([]) == []
        # an end that cannot be taken is refused before anything is written,
        # also the valid ends before it in the batch
        first = self.run(store, jobs["b"], hm(10, 46), "running")
        second = self.run(store, jobs["c"], hm(10, 46), "running")
        for bad in ("running", "bogus", None, ["succeeded"]):
            with pytest.raises(ValueError):
                store.complete_runs([{"run_id": first.id, "status": "succeeded", "now": now},
                                     {"run_id": second.id, "status": bad, "now": now}])
        assert store.get_run(first.id) == first and store.get_run(second.id) == second

    def test_complete_and_claim_decides_as_the_two_calls_would(self, store):
        jobs = self.seed(store, *[declaration(k, EVERY_15) for k in "abcdef"])
        a, b, c, d, e, f = (jobs[k] for k in "abcdef")
        slot = a.next_run_at
        nxt, until = slot + timedelta(minutes=15), slot + timedelta(minutes=1)
        ran = self.run(store, a, slot - timedelta(minutes=15), "running")
        failed = self.run(store, b, slot - timedelta(minutes=15), "running")
        over = self.run(store, c, slot - timedelta(minutes=15), "succeeded")
        busy = store.create_run(f.id, trigger="manual", now=T0)  # f: a run in flight

        def claim(job, **kw):
            return {"job_id": job.id, "expected": slot, "run_slot": slot, "next_run_at": nxt,
                    "now": slot, "owner": "me", "lease_until": until, **kw}

        # the ends first: a's end frees a for its claim (in one store call)
        applied, claims = store.complete_and_claim([
            {"run_id": ran.id, "status": "succeeded", "now": slot},
            {"run_id": failed.id, "status": RunStatus.failed, "now": slot, "error": "boom",
             "error_detail": "trace"},
            {"run_id": over.id, "status": "failed", "now": slot},  # already terminal
        ], [claim(a), claim(d), claim(e, expected=slot - timedelta(minutes=15)), claim(f)],
            start=1)
        assert applied == [True, True, False]
        assert [r.applied for r in claims] == [True, True, False, False]
        assert store.get_run(ran.id).status is RunStatus.succeeded
        assert store.get_run(ran.id).finished_at == slot
        b_run = store.get_run(failed.id)
        assert (b_run.status, b_run.error, b_run.error_detail) == (RunStatus.failed, "boom",
                                                                    "trace")
        assert store.get_run(over.id).status is RunStatus.succeeded  # never overwritten
        started, queued = claims[0].run, claims[1].run
        assert started.status is RunStatus.running and store.get_run(started.id) == started
        assert queued.status is RunStatus.queued and store.get_run(queued.id) == queued
        assert store.get_job(e.id).next_run_at == slot  # refused: pointer kept
        assert store.get_run(busy.id).status is RunStatus.queued  # f untouched
        # either part may be empty
        assert store.complete_and_claim([], []) == ([], [])
        assert store.complete_and_claim(
            [{"run_id": started.id, "status": "succeeded", "now": nxt}], []) == ([True], [])
        more = store.complete_and_claim([], [claim(e, expected=slot, run_slot=None, missed=1)])
        assert more[0] == [] and more[1][0].applied and more[1][0].run is None
        # an end that cannot be taken is refused before anything is written
        for bad in ("running", "bogus", None):
            with pytest.raises(ValueError):
                store.complete_and_claim(
                    [{"run_id": busy.id, "status": "succeeded", "now": nxt},
                     {"run_id": queued.id, "status": bad, "now": nxt}],
                    [claim(f, expected=slot)])
        assert store.get_run(queued.id) == queued and store.get_run(busy.id) == busy
        assert store.get_job(f.id).next_run_at == slot

    def test_complete_and_claim_frees_a_job_for_its_own_claim(self, store):
        # every end applies: the claim of the job whose run ends sees it ended
        job = self.seed(store, declaration("a", EVERY_15))["a"]
        slot = job.next_run_at
        ran = self.run(store, job, slot - timedelta(minutes=15), "running")
        applied, claims = store.complete_and_claim(
            [{"run_id": ran.id, "status": "succeeded", "now": slot}],
            [{"job_id": job.id, "expected": slot, "run_slot": slot,
              "next_run_at": slot + timedelta(minutes=15), "now": slot}], start=1)
        assert applied == [True] and claims[0].applied
        assert store.get_run(ran.id).status is RunStatus.succeeded
        assert store.get_run(claims[0].run.id).status is RunStatus.running

    def test_complete_and_claim_with_a_run_ended_twice(self, store):
        jobs = self.seed(store, declaration("a", EVERY_15), declaration("b", EVERY_15))
        slot = jobs["a"].next_run_at
        ran = self.run(store, jobs["a"], slot - timedelta(minutes=15), "running")
        end = {"run_id": ran.id, "status": "succeeded", "now": slot}
        applied, claims = store.complete_and_claim([end, dict(end, status="failed")], [{
            "job_id": jobs["b"].id, "expected": slot, "run_slot": slot,
            "next_run_at": slot + timedelta(minutes=15), "now": slot}])
        assert applied == [True, False] and claims[0].applied
        assert store.get_run(ran.id).status is RunStatus.succeeded

    def test_find_plugin_by_id_or_key(self, store):
        self.seed(store, declaration("a"), plugin="p-2", key="acme.reports")
        self.seed(store, declaration("a"), plugin="p-1", key="acme.reports")
        self.seed(store, declaration("a"), plugin="acme.mail", key="other")
        assert store.find_plugin("p-2") == "p-2"  # an id names itself
        assert store.find_plugin("acme.reports") == "p-1"  # a key: the smallest id
        # an id wins over a key that happens to be spelled the same
        assert store.find_plugin("acme.mail") == "acme.mail"
        assert store.find_plugin("other") == "acme.mail"
        assert store.find_plugin("nobody") is None

    def test_mark_runs_running_decides_each_run_as_mark_running_would(self, store):
        jobs = self.seed(store, declaration("a", EVERY_15), declaration("b", EVERY_15),
                         declaration("c", EVERY_15))
        queued = self.run(store, jobs["a"], hm(10, 45))
        running = self.run(store, jobs["b"], hm(10, 45), "running")
        done = self.run(store, jobs["c"], hm(10, 45), "skipped")
        now = hm(10, 45, 2)
        applied = store.mark_runs_running([queued.id, running.id, done.id, "no-such-run"],
                                          now=now, owner="w-2", lease_until=hm(10, 50))
        assert applied == [True, False, False, False]
        a, b, c = (store.get_run(r.id) for r in (queued, running, done))
        assert a.status is RunStatus.running and a.started_at == now
        assert (a.owner, a.lease_until) == ("w-2", hm(10, 50))
        assert b.started_at == running.started_at and b.owner == running.owner  # untouched
        assert c.status is RunStatus.skipped and c.started_at is None  # never starts
        assert store.mark_runs_running([], now=now) == []

    def test_concurrent_claims_of_one_job_apply_once(self, store):
        job = self.one_job(store)
        slot = job.next_run_at
        results = race(8, lambda i: store.claim_slot(
            job.id, expected=slot, run_slot=slot, next_run_at=slot + timedelta(minutes=15),
            now=slot))
        applied = [r for kind, r in results if kind == "ok" and r.applied]
        assert [kind for kind, _ in results] == ["ok"] * 8
        assert len(applied) == 1 and applied[0].run is not None
        assert len(store.list_runs(job_id=job.id).runs) == 1

    # -- run lifecycle -------------------------------------------------------

    def test_run_lifecycle_queued_running_succeeded(self, store):
        job = self.one_job(store)
        run = store.create_run(job.id, trigger="schedule", now=hm(10, 45, 1), scheduled_for=hm(10, 45))
        assert run.status is RunStatus.queued and run.trigger is RunTrigger.schedule
        assert (run.job_id, run.plugin_id, run.job_key) == (job.id, PLUGIN, "tick")
        assert run.created_at == hm(10, 45, 1) and run.scheduled_for == hm(10, 45)
        assert run.started_at is run.finished_at is run.duration_ms is None
        assert run.error is None and run.error_detail is None
        assert store.get_run(run.id) == run

        assert store.mark_running(run.id, now=hm(10, 45, 2), owner="worker-1", lease_until=hm(10, 50))
        running = store.get_run(run.id)
        assert running.status is RunStatus.running and running.started_at == hm(10, 45, 2)
        assert (running.owner, running.lease_until) == ("worker-1", hm(10, 50))

        assert store.complete_run(run.id, status=RunStatus.succeeded, now=hm(10, 45, 3.5))
        done = store.get_run(run.id)
        assert done.status is RunStatus.succeeded
        assert done.finished_at == hm(10, 45, 3.5)
        assert done.duration_ms == 1500
        assert done.created_at == run.created_at and done.started_at == hm(10, 45, 2)

    def test_complete_run_records_errors(self, store):
        job = self.one_job(store)
        run = self.run(store, job, at(1), "running", trigger=RunTrigger.manual)
        assert store.complete_run(run.id, status="failed", now=at(2), error="boom", error_detail="trace")
        failed = store.get_run(run.id)
        assert (failed.status, failed.error, failed.error_detail) == (RunStatus.failed, "boom", "trace")
        assert failed.duration_ms == 60_000
        assert failed.trigger is RunTrigger.manual

    def test_complete_run_of_a_run_that_never_started(self, store):
        job = self.one_job(store)
        run = self.run(store, job, at(1))
        assert store.complete_run(run.id, status="skipped", now=at(2))
        skipped = store.get_run(run.id)
        assert skipped.status is RunStatus.skipped
        assert skipped.started_at is None and skipped.duration_ms is None
        assert skipped.finished_at == at(2)

    def test_terminal_status_is_never_overwritten(self, store):
        job = self.one_job(store)
        run = self.run(store, job, at(1), "failed")
        assert not store.complete_run(run.id, status="succeeded", now=at(2))
        assert not store.complete_run(run.id, status="cancelled", now=at(2), error="late")
        assert not store.mark_running(run.id, now=at(2))
        assert store.get_run(run.id) == run

    def test_cancelled_run_never_becomes_running(self, store):
        job = self.one_job(store)
        run = self.run(store, job, at(1))
        assert store.complete_run(run.id, status="cancelled", now=at(2), error="stop")
        cancelled = store.get_run(run.id)
        assert not store.mark_running(run.id, now=at(3), owner="late-worker")
        assert store.get_run(run.id) == cancelled

    def test_mark_running_applies_only_once(self, store):
        job = self.one_job(store)
        run = self.run(store, job, at(1))
        assert store.mark_running(run.id, now=at(2), owner="w1")
        assert not store.mark_running(run.id, now=at(3), owner="w2")
        again = store.get_run(run.id)
        assert (again.started_at, again.owner) == (at(2), "w1")

    def test_transitions_on_unknown_runs_return_false(self, store):
        assert store.mark_running("no-such-run", now=T0) is False
        assert store.complete_run("no-such-run", status="succeeded", now=T0) is False
        assert store.get_run("no-such-run") is None

    def test_transitions_return_true_when_applied(self, store):
        job = self.one_job(store)
        run = self.run(store, job, at(1))
        assert store.mark_running(run.id, now=at(2)) is True
        assert store.complete_run(run.id, status="succeeded", now=at(3)) is True

    @pytest.mark.parametrize("status", ["queued", "running", RunStatus.running, "bogus", None,
                                        ["succeeded"]])
    def test_complete_run_needs_a_terminal_status(self, store, status):
        job = self.one_job(store)
        run = self.run(store, job, at(1), "running")
        with pytest.raises(ValueError):
            store.complete_run(run.id, status=status, now=at(2))
        assert store.get_run(run.id) == run

    # -- create_run guards -----------------------------------------------------

    def test_exclusive_create_run_refuses_while_a_run_is_queued_or_running(self, store):
        job = self.one_job(store)
        first = store.create_run(job.id, trigger="manual", now=at(1))
        with pytest.raises(JobAlreadyRunning):
            store.create_run(job.id, trigger="manual", now=at(2))
        store.mark_running(first.id, now=at(2))
        with pytest.raises(JobAlreadyRunning):
            store.create_run(job.id, trigger="schedule", now=at(3), scheduled_for=hm(10, 45))
        assert self.ids(store.list_runs(job_id=job.id).runs) == [first.id]

        store.complete_run(first.id, status="failed", now=at(4))
        second = store.create_run(job.id, trigger="retry", now=at(5))
        assert second.status is RunStatus.queued and second.trigger is RunTrigger.retry

    def test_exclusive_is_per_job(self, store):
        jobs = self.seed(store, declaration("a"), declaration("b"))
        store.create_run(jobs["a"].id, trigger="manual", now=at(1))
        assert store.create_run(jobs["b"].id, trigger="manual", now=at(1)).job_id == jobs["b"].id

    def test_non_exclusive_runs_may_overlap(self, store):
        job = self.one_job(store)
        first = store.create_run(job.id, trigger="manual", now=at(1))
        store.mark_running(first.id, now=at(1))
        second = store.create_run(job.id, trigger="manual", now=at(2), exclusive=False)
        assert second.id != first.id
        assert len(store.list_runs(job_id=job.id).runs) == 2

    def test_one_run_per_slot(self, store):
        jobs = self.seed(store, declaration("a"), declaration("b"))
        slot = hm(10, 45)
        first = self.run(store, jobs["a"], at(15), "succeeded", trigger="schedule", scheduled_for=slot)
        with pytest.raises(SlotAlreadyClaimed):
            store.create_run(jobs["a"].id, trigger="schedule", now=at(16), scheduled_for=slot)
        with pytest.raises(SlotAlreadyClaimed):  # the same instant in another zone
            store.create_run(jobs["a"].id, trigger="retry", now=at(16), exclusive=False,
                             scheduled_for=slot.astimezone(ZoneInfo("America/New_York")))
        assert self.ids(store.list_runs(job_id=jobs["a"].id).runs) == [first.id]
        # other slots, other jobs and slot-less runs are free
        store.create_run(jobs["a"].id, trigger="schedule", now=at(31), scheduled_for=hm(11, 0),
                         exclusive=False)
        store.create_run(jobs["b"].id, trigger="schedule", now=at(16), scheduled_for=slot)
        store.create_run(jobs["a"].id, trigger="manual", now=at(32), exclusive=False)
        store.create_run(jobs["a"].id, trigger="manual", now=at(33), exclusive=False)

    def test_slot_and_overlap_both_refused(self, store):
        job = self.one_job(store)
        store.create_run(job.id, trigger="schedule", now=at(15), scheduled_for=hm(10, 45))
        # which of the two a store reports first is not specified
        with pytest.raises((SlotAlreadyClaimed, JobAlreadyRunning)):
            store.create_run(job.id, trigger="schedule", now=at(16), scheduled_for=hm(10, 45))

    def test_create_run_for_an_unknown_job_raises(self, store):
        with pytest.raises(JobLookupError):
            store.create_run("no-such-job", trigger="manual", now=T0)

    def test_a_slot_may_run_again_only_as_a_later_attempt(self, store):
        job = self.one_job(store)
        slot = hm(10, 45)
        first = store.create_run(job.id, trigger="schedule", now=at(15), scheduled_for=slot)
        store.complete_run(first.id, status="abandoned", now=at(16))
        retry = store.create_run(job.id, trigger="retry", now=at(17), scheduled_for=slot,
                                 attempt=2)
        assert (first.attempt, retry.attempt) == (1, 2)
        assert store.get_run(retry.id).attempt == 2
        store.complete_run(retry.id, status="succeeded", now=at(18))
        with pytest.raises(SlotAlreadyClaimed):
            store.create_run(job.id, trigger="retry", now=at(19), scheduled_for=slot, attempt=2)

    # -- leases ------------------------------------------------------------------

    def test_runs_carry_owner_and_lease(self, store):
        job = self.one_job(store)
        run = store.create_run(job.id, trigger="manual", now=T0, owner="s1",
                               lease_until=at(seconds=30))
        stored = store.get_run(run.id)
        assert stored.owner == "s1" and stored.lease_until == at(seconds=30)
        slot = job.next_run_at
        store.complete_run(run.id, status="succeeded", now=T0)
        claim = store.claim_slot(job.id, expected=slot, run_slot=slot, next_run_at=None,
                                 now=slot, owner="s2", lease_until=slot + timedelta(seconds=30))
        stored = store.get_run(claim.run.id)
        assert stored.owner == "s2" and stored.lease_until == slot + timedelta(seconds=30)

    def test_renew_leases_only_of_the_owner_and_in_flight(self, store):
        jobs = self.seed(store, declaration("a"), declaration("b"), declaration("c"))
        mine = store.create_run(jobs["a"].id, trigger="manual", now=T0, owner="s1",
                                lease_until=at(seconds=30))
        theirs = store.create_run(jobs["b"].id, trigger="manual", now=T0, owner="s2",
                                  lease_until=at(seconds=30))
        done = store.create_run(jobs["c"].id, trigger="manual", now=T0, owner="s1",
                                lease_until=at(seconds=30))
        store.complete_run(done.id, status="succeeded", now=T0)
        renewed = store.renew_leases("s1", [mine.id, theirs.id, done.id, "nope"],
                                     lease_until=at(seconds=60), now=at(seconds=20))
        assert renewed == [mine.id]
        assert store.get_run(mine.id).lease_until == at(seconds=60)
        assert store.get_run(theirs.id).lease_until == at(seconds=30)
        assert store.renew_leases("s1", [], lease_until=at(seconds=60), now=T0) == []

    def test_abandon_runs_whose_lease_expired(self, store):
        jobs = self.seed(store, declaration("a"), declaration("b"), declaration("c"))
        expired = store.create_run(jobs["a"].id, trigger="manual", now=T0, owner="dead",
                                   lease_until=at(seconds=30))
        store.mark_running(expired.id, now=T0, owner="dead", lease_until=at(seconds=30))
        alive = store.create_run(jobs["b"].id, trigger="manual", now=T0, owner="live",
                                 lease_until=at(seconds=90))
        no_lease = store.create_run(jobs["c"].id, trigger="manual", now=T0)
        assert store.abandon_runs(now=at(seconds=30)) == []  # not before the lease ends
        gone = store.abandon_runs(now=at(seconds=31))
        assert [r.id for r in gone] == [expired.id]
        run = store.get_run(expired.id)
        assert run == gone[0]
        assert run.status is RunStatus.abandoned and "dead" in run.error
        assert run.finished_at == at(seconds=31) and run.duration_ms == 31_000
        assert store.get_run(alive.id).status is RunStatus.queued
        assert store.get_run(no_lease.id).status is RunStatus.queued
        # an abandoned run is terminal: no late completion, no renewal
        assert not store.complete_run(expired.id, status="succeeded", now=at(seconds=40))
        assert store.renew_leases("dead", [expired.id], lease_until=at(99), now=at(1)) == []
        # and the job may run again
        store.create_run(jobs["a"].id, trigger="manual", now=at(seconds=41))

    def test_abandon_runs_of_an_owner_whatever_the_lease(self, store):
        jobs = self.seed(store, declaration("a"), declaration("b"))
        old = store.create_run(jobs["a"].id, trigger="manual", now=T0, owner="s1",
                               lease_until=at(minutes=10))
        other = store.create_run(jobs["b"].id, trigger="manual", now=T0, owner="s2",
                                 lease_until=at(minutes=10))
        gone = store.abandon_runs(now=at(seconds=5), owner="s1")
        assert [r.id for r in gone] == [old.id]
        assert store.get_run(old.id).status is RunStatus.abandoned
        assert store.get_run(other.id).status is RunStatus.queued

    def _leased_out_of_order(self, store, job: Job, owner: str, lease_until: datetime) -> list[JobRun]:
        # created out of order, two at one instant (the order of the results
        # is not part of the contract: each run, once)
        return [store.create_run(job.id, trigger="manual", now=at(m), exclusive=False,
                                 owner=owner, lease_until=lease_until) for m in (2, 0, 1, 0)]

    def test_renew_leases_returns_each_run_once(self, store):
        job = self.one_job(store)
        runs = self._leased_out_of_order(store, job, "s1", at(30))
        ids = self.ids(runs)
        # repeated past any batch size a store may split the ids into
        asked = (ids[::-1] + ["nope"] + ids) * 100
        renewed = store.renew_leases("s1", asked, lease_until=at(40), now=at(3))
        assert sorted(renewed) == sorted(ids) and len(set(renewed)) == len(renewed)
        assert all(store.get_run(i).lease_until == at(40) for i in ids)

    def test_abandon_runs_returns_each_run_once(self, store):
        jobs = self.seed(store, declaration("a"), declaration("b"))
        expired = self._leased_out_of_order(store, jobs["a"], "dead", at(10))
        owned = self._leased_out_of_order(store, jobs["b"], "s1", at(99))
        assert sorted(self.ids(store.abandon_runs(now=at(11)))) == sorted(self.ids(expired))
        gone = store.abandon_runs(now=at(12), owner="s1")
        assert sorted(self.ids(gone)) == sorted(self.ids(owned))

    # -- list_runs -------------------------------------------------------------

    def _runs_with_ties(self, store, job: Job) -> list[JobRun]:
        # several runs per instant, created out of order, so only the id breaks ties
        return [self.run(store, job, at(m)) for m in (1, 0, 1, 0, 2, 0, 1, 0, 2, 3)]

    def test_list_runs_newest_first_ties_by_id_descending(self, store):
        job = self.one_job(store)
        runs = self._runs_with_ties(store, job)
        page = store.list_runs()
        assert self.ids(page.runs) == self.newest_first(runs)
        assert page.next_cursor is None
        assert len({r.created_at for r in runs}) == 4  # the ties are real

    def test_list_runs_cursor_walks_every_run_exactly_once(self, store):
        job = self.one_job(store)
        expected = self.newest_first(self._runs_with_ties(store, job))
        seen: list[str] = []
        cursor = None
        for page_no in range(20):
            page = store.list_runs(plugin_id=PLUGIN, limit=3, cursor=cursor)
            assert len(page.runs) <= 3
            seen += self.ids(page.runs)
            # newer runs arriving between pages must neither shift nor repeat entries
            self.run(store, job, at(60 + page_no))
            cursor = page.next_cursor
            if cursor is None:
                break
            assert isinstance(cursor, str)
        assert seen == expected

    def test_list_runs_filters(self, store):
        jobs = self.seed(store, declaration("a"), declaration("b"))
        other = self.one_job(store, plugin=OTHER, key=OTHER_KEY)
        a1 = self.run(store, jobs["a"], at(1), "succeeded")
        a2 = self.run(store, jobs["a"], at(2), "failed")
        b1 = self.run(store, jobs["b"], at(3), "succeeded")
        o1 = self.run(store, other, at(4), "succeeded")
        assert self.ids(store.list_runs(plugin_id=PLUGIN).runs) == [b1.id, a2.id, a1.id]
        assert self.ids(store.list_runs(plugin_id=OTHER).runs) == [o1.id]
        assert self.ids(store.list_runs(job_id=jobs["a"].id).runs) == [a2.id, a1.id]
        assert self.ids(store.list_runs(status="succeeded").runs) == [o1.id, b1.id, a1.id]
        assert self.ids(store.list_runs(status=RunStatus.failed).runs) == [a2.id]
        assert self.ids(store.list_runs(plugin_id=PLUGIN, status="succeeded").runs) == [b1.id, a1.id]
        assert store.list_runs(plugin_id=OTHER, job_id=jobs["a"].id).runs == ()
        assert store.list_runs(status="running").runs == ()

    def test_list_runs_filtered_pagination(self, store):
        jobs = self.seed(store, declaration("a"), declaration("b"))
        mine = [self.run(store, jobs["a"], at(m), "succeeded") for m in range(5)]
        for m in range(5):
            self.run(store, jobs["b"], at(m), "succeeded")
        first = store.list_runs(job_id=jobs["a"].id, limit=2)
        second = store.list_runs(job_id=jobs["a"].id, limit=2, cursor=first.next_cursor)
        assert self.ids(first.runs + second.runs) == self.newest_first(mine)[:4]

    def test_list_runs_default_limit_is_50(self, store):
        job = self.one_job(store)
        runs = [self.run(store, job, at(seconds=i)) for i in range(51)]
        page = store.list_runs()
        assert len(page.runs) == 50 and page.next_cursor is not None
        rest = store.list_runs(cursor=page.next_cursor)
        assert self.ids(rest.runs) == [runs[0].id]
        assert rest.next_cursor is None

    @pytest.mark.parametrize("limit", [0, -1, 1001])
    def test_list_runs_rejects_a_bad_limit(self, store, limit):
        with pytest.raises(ValueError):
            store.list_runs(limit=limit)

    def test_list_runs_limit_bounds_are_inclusive(self, store):
        job = self.one_job(store)
        runs = [self.run(store, job, at(i)) for i in range(2)]
        assert self.ids(store.list_runs(limit=1).runs) == [runs[1].id]
        assert len(store.list_runs(limit=1000).runs) == 2

    @pytest.mark.parametrize("cursor", ["not a cursor", "%%%", "12345"])
    def test_list_runs_rejects_a_malformed_cursor(self, store, cursor):
        with pytest.raises(ValueError):
            store.list_runs(cursor=cursor)

    # -- cancel_runs -----------------------------------------------------------

    def test_cancel_runs_cancels_queued_and_running_runs_of_the_plugin(self, store):
        jobs = self.seed(store, declaration("a"), declaration("b"))
        other = self.one_job(store, plugin=OTHER, key=OTHER_KEY)
        queued = self.run(store, jobs["a"], at(1))
        running = self.run(store, jobs["a"], at(2), "running")
        done = self.run(store, jobs["a"], at(3), "succeeded")
        b_queued = self.run(store, jobs["b"], at(4))
        foreign = self.run(store, other, at(5), "running")

        cancelled = store.cancel_runs(PLUGIN, reason="plugin disabled", now=at(10))
        assert sorted(cancelled) == sorted([queued.id, running.id, b_queued.id])
        for run_id in cancelled:
            run = store.get_run(run_id)
            assert run.status is RunStatus.cancelled
            assert run.error == "plugin disabled"
            assert run.finished_at == at(10)
        assert store.get_run(done.id) == done
        assert store.get_run(foreign.id) == foreign
        assert store.cancel_runs(PLUGIN, reason="again", now=at(11)) == []

    def test_cancel_runs_of_one_job(self, store):
        jobs = self.seed(store, declaration("a"), declaration("b"))
        other = self.one_job(store, plugin=OTHER, key=OTHER_KEY)
        a = self.run(store, jobs["a"], at(1), "running")
        b = self.run(store, jobs["b"], at(1))
        foreign = self.run(store, other, at(1))
        assert store.cancel_runs(PLUGIN, reason="r", now=at(2), job_id=jobs["a"].id) == [a.id]
        assert store.get_run(b.id) == b
        # a job id of another plugin cancels nothing
        assert store.cancel_runs(PLUGIN, reason="r", now=at(2), job_id=other.id) == []
        assert store.get_run(foreign.id) == foreign
        assert store.cancel_runs("no-such-plugin", reason="r", now=at(2)) == []

    def test_cancel_runs_of_one_owner(self, store):
        jobs = self.seed(store, declaration("a"), declaration("b"))
        mine = self.run(store, jobs["a"], at(1), owner="s1", lease_until=at(9))
        theirs = self.run(store, jobs["b"], at(1), owner="s2", lease_until=at(9))
        unowned = self.run(store, jobs["b"], at(2))
        assert store.cancel_runs(PLUGIN, reason="r", now=at(3), owner="s1") == [mine.id]
        assert store.get_run(theirs.id) == theirs and store.get_run(unowned.id) == unowned
        assert store.cancel_runs(PLUGIN, reason="r", now=at(3), owner="s3") == []

    def test_cancel_runs_returns_each_id_once(self, store):
        jobs = self.seed(store, declaration("a"), declaration("b"))
        runs = [self.run(store, jobs[key], at(m), status)
                for key, m, status in (("b", 2, "queued"), ("a", 0, "running"),
                                       ("b", 1, "running"), ("a", 0, "queued"),
                                       ("a", 3, "queued"))]
        cancelled = store.cancel_runs(PLUGIN, reason="r", now=at(5))
        assert sorted(cancelled) == sorted(self.ids(runs))

    # -- delete_plugin ---------------------------------------------------------

    def test_delete_plugin_removes_its_jobs_and_runs_only(self, store):
        jobs = self.seed(store, declaration("a"), declaration("b"))
        other = self.one_job(store, plugin=OTHER, key=OTHER_KEY)
        mine = [self.run(store, jobs["a"], at(1), "succeeded"), self.run(store, jobs["b"], at(1))]
        theirs = self.run(store, other, at(1), "running")

        assert store.delete_plugin(PLUGIN) == 2
        assert store.list_jobs(PLUGIN) == []
        assert all(store.get_job(j.id) is None for j in jobs.values())
        assert all(store.get_run(r.id) is None for r in mine)
        assert store.list_runs(plugin_id=PLUGIN).runs == ()
        assert store.list_jobs() == [other]
        assert self.ids(store.list_runs().runs) == [theirs.id]
        with pytest.raises(JobLookupError):
            store.create_run(jobs["a"].id, trigger="manual", now=at(2))
        assert store.delete_plugin(PLUGIN) == 0
        assert store.delete_plugin("no-such-plugin") == 0

        # the plugin can come back, as new jobs
        again = self.seed(store, declaration("a"), now=at(5))["a"]
        assert again.created_at == at(5) and store.list_runs(job_id=again.id).runs == ()

    # -- prune_runs ------------------------------------------------------------

    def test_prune_runs_by_age(self, store):
        jobs = self.seed(store, declaration("a"), declaration("b"))
        old = self.run(store, jobs["a"], at(0), "succeeded")
        old_queued = self.run(store, jobs["b"], at(0))
        old_running = self.run(store, jobs["b"], at(0), "running")
        at_cutoff = self.run(store, jobs["a"], at(60), "failed")
        recent = self.run(store, jobs["a"], at(120), "succeeded")

        assert store.prune_runs(now=at(180), max_age=timedelta(hours=2)) == 1
        assert store.get_run(old.id) is None
        for kept in (old_queued, old_running, at_cutoff, recent):
            assert store.get_run(kept.id) == kept

    def test_prune_runs_keeps_the_newest_per_job(self, store):
        jobs = self.seed(store, declaration("a"), declaration("b"))
        queued = self.run(store, jobs["a"], at(0))  # oldest, and never pruned
        a_runs = [self.run(store, jobs["a"], at(m), "succeeded") for m in (1, 2, 3, 4)]
        b_runs = [self.run(store, jobs["b"], at(m), "failed") for m in (1, 2)]

        assert store.prune_runs(now=at(10), keep_per_job=2) == 2
        remaining = self.ids(store.list_runs(limit=100).runs)
        assert sorted(remaining) == sorted([queued.id, a_runs[2].id, a_runs[3].id] + self.ids(b_runs))
        assert store.prune_runs(now=at(10), keep_per_job=2) == 0

    def test_prune_runs_keep_per_job_counts_only_finished_runs(self, store):
        # A run in flight is not one of the kept finished runs: ranking it
        # would delete the newest finished run whenever a job is running.
        jobs = self.seed(store, declaration("a"))
        finished = [self.run(store, jobs["a"], at(m), "succeeded") for m in (1, 2)]
        running = self.run(store, jobs["a"], at(3), "running")
        queued = self.run(store, jobs["a"], at(4))

        assert store.prune_runs(now=at(10), keep_per_job=1) == 1
        assert sorted(self.ids(store.list_runs().runs)) == sorted(
            [finished[1].id, running.id, queued.id])
        assert store.prune_runs(now=at(10), keep_per_job=1) == 0

    def test_prune_runs_keep_zero_and_combined(self, store):
        jobs = self.seed(store, declaration("a"), declaration("b"))
        a_runs = [self.run(store, jobs["a"], at(m), "succeeded") for m in (0, 100, 200)]
        running = self.run(store, jobs["b"], at(0), "running")
        b_runs = [self.run(store, jobs["b"], at(m), "cancelled") for m in (150, 200)]
        # by age: a's first; beyond the newest 1: a's second and b's first
        assert store.prune_runs(now=at(200), max_age=timedelta(minutes=120), keep_per_job=1) == 3
        assert sorted(self.ids(store.list_runs().runs)) == sorted([a_runs[2].id, running.id, b_runs[1].id])
        assert store.prune_runs(now=at(200), keep_per_job=0) == 2
        assert self.ids(store.list_runs().runs) == [running.id]

    def test_prune_runs_without_criteria_deletes_nothing(self, store):
        job = self.one_job(store)
        run = self.run(store, job, at(0), "succeeded")
        assert store.prune_runs(now=at(10_000)) == 0
        assert store.get_run(run.id) == run

    # -- isolation and instants ------------------------------------------------

    def test_two_plugins_with_the_same_job_keys_are_isolated(self, store):
        mine = self.seed(store, declaration("a"), declaration("b"))
        theirs = self.seed(store, declaration("a"), declaration("b"), plugin=OTHER, key=OTHER_KEY)
        assert {j.id for j in mine.values()}.isdisjoint(j.id for j in theirs.values())
        run = self.run(store, theirs["a"], at(1), "running")
        # exclusivity is per job, not per key
        store.create_run(mine["a"].id, trigger="manual", now=at(1))

        result = self.sync(store, now=at(2))
        assert sorted(result.paused) == ["a", "b"]
        store.cancel_runs(PLUGIN, reason="gone", now=at(3))
        store.delete_plugin(PLUGIN)

        assert store.list_jobs(OTHER) == list(theirs.values())
        assert store.get_run(run.id) == run
        assert self.ids(store.list_runs(plugin_id=OTHER).runs) == [run.id]

    def test_returned_instants_are_aware_utc(self, store):
        tokyo, new_york = ZoneInfo("Asia/Tokyo"), ZoneInfo("America/New_York")
        self.sync(store, declaration("tick"), now=T0.astimezone(tokyo))
        job = store.get_job_by_key(PLUGIN, "tick")
        for value in (job.created_at, job.updated_at, job.next_run_at):
            assert_utc(value)
        assert job.created_at == T0 and job.next_run_at == hm(10, 45)
        assert_utc(store.next_due_at())
        assert_utc(store.due_jobs(hm(10, 45).astimezone(new_york))[0].next_run_at)

        assert store.set_next_run(job.id, expected=hm(10, 45), next_run_at=hm(11, 0).astimezone(tokyo),
                                  last_run_at=hm(10, 45).astimezone(new_york), now=at(15).astimezone(tokyo))
        job = store.get_job(job.id)
        assert_utc(job.next_run_at)
        assert_utc(job.last_run_at)
        assert_utc(job.updated_at)

        run = store.create_run(job.id, trigger="schedule", now=at(15).astimezone(new_york),
                               scheduled_for=hm(10, 45).astimezone(tokyo))
        store.mark_running(run.id, now=at(16).astimezone(tokyo), lease_until=at(20).astimezone(tokyo))
        store.complete_run(run.id, status="succeeded", now=at(17).astimezone(new_york))
        for stored in (store.get_run(run.id), store.list_runs().runs[0]):
            for value in (stored.created_at, stored.scheduled_for, stored.started_at,
                          stored.finished_at, stored.lease_until):
                assert_utc(value)
            assert (stored.created_at, stored.scheduled_for) == (at(15), hm(10, 45))
            assert stored.duration_ms == 60_000

        # a claim's run, built from the claim's own instants, in UTC or not
        job = self.seed(store, declaration("claimed"), plugin=OTHER, key="other")["claimed"]
        utc = timezone.utc
        for zone, start in ((tokyo, 1), (utc, 1), (new_york, 0), (utc, 0)):
            slot = job.next_run_at
            (result,) = store.claim_slots([{
                "job_id": job.id, "expected": slot, "run_slot": slot.astimezone(zone),
                "next_run_at": (slot + timedelta(minutes=15)).astimezone(zone),
                "now": at(15).astimezone(zone), "owner": "me",
                "lease_until": at(45).astimezone(zone)}], start=start)
            run = result.run
            for value in (run.created_at, run.scheduled_for, run.lease_until):
                assert_utc(value)
            assert (run.scheduled_for, run.created_at, run.lease_until, run.owner) == (
                slot, at(15), at(45), "me")
            if start:
                assert_utc(run.started_at)
                assert (run.status, run.started_at) == (RunStatus.running, at(15))
            else:
                assert (run.status, run.started_at) == (RunStatus.queued, None)
            assert run == store.get_run(run.id)  # what the store holds, field by field
            store.complete_runs([{"run_id": run.id, "status": "succeeded", "now": at(16)}])
            job = store.get_job(job.id)

    # -- lifecycle -------------------------------------------------------------

    def test_close_is_idempotent_and_final(self, store):
        self.one_job(store)
        with store as entered:
            assert entered is store
        store.close()
        with pytest.raises(StoreError):
            store.list_jobs()

    # -- concurrency -------------------------------------------------------------

    def test_concurrent_exclusive_create_run_lets_exactly_one_through(self, store):
        job = self.one_job(store)
        for round_no in range(3):
            results = race(8, lambda i: store.create_run(
                job.id, trigger="manual", now=at(round_no, seconds=i)))
            wins = [value for kind, value in results if kind == "ok"]
            losses = [value for kind, value in results if kind == "error"]
            assert len(wins) == 1, results
            assert all(isinstance(exc, JobAlreadyRunning) for exc in losses), losses
            assert store.complete_run(wins[0].id, status="succeeded", now=at(round_no, 30))
        assert len(store.list_runs(job_id=job.id).runs) == 3

    def test_concurrent_claims_of_one_slot_let_exactly_one_through(self, store):
        job = self.one_job(store)
        results = race(8, lambda i: store.create_run(
            job.id, trigger="schedule", now=at(15, seconds=i), scheduled_for=hm(10, 45), exclusive=False))
        wins = [value for kind, value in results if kind == "ok"]
        losses = [value for kind, value in results if kind == "error"]
        assert len(wins) == 1, results
        assert all(isinstance(exc, SlotAlreadyClaimed) for exc in losses), losses
        assert self.ids(store.list_runs(job_id=job.id).runs) == [wins[0].id]

    def test_concurrent_set_next_run_applies_once(self, store):
        job = self.one_job(store)
        targets = [hm(11, i) for i in range(8)]
        results = race(8, lambda i: store.set_next_run(
            job.id, expected=hm(10, 45), next_run_at=targets[i], now=at(15)))
        assert all(kind == "ok" for kind, _ in results), results
        winners = [i for i, (_, applied) in enumerate(results) if applied]
        assert len(winners) == 1, results
        assert store.get_job(job.id).next_run_at == targets[winners[0]]
