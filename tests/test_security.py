"""Security: a handler reaches only its own plugin's jobs, identifiers never
reach SQL text, and database passwords never reach reprs, errors, logs or the
terminal (issue 4, point 5).

Tests marked ``xfail(strict=True)`` document a fix that belongs to a module
outside this change; each names it. They fail loudly (XPASS) once it lands,
so the marker gets removed.
"""

from __future__ import annotations

import ast
import inspect
import re
import subprocess
import sysconfig
import threading
import traceback
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pjtest
import pytest
from loguru import logger

from conftest import make_postgres_store
from pjcore import Host, ManualClock
from pjcore.context import JobContext, PluginJobs
from pjcore.exceptions import (
    ConfigurationError,
    InvalidArgument,
    JobAlreadyRunning,
    JobLookupError,
    JobNotActive,
    PluginNotRunning,
    RunLookupError,
    StoreError,
)
from pjcore.hookspecs import hookimpl
from pjcore.manifest import JobDeclaration
from pjcore.models import JobStatus, RunStatus, RunTrigger

ROOT = Path(__file__).resolve().parent.parent
PJCORE = Path(sysconfig.get_path("scripts")) / "pjcore"
UTC = timezone.utc
T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
SECRET = "s3cret"

A_ID, A_KEY = "plugin-a", "alpha"
B_ID, B_KEY = "plugin-b", "beta"


def manifest(key: str, *job_keys: str) -> dict:
    # manual-only jobs: nothing fires on its own while a test looks
    return {"key": key, "jobs": [{"job_key": k, "display_name": k.title()} for k in job_keys]}


def wait_for(condition, timeout: float = 10.0, what: str = "condition"):
    return pjtest.wait_for(condition, timeout, what, poll=0.005)


class Handlers:
    """Handlers for every job of both plugins; a gate holds runs in flight."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.gate.set()
        self.calls: list[tuple[str, str]] = []
        self.probe = None  # called with the context by alpha/sync, if set

    def _handler(self, ctx) -> None:
        self.calls.append((ctx.plugin_id, ctx.job_key))
        if self.probe is not None and (ctx.plugin_key, ctx.job_key) == (A_KEY, "sync"):
            self.probe(ctx)
        while not self.gate.is_set() and not ctx.cancelled:
            ctx.wait(0.005)

    @hookimpl
    def register_job_handlers(self, register):
        for plugin_key in (A_KEY, B_KEY):
            for job_key in ("sync", "report", "only-b"):
                register(plugin_key, job_key, self._handler)


def started(host) -> Host:
    host.start()
    return host


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database(request, tmp_path):
    """``(url, store_options)`` of an empty database of each engine."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/jobs.db", {}
        return
    url = request.getfixturevalue("postgres_url")
    prefix = f"pjt_{uuid.uuid4().hex[:8]}_"
    yield url, {"table_prefix": prefix}
    with make_postgres_store(url, table_prefix=prefix):
        pass  # dropped on exit


@pytest.fixture
def handlers() -> Handlers:
    return Handlers()


@pytest.fixture
def host(database, handlers):
    """A started Host with plugin A (sync, report) and plugin B (sync, report,
    only-b): the same job keys in two plugins."""
    url, options = database
    host = Host(url, plugins=[handlers], load_entrypoints=False, clock=ManualClock(T0),
                store_options=options, default_timeout=None)
    started(host)
    host.load_plugin(A_ID, A_KEY, manifest(A_KEY, "sync", "report"))
    host.load_plugin(B_ID, B_KEY, manifest(B_KEY, "sync", "report", "only-b"))
    yield host
    handlers.gate.set()
    host.stop(timeout=5)


def finished(host, run_id: str):
    return wait_for(lambda: (r := host.run(run_id)) is not None and r.status.terminal and r,
                    what=f"run {run_id} finished")


def settle(host) -> None:
    wait_for(lambda: not host.diagnostics()["active_run_ids"], what="no run in flight")


def jobs_of(host, plugin_id: str) -> PluginJobs:
    return PluginJobs(host.store, host.scheduler, plugin_id, host.job(plugin_id, "sync").plugin_key)


# -- a handler reaches only its own plugin's jobs ---------------------------------------


