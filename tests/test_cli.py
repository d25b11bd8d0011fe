"""The ``pjcore`` command, run as a real process (the venv's console script)
on real SQLite files, with the example plugin ``examples/acme-reports``
installed where only these processes see it.

Exit status: 0 ok, 1 failure (a one-line ``pjcore: error:``), 2 bad usage.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sysconfig
import threading
from collections import Counter
from pathlib import Path

import pytest

# tests/ is on sys.path (pytest's default "prepend" import mode); the example
# plugin's installer lives with the tests of the examples.
from pjtest import install_example_plugin, plugin_env

from pjcore.contrib.peewee_store import PeeweeJobStore

#: the console script installed with this interpreter (the venv's, in a venv)
PJCORE = Path(sysconfig.get_path("scripts")) / "pjcore"
COMMANDS = ("demo", "run", "jobs", "runs", "trigger", "pause", "resume", "calendar",
            "backends", "plugins")
#: a line the CLI prints for each finished run, e.g.
#: "2026-01-01 10:00:02  succeeded  acme.reports/tick  schedule  1ms  slot 10:00:02"
RUN_LINE = re.compile(
    r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d  (?P<status>\w+) +(?P<plugin>[\w.-]+)/(?P<job>[\w-]+) +"
    r"(?P<trigger>\w+) +(?P<took>\d+(?:ms|\.\ds)|-)(?:  slot \d\d:\d\d:\d\d)?"
    r"(?: \(started [\d.]+s late\))?(?:  error: (?P<error>.*))?$"
)


@pytest.fixture(scope="session")
def site(tmp_path_factory) -> Path:
    """The directory the example plugin is installed in (shared by the session)."""
    return install_example_plugin(tmp_path_factory.getbasetemp())


def pjcore(*args: str, cwd: Path | None = None, env: dict | None = None,
           timeout: float = 60) -> subprocess.CompletedProcess:
    if not PJCORE.exists():
        pytest.fail(f"no console script {PJCORE}: install pjcore (pip install -e .)")
    return subprocess.run([str(PJCORE), *args], cwd=cwd, env=env or plugin_env(None),
                          capture_output=True, text=True, timeout=timeout)


def run_lines(output: str) -> list[re.Match]:
    return [m for m in map(RUN_LINE.match, output.splitlines()) if m]


def assert_one_line_error(done: subprocess.CompletedProcess, *fragments: str) -> None:
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pjcore: error: "), done.stderr
    for fragment in fragments:
        assert fragment in lines[0]


def open_store(database: Path) -> PeeweeJobStore:
    assert database.is_file(), f"{database} was not created"
    return PeeweeJobStore(f"sqlite:///{database}")


def all_runs(store: PeeweeJobStore, **filters) -> list:
    runs, cursor = [], None
    while True:
        page = store.list_runs(limit=1000, cursor=cursor, **filters)
        runs += page.runs
        if page.next_cursor is None:
            return runs
        cursor = page.next_cursor


# -- help and usage ---------------------------------------------------------------


def test_help_lists_every_command():
    done = pjcore("--help")
    assert done.returncode == 0
    for command in COMMANDS:
        assert re.search(rf"^\s+{command}\s", done.stdout, re.M), command
    assert "exit status: 0 ok, 1 failure, 2 bad usage" in done.stdout
    assert pjcore("--version").stdout.startswith("pjcore ")


@pytest.mark.parametrize("command, options", [
    ("demo", ["--duration", "--database", "--max-concurrent", "temporary folder"]),
    ("run", ["--duration", "--drain-timeout", "--max-concurrent", "--database",
             "sqlite:///pjcore.db"]),
    ("jobs", ["--status", "plugin"]),
    ("runs", ["--status", "--limit", "--cursor", "plugin", "job"]),
    ("trigger", ["--timeout", "plugin", "job"]),
    ("pause", ["--reason", "plugin", "job"]),
    ("resume", ["plugin", "job"]),
    ("calendar", ["--count", "plugin"]),
    ("backends", ["--verbose"]),
    ("plugins", ["--strict"]),
])
def test_each_command_has_help(command, options):
    done = pjcore(command, "--help")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"usage: pjcore {command}")
    text = " ".join(done.stdout.split())  # argparse wraps help lines
    for option in options:
        assert option in text, option


@pytest.mark.parametrize("args, message", [
    ([], "the following arguments are required: COMMAND"),
    (["--bogus"], "pjcore: error:"),
    (["jobs", "--bogus"], "unrecognized arguments: --bogus"),
    (["frobnicate"], "invalid choice: 'frobnicate'"),
    (["demo", "--duration", "-1"], "argument --duration: must be a number of seconds > 0: '-1'"),
    (["demo", "--duration", "0"], "must be a number of seconds > 0"),
    (["demo", "--duration", "nan"], "must be a number of seconds > 0"),
    (["run", "--drain-timeout", "soon"], "argument --drain-timeout: not a number: 'soon'"),
    (["calendar", "--count", "0"], "argument --count: must be between 1 and 1000: '0'"),
    (["runs", "--limit", "1001"], "argument --limit: must be between 1 and 1000"),
    (["runs", "--status", "done"], "argument --status: invalid choice: 'done'"),
    (["trigger", "acme.reports"], "the following arguments are required: job"),
])
def test_bad_usage_exits_2_with_a_message(args, message, tmp_path):
    done = pjcore(*args, cwd=tmp_path)
    assert done.returncode == 2, done
    assert "usage: pjcore" in done.stderr
    assert message in done.stderr
    assert "Traceback" not in done.stderr
    assert not list(tmp_path.iterdir()), "bad usage must not create a database"


def test_verbose_is_accepted_before_and_after_the_command(tmp_path):
    database = f"sqlite:///{tmp_path / 'v.db'}"
    before = pjcore("-v", "jobs", "--database", database)
    after = pjcore("jobs", "-v", "--database", database)
    assert before.returncode == after.returncode == 0
    # pjcore's log (to stderr) is on: the store's migrations are reported
    assert "applied migration" in before.stderr


@pytest.mark.parametrize("url, message", [
    ("nonsense", "malformed database URL"),
    ("mysql://localhost/jobs", "unsupported database URL scheme 'mysql'"),
    ("sqlite:///", "must name a database file"),
])
def test_a_bad_database_url_is_a_one_line_error(url, message, tmp_path):
    assert_one_line_error(pjcore("jobs", "--database", url, cwd=tmp_path), message)


def test_a_database_that_cannot_be_opened_is_a_one_line_error(tmp_path):
    missing = tmp_path / "no" / "such" / "dir" / "x.db"
    assert_one_line_error(pjcore("jobs", "--database", f"sqlite:///{missing}"), str(missing))


# -- demo -------------------------------------------------------------------------


def summary(output: str) -> tuple[dict[str, list[str]], Counter, str]:
    """The demo's summary table by job, its total line, and the database it reports."""
    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("job "))
    table = {}
    for line in lines[start + 2:]:
        if not line.strip():
            break
        if line.startswith("total: "):
            continue
        cells = re.split(r"\s{2,}", line)
        table[cells[0]] = cells
    total = re.search(r"^total: (\d+) runs?: (\d+) succeeded, (\d+) failed, (\d+) cancelled",
                      output, re.M)
    assert total, output
    counts = Counter(dict(zip(("runs", "succeeded", "failed", "cancelled"),
                              map(int, total.groups()))))
    database = re.search(r"^database: sqlite:///(.+)$", output, re.M)
    assert database, output
    return table, counts, database.group(1)


