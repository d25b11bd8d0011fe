"""``pjcore bench``: measure the installed pjcore on a database of your choice.

Everything measured goes through the real pieces a host uses: a
:class:`~pjcore.host.Host` (no entry points) with the configured store,
scheduler and runner, and a bench plugin whose handlers do nothing. Four
scenarios:

burst
    N jobs due at the same slot. Throughput (jobs/s from the first claim to
    the last run recorded terminal, read back from the store), start
    lateness (``started_at - scheduled_for``: median, p99), peak RSS and CPU.
    Every job must run exactly once; the store is checked afterwards.
idle
    M stored jobs, none due, scheduler running: CPU used by the process over
    ``--idle-seconds``, how many ticks the loop made meanwhile, the cost of
    one tick, RSS and how much of it the running loop added. No handler is
    registered for them (nothing runs): the RSS is that of the stored jobs
    and pjcore, not of a plugin's handler table, which the host keeps from
    its start (about 300 bytes a handler).
sync
    ``plugin_loaded`` for a manifest of K jobs: new jobs, the same manifest
    again, and a manifest whose schedules all changed.
query
    ``JobStore.due_jobs`` and ``next_due_at`` with M stored jobs, called as
    the scheduler calls them.

**How the burst is timed.** The burst needs a slot that every job shares and
that is still ahead once all jobs are stored, however long storing them
takes. The bench therefore gives the Host a :class:`FastForwardClock`: a
real clock (it advances with real time, and the scheduler sleeps on it
exactly as on :class:`~pjcore.clock.SystemClock`) that can be moved forward
once. The jobs get a daily cron slot one hour ahead; once they are stored,
the clock jumps to half a second before that slot and the Host starts. From
then on nothing is simulated, so the lateness figures are real delays. (A
:class:`~pjcore.clock.ManualClock` driven by hand would make lateness
meaningless; a slot a few seconds ahead on the system clock would race
against the time it takes to store the jobs.)

Each repetition of each scenario runs in a fresh Python process on fresh
tables, so memory peaks are not inherited and caches start cold. Tables get a
unique prefix and are dropped afterwards (``--keep`` keeps them; the JSON
names the prefix of each repetition).

The command line is wired by :mod:`pjcore.cli` (``add_arguments`` and
``run``); ``python -m pjcore.bench`` runs the same command.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, ContextManager, Iterator, Sequence

try:
    import resource
except ImportError:  # not on Windows: peak memory is then not reported
    resource = None

from pjcore.cli import positive_int, seconds
from pjcore.clock import SystemClock
from pjcore.hookspecs import hookimpl
from pjcore.manifest import MAX_JOBS
from pjcore.store_base import redact_url

__all__ = [
    "FastForwardClock",
    "Settings",
    "Target",
    "add_arguments",
    "burst",
    "daily_at",
    "drop_tables",
    "idle_and_query",
    "main",
    "manifests",
    "measure",
    "peak_rss_mib",
    "reset_peak_rss",
    "rss_mib",
    "run",
    "run_isolated",
    "single",
    "sync",
]

UTC = timezone.utc
SCENARIOS = ("burst", "single", "idle", "sync", "query")
#: single: real seconds between the clock's jump and each slot of the lone job
SINGLE_LEAD = 0.02
#: real seconds between the clock's jump and the burst slot: enough for the
#: Host to start and the scheduler to go to sleep until the slot
LEAD = 0.5
#: how far ahead of the clock the jobs' slot is while they are stored
SETUP_HORIZON = timedelta(hours=1)
#: real seconds a started scheduler gets before the idle window opens, so its
#: first tick (reclaiming, reading the store) is not counted as idle work
IDLE_SETTLE = 0.5
_WORKER = "_worker"


# -- settings ---------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    """What one run of the bench measures; sent as JSON to each worker process."""

    database: str | None = None  # None: a new SQLite file per repetition
    jobs: int = 2000  # burst size
    stored: int = 10_000  # stored jobs for idle and query
    manifest_jobs: int = 1000  # sync
    idle_seconds: float = 3.0
    queries: int = 200  # timed calls per query figure per repetition
    repeat: int = 3
    single_slots: int = 200  # slots of the lone job in the single scenario
    max_concurrent: int = 10
    timeout: float = 300.0  # seconds a burst may take before it counts as failed
    scenarios: tuple[str, ...] = SCENARIOS
    keep: bool = False


@dataclass(frozen=True)
class Target:
    """Where one repetition writes: a database URL and a table prefix of its own."""

    url: str
    table_prefix: str = field(default_factory=lambda: f"pjb_{uuid.uuid4().hex[:10]}_")


# -- the clock and the bench plugin --------------------------------------------------


class FastForwardClock(SystemClock):
    """A real clock that can jump forward: ``now()`` is the system time plus
    an offset that only :meth:`jump_to` changes (and only forward).

    Waiting is inherited from :class:`SystemClock`, so a scheduler sleeps on
    it for real; after a jump, call the scheduler's ``wake()`` if it is
    already asleep (the bench jumps before starting it).
    """

    def __init__(self) -> None:
        self._offset = timedelta(0)

    def now(self) -> datetime:
        return datetime.now(UTC) + self._offset

    def jump_to(self, instant: datetime) -> None:
        """Move forward to *instant*; one already past changes nothing (the
        clock never goes back)."""
        step = instant - self.now()
        if step > timedelta(0):
            self._offset += step

    def __repr__(self) -> str:
        return f"FastForwardClock(offset={self._offset})"


def _noop(ctx: Any) -> None:
    """The bench jobs' handler: no work, so only pjcore's own cost is measured."""


class _BenchPlugin:
    """Registers a no-op handler for each of the *jobs* bench jobs and counts
    finished runs."""

    def __init__(self, jobs: int, expected: int, clock) -> None:
        self._jobs = jobs
        self._expected = expected
        self._clock = clock
        self._lock = threading.Lock()
        self.finished = 0
        self.last_finished_at: datetime | None = None
        self.done = threading.Event()
        if expected == 0:
            self.done.set()

    @hookimpl
    def register_job_handlers(self, register) -> None:
        for _, plugin_key, numbers in _layout(self._jobs):
            for n in numbers:
                register(plugin_key, _job_key(n), _noop)

    @hookimpl
    def run_finished(self, run, job) -> None:
        # Called after the terminal status is recorded: once the count is
        # reached, every run of the burst is final in the store.
        with self._lock:
            self.finished += 1
            self.last_finished_at = self._clock.now()
            if self.finished >= self._expected:
                self.done.set()


def daily_at(slot: datetime) -> str:
    """A six-field cron (seconds first) firing every day at *slot*'s UTC time."""
    return f"{slot.second} {slot.minute} {slot.hour} * * *"


