"""``pjcore.bench`` end to end with tiny sizes: the report's shape and the
burst's correctness, checked against the store. No timing is asserted."""

from __future__ import annotations

import argparse
import json
import sqlite3
from collections import Counter
from datetime import datetime, timedelta, timezone

import pytest

from pjcore import bench
from pjcore.contrib.peewee_store import PeeweeJobStore

TINY = ["--jobs", "50", "--single-slots", "5", "--stored", "60", "--manifest-jobs", "20", "--idle-seconds", "0.2",
        "--queries", "5", "--repeat", "1", "--quiet"]

FIGURES = {
    "burst.throughput", "burst.lateness_median_ms", "burst.lateness_p99_ms",
    "burst.cpu_per_job_us", "burst.peak_rss_mib",
    "single.single_lateness_median_ms", "single.single_lateness_p99_ms",
    "idle.cpu_percent", "idle.ticks", "idle.tick_ms", "idle.rss_mib",
    "idle.rss_growth_mib",
    "sync.new_ms", "sync.unchanged_ms", "sync.changed_ms",
    "query.due_none_ms", "query.due_all_ms", "query.next_due_ms",
}


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    return parser.parse_args(list(argv))


def _all_runs(store, job_id):
    runs, cursor = [], None
    while True:
        page = store.list_runs(job_id=job_id, limit=100, cursor=cursor)
        runs += page.runs
        if page.next_cursor is None:
            return runs
        cursor = page.next_cursor


def _tables(path) -> set[str]:
    with sqlite3.connect(path) as con:
        return {name for (name,) in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}


def test_bench_reports_every_figure_and_runs_each_job_once(tmp_path, capsys):
    url = f"sqlite:///{tmp_path}/bench.db"
    out = tmp_path / "bench.json"
    assert bench.run(_args(*TINY, "--database", url, "--json", str(out), "--keep")) == 0

    report = json.loads(out.read_text())
    assert set(report["figures"]) == FIGURES
    figures = {name: fig["median"] for name, fig in report["figures"].items()}
    for name, fig in report["figures"].items():
        assert fig["min"] <= fig["median"] <= fig["max"], name
        assert len(fig["values"]) == 1, name
    assert figures["burst.throughput"] > 0
    assert 0 <= figures["burst.lateness_median_ms"] <= figures["burst.lateness_p99_ms"]
    assert figures["burst.peak_rss_mib"] > 0 and figures["idle.rss_mib"] > 0
    assert figures["idle.cpu_percent"] >= 0 and figures["idle.ticks"] >= 0
    for name in ("idle.tick_ms", "sync.new_ms", "sync.unchanged_ms", "sync.changed_ms", "query.due_none_ms",
                 "query.due_all_ms", "query.next_due_ms"):
        assert figures[name] > 0, name
    assert 0 <= figures["single.single_lateness_median_ms"] <= figures["single.single_lateness_p99_ms"]
    (single,) = report["repetitions"]["single"]
    assert single["slots"] == single["runs"] == 5
    assert report["checks"] == {"burst_ran_exactly_once": True, "burst_missed": 0}
    assert report["environment"]["engine"] == "sqlite"

    # the table names every figure
    printed = capsys.readouterr().out
    for fig in report["figures"].values():
        assert fig["label"] in printed
    assert "every job ran exactly once, for its slot: yes" in printed

    # Independently of the bench's own check: the kept burst tables hold one
    # succeeded run per job, all for the same slot, each started after it.
    (burst,) = report["repetitions"]["burst"]
    store = PeeweeJobStore(url, table_prefix=burst["table_prefix"])
    try:
        jobs = store.list_jobs()
        assert len(jobs) == 50
        runs = [run for job in jobs for run in _all_runs(store, job.id)]
        assert Counter(run.job_id for run in runs) == Counter({job.id: 1 for job in jobs})
        assert {run.status.value for run in runs} == {"succeeded"}
        (slot,) = {run.scheduled_for for run in runs}
        assert all(run.started_at >= slot for run in runs)
        assert all(job.next_run_at == slot + timedelta(days=1) for job in jobs)
    finally:
        store.close()


def test_bench_drops_its_tables(tmp_path):
    path = tmp_path / "shared.db"
    with sqlite3.connect(path) as con:
        con.execute("CREATE TABLE mine (x)")
    assert bench.run(_args(*TINY, "--only", "sync,query", "--database", f"sqlite:///{path}")) == 0
    assert _tables(path) == {"mine"}


@pytest.mark.postgres
def test_bench_on_postgres_drops_its_tables(postgres_url, tmp_path):
    import psycopg2

    out = tmp_path / "bench.json"
    assert bench.run(_args(*TINY, "--database", postgres_url, "--json", str(out))) == 0
    report = json.loads(out.read_text())
    assert report["environment"]["engine"] == "postgresql"
    assert report["checks"]["burst_ran_exactly_once"]
    prefixes = [r["table_prefix"] for reps in report["repetitions"].values() for r in reps]
    with psycopg2.connect(postgres_url) as con, con.cursor() as cur:
        for prefix in prefixes:
            cur.execute("SELECT count(*) FROM pg_tables WHERE tablename LIKE %s", (prefix + "%",))
            assert cur.fetchone()[0] == 0, prefix


def test_bench_rejects_bad_sizes():
    with pytest.raises(SystemExit):
        _args("--manifest-jobs", "1001")
    with pytest.raises(SystemExit):
        _args("--only", "burst,nonsense")
    assert _args("--only", "idle, sync").scenarios == ("idle", "sync")


def test_fast_forward_clock_is_real_and_only_moves_forward():
    clock = bench.FastForwardClock()
    before = datetime.now(timezone.utc)
    assert abs((clock.now() - before).total_seconds()) < 1
    target = before + timedelta(hours=1)
    clock.jump_to(target)
    assert timedelta(0) <= clock.now() - target < timedelta(seconds=1)
    clock.jump_to(before)  # already past: nothing moves, least of all back
    assert clock.now() - target >= timedelta(0)
