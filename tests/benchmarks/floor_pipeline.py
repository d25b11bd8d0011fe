"""The floor: pjcore's statements per burst, hand-written, with nothing else.

    python tests/benchmarks/floor_pipeline.py                  # 10,000 jobs, 10 workers
    python tests/benchmarks/floor_pipeline.py --inline         # no worker threads
    python tests/benchmarks/floor_pipeline.py --max-concurrent 50

What a burst costs when every run is recorded the way pjcore records it, but
no scheduler, store or runner code runs: raw ``sqlite3`` on a SQLite file in
WAL mode with ``synchronous=NORMAL``, pjcore's tables and indexes, ids that
grow in the order they are made (as pjcore's UUIDv7 do, but from a counter:
cheaper to make), a fixed next pointer instead of a cron computation, no
hooks, no leases renewed, no timeouts, no logging. Per round of
``--max-concurrent`` jobs, as pjcore's loop does:

1. the due jobs, four times as many as there is room for, in a hashed order
   (read again once a round's worth is no longer left);
2. one ``BEGIN IMMEDIATE`` transaction: the ends of the handlers that
   returned (a guarded ``UPDATE`` per run, one ``executemany``), the job
   rows and their runs in flight read back, the runs inserted ``running``
   in one multi-row ``INSERT`` (without their end columns), the pointers
   moved by compare-and-set in one ``executemany``;
3. each run handed to a ``ThreadPoolExecutor`` (``--inline``: called in the
   loop), its end queued for the next round.

Whatever pjcore spends beyond this is its own Python: objects, locks, hooks,
bookkeeping of guarantees. The figure is a ceiling for this design in
CPython on the machine at hand, not for the database.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import itertools
import tempfile
import threading
import time
import zlib
from collections import deque
from concurrent.futures import ThreadPoolExecutor

SCHEMA = """
CREATE TABLE jobs (id TEXT PRIMARY KEY, plugin_id TEXT, job_key TEXT, plugin_key TEXT,
    status TEXT, next_run_at INTEGER, last_run_at INTEGER, missed_count INTEGER,
    updated_at INTEGER, schedule TEXT);
CREATE UNIQUE INDEX jobs_plugin_key ON jobs (plugin_id, job_key);
CREATE INDEX jobs_due ON jobs (status, next_run_at, id);
CREATE INDEX jobs_by_key ON jobs (plugin_key, plugin_id);
CREATE TABLE runs (id TEXT PRIMARY KEY, job_id TEXT REFERENCES jobs (id) ON DELETE CASCADE,
    plugin_id TEXT, job_key TEXT, trigger TEXT, status TEXT, scheduled_for INTEGER,
    created_at INTEGER, started_at INTEGER, finished_at INTEGER, duration_ms INTEGER,
    error TEXT, error_detail TEXT, owner TEXT, lease_until INTEGER, attempt INTEGER);
CREATE UNIQUE INDEX runs_slot ON runs (job_id, scheduled_for, attempt);
CREATE INDEX runs_live ON runs (job_id) WHERE status IN ('queued', 'running');
CREATE INDEX runs_plugin_created ON runs (plugin_id, created_at, id);
CREATE INDEX runs_created ON runs (created_at, id);
"""
DAY_US = 86_400_000_000


def micros() -> int:
    return time.time_ns() // 1000


def ids():
    """Ids in the form of pjcore's, growing in the order they are made."""
    start = (time.time_ns() // 1_000_000) << 80
    for n in itertools.count(start):
        h = f"{n:032x}"
        yield f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def burst(jobs: int, cap: int, inline: bool) -> tuple[float, float]:
    """Run *jobs* due at once; (jobs per second, CPU microseconds per job)."""
    path = os.path.join(tempfile.mkdtemp(), "floor.db")
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    for pragma in ("journal_mode=WAL", "synchronous=NORMAL", "foreign_keys=ON"):
        db.execute(f"PRAGMA {pragma}")
    db.executescript(SCHEMA)
    slot, new_id = micros(), ids()
    db.execute("BEGIN")
    db.executemany("INSERT INTO jobs VALUES (?,?,?,?,?,?,?,?,?,?)",
                   [(next(new_id), "p1", f"job{i}", "plug", "active", slot, None, 0, slot,
                     "0 0 * * *") for i in range(jobs)])
    db.execute("COMMIT")

    ended: deque[str] = deque()
    wake = threading.Event()

    def work(run_id: str) -> None:
        ended.append(run_id)  # the handler: nothing
        wake.set()

    pool = ThreadPoolExecutor(cap)
    finished = in_flight = 0
    backlog: list = []
    start, cpu = time.perf_counter(), time.process_time()
    while finished < jobs:
        wake.clear()
        now = micros()
        ends = [ended.popleft() for _ in range(len(ended))]
        free = cap - in_flight + len(ends)
        if len(backlog) < free:
            backlog = db.execute("SELECT id, plugin_id, job_key, next_run_at FROM jobs WHERE "
                                 "status='active' AND next_run_at <= ? ORDER BY next_run_at, id "
                                 "LIMIT ?", (now, free * 4)).fetchall()
            backlog.sort(key=lambda r: (r[3], zlib.crc32(r[0].encode())))
        rows, backlog = backlog[:free], backlog[free:]
        runs = []
        if rows or ends:
            db.execute("BEGIN IMMEDIATE")
            if ends:
                db.executemany("UPDATE runs SET status='succeeded', finished_at=?, "
                               "duration_ms=0, error=NULL, error_detail=NULL "
                               "WHERE id=? AND status IN ('queued', 'running')",
                               [(now, run_id) for run_id in ends])
            if rows:
                marks = ",".join("?" * len(rows))
                job_ids = [r[0] for r in rows]
                db.execute(f"SELECT id, next_run_at, status FROM jobs WHERE id IN ({marks})",
                           job_ids).fetchall()
                db.execute(f"SELECT job_id, status FROM runs WHERE job_id IN ({marks}) "
                           "AND status IN ('queued', 'running')", job_ids).fetchall()
                runs = [(next(new_id), r[0], r[1], r[2], "schedule", "running", r[3], now, now,
                         "floor", now + 60_000_000, 1) for r in rows]
                db.execute("INSERT INTO runs (id, job_id, plugin_id, job_key, trigger, status, "
                           "scheduled_for, created_at, started_at, owner, lease_until, attempt) "
                           "VALUES " + ",".join(["(?" + ",?" * 11 + ")"] * len(runs)),
                           [v for run in runs for v in run])
                db.executemany("UPDATE jobs SET next_run_at=?, updated_at=?, last_run_at=? "
                               "WHERE id=? AND next_run_at=?",
                               [(r[3] + DAY_US, now, r[3], r[0], r[3]) for r in rows])
            db.execute("COMMIT")
        finished += len(ends)
        in_flight -= len(ends)
        for run in runs:
            in_flight += 1
            if inline:
                work(run[0])
            else:
                pool.submit(work, run[0])
        if finished < jobs and not ended:
            wake.wait(0.1)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    pool.shutdown()
    db.close()
    return jobs / wall, cpu / jobs * 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--max-concurrent", type=int, default=10)
    parser.add_argument("--inline", action="store_true", help="call handlers in the loop")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    for i in range(args.repeat):
        rate, cpu = burst(args.jobs, args.max_concurrent, args.inline)
        print(f"round {i + 1}: {rate:,.0f} jobs/s, {cpu:.0f} us CPU per job")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