def _layout(count: int) -> Iterator[tuple[str, str, range]]:
    """``(plugin_id, plugin_key, job numbers)``: *count* jobs in as few plugins
    as the manifest limit (:data:`~pjcore.manifest.MAX_JOBS`) allows."""
    for index, start in enumerate(range(0, count, MAX_JOBS)):
        yield f"bench-{index}", f"bench.p{index}", range(start, min(count, start + MAX_JOBS))


def _job_key(n: int) -> str:
    return f"j{n:06d}"


def manifests(count: int, schedule: str) -> Iterator[tuple[str, str, dict]]:
    """``(plugin_id, plugin_key, manifest)`` per plugin; built one at a time, so
    the bench's own data does not weigh on the memory figures."""
    for plugin_id, plugin_key, numbers in _layout(count):
        jobs = [{"job_key": _job_key(n), "display_name": f"bench job {n}",
                 "schedule": schedule, "timezone": "UTC"} for n in numbers]
        yield plugin_id, plugin_key, {"key": plugin_key, "version": "1", "jobs": jobs}


def _load(host, count: int, schedule: str) -> list[str]:
    """Sync *count* jobs through ``plugin_loaded``; the plugin ids."""
    ids = []
    for plugin_id, plugin_key, manifest in manifests(count, schedule):
        host.load_plugin(plugin_id, plugin_key, manifest)
        ids.append(plugin_id)
    return ids