def test_plugin_jobs_lists_and_gets_only_its_own_jobs(host):
    a = jobs_of(host, A_ID)
    assert (a.plugin_id, a.plugin_key) == (A_ID, A_KEY)
    assert [(j.plugin_id, j.job_key) for j in a.list()] == [(A_ID, "report"), (A_ID, "sync")]
    assert a.get("sync") == host.job(A_ID, "sync")
    assert a.get("sync") != host.job(B_ID, "sync")  # same key, the other plugin's job
    host.pause(A_ID, "report")
    assert [j.job_key for j in a.list(status="paused")] == ["report"]
    assert [j.job_key for j in a.list(status=JobStatus.active)] == ["sync"]


def test_another_plugins_job_is_not_found_by_key_or_by_id(host, handlers):
    a = jobs_of(host, A_ID)
    b_sync, b_only = host.job(B_ID, "sync"), host.job(B_ID, "only-b")
    for key_or_id in ("only-b", b_sync.id, b_only.id, B_ID, B_KEY, f"{B_ID}/sync"):
        with pytest.raises(JobLookupError):
            a.get(key_or_id)
        with pytest.raises(JobLookupError):
            a.trigger(key_or_id)
        with pytest.raises(JobLookupError):
            a.runs(key_or_id)
    assert host.runs(B_ID).runs == ()  # nothing of B was started
    assert handlers.calls == []


def test_runs_are_only_the_plugins_own(host):
    a, b = jobs_of(host, A_ID), jobs_of(host, B_ID)

    def run(jobs: PluginJobs, job_key: str) -> str:
        host.clock.advance(1)  # runs are listed newest first
        return finished(host, jobs.trigger(job_key)).id

    mine = [run(a, "sync")]
    theirs = [run(b, "sync"), run(b, "only-b")]
    mine.append(run(a, "report"))
    assert [r.id for r in a.runs().runs] == mine[::-1]
    assert [r.id for r in a.runs("sync").runs] == mine[:1]
    assert {r.id for r in b.runs().runs} == set(theirs)
    # paging with cursors never leaves the plugin
    seen, cursor = [], None
    while True:
        page = a.runs(limit=1, cursor=cursor)
        seen += [r.id for r in page.runs]
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert seen == mine[::-1]
    assert a.run(mine[0]).plugin_id == A_ID
    for run_id in theirs + ["no-such-run"]:
        with pytest.raises(RunLookupError):
            a.run(run_id)


def test_trigger_goes_through_every_guard(host, handlers):
    a = jobs_of(host, A_ID)
    run_id = a.trigger("sync")
    run = finished(host, run_id)
    assert (run.plugin_id, run.job_key, run.trigger) == (A_ID, "sync", RunTrigger.manual)
    host.pause(A_ID, "report")
    with pytest.raises(JobNotActive):
        a.trigger("report")
    handlers.gate.clear()
    a.trigger("sync")
    with pytest.raises(JobAlreadyRunning):
        a.trigger("sync")
    handlers.gate.set()
    settle(host)
    host.disable_plugin(A_ID, A_KEY, reason="maintenance")
    with pytest.raises(PluginNotRunning):
        a.trigger("sync")


def test_no_method_takes_a_plugin_or_a_job_id():
    public = [m for name, m in inspect.getmembers(PluginJobs, inspect.isfunction)
              if not name.startswith("_")]
    assert {m.__name__ for m in public} == {"list", "get", "runs", "run", "trigger"}
    for method in public:
        params = set(inspect.signature(method).parameters) - {"self"}
        assert not {p for p in params if "plugin" in p or p == "job_id"}, method.__name__


def test_plugin_jobs_repr_shows_neither_store_nor_scheduler(host):
    a = jobs_of(host, A_ID)
    assert repr(a) == f"PluginJobs(plugin_id={A_ID!r}, plugin_key={A_KEY!r})"


@pytest.mark.parametrize("call", [
    lambda a: a.get(["sync", "report"]),  # a list would become SQL ``IN``
    lambda a: a.get(None),
    lambda a: a.get(""),
    lambda a: a.get("sync\x00"),
    lambda a: a.get("x" * 10_000),
    lambda a: a.trigger(5),
    lambda a: a.runs(("sync",)),
    lambda a: a.runs(status="done"),
    lambda a: a.runs(limit=0),
    lambda a: a.runs(limit=10**5000),
    lambda a: a.runs(cursor=5),
    lambda a: a.runs(cursor="not a cursor"),
    lambda a: a.run(5),
    lambda a: a.list(status=5),
])
def test_bad_arguments_are_invalid_argument(host, call):
    with pytest.raises(InvalidArgument):
        call(jobs_of(host, A_ID))
    assert host.runs().runs == ()


