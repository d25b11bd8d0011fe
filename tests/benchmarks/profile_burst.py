"""Where a burst's time goes, per job: statements, calls, and a profile of every thread.

    python tests/benchmarks/profile_burst.py                 # 2,000 jobs on a temporary SQLite file
    python tests/benchmarks/profile_burst.py --jobs 5000 --database postgresql://postgres@127.0.0.1/test
    python tests/benchmarks/profile_burst.py --save burst.pstats   # for snakeviz, pstats ...

Two in-process runs of ``pjcore.bench.burst`` (the real Host, store,
scheduler and runner):

1. **counted**: every SQL statement and commit peewee sends is counted by
   kind, and the run is timed without a profiler; the CPU time of each of
   pjcore's threads (the scheduler loop, the workers, the WAL checkpointer)
   is read at its end;
2. **profiled**: cProfile in *every* thread (the scheduler loop and the
   runner's workers, not only the main thread), merged. cProfile slows
   Python code down (about 2x here), so read its figures as shares.

From the profile it derives per-job call counts of the hot-path functions and
splits peewee's cost into building SQL (``Database.execute`` minus
``execute_sql``) and running it (``execute_sql``).

   On SQLite, the CPU time each thread spends inside the driver's calls
   (``execute``, ``executemany``, ``fetch*``: SQLite's own work, commits
   included) is summed too, by statement kind: the rest of the CPU is
   Python's (pjcore, peewee, the interpreter) and the kernel's.

3. **serial**: the store calls of a dispatch round (``due_jobs``,
   ``claim_slots`` (each run started by its claim), ``complete_runs``, each for a page
   of ``--max-concurrent`` jobs) and ``plan_slots``, called one after another
   in one thread: their cost without lock contention or thread handoffs. The
   gap between its total and the burst's CPU per job is what the threads and
   the scheduler's own bookkeeping cost.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import inspect
import io
import os
import pstats
import shutil
import sys
import tempfile
import threading
import time
from collections import Counter
from datetime import timedelta

import peewee as pw

from pjcore import bench

#: (label, module file suffix, function name): hot-path functions whose
#: calls per job are reported
HOT = [
    ("scheduler tick", "scheduler.py", "_tick"),
    ("scheduler wake-up computation", "scheduler.py", "_compute_wake_at"),
    ("store.due_jobs", "peewee_store.py", "due_jobs"),
    ("store.next_due_at", "peewee_store.py", "next_due_at"),
    ("store.claim_slots (a round)", "peewee_store.py", "claim_slots"),
    ("store.mark_runs_running (a round)", "peewee_store.py", "mark_runs_running"),
    ("store.complete_runs (a round)", "peewee_store.py", "complete_runs"),
    ("store.claim_slot (one job)", "peewee_store.py", "claim_slot"),
    ("store.mark_running (one run)", "peewee_store.py", "mark_running"),
    ("store.complete_run (one run)", "peewee_store.py", "complete_run"),
    ("store.get_run", "peewee_store.py", "get_run"),
    ("row -> Job", "peewee_store.py", "_job"),
    ("row -> JobRun", "peewee_store.py", "_run"),
    ("plan_slots", "slots.py", "plan_slots"),
    ("CronSchedule.next_after", "cron.py", "next_after"),
    ("croniter.get_next", "croniter.py", "get_next"),
    ("runner.submit", "runner.py", "submit"),
    ("scheduler.wake", "scheduler.py", "wake"),
    ("loguru logger.bind", "_logger.py", "bind"),
    ("plugin hook call (notify)", "plugins.py", "notify"),
]


# -- statement counting -----------------------------------------------------------


class ThreadCPU:
    """CPU time each pjcore thread spent within the burst, by role (thread
    names without their number): read when the burst ends, less what a
    thread already alive when it began (the store's WAL checkpointer,
    started by the setup's commits) had spent by then. Empty where
    ``time.pthread_getcpuclockid`` does not exist (macOS, Windows)."""

    def __init__(self) -> None:
        self.by_role: Counter = Counter()
        self._before: dict[int, float] = {}

    @staticmethod
    def _clocks() -> dict[int, tuple[str, float]]:
        out = {}
        for thread in threading.enumerate():
            if thread.name.startswith("pjcore-") and thread.ident is not None:
                try:
                    clock = time.pthread_getcpuclockid(thread.ident)
                    out[thread.ident] = (thread.name, time.clock_gettime(clock))
                except (AttributeError, OSError):  # not on this platform, or just ended
                    continue
        return out

    def __enter__(self) -> "ThreadCPU":
        self._before = {ident: spent for ident, (_, spent) in self._clocks().items()}
        return self

    def __exit__(self, *exc) -> None:
        for ident, (name, spent) in self._clocks().items():
            self.by_role[name.rstrip("0123456789_")] += spent - self._before.get(ident, 0.0)


def _kind(sql: str) -> str:
    """A statement's first keyword, upper case (``SELECT``, ``COMMIT`` ...)."""
    return sql.lstrip().split(None, 1)[0].upper() if sql else "?"


class StatementCounter:
    """Counts what peewee sends to the database, by first keyword, in every thread."""

    def __init__(self) -> None:
        self.counts: Counter = Counter()
        self._lock = threading.Lock()
        self._saved = None

    #: (class, method, kind): execute_sql carries every statement but the
    #: transaction control, which peewee sends through the cursor directly
    PATCHED = [(pw.Database, "execute_sql", None), (pw.Database, "commit", "COMMIT"),
               (pw.Database, "rollback", "ROLLBACK"), (pw.Database, "begin", "BEGIN"),
               (pw.SqliteDatabase, "begin", "BEGIN"), (pw.PostgresqlDatabase, "begin", "BEGIN")]

    def __enter__(self) -> "StatementCounter":
        from pjcore.contrib.peewee_store import PeeweeJobStore

        self._saved = []
        for cls, name, kind in self.PATCHED:
            original = cls.__dict__[name]
            self._saved.append((cls, name, original))
            setattr(cls, name, self._counting(original, kind))
        # the store's executemany path goes to the driver's cursor directly:
        # one statement per parameter row
        original = PeeweeJobStore.__dict__["_exec_many"]
        self._saved.append((PeeweeJobStore, "_exec_many", original))

        def many(store, stmt, rows):
            for _ in rows:
                self._add(_kind(stmt.sql))
            return original(store, stmt, rows)

        PeeweeJobStore._exec_many = many
        return self

    def __exit__(self, *exc) -> None:
        for cls, name, original in reversed(self._saved):
            setattr(cls, name, original)

    def _counting(self, original, kind):
        def counted(db, *args, **kwargs):
            self._add(kind or _kind(args[0]))
            return original(db, *args, **kwargs)

        return counted

    def _add(self, kind: str) -> None:
        with self._lock:
            self.counts[kind] += 1


class DriverTime:
    """CPU time spent inside the sqlite3 driver's calls, by statement kind,
    in every thread: peewee's connections get cursors that read
    ``time.thread_time`` around ``execute``, ``executemany`` and the fetches
    (a few hundred nanoseconds of Python added per call). Only connections
    made meanwhile are seen: a store opened inside the block."""

    def __init__(self) -> None:
        self.by_kind: Counter = Counter()
        self._lock = threading.Lock()
        self._saved = None

    def __enter__(self) -> "DriverTime":
        sqlite3 = pw.sqlite3
        clock, add = time.thread_time, self._add

        def timed(kind: str, call, *args):
            start = clock()
            try:
                return call(*args)
            finally:
                add(kind, clock() - start)

        class Cursor(sqlite3.Cursor):
            def execute(self, sql, *args):
                return timed(_kind(sql), super().execute, sql, *args)

            def executemany(self, sql, *args):
                return timed(_kind(sql), super().executemany, sql, *args)

            def fetchall(self):
                return timed("FETCH", super().fetchall)

            def fetchone(self):
                return timed("FETCH", super().fetchone)

        class Connection(sqlite3.Connection):
            def cursor(self, factory=Cursor):
                return super().cursor(factory)

        self._saved = connect = sqlite3.connect

        def timed_connect(*args, **kwargs):
            kwargs.setdefault("factory", Connection)
            return connect(*args, **kwargs)

        sqlite3.connect = timed_connect
        return self

    def __exit__(self, *exc) -> None:
        pw.sqlite3.connect = self._saved

    def _add(self, kind: str, seconds: float) -> None:
        with self._lock:
            self.by_kind[kind] += seconds


# -- profiling every thread ---------------------------------------------------------


class AllThreadsProfile:
    """cProfile in the current thread and in every thread started meanwhile.

    cProfile hooks only the thread that enables it; ``threading.setprofile``
    runs a function at the start of each new thread, which enables a profiler
    of its own there.
    """

    def __init__(self, timer=None) -> None:
        self.timer = timer
        self.profiles: list[cProfile.Profile] = []
        self._lock = threading.Lock()

    def _new(self) -> cProfile.Profile:
        profile = cProfile.Profile(self.timer) if self.timer else cProfile.Profile()
        with self._lock:
            self.profiles.append(profile)
        return profile

    def _thread_start(self, *_args) -> None:
        sys.setprofile(None)
        self._new().enable()

    def __enter__(self) -> "AllThreadsProfile":
        threading.setprofile(self._thread_start)
        self._main = self._new()
        self._main.enable()
        return self

    def __exit__(self, *exc) -> None:
        self._main.disable()
        threading.setprofile(None)

    def stats(self) -> pstats.Stats:
        stats = pstats.Stats(self.profiles[0], stream=io.StringIO())
        for profile in self.profiles[1:]:
            stats.add(profile)
        return stats


def _calls(stats: pstats.Stats, file_suffix: str, name: str) -> tuple[int, float, float]:
    """Calls (primitive), own time and cumulative time of matching functions."""
    calls, tot, cum = 0, 0.0, 0.0
    for (path, _line, func), (cc, _nc, tt, ct, _callers) in stats.stats.items():
        if func == name and path.endswith(file_suffix):
            calls, tot, cum = calls + cc, tot + tt, cum + ct
    return calls, tot, cum


def _at(stats: pstats.Stats, function) -> tuple[int, float, float]:
    """Like :func:`_calls` for one function object (by file and first line)."""
    path = inspect.getsourcefile(function)
    line = inspect.getsourcelines(function)[1]
    for (p, ln, _f), (cc, _nc, tt, ct, _callers) in stats.stats.items():
        if p == path and ln == line:
            return cc, tt, ct
    return 0, 0.0, 0.0


def _builtin(stats: pstats.Stats, name: str) -> tuple[int, float]:
    for (path, _line, func), (cc, _nc, tt, _ct, _callers) in stats.stats.items():
        if path == "~" and func == name:
            return cc, tt
    return 0, 0.0


#: builtins whose time is a thread blocked, not work
WAITING = {
    "<method 'acquire' of '_thread.lock' objects>",
    "<method 'acquire' of '_thread.RLock' objects>",
    "<built-in method time.sleep>",
    "<method 'get' of '_queue.SimpleQueue' objects>",  # idle pool workers
}


def _short(path: str) -> str:
    """``site-packages/peewee.py`` -> ``peewee.py``; ``.../pjcore/x.py`` -> ``pjcore/x.py``."""
    parts = path.replace(os.sep, "/").split("/")
    for anchor in ("pjcore", "contrib"):
        if anchor in parts[:-1]:
            return "/".join(parts[len(parts) - 1 - parts[::-1].index(anchor):])
    return parts[-1]


# -- the hot path, serially -------------------------------------------------------


def serial_ops(n: int, target: bench.Target, page: int) -> dict[str, float]:
    """Microseconds per job of each store call of a dispatch round, rounds of
    *page* jobs (a tick with *page* free workers), in one thread."""
    from pjcore.host import Host
    from pjcore.models import RunStatus
    from pjcore.slots import plan_slots

    clock = bench.FastForwardClock()
    slot = clock.now().replace(microsecond=0) + timedelta(hours=1)
    host = Host(target.url, load_entrypoints=False, clock=clock,
                store_options={"table_prefix": target.table_prefix})
    spent: Counter = Counter()

    def timed(name: str, call):
        start = time.perf_counter()
        result = call()
        spent[name] += time.perf_counter() - start
        return result

    try:
        plugin_ids = []
        for plugin_id, plugin_key, manifest in bench.manifests(n, bench.daily_at(slot)):
            host.load_plugin(plugin_id, plugin_key, manifest)
            plugin_ids.append(plugin_id)
        store, now, done = host.store, slot + timedelta(milliseconds=1), 0
        lease = now + timedelta(minutes=1)
        while jobs := timed(f"due_jobs (limit {page})",
                            lambda: store.due_jobs(now, limit=page, plugin_ids=plugin_ids)):
            plans = [timed("plan_slots", lambda: plan_slots(job, now)) for job in jobs]
            # every run started by its claim, as when each has an idle worker
            claims = timed(f"claim_slots ({page})", lambda: store.claim_slots([
                {"job_id": job.id, "expected": job.next_run_at, "run_slot": plan.run_slot,
                 "next_run_at": plan.next_run_at, "missed": plan.missed, "now": now,
                 "owner": "bench", "lease_until": lease} for job, plan in zip(jobs, plans)],
                start=len(jobs)))
            run_ids = [c.run.id for c in claims]
            timed(f"complete_runs ({page})", lambda: store.complete_runs([
                {"run_id": run_id, "status": RunStatus.succeeded, "now": now}
                for run_id in run_ids]))
            done += len(run_ids)
    finally:
        host.stop(0)
    if done != n:
        raise RuntimeError(f"serial: {done} of {n} jobs claimed")
    return {name: seconds / n * 1e6 for name, seconds in spent.items()}


# -- main ---------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--database", help="default: a temporary SQLite file")
    parser.add_argument("--max-concurrent", type=int, default=10)
    parser.add_argument("--top", type=int, default=25, help="functions listed by own time")
    parser.add_argument("--save", metavar="PATH", help="write the merged profile (pstats format)")
    parser.add_argument("--cpu", action="store_true",
                        help="profile CPU time of each thread (time.thread_time) instead of "
                             "wall time: a thread waiting for the GIL, a lock or the disk "
                             "then counts nothing")
    args = parser.parse_args(argv)

    workdir = tempfile.mkdtemp(prefix="pjcore-profile-")
    settings = bench.Settings(jobs=args.jobs, max_concurrent=args.max_concurrent)
    n = args.jobs

    def target(name: str) -> bench.Target:
        return bench.Target(args.database or f"sqlite:///{workdir}/{name}.db")

    targets = {name: target(name) for name in ("counted", "driver", "profiled", "serial")}
    try:
        # both instruments see the burst only (from the Host's start to the
        # last run recorded), not the setup that stores the jobs
        counter, profiler = StatementCounter(), AllThreadsProfile(time.thread_time if args.cpu else None)
        threads, driver, driver_threads = ThreadCPU(), DriverTime(), ThreadCPU()

        @contextlib.contextmanager
        def counted():
            with counter, threads:
                yield

        @contextlib.contextmanager
        def timed():
            with driver, driver_threads:
                yield

        plain = bench.burst(settings, targets["counted"], around=counted)
        sqlite_run = None
        if not args.database or args.database.startswith("sqlite"):
            sqlite_run = bench.burst(settings, targets["driver"], around=timed)
        profiled = bench.burst(settings, targets["profiled"], around=lambda: profiler)
        serial = serial_ops(n, targets["serial"], args.max_concurrent)
    finally:
        if args.database:
            for each in targets.values():
                bench.drop_tables(each)
        shutil.rmtree(workdir, ignore_errors=True)
    stats = profiler.stats()

    out = []
    out.append(f"burst of {n:,} jobs, {args.database or 'temporary SQLite file'}, "
               f"max_concurrent {args.max_concurrent}; Python {sys.version.split()[0]}, "
               f"{os.cpu_count()} CPUs")
    out.append(f"counted run: {plain['throughput']:,.0f} jobs/s, {plain['cpu_per_job_us']:,.0f} us "
               f"CPU per job; profiled run: {profiled['throughput']:,.0f} jobs/s")
    if threads.by_role:
        out.append("counted run, CPU per job by thread: " + ", ".join(
            f"{role} {seconds / n * 1e6:,.0f} us" for role, seconds in threads.by_role.most_common()))
    if sqlite_run is not None:
        inside = sum(driver.by_kind.values())
        cpu = sum(driver_threads.by_role.values()) or sqlite_run["cpu_s"]
        out.append(f"timed run: {sqlite_run['throughput']:,.0f} jobs/s; CPU per job inside "
                   f"SQLite (the driver's calls, every thread) {inside / n * 1e6:,.0f} us of "
                   f"{cpu / n * 1e6:,.0f} us (pjcore's threads): " + ", ".join(
                       f"{kind} {seconds / n * 1e6:,.1f}"
                       for kind, seconds in driver.by_kind.most_common()))
    out.append("")
    out.append("statements per job (BEGIN and COMMIT included):")
    total = sum(counter.counts.values())
    for kind, count in counter.counts.most_common():
        out.append(f"  {kind:<10} {count / n:6.2f}")
    out.append(f"  {'total':<10} {total / n:6.2f}")
    out.append("")
    out.append("calls per job (profiled run), own and cumulative time per job:")
    for label, suffix, name in HOT:
        calls, tot, cum = _calls(stats, suffix, name)
        out.append(f"  {label:<32} {calls / n:7.2f}   own {tot / n * 1e6:7.1f} us   "
                   f"cum {cum / n * 1e6:8.1f} us")
    execute = _at(stats, pw.Database.execute)
    execute_sql = _at(stats, pw.Database.execute_sql)
    cursor_calls, cursor_time = _builtin(stats, "<method 'execute' of 'sqlite3.Cursor' objects>")
    pg_calls, pg_time = _builtin(stats, "<method 'execute' of 'psycopg2.extensions.cursor' objects>")
    db_calls, db_time = (cursor_calls + pg_calls, cursor_time + pg_time)
    out.append("")
    out.append("peewee, per job (profiled): building SQL (Database.execute minus execute_sql) "
               f"{(execute[2] - execute_sql[2]) / n * 1e6:.0f} us; execute_sql "
               f"{execute_sql[2] / n * 1e6:.0f} us, of which inside the driver's execute() "
               f"{db_time / n * 1e6:.0f} us over {db_calls / n:.1f} calls (summed over threads: "
               "waiting for locks and network round trips count here)")
    out.append("")
    out.append("serial (one thread, no profiler): microseconds per job")
    for name, micros in serial.items():
        out.append(f"  {name:<28} {micros:8.1f}")
    total_us = sum(serial.values())
    out.append(f"  {'total':<28} {total_us:8.1f}   = {1e6 / total_us:,.0f} jobs/s; the burst "
               f"used {plain['cpu_per_job_us']:,.0f} us CPU per job")
    out.append("")
    out.append(f"top {args.top} by own time (threads waiting on locks and events left out), "
               "per job:")
    out.append(f"  {'calls':>7}  {'own us':>8}  {'cum us':>8}  function")
    rows = sorted(stats.stats.items(), key=lambda item: item[1][2], reverse=True)
    shown = 0
    for (path, line, func), (cc, _nc, tt, ct, _callers) in rows:
        if func in WAITING:
            continue
        where = func if path == "~" else f"{_short(path)}:{line}({func})"
        out.append(f"  {cc / n:7.2f}  {tt / n * 1e6:8.1f}  {ct / n * 1e6:8.1f}  {where}")
        shown += 1
        if shown >= args.top:
            break
    print("\n".join(out))
    if args.save:
        stats.dump_stats(args.save)
    ran = [plain, profiled] + ([sqlite_run] if sqlite_run is not None else [])
    return 0 if all(run["ran_exactly_once"] for run in ran) else 1


if __name__ == "__main__":
    sys.exit(main())