def _host(target: Target, settings: Settings, plugin: _BenchPlugin, clock=None):
    from pjcore.host import Host

    return Host(target.url, load_entrypoints=False, plugins=[plugin], clock=clock,
                max_concurrent=settings.max_concurrent,
                store_options={"table_prefix": target.table_prefix})


def _next_second(instant: datetime) -> datetime:
    return instant.replace(microsecond=0) + timedelta(seconds=1)


# -- measuring helpers -----------------------------------------------------------------


def _mib(kib: float) -> float:
    return round(kib / 1024, 1)


def _proc_status_kib(name: str) -> int | None:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(name + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def rss_mib() -> float | None:
    """This process's resident memory now (None without /proc)."""
    kib = _proc_status_kib("VmRSS")
    return None if kib is None else _mib(kib)


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (Linux), so a peak read later belongs
    to what ran since; setup allocations are not blamed on the burst."""
    try:
        with open("/proc/self/clear_refs", "w") as clear:
            clear.write("5")
        return True
    except OSError:
        return False


def peak_rss_mib(since_reset: bool) -> float | None:
    """Peak resident memory since :func:`reset_peak_rss` (if it succeeded),
    else over the process's life."""
    kib = _proc_status_kib("VmHWM") if since_reset else None
    if kib is None:
        return _lifetime_peak_mib()
    return _mib(kib)


def _lifetime_peak_mib() -> float | None:
    if resource is None:
        return None
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if sys.platform == "darwin":  # bytes there, KiB on Linux
        kib /= 1024
    return _mib(kib)


def _percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile (no interpolation: always a measured value)."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


def _timed(call: Callable[[], Any], count: int) -> tuple[list[float], list[Any]]:
    """Durations of *count* calls, and what they returned."""
    durations, results = [], []
    for _ in range(count):
        start = time.perf_counter()
        results.append(call())
        durations.append(time.perf_counter() - start)
    return durations, results


def _all_runs(host, plugin_id: str) -> Iterator[Any]:
    cursor = None
    while True:
        page = host.runs(plugin_id, limit=1000, cursor=cursor)
        yield from page.runs
        if page.next_cursor is None:
            return
        cursor = page.next_cursor


# -- scenarios --------------------------------------------------------------------


def burst(settings: Settings, target: Target,
          around: Callable[[], ContextManager[Any]] | None = None) -> dict:
    """``settings.jobs`` jobs due at one slot; see the module docstring.

    :param around: a context manager factory entered just before the Host
        starts and left once every run finished, e.g. a profiler that should
        see the burst but not the setup.
    """
    n = settings.jobs
    clock = FastForwardClock()
    slot = _next_second(clock.now() + SETUP_HORIZON)
    observer = _BenchPlugin(n, expected=n, clock=clock)
    host = _host(target, settings, observer, clock)
    try:
        plugin_ids = _load(host, n, daily_at(slot))
        rss_before = rss_mib()
        reset = reset_peak_rss()
        with around() if around else contextlib.nullcontext():
            cpu_start = time.process_time()
            clock.jump_to(slot - timedelta(seconds=LEAD))
            host.start()
            finished = observer.done.wait(settings.timeout)
            cpu = time.process_time() - cpu_start
        peak = peak_rss_mib(reset)
        if not finished:
            raise RuntimeError(f"burst: only {observer.finished} of {n} runs finished "
                               f"within {settings.timeout:g}s")
        host.scheduler.stop(10)  # nothing more is due; keep the store open to read it
        runs = [r for plugin_id in plugin_ids for r in _all_runs(host, plugin_id)]
        jobs = host.jobs()
    finally:
        host.stop(10)
    per_job = Counter(r.job_id for r in runs)
    statuses = Counter(r.status.value for r in runs)
    lateness = [(r.started_at - r.scheduled_for).total_seconds()
                for r in runs if r.started_at is not None and r.scheduled_for is not None]
    first_claim = min(r.created_at for r in runs)
    last_end = max(r.finished_at for r in runs if r.finished_at is not None)
    window = (last_end - first_claim).total_seconds()
    next_day = slot + timedelta(days=1)
    return {
        "jobs": n,
        "runs": len(runs),
        "statuses": dict(statuses),
        # the guarantee the figures rest on: one run per job, for the slot,
        # succeeded, and every pointer moved on to the next day
        "ran_exactly_once": (len(runs) == n == len(jobs) == len(per_job)
                             and set(per_job.values()) == {1}
                             and statuses == Counter(succeeded=n)
                             and all(r.scheduled_for == slot for r in runs)
                             and all(j.next_run_at == next_day for j in jobs)),
        "missed": sum(j.missed_count for j in jobs),
        "throughput": round(n / window, 1) if window > 0 else None,
        "window_s": round(window, 4),
        "wall_s": round((observer.last_finished_at - slot).total_seconds(), 4),
        "first_claim_after_slot_ms": _ms((first_claim - slot).total_seconds()),
        "lateness_median_ms": _ms(statistics.median(lateness)),
        "lateness_p99_ms": _ms(_percentile(lateness, 0.99)),
        "lateness_max_ms": _ms(max(lateness)),
        "cpu_s": round(cpu, 3),
        "cpu_per_job_us": round(cpu / n * 1e6, 1),
        "rss_before_mib": rss_before,
        "peak_rss_mib": peak,
        "peak_rss_scope": "burst" if reset else "process",
        "process_peak_rss_mib": _lifetime_peak_mib(),
    }


def idle_and_query(settings: Settings, target: Target) -> dict:
    """``settings.stored`` jobs, none due: due-job query latency (scheduler
    not started, so nothing else touches the database), then the scheduler's
    idle cost. One process does both because storing the jobs dominates."""
    m = settings.stored
    clock = SystemClock()
    # half a day ahead: nothing becomes due while measuring
    slot = _next_second(clock.now() + timedelta(hours=12))
    # no handlers: nothing runs (see the module docstring)
    host = _host(target, settings, _BenchPlugin(0, expected=0, clock=clock), clock)
    out: dict[str, Any] = {"stored": m}
    try:
        plugin_ids = _load(host, m, daily_at(slot))
        if "query" in settings.scenarios:
            store, q, limit = host.store, settings.queries, settings.max_concurrent
            now = clock.now()
            # what an idle tick asks (nothing due), what a tick during a burst
            # asks (all due, one page of the free capacity), and the wake-up time
            none, got_none = _timed(lambda: store.due_jobs(now, limit=limit,
                                                           plugin_ids=plugin_ids), q)
            every, got_all = _timed(lambda: store.due_jobs(slot, limit=limit,
                                                           plugin_ids=plugin_ids), q)
            nxt, got_next = _timed(lambda: store.next_due_at(plugin_ids=plugin_ids), q)
            if (any(got_none) or {len(r) for r in got_all} != {min(limit, m)}
                    or set(got_next) != {slot}):
                raise RuntimeError("query: due_jobs/next_due_at returned unexpected results")
            for name, durations in (("due_none", none), ("due_all", every), ("next_due", nxt)):
                out[f"{name}_ms"] = _ms(statistics.median(durations))
                out[f"{name}_p99_ms"] = _ms(_percentile(durations, 0.99))
        if "idle" in settings.scenarios:
            # The loop sleeps until the next slot or max_idle (30 s), so a
            # short window may hold no tick at all: the cost of one idle tick,
            # called by hand before the loop starts, completes the picture.
            tick, started = _timed(host.scheduler.tick, settings.queries)
            if any(started):
                raise RuntimeError("idle: a tick started runs, but nothing is due")
            rss_before = rss_mib()
            host.start()
            time.sleep(IDLE_SETTLE)
            ticks = host.diagnostics()["tick_count"]
            cpu, wall = time.process_time(), time.perf_counter()
            time.sleep(settings.idle_seconds)  # this thread uses no CPU meanwhile
            cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
            out.update(
                idle_seconds=round(wall, 3),
                cpu_s=round(cpu, 4),
                cpu_percent=round(100 * cpu / wall, 2),
                tick_ms=_ms(statistics.median(tick)),
                ticks=host.diagnostics()["tick_count"] - ticks,
                rss_before_start_mib=rss_before,
                rss_mib=rss_mib(),
            )
            if rss_before is not None:
                out["rss_growth_mib"] = round(out["rss_mib"] - rss_before, 1)
    finally:
        host.stop(10)
    return out


def sync(settings: Settings, target: Target) -> dict:
    """``plugin_loaded`` with ``settings.manifest_jobs`` jobs, three ways."""
    k = settings.manifest_jobs
    clock = SystemClock()
    slot = _next_second(clock.now() + timedelta(hours=12))
    (plugin_id, plugin_key, manifest), = manifests(k, daily_at(slot))
    changed = {**manifest, "jobs": [{**job, "schedule": daily_at(slot + timedelta(minutes=1))}
                                    for job in manifest["jobs"]]}
    host = _host(target, settings, _BenchPlugin(k, expected=0, clock=clock), clock)
    out: dict[str, Any] = {"manifest_jobs": k}
    try:
        for name, body in (("new", manifest), ("unchanged", manifest), ("changed", changed)):
            start = time.perf_counter()
            host.load_plugin(plugin_id, plugin_key, body)
            out[f"{name}_ms"] = _ms(time.perf_counter() - start)
        jobs = host.jobs(plugin_id)
        if len(jobs) != k or any(j.next_run_at != slot + timedelta(minutes=1) for j in jobs):
            raise RuntimeError("sync: the stored jobs do not match the last manifest")
    finally:
        host.stop(0)
    return out


def single(settings: Settings, target: Target) -> dict:
    """One job alone, every second: how late does each slot start?

    The clock jumps to just before each next slot and the scheduler is woken
    (it would otherwise sleep a real second); from there it sleeps until the
    slot for real, so the lateness is the scheduler's own.
    """
    slots = settings.single_slots
    clock = FastForwardClock()
    observer = _BenchPlugin(1, expected=slots, clock=clock)
    host = _host(target, settings, observer, clock)
    try:
        (plugin_id,) = _load(host, 1, "* * * * * *")
        host.start()
        for done in range(slots):
            (job,) = host.jobs(plugin_id)
            clock.jump_to(job.next_run_at - timedelta(seconds=SINGLE_LEAD))
            host.scheduler.wake()
            deadline = time.monotonic() + 10
            while observer.finished <= done:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"single: slot {done + 1} of {slots} did not run")
                time.sleep(0.001)
        host.scheduler.stop(10)
        runs = list(_all_runs(host, plugin_id))
    finally:
        host.stop(10)
    lateness = [(r.started_at - r.scheduled_for).total_seconds()
                for r in runs if r.started_at is not None and r.scheduled_for is not None]
    return {
        "slots": slots,
        "runs": len(runs),
        "single_lateness_median_ms": _ms(statistics.median(lateness)),
        "single_lateness_p99_ms": _ms(_percentile(lateness, 0.99)),
        "single_lateness_max_ms": _ms(max(lateness)),
    }