@pytest.mark.slow
def test_demo_runs_real_jobs_and_records_them(tmp_path):
    # The default database goes in a new temporary folder: keep it in tmp_path.
    done = pjcore("demo", "--duration", "4", cwd=tmp_path,
                  env=plugin_env(None, TMPDIR=str(tmp_path)))
    assert done.returncode == 0, done.stderr
    lines = run_lines(done.stdout)
    by_job = Counter((m["job"], m["status"]) for m in lines)
    assert by_job["heartbeat", "succeeded"] >= 1, done.stdout
    assert by_job["flaky-sync", "failed"] >= 1, done.stdout
    assert all(m["error"] == "upstream returned 503 Service Unavailable"
               for m in lines if m["job"] == "flaky-sync")
    assert "4s elapsed: draining runs in flight" in done.stdout

    table, total, database = summary(done.stdout)
    assert set(table) == {"heartbeat", "slow-report", "flaky-sync", "async-ping",
                          "nightly-cleanup"}
    assert table["nightly-cleanup"][1:3] == ["0 3 * * *", "0"]
    # every printed run is in the table, the total and the database
    assert total["runs"] == len(lines) == sum(int(row[2]) for row in table.values())
    assert total["succeeded"] == sum(m["status"] == "succeeded" for m in lines)
    assert total["failed"] == by_job["flaky-sync", "failed"]
    assert Path(database).parent.parent == tmp_path
    store = open_store(Path(database))
    try:
        runs = all_runs(store, plugin_id="pjcore.demo")
    finally:
        store.close()
    assert len(runs) == total["runs"]
    assert Counter(r.status.value for r in runs) == Counter(
        {s: n for s, n in total.items() if s != "runs" and n})
    failed = [r for r in runs if r.status.value == "failed"]
    assert {r.job_key for r in failed} == {"flaky-sync"}
    assert all("503" in r.error and "ConnectionError" in r.error_detail for r in failed)