def test_plugin_jobs_needs_a_plugin():
    with pytest.raises(InvalidArgument):
        PluginJobs(None, None, None, A_KEY)


def test_a_context_without_jobs_still_builds():
    ctx = JobContext(plugin_id=A_ID, plugin_key=A_KEY, job_key="sync", run_id="r",
                     trigger=RunTrigger.manual, scheduled_for=T0, logger=logger)
    assert ctx.jobs is None


def test_a_handler_reaches_only_its_own_plugin_through_a_host(host, handlers):
    seen: dict[str, Any] = {}

    def probe(ctx) -> None:
        jobs = ctx.jobs
        seen["jobs"] = [(j.plugin_id, j.job_key) for j in jobs.list()]
        seen["own runs"] = [r.plugin_id for r in jobs.runs().runs]
        for name, attempt in [("by key", lambda: jobs.get("only-b")),
                              ("by id", lambda: jobs.get(host.job(B_ID, "sync").id)),
                              ("trigger", lambda: jobs.trigger("only-b"))]:
            try:
                attempt()
                seen[name] = "reached"
            except JobLookupError:
                seen[name] = "not found"
        seen["triggered"] = jobs.trigger("report")

    handlers.probe = probe
    finished(host, host.trigger(B_ID, "sync"))
    run = finished(host, host.trigger(A_ID, "sync"))
    assert run.status is RunStatus.succeeded, run.error
    assert seen["jobs"] == [(A_ID, "report"), (A_ID, "sync")]
    assert set(seen["own runs"]) == {A_ID}
    assert (seen["by key"], seen["by id"], seen["trigger"]) == ("not found",) * 3
    triggered = finished(host, seen["triggered"])
    assert (triggered.plugin_id, triggered.job_key) == (A_ID, "report")
    assert [r.job_key for r in host.runs(B_ID).runs] == ["sync"]


# -- identifiers never reach SQL text --------------------------------------------------

NASTY = [
    "'; DROP TABLE pj_jobs; --",
    '" OR 1=1 --',
    "' OR '1'='1",
    "Robert'); DROP TABLE pj_runs;--",
    "\\",
    "\\'; SELECT 1; --",
    "%s %(x)s ? $1 :name",
    "a`b\"c'd",
    "line\nbreak\r\ttab",
    "日本語 ünïcödé 🎉 \u202eRTL",
    "x" * 200,  # the longest plugin id the coordinator accepts
    "🎉" * 200,  # 800 bytes of UTF-8
]
LONG_TEXT = "'; DROP TABLE pj_runs; -- " * 4000  # 100,000 characters of free text


@pytest.mark.parametrize("text", NASTY + [LONG_TEXT],
                         ids=[f"nasty{i}" for i in range(len(NASTY))] + ["long"])
