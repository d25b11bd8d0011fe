"""A pjcore scheduler process for the fault tests, and the slot accounting
they share.

Run as a script, it builds a :class:`pjcore.Host` (no entry points) with a
plugin that declares ``--jobs`` jobs on ``--schedule`` and provides their
handlers, loads the plugin (every process does: the sync is idempotent),
runs for ``--duration`` seconds and stops. Each handler call appends one
line to ``--outbox`` when it starts::

    job_key slot_iso pid attempt run_id

(``O_APPEND``, one ``write`` per line, so lines of several processes never
interleave), then sleeps ``--handler-sleep`` seconds (cooperatively: a
cancelled run stops sleeping). On exit it prints one JSON line with what it
did and exits 0; SIGTERM stops it early, the same way.

Imported, it offers :func:`account`: the exactness check of the fault tests.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import signal
import sys
import threading
import time
from datetime import datetime
from typing import Any

PLUGIN_ID = "fault-plugin-id"
PLUGIN_KEY = "faults"


def job_key(index: int) -> str:
    return f"job-{index:04d}"


def manifest(jobs: int, schedule: str, **policy: Any) -> dict[str, Any]:
    return {"key": PLUGIN_KEY, "jobs": [
        {"job_key": job_key(i), "display_name": f"Job {i}", "schedule": schedule,
         **({"policy": policy} if policy else {})}
        for i in range(jobs)]}


# -- accounting (used by the tests) --------------------------------------------------


def read_outbox(path: str) -> list[tuple[str, str, int, str, str]]:
    """The outbox lines as (job_key, slot_iso, pid, attempt, run_id)."""
    if not os.path.exists(path):
        return []
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            key, slot, pid, attempt, run_id = line.split()
            out.append((key, slot, int(pid), attempt, run_id))
    return out


def account(store: Any, plugin_id: str = PLUGIN_ID, outbox: str | None = None) -> dict[str, Any]:
    """Check that every slot of every job of the plugin is accounted for.

    For each job, the *expected* slots are its fire times from its first
    pointer (the first fire time after the job was created) up to, not
    including, its final pointer. Each one must be either **run** (exactly
    one scheduled run records it, whatever the run's status) or **missed**
    (counted in the job's ``missed_count``): ``expected == run + missed``.
    A second run of a slot (a second attempt included) is a **duplicate**;
    so is a second outbox line (a second handler call) for one slot.

    :return: the figures, with ``problems``: a list of human-readable
        violations (empty when everything is exact).
    """
    from pjcore import cron

    figures: dict[str, Any] = collections.Counter()
    statuses: collections.Counter = collections.Counter()
    problems: list[str] = []
    runs_by_job: dict[str, list] = collections.defaultdict(list)
    cursor = None
    while True:
        page = store.list_runs(plugin_id=plugin_id, limit=1000, cursor=cursor)
        for run in page.runs:
            runs_by_job[run.job_id].append(run)
        cursor = page.next_cursor
        if cursor is None:
            break
    run_ids: dict[str, tuple[str, datetime, int, str]] = {}
    expected_counts = []
    for job in store.list_jobs(plugin_id):
        figures["jobs"] += 1
        schedule = cron.get_schedule(job.schedule, job.timezone)
        slot, expected = schedule.next_after(job.created_at), set()
        while job.next_run_at is not None and slot < job.next_run_at:
            expected.add(slot)
            slot = schedule.next_after(slot)
        expected_counts.append(len(expected))
        per_slot = collections.Counter()
        for run in runs_by_job.get(job.id, []):
            if run.trigger.value != "schedule":
                continue
            statuses[run.status.value] += 1
            run_ids[run.id] = (job.job_key, run.scheduled_for, run.attempt, run.status.value)
            per_slot[run.scheduled_for] += 1
            if run.scheduled_for not in expected:
                problems.append(f"{job.job_key}: run {run.id} fills {run.scheduled_for}, "
                                "not one of its expected slots")
        run = len(per_slot)
        duplicates = sum(n - 1 for n in per_slot.values())
        figures["expected"] += len(expected)
        figures["run"] += run
        figures["missed"] += job.missed_count
        figures["duplicates"] += duplicates
        if duplicates:
            problems.append(f"{job.job_key}: {duplicates} slot(s) run more than once")
        if len(expected) != run + job.missed_count:
            problems.append(f"{job.job_key}: {len(expected)} slots expected, {run} run, "
                            f"{job.missed_count} counted missed")
    figures = dict(figures)
    figures["min_expected_per_job"] = min(expected_counts, default=0)
    figures["statuses"] = dict(statuses)
    if outbox is not None:
        lines = read_outbox(outbox)
        calls = collections.Counter((key, slot) for key, slot, _, _, _ in lines)
        figures["handler_calls"] = len(lines)
        figures["outbox_duplicates"] = sum(n - 1 for n in calls.values())
        if figures["outbox_duplicates"]:
            problems.append(f"{figures['outbox_duplicates']} slot(s) handled more than once "
                            "(outbox)")
        for key, slot, pid, attempt, run_id in lines:
            known = run_ids.get(run_id)
            if known is None or known[0] != key or known[1] != datetime.fromisoformat(slot):
                problems.append(f"outbox line {key} {slot} (pid {pid}) matches no stored run")
        # every run that succeeded called its handler, which wrote its line first
        written = {run_id for *_, run_id in lines}
        missing = [r for r, known in run_ids.items()
                   if known[3] == "succeeded" and r not in written]
        if missing:
            problems.append(f"{len(missing)} succeeded run(s) left no outbox line")
    figures["problems"] = problems
    return figures


# -- the process ------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database", required=True)
    parser.add_argument("--prefix", default="pj_", help="table prefix")
    parser.add_argument("--jobs", type=int, default=10)
    parser.add_argument("--schedule", default="* * * * * *")
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--outbox", required=True)
    parser.add_argument("--owner", default=None)
    parser.add_argument("--lease", type=float, default=60.0)
    parser.add_argument("--handler-sleep", type=float, default=0.0)
    parser.add_argument("--max-concurrent", type=int, default=50)
    parser.add_argument("--timeout", type=float, default=60.0, help="run timeout (s)")
    parser.add_argument("--drain", type=float, default=15.0, help="stop() timeout (s)")
    parser.add_argument("--store-timeout", type=float, default=None,
                        help="SQLite busy timeout (s)")
    parser.add_argument("--log-level", default="WARNING")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from loguru import logger

    from pjcore import Host, hookimpl

    counts = dict.fromkeys(["handler_calls", "tick_failures", "recoveries", "deferred_ends",
                            "deferred_starts"], 0)
    counts_lock = threading.Lock()

    def count(message: Any) -> None:
        text = message.record["message"]
        if "tick failed" in text:
            counts["tick_failures"] += 1
        elif "resumed after" in text:
            counts["recoveries"] += 1
        elif "could not record the end" in text:
            counts["deferred_ends"] += 1
        elif "could not start run" in text:
            counts["deferred_starts"] += 1

    logger.remove()
    logger.add(sys.stderr, level=args.log_level,
               format="{time:HH:mm:ss.SSS} " + f"{os.getpid()} " + "{level} {message}")
    logger.add(count, level="WARNING", format="{message}")
    logger.enable("pjcore")

    fd = os.open(args.outbox, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    pid = os.getpid()
    attempts: dict[str, int] = {}  # run id -> attempt, from run_started (no extra query)

    def handler(ctx: Any) -> None:
        attempt = attempts.pop(ctx.run_id, "?")
        line = f"{ctx.job_key} {ctx.scheduled_for.isoformat()} {pid} {attempt} {ctx.run_id}\n"
        os.write(fd, line.encode())
        with counts_lock:  # handlers run in many threads
            counts["handler_calls"] += 1
        if args.handler_sleep:
            ctx.wait(args.handler_sleep)

    class Plugin:
        @hookimpl
        def register_job_handlers(self, register):
            for i in range(args.jobs):
                register(PLUGIN_KEY, job_key(i), handler)

        @hookimpl
        def run_started(self, run, job):  # called in the worker, just before the handler
            attempts[run.id] = run.attempt

    store_options: dict[str, Any] = {"table_prefix": args.prefix}
    if args.store_timeout is not None:
        store_options["timeout"] = args.store_timeout
    scheduler_options: dict[str, Any] = {"lease_seconds": args.lease, "max_idle": 1.0}
    if args.owner:
        scheduler_options["owner"] = args.owner
    host = Host(args.database, plugins=[Plugin()], load_entrypoints=False,
                max_concurrent=args.max_concurrent, default_timeout=args.timeout,
                store_options=store_options, scheduler_options=scheduler_options)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    started = time.monotonic()
    host.start()
    try:
        host.pm.hook.plugin_loaded(plugin_id=PLUGIN_ID, plugin_key=PLUGIN_KEY,
                                   manifest=manifest(args.jobs, args.schedule))
        stop.wait(max(0.0, args.duration - (time.monotonic() - started)))
        diagnostics = host.diagnostics()
    finally:
        host.stop(args.drain)
        os.close(fd)
    print(json.dumps({
        "owner": diagnostics["owner"], "pid": pid, "ticks": diagnostics["tick_count"],
        "consecutive_errors": diagnostics["consecutive_errors"], **counts,
    }), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