@pytest.mark.slow
def test_demo_on_a_given_database_summarises_only_its_own_runs(tmp_path):
    database = tmp_path / "x.db"
    # Short: heartbeat fires every 2 s, so the second session has runs; the
    # first may or may not, either way they must not be counted twice.
    first = pjcore("demo", "--duration", "1", "--database", f"sqlite:///{database}")
    second = pjcore("demo", "--duration", "2", "--database", f"sqlite:///{database}")
    assert first.returncode == second.returncode == 0, (first.stderr, second.stderr)
    totals = []
    for done in (first, second):
        _, total, reported = summary(done.stdout)
        assert reported == str(database)
        assert total["runs"] == len(run_lines(done.stdout))
        totals.append(total["runs"])
    assert totals[1] >= 1
    store = open_store(database)
    try:
        assert len(all_runs(store)) == sum(totals)
    finally:
        store.close()


# -- run, with the example plugin --------------------------------------------------


class Running:
    """A ``pjcore run`` process whose output is read as it comes."""

    def __init__(self, args: list[str], env: dict, cwd: Path) -> None:
        self.stderr_path = cwd / "stderr.txt"
        with self.stderr_path.open("w") as stderr:
            self.proc = subprocess.Popen([str(PJCORE), *args], env=env, cwd=cwd, text=True,
                                         stdout=subprocess.PIPE, stderr=stderr)
        self.lines: list[str] = []
        self.changed = threading.Condition()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            with self.changed:
                self.lines.append(line.rstrip("\n"))
                self.changed.notify_all()

    def wait_for_runs(self, job: str, count: int, timeout: float) -> None:
        def enough() -> bool:
            return sum(m["job"] == job for m in run_lines("\n".join(self.lines))) >= count

        with self.changed:
            if not self.changed.wait_for(enough, timeout):
                self.proc.kill()
                pytest.fail(f"fewer than {count} {job} runs after {timeout}s:\n" + self.output)

    def finish(self, timeout: float = 30) -> int:
        try:
            code = self.proc.wait(timeout)
        finally:
            self.proc.kill()
        self.reader.join(5)
        return code

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text()