_RUNNERS = {"burst": burst, "single": single, "stored": idle_and_query, "sync": sync}


# -- orchestration -------------------------------------------------------------------


@dataclass(frozen=True)
class Figure:
    scenario: str  # worker that measures it: burst, stored, sync
    key: str
    label: str
    unit: str
    needs: str  # the user-facing scenario that asks for it


def _figures(settings: Settings) -> list[Figure]:
    n, m, k = (f"{settings.jobs:,}", f"{settings.stored:,}", f"{settings.manifest_jobs:,}")
    return [
        Figure("burst", "throughput", f"burst {n}: throughput", "jobs/s", "burst"),
        Figure("burst", "lateness_median_ms", f"burst {n}: start lateness, median", "ms", "burst"),
        Figure("burst", "lateness_p99_ms", f"burst {n}: start lateness, p99", "ms", "burst"),
        Figure("burst", "cpu_per_job_us", f"burst {n}: CPU per job", "us", "burst"),
        Figure("burst", "peak_rss_mib", f"burst {n}: peak RSS", "MiB", "burst"),
        Figure("single", "single_lateness_median_ms",
               f"single job, {settings.single_slots} slots: start lateness, median", "ms",
               "single"),
        Figure("single", "single_lateness_p99_ms",
               f"single job, {settings.single_slots} slots: start lateness, p99", "ms", "single"),
        Figure("stored", "cpu_percent", f"idle {m} stored: CPU (one core)", "%", "idle"),
        Figure("stored", "ticks", f"idle {m} stored: ticks in {settings.idle_seconds:g}s",
               "", "idle"),
        Figure("stored", "tick_ms", f"idle {m} stored: one tick, nothing due", "ms", "idle"),
        Figure("stored", "rss_mib", f"idle {m} stored: RSS", "MiB", "idle"),
        Figure("stored", "rss_growth_mib", f"idle {m} stored: RSS added by the running loop",
               "MiB", "idle"),
        Figure("sync", "new_ms", f"sync {k}: plugin_loaded, new jobs", "ms", "sync"),
        Figure("sync", "unchanged_ms", f"sync {k}: plugin_loaded, unchanged", "ms", "sync"),
        Figure("sync", "changed_ms", f"sync {k}: plugin_loaded, schedules changed", "ms", "sync"),
        Figure("stored", "due_none_ms", f"query {m} stored: due_jobs, none due", "ms", "query"),
        Figure("stored", "due_all_ms",
               f"query {m} stored: due_jobs, all due, limit {settings.max_concurrent}",
               "ms", "query"),
        Figure("stored", "next_due_ms", f"query {m} stored: next_due_at", "ms", "query"),
    ]


