"""pjcore.manifest: valid manifests, round trips, and errors that name plugin, job and field."""

from __future__ import annotations

import copy
import json
import math
import time
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pjcore import cron
from pjcore.exceptions import ManifestError, PjError
from pjcore.manifest import (
    KEY_PATTERN,
    MAX_DESCRIPTION,
    MAX_DISPLAY_NAME,
    MAX_JOBS,
    MAX_VERSION,
    AbandonPolicy,
    JobDeclaration,
    JobPolicy,
    Manifest,
    MisfirePolicy,
)

PLUGIN = "acme.billing"


def job(**overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {"job_key": "send-invoices", "display_name": "Send invoices"}
    data.update(overrides)
    return data


def manifest(*jobs: dict[str, Any], **overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {"key": PLUGIN, "jobs": list(jobs) if jobs else [job()]}
    data.update(overrides)
    return data


FULL = {
    "key": PLUGIN,
    "version": "1.4.0",
    "jobs": [
        {
            "job_key": "send-invoices",
            "display_name": "Send invoices",
            "description": "Every weekday morning",
            "schedule": "0 6 * * MON-FRI",
            "timezone": "Europe/Paris",
            "policy": {
                "timeout_seconds": 600,
                "misfire": "run_all",
                "misfire_grace_seconds": 120.5,
                "on_abandoned": "retry",
            },
        },
        {"job_key": "purge_cache.v2", "display_name": "Purge", "schedule": "*/5 * * * * *"},
        {"job_key": "manual", "display_name": "Manual only"},
    ],
}


# -- valid manifests ---------------------------------------------------------


class TestValid:
    def test_full_manifest(self):
        m = Manifest.from_dict(FULL)
        assert m.key == PLUGIN and m.version == "1.4.0"
        assert [j.job_key for j in m.jobs] == ["send-invoices", "purge_cache.v2", "manual"]
        first = m.jobs[0]
        assert first.schedule == "0 6 * * MON-FRI" and first.timezone == "Europe/Paris"
        assert first.description == "Every weekday morning"
        assert first.policy == JobPolicy(timeout_seconds=600.0, misfire=MisfirePolicy.run_all,
                                         misfire_grace_seconds=120.5,
                                         on_abandoned=AbandonPolicy.retry)
        assert isinstance(first.policy.timeout_seconds, float)
        assert m.job("manual") is m.jobs[2]
        assert m.job("nope") is None

    def test_round_trip(self):
        m = Manifest.from_dict(FULL)
        assert Manifest.from_dict(m.to_dict()) == m
        assert Manifest.from_dict(json.loads(json.dumps(m.to_dict()))) == m
        assert m.to_dict()["jobs"][0]["policy"]["misfire"] == "run_all"

    def test_defaults(self):
        m = Manifest.from_dict({"key": PLUGIN, "jobs": [job()]})
        decl = m.jobs[0]
        assert m.version is None
        assert decl.schedule is None  # manual only
        assert decl.description is None
        assert decl.timezone == "UTC"
        assert decl.policy == JobPolicy()
        assert decl.policy.timeout_seconds is None
        assert decl.policy.misfire is MisfirePolicy.run_once
        assert decl.policy.misfire_grace_seconds == 3600.0
        assert decl.policy.on_abandoned is AbandonPolicy.skip
        out = m.to_dict()
        assert "version" not in out
        assert "schedule" not in out["jobs"][0] and "description" not in out["jobs"][0]

    def test_nulls_mean_defaults(self):
        m = Manifest.from_dict(manifest(job(schedule=None, timezone=None, description=None,
                                            policy=None), version=None))
        assert m.jobs[0] == JobDeclaration(job_key="send-invoices", display_name="Send invoices")
        assert Manifest.from_dict({"key": PLUGIN, "jobs": None}).jobs == ()
        assert Manifest.from_dict({"key": PLUGIN}).jobs == ()
        policy = Manifest.from_dict(manifest(job(policy={"timeout_seconds": None,
                                                         "misfire_grace_seconds": None})))
        assert policy.jobs[0].policy.misfire_grace_seconds is None

    def test_enum_members_and_tuples_are_accepted(self):
        m = Manifest.from_dict({"key": PLUGIN, "jobs": (job(policy={"misfire": MisfirePolicy.skip}),)})
        assert m.jobs[0].policy.misfire is MisfirePolicy.skip

    def test_keys_at_the_limits(self):
        for key in ("a", "A" * 64, "0lead-digit", "a.b_c-d", "x" * 63 + "9"):
            assert KEY_PATTERN.match(key)
            assert Manifest.from_dict(manifest(job(job_key=key), key=key)).jobs[0].job_key == key

    def test_length_limits_are_inclusive(self):
        m = Manifest.from_dict(manifest(job(display_name="d" * MAX_DISPLAY_NAME,
                                            description="x" * MAX_DESCRIPTION),
                                        version="v" * MAX_VERSION))
        assert len(m.jobs[0].display_name) == MAX_DISPLAY_NAME

    def test_exactly_max_jobs(self):
        jobs = [job(job_key=f"j{i}", display_name=f"Job {i}") for i in range(MAX_JOBS)]
        assert len(Manifest.from_dict(manifest(*jobs)).jobs) == MAX_JOBS

    def test_empty_job_list(self):
        m = Manifest.from_dict({"key": PLUGIN, "jobs": []})
        assert m.jobs == () and m.to_dict() == {"key": PLUGIN, "jobs": []}

    def test_schedule_is_checked_in_the_job_timezone(self):
        m = Manifest.from_dict(manifest(job(schedule="30 2 * * *", timezone="America/New_York")))
        assert cron.get_schedule(m.jobs[0].schedule, m.jobs[0].timezone)

    def test_coerce(self):
        m = Manifest.from_dict(FULL)
        assert Manifest.coerce(m) is m
        assert Manifest.coerce(m, plugin_key=PLUGIN) is m
        assert Manifest.coerce(FULL) == m
        assert Manifest.coerce(FULL, plugin_key=PLUGIN) == m
        # the key may be left to the plugin key
        keyless = {k: v for k, v in FULL.items() if k != "key"}
        assert Manifest.coerce(keyless, plugin_key=PLUGIN) == m

    def test_coerce_checks_the_plugin_key(self):
        m = Manifest.from_dict(FULL)
        for value in (m, FULL):
            with pytest.raises(ManifestError) as info:
                Manifest.coerce(value, plugin_key="other")
            assert (info.value.plugin, info.value.field) == ("other", "key")
            assert "'acme.billing' does not match the plugin key 'other'" in str(info.value)
        with pytest.raises(ManifestError, match="must be a mapping"):
            Manifest.coerce(None, plugin_key=PLUGIN)

    def test_direct_construction(self):
        decl = JobDeclaration(job_key="a", display_name="A", schedule="@daily",
                              policy=JobPolicy(timeout_seconds=5, misfire="skip"))
        assert decl.policy.timeout_seconds == 5.0 and decl.policy.misfire is MisfirePolicy.skip
        m = Manifest(key=PLUGIN, jobs=[decl])
        assert m.jobs == (decl,) and Manifest.from_dict(m.to_dict()) == m


# -- errors ------------------------------------------------------------------


def error(data: Any, **kwargs: Any) -> ManifestError:
    with pytest.raises(ManifestError) as info:
        Manifest.from_dict(data, **kwargs)
    return info.value


def test_manifest_error_kinds():
    assert issubclass(ManifestError, PjError) and issubclass(ManifestError, ValueError)
    exc = ManifestError("is bad", plugin="p", job="j", field="f")
    assert str(exc) == "plugin 'p': job 'j': field 'f': is bad"
    assert (exc.plugin, exc.job, exc.field, exc.reason) == ("p", "j", "f", "is bad")


INJECTION = "'; DROP TABLE pj_jobs; --"

# (manifest, expected job, expected field, fragments of the message)
JOB_ERRORS = [
    # job_key
    (manifest({"display_name": "x"}), None, "job_key", ["is required", "jobs[0]"]),
    (manifest(job(job_key="")), None, "job_key", ["must not be empty"]),
    (manifest(job(job_key="   ")), None, "job_key", ["must not be empty"]),
    (manifest(job(job_key=None)), None, "job_key", ["is required"]),
    (manifest(job(job_key=5)), None, "job_key", ["must be a string, not int"]),
    (manifest(job(job_key=["a"])), None, "job_key", ["must be a string, not list"]),
    (manifest(job(job_key="has space")), "has space", "job_key", ["does not match"]),
    (manifest(job(job_key="-lead")), "-lead", "job_key", ["does not match"]),
    (manifest(job(job_key=".lead")), ".lead", "job_key", ["does not match"]),
    (manifest(job(job_key="trailing\n")), "trailing\n", "job_key", ["does not match"]),
    (manifest(job(job_key="a/b")), "a/b", "job_key", ["does not match"]),
    (manifest(job(job_key="é")), "é", "job_key", ["does not match"]),
    (manifest(job(job_key="a" * 65)), None, "job_key", ["65 characters", "limit is 64"]),
    (manifest(job(job_key=INJECTION)), INJECTION, "job_key", ["does not match"]),
    (manifest(job(job_key="a\x00b")), None, "job_key", ["NUL"]),
    # display_name
    (manifest({"job_key": "j"}), "j", "display_name", ["is required"]),
    (manifest(job(job_key="j", display_name="")), "j", "display_name", ["must not be empty"]),
    (manifest(job(job_key="j", display_name=" \t\n")), "j", "display_name", ["must not be empty"]),
    (manifest(job(job_key="j", display_name=None)), "j", "display_name", ["is required"]),
    (manifest(job(job_key="j", display_name=[])), "j", "display_name", ["not list"]),
    (manifest(job(job_key="j", display_name=5)), "j", "display_name", ["not int"]),
    (manifest(job(job_key="j", display_name="d" * (MAX_DISPLAY_NAME + 1))), "j", "display_name",
     [f"limit is {MAX_DISPLAY_NAME}"]),
    (manifest(job(job_key="j", display_name="a\x00b")), "j", "display_name", ["NUL"]),
    # description
    (manifest(job(job_key="j", description=5)), "j", "description", ["not int"]),
    (manifest(job(job_key="j", description="x" * (MAX_DESCRIPTION + 1))), "j", "description",
     [f"limit is {MAX_DESCRIPTION}"]),
    (manifest(job(job_key="j", description="\x00")), "j", "description", ["NUL"]),
    # schedule
    (manifest(job(job_key="j", schedule=5)), "j", "schedule", ["must be a string, not int"]),
    (manifest(job(job_key="j", schedule=["* * * * *"])), "j", "schedule", ["not list"]),
    (manifest(job(job_key="j", schedule="")), "j", "schedule", ["must not be empty"]),
    (manifest(job(job_key="j", schedule="   ")), "j", "schedule", ["must not be empty"]),
    (manifest(job(job_key="j", schedule="60 * * * *")), "j", "schedule", ["minute field"]),
    (manifest(job(job_key="j", schedule="*/0 * * * *")), "j", "schedule", ["step 0"]),
    (manifest(job(job_key="j", schedule="5-3 * * * *")), "j", "schedule", ["start > end"]),
    (manifest(job(job_key="j", schedule="* * * *")), "j", "schedule", ["got 4"]),
    (manifest(job(job_key="j", schedule="* * * * * * *")), "j", "schedule", ["got 7"]),
    (manifest(job(job_key="j", schedule="0 0 30 2 *")), "j", "schedule", ["never fires"]),
    (manifest(job(job_key="j", schedule="@reboot")), "j", "schedule", ["unknown macro"]),
    (manifest(job(job_key="j", schedule="0 " * 101)), "j", "schedule", ["limit is 200"]),
    (manifest(job(job_key="j", schedule="* * * * *\x00")), "j", "schedule", ["NUL"]),
    # timezone
    (manifest(job(job_key="j", timezone="Mars/Olympus")), "j", "timezone", ["unknown timezone"]),
    (manifest(job(job_key="j", timezone="")), "j", "timezone", ["must not be empty"]),
    (manifest(job(job_key="j", timezone=5)), "j", "timezone", ["not int"]),
    (manifest(job(job_key="j", timezone="UTC\x00")), "j", "timezone", ["NUL"]),
    # policy
    (manifest(job(job_key="j", policy=[])), "j", "policy", ["must be a mapping"]),
    (manifest(job(job_key="j", policy="run_once")), "j", "policy", ["must be a mapping"]),
    (manifest(job(job_key="j", policy={"timeout": 5})), "j", "policy.timeout", ["unknown field"]),
    (manifest(job(job_key="j", policy={"timeout_seconds": "10"})), "j", "policy.timeout_seconds",
     ["not str"]),
    (manifest(job(job_key="j", policy={"timeout_seconds": True})), "j", "policy.timeout_seconds",
     ["not bool"]),
    (manifest(job(job_key="j", policy={"timeout_seconds": -1})), "j", "policy.timeout_seconds",
     ["not -1"]),
    (manifest(job(job_key="j", policy={"timeout_seconds": 0})), "j", "policy.timeout_seconds",
     ["not 0"]),
    (manifest(job(job_key="j", policy={"timeout_seconds": math.inf})), "j",
     "policy.timeout_seconds", ["not inf"]),
    (manifest(job(job_key="j", policy={"timeout_seconds": math.nan})), "j",
     "policy.timeout_seconds", ["not nan"]),
    (manifest(job(job_key="j", policy={"timeout_seconds": 10**400})), "j",
     "policy.timeout_seconds", ["in (0,"]),
    (manifest(job(job_key="j", policy={"timeout_seconds": 7 * 86400 + 1})), "j",
     "policy.timeout_seconds", ["in (0, 604800]"]),
    (manifest(job(job_key="j", policy={"misfire_grace_seconds": -0.5})), "j",
     "policy.misfire_grace_seconds", ["not -0.5"]),
    (manifest(job(job_key="j", policy={"misfire": "later"})), "j", "policy.misfire",
     ["run_once, skip, run_all", "'later'"]),
    (manifest(job(job_key="j", policy={"misfire": None})), "j", "policy.misfire", ["NoneType"]),
    (manifest(job(job_key="j", policy={"misfire": 1})), "j", "policy.misfire", ["not int"]),
    (manifest(job(job_key="j", policy={"on_abandoned": "RETRY"})), "j", "policy.on_abandoned",
     ["skip, retry"]),
    # unknown fields
    (manifest(job(job_key="j", scope="company")), "j", "scope", ["unknown field in job"]),
    (manifest(job(job_key="j", jobKey="j")), "j", "jobKey", ["unknown field"]),
    # shape
    (manifest(5), None, "jobs", ["must be a mapping, not int", "jobs[0]"]),
    (manifest(job(), ["x"]), None, "jobs", ["must be a mapping, not list", "jobs[1]"]),
    (manifest(job(job_key="a"), job(job_key="b"), job(job_key="a"), job(job_key="b"),
              job(job_key="c")), "a", "job_key", ["duplicate job keys: a, b"]),
]


@pytest.mark.parametrize("data, job_key, field, fragments", JOB_ERRORS)
def test_job_errors_name_plugin_job_and_field(data, job_key, field, fragments):
    exc = error(data)
    assert exc.plugin == PLUGIN
    assert exc.job == job_key
    assert exc.field == field
    message = str(exc)
    assert f"plugin {PLUGIN!r}" in message
    assert f"field {field!r}" in message
    if job_key is not None:
        assert f"job {job_key!r}" in message
    for fragment in fragments:
        assert fragment in message


MANIFEST_ERRORS = [
    ({"key": PLUGIN, "jobs": "abc"}, PLUGIN, "jobs", ["must be a list, not str"]),
    ({"key": PLUGIN, "jobs": {"a": job()}}, PLUGIN, "jobs", ["must be a list, not dict"]),
    ({"key": PLUGIN, "jobs": [], "capabilities": []}, PLUGIN, "capabilities", ["unknown field"]),
    ({"key": PLUGIN, "jobs": [], "version": 1}, PLUGIN, "version", ["not int"]),
    ({"key": PLUGIN, "jobs": [], "version": "v" * (MAX_VERSION + 1)}, PLUGIN, "version",
     [f"limit is {MAX_VERSION}"]),
    ({"key": PLUGIN, "jobs": [], "version": "1\x00"}, PLUGIN, "version", ["NUL"]),
    ({"jobs": []}, None, "key", ["is required"]),
    ({"key": None, "jobs": []}, None, "key", ["is required"]),
    ({"key": 5, "jobs": []}, None, "key", ["not int"]),
    ({"key": "", "jobs": []}, "", "key", ["must not be empty"]),
    ({"key": "has space", "jobs": []}, "has space", "key", ["does not match"]),
    ({"key": "a\x00", "jobs": []}, "a\x00", "key", ["NUL"]),
]


@pytest.mark.parametrize("data, plugin, field, fragments", MANIFEST_ERRORS)
def test_manifest_errors(data, plugin, field, fragments):
    exc = error(data)
    assert (exc.plugin, exc.job, exc.field) == (plugin, None, field)
    for fragment in fragments:
        assert fragment in str(exc)


@pytest.mark.parametrize("data", [None, 5, "key: acme", ["key"], b"{}"])
def test_manifest_not_a_mapping(data):
    exc = error(data)
    assert "manifest must be a mapping" in str(exc)
    exc = error(data, plugin_key=PLUGIN)
    assert exc.plugin == PLUGIN


def test_key_mismatch_names_the_loading_plugin():
    exc = error(manifest(key="evil"), plugin_key=PLUGIN)
    assert (exc.plugin, exc.field) == (PLUGIN, "key")
    assert "'evil' does not match the plugin key 'acme.billing'" in str(exc)
    # and later errors too are reported under the plugin being loaded
    exc = error(manifest(job(display_name=""), key=PLUGIN), plugin_key=PLUGIN)
    assert exc.plugin == PLUGIN


def test_too_many_jobs_fails_fast():
    jobs = [job(job_key=f"j{i}") for i in range(10_000)]
    started = time.perf_counter()
    exc = error(manifest(*jobs))
    assert time.perf_counter() - started < 0.5
    assert (exc.plugin, exc.field) == (PLUGIN, "jobs")
    assert f"declares 10000 jobs; the limit is {MAX_JOBS}" in str(exc)
    assert f"declares {MAX_JOBS + 1} jobs" in str(error(manifest(*jobs[: MAX_JOBS + 1])))


def test_first_bad_job_is_reported():
    exc = error(manifest(job(job_key="ok"), job(job_key="bad", schedule="nope"),
                         job(job_key="worse", timezone="nowhere")))
    assert (exc.job, exc.field) == ("bad", "schedule")


class TestDirectConstruction:
    """A plugin may hand over ready-made objects; they are validated too."""

    def test_job_policy(self):
        with pytest.raises(ManifestError) as info:
            JobPolicy(timeout_seconds=-1)
        assert info.value.field == "policy.timeout_seconds"
        with pytest.raises(ManifestError, match="policy.misfire"):
            JobPolicy(misfire="never")
        with pytest.raises(ManifestError, match="policy.on_abandoned"):
            JobPolicy(on_abandoned=None)

    def test_job_declaration(self):
        with pytest.raises(ManifestError) as info:
            JobDeclaration(job_key="j", display_name="J", schedule="61 * * * *")
        assert (info.value.job, info.value.field) == ("j", "schedule")
        with pytest.raises(ManifestError, match="must be a JobPolicy"):
            JobDeclaration(job_key="j", display_name="J", policy={"misfire": "skip"})

    def test_manifest(self):
        with pytest.raises(ManifestError, match="must be a list"):
            Manifest(key=PLUGIN, jobs=5)
        with pytest.raises(ManifestError, match="JobDeclaration"):
            Manifest(key=PLUGIN, jobs=[job()])
        with pytest.raises(ManifestError, match="duplicate job keys: a"):
            decl = JobDeclaration(job_key="a", display_name="A")
            Manifest(key=PLUGIN, jobs=[decl, decl])
        with pytest.raises(ManifestError, match="does not match"):
            Manifest(key="bad key")


def test_from_dict_does_not_modify_its_input():
    data = copy.deepcopy(FULL)
    Manifest.from_dict(data)
    assert data == FULL


# -- properties --------------------------------------------------------------

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=20,
)

KEYS = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,20}", fullmatch=True)
NAMES = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
                min_size=1, max_size=40).filter(str.strip)