def test_nasty_strings_round_trip_through_every_store_operation(store, text):
    ident = text if len(text) <= 200 else text[:200]  # plugin ids are bounded, texts are not
    decls = [JobDeclaration(job_key="sync", display_name="Sync", schedule="*/5 * * * *"),
             JobDeclaration(job_key="manual", display_name="Manual")]
    bystander = store.sync_jobs("bystander", "bystander", decls, now=T0)
    assert store.sync_jobs(ident, ident, decls, now=T0).inserted == ("sync", "manual")

    jobs = {j.job_key: j for j in store.list_jobs(ident)}
    assert {(j.plugin_id, j.plugin_key) for j in jobs.values()} == {(ident, ident)}
    sync, manual = jobs["sync"], jobs["manual"]
    assert store.get_job_by_key(ident, "sync") == sync
    assert store.get_job_for_plugin(ident, sync.id) == sync
    for lookup in (lambda: store.get_job(ident), lambda: store.get_job_by_key(ident, ident),
                   lambda: store.get_job_by_key("bystander", ident),
                   lambda: store.get_job_for_plugin(ident + "'", sync.id),
                   lambda: store.get_run(ident)):
        assert lookup() is None
    assert store.list_jobs(ident + "' OR ''='") == []

    paused = store.pause_job(sync.id, reason=text, now=T0)
    assert paused.status_reason == text
    resumed = store.resume_job(sync.id, now=T0)
    assert resumed.status is JobStatus.active
    slot = resumed.next_run_at
    assert store.due_jobs(slot, plugin_ids=[ident, text]) == [resumed]
    assert store.next_due_at(plugin_ids=[ident]) == slot

    lease = T0 + timedelta(minutes=1)
    claim = store.claim_slot(sync.id, expected=slot, run_slot=slot,
                             next_run_at=slot + timedelta(minutes=5), now=slot,
                             owner=text, lease_until=lease)
    assert claim.applied and claim.run.owner == text
    assert store.mark_running(claim.run.id, now=slot, owner=text, lease_until=lease)
    assert store.renew_leases(text, [claim.run.id, ident], lease_until=lease, now=slot) == \
        [claim.run.id]
    assert store.complete_run(claim.run.id, status="failed", now=slot, error=text,
                              error_detail=text)
    done = store.get_run(claim.run.id)
    assert (done.plugin_id, done.owner, done.error, done.error_detail) == (ident, text, text, text)

    later = slot + timedelta(seconds=1)
    abandoned = store.create_run(manual.id, trigger="manual", now=later, owner=text,
                                 lease_until=lease)
    (gone,) = store.abandon_runs(now=later, owner=text)
    assert gone.id == abandoned.id and text in gone.error
    cancelled = store.create_run(manual.id, trigger="manual", now=later + timedelta(seconds=1))
    assert store.cancel_runs(ident, reason=text, now=later) == [cancelled.id]
    assert store.get_run(cancelled.id).error == text

    page = store.list_runs(plugin_id=ident)
    assert [r.id for r in page.runs] == [cancelled.id, abandoned.id, claim.run.id]
    assert store.list_runs(plugin_id=text + "'").runs == ()
    # a well-formed cursor whose id part is SQL: a value, compared, nothing more
    assert store.list_runs(plugin_id=ident, cursor=f"{2**62}:{text[:150]}").runs == page.runs
    assert store.set_next_run(sync.id, expected=claim.run.scheduled_for + timedelta(minutes=5),
                              next_run_at=None, now=later)
    assert store.prune_runs(now=later, keep_per_job=0) == 3

    assert store.delete_plugin(ident) == 2
    assert store.list_jobs(ident) == []
    # the tables and the other plugin's rows are all still there
    assert [j.job_key for j in store.list_jobs("bystander")] == list(bystander.inserted[::-1])
    if hasattr(store, "database"):
        tables = set(store.database.get_tables())
        assert {f"{store.table_prefix}{t}" for t in ("jobs", "runs", "schema")} <= tables


def test_sql_looking_lookups_through_the_host_find_nothing(host):
    before = (host.jobs(), host.runs().runs)
    for text in NASTY:
        with pytest.raises(JobLookupError):
            host.job(text, "sync")
        with pytest.raises(JobLookupError):
            host.job(A_ID, text)
        assert host.jobs(text) == []
        assert host.runs(text).runs == ()
        assert host.run(text) is None
        with pytest.raises(JobLookupError):
            host.pause(A_ID, text, reason=text)
    assert (host.jobs(), host.runs().runs) == before


def test_sql_looking_plugin_ids_and_reasons_through_the_hooks(host):
    ids = [t for t in NASTY if t.strip()]
    for plugin_id in ids:
        host.load_plugin(plugin_id, A_KEY, manifest(A_KEY, "sync"))
    for plugin_id in ids:
        job = host.job(plugin_id, "sync")
        assert (job.plugin_id, job.plugin_key) == (plugin_id, A_KEY)
        run = finished(host, host.trigger(plugin_id, "sync"))
        assert run.plugin_id == plugin_id
        host.pause(plugin_id, "sync", reason=plugin_id)
        assert host.job(plugin_id, "sync").status_reason == plugin_id
        host.disable_plugin(plugin_id, A_KEY, reason=plugin_id)
        host.unload_plugin(plugin_id, A_KEY, remove_data=True)
        assert host.jobs(plugin_id) == []
    assert [j.plugin_id for j in host.jobs()] == [A_ID, A_ID, B_ID, B_ID, B_ID]


