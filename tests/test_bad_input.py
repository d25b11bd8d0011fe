"""Bad input through every public entry: the lifecycle hook calls, the Host
methods and the CLI arguments (issue 4, point 4).

Every refusal is a pjcore error (a ``PjError`` subclass) whose message names
the plugin, the job and the field where they are known, and the store is left
exactly as it was: each test snapshots the jobs and the runs of every plugin
of a SQLite file store before and after.

Tests marked ``xfail(strict=True)`` document a fix that belongs to a module
outside this change; each names it. They fail loudly (XPASS) once it lands.
"""

from __future__ import annotations

import inspect
import math
import re
import time
from datetime import datetime, timedelta, timezone
from typing import Any, Callable

import pytest
from pluggy import HookCallError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pjcore import Host, ManualClock, cli
from pjcore.exceptions import (
    BackendLookupError,
    ConfigurationError,
    InvalidArgument,
    JobLookupError,
    JobStateError,
    ManifestError,
    PjError,
)
from pjcore.hookspecs import hookimpl

UTC = timezone.utc
T0 = datetime(2026, 3, 2, 9, 7, tzinfo=UTC)
A_ID, A_KEY = "plugin-a", "alpha"
B_ID, B_KEY = "plugin-b", "beta"
SQLISH = "'; DROP TABLE pj_jobs; --"


def job(job_key: str, schedule: str | None = "*/15 * * * *", **fields: Any) -> dict:
    return {"job_key": job_key, "display_name": job_key.title(), "schedule": schedule, **fields}


def a_manifest(*jobs: dict, **fields: Any) -> dict:
    return {"key": A_KEY, "version": "1.0", "jobs": list(jobs), **fields}


A_JOBS = [job("sync"), job("report", None)]


class Handlers:
    @hookimpl
    def register_job_handlers(self, register):
        for plugin_key in (A_KEY, B_KEY):
            for job_key in ("sync", "report"):
                register(plugin_key, job_key, lambda ctx: None)


