"""What a long run history costs the scheduler's rounds.

    python tests/benchmarks/run_history.py                       # 0, 1,000 and 10,000 runs per job
    python tests/benchmarks/run_history.py --history 0 100000 --jobs 10
    python tests/benchmarks/run_history.py --database postgresql://postgres@127.0.0.1:5432/test

Runs pile up: a job due every minute records 43,200 runs in a month unless
they are pruned. A scheduler keeps looking for the runs in flight: every
claim checks that the job has none (and none of the slot), and every lease
sweep looks for runs whose lease ran out. Those statements should read the
runs in flight, not the history.

For each history size, a new store gets ``--jobs`` jobs with that many
finished runs each (written by one ``executemany``: the store's own calls
would take minutes for a million runs), then times, as the medians of
``--repeat`` calls:

* a **claim round**: ``claim_slots`` for every job's slot (each run
  recorded running by its claim), then ``complete_runs`` for those runs, as
  the scheduler's rounds do;
* a **lease sweep**: ``abandon_runs`` (runs whose lease ran out: none);
* a **job's failed runs**: ``list_runs(job_id=..., status="failed")`` (none):
  a listing by a terminal status reads the job's runs (the runs in flight
  have an index of their own; runs by terminal status do not), so this one
  does grow with the job's history.

The first two should not grow with the history.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Callable

from pjcore.contrib.peewee_store import PeeweeJobStore
from pjcore.manifest import JobDeclaration
from pjcore.store_base import new_id, to_micros

T0 = datetime(2026, 1, 15, 10, 30, tzinfo=timezone.utc)
MINUTE_US = 60_000_000


def _store(database: str | None, folder: str) -> PeeweeJobStore:
    url = database or f"sqlite:///{Path(folder) / 'history.db'}"
    return PeeweeJobStore(url, table_prefix=f"pjh_{uuid.uuid4().hex[:8]}_")


def _history(store: PeeweeJobStore, jobs: list, per_job: int) -> None:
    """*per_job* finished runs of each job, one a minute before T0."""
    R = store._Run
    start = to_micros(T0)
    rows = []
    for job in jobs:
        for k in range(per_job):
            at = start - (k + 1) * MINUTE_US
            rows.append({R.id: new_id(), R.job: job.id, R.plugin_id: job.plugin_id,
                         R.job_key: job.job_key, R.trigger: "schedule", R.status: "succeeded",
                         R.scheduled_for: at, R.created_at: at, R.started_at: at,
                         R.finished_at: at, R.duration_ms: 0, R.owner: "history",
                         R.lease_until: at, R.attempt: 1})
    with store.database.atomic():
        for i in range(0, len(rows), 500):
            R.insert_many(rows[i:i + 500]).execute()
    store.database.execute_sql("ANALYZE")


def _median_ms(call: Callable[[], None], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def measure(database: str | None, jobs: int, per_job: int,
            repeat: int) -> tuple[float, float, float]:
    """(claim round, lease sweep, a job's failed runs), in ms, for *jobs*
    jobs of *per_job* runs each."""
    with tempfile.TemporaryDirectory() as folder:
        store = _store(database, folder)
        try:
            store.sync_jobs("p", "history", [
                JobDeclaration(job_key=f"job{i}", display_name=f"Job {i}", schedule="* * * * *")
                for i in range(jobs)], now=T0)
            listed = store.list_jobs()
            _history(store, listed, per_job)
            pointers = {job.id: job.next_run_at for job in listed}

            def claim_round() -> None:
                claims = []
                for job_id, slot in pointers.items():
                    claims.append({"job_id": job_id, "expected": slot, "run_slot": slot,
                                   "next_run_at": slot + timedelta(minutes=1), "now": slot,
                                   "owner": "bench", "lease_until": slot + timedelta(minutes=1)})
                    pointers[job_id] = slot + timedelta(minutes=1)
                claimed = store.claim_slots(claims, start=len(claims))
                if not all(c.applied for c in claimed):
                    raise RuntimeError("a claim was refused")
                store.complete_runs([{"run_id": c.run.id, "status": "succeeded",
                                      "now": c.run.created_at} for c in claimed])

            claim_round()  # statements prepared
            claim = _median_ms(claim_round, repeat)
            sweep = _median_ms(lambda: store.abandon_runs(now=T0), repeat)
            some = listed[len(listed) // 2].id
            failed = _median_ms(lambda: store.list_runs(job_id=some, status="failed"), repeat)
        finally:
            store.drop_tables()
            store.close()
    return claim, sweep, failed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database", help="a PostgreSQL URL (default: a temporary SQLite file)")
    parser.add_argument("--jobs", type=int, default=10)
    parser.add_argument("--history", type=int, nargs="+", default=[0, 1000, 10_000],
                        help="finished runs per job, one size after another")
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args(argv)
    print(f"{args.jobs} jobs; medians of {args.repeat} calls")
    for per_job in args.history:
        claim, sweep, failed = measure(args.database, args.jobs, per_job, args.repeat)
        print(f"history {per_job:>7,} runs per job: claim round {claim:7.2f} ms, "
              f"lease sweep {sweep:7.2f} ms, a job's failed runs {failed:7.2f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
