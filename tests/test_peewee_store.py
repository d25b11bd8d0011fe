"""Behaviour specific to the peewee store: engines, isolation, schema, processes.

The general JobStore contract is checked by the shared suite
(pjcore.testing, tests/test_store_contract.py).
"""

from __future__ import annotations

import json
import re
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import peewee as pw
import pjtest
import pytest
from playhouse.migrate import SchemaMigrator, migrate

from pjcore.contrib import peewee_store
from pjcore.contrib.peewee_store import MIGRATIONS, Migration, PeeweeJobStore
from pjcore.exceptions import (ConfigurationError, JobAlreadyRunning, SlotAlreadyClaimed,
                               StoreError)
from pjcore.manifest import JobDeclaration

T0 = datetime(2026, 1, 15, 10, 30, tzinfo=timezone.utc)
PASSWORD = "hunter2-s3cret"


def decl(key: str, schedule: str | None = "*/15 * * * *") -> JobDeclaration:
    return JobDeclaration(job_key=key, display_name=f"Job {key}", schedule=schedule)


def slot_claim(job, **kw) -> dict:
    """A claim of *job*'s current slot, moving its pointer a minute on."""
    slot = job.next_run_at
    return {"job_id": job.id, "expected": slot, "run_slot": slot,
            "next_run_at": slot + timedelta(minutes=1), "now": slot, **kw}


@pytest.fixture
def two_connections(tmp_path):
    """Two SQLite stores on one file: each writes through a connection of its own."""
    path = tmp_path / "jobs.db"
    store, other = PeeweeJobStore(f"sqlite:///{path}"), PeeweeJobStore(f"sqlite:///{path}")
    yield store, other
    store.close()
    other.close()


# -- helpers (PostgreSQL availability: the postgres_url fixture of conftest.py) --


def with_password(url: str, password: str = PASSWORD) -> str:
    head, _, rest = url.partition("://")
    userinfo, at, hostpart = rest.rpartition("@")
    user = userinfo.partition(":")[0] if at else "postgres"
    return f"{head}://{user}:{password}@{hostpart}"


def unique_prefix(tag: str = "") -> str:
    return f"t{uuid.uuid4().hex[:10]}{tag}_"


ENGINES = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]


@pytest.fixture(params=ENGINES)
def open_store(request, tmp_path):
    """A factory of stores on one database (a SQLite file, or the PostgreSQL
    test database with prefixes unique to this test); cleans up afterwards."""
    engine = request.param
    if engine == "sqlite":
        url = f"sqlite:///{tmp_path / 'jobs.db'}"
    else:
        url = request.getfixturevalue("postgres_url")
    base = unique_prefix()[:-1]
    opened: list[PeeweeJobStore] = []
    prefixes: set[str] = set()

    def open_(tag: str = "", **kwargs) -> PeeweeJobStore:
        prefix = f"{base}{tag}_"
        prefixes.add(prefix)
        store = PeeweeJobStore(kwargs.pop("url", url), table_prefix=prefix, **kwargs)
        opened.append(store)
        return store

    open_.engine = engine
    open_.url = url
    yield open_
    for store in opened:
        store.close()
    if engine == "postgresql":
        _drop_pg_tables(url, prefixes)


def _drop_pg_tables(url: str, prefixes) -> None:
    import psycopg2
    from psycopg2 import sql

    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        for prefix in prefixes:
            for table in ("runs", "jobs", "schema"):
                cur.execute(sql.SQL("DROP TABLE IF EXISTS {} CASCADE").format(
                    sql.Identifier(prefix + table)))
    conn.close()


# -- isolation -------------------------------------------------------------------


def test_job_rows_are_read_in_the_field_order_of_job():
    # rows become Jobs field by field, positionally (see _build_job): every
    # field gets a value of its own, so a swap shows
    import attrs

    from pjcore.models import Job, JobStatus, PausedBy

    assert list(peewee_store._JOB_COLUMNS) == [f.name for f in attrs.fields(Job)]
    row = ("j1", "p1", "acme", "sync", "Sync", "what it does", "* * * * *", "Asia/Tokyo",
           '{"misfire": "skip"}', "paused", "operator", "why", 2, 1_000_000, 2_000_000,
           3_000_000, 4_000_000)
    job = peewee_store._build_job(row)
    assert job.status is JobStatus.paused and job.paused_by is PausedBy.operator
    epoch = datetime(1970, 1, 1, tzinfo=timezone.utc)
    assert [getattr(job, f) for f in peewee_store._JOB_COLUMNS] == [
        "j1", "p1", "acme", "sync", "Sync", "what it does", "* * * * *", "Asia/Tokyo",
        peewee_store._policy('{"misfire": "skip"}'), JobStatus.paused, PausedBy.operator,
        "why", 2] + [epoch + timedelta(seconds=n) for n in (1, 2, 3, 4)]
    assert job.policy.misfire.value == "skip"
    # a value the converters refuse still raises, as before
    with pytest.raises(ValueError):
        peewee_store._build_job(row[:9] + ("no such status",) + row[10:])


def test_two_sqlite_stores_in_one_process_are_independent(tmp_path):
    one = PeeweeJobStore(f"sqlite:///{tmp_path / 'one.db'}")
    two = PeeweeJobStore(f"sqlite:///{tmp_path / 'two.db'}")
    try:
        one.sync_jobs("p", "acme", [decl("a"), decl("b")], now=T0)
        assert [j.job_key for j in one.list_jobs()] == ["a", "b"]
        assert two.list_jobs() == [] and two.next_due_at() is None

        # interleaved use: each keeps its own rows
        two.sync_jobs("p", "acme", [decl("c", None)], now=T0)
        job_a = one.get_job_by_key("p", "a")
        run = one.create_run(job_a.id, trigger="manual", now=T0)
        assert two.get_job(job_a.id) is None and two.get_run(run.id) is None
        two_run = two.create_run(two.get_job_by_key("p", "c").id, trigger="manual", now=T0)
        assert [r.id for r in one.list_runs().runs] == [run.id]
        assert [r.id for r in two.list_runs().runs] == [two_run.id]
        assert one.delete_plugin("p") == 2
        assert [j.job_key for j in two.list_jobs()] == ["c"]
    finally:
        one.close()
        two.close()