def check_ticks(database: Path, outbox: Path, printed: list[re.Match]) -> list:
    """The store, the printed lines and the handler's outbox agree on the tick runs."""
    store = open_store(database)
    try:
        tick = store.get_job_by_key("acme.reports", "tick")
        runs = all_runs(store, job_id=tick.id)
    finally:
        store.close()
    assert runs and all(r.status.value == "succeeded" for r in runs), runs
    assert len(runs) == sum(m["job"] == "tick" and m["status"] == "succeeded" for m in printed)
    records = [json.loads(line) for line in outbox.read_text().splitlines()]
    ticks = [r for r in records if r["job"] == "tick"]
    # one outbox line per run, and no slot twice
    assert sorted(r["run"] for r in ticks) == sorted(r.id for r in runs)
    slots = [r["slot"] for r in ticks]
    assert len(set(slots)) == len(slots)
    assert set(slots) == {r.scheduled_for.isoformat() for r in runs}
    return runs


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_run_drains_and_exits_0_on_a_signal(signum, site, tmp_path):
    database, outbox = tmp_path / "run.db", tmp_path / "outbox.jsonl"
    running = Running(["run", "--database", f"sqlite:///{database}"],
                      env=plugin_env(site, ACME_OUTBOX=str(outbox)), cwd=tmp_path)
    running.wait_for_runs("tick", 2, timeout=20)
    running.proc.send_signal(signum)
    assert running.finish() == 0, running.stderr
    out = running.output
    assert out.splitlines()[0] == (f"pjcore running on sqlite:///{database} with plugins: "
                                   "acme.reports; Ctrl-C to stop")
    assert f"received {signum.name}: draining runs in flight (up to 30s)..." in out
    assert re.search(r"^stopped after \d+ runs: \d+ succeeded, 0 failed, 0 cancelled$", out, re.M)
    assert "Traceback" not in running.stderr
    check_ticks(database, outbox, run_lines(out))


# -- the other commands, on the database of a finished `pjcore run` ----------------


@pytest.fixture(scope="module")
def ran(site, tmp_path_factory):
    """A database (and outbox) after ``pjcore run`` ran the example plugin for a while."""
    folder = tmp_path_factory.mktemp("ran")
    database, outbox = folder / "run.db", folder / "outbox.jsonl"
    env = plugin_env(site, ACME_OUTBOX=str(outbox))
    done = pjcore("run", "--duration", "4.5", "--database", f"sqlite:///{database}",
                  cwd=folder, env=env)
    assert done.returncode == 0, done.stderr
    assert "4.5s elapsed: draining runs in flight" in done.stdout
    ticks = check_ticks(database, outbox, run_lines(done.stdout))
    assert len(ticks) >= 2

    def cli(*args: str) -> subprocess.CompletedProcess:
        return pjcore(*args, "--database", f"sqlite:///{database}", cwd=folder, env=env)

    cli.database, cli.outbox, cli.ticks = database, outbox, ticks
    return cli


def table_rows(output: str) -> list[list[str]]:
    lines = output.splitlines()
    assert set(lines[1]) <= {"-", " "}, output  # the rule under the headers
    return [re.split(r"\s{2,}", line) for line in lines[2:] if line and not line.startswith("more:")]


def test_jobs_lists_the_plugin_jobs(ran):
    done = ran("jobs")
    assert done.returncode == 0, done.stderr
    rows = {row[1]: row for row in table_rows(done.stdout)}
    assert set(rows) == {"hourly-digest", "tick", "rebuild-index"}
    assert rows["tick"][:5] == ["acme.reports", "tick", "active", "*/2 * * * * *", "UTC"]
    assert rows["rebuild-index"][3] == "(manual)"
    assert ran("jobs", "acme.reports").stdout == done.stdout
    # no trailing blanks: an empty last column leaves no padding behind
    assert all(line == line.rstrip() for line in done.stdout.splitlines())


def test_runs_lists_and_pages(ran):
    newest_first = [r.id for r in ran.ticks]
    done = ran("runs", "acme.reports", "tick", "--limit", "3")
    assert done.returncode == 0, done.stderr
    assert [row[0] for row in table_rows(done.stdout)] == newest_first[:3]
    assert all(row[1:4] == ["tick", "schedule", "succeeded"] for row in table_rows(done.stdout))

    seen, cursor = [], None
    for _ in range(len(newest_first) + 1):
        page = ran("runs", "acme.reports", "tick", "--limit", "1",
                   *(["--cursor", cursor] if cursor else []))
        assert page.returncode == 0, page.stderr
        seen += [row[0] for row in table_rows(page.stdout)]
        more = re.search(r"^more: --cursor (\S+)$", page.stdout, re.M)
        if more is None:
            break
        cursor = more.group(1)
    assert seen == newest_first