def _workers(settings: Settings) -> list[str]:
    wanted = set(settings.scenarios)
    out = []
    if "burst" in wanted:
        out.append("burst")
    if "single" in wanted:
        out.append("single")
    if wanted & {"idle", "query"}:
        out.append("stored")
    if "sync" in wanted:
        out.append("sync")
    return out


def run_isolated(worker: str, settings: Settings, target: Target) -> dict:
    """Run one repetition of one scenario (``burst``, ``stored`` or ``sync``)
    in a fresh interpreter and return its figures."""
    payload = json.dumps({"settings": asdict(settings), "target": asdict(target)})
    try:
        proc = subprocess.run(
            # -P: the installed pjcore, not a checkout that happens to be the
            # current directory
            [sys.executable, "-P", "-m", "pjcore.bench", _WORKER, worker], input=payload,
            capture_output=True, text=True, timeout=settings.timeout + 600,
        )
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"{worker}: the worker process did not finish") from None
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
        raise RuntimeError(f"{worker}: the worker process failed "
                           f"(exit {proc.returncode}):\n{tail}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def drop_tables(target: Target) -> None:
    """Drop the tables a repetition wrote (the peewee store's ``drop_tables``)."""
    from pjcore.contrib.peewee_store import PeeweeJobStore

    store = PeeweeJobStore(target.url, table_prefix=target.table_prefix)
    try:
        store.drop_tables()
    finally:
        store.close()


def _environment(settings: Settings, engine: str) -> dict:
    import sqlite3

    from pjcore import __version__

    env = {
        "pjcore": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "engine": engine,
        "database": redact_url(settings.database) if settings.database
        else "new file per repetition, temporary folder",
    }
    if engine == "sqlite":
        env["sqlite"] = sqlite3.sqlite_version
    return env


def measure(settings: Settings, progress: Callable[[str], None] = lambda line: None) -> dict:
    """Run every repetition and summarise; the JSON document ``--json`` writes."""
    workdir = None if settings.database else tempfile.mkdtemp(prefix="pjcore-bench-")
    engine = ("sqlite" if settings.database is None
              or settings.database.lower().startswith("sqlite") else "postgresql")
    raw: dict[str, list[dict]] = {w: [] for w in _workers(settings)}
    started = datetime.now(UTC)
    try:
        # repetitions outermost, so a slow drift of the machine spreads over
        # every scenario instead of biasing one
        for rep in range(settings.repeat):
            for worker in raw:
                url = settings.database or f"sqlite:///{workdir}/{worker}-{rep + 1}.db"
                target = Target(url)
                progress(f"repetition {rep + 1}/{settings.repeat}: {worker}")
                try:
                    result = run_isolated(worker, settings, target)
                finally:
                    # a temporary folder goes as a whole; the user's database
                    # keeps nothing of ours
                    if settings.database and not settings.keep:
                        drop_tables(target)
                result["table_prefix"] = target.table_prefix
                result["database"] = redact_url(url)
                raw[worker].append(result)
    finally:
        if workdir is not None and not settings.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    figures = {}
    for fig in _figures(settings):
        if fig.needs not in settings.scenarios:
            continue
        values = [r[fig.key] for r in raw[fig.scenario] if r.get(fig.key) is not None]
        if not values:
            continue
        figures[f"{fig.needs}.{fig.key}"] = {
            "label": fig.label, "unit": fig.unit, "median": statistics.median(values),
            "min": min(values), "max": max(values), "values": values,
        }
    bursts = raw.get("burst", [])
    return {
        "started_at": started.isoformat(),
        "environment": _environment(settings, engine),
        "settings": asdict(settings),
        "figures": figures,
        "checks": {
            "burst_ran_exactly_once": all(r["ran_exactly_once"] for r in bursts),
            "burst_missed": sum(r["missed"] for r in bursts),
        } if bursts else {},
        "repetitions": raw,
        "kept": workdir if (workdir and settings.keep) else None,
    }


def _number(value: float) -> str:
    if isinstance(value, int) or abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def format_report(report: dict) -> str:
    env, settings = report["environment"], report["settings"]
    engine = "SQLite " + env["sqlite"] if "sqlite" in env else "PostgreSQL"
    head = (f"pjcore {env['pjcore']} bench: {engine} ({env['database']}), "
            f"Python {env['python']}, {env['cpus']} CPUs, "
            f"max_concurrent {settings['max_concurrent']}; "
            f"median of {settings['repeat']} repetition(s), min - max")
    rows = [(f["label"], f"{_number(f['median'])} {f['unit']}".rstrip(),
             f"{_number(f['min'])} - {_number(f['max'])}")
            for f in report["figures"].values()]
    headers = ("figure", "median", "min - max")
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(headers)]
    lines = [head, ""]
    for i, row in enumerate([headers, tuple("-" * w for w in widths), *rows]):
        lines.append(f"{row[0]:<{widths[0]}}  {row[1]:>{widths[1]}}  {row[2]:>{widths[2]}}")
    checks = report["checks"]
    if checks:
        lines.append("")
        lines.append("burst: every job ran exactly once, for its slot: "
                     + ("yes" if checks["burst_ran_exactly_once"] else "NO")
                     + f"; slots missed: {checks['burst_missed']}")
    if report.get("kept"):
        lines.append(f"databases kept in {report['kept']}")
    elif settings["keep"]:
        prefixes = sorted({r["table_prefix"] for rs in report["repetitions"].values() for r in rs})
        lines.append(f"tables kept, prefixes: {', '.join(prefixes)}")
    return "\n".join(lines)


