"""The ``pjcore`` command line. Exit status: 0 ok, 1 failure, 2 bad usage."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from datetime import datetime, timezone
from typing import Any, Sequence

from pjcore.exceptions import PjError
from pjcore.hookspecs import hookimpl

__all__ = ["main"]

DEFAULT_DATABASE = "sqlite:///pjcore.db"


def _fmt_time(value: datetime | None) -> str:
    if value is None:
        return "-"
    return value.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def _table(rows: list[list[str]], headers: list[str]) -> str:
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(c)) for w, c in zip(widths, row)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in rows]
    return "\n".join(out)


class RunPrinter:
    """A plugin that prints one line per finished run (``run`` and ``demo``)."""

    def __init__(self, stream=None) -> None:
        self.stream = stream or sys.stdout
        self.lock = threading.Lock()
        self.finished: list[Any] = []

    @hookimpl
    def run_finished(self, run, job) -> None:
        late = ""
        if run.scheduled_for is not None and run.started_at is not None:
            late = f" late {(run.started_at - run.scheduled_for).total_seconds() * 1000:.0f}ms"
        took = "" if run.duration_ms is None else f" in {run.duration_ms}ms"
        error = f": {run.error}" if run.error else ""
        with self.lock:
            self.finished.append((run, job))
            print(
                f"{_fmt_time(run.finished_at)}  {job.plugin_key}/{job.job_key:<16} "
                f"{run.trigger.value:<8} {run.status.value:<9}{took}{late}{error}",
                file=self.stream,
                flush=True,
            )


def _host(args: argparse.Namespace, **kwargs: Any):
    from pjcore.host import Host

    return Host(args.database, **kwargs)


# -- commands -------------------------------------------------------------------


def cmd_demo(args: argparse.Namespace) -> int:
    from pjcore import demo
    from pjcore.host import Host

    database = args.database
    if database is None:
        folder = tempfile.mkdtemp(prefix="pjcore-demo-")
        database = f"sqlite:///{os.path.join(folder, 'demo.db')}"
    printer = RunPrinter()
    print(f"pjcore demo: plugin {demo.PLUGIN_KEY!r} on {database}, for {args.duration:g}s")
    host = Host(database, plugins=[demo, printer], load_entrypoints=False,
                max_concurrent=args.max_concurrent)
    with host:
        host.load_plugin(demo.PLUGIN_KEY, demo.PLUGIN_KEY, demo.MANIFEST)
        _wait(args.duration)
        print("stopping: draining runs in flight...")
    rows = []
    # The host closed its store; reopen it to read the final records.
    with Host(database, plugins=[demo], load_entrypoints=False) as reader:
        stats: dict[str, Counter] = defaultdict(Counter)
        for page_run in _all_runs(reader):
            stats[page_run.job_key][page_run.status.value] += 1
        for job in reader.jobs(demo.PLUGIN_KEY):
            c = stats.get(job.job_key, Counter())
            rows.append([job.job_key, job.schedule or "(manual)", str(sum(c.values())),
                         str(c["succeeded"]), str(c["failed"]), str(c["cancelled"]),
                         str(job.missed_count), _fmt_time(job.next_run_at)])
    print()
    print(_table(rows, ["job", "schedule", "runs", "ok", "failed", "cancelled", "missed",
                        "next (UTC)"]))
    print(f"\ndatabase: {database}")
    return 0


def _all_runs(host):
    cursor = None
    while True:
        page = host.runs(limit=1000, cursor=cursor)
        yield from page.runs
        if page.next_cursor is None:
            return
        cursor = page.next_cursor


def _wait(seconds: float | None) -> str:
    """Sleep until *seconds* pass or SIGINT/SIGTERM arrives; say which."""
    stop = threading.Event()
    got: list[str] = []

    def handler(signum, frame):
        got.append(signal.Signals(signum).name)
        stop.set()

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        stop.wait(seconds)
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    return got[0] if got else "timeout"


def cmd_run(args: argparse.Namespace) -> int:
    printer = RunPrinter()
    host = _host(args, plugins=[printer], max_concurrent=args.max_concurrent)
    with host:
        loaded = host.load_declared_plugins()
        for failure in host.pm.failures:
            print(f"plugin {failure.name} failed to load: {failure.error}", file=sys.stderr)
        print(f"pjcore running on {host.store!r} with plugins: {', '.join(loaded) or '(none)'}; "
              "Ctrl-C to stop", flush=True)
        why = _wait(args.duration)
        print(f"{why}: draining runs in flight (up to {args.drain_timeout:g}s)...", flush=True)
        host.stop(args.drain_timeout)
    return 0


def cmd_jobs(args: argparse.Namespace) -> int:
    with _host(args) as host:
        rows = [[j.plugin_key, j.job_key, j.status.value, j.schedule or "(manual)", j.timezone,
                 _fmt_time(j.next_run_at), _fmt_time(j.last_run_at), str(j.missed_count),
                 j.status_reason or ""]
                for j in host.jobs(args.plugin, status=args.status)]
    print(_table(rows, ["plugin", "job", "status", "schedule", "tz", "next (UTC)",
                        "last (UTC)", "missed", "reason"]))
    return 0


def cmd_runs(args: argparse.Namespace) -> int:
    with _host(args) as host:
        page = host.runs(args.plugin, args.job, status=args.status, limit=args.limit,
                         cursor=args.cursor)
    rows = [[r.id, r.job_key, r.trigger.value, r.status.value, _fmt_time(r.scheduled_for),
             _fmt_time(r.started_at), "-" if r.duration_ms is None else str(r.duration_ms),
             (r.error or "")[:60]] for r in page.runs]
    print(_table(rows, ["run", "job", "trigger", "status", "slot (UTC)", "started (UTC)",
                        "ms", "error"]))
    if page.next_cursor:
        print(f"more: --cursor {page.next_cursor}")
    return 0


def cmd_trigger(args: argparse.Namespace) -> int:
    printer = RunPrinter()
    with _host(args, plugins=[printer]) as host:
        host.load_declared_plugins()
        run_id = host.trigger(args.plugin, args.job)
        print(f"run {run_id} started", flush=True)
        if args.no_wait:
            return 0
        deadline = time.monotonic() + args.timeout
        while time.monotonic() < deadline:
            run = host.run(run_id)
            if run is not None and run.status.terminal:
                return 0 if run.status.value == "succeeded" else 1
            time.sleep(0.05)
        print(f"run {run_id} still running after {args.timeout:g}s", file=sys.stderr)
        return 1


def cmd_pause(args: argparse.Namespace) -> int:
    with _host(args) as host:
        job = host.pause(args.plugin, args.job, reason=args.reason)
    print(f"{job.plugin_key}/{job.job_key}: {job.status.value}")
    return 0


def cmd_resume(args: argparse.Namespace) -> int:
    with _host(args) as host:
        job = host.resume(args.plugin, args.job)
    print(f"{job.plugin_key}/{job.job_key}: {job.status.value}, next {_fmt_time(job.next_run_at)} UTC")
    return 0


def cmd_calendar(args: argparse.Namespace) -> int:
    with _host(args) as host:
        rows = []
        for job, times in host.upcoming(args.count, args.plugin):
            for t in times:
                local = t.astimezone(__import__("zoneinfo").ZoneInfo(job.timezone))
                rows.append([_fmt_time(t), local.strftime("%Y-%m-%d %H:%M:%S %Z"),
                             f"{job.plugin_key}/{job.job_key}"])
    rows.sort()
    print(_table(rows, ["UTC", "local", "job"]))
    return 0


def cmd_backends(args: argparse.Namespace) -> int:
    from pjcore.plugins import make_plugin_manager

    pm = make_plugin_manager()
    rows = [[b.kind, b.name, b.plugin] for b in pm.backends.all()]
    print(_table(rows, ["kind", "name", "from plugin"]))
    return 0


def cmd_plugins(args: argparse.Namespace) -> int:
    from pjcore.plugins import make_plugin_manager

    pm = make_plugin_manager()
    rows = [[p.name, p.distribution or ("(built-in)" if p.builtin else "-"), p.version or "-",
             "loaded", ""] for p in pm.plugin_infos()]
    rows += [[f.name, f.distribution or "-", f.version or "-", "FAILED", f.error]
             for f in pm.failures]
    print(_table(rows, ["plugin", "distribution", "version", "status", "error"]))
    return 1 if pm.failures and args.strict else 0


# -- parser ---------------------------------------------------------------------


def _positive(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {value!r}") from None
    if not number > 0:
        raise argparse.ArgumentTypeError(f"must be > 0: {value!r}")
    return number


def _count(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {value!r}") from None
    if not 1 <= number <= 1000:
        raise argparse.ArgumentTypeError(f"must be between 1 and 1000: {value!r}")
    return number


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pjcore", description="Run and inspect scheduled jobs declared by plugins."
    )
    parser.add_argument("--version", action="version", version=_version())
    parser.add_argument("-v", "--verbose", action="store_true", help="show pjcore's log")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(name: str, func, help: str, database: bool = True) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        p.set_defaults(func=func)
        if database:
            p.add_argument("--database", metavar="URL", default=None if name == "demo" else DEFAULT_DATABASE,
                           help="job store URL (default: %(default)s)" if name != "demo"
                           else "job store URL (default: a new SQLite file in a temporary folder)")
        return p

    p = add("demo", cmd_demo, "run the built-in demo plugin for a while on a new SQLite database")
    p.add_argument("--duration", type=_positive, default=12.0, metavar="SECONDS",
                   help="how long to run (default: %(default)s)")
    p.add_argument("--max-concurrent", type=_count, default=10, metavar="N")

    p = add("run", cmd_run, "run the jobs of the installed plugins until SIGINT or SIGTERM")
    p.add_argument("--drain-timeout", type=_positive, default=30.0, metavar="SECONDS",
                   help="on shutdown, wait this long for runs in flight (default: %(default)s)")
    p.add_argument("--duration", type=_positive, default=None, metavar="SECONDS",
                   help="stop after this long (default: run until signalled)")
    p.add_argument("--max-concurrent", type=_count, default=10, metavar="N")

    p = add("jobs", cmd_jobs, "list jobs")
    p.add_argument("plugin", nargs="?", help="plugin id or key")
    p.add_argument("--status", choices=["active", "paused"])

    p = add("runs", cmd_runs, "list runs, newest first")
    p.add_argument("plugin", nargs="?", help="plugin id or key")
    p.add_argument("job", nargs="?", help="job key")
    p.add_argument("--status", choices=["queued", "running", "succeeded", "failed", "cancelled",
                                        "abandoned", "skipped"])
    p.add_argument("--limit", type=_count, default=20)
    p.add_argument("--cursor", help="continue after a previous page")

    p = add("trigger", cmd_trigger, "run a job now, in this process, and wait for it")
    p.add_argument("plugin", help="plugin id or key")
    p.add_argument("job", help="job key")
    p.add_argument("--no-wait", action="store_true", help="return once the run has started")
    p.add_argument("--timeout", type=_positive, default=300.0, metavar="SECONDS")

    p = add("pause", cmd_pause, "pause a job (it stays paused across plugin reloads)")
    p.add_argument("plugin")
    p.add_argument("job")
    p.add_argument("--reason")

    p = add("resume", cmd_resume, "resume a paused job from its next slot")
    p.add_argument("plugin")
    p.add_argument("job")

    p = add("calendar", cmd_calendar, "next fire times of all active jobs")
    p.add_argument("plugin", nargs="?")
    p.add_argument("--count", type=_count, default=3, help="fire times per job (default: %(default)s)")

    add("backends", cmd_backends, "list the store, scheduler and runner backends", database=False)
    p = add("plugins", cmd_plugins, "list plugins, including those that failed to load",
            database=False)
    p.add_argument("--strict", action="store_true", help="exit 1 if any plugin failed to load")
    return parser


def _version() -> str:
    from pjcore import __version__

    return f"pjcore {__version__}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.verbose:
        from loguru import logger

        logger.enable("pjcore")
    try:
        return args.func(args)
    except PjError as exc:
        print(f"pjcore: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