def test_nul_characters_never_reach_the_database(host):
    # PostgreSQL cannot hold NUL in text, and its driver raises ValueError
    for call in (lambda: host.job("a\x00", "sync"), lambda: host.job(A_ID, "sync\x00"),
                 lambda: host.jobs("\x00"), lambda: host.runs("\x00"), lambda: host.run("\x00"),
                 lambda: host.pause(A_ID, "sync", reason="why\x00")):
        with pytest.raises(InvalidArgument, match="NUL"):
            call()


@pytest.mark.parametrize("engine", ["sqlite", pytest.param("postgres",
                                                           marks=pytest.mark.postgres)])
def test_a_handler_error_with_a_nul_character_is_recorded(engine, tmp_path, request):
    if engine == "sqlite":
        url, options = f"sqlite:///{tmp_path}/jobs.db", {}
    else:
        url, options = request.getfixturevalue("postgres_url"), {
            "table_prefix": f"pjt_{uuid.uuid4().hex[:8]}_"}

    class Failing:
        @hookimpl
        def register_job_handlers(self, register):
            def fail(ctx):
                raise RuntimeError("bad byte \x00 here")
            register(A_KEY, "sync", fail)

    host = Host(url, plugins=[Failing()], load_entrypoints=False, clock=ManualClock(T0),
                store_options=options)
    try:
        started(host)
        host.load_plugin(A_ID, A_KEY, manifest(A_KEY, "sync"))
        run_id = host.trigger(A_ID, "sync")
        run = wait_for(lambda: (r := host.run(run_id)).status.terminal and r, timeout=3,
                       what="the failed run recorded")
        assert run.status is RunStatus.failed and "bad byte" in run.error
    finally:
        host.stop(timeout=1)
        if engine == "postgres":
            with make_postgres_store(url, table_prefix=options["table_prefix"]):
                pass


SQL_WORDS = re.compile(r"\b(SELECT|INSERT|UPDATE|DELETE|DROP|CREATE|ALTER|PRAGMA|BEGIN|WHERE|"
                       r"FROM|VALUES|SET)\b")
RAW_SQL_CALLS = {"execute_sql", "execute", "executescript", "SQL", "raw", "Raw"}


def _string_parts(node: ast.AST) -> str:
    return " ".join(n.value for n in ast.walk(node)
                    if isinstance(n, ast.Constant) and isinstance(n.value, str))


def _prepared_sql(arg: ast.AST) -> bool:
    """``stmt.sql`` of a prepared hot-path statement: text peewee's query
    builder produced (checked below), run with its bound parameters."""
    return isinstance(arg, ast.Attribute) and arg.attr == "sql" \
        and isinstance(arg.value, ast.Name) and arg.value.id == "stmt"


def test_prepared_statements_take_their_sql_from_peewee_only():
    tree = ast.parse((ROOT / "contrib" / "peewee_store.py").read_text())
    prepared = next(n for n in ast.walk(tree) if isinstance(n, ast.ClassDef)
                    and n.name == "_Prepared")
    writes = [n for n in ast.walk(prepared) if isinstance(n, ast.Assign)
              and any(isinstance(t, ast.Tuple) and any(
                  isinstance(e, ast.Attribute) and e.attr == "sql" for e in t.elts)
                  or isinstance(t, ast.Attribute) and t.attr == "sql" for t in n.targets)]
    assert len(writes) == 1
    # self.sql, params = query.sql(): a peewee query compiled by peewee
    call = writes[0].value
    assert isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute)
    assert call.func.attr == "sql" and isinstance(call.func.value, ast.Name)
    assert call.func.value.id == "query" and not call.args