# -- command line ------------------------------------------------------------------


#: bench durations: seconds above 0 and below a million
_seconds = seconds(10**6)


def _scenarios(value: str) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(v.strip() for v in value.split(",") if v.strip()))
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown scenario(s) {', '.join(unknown) or value!r}; choose from {', '.join(SCENARIOS)}")
    return names


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the bench options to *parser* (``pjcore bench`` or ``python -m pjcore.bench``)."""
    d = Settings()
    parser.add_argument("--database", metavar="URL",
                        help="sqlite:///file.db or postgresql://user@host/db; tables get a "
                             "unique prefix and are dropped afterwards (default: a new SQLite "
                             "file per repetition in a temporary folder)")
    parser.add_argument("--jobs", type=positive_int(), default=d.jobs, metavar="N",
                        help="burst: jobs due at once (default: %(default)s)")
    parser.add_argument("--single-slots", type=positive_int(10_000), default=d.single_slots,
                        metavar="S", help="single: slots of the lone per-second job "
                                          "(default: %(default)s)")
    parser.add_argument("--stored", type=positive_int(), default=d.stored, metavar="M",
                        help="idle and query: stored jobs, none due (default: %(default)s)")
    parser.add_argument("--manifest-jobs", type=positive_int(MAX_JOBS), default=d.manifest_jobs,
                        metavar="K", help="sync: jobs in the manifest (default: %(default)s, "
                                          f"at most {MAX_JOBS})")
    parser.add_argument("--idle-seconds", type=_seconds, default=d.idle_seconds, metavar="S",
                        help="idle: how long to watch the scheduler (default: %(default)g)")
    parser.add_argument("--queries", type=positive_int(), default=d.queries, metavar="Q",
                        help="query: timed calls per figure and repetition (default: %(default)s)")
    parser.add_argument("--repeat", type=positive_int(), default=d.repeat, metavar="R",
                        help="repetitions of every scenario, each in a fresh process "
                             "(default: %(default)s)")
    parser.add_argument("--max-concurrent", type=positive_int(1000), default=d.max_concurrent,
                        metavar="C", help="the Host's max_concurrent (default: %(default)s)")
    parser.add_argument("--timeout", type=_seconds, default=d.timeout, metavar="S",
                        help="a burst not finished after this long fails (default: %(default)g)")
    parser.add_argument("--only", type=_scenarios, default=d.scenarios, metavar="LIST",
                        dest="scenarios",
                        help=f"comma-separated scenarios to run: {', '.join(SCENARIOS)} "
                             "(default: all)")
    parser.add_argument("--json", metavar="PATH", dest="json_path",
                        help="also write every figure and raw repetition as JSON")
    parser.add_argument("--keep", action="store_true",
                        help="keep the databases or tables afterwards, to inspect the runs")
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")


def settings_from(args: argparse.Namespace) -> Settings:
    return Settings(
        database=args.database, jobs=args.jobs, single_slots=args.single_slots,
        stored=args.stored,
        manifest_jobs=args.manifest_jobs, idle_seconds=args.idle_seconds, queries=args.queries,
        repeat=args.repeat, max_concurrent=args.max_concurrent, timeout=args.timeout,
        scenarios=tuple(args.scenarios), keep=args.keep,
    )


def run(args: argparse.Namespace) -> int:
    """Run the bench as parsed by :func:`add_arguments`; print the table. Exit status."""
    settings = settings_from(args)
    progress = (lambda line: None) if args.quiet else (
        lambda line: print(f"pjcore bench: {line}", file=sys.stderr, flush=True))
    try:
        report = measure(settings, progress)
    except Exception as exc:  # a worker failed: one readable message, exit 1
        print(f"pjcore bench: error: {exc}", file=sys.stderr)
        return 1
    print(format_report(report))
    if args.json_path:
        with open(args.json_path, "w") as out:
            json.dump(report, out, indent=2, default=str)
            out.write("\n")
    ok = not report["checks"] or report["checks"]["burst_ran_exactly_once"]
    return 0 if ok else 1


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == [_WORKER]:
        return _worker_main(argv[1:])
    parser = argparse.ArgumentParser(
        prog="python -m pjcore.bench", description="Measure the installed pjcore (same as "
                                                   "`pjcore bench`).")
    add_arguments(parser)
    return run(parser.parse_args(argv))


def _worker_main(argv: Sequence[str]) -> int:
    """One repetition of one scenario: JSON settings on stdin, JSON result on stdout."""
    payload = json.loads(sys.stdin.read())
    raw = payload["settings"]
    settings = Settings(**{**raw, "scenarios": tuple(raw["scenarios"])})
    target = Target(**payload["target"])
    result = _RUNNERS[argv[0]](settings, target)
    print(json.dumps(result, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