def wait_for(condition, timeout: float = 10.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not met within {timeout}s")
        time.sleep(0.005)
    return value


@pytest.fixture
def database(tmp_path) -> str:
    return f"sqlite:///{tmp_path}/jobs.db"


@pytest.fixture
def host(database):
    """A started Host on a SQLite file: plugin A (a scheduled and a manual
    job), plugin B (one job, operator-paused), and a finished run of each."""
    host = Host(database, plugins=[Handlers()], load_entrypoints=False,
                clock=ManualClock(T0))
    host.start()
    host.load_plugin(A_ID, A_KEY, a_manifest(*A_JOBS))
    host.load_plugin(B_ID, B_KEY, {"key": B_KEY, "jobs": [job("sync")]})
    for plugin in (A_ID, B_ID):
        host.clock.advance(1)
        run_id = host.trigger(plugin, "sync")
        wait_for(lambda: host.run(run_id).status.terminal, what="the run finished")
    host.pause(B_ID, "sync", reason="by an operator")
    yield host
    host.stop(timeout=5)


def snapshot(host) -> tuple:
    """Every job, and every run of every plugin (all pages)."""
    store = host.store
    jobs = store.list_jobs()
    runs = {}
    for plugin_id in sorted({j.plugin_id for j in jobs}):
        runs[plugin_id], cursor = [], None
        while True:
            page = store.list_runs(plugin_id=plugin_id, limit=1000, cursor=cursor)
            runs[plugin_id] += page.runs
            if (cursor := page.next_cursor) is None:
                break
    return jobs, runs


def refused(host, call: Callable[[], Any], error: type[PjError] = PjError,
            *fragments: str) -> PjError:
    """*call* raises *error* naming *fragments*, and changes nothing in the store."""
    before = snapshot(host)
    with pytest.raises(error) as info:
        call()
    assert isinstance(info.value, PjError)
    for fragment in fragments:
        assert fragment in str(info.value), (fragment, str(info.value))
    assert snapshot(host) == before
    return info.value


# -- lifecycle hook calls: manifests ---------------------------------------------------


def loaded(host, manifest: Any, plugin_id: Any = A_ID, plugin_key: Any = A_KEY) -> None:
    host.pm.hook.plugin_loaded(plugin_id=plugin_id, plugin_key=plugin_key, manifest=manifest)


def with_job(**fields: Any) -> dict:
    """Plugin A's manifest, its last job changed by *fields* (None removes one)."""
    last = {**job("extra"), **fields}
    return a_manifest(*A_JOBS, {k: v for k, v in last.items() if v is not None})


def with_policy(**policy: Any) -> dict:
    return a_manifest(*A_JOBS, job("extra", policy=policy))


# (manifest, fragments the message must hold): each names plugin 'alpha'
BAD_MANIFESTS = [
    # not a manifest at all
    (None, ["manifest must be a mapping"]),
    (5, ["manifest must be a mapping, not int"]),
    ("alpha", ["manifest must be a mapping, not str"]),
    ([A_KEY], ["manifest must be a mapping, not list"]),
    ({1: 2}, ["unknown field in manifest"]),
    # the manifest's own fields
    ({"key": 5, "jobs": []}, ["field 'key'", "must be a string"]),
    ({"key": B_KEY, "jobs": []}, ["field 'key'", "does not match the plugin key 'alpha'"]),
    (a_manifest(version=5), ["field 'version'"]),
    (a_manifest(version="x" * 65), ["field 'version'", "the limit is 64"]),
    (a_manifest(owner="me"), ["field 'owner'", "unknown field in manifest"]),
    ({"key": A_KEY, "jobs": {"sync": job("sync")}}, ["field 'jobs'", "must be a list"]),
    ({"key": A_KEY, "jobs": "sync"}, ["field 'jobs'", "must be a list"]),
    (a_manifest(5), ["field 'jobs'", "jobs[0]", "must be a mapping, not int"]),
    (a_manifest(*A_JOBS, None), ["field 'jobs'", "jobs[2]"]),
    (a_manifest(*A_JOBS, [job("x")]), ["jobs[2]"]),
    (a_manifest(*A_JOBS, job("sync")), ["job 'sync'", "duplicate job keys"]),
    # a job's fields, wrong types and values
    (with_job(job_key=5), ["field 'job_key'", "jobs[2]", "must be a string, not int"]),
    (with_job(job_key=None, display_name="No key"), ["field 'job_key'", "is required"]),
    (with_job(job_key=""), ["field 'job_key'"]),
    (with_job(job_key=SQLISH), [f"job {SQLISH!r}", "field 'job_key'", "does not match"]),
    (with_job(job_key='" OR 1=1 --'), ["field 'job_key'", "does not match"]),
    (with_job(job_key="a b"), ["field 'job_key'"]),
    (with_job(job_key="x" * 65), ["field 'job_key'"]),
    (with_job(job_key="sync\n"), ["field 'job_key'"]),
    (with_job(job_key="é"), ["field 'job_key'"]),
    (with_job(job_key="a\x00"), ["field 'job_key'"]),
    (with_job(display_name=5), ["job 'extra'", "field 'display_name'"]),
    (with_job(display_name="   "), ["job 'extra'", "field 'display_name'", "must not be empty"]),
    (with_job(display_name="x" * 201), ["job 'extra'", "field 'display_name'"]),
    (with_job(display_name=None), ["job 'extra'", "field 'display_name'", "is required"]),
    (with_job(description=["x"]), ["job 'extra'", "field 'description'"]),
    (with_job(description="x" * 2001), ["job 'extra'", "field 'description'"]),
    (with_job(timezone=5), ["job 'extra'", "field 'timezone'"]),
    (with_job(timezone="Mars/Olympus_Mons"), ["job 'extra'", "field 'timezone'"]),
    (with_job(timezone="../../etc/passwd"), ["job 'extra'", "field 'timezone'"]),
    (with_job(owner="me"), ["job 'extra'", "field 'owner'", "unknown field"]),
    # crons
    (with_job(schedule=5), ["job 'extra'", "field 'schedule'", "must be a string"]),
    (with_job(schedule=["* * * * *"]), ["job 'extra'", "field 'schedule'"]),
    (with_job(schedule=""), ["job 'extra'", "field 'schedule'", "must not be empty"]),
    (with_job(schedule="60 * * * *"), ["field 'schedule'", "value 60 out of range"]),
    (with_job(schedule="* * *"), ["job 'extra'", "field 'schedule'"]),
    (with_job(schedule="* * * * * * *"), ["job 'extra'", "field 'schedule'"]),
    (with_job(schedule="a b c d e"), ["job 'extra'", "field 'schedule'"]),
    (with_job(schedule="0 0 30 2 *"), ["job 'extra'", "field 'schedule'"]),
    (with_job(schedule="@reboot"), ["job 'extra'", "field 'schedule'"]),
    (with_job(schedule="5L * * * *"), ["job 'extra'", "field 'schedule'"]),
    (with_job(schedule=f"0 0 * * * {SQLISH}"), ["job 'extra'", "field 'schedule'"]),
    (with_job(schedule="*/1 " * 300), ["job 'extra'", "field 'schedule'"]),
    # policies
    (with_job(policy="fast"), ["job 'extra'", "field 'policy'", "must be a mapping"]),
    (with_job(policy=[]), ["job 'extra'", "field 'policy'"]),
    (with_policy(timeout_seconds="5"), ["job 'extra'", "field 'policy.timeout_seconds'"]),
    (with_policy(timeout_seconds=True), ["job 'extra'", "field 'policy.timeout_seconds'"]),
    (with_policy(timeout_seconds=-1), ["job 'extra'", "field 'policy.timeout_seconds'"]),
    (with_policy(timeout_seconds=math.nan), ["field 'policy.timeout_seconds'"]),
    (with_policy(timeout_seconds=math.inf), ["field 'policy.timeout_seconds'"]),
    (with_policy(timeout_seconds=10**400), ["field 'policy.timeout_seconds'", "a huge number"]),
    (with_policy(misfire="sometimes"), ["job 'extra'", "field 'policy.misfire'"]),
    (with_policy(misfire=5), ["job 'extra'", "field 'policy.misfire'"]),
    (with_policy(misfire_grace_seconds=0), ["field 'policy.misfire_grace_seconds'"]),
    (with_policy(on_abandoned="retry-forever"), ["field 'policy.on_abandoned'"]),
    (with_policy(retries=3), ["job 'extra'", "field 'policy.retries'", "unknown field"]),
]


@pytest.mark.parametrize("manifest, fragments", BAD_MANIFESTS,
                         ids=[f"manifest{i}" for i in range(len(BAD_MANIFESTS))])
def test_a_malformed_manifest_is_refused_and_nothing_changes(host, manifest, fragments):
    refused(host, lambda: loaded(host, manifest), ManifestError, "plugin 'alpha'", *fragments)


def test_a_manifest_refused_for_a_new_plugin_writes_nothing(host):
    for manifest, _ in BAD_MANIFESTS:
        if isinstance(manifest, dict) and manifest.get("key") == A_KEY:
            refused(host, lambda: loaded(host, manifest, plugin_id="plugin-new"), ManifestError)
    assert host.jobs("plugin-new") == []


def test_a_huge_manifest_fails_fast(host):
    jobs = [job(f"job-{i}") for i in range(10_000)]
    for manifest in (a_manifest(*jobs), {"key": A_KEY, "jobs": tuple(jobs)},
                     a_manifest(*jobs[:1001])):
        started = time.perf_counter()
        refused(host, lambda: loaded(host, manifest), ManifestError,
                "plugin 'alpha'", "field 'jobs'", "the limit is 1000")
        assert time.perf_counter() - started < 0.5  # the store snapshot included
    started = time.perf_counter()
    huge_name = with_job(display_name="x" * 10_000_000)
    refused(host, lambda: loaded(host, huge_name), ManifestError, "field 'display_name'")
    assert time.perf_counter() - started < 0.5


def test_one_bad_job_at_the_end_of_a_full_manifest_writes_nothing(host):
    jobs = [job(f"job-{i}", f"{i % 60} * * * *") for i in range(999)]
    manifest = a_manifest(*jobs, job("last", "61 * * * *"))
    started = time.perf_counter()
    refused(host, lambda: loaded(host, manifest), ManifestError,
            "plugin 'alpha'", "job 'last'", "field 'schedule'", "61")
    assert time.perf_counter() - started < 3
    # the same manifest without the bad job loads (the limit is not what refused it)
    loaded(host, a_manifest(*jobs, job("last")))
    assert len(host.jobs(A_ID)) == 1000 + len(A_JOBS)


# -- lifecycle hook calls: the other arguments -------------------------------------------

BAD_PLUGIN_IDS = [None, 5, 1.5, b"plugin-a", ["plugin-a"], {"id": 1}, "", "   ", "x" * 201,
                  "plugin\x00a"]


@pytest.mark.parametrize("plugin_id", BAD_PLUGIN_IDS)
@pytest.mark.parametrize("hook", ["plugin_loaded", "plugin_disabled", "plugin_unloaded"])
def test_a_bad_plugin_id_is_refused_by_every_hook(host, hook, plugin_id):
    args = {"plugin_loaded": {"manifest": a_manifest(*A_JOBS)},
            "plugin_disabled": {"reason": "why"},
            "plugin_unloaded": {"remove_data": True}}[hook]
    call = getattr(host.pm.hook, hook)
    refused(host, lambda: call(plugin_id=plugin_id, plugin_key=A_KEY, **args), ManifestError,
            "plugin 'alpha'", "field 'plugin_id'")
    assert A_ID in host.scheduler.plugins  # still running


def _bad_key(hook: str, plugin_key: Any):
    return pytest.param(hook, plugin_key, id=f"{hook}-{plugin_key!r}")


@pytest.mark.parametrize("hook, plugin_key", [
    _bad_key(hook, key) for hook in ("plugin_loaded", "plugin_disabled", "plugin_unloaded")
    for key in (5, None, [A_KEY], b"alpha")])
def test_a_bad_plugin_key_is_refused_by_every_hook(host, hook, plugin_key):
    args = {"plugin_loaded": {"manifest": a_manifest(*A_JOBS)},
            "plugin_disabled": {"reason": "why"},
            "plugin_unloaded": {"remove_data": False}}[hook]
    call = getattr(host.pm.hook, hook)
    error = refused(host, lambda: call(plugin_id=A_ID, plugin_key=plugin_key, **args))
    assert re.search("plugin.key", str(error)), error
    assert A_ID in host.scheduler.plugins


@pytest.mark.parametrize("reason", [5, ["why"], b"why", {"why": 1}, "x" * 100_000, "why\x00"])
def test_a_bad_reason_is_refused(host, reason):
    refused(host, lambda: host.pm.hook.plugin_disabled(plugin_id=A_ID, plugin_key=A_KEY,
                                                       reason=reason), PjError, "reason")
    assert A_ID in host.scheduler.plugins


@pytest.mark.parametrize("remove_data", ["no", "false", "yes", 1, 0, None, [True]])
def test_remove_data_must_be_a_bool(host, remove_data):
    # "no" is truthy: taken as it is, it would delete the plugin's jobs and runs
    refused(host, lambda: host.pm.hook.plugin_unloaded(plugin_id=A_ID, plugin_key=A_KEY,
                                                       remove_data=remove_data),
            PjError, "remove_data")
    assert A_ID in host.scheduler.plugins


@pytest.mark.filterwarnings("ignore:Argument.*cannot be found in this hook call")
@pytest.mark.parametrize("call, error", [
    (lambda hook: hook.plugin_loaded(plugin_id=A_ID, plugin_key=A_KEY), HookCallError),
    (lambda hook: hook.plugin_loaded(A_ID, A_KEY, a_manifest(*A_JOBS)), TypeError),
], ids=["missing-argument", "positional"])
def test_a_malformed_hook_call_is_refused_by_pluggy_and_changes_nothing(host, call, error):
    # pluggy checks the shape of a hook call before any implementation runs:
    # its own clear error (documented in the README), and pjcore is never called
    before = snapshot(host)
    with pytest.raises(error, match="manifest|positional|keyword"):
        call(host.pm.hook)
    assert snapshot(host) == before


def test_lifecycle_calls_for_unknown_plugins_are_harmless(host):
    before = snapshot(host)
    host.pm.hook.plugin_disabled(plugin_id="nope", plugin_key="nope", reason=None)
    host.pm.hook.plugin_unloaded(plugin_id=SQLISH, plugin_key="nope", remove_data=True)
    assert snapshot(host) == before


# -- Host methods -------------------------------------------------------------------------

NAIVE = datetime(2026, 3, 2, 9, 0)
HOST_CALLS = [
    # unknown plugin / job
    ("trigger unknown plugin", lambda h: h.trigger("nope", "sync"), JobLookupError, ["nope"]),
    ("trigger unknown job", lambda h: h.trigger(A_ID, "nope"), JobLookupError,
     ["nope", A_ID]),
    ("trigger paused", lambda h: h.trigger(B_KEY, "sync"), JobStateError, ["sync", "paused"]),
    ("pause unknown plugin", lambda h: h.pause("nope", "sync"), JobLookupError, ["nope"]),
    ("pause unknown job", lambda h: h.pause(A_KEY, "nope", reason="x"), JobLookupError, ["nope"]),
    ("resume unknown job", lambda h: h.resume(A_ID, SQLISH), JobLookupError, [SQLISH]),
    ("job unknown", lambda h: h.job(SQLISH, "sync"), JobLookupError, [SQLISH]),
    ("runs unknown job", lambda h: h.runs(A_ID, "nope"), JobLookupError, ["nope"]),
    # wrong types
    ("trigger plugin int", lambda h: h.trigger(5, "sync"), InvalidArgument, ["plugin", "int"]),
    ("trigger job None", lambda h: h.trigger(A_ID, None), InvalidArgument, ["job_key"]),
    ("trigger job list", lambda h: h.trigger(A_ID, ["sync"]), InvalidArgument, ["job_key"]),
    ("trigger schedule", lambda h: h.trigger(A_ID, "sync", trigger="schedule"), InvalidArgument,
     ["trigger"]),
    ("trigger trigger int", lambda h: h.trigger(A_ID, "sync", trigger=1), InvalidArgument,
     ["trigger"]),
    ("pause reason int", lambda h: h.pause(A_ID, "sync", reason=5), InvalidArgument, ["reason"]),
    ("pause reason huge", lambda h: h.pause(A_ID, "sync", reason="x" * 100_000),
     InvalidArgument, ["reason", "limit"]),
    ("pause reason NUL", lambda h: h.pause(A_ID, "sync", reason="a\x00b"), InvalidArgument,
     ["reason", "NUL"]),
    ("pause plugin bytes", lambda h: h.pause(b"plugin-a", "sync"), InvalidArgument, ["plugin"]),
    ("resume job dict", lambda h: h.resume(A_ID, {"sync": 1}), InvalidArgument, ["job_key"]),
    ("job plugin empty", lambda h: h.job("", "sync"), InvalidArgument, ["plugin"]),
    ("job key huge", lambda h: h.job(A_ID, "x" * 5000), InvalidArgument, ["job_key"]),
    ("jobs plugin list", lambda h: h.jobs([A_ID, B_ID]), InvalidArgument, ["plugin"]),
    ("run id int", lambda h: h.run(5), InvalidArgument, ["run_id"]),
    ("run id None", lambda h: h.run(None), InvalidArgument, ["run_id"]),
    # statuses
    ("jobs status bogus", lambda h: h.jobs(status="bogus"), InvalidArgument, ["status"]),
    ("jobs status int", lambda h: h.jobs(A_ID, status=1), InvalidArgument, ["status"]),
    ("jobs status run", lambda h: h.jobs(status="running"), InvalidArgument, ["status"]),
    ("runs status bogus", lambda h: h.runs(status="done"), InvalidArgument, ["status"]),
    ("runs status list", lambda h: h.runs(status=["failed"]), InvalidArgument, ["status"]),
    # limits and cursors
    ("runs limit 0", lambda h: h.runs(limit=0), InvalidArgument, ["limit"]),
    ("runs limit 1001", lambda h: h.runs(limit=1001), InvalidArgument, ["limit"]),
    ("runs limit str", lambda h: h.runs(limit="5"), InvalidArgument, ["limit"]),
    ("runs limit bool", lambda h: h.runs(limit=True), InvalidArgument, ["limit"]),
    ("runs limit float", lambda h: h.runs(limit=5.0), InvalidArgument, ["limit"]),
    ("runs limit huge", lambda h: h.runs(limit=10**5000), InvalidArgument, ["limit"]),
    ("runs cursor int", lambda h: h.runs(cursor=5), InvalidArgument, ["cursor"]),
    ("runs cursor junk", lambda h: h.runs(cursor="junk"), InvalidArgument, ["cursor"]),
    ("runs cursor sql", lambda h: h.runs(cursor=SQLISH), InvalidArgument, ["cursor"]),
    ("runs cursor long", lambda h: h.runs(cursor="1:" + "x" * 10_000), InvalidArgument,
     ["cursor"]),
    ("runs job without plugin", lambda h: h.runs(None, "sync"), InvalidArgument, ["plugin"]),
    # upcoming
    ("upcoming 0", lambda h: h.upcoming(0), InvalidArgument, ["count"]),
    ("upcoming 1001", lambda h: h.upcoming(1001), InvalidArgument, ["count"]),
    ("upcoming str", lambda h: h.upcoming("3"), InvalidArgument, ["count"]),
    ("upcoming float", lambda h: h.upcoming(2.5), InvalidArgument, ["count"]),
    ("upcoming bool", lambda h: h.upcoming(True), InvalidArgument, ["count"]),
    ("upcoming huge", lambda h: h.upcoming(10**5000), InvalidArgument, ["count"]),
    ("upcoming naive", lambda h: h.upcoming(2, after=NAIVE), InvalidArgument,
     ["after", "naive"]),
    ("upcoming after str", lambda h: h.upcoming(2, after="2026-03-02"), InvalidArgument,
     ["after"]),
    ("upcoming after date", lambda h: h.upcoming(2, after=NAIVE.date()), InvalidArgument,
     ["after"]),
    ("upcoming plugin int", lambda h: h.upcoming(2, plugin=5), InvalidArgument, ["plugin"]),
]


@pytest.mark.parametrize("call, error, fragments", [c[1:] for c in HOST_CALLS],
                         ids=[c[0] for c in HOST_CALLS])
def test_bad_host_calls_are_refused_and_nothing_changes(host, call, error, fragments):
    refused(host, lambda: call(host), error, *fragments)


@pytest.mark.parametrize("cursor", ["9" * 30 + ":x", "-" + "9" * 30 + ":x", "--5:x", "²:x"])
def test_a_cursor_with_a_huge_or_malformed_number_is_refused(host, cursor):
    refused(host, lambda: host.runs(cursor=cursor), InvalidArgument, "cursor")


def test_upcoming_after_an_instant_starts_there(host):
    after = T0 + timedelta(days=1)
    ((job, times),) = host.upcoming(2, A_ID, after=after)
    assert job.job_key == "sync"
    assert times == [after + timedelta(minutes=8), after + timedelta(minutes=23)]
    ((_, times),) = host.upcoming(1, A_ID)
    assert times == [job.next_run_at]


@pytest.mark.parametrize("kwargs, error, fragment", [
    ({"store": "nope"}, BackendLookupError, "nope"),
    ({"scheduler": 5}, BackendLookupError, "scheduler"),
    ({"max_concurrent": "3"}, ConfigurationError, "max_workers"),
    ({"max_concurrent": 0}, ConfigurationError, "max_workers"),
    ({"default_timeout": -1}, ConfigurationError, "default_timeout"),
    ({"clock": "now"}, ConfigurationError, "clock"),
    ({"plugins": 5}, ConfigurationError, "plugins"),
    ({"plugins": "pjcore.demo"}, ConfigurationError, "plugins"),
    ({"store_options": ["timeout"]}, ConfigurationError, "store_options"),
    ({"store_options": {"url": "sqlite:///other.db"}}, ConfigurationError, "url"),
    ({"store_options": {"timeout": "slow"}}, ConfigurationError, "store backend 'peewee'"),
    ({"store_options": {"bogus": 1}}, ConfigurationError, "bogus"),
    ({"store_options": {"table_prefix": SQLISH}}, ConfigurationError, "table_prefix"),
    ({"scheduler_options": {"bogus": 1}}, ConfigurationError, "bogus"),
    ({"scheduler_options": {"store": None}}, ConfigurationError, "store"),
    ({"scheduler_options": {"max_idle": -1}}, ConfigurationError, "max_idle"),
    ({"scheduler_options": {1: 2}}, ConfigurationError, "scheduler_options"),
])
def test_a_bad_host_configuration_is_refused_and_nothing_changes(host, database, kwargs,
                                                                  error, fragment):
    refused(host, lambda: Host(database, load_entrypoints=False, **kwargs), error, fragment)


@pytest.mark.parametrize("url", [5, b"sqlite:///x.db", "", "bogus", "sqlite://", "sqlite:///",
                                 "sqlite://host/x.db", "mysql://h/x", "postgresql://h:abc/x",
                                 "postgresql://h/", "sqlite:///x.db?mode=ro"])
def test_a_bad_database_url_is_a_configuration_error(url, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigurationError):
        Host(url, load_entrypoints=False)
    assert list(tmp_path.iterdir()) == []  # nothing created


ANYTHING = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(min_value=10**18),
    st.floats(), st.text(max_size=300), st.binary(max_size=10),
    st.lists(st.text(max_size=5), max_size=3), st.dictionaries(st.text(max_size=3),
                                                                st.integers(), max_size=2),
    st.datetimes(), st.datetimes(timezones=st.just(UTC)),
    st.sampled_from([A_ID, A_KEY, B_ID, B_KEY, "sync", "report", "manual", "retry", "active",
                     "failed", "nope", SQLISH, "0:x"]),
)
FUZZ = settings(max_examples=150, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])