def test_the_peewee_store_builds_no_sql_from_strings():
    """Raw SQL in the store is a constant with parameters; everything else is
    peewee's query builder, which binds every value."""
    path = ROOT / "contrib" / "peewee_store.py"
    tree = ast.parse(path.read_text())
    offenders = []
    for node in ast.walk(tree):
        where = f"{path.name}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Call):
            name = getattr(node.func, "attr", getattr(node.func, "id", None))
            if name in RAW_SQL_CALLS and node.args and not (
                    isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)
            ) and not _prepared_sql(node.args[0]):
                offenders.append(f"{where}: {name}() with SQL that is not a constant string")
            if name == "format" and SQL_WORDS.search(_string_parts(node.func)):
                offenders.append(f"{where}: SQL built with str.format")
        elif isinstance(node, ast.JoinedStr) and SQL_WORDS.search(_string_parts(node)):
            offenders.append(f"{where}: SQL built with an f-string")
        elif (isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Mod, ast.Add))
              and SQL_WORDS.search(_string_parts(node))):
            offenders.append(f"{where}: SQL built with % or +")
    assert offenders == []
    # the check itself sees what it is looking for
    bad = ast.parse('db.execute_sql(f"SELECT * FROM t WHERE id = {x}")\n'
                    'q = "DELETE FROM t WHERE id = %s" % x\n')
    assert any(isinstance(n, ast.JoinedStr) for n in ast.walk(bad))
    assert SQL_WORDS.search(_string_parts(bad))


def test_table_prefixes_cannot_carry_sql(tmp_path):
    for prefix in ("pj; DROP TABLE x; --", "pj_\"", "PJ_", ""):
        with pytest.raises(ConfigurationError, match="table_prefix"):
            Host(f"sqlite:///{tmp_path}/x.db", load_entrypoints=False,
                 store_options={"table_prefix": prefix})


# -- passwords never appear ----------------------------------------------------------


def with_password(url: str, password: str = SECRET, port: int | None = None) -> str:
    parts = urlsplit(url)
    host = parts.hostname or "127.0.0.1"
    netloc = f"{parts.username or 'postgres'}:{password}@{host}:{port or parts.port or 5432}"
    return urlunsplit(parts._replace(netloc=netloc))


def assert_no_secret(*texts: str) -> None:
    for text in texts:
        assert SECRET not in text, text


def error_texts(exc: BaseException) -> list[str]:
    """Everything a host application may print of an error: str, repr, the
    formatted traceback, and the same of every chained cause."""
    texts = ["".join(traceback.format_exception(exc))]
    while exc is not None:
        texts += [str(exc), repr(exc)]
        exc = exc.__cause__ or exc.__context__
    return texts


@pytest.fixture
def password_url(postgres_url) -> str:
    """The test server with a password in the URL (trust auth ignores it)."""
    url = with_password(postgres_url)
    try:
        with make_postgres_store(url):
            pass
    except StoreError:
        pytest.skip("the test server checks passwords; these tests need trust auth")
    return url


@pytest.mark.postgres
def test_reprs_never_show_the_password(password_url):
    prefix = f"pjt_{uuid.uuid4().hex[:8]}_"
    host = Host(password_url, load_entrypoints=False, store_options={"table_prefix": prefix})
    try:
        assert_no_secret(repr(host), repr(host.store), repr(host.scheduler),
                         host.store.database_name, str(host.diagnostics()))
        assert "postgres@" in repr(host.store)  # the user is still shown
    finally:
        host.stop(0)
        with make_postgres_store(password_url, table_prefix=prefix):
            pass


@pytest.mark.parametrize("url, error", [
    (f"postgresql://u:{SECRET}@127.0.0.1:1/x", StoreError),
    (f"postgres://u:{SECRET}@127.0.0.1:1/x?connect_timeout=2", StoreError),
    (f"postgresql://u:{SECRET}@127.0.0.1:abc/x", ConfigurationError),
    (f"postgresql://u:{SECRET}@127.0.0.1:99999/x", ConfigurationError),
    (f"postgresql://u:{SECRET}@127.0.0.1:5432/", ConfigurationError),
    (f"postgresql://u:{SECRET}@127.0.0.1:5432/a/b", ConfigurationError),
    (f"mysql://u:{SECRET}@127.0.0.1/x", ConfigurationError),
    (f"sqlite://u:{SECRET}@/x.db", ConfigurationError),
    (f"postgresql://u:{SECRET}@127.0.0.1:5432/x?bogus_option=1", StoreError),
    (f"postgresql://u@127.0.0.1:abc/x?password={SECRET}", ConfigurationError),
    (f"mysql://u@127.0.0.1/x?PassWord={SECRET}", ConfigurationError),
    (f"sqlite:///?password={SECRET}", ConfigurationError),
])
def test_errors_for_bad_or_unreachable_urls_never_show_the_password(url, error):
    with pytest.raises(error) as info:
        Host(url, load_entrypoints=False)
    assert_no_secret(*error_texts(info.value))


