"""The ``pjcore`` command line. Exit status: 0 ok, 1 failure, 2 bad usage."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import tempfile
import threading
import traceback
from collections import Counter, defaultdict
from datetime import datetime, timezone
from typing import Any, Iterable, Iterator, Sequence
from urllib.parse import parse_qsl, unquote, urlsplit
from zoneinfo import ZoneInfo

from pjcore.exceptions import InvalidArgument, JobLookupError, PjError, PluginNotRunning
from pjcore.hookspecs import hookimpl

__all__ = ["main"]

DEFAULT_DATABASE = "sqlite:///pjcore.db"
#: statuses always shown in a total, even at zero; others only when present
TOTAL_STATUSES = ("succeeded", "failed", "cancelled")


class CommandError(PjError):
    """A command that cannot be carried out (exit status 1)."""


class UsageError(Exception):
    """A bad argument value that only the command itself can detect (exit status 2)."""


# -- output -----------------------------------------------------------------------


def _fmt_time(value: datetime | None) -> str:
    if value is None:
        return "-"
    return value.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def _fmt_ms(ms: int | None) -> str:
    if ms is None:
        return "-"
    return f"{ms}ms" if ms < 1000 else f"{ms / 1000:.1f}s"


def _table(rows: list[list[str]], headers: list[str]) -> str:
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(c)) for w, c in zip(widths, row)]

    def line(cells: Iterable[str]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()

    return "\n".join([line(headers), line("-" * w for w in widths), *map(line, rows)])


def _total(statuses: Counter) -> str:
    """``12 runs: 8 succeeded, 4 failed, 0 cancelled`` (+ any other status seen)."""
    parts = [f"{statuses[s]} {s}" for s in TOTAL_STATUSES]
    parts += [f"{n} {s}" for s, n in sorted(statuses.items()) if s not in TOTAL_STATUSES and n]
    count = sum(statuses.values())
    return f"{count} run{'s' if count != 1 else ''}: {', '.join(parts)}"


def _one_line(text: str) -> str:
    # Some errors (pluggy validation, database drivers) span lines; the CLI
    # promises a single ``pjcore: error:`` line.
    return " ".join(part.strip() for part in text.splitlines() if part.strip())


def _passwords(url: str | None) -> list[str]:
    """The secrets in a database URL: the password of its user part and any
    ``password=`` query parameter (libpq accepts both)."""
    if not url:
        return []
    try:
        parts = urlsplit(url)
        found = [parts.password, unquote(parts.password or "")]
        found += [v for k, v in parse_qsl(parts.query) if k.lower() == "password"]
    except ValueError:  # malformed: fall back to the raw user part
        userinfo = url.partition("://")[2].rpartition("@")[0]
        found = [userinfo.partition(":")[2]]
    return sorted({p for p in found if p}, key=len, reverse=True)


def _scrub(text: str, url: str | None) -> str:
    """*text* without the passwords of *url*: whatever pjcore or a driver says
    about a database, its password never reaches the terminal."""
    for password in _passwords(url):
        text = text.replace(password, "***")
    return text


class RunPrinter:
    """A plugin that prints one line per finished run (``run``, ``demo``, ``trigger``)
    and lets a command wait for a given run."""

    def __init__(self, stream=None) -> None:
        self.stream = stream or sys.stdout
        self._done = threading.Condition()
        self.finished: dict[str, Any] = {}  # run id -> finished JobRun
        self.statuses: Counter = Counter()

    @hookimpl
    def run_finished(self, run, job) -> None:
        name = f"{job.plugin_key}/{job.job_key}"
        line = (f"{_fmt_time(run.finished_at)}  {run.status.value:<9}  {name:<28}  "
                f"{run.trigger.value:<8}  {_fmt_ms(run.duration_ms):>6}")
        if run.scheduled_for is not None and run.trigger.value == "schedule":
            line += f"  slot {run.scheduled_for.astimezone(timezone.utc):%H:%M:%S}"
            # Lateness is noise at the usual few milliseconds; worth a word past a second.
            if run.started_at is not None:
                late = (run.started_at - run.scheduled_for).total_seconds()
                if late >= 1:
                    line += f" (started {late:.1f}s late)"
        if run.error:
            line += f"  error: {_one_line(run.error)}"
        with self._done:
            self.finished[run.id] = run
            self.statuses[run.status.value] += 1
            print(line, file=self.stream, flush=True)
            self._done.notify_all()

    def wait_for(self, run_id: str, timeout: float) -> Any | None:
        """The finished run, or None if it has not finished within *timeout* seconds."""
        with self._done:
            self._done.wait_for(lambda: run_id in self.finished, timeout)
            return self.finished.get(run_id)


# -- helpers ----------------------------------------------------------------------


def _new_host(database: str, **kwargs: Any):
    from pjcore.host import Host

    return Host(database, **kwargs)


@contextlib.contextmanager
def _opened(database: str, **kwargs: Any) -> Iterator[Any]:
    """A Host whose scheduler is not started: for commands that only read or
    change the store, so they never dispatch runs of their own."""
    host = _new_host(database, **kwargs)
    try:
        yield host
    finally:
        host.stop(0)


def _check_plugin(host, plugin: str | None) -> None:
    """Fail clearly on an unknown plugin, rather than with an empty table or a
    "job not found" that blames the job."""
    if plugin is None or host.jobs(plugin):
        return
    jobs = host.jobs()
    known = sorted({j.plugin_key for j in jobs} | {j.plugin_id for j in jobs})
    raise CommandError(f"unknown plugin {plugin!r}: "
                       + (f"the database has jobs of {', '.join(known)}" if known
                          else "the database has no jobs yet"))


def _wait(seconds: float | None) -> str:
    """Sleep until *seconds* pass or SIGINT/SIGTERM arrives; return which."""
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
    return f"received {got[0]}" if got else f"{seconds:g}s elapsed"


def _runs_since(host, plugin: str, since: datetime) -> Iterator[Any]:
    """Runs of *plugin* created at or after *since* (pages are newest first)."""
    cursor = None
    while True:
        page = host.runs(plugin, limit=1000, cursor=cursor)
        for run in page.runs:
            if run.created_at < since:
                return
            yield run
        if page.next_cursor is None:
            return
        cursor = page.next_cursor


# -- commands -----------------------------------------------------------------------


def cmd_demo(args: argparse.Namespace) -> int:
    from pjcore import demo

    database = args.database
    if database is None:
        folder = tempfile.mkdtemp(prefix="pjcore-demo-")
        database = f"sqlite:///{os.path.join(folder, 'demo.db')}"
    printer = RunPrinter()
    shown = _scrub(database, database)
    print(f"pjcore demo: plugin {demo.PLUGIN_KEY!r} on {shown}, for {args.duration:g}s",
          flush=True)
    # Only this session's runs go in the summary: the database may be reused.
    started = datetime.now(timezone.utc)
    host = _new_host(database, plugins=[demo, printer], load_entrypoints=False,
                     max_concurrent=args.max_concurrent)
    with host:
        host.load_plugin(demo.PLUGIN_KEY, demo.PLUGIN_KEY, demo.MANIFEST)
        why = _wait(args.duration)
        print(f"{why}: draining runs in flight...", flush=True)
    # The host closed its store; read the records back from the database.
    with _opened(database, plugins=[demo], load_entrypoints=False) as reader:
        stats: dict[str, Counter] = defaultdict(Counter)
        for run in _runs_since(reader, demo.PLUGIN_KEY, started):
            stats[run.job_key][run.status.value] += 1
        rows = []
        for job in reader.jobs(demo.PLUGIN_KEY):
            c = stats[job.job_key]
            rows.append([job.job_key, job.schedule or "(manual)", str(sum(c.values())),
                         str(c["succeeded"]), str(c["failed"]), str(c["cancelled"]),
                         str(job.missed_count), _fmt_time(job.next_run_at)])
    print()
    print(_table(rows, ["job", "schedule", "runs", "ok", "failed", "cancelled", "missed",
                        "next (UTC)"]))
    print(f"total: {_total(sum(stats.values(), Counter()))}")
    print(f"\ndatabase: {shown}")
    print(f"inspect it: pjcore runs --database {shown}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    printer = RunPrinter()
    host = _new_host(args.database, plugins=[printer], max_concurrent=args.max_concurrent)
    with host:
        loaded = host.load_declared_plugins()
        for failure in host.pm.failures:
            print(f"plugin {failure.name} failed to load: {_one_line(failure.error)}",
                  file=sys.stderr)
        for manifest in host.declared_manifests():
            if manifest.key not in loaded:
                print(f"plugin {manifest.key} declares jobs that could not be loaded "
                      "(-v shows why)", file=sys.stderr)
        print(f"pjcore running on {_scrub(args.database, args.database)} with plugins: "
              f"{', '.join(loaded) or '(none)'}; "
              "Ctrl-C to stop", flush=True)
        why = _wait(args.duration)
        print(f"{why}: draining runs in flight (up to {args.drain_timeout:g}s)...", flush=True)
        host.stop(args.drain_timeout)
    print(f"stopped after {_total(printer.statuses)}", flush=True)
    return 0


def cmd_jobs(args: argparse.Namespace) -> int:
    with _opened(args.database) as host:
        _check_plugin(host, args.plugin)
        rows = [[j.plugin_key, j.job_key, j.status.value, j.schedule or "(manual)", j.timezone,
                 _fmt_time(j.next_run_at), _fmt_time(j.last_run_at), str(j.missed_count),
                 j.status_reason or ""]
                for j in host.jobs(args.plugin, status=args.status)]
    print(_table(rows, ["plugin", "job", "status", "schedule", "tz", "next (UTC)",
                        "last (UTC)", "missed", "reason"]))
    return 0


def cmd_runs(args: argparse.Namespace) -> int:
    with _opened(args.database) as host:
        _check_plugin(host, args.plugin)
        try:
            page = host.runs(args.plugin, args.job, status=args.status, limit=args.limit,
                             cursor=args.cursor)
        except InvalidArgument as exc:
            if args.cursor is None:
                raise
            raise UsageError(f"argument --cursor: {exc}") from None
    rows = [[r.id, r.job_key, r.trigger.value, r.status.value, _fmt_time(r.scheduled_for),
             _fmt_time(r.started_at), _fmt_ms(r.duration_ms), _one_line(r.error or "")[:60]]
            for r in page.runs]
    print(_table(rows, ["run", "job", "trigger", "status", "slot (UTC)", "started (UTC)",
                        "took", "error"]))
    if page.next_cursor:
        print(f"more: --cursor {page.next_cursor}")
    return 0


def cmd_trigger(args: argparse.Namespace) -> int:
    printer = RunPrinter()
    with _opened(args.database, plugins=[printer]) as host:
        # Register only the job's plugin, and never start the scheduler loop:
        # this process runs the one manual run, not scheduled slots that fall
        # due meanwhile (those belong to `pjcore run`).
        manifests = {m.key: m for m in host.declared_manifests()}
        if args.plugin in manifests:
            plugin_id, manifest = args.plugin, manifests[args.plugin]
        else:
            _check_plugin(host, args.plugin)
            job = host.job(args.plugin, args.job)
            manifest = manifests.get(job.plugin_key)
            if manifest is None:
                raise PluginNotRunning(job.plugin_key, "is not installed here")
            plugin_id = job.plugin_id
        # Loading writes the manifest's jobs: a mistyped job key must fail
        # before it, not leave the plugin's jobs behind in the database.
        if manifest.job(args.job) is None:
            raise JobLookupError(args.job, plugin_id)
        host.load_plugin(plugin_id, manifest.key, manifest)
        job = host.job(plugin_id, args.job)
        run_id = host.trigger(plugin_id, args.job)
        print(f"run {run_id} of {job.plugin_key}/{job.job_key} started", flush=True)
        # Without the loop nothing enforces the job's own timeout: do it here.
        limit = min(args.timeout, job.policy.timeout_seconds or args.timeout)
        run = printer.wait_for(run_id, limit)
        if run is None:
            host.stop(0)  # records the run as cancelled, and asks the handler to stop
            print(f"pjcore: error: run {run_id} did not finish within {limit:g}s; cancelled",
                  file=sys.stderr)
            return 1
        return 0 if run.status.value == "succeeded" else 1


def cmd_pause(args: argparse.Namespace) -> int:
    with _opened(args.database) as host:
        _check_plugin(host, args.plugin)
        job = host.pause(args.plugin, args.job, reason=args.reason)
    print(f"{job.plugin_key}/{job.job_key}: {job.status.value}"
          + (f" ({job.status_reason})" if job.status_reason else ""))
    return 0


def cmd_resume(args: argparse.Namespace) -> int:
    with _opened(args.database) as host:
        _check_plugin(host, args.plugin)
        job = host.resume(args.plugin, args.job)
    print(f"{job.plugin_key}/{job.job_key}: {job.status.value}, "
          f"next {_fmt_time(job.next_run_at)} UTC")
    return 0


def cmd_calendar(args: argparse.Namespace) -> int:
    with _opened(args.database) as host:
        _check_plugin(host, args.plugin)
        rows = []
        for job, times in host.upcoming(args.count, args.plugin):
            for t in times:
                local = t.astimezone(ZoneInfo(job.timezone))
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
    rows += [[f.name, f.distribution or "-", f.version or "-", "FAILED", _one_line(f.error)]
             for f in pm.failures]
    print(_table(rows, ["plugin", "distribution", "version", "status", "error"]))
    return 1 if pm.failures and args.strict else 0


# -- parser ---------------------------------------------------------------------------


def positive_int(limit: int | None = None):
    """An argparse type: an integer from 1 (to *limit*, if given)."""
    def parse(value: str) -> int:
        try:
            number = int(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {value!r}") from None
        if number < 1 or (limit is not None and number > limit):
            bound = f"between 1 and {limit}" if limit else "at least 1"
            raise argparse.ArgumentTypeError(f"must be {bound}: {value!r}")
        return number

    return parse


def seconds(below: float = 10**9):
    """An argparse type: a number of seconds above 0 and below *below*."""
    def parse(value: str) -> float:
        try:
            number = float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {value!r}") from None
        # "not >" also rejects nan; inf would make threading waits overflow.
        if not 0 < number < below:
            raise argparse.ArgumentTypeError(f"must be a number of seconds > 0: {value!r}")
        return number

    return parse


_positive = seconds()
_count = positive_int(1000)


def _reason(value: str) -> str:
    from pjcore.context import MAX_TEXT

    if len(value) > MAX_TEXT:
        raise argparse.ArgumentTypeError(f"at most {MAX_TEXT} characters, not {len(value)}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pjcore", description="Run and inspect scheduled jobs declared by plugins.",
        epilog="exit status: 0 ok, 1 failure, 2 bad usage",
    )
    parser.add_argument("--version", action="version", version=_version())
    parser.add_argument("-v", "--verbose", action="store_true", help="show pjcore's log")
    # -v is accepted after the command too; SUPPRESS keeps a subcommand's
    # default from overwriting a -v given before the command.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                        help="show pjcore's log")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(name: str, func, help: str, database: bool = True) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help, parents=[common])
        p.set_defaults(func=func, command_parser=p)
        if database:
            p.add_argument("--database", metavar="URL", default=DEFAULT_DATABASE,
                           help="job store URL (default: %(default)s)")
        return p

    p = add("demo", cmd_demo, "run the built-in demo plugin for a while on a new SQLite database",
            database=False)
    p.add_argument("--database", metavar="URL",
                   help="job store URL (default: a new SQLite file in a temporary folder)")
    p.add_argument("--duration", type=_positive, default=12.0, metavar="SECONDS",
                   help="how long to run (default: %(default)g)")
    p.add_argument("--max-concurrent", type=_count, default=10, metavar="N",
                   help="runs in flight at once (default: %(default)s)")

    p = add("run", cmd_run, "run the jobs of the installed plugins until SIGINT or SIGTERM")
    p.add_argument("--drain-timeout", type=_positive, default=30.0, metavar="SECONDS",
                   help="on shutdown, wait this long for runs in flight (default: %(default)g)")
    p.add_argument("--duration", type=_positive, default=None, metavar="SECONDS",
                   help="stop after this long (default: run until signalled)")
    p.add_argument("--max-concurrent", type=_count, default=10, metavar="N",
                   help="runs in flight at once (default: %(default)s)")

    p = add("jobs", cmd_jobs, "list jobs")
    p.add_argument("plugin", nargs="?", help="plugin id or key")
    p.add_argument("--status", choices=["active", "paused"])

    p = add("runs", cmd_runs, "list runs, newest first")
    p.add_argument("plugin", nargs="?", help="plugin id or key")
    p.add_argument("job", nargs="?", help="job key")
    p.add_argument("--status", choices=["queued", "running", "succeeded", "failed", "cancelled",
                                        "abandoned", "skipped"])
    p.add_argument("--limit", type=_count, default=20, metavar="N",
                   help="runs per page (default: %(default)s)")
    p.add_argument("--cursor", help="the next page: the cursor printed after a page")

    p = add("trigger", cmd_trigger,
            "run a job now, in this process, and wait for it (exit 1 unless it succeeds)")
    p.add_argument("plugin", help="plugin id or key")
    p.add_argument("job", help="job key")
    p.add_argument("--timeout", type=_positive, default=300.0, metavar="SECONDS",
                   help="cancel the run after this long (default: %(default)g, or the "
                        "job's own timeout if shorter)")

    p = add("pause", cmd_pause, "pause a job (it stays paused across plugin reloads)")
    p.add_argument("plugin", help="plugin id or key")
    p.add_argument("job", help="job key")
    p.add_argument("--reason", type=_reason, help="shown by `pjcore jobs`")

    p = add("resume", cmd_resume, "resume a paused job from its next slot")
    p.add_argument("plugin", help="plugin id or key")
    p.add_argument("job", help="job key")

    p = add("calendar", cmd_calendar, "next fire times of all active jobs")
    p.add_argument("plugin", nargs="?", help="plugin id or key")
    p.add_argument("--count", type=_count, default=3, metavar="N",
                   help="fire times per job (default: %(default)s)")

    add("backends", cmd_backends, "list the store, scheduler and runner backends", database=None)
    p = add("plugins", cmd_plugins, "list plugins, including those that failed to load",
            database=None)
    p.add_argument("--strict", action="store_true", help="exit 1 if any plugin failed to load")

    from pjcore import bench

    p = add("bench", bench.run, "measure this pjcore: burst throughput and lateness, idle CPU, "
            "sync time, due-job query latency", database=None)
    bench.add_arguments(p)
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
    database = getattr(args, "database", None)
    try:
        return args.func(args)
    except UsageError as exc:
        # exits 2, after the command's usage line
        args.command_parser.error(_scrub(str(exc), database))
    except PjError as exc:
        print(f"pjcore: error: {_one_line(_scrub(str(exc), database))}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        # A bug, or a failure pjcore does not turn into one of its errors yet:
        # still one line (a traceback is noise to an operator, and its
        # messages may quote the command line); -v adds the traceback.
        if args.verbose:
            print(_scrub("".join(traceback.format_exception(exc)), database), file=sys.stderr,
                  end="")
        print(f"pjcore: error: unexpected {type(exc).__name__}: "
              f"{_one_line(_scrub(str(exc), database)) or '(no message)'} "
              "(a bug in pjcore or a plugin; -v shows the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