@FUZZ
@given(data=st.data())
def test_host_methods_with_random_arguments_raise_only_pjcore_errors(host, data):
    method = data.draw(st.sampled_from(["job", "jobs", "runs", "run", "trigger", "pause",
                                        "resume", "upcoming"]))
    call = getattr(host, method)
    kwargs = {}
    for param in inspect.signature(call).parameters.values():
        if param.default is param.empty or data.draw(st.booleans()):
            kwargs[param.name] = data.draw(ANYTHING, label=param.name)
    try:
        call(**kwargs)
    except PjError:
        pass


# -- CLI arguments ----------------------------------------------------------------------


def pjcore_cli(*argv: str, capsys) -> tuple[int, str, str]:
    """``pjcore *argv`` in this process: a traceback would be an exception here."""
    try:
        code = cli.main(list(argv))
    except SystemExit as exc:  # argparse's usage errors
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


USAGE = [  # exit status 2, before any database is opened
    ["runs", "--limit", "abc"], ["runs", "--limit", "0"], ["runs", "--limit", "1001"],
    ["runs", "--limit", "-1"], ["runs", "--limit", "1e3"], ["calendar", "--count", "x"],
    ["calendar", "--count", "0"], ["run", "--duration", "nan"], ["run", "--duration", "-1"],
    ["run", "--duration", "inf"], ["run", "--drain-timeout", "0"],
    ["demo", "--max-concurrent", "0"], ["trigger", A_ID, "sync", "--timeout", "0"],
    ["trigger", A_ID, "sync", "--timeout", "1e99"], ["runs", "--status", "done"],
    ["jobs", "--status", SQLISH], ["pause"], ["pause", A_ID], ["bogus-command"],
    ["jobs", A_ID, "extra"], ["--no-such-option"], [],
    ["pause", A_ID, "sync", "--reason", "x" * 5000],
]
USAGE_AFTER_OPENING = [  # exit status 2, found by the command itself
    ["runs", "--cursor", "junk"], ["runs", "--cursor", SQLISH], ["runs", "--cursor", ""],
    ["runs", "--cursor=--5:x"], ["runs", "--cursor", "²:x"],
]
FAILURES = [  # exit status 1: one "pjcore: error:" line naming what is wrong
    (["jobs", "nope"], "unknown plugin 'nope'"),
    (["jobs", SQLISH], "unknown plugin"),
    (["runs", "nope"], "unknown plugin"),
    (["runs", A_ID, "nope"], "nope"),
    (["runs", A_KEY, SQLISH], "Job not found"),
    (["pause", "nope", "sync"], "unknown plugin"),
    (["pause", A_ID, "nope"], "Job not found: nope"),
    (["resume", A_ID, "nope"], "Job not found: nope"),
    (["trigger", "nope", "sync"], "unknown plugin"),
    (["trigger", A_ID, "nope"], "Job not found: nope"),
    (["trigger", A_ID, "sync"], "not installed here"),
    (["calendar", "nope"], "unknown plugin"),
]
BAD_URLS = ["", "bogus", "sqlite://", "sqlite:///", "mysql://h/x", "postgresql://h:abc/x",
            "sqlite:////no/such/dir/x.db", f"sqlite:///{SQLISH}/x.db"]