def test_pause_then_resume(ran):
    done = ran("pause", "acme.reports", "tick", "--reason", "maintenance")
    assert (done.returncode, done.stdout) == (0, "acme.reports/tick: paused (maintenance)\n")
    paused = table_rows(ran("jobs", "--status", "paused").stdout)
    assert [(r[1], r[2], r[-1]) for r in paused] == [("tick", "paused", "maintenance")]
    assert "acme.reports/tick" not in ran("calendar").stdout
    # a paused job cannot be triggered
    assert_one_line_error(ran("trigger", "acme.reports", "tick"), "tick")

    done = ran("resume", "acme.reports", "tick")
    assert done.returncode == 0, done.stderr
    assert re.fullmatch(r"acme.reports/tick: active, next \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC\n",
                        done.stdout)
    assert [r[1] for r in table_rows(ran("jobs", "--status", "paused").stdout)] == []


def test_calendar_shows_the_next_fire_times(ran):
    done = ran("calendar", "--count", "2")
    assert done.returncode == 0, done.stderr
    rows = table_rows(done.stdout)
    assert Counter(row[-1] for row in rows) == {"acme.reports/tick": 2,
                                                "acme.reports/hourly-digest": 2}
    assert [row[0] for row in rows] == sorted(row[0] for row in rows)
    digest = [row[0] for row in rows if row[-1].endswith("hourly-digest")]
    assert all(t.endswith(":00:00") for t in digest)


def test_trigger_runs_the_job_and_waits_for_it(ran):
    store = open_store(ran.database)
    try:
        before = {r.id for r in all_runs(store)}
    finally:
        store.close()
    done = ran("trigger", "acme.reports", "rebuild-index")
    assert done.returncode == 0, done.stderr
    started = re.search(r"^run (\S+) of acme.reports/rebuild-index started$", done.stdout, re.M)
    assert started, done.stdout
    [line] = run_lines(done.stdout)
    assert (line["job"], line["trigger"], line["status"]) == ("rebuild-index", "manual",
                                                              "succeeded")
    store = open_store(ran.database)
    try:
        after = all_runs(store)
    finally:
        store.close()
    # Only the manual run was added: the trigger process ran no scheduled slot
    # (nor recorded missed ones) although `tick` was overdue.
    [new] = [r for r in after if r.id not in before]
    assert (new.id, new.job_key, new.status.value) == (started.group(1), "rebuild-index",
                                                       "succeeded")
    assert any(json.loads(x)["run"] == new.id for x in ran.outbox.read_text().splitlines())


def test_trigger_cancels_a_run_that_outlasts_its_timeout(ran):
    done = ran("trigger", "acme.reports", "rebuild-index", "--timeout", "0.1")
    assert done.returncode == 1
    run_id = re.search(r"^run (\S+) of", done.stdout, re.M).group(1)
    assert done.stderr == f"pjcore: error: run {run_id} did not finish within 0.1s; cancelled\n"
    store = open_store(ran.database)
    try:
        assert store.get_run(run_id).status.value == "cancelled"
    finally:
        store.close()


@pytest.mark.parametrize("args, fragments", [
    (["trigger", "acme.reports", "nope"], ["nope", "acme.reports"]),
    (["trigger", "nope", "tick"], ["unknown plugin 'nope'", "acme.reports"]),
    (["pause", "nope", "tick"], ["unknown plugin 'nope'"]),
    (["pause", "acme.reports", "nope"], ["nope"]),
    (["resume", "acme.reports", "nope"], ["nope"]),
    (["runs", "acme.reports", "nope"], ["nope"]),
    (["jobs", "nope"], ["unknown plugin 'nope'"]),
    (["calendar", "nope"], ["unknown plugin 'nope'"]),
])
def test_unknown_plugins_and_jobs_are_one_line_errors(ran, args, fragments):
    assert_one_line_error(ran(*args), *fragments)