SCHEDULES = st.sampled_from([None, "* * * * *", "*/15 * * * *", "0 9 * * MON-FRI", "@daily",
                             "30 2 * * *", "*/10 * * * * *", "0 0 L * *", "0 0 13 * 5"])
ZONES = st.sampled_from(["UTC", "Europe/Paris", "America/New_York", "Asia/Kolkata"])
SECONDS = st.none() | st.floats(0.001, 604800) | st.integers(1, 604800)

POLICIES = st.fixed_dictionaries(
    {},
    optional={
        "timeout_seconds": SECONDS,
        "misfire_grace_seconds": SECONDS,
        "misfire": st.sampled_from([m.value for m in MisfirePolicy]),
        "on_abandoned": st.sampled_from([a.value for a in AbandonPolicy]),
    },
)
JOBS = st.fixed_dictionaries(
    {"job_key": KEYS, "display_name": NAMES},
    optional={
        "description": st.none() | NAMES,
        "schedule": SCHEDULES,
        "timezone": ZONES,
        "policy": st.none() | POLICIES,
    },
)
MANIFESTS = st.fixed_dictionaries(
    {"key": KEYS, "jobs": st.lists(JOBS, max_size=4, unique_by=lambda j: j["job_key"])},
    optional={"version": st.none() | st.text(max_size=10).filter(lambda v: "\x00" not in v)},
)