@pytest.fixture
def quiet_cli(monkeypatch):
    monkeypatch.setenv("PJCORE_LOAD_PLUGINS", "")  # no entry points but the built-ins


@pytest.mark.parametrize("argv", USAGE + USAGE_AFTER_OPENING,
                         ids=lambda argv: " ".join(argv)[:40] or "(nothing)")
def test_bad_cli_usage_exits_2(argv, host, database, quiet_cli, capsys):
    before = snapshot(host)
    code, out, err = pjcore_cli(*argv, *(["--database", database] if argv and argv[0]
                                         in ("runs", "jobs") else []), capsys=capsys)
    assert code == 2, (out, err)
    assert "usage: pjcore" in err and "error:" in err
    assert snapshot(host) == before


@pytest.mark.parametrize("argv, fragment", FAILURES, ids=[" ".join(a)[:40] for a, _ in FAILURES])
def test_cli_failures_exit_1_with_one_line(argv, fragment, host, database, quiet_cli, capsys):
    before = snapshot(host)
    code, out, err = pjcore_cli(*argv, "--database", database, capsys=capsys)
    assert code == 1, (out, err)
    assert err.startswith("pjcore: error: ") and err.count("\n") == 1, err
    assert fragment in err
    assert snapshot(host) == before


@pytest.mark.parametrize("url", BAD_URLS)
@pytest.mark.parametrize("command", [["jobs"], ["runs", A_ID], ["pause", A_ID, "sync"],
                                     ["calendar"]], ids=lambda c: c[0])