def test_triggering_an_undeclared_job_writes_nothing(site, tmp_path):
    database = tmp_path / "fresh.db"
    done = pjcore("trigger", "acme.reports", "rebuild-indx", "--database",
                  f"sqlite:///{database}", cwd=tmp_path, env=plugin_env(site))
    assert_one_line_error(done, "Job not found: rebuild-indx for plugin 'acme.reports'")
    store = open_store(database)
    try:
        assert store.list_jobs() == []
    finally:
        store.close()


def test_a_malformed_cursor_is_bad_usage(ran):
    done = ran("runs", "--cursor", "garbage")
    assert done.returncode == 2
    assert "pjcore runs: error: argument --cursor: malformed cursor 'garbage'" in done.stderr
    assert "Traceback" not in done.stderr


def test_plugins_lists_the_example_plugin_and_its_distribution(site):
    done = pjcore("plugins", env=plugin_env(site))
    assert done.returncode == 0, done.stderr
    rows = {row[0]: row for row in table_rows(done.stdout)}
    assert rows["acme_reports"] == ["acme_reports", "acme-reports", "1.0.0", "loaded"]
    assert rows["pjcore.contrib.defaults"][1:] == ["(built-in)", "-", "loaded"]


def test_backends_lists_the_builtin_backends(site):
    done = pjcore("backends", env=plugin_env(site))
    assert done.returncode == 0, done.stderr
    assert sorted(map(tuple, table_rows(done.stdout))) == [
        ("runner", "thread", "pjcore.contrib.defaults"),
        ("scheduler", "thread", "pjcore.contrib.defaults"),
        ("store", "memory", "pjcore.contrib.defaults"),
        ("store", "peewee", "pjcore.contrib.defaults"),
    ]


# -- a plugin that fails to load -----------------------------------------------------


@pytest.fixture
def broken_site(site, tmp_path) -> Path:
    """The example plugin plus a distribution whose import raises.

    Written by hand: an installed distribution is only a module and a
    ``.dist-info`` folder, and importlib.metadata reads nothing else.
    """
    folder = tmp_path / "broken-site"
    (folder / "pjcore_halfbaked").mkdir(parents=True)
    (folder / "pjcore_halfbaked" / "__init__.py").write_text(
        'raise RuntimeError("HALFBAKED_API_KEY is not set")\n')
    info = folder / "pjcore_halfbaked-0.2.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: pjcore-halfbaked\nVersion: 0.2.0\n")
    (info / "entry_points.txt").write_text("[pjcore]\nhalfbaked = pjcore_halfbaked\n")
    return folder


def test_plugins_lists_a_plugin_that_failed_to_load_and_why(site, broken_site):
    env = plugin_env(site)
    env["PYTHONPATH"] = os.pathsep.join([str(broken_site), str(site)])
    done = pjcore("plugins", env=env)
    assert done.returncode == 0, done.stderr
    rows = {row[0]: row for row in table_rows(done.stdout)}
    assert rows["halfbaked"] == ["halfbaked", "pjcore-halfbaked", "0.2.0", "FAILED",
                                 "RuntimeError: HALFBAKED_API_KEY is not set"]
    assert rows["acme_reports"][3] == "loaded"  # the others still load

    assert pjcore("plugins", "--strict", env=env).returncode == 1

    # `pjcore run` says so too, and runs the plugins that did load.
    done = pjcore("run", "--duration", "0.5", "--database",
                  f"sqlite:///{broken_site.parent / 'b.db'}", env=env, cwd=broken_site.parent)
    assert done.returncode == 0, done.stderr
    assert ("plugin halfbaked failed to load: RuntimeError: HALFBAKED_API_KEY is not set"
            in done.stderr)
    assert "with plugins: acme.reports;" in done.stdout
