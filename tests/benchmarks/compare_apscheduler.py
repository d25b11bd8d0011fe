"""The same burst through pjcore and through APScheduler 3.11, side by side.

APScheduler is an optional benchmark dependency, never a runtime one::

    pip install 'apscheduler>=3.11,<4' sqlalchemy
    python tests/benchmarks/compare_apscheduler.py                # 10,000 jobs, 3 rounds
    python tests/benchmarks/compare_apscheduler.py --jobs 2000 --repeat 5 --json out.json

The burst: N jobs, each with a daily cron schedule, all due at the same
instant, a no-op function, 10 worker threads, one SQLite file in WAL mode with
``synchronous=NORMAL`` (pjcore's defaults; APScheduler's engine gets the same
pragmas). Rounds are interleaved (pjcore, APScheduler, pjcore, ...), each side
in a fresh Python process on a fresh database, and the ratio of throughputs is
reported per round.

How each side runs it:

* **pjcore**: ``pjcore.bench``'s burst scenario (real Host, store, scheduler
  and runner). Per job it claims the slot and records a run (queued ->
  running -> succeeded) and the next pointer.
* **APScheduler**: ``BackgroundScheduler`` with ``SQLAlchemyJobStore``, a
  ``ThreadPoolExecutor(10)``, ``CronTrigger`` jobs, ``misfire_grace_time=None``
  (``--aps-grace`` to try another value; its default of 1 s drops most of a
  burst), ``coalesce=True``, ``max_instances=1``. Each processing round loads
  *every* due job (unpickling each), submits them all to the pool, and writes
  each job's pickled state back with its next run time, one transaction per
  job. It records no runs.

Throughput is N divided by the time from the moment the jobs became due to
the moment the last execution completed (for APScheduler also the moment the
last job's new state was written, if later: both must have persisted
everything). That is "wall" in pjcore's bench; pjcore's bench table reports
first claim -> last run recorded instead, which is slightly shorter.

"Dropped" counts executions that never happened: APScheduler's
``EVENT_JOB_MISSED`` and ``EVENT_JOB_MAX_INSTANCES``; for pjcore, slots
counted as missed plus jobs without exactly one succeeded run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timedelta, timezone

from pjcore import bench

UTC = timezone.utc
WORKER = "_aps_worker"
#: real seconds after setup before the APScheduler burst becomes due
#: (see _aps_burst), plus a little per job for adding them
APS_LEAD = 1.0
APS_LEAD_PER_JOB = 0.0006


def noop() -> None:
    """The APScheduler jobs' function: no work, like pjcore's bench handler."""


# -- the APScheduler side (runs in its own process) -----------------------------------


def _aps_burst(config: dict) -> dict:
    from apscheduler import __version__ as aps_version
    from apscheduler.events import (
        EVENT_JOB_ERROR,
        EVENT_JOB_EXECUTED,
        EVENT_JOB_MAX_INSTANCES,
        EVENT_JOB_MISSED,
        EVENT_JOB_SUBMITTED,
    )
    from apscheduler.executors.pool import ThreadPoolExecutor
    from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
    from apscheduler.schedulers.background import BackgroundScheduler
    from apscheduler.triggers.cron import CronTrigger
    from sqlalchemy import create_engine, event

    n, path = config["jobs"], config["path"]
    # journal_mode is stored in the file; synchronous is per connection
    with sqlite3.connect(path) as con:
        con.execute("PRAGMA journal_mode=WAL")
    engine = create_engine(f"sqlite:///{path}")

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_connection, _record):
        dbapi_connection.execute("PRAGMA synchronous=NORMAL")

    counts = {"executed": 0, "error": 0, "missed": 0, "max_instances": 0, "submitted": 0}
    kinds = {EVENT_JOB_EXECUTED: "executed", EVENT_JOB_ERROR: "error",
             EVENT_JOB_MISSED: "missed", EVENT_JOB_MAX_INSTANCES: "max_instances",
             EVENT_JOB_SUBMITTED: "submitted"}
    lock, done = threading.Lock(), threading.Event()
    last = [0.0]

    def listener(ev) -> None:
        with lock:
            counts[kinds[ev.code]] += 1
            last[0] = time.perf_counter()
            ended = counts["executed"] + counts["error"] + counts["missed"] + counts["max_instances"]
            # every execution over, and the round that submitted them has
            # written every job's new state (its events come after the writes)
            if ended >= n and counts["submitted"] + counts["max_instances"] >= n:
                done.set()

    scheduler = BackgroundScheduler(
        jobstores={"default": SQLAlchemyJobStore(engine=engine)},
        executors={"default": ThreadPoolExecutor(config["workers"])},
        job_defaults={"misfire_grace_time": config["grace"], "coalesce": True,
                      "max_instances": 1},
        timezone=UTC,
    )
    scheduler.add_listener(listener, sum(kinds))
    # Paused: adding N jobs takes a while, and none may run before all are
    # stored. The slot is chosen ahead of the setup; if the setup overruns it,
    # the burst starts at resume() and the lateness shows in "late_start_s".
    scheduler.start(paused=True)
    slot = (datetime.now(UTC) + timedelta(seconds=APS_LEAD + n * APS_LEAD_PER_JOB)).replace(
        microsecond=0) + timedelta(seconds=1)
    trigger = CronTrigger(hour=slot.hour, minute=slot.minute, second=slot.second, timezone=UTC)
    for i in range(n):
        scheduler.add_job(noop, trigger, id=f"j{i:06d}", next_run_time=slot)
    rss_before = bench.rss_mib()
    # Resume a moment before the slot: APScheduler then sleeps until it
    # (get_next_run_time), as pjcore's scheduler does.
    wait = (slot - datetime.now(UTC)).total_seconds() - 0.3
    if wait > 0:
        time.sleep(wait)
    reset = bench.reset_peak_rss()
    cpu = time.process_time()
    scheduler.resume()
    due_at = max(slot.timestamp(), time.time())
    # the burst's origin on the perf_counter scale of the listener's stamps
    origin = time.perf_counter() + (due_at - time.time())
    finished = done.wait(config["timeout"])
    cpu = time.process_time() - cpu
    peak = bench.peak_rss_mib(reset)
    scheduler.shutdown(wait=True)
    engine.dispose()
    if not finished:
        raise RuntimeError(f"APScheduler: only {counts} of {n} jobs ended "
                           f"within {config['timeout']}s")
    with sqlite3.connect(path) as con:
        persisted = con.execute(
            "SELECT count(*) FROM apscheduler_jobs WHERE next_run_time = ?",
            ((slot + timedelta(days=1)).timestamp(),)).fetchone()[0]
    wall = last[0] - origin
    return {
        "version": aps_version,
        "jobs": n,
        **counts,
        "dropped": counts["missed"] + counts["max_instances"],
        "persisted_next_run": persisted,
        "late_start_s": round(max(0.0, due_at - slot.timestamp()), 3),
        "wall_s": round(wall, 4),
        "jobs_per_s": round(n / wall, 1),
        "cpu_s": round(cpu, 3),
        "rss_before_mib": rss_before,
        "peak_rss_mib": peak,
    }


def _worker_main() -> int:
    config = json.loads(sys.stdin.read())
    print(json.dumps(_aps_burst(config)))
    return 0


# -- the comparison -----------------------------------------------------------------


def _run_aps(config: dict) -> dict:
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), WORKER],
                          input=json.dumps(config), capture_output=True, text=True,
                          timeout=config["timeout"] + 600)
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
        raise RuntimeError(f"the APScheduler worker failed (exit {proc.returncode}):\n{tail}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _run_pjcore(settings: bench.Settings, path: str) -> dict:
    result = bench.run_isolated("burst", settings, bench.Target(f"sqlite:///{path}"))
    result["jobs_per_s"] = round(result["jobs"] / result["wall_s"], 1)
    result["dropped"] = result["missed"] + (0 if result["ran_exactly_once"]
                                            else result["jobs"] - result["statuses"].get(
                                                "succeeded", 0))
    return result


def _grace(value: str) -> float | None:
    if value.lower() == "none":
        return None
    seconds = float(value)
    if not seconds > 0:
        raise argparse.ArgumentTypeError("must be 'none' or a number of seconds > 0")
    return seconds


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == [WORKER]:
        return _worker_main()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=10_000, help="burst size (default: %(default)s)")
    parser.add_argument("--repeat", type=int, default=3, help="rounds (default: %(default)s)")
    parser.add_argument("--workers", type=int, default=10,
                        help="pjcore max_concurrent and APScheduler pool size (default: %(default)s)")
    parser.add_argument("--aps-grace", type=_grace, default=None, metavar="SECONDS|none",
                        help="APScheduler misfire_grace_time (default: none = no limit)")
    parser.add_argument("--timeout", type=float, default=600.0,
                        help="seconds a burst may take (default: %(default)g)")
    parser.add_argument("--json", metavar="PATH", help="write every round's figures as JSON")
    args = parser.parse_args(argv)
    try:
        import apscheduler  # noqa: F401
        import sqlalchemy  # noqa: F401
    except ImportError:
        print("needs APScheduler 3 and SQLAlchemy: pip install 'apscheduler>=3.11,<4' sqlalchemy",
              file=sys.stderr)
        return 2

    settings = bench.Settings(jobs=args.jobs, max_concurrent=args.workers, timeout=args.timeout)
    aps_config = {"jobs": args.jobs, "workers": args.workers, "grace": args.aps_grace,
                  "timeout": args.timeout}
    rounds = []
    workdir = tempfile.mkdtemp(prefix="pjcore-vs-aps-")
    try:
        for i in range(1, args.repeat + 1):
            print(f"round {i}/{args.repeat}: pjcore ...", file=sys.stderr, flush=True)
            pj = _run_pjcore(settings, os.path.join(workdir, f"pjcore-{i}.db"))
            print(f"round {i}/{args.repeat}: APScheduler ...", file=sys.stderr, flush=True)
            aps = _run_aps({**aps_config, "path": os.path.join(workdir, f"aps-{i}.db")})
            rounds.append({"pjcore": pj, "apscheduler": aps,
                           "ratio": round(pj["jobs_per_s"] / aps["jobs_per_s"], 3)})
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    grace = "none" if args.aps_grace is None else f"{args.aps_grace:g}s"
    print(f"burst of {args.jobs:,} no-op jobs on SQLite {sqlite3.sqlite_version} (WAL, "
          f"synchronous=NORMAL), {args.workers} workers; APScheduler "
          f"{rounds[0]['apscheduler']['version']} SQLAlchemyJobStore, misfire_grace_time={grace}; "
          f"Python {sys.version.split()[0]}, {os.cpu_count()} CPUs")
    header = ("round", "pjcore jobs/s", "APS jobs/s", "ratio", "pjcore dropped", "APS dropped",
              "pjcore peak MiB", "APS peak MiB")
    rows = [(str(i), f"{r['pjcore']['jobs_per_s']:,.0f}", f"{r['apscheduler']['jobs_per_s']:,.0f}",
             f"{r['ratio']:.2f}", str(r["pjcore"]["dropped"]), str(r["apscheduler"]["dropped"]),
             f"{r['pjcore']['peak_rss_mib']:.1f}", f"{r['apscheduler']['peak_rss_mib']:.1f}")
            for i, r in enumerate(rounds, 1)]

    def med(side: str, key: str) -> float:
        return statistics.median(r[side][key] for r in rounds)

    rows.append(("median", f"{med('pjcore', 'jobs_per_s'):,.0f}",
                 f"{med('apscheduler', 'jobs_per_s'):,.0f}",
                 f"{statistics.median(r['ratio'] for r in rounds):.2f}", "", "",
                 f"{med('pjcore', 'peak_rss_mib'):.1f}", f"{med('apscheduler', 'peak_rss_mib'):.1f}"))
    widths = [max(len(h), *(len(row[c]) for row in rows)) for c, h in enumerate(header)]
    for row in (header, *rows):
        print("  ".join(cell.rjust(w) for cell, w in zip(row, widths)))
    late = [r["apscheduler"]["late_start_s"] for r in rounds if r["apscheduler"]["late_start_s"]]
    if late:
        print(f"note: APScheduler's setup overran its slot by up to {max(late)}s "
              "(its jobs were late before the burst began)")
    if args.json:
        with open(args.json, "w") as out:
            json.dump({"jobs": args.jobs, "workers": args.workers, "aps_grace": args.aps_grace,
                       "rounds": rounds}, out, indent=2)
            out.write("\n")
    # Exit 1 when a side did not do the whole burst: pjcore must run every job
    # once; APScheduler must persist every job's next run, and with no grace
    # limit it must not drop any either.
    bad = [r for r in rounds
           if r["pjcore"]["dropped"] or not r["pjcore"]["ran_exactly_once"]
           or r["apscheduler"]["persisted_next_run"] < args.jobs
           or (args.aps_grace is None and r["apscheduler"]["dropped"])]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