@pytest.fixture
def log_lines(request):
    """pjcore's log in a list, as an application would enable it; *diagnose*
    (loguru's default for its sinks) shows variable values in tracebacks."""
    lines: list[str] = []
    sink = logger.add(lines.append, level="DEBUG", format="{level} {name} {message} {extra}",
                      backtrace=True, diagnose=getattr(request, "param", False))
    logger.enable("pjcore")
    try:
        yield lines
    finally:
        logger.remove(sink)
        logger.disable("pjcore")


@pytest.mark.postgres
@pytest.mark.parametrize("log_lines", [pytest.param(False, id="plain"),
                                       pytest.param(True, id="diagnose")], indirect=True)
def test_logs_never_show_the_password(password_url, postgres_url, log_lines):
    import psycopg2

    # a connection that fails at once
    with pytest.raises(StoreError):
        Host(with_password(postgres_url, port=1), load_entrypoints=False)
    # a scheduler whose database goes away: its ticks fail and are logged
    prefix, tag = f"pjt_{uuid.uuid4().hex[:8]}_", f"pjcore-test-{uuid.uuid4().hex[:8]}"
    host = Host(password_url, plugins=[Handlers()], load_entrypoints=False,
                store_options={"table_prefix": prefix, "application_name": tag})
    try:
        host.start()
        # due every second, so the loop goes to the store every second
        host.load_plugin(A_ID, A_KEY, {"key": A_KEY, "jobs": [
            {"job_key": "sync", "display_name": "Sync", "schedule": "* * * * * *"}]})
        host.store.database.connect_params["port"] = 1  # reconnecting fails from now on
        admin = psycopg2.connect(postgres_url)
        try:
            admin.autocommit = True
            admin.cursor().execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                   "WHERE application_name = %s", (tag,))
        finally:
            admin.close()
        host.scheduler.wake()
        wait_for(lambda: any("Connection refused" in line for line in log_lines),
                 what="a failed reconnection logged")
    finally:
        host.stop(0)
        with make_postgres_store(password_url, table_prefix=prefix):
            pass
    assert_no_secret(*log_lines)


def pjcore(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    env = {"PATH": "/usr/bin:/bin", "PJCORE_LOAD_PLUGINS": ""}
    return subprocess.run([str(PJCORE), *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


@pytest.mark.parametrize("args", [
    ["jobs", "--database", f"postgresql://u:{SECRET}@127.0.0.1:1/x"],
    ["-v", "jobs", "--database", f"postgresql://u:{SECRET}@127.0.0.1:1/x"],
    ["runs", "acme", "--database", f"postgresql://u:{SECRET}@127.0.0.1:abc/x"],
    ["jobs", "--database", f"postgresql://u@127.0.0.1:abc/x?password={SECRET}"],
    ["pause", "a", "b", "--database", f"mysql://u@h/x?sslmode=x&PASSWORD={SECRET}"],
])
def test_the_cli_never_prints_the_password(args):
    done = pjcore(*args)
    assert done.returncode == 1, done
    assert "Traceback" not in done.stderr
    assert done.stderr.startswith("pjcore: error: ") or "-v" in args, done.stderr
    assert_no_secret(done.stdout, done.stderr)


@pytest.mark.postgres
@pytest.mark.parametrize("command", ["run", "demo"])
def test_the_cli_shows_the_database_it_runs_on_without_the_password(
        command, password_url, monkeypatch, capsys):
    from pjcore import cli

    prefix = f"pjt_{uuid.uuid4().hex[:8]}_"
    new_host = cli._new_host
    # its own tables: never the shared database's default ones
    monkeypatch.setattr(cli, "_new_host", lambda database, **kwargs: new_host(
        database, store_options={"table_prefix": prefix}, **kwargs))
    monkeypatch.setenv("PJCORE_LOAD_PLUGINS", "")
    try:
        code = cli.main([command, "--duration", "0.2", "--database", password_url])
    finally:
        with make_postgres_store(password_url, table_prefix=prefix):
            pass
    out, err = capsys.readouterr()
    assert code == 0, err
    assert_no_secret(out, err)
    assert "postgres:***@" in out