def test_two_prefixes_on_one_database_are_independent(open_store):
    one, two = open_store("a"), open_store("b")
    one.sync_jobs("p", "acme", [decl("a")], now=T0)
    assert two.list_jobs() == []
    two.sync_jobs("p", "acme", [decl("a")], now=T0)
    # same plugin and key, different stores: separate rows, separate exclusivity
    a1, a2 = one.get_job_by_key("p", "a"), two.get_job_by_key("p", "a")
    assert a1.id != a2.id
    # each prefix has its own indexes (index names are per database)
    expected = {
        "jobs": {"jobs_plugin_id_job_key", "jobs_status_next_run_at_id",
                 "jobs_plugin_key_plugin_id"},
        "runs": {"runs_job_id_scheduled_for_attempt", "runs_live",
                 "runs_plugin_id_created_at_id", "runs_created_at_id"},
    }
    for store in (one, two):
        p = store.table_prefix
        for table, names in expected.items():
            found = {i.name for i in one.database.get_indexes(p + table)}
            assert {p + n for n in names} <= found, found
    slot = T0 + timedelta(minutes=15)
    two.create_run(a2.id, trigger="schedule", now=T0, scheduled_for=slot)
    with pytest.raises(SlotAlreadyClaimed):
        two.create_run(a2.id, trigger="schedule", now=T0, scheduled_for=slot, exclusive=False)
    one.create_run(a1.id, trigger="manual", now=T0)
    assert one.delete_plugin("p") == 1
    assert [j.id for j in two.list_jobs()] == [a2.id]
    assert len(two.list_runs().runs) == 1


# -- SQLite specifics ------------------------------------------------------------


def test_sqlite_pragmas_are_active_on_every_connection(tmp_path):
    store = PeeweeJobStore(f"sqlite:///{tmp_path / 'jobs.db'}")
    try:
        def pragmas() -> tuple:
            db = store.database
            names = ("journal_mode", "foreign_keys", "synchronous", "busy_timeout")
            return tuple(db.execute_sql(f"PRAGMA {name}").fetchone()[0] for name in names)

        expected = ("wal", 1, 1, 10_000)  # synchronous 1 = NORMAL
        assert pragmas() == expected
        seen = []
        worker = threading.Thread(target=lambda: (store.list_jobs(), seen.append(pragmas())))
        worker.start()
        worker.join()
        assert seen == [expected]
    finally:
        store.close()


def test_sqlite_foreign_keys_cascade_runs_of_a_deleted_job(tmp_path):
    store = PeeweeJobStore(f"sqlite:///{tmp_path / 'jobs.db'}")
    try:
        store.sync_jobs("p", "acme", [decl("a")], now=T0)
        job = store.get_job_by_key("p", "a")
        run = store.create_run(job.id, trigger="manual", now=T0)
        store.database.execute_sql('DELETE FROM "pj_jobs" WHERE id = ?', (job.id,))
        assert store.get_run(run.id) is None
    finally:
        store.close()