PROPERTY = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _only_manifest_errors(data: Any, plugin_key: str | None = None) -> None:
    try:
        m = Manifest.from_dict(data, plugin_key=plugin_key)
    except ManifestError as exc:
        assert exc.reason and str(exc)
        return
    # whatever was accepted is a valid manifest that survives a round trip
    assert isinstance(m, Manifest)
    assert Manifest.from_dict(m.to_dict()) == m


@PROPERTY
@given(JSON)
def test_arbitrary_json_only_raises_manifest_error(data):
    _only_manifest_errors(data)


@PROPERTY
@given(st.dictionaries(st.sampled_from(["key", "version", "jobs", "extra"]), JSON, max_size=3)
       | st.fixed_dictionaries({"key": KEYS, "jobs": st.lists(
           st.dictionaries(st.sampled_from(list(JobDeclaration.FIELDS)), JSON), max_size=3)}))
def test_manifest_shaped_json_only_raises_manifest_error(data):
    _only_manifest_errors(data)


def _paths(data: dict) -> list[tuple]:
    """Every place in a manifest dict a value can be replaced or added."""
    paths: list[tuple] = [("key",), ("version",), ("jobs",), ("extra",)]
    for i, j in enumerate(data["jobs"]):
        paths.append(("jobs", i))
        paths += [("jobs", i, f) for f in (*JobDeclaration.FIELDS, "extra")]
        if isinstance(j.get("policy"), dict):
            paths += [("jobs", i, "policy", f) for f in (*JobPolicy.FIELDS, "extra")]
    return paths


@PROPERTY
@given(MANIFESTS, st.data())
def test_near_valid_manifests_only_raise_manifest_error(data, choices):
    broken = copy.deepcopy(data)
    path = choices.draw(st.sampled_from(_paths(broken)))
    target = broken
    for step in path[:-1]:
        target = target[step]
    if choices.draw(st.booleans()) and isinstance(target, dict):
        target.pop(path[-1], None)
    else:
        target[path[-1]] = choices.draw(
            JSON | st.text(max_size=300) | st.integers()
            | st.sampled_from(["", " ", "\x00", "60 * * * *", "a" * 65, 10**400, -(10**400)])
        )
    _only_manifest_errors(broken)
    _only_manifest_errors(broken, plugin_key=choices.draw(st.none() | KEYS))


@PROPERTY
@given(MANIFESTS)
def test_valid_manifests_round_trip(data):
    m = Manifest.from_dict(data)
    assert Manifest.from_dict(m.to_dict()) == m
    assert Manifest.from_dict(json.loads(json.dumps(m.to_dict()))) == m
    assert Manifest.coerce(m.to_dict(), plugin_key=m.key) == m
    assert len(m.jobs) == len(data["jobs"])