def test_a_bad_database_url_exits_1(command, url, tmp_path, monkeypatch, quiet_cli, capsys):
    monkeypatch.chdir(tmp_path)
    code, out, err = pjcore_cli(*command, "--database", url, capsys=capsys)
    assert code == 1, (out, err)
    assert err.startswith("pjcore: error: ") and err.count("\n") == 1, err
    assert list(tmp_path.iterdir()) == []


def test_an_unexpected_error_is_one_line_without_the_password(monkeypatch, quiet_cli, capsys):
    def broken(args):
        raise RuntimeError(f"boom while opening {args.database}\nsecond line")

    monkeypatch.setattr(cli, "cmd_jobs", broken)
    code, out, err = pjcore_cli("jobs", "--database", "postgresql://u:s3cret@h/x",
                                capsys=capsys)
    assert code == 1
    assert err == ("pjcore: error: unexpected RuntimeError: boom while opening "
                   "postgresql://u:***@h/x second line (a bug in pjcore or a plugin; "
                   "-v shows the traceback)\n")


def test_a_cursor_with_a_huge_number_never_gives_a_traceback(host, database, quiet_cli, capsys):
    code, out, err = pjcore_cli("runs", "--cursor", "9" * 30 + ":x", "--database", database,
                                capsys=capsys)
    assert code in (1, 2) and "Traceback" not in err
    assert err.count("pjcore: error:") == 1 or "usage:" in err