def test_sqlite_relative_path_is_resolved_once(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    store = PeeweeJobStore("sqlite:///data/../jobs.db", table_prefix="x_")
    try:
        assert store.database.database == str(tmp_path / "jobs.db")
        assert (tmp_path / "jobs.db").exists()
        assert repr(store) == (
            f"PeeweeJobStore(engine='sqlite', database='{tmp_path / 'jobs.db'}', table_prefix='x_')"
        )
    finally:
        store.close()


def test_accepts_a_peewee_database(tmp_path):
    db = pw.SqliteDatabase(str(tmp_path / "own.db"), pragmas={"journal_mode": "wal"})
    store = PeeweeJobStore(db, table_prefix="mine_")
    try:
        store.sync_jobs("p", "acme", [decl("a")], now=T0)
        assert "mine_jobs" in db.get_tables()
    finally:
        store.close()
    with pytest.raises(ConfigurationError, match="only apply to a database URL"):
        PeeweeJobStore(db, timeout=3)
    with pytest.raises(ConfigurationError, match="unsupported peewee database"):
        PeeweeJobStore(pw.MySQLDatabase("x"))


def test_close_releases_the_connections_of_other_threads(tmp_path):
    store = PeeweeJobStore(f"sqlite:///{tmp_path / 'jobs.db'}")
    used, release = threading.Event(), threading.Event()
    conns = []

    def worker():
        store.list_jobs()
        conns.append(store.database.connection())
        used.set()
        release.wait(10)

    thread = threading.Thread(target=worker)
    thread.start()
    try:
        assert used.wait(10)
        store.close()
        store.close()  # idempotent
        with pytest.raises(Exception, match="closed"):
            conns[0].execute("SELECT 1")
        with pytest.raises(StoreError, match="closed"):
            store.list_jobs()
    finally:
        release.set()
        thread.join()


def test_connections_of_finished_threads_are_not_kept(tmp_path):
    store = PeeweeJobStore(f"sqlite:///{tmp_path / 'jobs.db'}")
    try:
        for _ in range(5):
            thread = threading.Thread(target=store.list_jobs)
            thread.start()
            thread.join()
        store.list_jobs()
        assert len(store._conns) <= 2  # this thread's, and at most the last worker's
    finally:
        store.close()


def test_instants_are_stored_as_integer_microseconds(tmp_path):
    store = PeeweeJobStore(f"sqlite:///{tmp_path / 'jobs.db'}")
    try:
        store.sync_jobs("p", "acme", [decl("a")], now=T0 + timedelta(microseconds=7))
        row = store.database.execute_sql(
            'SELECT created_at, next_run_at, typeof(created_at) FROM "pj_jobs"').fetchone()
        assert row == (int(T0.timestamp()) * 1_000_000 + 7,
                       int((T0 + timedelta(minutes=15)).timestamp()) * 1_000_000, "integer")
    finally:
        store.close()


# -- errors ----------------------------------------------------------------------


def test_database_errors_become_store_errors_with_the_cause(open_store):
    store = open_store()
    store.database.drop_tables([store._Run])
    with pytest.raises(StoreError, match="list_runs failed") as info:
        store.list_runs()
    assert isinstance(info.value.__cause__, pw.DatabaseError)
    # the store is still usable for what remains
    assert store.list_jobs() == []


def test_unopenable_sqlite_file_is_a_store_error(tmp_path):
    with pytest.raises(StoreError, match="unable to open"):
        PeeweeJobStore(f"sqlite:///{tmp_path / 'missing-dir' / 'jobs.db'}")


@pytest.mark.parametrize(
    "url, match",
    [
        ("jobs.db", "malformed database URL"),
        (f"postgresql://u:{PASSWORD}@[::1/db", "malformed database URL"),
        (42, "peewee Database, not int"),
        (f"mysql://root:{PASSWORD}@db/jobs", "unsupported database URL scheme 'mysql'"),
        (f"sqlite://u:{PASSWORD}@host/jobs.db", "has a host part"),
        ("sqlite://", "must name a database file"),
        ("sqlite:///:memory:", "must name a database file"),
        ("sqlite:///jobs.db?cache=shared", "unsupported SQLite option"),
        (f"postgresql://u:{PASSWORD}@db:notaport/jobs", "invalid port"),
        (f"postgresql://u:{PASSWORD}@db:5432/", "must name one database"),
        (f"postgres://u:{PASSWORD}@db:5432/a/b", "must name one database"),
    ],
)
def test_bad_urls_are_configuration_errors_without_the_password(url, match):
    with pytest.raises(ConfigurationError, match=match) as info:
        PeeweeJobStore(url)
    assert PASSWORD not in str(info.value)


@pytest.mark.parametrize("prefix", ["", "Pj_", "1pj", "pj-", "p" * 22, None, "pj;drop"])
def test_bad_table_prefix(prefix, tmp_path):
    with pytest.raises(ConfigurationError, match="table_prefix"):
        PeeweeJobStore(f"sqlite:///{tmp_path / 'jobs.db'}", table_prefix=prefix)
    assert not (tmp_path / "jobs.db").exists()


def test_unknown_sqlite_option(tmp_path):
    with pytest.raises(ConfigurationError, match="unsupported SQLite option"):
        PeeweeJobStore(f"sqlite:///{tmp_path / 'jobs.db'}", host="x")


def test_missing_psycopg2_says_what_to_install(monkeypatch):
    monkeypatch.setattr(peewee_store, "psycopg2", None)
    monkeypatch.setitem(sys.modules, "psycopg", None)  # makes the import fail
    with pytest.raises(ConfigurationError, match=r"pip install pjcore\[postgres\]"):
        PeeweeJobStore("postgresql://u@127.0.0.1/db")


def test_unreachable_postgres_is_a_store_error_without_the_password():
    # port 1 on localhost refuses connections: no server is needed
    with pytest.raises(StoreError) as info:
        PeeweeJobStore(f"postgresql://postgres:{PASSWORD}@127.0.0.1:1/test", connect_timeout=2)
    assert PASSWORD not in str(info.value)
    assert "127.0.0.1" in str(info.value)
    assert info.value.__cause__ is not None


# -- schema and migrations -------------------------------------------------------


def _applied(store: PeeweeJobStore) -> list[tuple[str, int]]:
    S = store._Schema
    return list(S.select(S.name, S.applied_at).order_by(S.name).tuples())


def test_schema_version_is_recorded_and_not_reapplied(open_store, monkeypatch):
    calls = []
    counted = [Migration(m.name, lambda ctx, m=m: (calls.append(m.name), m.apply(ctx)))
               for m in MIGRATIONS]
    monkeypatch.setattr(peewee_store, "MIGRATIONS", counted)

    names = [m.name for m in MIGRATIONS]
    store = open_store()
    assert store.schema_version == len(MIGRATIONS) >= 2
    applied = _applied(store)
    assert [name for name, _ in applied] == names
    assert calls == names
    store.close()

    again = open_store()
    assert again.schema_version == len(MIGRATIONS)
    assert _applied(again) == applied
    assert calls == names  # not run again


def test_a_database_from_before_0003_gets_run_attempts(open_store):
    store = open_store()
    table = f"{store.table_prefix}runs"
    migrator = SchemaMigrator.from_database(store.database)
    migrate(migrator.drop_index(table, f"{table}_job_id_scheduled_for_attempt"),
            migrator.drop_column(table, "attempt"),
            migrator.add_index(table, ("job_id", "scheduled_for"), True))
    store._Schema.delete().where(store._Schema.name == "0003_run_attempt").execute()
    store.close()

    upgraded = open_store()
    indexes = {i.name: i for i in upgraded.database.get_indexes(table)}
    assert f"{table}_job_id_scheduled_for" not in indexes
    assert indexes[f"{table}_job_id_scheduled_for_attempt"].unique
    upgraded.sync_jobs("p", "acme", [decl("a")], now=T0)
    job = upgraded.get_job_by_key("p", "a")
    slot = T0 + timedelta(minutes=15)
    first = upgraded.create_run(job.id, trigger="schedule", now=T0, scheduled_for=slot)
    upgraded.complete_run(first.id, status="abandoned", now=T0)
    retry = upgraded.create_run(job.id, trigger="retry", now=T0, scheduled_for=slot, attempt=2)
    assert (first.attempt, retry.attempt) == (1, 2)
    with pytest.raises(SlotAlreadyClaimed):
        upgraded.create_run(job.id, trigger="retry", now=T0, scheduled_for=slot, attempt=2,
                            exclusive=False)


def test_a_database_from_before_0005_gets_the_plugin_key_index(open_store):
    store = open_store()
    table = f"{store.table_prefix}jobs"
    store.sync_jobs("p", "acme", [decl("a")], now=T0)
    migrate(SchemaMigrator.from_database(store.database).drop_index(
        table, f"{table}_plugin_key_plugin_id"))
    store._Schema.delete().where(store._Schema.name == "0005_plugin_key_index").execute()
    store.close()

    upgraded = open_store()
    indexes = {i.name: i.columns for i in upgraded.database.get_indexes(table)}
    assert indexes[f"{table}_plugin_key_plugin_id"] == ["plugin_key", "plugin_id"]
    assert upgraded.find_plugin("acme") == "p"


def test_a_database_from_before_0006_gets_the_live_runs_index(open_store):
    store = open_store()
    table = f"{store.table_prefix}runs"
    store.sync_jobs("p", "acme", [decl("a"), decl("b")], now=T0)
    a, b = store.get_job_by_key("p", "a"), store.get_job_by_key("p", "b")
    done = store.create_run(a.id, trigger="manual", now=T0)
    store.complete_run(done.id, status="succeeded", now=T0)
    live = store.create_run(b.id, trigger="manual", now=T0)
    # the schema of 0005: every run in a (job_id, status) index
    store.database.execute_sql(f'DROP INDEX "{table}_live"')
    migrate(SchemaMigrator.from_database(store.database).add_index(
        table, ("job_id", "status"), False))
    store._Schema.delete().where(store._Schema.name == "0006_live_runs_index").execute()
    store.close()

    upgraded = open_store()
    indexes = {i.name: i for i in upgraded.database.get_indexes(table)}
    assert f"{table}_job_id_status" not in indexes
    assert indexes[f"{table}_live"].columns == ["job_id"]
    # partial: the runs in flight, named as the queries name them (SQLite
    # compares the text; PostgreSQL shows its own form of the same list)
    condition = indexes[f"{table}_live"].sql.partition("WHERE")[2]
    if open_store.engine == "sqlite":
        assert peewee_store._LIVE_SQL.sql in condition, condition
    else:
        assert "'queued'" in condition and "'running'" in condition and "status" in condition
    # the runs in flight before the migration are found through it
    assert upgraded.claim_slot(b.id, expected=b.next_run_at, run_slot=b.next_run_at,
                               next_run_at=b.next_run_at + timedelta(minutes=15),
                               now=T0).applied is False
    assert upgraded.claim_slot(a.id, expected=a.next_run_at, run_slot=a.next_run_at,
                               next_run_at=a.next_run_at + timedelta(minutes=15),
                               now=T0).applied is True
    assert [r.id for r in upgraded.abandon_runs(now=T0, owner=None)] == []
    assert upgraded.cancel_runs("p", reason="gone", now=T0, job_id=b.id) == [live.id]


def test_the_live_statuses_written_into_the_sql_are_the_non_terminal_ones():
    from pjcore.models import NON_TERMINAL

    expected = "(" + ", ".join(f"'{s.value}'" for s in sorted(NON_TERMINAL)) + ")"
    assert peewee_store._LIVE_SQL.sql == expected


def _runs_statements(caplog, store) -> list[str]:
    """The statements peewee logged that read or write the runs table."""
    runs = f'"{store.table_prefix}runs"'
    found = [r.msg[0] for r in caplog.records if isinstance(r.msg, tuple)]
    caplog.clear()
    return [sql for sql in dict.fromkeys(found) if runs in sql and "EXPLAIN" not in sql]


def test_runs_in_flight_are_found_without_reading_the_run_history(tmp_path, caplog):
    """Every statement that looks for runs in flight names the live statuses
    in its text, and those of the scheduler's rounds and of listing runs in
    flight (a claim's check, a trigger's exclusivity, the lease renewals and
    sweeps, ``list_runs(status="running")``) read the live runs' own index or
    go by run id: never the whole runs table nor a job's history, so their
    cost does not grow with the runs recorded. (Cancelling a plugin's runs
    reads the plugin's runs by its index: rare, and left to the planner.)"""
    import logging

    store = PeeweeJobStore(f"sqlite:///{tmp_path / 'jobs.db'}")
    store.sync_jobs("p", "acme", [decl("a"), decl("b"), decl("c")], now=T0)
    a, b, c = (store.get_job_by_key("p", k) for k in "abc")
    R = store._Run
    with store.database.atomic():  # a history: 600 finished runs of each job
        for job in (a, b, c):
            R.insert_many([{R.id: str(uuid.uuid4()), R.job: job.id, R.plugin_id: "p",
                            R.job_key: job.job_key, R.trigger: "manual", R.status: "succeeded",
                            R.created_at: k, R.attempt: 1} for k in range(600)]).execute()
    lease = T0 + timedelta(minutes=1)
    caplog.set_level(logging.DEBUG, logger="peewee")
    with caplog.at_level(logging.DEBUG, logger="peewee"):
        store.claim_slot(a.id, expected=a.next_run_at, run_slot=a.next_run_at,
                         next_run_at=a.next_run_at + timedelta(minutes=15), now=T0,
                         owner="s1", lease_until=lease)
        (claim,) = store.claim_slots([slot_claim(b, owner="s1", lease_until=lease)], start=1)
        store.complete_and_claim([{"run_id": claim.run.id, "status": "succeeded", "now": T0}],
                                 [slot_claim(c, owner="s1", lease_until=lease)], start=0)
        with pytest.raises(JobAlreadyRunning):  # the claim's run is in flight
            store.create_run(a.id, trigger="manual", now=T0)
        manual = store.create_run(a.id, trigger="manual", now=T0, owner="s1",
                                  lease_until=lease, exclusive=False)
        store.renew_leases("s1", [manual.id], lease_until=lease, now=T0)
        store.abandon_runs(now=T0)
        store.abandon_runs(now=T0, owner="s2")
        assert {r.job_id for r in store.list_runs(status="queued").runs} == {a.id, c.id}
        assert store.list_runs(status="running").runs == ()
        store.list_runs(job_id=a.id, status="queued")
        store.list_runs(plugin_id="p", status="running")
        hot = _runs_statements(caplog, store)
        store.complete_runs([{"run_id": manual.id, "status": "failed", "now": T0}])
        store.cancel_runs("p", reason="gone", now=T0, job_id=a.id)
        rare = _runs_statements(caplog, store)
    literal = f"IN {peewee_store._LIVE_SQL.sql}"
    for sql in hot + rare:
        # a status list other than the literal one (a bound list hides the
        # values from the planner)
        assert not re.search(r'"status" IN \((?!' + re.escape(literal[4:-1]) + r"\))", sql), sql
    live = [sql for sql in hot if literal in sql]
    assert len(live) >= 10, live
    runs = f'"{store.table_prefix}runs"'
    for analyzed in (False, True):  # the store runs no ANALYZE; a user may
        if analyzed:
            store.database.execute_sql("ANALYZE")
        for sql in live:
            aliases = set(re.findall(rf'{runs} AS "(\w+)"', sql)) or {runs.strip('"')}
            plan = [row[-1] for row in store.database.execute_sql(
                "EXPLAIN QUERY PLAN " + sql, [None] * sql.count("?")).fetchall()]
            p = store.table_prefix
            allowed = (f"USING INDEX {p}runs_live",  # the runs in flight
                       f"USING INDEX sqlite_autoindex_{p}runs_1 (id=?)",  # a run by id
                       # the runs of one slot of one job
                       f"USING INDEX {p}runs_job_id_scheduled_for_attempt "
                       f"(job_id=? AND scheduled_for=?")
            for line in plan:
                words = line.split(" ")
                if words[0] in ("SCAN", "SEARCH") and words[1] in aliases:
                    # every read of the runs table: one of those, never the
                    # table, a job's or a plugin's history, or the newest runs
                    assert any(way in line for way in allowed), (analyzed, line, sql, plan)
            if '"id" = ?' not in sql and not re.search(r'"id" IN \(\?', sql):
                # not found by run id: found through the live runs' own index
                assert any(f"{store.table_prefix}runs_live" in line for line in plan), \
                    (analyzed, sql, plan)
    store.close()


def test_find_plugin_by_key_reads_an_index_not_every_job(tmp_path):
    store = PeeweeJobStore(f"sqlite:///{tmp_path / 'jobs.db'}")
    store.sync_jobs("p", "acme", [decl("a")], now=T0)
    table = f"{store.table_prefix}jobs"
    plan = store.database.execute_sql(
        f'EXPLAIN QUERY PLAN SELECT DISTINCT plugin_id FROM "{table}" WHERE plugin_key = ?',
        ("acme",)).fetchall()
    assert any(f"{table}_plugin_key_plugin_id" in row[-1] for row in plan), plan
    store.close()


def test_a_database_from_before_0002_gets_missed_count(open_store):
    store = open_store()
    table = f"{store.table_prefix}jobs"
    migrate(SchemaMigrator.from_database(store.database).drop_column(table, "missed_count"))
    store._Schema.delete().where(store._Schema.name == "0002_missed_count").execute()
    store.close()

    upgraded = open_store()
    assert "missed_count" in {c.name for c in upgraded.database.get_columns(table)}
    upgraded.sync_jobs("p", "acme", [decl("a")], now=T0)
    assert upgraded.get_job_by_key("p", "a").missed_count == 0


def test_an_appended_migration_is_applied_on_reopen(open_store, monkeypatch):
    store = open_store()
    store.sync_jobs("p", "acme", [decl("a")], now=T0)
    store.close()

    def add_note(ctx):
        migrate(ctx.migrator.add_column(ctx.table("runs"), "note", pw.TextField(null=True)))

    monkeypatch.setattr(peewee_store, "MIGRATIONS", [*MIGRATIONS, Migration("9000_note", add_note)])
    upgraded = open_store()
    assert upgraded.schema_version == len(MIGRATIONS) + 1
    assert [name for name, _ in _applied(upgraded)] == [m.name for m in MIGRATIONS] + ["9000_note"]
    columns = {c.name for c in upgraded.database.get_columns(f"{upgraded.table_prefix}runs")}
    assert "note" in columns
    # data survived, and the store works on the altered table
    job = upgraded.get_job_by_key("p", "a")
    run = upgraded.create_run(job.id, trigger="manual", now=T0)
    assert upgraded.get_run(run.id) == run
    upgraded.close()

    # back to the code that does not know 0002: refused
    monkeypatch.setattr(peewee_store, "MIGRATIONS", list(MIGRATIONS))
    with pytest.raises(StoreError, match="schema is newer than this pjcore") as info:
        open_store()
    assert "9000_note" in str(info.value)


def test_a_failing_migration_is_rolled_back(open_store, monkeypatch):
    open_store().close()

    def broken(ctx):
        migrate(ctx.migrator.add_column(ctx.table("jobs"), "half", pw.TextField(null=True)))
        raise RuntimeError("boom")

    monkeypatch.setattr(peewee_store, "MIGRATIONS", [*MIGRATIONS, Migration("9000_broken", broken)])
    with pytest.raises(RuntimeError, match="boom"):
        open_store()
    monkeypatch.setattr(peewee_store, "MIGRATIONS", list(MIGRATIONS))
    store = open_store()
    assert store.schema_version == len(MIGRATIONS)
    assert "half" not in {c.name for c in store.database.get_columns(f"{store.table_prefix}jobs")}


def test_unknown_migration_recorded_in_the_database_is_refused(open_store):
    store = open_store()
    store._Schema.insert(name="9999_from_the_future", applied_at=0).execute()
    store.close()
    with pytest.raises(StoreError, match="schema is newer than this pjcore.*9999_from_the_future"):
        open_store()


def test_drop_tables(open_store):
    store = open_store()
    prefix = store.table_prefix
    store.drop_tables()
    assert not [t for t in store.database.get_tables() if t.startswith(prefix)]


# -- PostgreSQL specifics --------------------------------------------------------


@pytest.mark.postgres
def test_postgres_repr_and_errors_never_show_the_password(postgres_url):
    url = with_password(postgres_url)
    # trust authentication ignores the password, so the store connects
    store = PeeweeJobStore(url, table_prefix=unique_prefix())
    try:
        text = repr(store)
        assert PASSWORD not in text
        assert text.startswith("PeeweeJobStore(engine='postgresql', database='")
        assert store.database.database in text and store.table_prefix in text
        store.database.drop_tables([store._Run])
        with pytest.raises(StoreError) as info:
            store.list_runs()
        assert PASSWORD not in str(info.value)
    finally:
        store.database.drop_tables([store._Run, store._Job, store._Schema], safe=True)
        store.close()


@pytest.mark.postgres
def test_postgres_orders_keys_bytewise_whatever_the_locale(postgres_url):
    store = PeeweeJobStore(postgres_url, table_prefix=unique_prefix())
    try:
        keys = ["b", "B", "a", "A", "a_x", "a-y", "a.z", "9"]
        store.sync_jobs("p", "acme", [decl(k) for k in keys], now=T0)
        assert [j.job_key for j in store.list_jobs()] == sorted(keys)
        # the test database may well be C-collated anyway: check the columns too
        rows = store.database.execute_sql(
            "SELECT table_name, column_name, collation_name FROM information_schema.columns "
            "WHERE table_name IN (%s, %s) AND collation_name IS NOT NULL",
            (f"{store.table_prefix}jobs", f"{store.table_prefix}runs"),
        ).fetchall()
        prefix = store.table_prefix
        assert sorted((t[len(prefix):], c, coll) for t, c, coll in rows) == [
            ("jobs", "id", "C"), ("jobs", "job_key", "C"), ("jobs", "plugin_key", "C"),
            ("runs", "id", "C"),
        ]
    finally:
        store.drop_tables()
        store.close()


# -- several processes -----------------------------------------------------------

_CHILD = r"""
import json, sys
from datetime import datetime, timezone
from pjcore.contrib.peewee_store import PeeweeJobStore
from pjcore.exceptions import JobAlreadyRunning

url, prefix, *job_ids = sys.argv[1:]
store = PeeweeJobStore(url, table_prefix=prefix)
store.get_job(job_ids[0])  # connected before the start signal
print("ready", flush=True)
sys.stdin.readline()
won, refused = [], 0
for job_id in job_ids:
    try:
        store.create_run(job_id, trigger="manual", now=datetime.now(timezone.utc))
        won.append(job_id)
    except JobAlreadyRunning:
        refused += 1
store.close()
print(json.dumps({"won": won, "refused": refused}), flush=True)
"""


def test_exclusive_create_run_from_two_processes_lets_one_through(open_store):
    store = open_store()
    store.sync_jobs("p", "acme", [decl(f"job{i}") for i in range(40)], now=T0)
    job_ids = [j.id for j in store.list_jobs("p")]
    children = [
        subprocess.Popen(
            [sys.executable, "-c", _CHILD, open_store.url, store.table_prefix, *job_ids],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for _ in range(2)
    ]
    try:
        for child in children:
            assert child.stdout.readline().strip() == "ready", child.stderr.read()
        for child in children:  # release both at once
            child.stdin.write("go\n")
            child.stdin.flush()
        results = []
        for child in children:
            out, err = child.communicate(timeout=120)
            assert child.returncode == 0, err
            results.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
    won = [set(r["won"]) for r in results]
    assert won[0].isdisjoint(won[1])
    assert won[0] | won[1] == set(job_ids)
    assert sum(r["refused"] for r in results) == len(job_ids)
    for job_id in job_ids:
        assert len(store.list_runs(job_id=job_id).runs) == 1


_OPEN_AT = """
import sys, time
from pjcore.contrib.peewee_store import PeeweeJobStore
start = float(sys.argv[2])
while time.time() < start:
    pass
PeeweeJobStore(f"sqlite:///{sys.argv[1]}").close()
"""


def test_two_processes_creating_one_sqlite_file_at_once_both_succeed(tmp_path):
    # Turning a new file to WAL reports "database is locked" at once instead
    # of waiting; the store retries it for as long as its busy timeout.
    for attempt in range(5):
        path = tmp_path / f"fresh-{attempt}.db"
        start = str(time.time() + 0.7)
        procs = [subprocess.Popen([sys.executable, "-c", _OPEN_AT, str(path), start],
                                  stderr=subprocess.PIPE, text=True) for _ in range(2)]
        for proc in procs:
            _, err = proc.communicate(timeout=60)
            assert proc.returncode == 0, err


# -- due jobs across many plugins --------------------------------------------------


def test_due_jobs_of_more_plugins_than_one_statement_takes_merge_in_due_order(
        open_store, monkeypatch):
    store = open_store()
    for n in range(5):  # plugin p0's jobs are due latest, p4's first
        store.sync_jobs(f"p{n}", f"key{n}", [decl("a", f"{55 - 5 * n} * * * *"),
                                              decl("b", f"{55 - 5 * n} * * * *")], now=T0)
    # two plugin ids per statement: three statements, merged
    monkeypatch.setattr(peewee_store, "_PLUGIN_CHUNK", 2)
    plugins = [f"p{n}" for n in range(5)]
    due = store.due_jobs(T0 + timedelta(hours=1), limit=5, plugin_ids=plugins)
    assert [(j.plugin_id, j.next_run_at.minute) for j in due] == [
        ("p4", 35), ("p4", 35), ("p3", 40), ("p3", 40), ("p2", 45)]
    assert [j.id for j in due[:2]] == sorted(j.id for j in due[:2])  # ties by id
    assert store.due_jobs(T0 + timedelta(hours=1), limit=5, plugin_ids=plugins[:1])[0] \
        .plugin_id == "p0"
    assert store.next_due_at(plugin_ids=plugins) == T0.replace(minute=35)
    assert store.next_due_at(plugin_ids=["p0", "p1"]) == T0.replace(minute=50)


@pytest.mark.parametrize("returning", [True, False], ids=["returning", "sqlite-before-3.35"])
def test_mark_runs_running_in_one_statement_or_row_by_row(tmp_path, monkeypatch, returning):
    monkeypatch.setattr(peewee_store, "_RETURNING", returning)
    store = PeeweeJobStore(f"sqlite:///{tmp_path / 'jobs.db'}")
    try:
        store.sync_jobs("p", "acme", [decl("a"), decl("b"), decl("c")], now=T0)
        jobs = {j.job_key: j for j in store.list_jobs("p")}
        runs = {k: store.create_run(jobs[k].id, trigger="manual", now=T0) for k in "abc"}
        assert store.complete_run(runs["c"].id, status="cancelled", now=T0)
        a, b, c = (runs[k].id for k in "abc")
        later = T0 + timedelta(seconds=1)
        # a repeated id applies once; a terminal run and an unknown id never
        assert store.mark_runs_running([a, b, a, c, "nope"], now=later, owner="w",
                                       lease_until=T0 + timedelta(minutes=1)) == [
            True, True, False, False, False]
        for run_id in (a, b):
            run = store.get_run(run_id)
            assert (run.status.value, run.started_at, run.owner) == ("running", later, "w")
        assert store.get_run(c).status.value == "cancelled"
        assert store.get_run(c).started_at is None
    finally:
        store.close()


def test_a_claim_batch_looks_before_locking_only_while_others_write(two_connections):
    # The look (one read before BEGIN IMMEDIATE) spares the write lock for
    # claims bound to be refused; they can only be refused because another
    # connection wrote. Every claim is checked in the transaction either way.
    store, other = two_connections
    store.sync_jobs("p", "acme", [decl(k, "* * * * *") for k in "abcd"], now=T0)
    statements: list[str] = []
    store._db.connection().set_trace_callback(statements.append)

    def claim(key: str, job=None, **kw) -> bool:
        job = job or store.get_job_by_key("p", key)
        statements.clear()
        (result,) = store.claim_slots([slot_claim(
            job, owner="me", lease_until=job.next_run_at + timedelta(minutes=1), **kw)])
        return result.applied

    def looked() -> bool:
        return any("EXISTS" in sql for sql in statements)

    assert claim("a") and looked()  # the first batch of this connection
    assert claim("b") and not looked()  # nobody else wrote since
    other.sync_jobs("q", "other", [decl("x")], now=T0)
    assert claim("c") and looked()
    assert claim("d") and not looked()
    # a claim that cannot apply is refused all the same, look or not
    assert not claim("a", expected=T0 - timedelta(days=1)) and not looked()
    before = store.get_job_by_key("p", "b")
    other.pause_job(before.id, reason="x", now=T0)
    assert not claim("b", job=before) and looked()


def test_a_round_s_ends_and_claims_commit_once(tmp_path):
    store = PeeweeJobStore(f"sqlite:///{tmp_path / 'jobs.db'}")
    try:
        store.sync_jobs("p", "acme", [decl(k, "* * * * *") for k in "abc"], now=T0)
        a, b, c = (store.get_job_by_key("p", k) for k in "abc")
        slot = a.next_run_at
        runs = [store.create_run(j.id, trigger="manual", now=T0) for j in (a, b)]
        statements: list[str] = []
        store._db.connection().set_trace_callback(statements.append)
        ends = [{"run_id": r.id, "status": "succeeded", "now": slot} for r in runs]
        applied, claims = store.complete_and_claim(ends, [slot_claim(c)], start=1)
        assert applied == [True, True] and claims[0].applied
        assert [s for s in statements if s.startswith(("BEGIN", "COMMIT"))] == [
            "BEGIN IMMEDIATE", "COMMIT"]
        # an end that no longer applies: rolled back, then each part on its own
        run = store.create_run(a.id, trigger="manual", now=T0)
        store.complete_run(run.id, status="cancelled", now=T0)
        statements.clear()
        applied, claims = store.complete_and_claim(
            [{"run_id": run.id, "status": "succeeded", "now": slot}], [slot_claim(b)])
        assert applied == [False] and claims[0].applied
        assert "ROLLBACK" in statements
        assert store.get_run(run.id).status.value == "cancelled"
    finally:
        store.close()


def test_a_job_s_end_frees_it_for_its_claim_also_while_others_write(two_connections):
    # the look before locking (while others write) must not refuse a claim
    # whose job's run ends in the same call
    store, other = two_connections
    store.sync_jobs("p", "acme", [decl("a", "* * * * *")], now=T0)
    job = store.get_job_by_key("p", "a")
    for n in range(2):
        other.sync_jobs("q", "other", [decl(f"x{n}")], now=T0)  # another connection wrote
        job = store.get_job(job.id)
        slot = job.next_run_at
        run = store.create_run(job.id, trigger="manual", now=T0)
        applied, claims = store.complete_and_claim(
            [{"run_id": run.id, "status": "succeeded", "now": slot}], [slot_claim(job)])
        assert applied == [True] and claims[0].applied
        store.complete_run(claims[0].run.id, status="succeeded", now=slot)


# -- WAL checkpoints (SQLite) ------------------------------------------------------------


def paused_in_database_file(path: Path) -> int:
    """Paused jobs in the database file itself, the WAL left aside: what
    checkpoints have copied there."""
    conn = sqlite3.connect(f"file:{path}?immutable=1", uri=True)
    try:
        return conn.execute("SELECT count(*) FROM pj_jobs WHERE status = 'paused'").fetchone()[0]
    except sqlite3.OperationalError:  # not even the table there yet
        return 0
    finally:
        conn.close()


def test_the_wal_is_checkpointed_by_a_thread_of_the_store_not_by_committers(tmp_path):
    from pjcore.contrib import wal_checkpointer

    path = tmp_path / "jobs.db"
    store = PeeweeJobStore(f"sqlite:///{path}")
    try:
        # the store's connections checkpoint only past the safety limit
        assert store._db.execute_sql("PRAGMA wal_autocheckpoint").fetchone()[0] == \
            wal_checkpointer.SAFETY_PAGES
        store.sync_jobs("p", "acme", [decl(f"j{i}") for i in range(200)], now=T0)
        checkpointer = store._checkpointer
        checkpointer.idle = 0.05  # the migrations and the sync: fewer than EVERY commits
        checkpointer._due.set()
        pjtest.wait_for(lambda: checkpointer.checkpoints >= 1 and not checkpointer._commits, 5,
                        "the first checkpoint (migrations, sync)")
        checkpointer.idle = wal_checkpointer.IDLE
        time.sleep(0.1)  # its short wait is over: from now on only a count wakes it early
        jobs = store.list_jobs("p")
        for job in jobs[:wal_checkpointer.EVERY]:  # a commit each
            store.pause_job(job.id, now=T0)
        # EVERY commits: one more checkpoint, at once (long before IDLE)
        pjtest.wait_for(lambda: checkpointer.checkpoints >= 2, 2, "a checkpoint by count")
        checkpointer.idle = 0.2
        # its wait began with the long idle time: woken, it waits the short one
        # (else the pauses below wait for IDLE, as long as this test waits)
        checkpointer._due.set()
        for job in jobs[wal_checkpointer.EVERY:][:10]:  # fewer: after the idle time
            store.pause_job(job.id, now=T0)
        # far below the limit, yet copied into the database file: by the thread
        pjtest.wait_for(lambda: paused_in_database_file(path) == wal_checkpointer.EVERY + 10, 5,
                        "every pause checkpointed")
        threads = [t for t in threading.enumerate() if t.name == "pjcore-wal-checkpoint"]
        assert threads and all(t.daemon for t in threads)
    finally:
        store.close()
    assert not any(t.name == "pjcore-wal-checkpoint" and t.is_alive()
                   for t in threading.enumerate())  # close() ended it


@pytest.mark.parametrize("pragmas", [{"wal_autocheckpoint": 500}, {"journal_mode": "delete"}])
def test_a_user_s_checkpoint_or_journal_settings_leave_checkpoints_to_sqlite(tmp_path, pragmas):
    store = PeeweeJobStore(f"sqlite:///{tmp_path}/jobs.db", pragmas=pragmas)
    try:
        store.sync_jobs("p", "acme", [decl("a")], now=T0)
        assert store._checkpointer is None
        if "wal_autocheckpoint" in pragmas:
            assert store._db.execute_sql("PRAGMA wal_autocheckpoint").fetchone()[0] == 500
    finally:
        store.close()


def test_a_database_of_the_caller_keeps_its_own_checkpoint_settings(tmp_path):
    db = pw.SqliteDatabase(str(tmp_path / "own.db"), pragmas={"journal_mode": "wal"})
    store = PeeweeJobStore(db)
    try:
        store.sync_jobs("p", "acme", [decl("a")], now=T0)
        assert store._checkpointer is None
        assert store._db.execute_sql("PRAGMA wal_autocheckpoint").fetchone()[0] == 1000
    finally:
        store.close()


def test_a_batch_s_instants_are_converted_once_but_local_folds_apart():
    from zoneinfo import ZoneInfo

    from pjcore.contrib.peewee_store import _Micros, _us

    berlin = ZoneInfo("Europe/Berlin")
    first = datetime(2026, 10, 25, 2, 30, tzinfo=berlin)  # the hour that repeats
    second = first.replace(fold=1)
    micros = _Micros()
    assert micros[first] == _us(first) and micros[second] == _us(second)
    assert micros[second] - micros[first] == 3600 * 1_000_000
    assert micros[T0] == _us(T0) and T0 in micros and micros[None] is None


def test_a_forked_child_checkpoints_with_a_thread_of_its_own(tmp_path):
    import os

    path = tmp_path / "jobs.db"
    store = PeeweeJobStore(f"sqlite:///{path}")
    try:
        store.sync_jobs("p", "acme", [decl(f"j{i}") for i in range(80)], now=T0)
        checkpointer = store._checkpointer
        assert checkpointer._thread.is_alive()
        # the parent's thread: caught up, then quiet (it must not be the one
        # that checkpoints the child's commit)
        checkpointer.idle = 0.05
        checkpointer._due.set()  # out of its current wait now
        pjtest.wait_for(lambda: paused_in_database_file(path) == 0 and not checkpointer._commits
                        and checkpointer.checkpoints, 5, "the parent caught up")
        checkpointer.idle = 3600
        time.sleep(0.2)  # its wait with the short idle is over
        pid = os.fork()
        if pid == 0:  # the child: the parent's thread did not come along
            code = 1
            try:
                conn = sqlite3.connect(path)  # a connection of the child's own
                conn.execute("UPDATE pj_jobs SET status = 'paused' WHERE job_key = 'j0'")
                conn.commit()
                checkpointer.idle = 0.1
                checkpointer.committed()  # as the store's own commits report
                deadline = time.monotonic() + 5
                while paused_in_database_file(path) < 1 and time.monotonic() < deadline:
                    time.sleep(0.02)
                code = 0 if paused_in_database_file(path) == 1 else 2
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0  # 2: never checkpointed
    finally:
        store.close()
