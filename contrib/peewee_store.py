"""The default job store: peewee on SQLite (a file) or PostgreSQL.

Every store instance builds its own model classes bound to its own database
(as huey's ``SqlHuey`` does), so two stores in one process never share state.
Instants are stored as integer UTC epoch microseconds, which sort and compare
identically on both engines.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import re
import select
import sqlite3
import threading
import time
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Sequence
from urllib.parse import parse_qsl, unquote, urlsplit

import attrs
import peewee as pw
from loguru import logger
from playhouse.migrate import SchemaMigrator
from playhouse.pool import MaxConnectionsExceeded, PooledDatabase, PooledPostgresqlDatabase

from pjcore.contrib import wal_checkpointer
from pjcore.exceptions import (
    InvalidArgument,
    ConfigurationError,
    JobAlreadyRunning,
    JobLookupError,
    SlotAlreadyClaimed,
    StoreError,
)
from pjcore.manifest import JobDeclaration, JobPolicy
from pjcore.models import (
    NON_TERMINAL,
    Claim,
    Job,
    JobRun,
    JobStatus,
    PausedBy,
    RunPage,
    RunStatus,
    RunTrigger,
    SyncResult,
    as_aware_utc,
    new_job,
    new_run,
)
from pjcore.store_base import (
    _EPOCH,
    redact_url,
    BaseJobStore,
    check_limit,
    decode_cursor,
    encode_cursor,
    first_fire,
    from_micros,
    new_id,
    plan_sync,
    terminal_status,
    to_micros,
)

__all__ = ["MIGRATIONS", "Migration", "MigrationContext", "PeeweeJobStore"]

PREFIX_PATTERN = re.compile(r"^[a-z][a-z0-9_]{0,20}$")
SQLITE_PRAGMAS = {"journal_mode": "wal", "foreign_keys": 1, "synchronous": "normal"}
SQLITE_TIMEOUT = 10.0  # seconds a writer waits for the lock (busy_timeout)
PG_CONNECT_TIMEOUT = 10
#: PostgreSQL connections a store keeps at most (store option ``pool_size``).
#: An operation borrows one and returns it when done, so a process needs
#: this many whatever its thread count: runner threads that each kept a
#: connection of their own would exhaust the server's max_connections with a
#: few schedulers, and a thread refused a connection would never get one back.
PG_POOL_SIZE = 10
#: seconds an operation waits for a free pooled connection (``pool_timeout``)
PG_POOL_TIMEOUT = 10.0
_NON_TERMINAL = [s.value for s in NON_TERMINAL]
#: The live statuses as literal SQL, never bound: the partial index of live
#: runs (see _m0006_live_runs_index) serves a query only when the planner can
#: see that the query's condition implies the index's, and a bound parameter
#: hides its value from SQLite's planner at prepare time.
#: (The order is the index's: a new live status needs a migration that
#: rebuilds the index; a test checks this list against NON_TERMINAL.)
_LIVE_SQL = pw.SQL("('queued', 'running')")
_TERMINAL = [s.value for s in RunStatus if s.terminal]
_CHUNK = 60  # rows or ids per statement: under 999 bound parameters (old SQLite builds)
_JOBS_PER_INSERT = 50  # job rows per INSERT: 17 parameters each, 850 in all
_ROWS_PER_PAGE = 200  # statements per round trip where PostgreSQL takes many at once
_RUNS_PER_INSERT = 50  # claimed runs: 12 parameters each
#: UPDATE ... RETURNING: SQLite 3.35 and later (PostgreSQL always)
_RETURNING = sqlite3.sqlite_version_info >= (3, 35)
#: plugin ids per due-job statement. As many as the parameter limit allows:
#: the due index holds no plugin id, so a statement for a part of the plugins
#: walks past the due jobs of the others (ids grow with creation time, so a
#: later part finds the due jobs of the earlier plugins first)
_PLUGIN_CHUNK = 900

_DB_ERRORS: tuple[type[BaseException], ...] = (pw.PeeweeException, sqlite3.Error,
                                                MaxConnectionsExceeded)
try:
    import psycopg2

    _DB_ERRORS += (psycopg2.Error,)
except ImportError:  # pragma: no cover - the postgres extra is optional
    psycopg2 = None


# -- models ------------------------------------------------------------------


def _define_models(db: pw.Database, prefix: str, postgres: bool):
    # Keys and ids are compared and ordered byte-wise on both engines, so list
    # order and keyset cursors do not depend on the PostgreSQL locale.
    c = {"collation": '"C"'} if postgres else {}

    class Base(pw.Model):
        class Meta:
            database = db
            # index names derive from the (prefixed) table name, not the class
            # name: index names are per database, and two prefixes must not clash
            legacy_table_names = False

    class JobRow(Base):
        id = pw.TextField(primary_key=True, **c)
        plugin_id = pw.TextField()
        plugin_key = pw.TextField(**c)
        job_key = pw.TextField(**c)
        display_name = pw.TextField()
        description = pw.TextField(null=True)
        schedule = pw.TextField(null=True)
        timezone = pw.TextField()
        policy = pw.TextField()
        status = pw.TextField()
        paused_by = pw.TextField(null=True)
        status_reason = pw.TextField(null=True)
        missed_count = pw.BigIntegerField(default=0)
        next_run_at = pw.BigIntegerField(null=True)
        last_run_at = pw.BigIntegerField(null=True)
        created_at = pw.BigIntegerField()
        updated_at = pw.BigIntegerField()

        class Meta:
            table_name = prefix + "jobs"
            # the unique index leads with plugin_id, so it also serves
            # per-plugin lookups; no separate plugin_id index is needed
            # (status, next_run_at, id): the due query walks it in its own
            # order (ORDER BY next_run_at, id) and stops at its LIMIT
            # (plugin_key, plugin_id): a plugin named by its key (find_plugin)
            indexes = ((("plugin_id", "job_key"), True),
                       (("status", "next_run_at", "id"), False),
                       (("plugin_key", "plugin_id"), False))

    class RunRow(Base):
        id = pw.TextField(primary_key=True, **c)
        job = pw.ForeignKeyField(
            JobRow, column_name="job_id", on_delete="CASCADE", index=False, lazy_load=False
        )
        plugin_id = pw.TextField()
        job_key = pw.TextField()
        trigger = pw.TextField()
        status = pw.TextField()
        scheduled_for = pw.BigIntegerField(null=True)
        created_at = pw.BigIntegerField()
        started_at = pw.BigIntegerField(null=True)
        finished_at = pw.BigIntegerField(null=True)
        duration_ms = pw.BigIntegerField(null=True)
        error = pw.TextField(null=True)
        error_detail = pw.TextField(null=True)
        owner = pw.TextField(null=True)
        lease_until = pw.BigIntegerField(null=True)
        attempt = pw.IntegerField(default=1)

        class Meta:
            table_name = prefix + "runs"
            # NULL slots (manual runs) never conflict in the unique index;
            # the runs in flight have a partial index of their own (below)
            indexes = (
                (("job", "scheduled_for", "attempt"), True),
                (("plugin_id", "created_at", "id"), False),
                (("created_at", "id"), False),
            )

    class SchemaRow(Base):
        name = pw.TextField(primary_key=True)
        applied_at = pw.BigIntegerField()

        class Meta:
            table_name = prefix + "schema"

    # the runs in flight alone, by job (see _m0006_live_runs_index)
    RunRow.add_index(RunRow.index(RunRow.job, where=RunRow.status.in_(_LIVE_SQL),
                                  name=f"{prefix}runs_live"))
    return JobRow, RunRow, SchemaRow


# -- migrations --------------------------------------------------------------


@attrs.frozen
class MigrationContext:
    """What a migration function gets: the database, a playhouse.migrate
    migrator for ``ALTER``-style changes, and the store's current models."""

    db: pw.Database
    migrator: SchemaMigrator
    prefix: str
    engine: str
    jobs: type[pw.Model]
    runs: type[pw.Model]

    def table(self, name: str) -> str:
        return self.prefix + name


@attrs.frozen
class Migration:
    name: str
    apply: Callable[[MigrationContext], None]


def _drop_index_on(ctx: MigrationContext, table: str, columns: list[str], *,
                   unique: bool) -> dict[str, Any]:
    """Drop *table*'s index (unique or not) on exactly *columns*, one a
    migration replaces; the indexes as they were before."""
    from playhouse.migrate import migrate

    indexes = {i.name: i for i in ctx.db.get_indexes(table)}
    for index in indexes.values():
        if index.unique == unique and index.columns == columns:
            migrate(ctx.migrator.drop_index(table, index.name))
    return indexes


def _m0001_initial(ctx: MigrationContext) -> None:
    # Uses the current models, which is right while this is the only
    # migration. Once a later migration alters a table, freeze the initial
    # definitions here so a fresh database still goes through every step.
    ctx.db.create_tables([ctx.jobs, ctx.runs])


def _m0002_missed_count(ctx: MigrationContext) -> None:
    # 0001 creates tables from the current models, so on a fresh database the
    # column already exists; only databases made before 0002 need it added.
    table = ctx.table("jobs")
    if "missed_count" not in {c.name for c in ctx.db.get_columns(table)}:
        from playhouse.migrate import migrate

        migrate(ctx.migrator.add_column(table, "missed_count", pw.BigIntegerField(default=0)))


def _m0003_run_attempt(ctx: MigrationContext) -> None:
    # A retried abandoned slot is a second attempt of the same slot: the
    # unique slot index gains the attempt number.
    from playhouse.migrate import migrate

    table = ctx.table("runs")
    if "attempt" not in {c.name for c in ctx.db.get_columns(table)}:
        migrate(ctx.migrator.add_column(table, "attempt", pw.IntegerField(default=1)))
    indexes = _drop_index_on(ctx, table, ["job_id", "scheduled_for"], unique=True)
    if not any(i.unique and i.columns == ["job_id", "scheduled_for", "attempt"]
               for i in indexes.values()):
        migrate(ctx.migrator.add_index(table, ("job_id", "scheduled_for", "attempt"), True))


def _m0004_due_index(ctx: MigrationContext) -> None:
    # The due query orders by (next_run_at, id): with id in the index it
    # reads the first rows in order instead of sorting every due row.
    from playhouse.migrate import migrate

    table = ctx.table("jobs")
    indexes = _drop_index_on(ctx, table, ["status", "next_run_at"], unique=False)
    if not any(i.columns == ["status", "next_run_at", "id"] for i in indexes.values()):
        migrate(ctx.migrator.add_index(table, ("status", "next_run_at", "id"), False))


def _m0005_plugin_key_index(ctx: MigrationContext) -> None:
    # A plugin named by its key (the CLI accepts either) is found without
    # reading every job.
    from playhouse.migrate import migrate

    table = ctx.table("jobs")
    if not any(i.columns == ["plugin_key", "plugin_id"] for i in ctx.db.get_indexes(table)):
        migrate(ctx.migrator.add_index(table, ("plugin_key", "plugin_id"), False))


def _m0006_live_runs_index(ctx: MigrationContext) -> None:
    # The runs in flight, found by job or by lease, through an index that
    # holds them alone: a claim's check and a lease sweep no longer read a
    # job's history (or every run), and a run's end removes its entry
    # instead of moving it (the (job_id, status) index it replaces held every
    # run ever recorded).
    _drop_index_on(ctx, ctx.table("runs"), ["job_id", "status"], unique=False)
    ctx.runs._schema.create_indexes(safe=True)  # those of the model not there yet


#: Applied in order, each in its own transaction, and recorded by name in
#: ``<prefix>schema``. Only ever append.
MIGRATIONS: list[Migration] = [
    Migration("0001_initial", _m0001_initial),
    Migration("0002_missed_count", _m0002_missed_count),
    Migration("0003_run_attempt", _m0003_run_attempt),
    Migration("0004_due_index", _m0004_due_index),
    Migration("0005_plugin_key_index", _m0005_plugin_key_index),
    Migration("0006_live_runs_index", _m0006_live_runs_index),
]


# -- configuration -----------------------------------------------------------


def _checkpoints_aside(options: dict[str, Any]) -> bool:
    """Whether a store on a SQLite file it opens checkpoints from a thread
    of its own (see :mod:`pjcore.contrib.wal_checkpointer`): yes, unless the
    user set the WAL limit or left WAL mode."""
    pragmas = options.get("pragmas", {})
    return ("wal_autocheckpoint" not in pragmas
            and str(pragmas.get("journal_mode", "wal")).lower() == "wal")


def _sqlite_database(url: str, parts, options: dict[str, Any]) -> pw.SqliteDatabase:
    if parts.netloc:
        raise ConfigurationError(
            f"SQLite URL {redact_url(url)!r} has a host part: use sqlite:///relative/path.db "
            "or sqlite:////absolute/path.db"
        )
    path = unquote(parts.path[1:])
    if not path or path == ":memory:" or path.startswith("file:"):
        raise ConfigurationError(
            f"SQLite URL {redact_url(url)!r} must name a database file "
            "(for a store in memory use the 'memory' backend)"
        )
    unknown = set(options) - {"timeout", "pragmas"}
    if unknown or parts.query:
        raise ConfigurationError(
            f"unsupported SQLite option(s) {sorted(unknown) or parts.query!r} "
            "(supported: timeout, pragmas)"
        )
    pragmas = {**SQLITE_PRAGMAS, **options.get("pragmas", {})}
    if _checkpoints_aside(options):
        pragmas["wal_autocheckpoint"] = wal_checkpointer.SAFETY_PAGES
        pragmas.setdefault("journal_size_limit", wal_checkpointer.WAL_SIZE_LIMIT)
    return pw.SqliteDatabase(
        os.path.abspath(path),
        pragmas=pragmas,
        timeout=float(options.get("timeout", SQLITE_TIMEOUT)),
        # each connection stays in its thread; close() may close it from another
        check_same_thread=False,
    )


def _pool_option(options: dict[str, Any], name: str, default: float, kind: type) -> Any:
    value = options.pop(name, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 \
            or (kind is int and not isinstance(value, int)):
        noun = "a positive integer" if kind is int else "a positive number of seconds"
        raise ConfigurationError(f"store option {name} must be {noun}, not {value!r}")
    return value


def _postgres_database(url: str, parts, options: dict[str, Any]) -> pw.PostgresqlDatabase:
    options = dict(options)
    pool_size = _pool_option(options, "pool_size", PG_POOL_SIZE, int)
    pool_timeout = _pool_option(options, "pool_timeout", PG_POOL_TIMEOUT, float)
    if psycopg2 is None:
        try:
            import psycopg  # noqa: F401  (peewee can use psycopg 3 as well)
        except ImportError:
            raise ConfigurationError(
                "PostgreSQL needs psycopg2: pip install pjcore[postgres]"
            ) from None
    try:
        port = parts.port
    except ValueError:
        raise ConfigurationError(f"invalid port in database URL {redact_url(url)!r}") from None
    dbname = unquote(parts.path.lstrip("/"))
    if not dbname or "/" in dbname:
        raise ConfigurationError(
            f"database URL {redact_url(url)!r} must name one database: "
            "postgresql://user:password@host:port/dbname"
        )
    params: dict[str, Any] = {"connect_timeout": PG_CONNECT_TIMEOUT}
    params.update(parse_qsl(parts.query))
    for key, value in (
        ("user", parts.username),
        ("password", parts.password),
        ("host", parts.hostname),
        ("port", port),
    ):
        if value is not None:
            params[key] = unquote(value) if isinstance(value, str) else value
    params.update(options)
    return PooledPostgresqlDatabase(dbname, max_connections=pool_size, timeout=pool_timeout,
                                    **params)


def _open_database(url: str, options: dict[str, Any]) -> pw.Database:
    usage = "a URL such as sqlite:///path.db or postgresql://user:password@host:port/db"
    if not isinstance(url, str):
        raise ConfigurationError(f"expected {usage} or a peewee Database, not {type(url).__name__}")
    try:
        parts = urlsplit(url)
    except ValueError:
        parts = None
    if parts is None or "://" not in url:
        raise ConfigurationError(f"malformed database URL: expected {usage}")
    scheme = parts.scheme.lower()
    if scheme == "sqlite":
        return _sqlite_database(url, parts, options)
    if scheme in ("postgresql", "postgres"):
        return _postgres_database(url, parts, options)
    raise ConfigurationError(
        f"unsupported database URL scheme {scheme!r} in {redact_url(url)!r} "
        "(supported: sqlite, postgresql, postgres)"
    )


# -- conversions -------------------------------------------------------------


def _us(value: datetime | None) -> int | None:
    if value is None:
        return None
    if value.__class__ is not datetime or value.tzinfo is not timezone.utc:
        value = as_aware_utc(value)
    delta = value - _EPOCH  # to_micros, inlined (same epoch): a few per run of a dispatch
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def _req(value: datetime) -> int:
    """:func:`_us` for an instant a call must give: ``None`` is refused (as
    anything else that is not an aware datetime) instead of written as NULL."""
    return _us(as_aware_utc(value))


class _Micros(dict):
    """:func:`_us` remembered for one batch: the claims of a round share
    their instants (now, the lease, the slot, the next pointer)."""

    __slots__ = ()

    def __missing__(self, value: datetime | None) -> int | None:
        micros = _us(value)
        # UTC only: two local times of one zone that differ only in fold
        # (the repeated hour) compare equal, and would share an entry
        if value is None or value.tzinfo is timezone.utc:
            self[value] = micros
        return micros


def _column(value: Any) -> Any:
    if isinstance(value, datetime):
        return _us(value)
    if isinstance(value, JobPolicy):
        return json.dumps(value.to_dict(), sort_keys=True)
    if isinstance(value, (JobStatus, PausedBy, RunStatus, RunTrigger)):
        return value.value
    return value


def _job(row: dict[str, Any]) -> Job:
    # as the hot path builds a job: positionally, its stored policy text
    # parsed once (a sync reads every job of the plugin)
    return _build_job(tuple(row[c] for c in _JOB_COLUMNS))


def _run(row: dict[str, Any]) -> JobRun:
    return JobRun(
        **{k: row[k] for k in ("id", "plugin_id", "job_key", "trigger", "status",
                               "duration_ms", "error", "error_detail", "owner", "attempt")},
        job_id=row["job"],
        **{k: from_micros(row[k]) for k in ("scheduled_for", "created_at", "started_at",
                                            "finished_at", "lease_until")},
    )


def _operation(fn):
    """Run a store method on this thread's connection; database errors become
    StoreError (pjcore's own errors pass through)."""

    @functools.wraps(fn)
    def wrapper(self: "PeeweeJobStore", *args: Any, **kwargs: Any):
        if self._closed:
            raise StoreError(f"{self._label}: the store is closed")
        try:
            self._connect()
            return fn(self, *args, **kwargs)
        except _DB_ERRORS as exc:
            # The transaction (if any) has been left by now: make sure this
            # thread's next operation starts on a clean connection.
            self._drop_broken_connection()
            raise self._store_error(fn.__name__, exc) from _detached(exc)
        finally:
            self._release()

    return wrapper


#: transaction status of an idle PostgreSQL connection (psycopg2 and psycopg 3 alike)
_PG_IDLE = 0


def _pg_transaction_status(conn: Any) -> int:
    if hasattr(conn, "get_transaction_status"):  # psycopg2
        return conn.get_transaction_status()
    return int(conn.info.transaction_status)  # psycopg 3


def _detached(exc: BaseException) -> BaseException:
    """*exc*, and the exceptions chained to it, without the frames they were
    raised through: the locals of the driver's and peewee's connection frames
    hold the password (connect parameters, DSN), and a logger that shows
    variables (loguru's diagnose mode) would print them with the cause."""
    seen: set[int] = set()
    link: BaseException | None = exc
    while link is not None and id(link) not in seen:
        seen.add(id(link))
        link.__traceback__ = None
        link = link.__cause__ or link.__context__
    return exc


def _chunks(items: Sequence[Any], size: int = _CHUNK):
    for start in range(0, len(items), size):
        yield items[start:start + size]


# -- hot statements ----------------------------------------------------------

_JOB_COLUMNS = ("id", "plugin_id", "plugin_key", "job_key", "display_name", "description",
                "schedule", "timezone", "policy", "status", "paused_by", "status_reason",
                "missed_count", "next_run_at", "last_run_at", "created_at", "updated_at")
_RUN_COLUMNS = ("id", "job_id", "plugin_id", "job_key", "trigger", "status", "scheduled_for",
                "created_at", "started_at", "finished_at", "duration_ms", "error",
                "error_detail", "owner", "lease_until", "attempt")
#: what a claim writes of a run: a claimed run has not ended, and its end
#: columns are left to their default (NULL) instead of bound as None. The
#: sqlite3 driver looks up an adapter for every None it binds, and each
#: lookup formats and discards two AttributeErrors.
_CLAIM_RUN_COLUMNS = tuple(c for c in _RUN_COLUMNS
                           if c not in ("finished_at", "duration_ms", "error", "error_detail"))
# _claim_many writes these columns in this order
assert _CLAIM_RUN_COLUMNS == ("id", "job_id", "plugin_id", "job_key", "trigger", "status",
                              "scheduled_for", "created_at", "started_at", "owner",
                              "lease_until", "attempt")
_SCHEDULE, _QUEUED, _RUNNING = (RunTrigger.schedule.value, RunStatus.queued.value,
                                RunStatus.running.value)
_ACTIVE = JobStatus.active.value
#: a terminal status (a member or its value) -> its value. A member of the
#: str enum RunStatus equals its value, and hashes by its name, which is
#: its value too: both find the entry
_TERMINAL_VALUES = {s.value: s.value for s in RunStatus if s.terminal}


def _terminal_value(status: Any) -> str:
    """terminal_status(status).value, without an Enum call for the usual case."""
    try:
        return _TERMINAL_VALUES[status]
    except (KeyError, TypeError):  # not a terminal status: terminal_status says why
        return terminal_status(status).value


@functools.lru_cache(maxsize=256)
def _policy(text: str) -> JobPolicy:
    # JobPolicy is frozen: one instance per stored policy text is shared
    return JobPolicy.from_dict(json.loads(text))


#: Job objects by the stored row they were built from: the due query
#: reads the same rows tick after tick while a backlog drains, and a Job is
#: frozen, so an identical row can share one instance
_JOB_ROWS: dict[tuple, Job] = {}
_JOB_ROWS_MAX = 4096


def _job_tuple(row: Sequence[Any]) -> Job:
    row = tuple(row)
    job = _JOB_ROWS.get(row)
    if job is None:
        job = _build_job(row)
        if len(_JOB_ROWS) >= _JOB_ROWS_MAX:
            _JOB_ROWS.clear()  # bounded; dict operations are atomic under the GIL
        _JOB_ROWS[row] = job
    return job


#: a stored status -> its member (the model's converter then has nothing to do)
_JOB_STATUSES = {s.value: s for s in JobStatus}


def _build_job(row: Sequence[Any]) -> Job:
    (id_, plugin_id, plugin_key, job_key, display_name, description, schedule, tz, policy,
     status, paused_by, status_reason, missed_count, next_run_at, last_run_at, created_at,
     updated_at) = row
    # Job's fields in order (that of _JOB_COLUMNS)
    return new_job(id_, plugin_id, plugin_key, job_key, display_name, description, schedule, tz,
                   _policy(policy), _JOB_STATUSES.get(status, status), paused_by, status_reason,
                   missed_count, from_micros(next_run_at), from_micros(last_run_at),
                   from_micros(created_at), from_micros(updated_at))


def _run_tuple(row: Sequence[Any]) -> JobRun:
    (id_, job_id, plugin_id, job_key, trigger, status, scheduled_for, created_at, started_at,
     finished_at, duration_ms, error, error_detail, owner, lease_until, attempt) = row
    # JobRun's fields in order (that of _RUN_COLUMNS)
    return new_run(id_, job_id, plugin_id, job_key, trigger, status, from_micros(scheduled_for),
                   from_micros(created_at), from_micros(started_at), from_micros(finished_at),
                   duration_ms, error, error_detail, owner, from_micros(lease_until), attempt)


class _NotAll(Exception):
    """A batch of guarded updates did not apply in full (rolls it back)."""


class _Serialized:
    """A transaction entered under the store's writer lock (SQLite); *done*
    is told of each one that committed."""

    __slots__ = ("_lock", "_wait", "_tx", "_done")

    def __init__(self, lock: Any, wait: float, tx: Any, done: Callable[[], None]) -> None:
        self._lock, self._wait, self._tx, self._done = lock, wait, tx, done

    def __enter__(self) -> Any:
        # as long as SQLite's own busy_timeout: a thread stuck behind a
        # writer that waits on another process gives up like that writer
        if not self._lock.acquire(timeout=self._wait):
            raise sqlite3.OperationalError("database is locked (by a writer of this process)")
        if self._tx is None:
            return None
        try:
            return self._tx.__enter__()
        except BaseException:
            self._lock.release()
            raise

    def __exit__(self, *exc_info: Any) -> Any:
        try:
            result = None if self._tx is None else self._tx.__exit__(*exc_info)
        finally:
            self._lock.release()
        if exc_info[0] is None:
            self._done()
        return result


class _Arg:
    """A parameter slot of a prepared statement: the *n*-th call argument."""

    __slots__ = ("n",)

    def __init__(self, n: int) -> None:
        self.n = n


def _arg(n: int) -> pw.Value:
    return pw.Value(_Arg(n), converter=False)


class _Prepared:
    """A statement peewee built once, with parameters bound per call: peewee
    spends far longer building SQL than the database spends running it.
    The SQL text is peewee's own (identifiers quoted by it, every value a
    parameter in the engine's style); only the values change per call."""

    __slots__ = ("sql", "_plan", "_direct", "_bind")

    def __init__(self, query: Any) -> None:
        self.sql, params = query.sql()
        self._plan = tuple((True, p.n) if isinstance(p, _Arg) else (False, p) for p in params)
        # every parameter is an argument, in order: no remapping needed
        self._direct = all(arg and n == i for i, (arg, n) in enumerate(self._plan))
        # the parameter tuple as one expression over the arguments (a) and
        # peewee's constants (c): rebuilt per call on the hot path, so no
        # loop; the source holds only integer indexes
        items = "".join(f"a[{v}], " if arg else f"c[{i}], "
                        for i, (arg, v) in enumerate(self._plan))
        constants = tuple(v for _, v in self._plan)
        bind = eval(f"lambda a, c: ({items})", {})  # noqa: S307 (indexes only)
        self._bind = lambda args: bind(args, constants)

    def params(self, args: Sequence[Any]) -> Sequence[Any]:
        if self._direct and len(args) == len(self._plan):
            return args
        return self._bind(args)


class _HotSQL:
    """The statements of the dispatch hot path, prepared once per store."""

    def __init__(self, J: Any, R: Any, postgres: bool) -> None:
        self._J, self._R, self._pg = J, R, postgres
        self._cache: dict[Any, _Prepared] = {}
        self.job_fields = [getattr(J, c) for c in _JOB_COLUMNS]
        self.run_fields = [R.job if c == "job_id" else getattr(R, c) for c in _RUN_COLUMNS]
        live = R.status.in_(_LIVE_SQL)
        self.mark_running = _Prepared(R.update({
            R.status: RunStatus.running.value, R.started_at: _arg(0), R.owner: _arg(1),
            R.lease_until: _arg(2)}).where((R.id == _arg(3)) & (R.status == RunStatus.queued.value)))
        # duration from started_at in SQL, so the guarded UPDATE stays one
        # statement; NULL when the run never started, 0 on a clock going back
        duration = pw.Case(None, [(R.started_at > _arg(1), 0)], (_arg(1) - R.started_at) / 1000)
        self.complete = _Prepared(R.update({
            R.status: _arg(0), R.finished_at: _arg(1), R.duration_ms: duration,
            R.error: _arg(2), R.error_detail: _arg(3)}).where((R.id == _arg(4)) & live))
        # the same for an end without error text: NULLs written, not bound
        # (see _CLAIM_RUN_COLUMNS); the arguments are complete's without
        # the error and the detail
        self.complete_clean = _Prepared(R.update({
            R.status: _arg(0), R.finished_at: _arg(1), R.duration_ms: duration,
            R.error: pw.SQL("NULL"), R.error_detail: pw.SQL("NULL")}).where(
            (R.id == _arg(4)) & live))
        self.get_run = _Prepared(R.select(*self.run_fields).where(R.id == _arg(0)))
        self.insert_run = _Prepared(R.insert(
            {f: _arg(i) for i, f in enumerate(self.run_fields)}))
        # the job's runs in flight and its runs of the slot, each through an
        # index of its own (a condition with OR would read the job's history)
        self.claim_runs = _Prepared(
            R.select(R.status, R.scheduled_for).where((R.job == _arg(0)) & live)
            + R.select(R.status, R.scheduled_for).where(
                (R.job == _arg(0)) & (R.scheduled_for == _arg(1))))

    def get(self, key: Any) -> _Prepared:
        """Statements with a variable shape, prepared on first use."""
        stmt = self._cache.get(key)
        if stmt is None:
            stmt = self._cache[key] = _Prepared(self._build(*key))
        return stmt

    def _build(self, kind: str, *shape: Any) -> Any:
        J, R = self._J, self._R
        active = J.status == JobStatus.active.value
        if kind in ("due", "next_due"):
            (n_plugins,) = shape  # None: every plugin
            if kind == "due":
                where = active & (J.next_run_at <= _arg(0))
                first = 1
            else:
                where = active & J.next_run_at.is_null(False)
                first = 0
            if n_plugins is not None:
                where &= J.plugin_id.in_([_arg(first + i) for i in range(n_plugins)])
            if kind == "next_due":
                return J.select(pw.fn.MIN(J.next_run_at)).where(where)
            limit = _arg(first + (n_plugins or 0))
            return J.select(*self.job_fields).where(where).order_by(J.next_run_at, J.id) \
                .limit(limit)
        if kind in ("precheck", "claim_job"):
            null_pointer, idle = shape
            same = J.next_run_at.is_null() if null_pointer else J.next_run_at == _arg(1)
            claimable = (J.id == _arg(0)) & active & same
            if kind == "claim_job":
                query = J.select(J.plugin_id, J.job_key).where(claimable)
                return query.for_update(skip_locked=True) if self._pg else query
            query = J.select(J.id).where(claimable)
            if idle:
                busy = R.select(R.id).where((R.job == _arg(0)) & R.status.in_(_LIVE_SQL))
                query = query.where(~pw.fn.EXISTS(busy))
            return query.limit(1)
        if kind == "look":  # claim_slots: every job's pointer and whether it is busy
            (n,) = shape
            busy = R.select(R.id).where((R.job == J.id) & R.status.in_(_LIVE_SQL))
            # the status is checked by the caller: in the WHERE clause it
            # would lead SQLite to walk every active job by the status index
            return J.select(J.id, J.next_run_at, J.status, pw.fn.EXISTS(busy)).where(
                J.id.in_([_arg(i) for i in range(n)]))
        if kind == "lock_many":
            (n,) = shape
            # the status is checked by the caller, as for "look": in the
            # WHERE clause it leads SQLite to walk every active job
            query = J.select(J.id, J.plugin_id, J.job_key, J.next_run_at, J.status).where(
                J.id.in_([_arg(i) for i in range(n)]))
            return query.for_update(skip_locked=True) if self._pg else query
        if kind == "runs_many":
            n, slots = shape
            # as claim_runs, for n jobs (a run may come twice: in flight and
            # of the slot)
            jobs = R.job.in_([_arg(i) for i in range(n)])
            return (R.select(R.job, R.status, R.scheduled_for).where(
                        jobs & R.status.in_(_LIVE_SQL))
                    + R.select(R.job, R.status, R.scheduled_for).where(
                        jobs & R.scheduled_for.in_([_arg(n + i) for i in range(slots)])))
        if kind == "mark_many":  # queued -> running for n runs; the ids it changed
            (n,) = shape
            return R.update({
                R.status: RunStatus.running.value, R.started_at: _arg(0), R.owner: _arg(1),
                R.lease_until: _arg(2)}).where(
                R.id.in_([_arg(3 + i) for i in range(n)])
                & (R.status == RunStatus.queued.value)).returning(R.id)
        if kind == "claim_runs":  # n rows of _CLAIM_RUN_COLUMNS, row after row
            (n,) = shape
            fields = [R.job if c == "job_id" else getattr(R, c) for c in _CLAIM_RUN_COLUMNS]
            width = len(fields)
            return R.insert_many([{f: _arg(row * width + i) for i, f in enumerate(fields)}
                                  for row in range(n)])
        if kind == "insert_jobs":  # n rows of every column, row after row
            (n,) = shape
            width = len(self.job_fields)
            return J.insert_many([{f: _arg(row * width + i) for i, f in enumerate(self.job_fields)}
                                  for row in range(n)])
        if kind == "update_job":  # the given columns, then the id
            (columns,) = shape
            values = {getattr(J, c): _arg(i) for i, c in enumerate(columns)}
            return J.update(values).where(J.id == _arg(len(columns)))
        if kind == "claim_update":
            (with_slot,) = shape
            values = {J.next_run_at: _arg(0), J.updated_at: _arg(1),
                      J.missed_count: J.missed_count + _arg(2)}
            if with_slot:
                values[J.last_run_at] = _arg(4)
            return J.update(values).where(J.id == _arg(3))
        if kind == "claim_updates":  # PostgreSQL: claim_update's rows in one statement
            (n,) = shape
            v = _values(n, (("next", "bigint"), ("now", "bigint"), ("missed", "integer"),
                            ("id", "text"), ("slot", "bigint")))
            return J.update({J.next_run_at: v.c.next, J.updated_at: v.c.now,
                             J.missed_count: J.missed_count + v.c.missed,
                             J.last_run_at: pw.fn.COALESCE(v.c.slot, J.last_run_at)}) \
                .from_(v).where(J.id == v.c.id)
        if kind == "completes":  # PostgreSQL: complete's rows in one statement; those applied
            (n,) = shape
            v = _values(n, (("status", "text"), ("at", "bigint"), ("error", "text"),
                            ("detail", "text"), ("id", "text")))
            duration = pw.Case(None, [(R.started_at > v.c.at, 0)],
                               (v.c.at - R.started_at) / 1000)
            return R.update({R.status: v.c.status, R.finished_at: v.c.at,
                             R.duration_ms: duration, R.error: v.c.error,
                             R.error_detail: v.c.detail}) \
                .from_(v).where((R.id == v.c.id) & R.status.in_(_LIVE_SQL)) \
                .returning(R.id)
        raise ValueError(kind)


def _values(n: int, columns: Sequence[tuple[str, str]]) -> Any:
    """``(VALUES ...) AS v(...)`` of *n* rows of parameters, row after row,
    each cast to its column's type (a column of NULLs has none otherwise)."""
    width = len(columns)
    rows = [[pw.Cast(_arg(row * width + i), kind) for i, (_, kind) in enumerate(columns)]
            for row in range(n)]
    return pw.ValuesList(rows, columns=[name for name, _ in columns], alias="v")


# -- the store ---------------------------------------------------------------


class PeeweeJobStore(BaseJobStore):
    """Jobs and runs in SQLite or PostgreSQL through peewee.

    :param url_or_database: ``sqlite:///relative.db``, ``sqlite:////abs.db``,
        ``postgresql://user:password@host:port/dbname`` (or ``postgres://``),
        or a peewee ``SqliteDatabase`` / ``PostgresqlDatabase``. A database
        built from a URL is owned (and closed) by the store; one passed in is
        only closed for the calling thread.
    :param table_prefix: prefix of the three table names.
    :param options: with a URL only. SQLite: ``timeout`` (seconds) and
        ``pragmas``; PostgreSQL: psycopg2 connection parameters.
    """

    def __init__(
        self, url_or_database: str | pw.Database, *, table_prefix: str = "pj_", **options: Any
    ) -> None:
        self._closed = True  # until fully constructed: close() is then a no-op
        if not isinstance(table_prefix, str) or not PREFIX_PATTERN.match(table_prefix):
            raise ConfigurationError(
                f"table_prefix {table_prefix!r} must match {PREFIX_PATTERN.pattern}"
            )
        if isinstance(url_or_database, pw.Database):
            if options:
                raise ConfigurationError(
                    f"options {sorted(options)} only apply to a database URL, "
                    "not to a peewee Database instance"
                )
            db, self._owned = url_or_database, False
        else:
            db, self._owned = _open_database(url_or_database, options), True
        if isinstance(db, pw.PostgresqlDatabase):
            self.engine = "postgresql"
        elif isinstance(db, pw.SqliteDatabase):
            self.engine = "sqlite"
        else:
            raise ConfigurationError(
                f"unsupported peewee database {type(db).__name__} "
                "(supported: SqliteDatabase, PostgresqlDatabase)"
            )
        self._db = db
        self._pg = self.engine == "postgresql"
        self._pooled = isinstance(db, PooledDatabase)
        self._pool_size = getattr(db, "_max_connections", None) or 1
        self.table_prefix = table_prefix
        self._password = db.connect_params.get("password")
        self._Job, self._Run, self._Schema = _define_models(db, table_prefix, self._pg)
        self._sql = _HotSQL(self._Job, self._Run, self._pg)
        # SQLite: take the write lock up front so concurrent writers queue on
        # busy_timeout instead of failing on a read-to-write upgrade.
        # PostgreSQL: rows are locked explicitly (SELECT ... FOR UPDATE).
        # SQLite has one writer at a time; the threads of this process queue
        # for it on a lock of their own (handed over at once) rather than on
        # SQLite's busy handler, which polls with sleeps of 1 to 100 ms. Other
        # processes still queue on busy_timeout.
        self._checkpointer: wal_checkpointer.WalCheckpointer | None = None
        if self._pg:
            self._write = lambda: db.atomic()
            self._writer = lambda: contextlib.nullcontext()
        else:
            lock, wait = threading.RLock(), float(getattr(db, "_timeout", None) or SQLITE_TIMEOUT)
            done: Callable[[], None] = lambda: None  # noqa: E731
            if self._owned and _checkpoints_aside(options):
                self._checkpointer = wal_checkpointer.WalCheckpointer(db.database)
                done = self._checkpointer.committed
            self._write = lambda: _Serialized(lock, wait, db.atomic("IMMEDIATE"), done)
            self._writer = lambda: _Serialized(lock, wait, None, done)
        # Threads (scheduler, workers) keep their per-thread connection for
        # their lifetime; remember them so close() can close them all.
        self._conns: list[tuple[threading.Thread, Any]] = []
        self._conns_lock = threading.Lock()
        #: per thread: (its connection, the data_version it last saw); see _others_wrote
        self._versions = threading.local()
        self._closed = False
        self.schema_version = 0
        try:
            self._migrate()
        except BaseException:
            self.close()
            raise

    # -- plumbing --------------------------------------------------------

    @property
    def database(self) -> pw.Database:
        """The peewee database (for tools and tests; the tables are private)."""
        return self._db

    @property
    def database_name(self) -> str:
        db = self._db
        if not self._pg:
            return str(db.database)
        p = db.connect_params
        user = f"{p['user']}@" if p.get("user") else ""
        port = f":{p['port']}" if p.get("port") else ""
        return f"{user}{p.get('host') or 'localhost'}{port}/{db.database}"

    @property
    def _label(self) -> str:
        where = f"{self.engine} {self.database_name}, prefix {self.table_prefix!r}"
        return f"peewee job store ({where})"

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(engine={self.engine!r}, "
            f"database={self.database_name!r}, table_prefix={self.table_prefix!r})"
        )

    def _store_error(self, operation: str, exc: BaseException) -> StoreError:
        detail = str(exc).strip() or type(exc).__name__
        if self._password:
            detail = detail.replace(str(self._password), "***")
        return StoreError(f"{self._label}: {operation} failed: {detail}")

    def _connect(self) -> None:
        db = self._db
        if not db.is_closed() and self._pg and not db.in_transaction() \
                and self._server_hung_up(db.connection()):
            # The server went away while this thread's connection sat idle
            # (PostgreSQL restarted, a proxy cut it): reconnect now rather
            # than fail this operation on the dead connection.
            self._discard_connection()
        if not db.is_closed():
            return
        self._open_connection()
        if self._pooled:
            # Pooled connections sat idle too: after a restart every one of
            # them is dead. Discard them until a live (or new) one comes.
            for _ in range(self._pool_size):
                if not self._server_hung_up(db.connection()):
                    break
                self._discard_connection()
                db.connect()
            return
        if not self._owned:
            return
        me = threading.current_thread()
        with self._conns_lock:
            alive = []
            for thread, conn in self._conns:
                if thread.is_alive() and thread is not me:
                    alive.append((thread, conn))
                else:  # its thread ended (or it is this thread's stale one)
                    self._close_raw(conn)
            alive.append((me, db.connection()))
            self._conns = alive

    def _open_connection(self) -> None:
        if self._pg:
            self._db.connect()
            return
        # Switching a new SQLite file to WAL (a connect-time pragma) needs an
        # exclusive lock and reports "database is locked" at once instead of
        # waiting on the busy timeout when another process opens the file at
        # the same moment: retry for as long as the busy timeout would wait.
        deadline = time.monotonic() + float(getattr(self._db, "_timeout", None) or SQLITE_TIMEOUT)
        while True:
            try:
                self._db.connect()
                return
            except pw.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.01)

    def _release(self) -> None:
        """Give this thread's connection back to the pool between operations."""
        db = self._db
        if self._pooled and not db.is_closed() and not db.in_transaction():
            try:
                db.close()  # to the pool, unless it is not reusable
            except Exception:  # a broken connection: forget it
                self._discard_connection()

    @staticmethod
    def _server_hung_up(conn: Any) -> bool:
        """Whether an idle PostgreSQL connection is known to be dead.

        Idle between operations, a connection has nothing to read (pjcore
        does not LISTEN): readable means the server sent its last words
        (shutdown notice) or closed the socket. At worst a healthy
        connection that got an unsolicited message is replaced.
        """
        if conn.closed:
            return True
        try:
            readable, _, _ = select.select([conn.fileno()], [], [], 0)
        except (OSError, ValueError, *_DB_ERRORS):
            return True
        return bool(readable)

    @staticmethod
    def _close_raw(conn: Any) -> None:
        try:
            conn.close()
        except Exception:  # already closed or unusable: nothing to release
            pass

    def _discard_connection(self) -> None:
        """Forget this thread's connection; the next operation opens a new one."""
        try:
            if self._pooled:
                self._db.manual_close()  # closed for good, not back to the pool
            else:
                self._db.close()  # resets the thread's state even when close fails
        except Exception:  # a dead connection may refuse to close cleanly
            pass

    def _drop_broken_connection(self) -> None:
        """After a database error, outside any transaction: discard this
        thread's connection unless it is known to be clean.

        PostgreSQL: a connection that died stays "open" for peewee, and one
        whose ROLLBACK failed may still hold a transaction (aborted or open)
        that every later statement would run in. SQLite: a transaction left
        open after a failed ROLLBACK would keep the database write lock for
        good; closing the connection releases it.
        """
        db = self._db
        if db.is_closed() or db.in_transaction():
            return
        try:
            conn = db.connection()
            if self._pg:
                clean = not conn.closed and _pg_transaction_status(conn) == _PG_IDLE
            else:
                clean = not conn.in_transaction
        except Exception:
            clean = False
        if not clean:
            self._discard_connection()

    def _exec(self, stmt: _Prepared, args: Sequence[Any]) -> Any:
        """Run a prepared statement on this thread's connection (inside the
        caller's transaction, if any); the cursor."""
        return self._db.execute_sql(stmt.sql, stmt.params(args))

    def _exec_many(self, stmt: _Prepared, rows: Sequence[Sequence[Any]]) -> int:
        """:meth:`_exec` for each of *rows* in one driver call (the driver
        loops, not Python); the rows changed in all."""
        if not rows:
            return 0
        with pw.__exception_wrapper__:  # driver errors as peewee's, as execute_sql raises them
            cursor = self._db.cursor()
            cursor.executemany(stmt.sql, [stmt.params(r) for r in rows])
        return cursor.rowcount

    def _exec_batch(self, stmt: _Prepared, rows: Sequence[Sequence[Any]]) -> None:
        """:meth:`_exec` for each of *rows*, where the caller needs no row
        count: psycopg2's ``executemany`` makes a round trip per row (1,000
        rescheduled jobs took about 100 ms on localhost), so PostgreSQL gets
        the statements in pages of many, one round trip each. (psycopg 3
        pipelines an ``executemany`` by itself.)"""
        if not rows:
            return
        # by the connection itself: peewee may use psycopg 3 even where
        # psycopg2 is installed (prefer_psycopg3)
        if self._pg and psycopg2 is not None:
            cursor = self._db.cursor()
            if isinstance(cursor, psycopg2.extensions.cursor):
                from psycopg2.extras import execute_batch

                with pw.__exception_wrapper__:
                    execute_batch(cursor, stmt.sql, [stmt.params(r) for r in rows],
                                  page_size=_ROWS_PER_PAGE)
                return
        self._exec_many(stmt, rows)

    def _lock(self, query: pw.Select) -> pw.Select:
        return query.for_update() if self._pg else query

    def _advisory_lock(self, *key: str) -> None:
        if self._pg:
            digest = hashlib.blake2b("\0".join(key).encode(), digest_size=8).digest()
            self._db.execute_sql(
                "SELECT pg_advisory_xact_lock(%s)", (int.from_bytes(digest, "big", signed=True),)
            )

    def _migrate(self) -> None:
        try:
            self._connect()
            self._apply_migrations()
        except _DB_ERRORS as exc:
            raise self._store_error("migration", exc) from _detached(exc)
        finally:
            self._release()

    def _apply_migrations(self) -> None:
        migrations = list(MIGRATIONS)
        known = {m.name for m in migrations}
        Schema = self._Schema

        def applied() -> set[str]:
            self._advisory_lock("pjcore-schema", self.table_prefix)
            Schema.create_table(safe=True)
            names = {name for (name,) in Schema.select(Schema.name).tuples()}
            newer = sorted(names - known)
            if newer:
                raise StoreError(
                    f"{self._label}: schema is newer than this pjcore: the database "
                    f"records migration(s) {', '.join(newer)} that this version does "
                    "not know; upgrade pjcore"
                )
            return names

        with self._write():
            done = applied()
        for migration in migrations:
            if migration.name in done:
                continue
            with self._write():
                done = applied()  # another process may have applied it meanwhile
                if migration.name in done:
                    continue
                migration.apply(self._migration_context())
                Schema.insert(
                    name=migration.name, applied_at=to_micros(datetime.now(timezone.utc))
                ).execute()
                done = done | {migration.name}
                logger.debug("{}: applied migration {}", self._label, migration.name)
        self.schema_version = len(done)

    def _migration_context(self) -> MigrationContext:
        return MigrationContext(
            db=self._db,
            migrator=SchemaMigrator.from_database(self._db),
            prefix=self.table_prefix,
            engine=self.engine,
            jobs=self._Job,
            runs=self._Run,
        )

    # -- lifecycle -------------------------------------------------------

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._checkpointer is not None:
            self._checkpointer.stop()
        try:
            if self._pooled and self._owned:
                self._db.close_all()
            elif not self._db.is_closed() and not self._db.in_transaction():
                self._db.close()
        except Exception:
            pass
        with self._conns_lock:
            conns, self._conns = self._conns, []
        for _, conn in conns:
            self._close_raw(conn)

    @_operation
    def drop_tables(self) -> None:
        """Drop this store's tables (for tests and tools); reopen to recreate."""
        with self._write():
            self._db.drop_tables([self._Run, self._Job, self._Schema], safe=True)
        self.schema_version = 0

    # -- jobs ------------------------------------------------------------

    def _job_row(self, query) -> Job | None:
        row = query.dicts().first()
        return None if row is None else _job(row)

    @_operation
    def sync_jobs(
        self,
        plugin_id: str,
        plugin_key: str,
        declarations: Sequence[JobDeclaration],
        *,
        now: datetime,
    ) -> SyncResult:
        now = as_aware_utc(now)
        J = self._Job
        with self._write():
            # PostgreSQL: serialise syncs of one plugin (inserts included)
            # and keep operator pauses from interleaving with the plan.
            self._advisory_lock("pjcore-sync", self.table_prefix, plugin_id)
            query = self._lock(J.select().where(J.plugin_id == plugin_id).order_by(J.id))
            existing = [_job(r) for r in query.dicts()]
            plan = plan_sync(plugin_id, plugin_key, existing, declarations, now)
            # prepared statements, each run for many rows: building the SQL
            # of a 1,000-job manifest took longer than running it
            # (inserts: many rows per statement, as a driver that sends each
            # row of an executemany on its own round trip would be slow)
            for chunk in _chunks(plan.inserts, _JOBS_PER_INSERT):
                self._exec(self._sql.get(("insert_jobs", len(chunk))), [
                    _column(getattr(job, c)) for job in chunk for c in _JOB_COLUMNS])
            updates: dict[tuple[str, ...], list[tuple[Any, ...]]] = {}
            for change in plan.changes:
                columns = tuple(sorted(change.values))
                updates.setdefault(columns, []).append(
                    (*(_column(change.values[c]) for c in columns), change.job_id))
            for columns, rows in updates.items():
                self._exec_batch(self._sql.get(("update_job", columns)), rows)
        return plan.result()

    @_operation
    def list_jobs(self, plugin_id: str | None = None, *, status: str | None = None) -> list[Job]:
        J = self._Job
        query = J.select().order_by(J.plugin_key, J.job_key, J.id)
        if plugin_id is not None:
            query = query.where(J.plugin_id == plugin_id)
        if status is not None:
            query = query.where(J.status == JobStatus(status).value)
        return [_job(r) for r in query.dicts()]

    @_operation
    def find_plugin(self, plugin: str) -> str | None:
        J = self._Job
        # both from an index: (plugin_id, job_key) and (plugin_key, plugin_id)
        if J.select(J.id).where(J.plugin_id == plugin).limit(1).exists():
            return plugin
        # sorted here: the column's collation differs between databases
        ids = sorted(i for (i,) in J.select(J.plugin_id).distinct()
                     .where(J.plugin_key == plugin).tuples())
        return ids[0] if ids else None

    @_operation
    def get_job(self, job_id: str) -> Job | None:
        return self._job_row(self._Job.select().where(self._Job.id == job_id))

    @_operation
    def get_job_by_key(self, plugin_id: str, job_key: str) -> Job | None:
        J = self._Job
        return self._job_row(J.select().where((J.plugin_id == plugin_id) & (J.job_key == job_key)))

    @_operation
    def get_job_for_plugin(self, plugin_id: str, job_id: str) -> Job | None:
        J = self._Job
        return self._job_row(J.select().where((J.id == job_id) & (J.plugin_id == plugin_id)))

    @_operation
    def pause_job(self, job_id: str, *, reason: str | None = None, now: datetime) -> Job:
        J = self._Job
        with self._write():
            changed = J.update(
                status=JobStatus.paused.value,
                paused_by=PausedBy.operator.value,
                status_reason=reason,
                next_run_at=None,
                updated_at=_req(now),
            ).where(J.id == job_id).execute()
            if not changed:
                raise JobLookupError(job_id)
            return self._job_row(J.select().where(J.id == job_id))

    @_operation
    def resume_job(self, job_id: str, *, now: datetime) -> Job:
        now = as_aware_utc(now)
        J = self._Job
        with self._write():
            job = self._job_row(self._lock(J.select().where(J.id == job_id)))
            if job is None:
                raise JobLookupError(job_id)
            if job.status is JobStatus.active:
                return job
            if job.paused_by is PausedBy.manifest:
                raise self.manifest_paused_error(job)
            J.update(
                status=JobStatus.active.value,
                paused_by=None,
                status_reason=None,
                next_run_at=_us(first_fire(job.schedule, job.timezone, now)),
                updated_at=_us(now),
            ).where(J.id == job_id).execute()
            return self._job_row(J.select().where(J.id == job_id))

    @_operation
    def set_next_run(
        self,
        job_id: str,
        *,
        expected: datetime | None,
        next_run_at: datetime | None,
        last_run_at: datetime | None = None,
        now: datetime,
    ) -> bool:
        J = self._Job
        values: dict[str, Any] = {"next_run_at": _us(next_run_at), "updated_at": _req(now)}
        if last_run_at is not None:
            values["last_run_at"] = _us(last_run_at)
        same = J.next_run_at.is_null() if expected is None else J.next_run_at == _us(expected)
        query = J.update(values).where(
            (J.id == job_id) & (J.status == JobStatus.active.value) & same
        )
        return query.execute() == 1

    @_operation
    def due_jobs(
        self, now: datetime, *, limit: int = 100, plugin_ids: Sequence[str] | None = None
    ) -> list[Job]:
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise InvalidArgument(f"limit must be a positive integer, not {limit!r}")
        if plugin_ids is None:
            rows = self._exec(self._sql.get(("due", None)), (_req(now), limit)).fetchall()
            return [_job_tuple(r) for r in rows]
        ids = list(plugin_ids)
        out: list[Job] = []
        # one statement unless there are more plugins than a statement's
        # parameters allow; then merge the pages in due order
        for chunk in _chunks(ids, _PLUGIN_CHUNK):
            stmt = self._sql.get(("due", len(chunk)))
            out += [_job_tuple(r) for r in
                    self._exec(stmt, (_req(now), *chunk, limit)).fetchall()]
        if len(ids) > _PLUGIN_CHUNK:
            out.sort(key=lambda j: (j.next_run_at, j.id))
        return out[:limit]

    @_operation
    def next_due_at(self, plugin_ids: Sequence[str] | None = None) -> datetime | None:
        if plugin_ids is None:
            return from_micros(self._exec(self._sql.get(("next_due", None)), ()).fetchone()[0])
        ids = list(plugin_ids)
        found = []
        for chunk in _chunks(ids, _PLUGIN_CHUNK):
            value = self._exec(self._sql.get(("next_due", len(chunk))), chunk).fetchone()[0]
            if value is not None:
                found.append(value)
        return from_micros(min(found)) if found else None

    @_operation
    def claim_slot(
        self,
        job_id: str,
        *,
        expected: datetime | None,
        run_slot: datetime | None,
        next_run_at: datetime | None,
        missed: int = 0,
        now: datetime,
        owner: str | None = None,
        lease_until: datetime | None = None,
    ) -> Claim:
        _req(now)  # None would only fail the write, and be taken for a refusal
        if not self._claimable(job_id, _us(expected), _us(run_slot)):
            return Claim(applied=False)
        try:
            with self._write():
                return self._claim(job_id, expected=expected, run_slot=run_slot,
                                   next_run_at=next_run_at, missed=missed, now=now,
                                   owner=owner, lease_until=lease_until)
        except pw.IntegrityError:
            # the slot's run appeared between the check and the insert
            return Claim(applied=False)

    @_operation
    def claim_slots(self, claims: Sequence[Any], *, start: int = 0) -> list[Claim]:
        return self._claims(claims, start, [])[1]

    @_operation
    def complete_and_claim(self, ends: Sequence[Any], claims: Sequence[Any], *,
                           start: int = 0) -> tuple[list[bool], list[Claim]]:
        # one transaction for a dispatch round: one commit (and on
        # PostgreSQL two round trips) fewer than the two calls
        return self._claims(claims, start, self._end_args(ends))

    def _claims(self, claims: Sequence[Any], start: int,
                end_args: list[tuple[Any, ...]]) -> tuple[list[bool], list[Claim]]:
        """claim_slots, after recording the ends of *end_args* (checked
        complete arguments) in the same transaction; (whether each end
        applied, the claims)."""
        if len({a[4] for a in end_args}) != len(end_args):  # a run ended twice: on its own
            return self._complete_rows(end_args), self._claims(claims, start, [])[1]
        claims = [dict(c) for c in claims]
        ids = [c["job_id"] for c in claims]
        if len(set(ids)) != len(ids):  # the same job twice: one after the other
            return self._complete_rows(end_args), self._claim_each(claims, start)
        # microseconds once: compared here and again under the lock (the
        # job ids are distinct by now)
        us = _Micros()
        expected = {c["job_id"]: us[c.get("expected")] for c in claims}
        for c in claims:  # a claim's own instant is required (None would convert to NULL)
            if us[c.get("now")] is None:
                _req(c.get("now"))
        results: list[Claim | None] = [None] * len(claims)
        if not self._pg and not end_args and self._others_wrote():
            # The first look, as claim_slot's, but one statement for the
            # batch: a claim it refuses costs no write lock. Only while
            # others write: a claim this connection's own writes left
            # standing is refused (in the transaction) by nobody else, and
            # the look would only add a statement. Not with ends to record:
            # those take the write lock anyway, and a claim of a job whose
            # run ends among them must see the run ended. (PostgreSQL locks
            # only the rows, skipping those another claimer holds: a look
            # would only add a round trip.)
            looked: dict[str, tuple[int | None, bool]] = {}
            for chunk in _chunks(ids):
                for job_id, pointer, status, busy in self._exec(
                        self._sql.get(("look", len(chunk))), chunk).fetchall():
                    if status == _ACTIVE:
                        looked[job_id] = (pointer, bool(busy))
            for i, c in enumerate(claims):
                found = looked.get(c["job_id"])
                if not (found is not None and found[0] == expected[c["job_id"]]
                        and not (found[1] and c.get("run_slot") is not None)):
                    results[i] = Claim(applied=False)
        todo = [claims[i] for i, r in enumerate(results) if r is None]
        if not todo:
            return self._complete_rows(end_args), results  # type: ignore[return-value]
        starting = {c["job_id"] for c in claims[:max(0, start)]}
        try:
            # one transaction for the round; each claim is still checked
            # and applied on its own inside it, exactly as claim_slot does
            with self._write():
                if end_args and not self._all_complete(end_args):
                    raise _NotAll
                done = self._claim_many(todo, expected, starting, us)
        except _NotAll:
            # An end did not apply (its run ended elsewhere): rolled back.
            # The ends on their own learn which; the claims still go together.
            return self._complete_rows(end_args), self._claims(claims, start, [])[1]
        except pw.IntegrityError:
            # a slot's run appeared meanwhile (and the batch was rolled
            # back): claim one by one, so only that claim is refused
            return self._complete_rows(end_args), self._claim_each(claims, start)
        it = iter(done)
        results = [next(it) if r is None else r for r in results]
        return [True] * len(end_args), results  # type: ignore[return-value]

    def _others_wrote(self) -> bool:
        """SQLite: whether another connection (another thread's, another
        process's) committed since this thread's connection last asked; on
        its first asking, True. ``PRAGMA data_version`` tells, without
        reading a table."""
        conn = self._db.connection()
        version = conn.execute("PRAGMA data_version").fetchone()[0]
        seen = getattr(self._versions, "seen", None)
        self._versions.seen = (conn, version)
        return seen is None or seen[0] is not conn or seen[1] != version

    def _claim_each(self, claims: list[dict[str, Any]], start: int) -> list[Claim]:
        """claim_slots one claim at a time, each in a transaction of its own."""
        claimed = [self.claim_slot.__wrapped__(self, **c) for c in claims]
        return self._start_claimed(claims, claimed, start,
                                   functools.partial(self.mark_running.__wrapped__, self))

    def _claim_many(self, claims: list[dict[str, Any]], expected: dict[str, int | None],
                    starting: set[str], us: _Micros) -> list[Claim]:
        """claim_slots' step inside the caller's write transaction: the
        statements of :meth:`_claim`, each issued once for the batch; the
        runs of the jobs in *starting* are written ``running``."""
        sql = self._sql
        ids = [c["job_id"] for c in claims]
        jobs: dict[str, tuple[Any, ...]] = {}
        # SQLite holds the write lock; PostgreSQL locks the job rows
        # (skipping those another scheduler is claiming right now).
        for chunk in _chunks(ids):
            for row in self._exec(sql.get(("lock_many", len(chunk))), chunk).fetchall():
                if row[4] == _ACTIVE:
                    jobs[row[0]] = row
        ready = [c for c in claims if c["job_id"] in jobs
                 and jobs[c["job_id"]][3] == expected[c["job_id"]]]
        runs: dict[str, list[tuple[str, int | None]]] = {}
        with_slot = [c for c in ready if c.get("run_slot") is not None]
        for chunk in _chunks(with_slot):
            # after the lock, in a statement of its own (see _claim)
            slots = sorted({us[c["run_slot"]] for c in chunk})
            chunk_ids = [c["job_id"] for c in chunk]
            stmt = sql.get(("runs_many", len(chunk_ids), len(slots)))
            for job_id, status, scheduled in self._exec(stmt, (*chunk_ids, *slots)).fetchall():
                runs.setdefault(job_id, []).append((status, scheduled))
        out: list[Claim] = []
        inserts: list[tuple[Any, ...]] = []
        moves: dict[bool, list[tuple[Any, ...]]] = {True: [], False: []}
        for c in claims:
            job_id = c["job_id"]
            job = jobs.get(job_id)
            if job is None or job[3] != expected[job_id]:
                out.append(Claim(applied=False))
                continue
            slot, now, now_us = us[c.get("run_slot")], c["now"], us[c["now"]]
            run = None
            if slot is not None:
                rows = runs.get(job_id)  # none, as a rule: no run of the job in flight
                if rows and any(status in _NON_TERMINAL for status, _ in rows):
                    out.append(Claim(applied=False))
                    continue
                if not (rows and any(scheduled == slot for _, scheduled in rows)):
                    started = job_id in starting
                    owner, lease_until = c.get("owner"), c.get("lease_until")
                    # JobRun's fields in order
                    run = new_run(new_id(), job_id, job[1], job[2], RunTrigger.schedule,
                                  RunStatus.running if started else RunStatus.queued,
                                  c["run_slot"], now, now if started else None, None, None,
                                  None, None, owner, lease_until, 1)
                    # the row of _CLAIM_RUN_COLUMNS, from the instants this
                    # batch converted already
                    inserts.append((run.id, job_id, job[1], job[2], _SCHEDULE,
                                    _RUNNING if started else _QUEUED, slot, now_us,
                                    now_us if started else None, owner, us[lease_until], 1))
            moves[slot is not None].append(
                (us[c.get("next_run_at")], now_us, c.get("missed", 0), job_id, slot))
            out.append(Claim(applied=True, run=run))
        # Every claim is decided above, on rows this transaction holds: the
        # writes go in one call per statement (a slot's run that appeared
        # meanwhile raises IntegrityError, and claim_slots rolls back).
        # runs: many rows per statement (one round trip on PostgreSQL)
        for chunk in _chunks(inserts, _RUNS_PER_INSERT):
            self._exec(sql.get(("claim_runs", len(chunk))), [v for row in chunk for v in row])
        if self._pg:  # one statement per chunk (an executemany is a round trip per row)
            for chunk in _chunks(moves[True] + moves[False]):
                self._exec(sql.get(("claim_updates", len(chunk))),
                           [v for row in chunk for v in row])
        else:
            for with_slot, rows in moves.items():
                self._exec_many(sql.get(("claim_update", with_slot)), rows)
        return out

    def _claimable(self, job_id: str, seen: int | None, slot: int | None) -> bool:
        # A first look outside any transaction: when schedulers share a
        # database, most refused claims find the pointer already moved (or a
        # run in flight elsewhere), and refusing then costs one statement
        # instead of a transaction (on SQLite, without taking the write lock).
        # Only a refusal is decided here; the transaction re-checks all.
        stmt = self._sql.get(("precheck", seen is None, slot is not None))
        return self._exec(stmt, (job_id, seen)).fetchone() is not None

    def _claim(
        self,
        job_id: str,
        *,
        expected: datetime | None,
        run_slot: datetime | None,
        next_run_at: datetime | None,
        missed: int = 0,
        now: datetime,
        owner: str | None = None,
        lease_until: datetime | None = None,
    ) -> Claim:
        """claim_slot's step inside the caller's write transaction."""
        sql = self._sql
        seen, slot = _us(expected), _us(run_slot)
        # SQLite holds the write lock; PostgreSQL locks the job row
        # (skipping it when another scheduler is claiming it now).
        job = self._exec(sql.get(("claim_job", seen is None, False)), (job_id, seen)).fetchone()
        if job is None:
            return Claim(applied=False)
        run = None
        if slot is not None:
            # After the lock, in a statement of its own (a fresh snapshot on
            # PostgreSQL): a run committed by a manual trigger that held the
            # row a moment ago is seen.
            rows = self._exec(sql.claim_runs, (job_id, slot)).fetchall()
            if any(status in _NON_TERMINAL for status, _ in rows):
                return Claim(applied=False)
            if not any(scheduled == slot for _, scheduled in rows):
                run = JobRun(id=new_id(), job_id=job_id, plugin_id=job[0], job_key=job[1],
                             trigger=RunTrigger.schedule, scheduled_for=run_slot,
                             created_at=now, owner=owner, lease_until=lease_until)
                self._insert_run(run)
        self._exec(sql.get(("claim_update", slot is not None)),
                   (_us(next_run_at), _us(now), missed, job_id, slot))
        return Claim(applied=True, run=run)

    @_operation
    def delete_plugin(self, plugin_id: str) -> int:
        J, R = self._Job, self._Run
        with self._write():
            ids = J.select(J.id).where(J.plugin_id == plugin_id)
            R.delete().where(R.job.in_(ids)).execute()
            return J.delete().where(J.plugin_id == plugin_id).execute()

    # -- runs ------------------------------------------------------------

    @_operation
    def create_run(
        self,
        job_id: str,
        *,
        trigger: RunTrigger | str,
        now: datetime,
        scheduled_for: datetime | None = None,
        exclusive: bool = True,
        attempt: int = 1,
        owner: str | None = None,
        lease_until: datetime | None = None,
    ) -> JobRun:
        J, R = self._Job, self._Run
        run = JobRun(
            id=new_id(),
            job_id=job_id,
            plugin_id="",
            job_key="",
            trigger=RunTrigger(trigger),
            scheduled_for=scheduled_for,
            created_at=now,
            attempt=attempt,
            owner=owner,
            lease_until=lease_until,
        )
        slot = _us(run.scheduled_for)
        try:
            with self._write():
                # SQLite holds the database write lock; PostgreSQL locks the
                # job row, so the check and the insert are one step.
                job = self._lock(J.select(J.plugin_id, J.job_key).where(J.id == job_id))
                job = job.dicts().first()
                if job is None:
                    raise JobLookupError(job_id)
                run = attrs.evolve(run, plugin_id=job["plugin_id"], job_key=job["job_key"])
                mine = R.job == job_id
                if slot is not None and R.select().where(
                    mine & (R.scheduled_for == slot) & (R.attempt == attempt)
                ).exists():
                    raise SlotAlreadyClaimed(run.job_key, run.scheduled_for)
                if exclusive and R.select().where(mine & R.status.in_(_LIVE_SQL)).exists():
                    raise JobAlreadyRunning(run.job_key)
                self._insert_run(run)
        except pw.IntegrityError as exc:
            # only the slot index can conflict: the job row is held
            raise SlotAlreadyClaimed(run.job_key, run.scheduled_for) from exc
        return run

    def _insert_run(self, run: JobRun) -> None:
        self._exec(self._sql.insert_run, self._run_row(run))

    def _run_row(self, run: JobRun) -> tuple[Any, ...]:
        """*run* as a row of _RUN_COLUMNS."""
        return (run.id, run.job_id, run.plugin_id, run.job_key, run.trigger.value,
                run.status.value, _us(run.scheduled_for), _us(run.created_at),
                _us(run.started_at), _us(run.finished_at), run.duration_ms,
                self._text(run.error), self._text(run.error_detail), run.owner,
                _us(run.lease_until), run.attempt)

    @_operation
    def mark_running(
        self,
        run_id: str,
        *,
        now: datetime,
        owner: str | None = None,
        lease_until: datetime | None = None,
    ) -> bool:
        with self._writer():
            cursor = self._exec(self._sql.mark_running,
                                (_req(now), owner, _us(lease_until), run_id))
        return cursor.rowcount == 1

    @_operation
    def mark_runs_running(
        self,
        run_ids: Sequence[str],
        *,
        now: datetime,
        owner: str | None = None,
        lease_until: datetime | None = None,
    ) -> list[bool]:
        now_us, until_us = _req(now), _us(lease_until)
        if not run_ids:
            return []
        if not _RETURNING and not self._pg:
            return self._each_applies(self._sql.mark_running,
                                      [(now_us, owner, until_us, run_id) for run_id in run_ids],
                                      distinct=len(set(run_ids)) == len(run_ids))
        # One guarded UPDATE for the batch (one round trip on PostgreSQL,
        # where an executemany costs one per row); RETURNING names the runs
        # it applied to, each at most once however often it is listed.
        applied: set[str] = set()
        distinct = list(dict.fromkeys(run_ids))
        with self._write():
            for chunk in _chunks(distinct):
                stmt = self._sql.get(("mark_many", len(chunk)))
                applied.update(i for (i,) in self._exec(
                    stmt, (now_us, owner, until_us, *chunk)).fetchall())
        out = []
        for run_id in run_ids:
            out.append(run_id in applied)
            applied.discard(run_id)  # a repeat of it finds it running already
        return out

    def _each_applies(self, stmt: _Prepared, rows: list[tuple[Any, ...]], *,
                      distinct: bool) -> list[bool]:
        """Run the guarded single-row update *stmt* for each of *rows* in one
        transaction; whether each applied.

        In the common case every one applies, and one driver call for all
        tells so (with distinct rows, a total of len(rows) means each applied
        once). Otherwise that attempt is rolled back and each row is applied
        and counted on its own."""
        if distinct:
            try:
                with self._write():
                    if self._exec_many(stmt, rows) != len(rows):
                        raise _NotAll
                return [True] * len(rows)
            except _NotAll:
                pass  # rolled back; decided row by row below
        with self._write():
            return [self._exec(stmt, row).rowcount == 1 for row in rows]

    def _finish(self, now_us: int, status: RunStatus, error: str | None) -> dict[str, Any]:
        R = self._Run
        # duration from started_at, in SQL so the guarded UPDATE stays one
        # statement; NULL when the run never started, 0 on a clock going back
        duration = pw.Case(
            None, [(R.started_at > now_us, 0)], (pw.Value(now_us) - R.started_at) / 1000
        )
        return {"status": status.value, "finished_at": now_us, "duration_ms": duration,
                "error": self._text(error)}

    def _text(self, value: str | None) -> str | None:
        # PostgreSQL text cannot hold NUL (psycopg2 refuses the whole
        # statement), and an error message is the one free text a store gets
        # from a handler: refusing it would leave the run in flight.
        if value is None or not self._pg or "\x00" not in value:
            return value
        return value.replace("\x00", "\ufffd")

    @_operation
    def complete_run(
        self,
        run_id: str,
        *,
        status: RunStatus | str,
        now: datetime,
        error: str | None = None,
        error_detail: str | None = None,
    ) -> bool:
        now_us = _req(now)
        args = (_terminal_value(status), now_us, self._text(error),
                self._text(error_detail), run_id)
        with self._writer():
            cursor = self._exec(self._complete_for([args]), args)
        return cursor.rowcount == 1

    def _complete_for(self, rows: Sequence[tuple[Any, ...]]) -> _Prepared:
        """The statement for complete's argument *rows*: without bound NULLs
        when none carries an error text (its parameters pick the status,
        instant and run id out of complete's arguments)."""
        if not self._pg and all(a[2] is None and a[3] is None for a in rows):
            return self._sql.complete_clean
        return self._sql.complete

    @_operation
    def complete_runs(self, ends: Sequence[Any]) -> list[bool]:
        return self._complete_rows(self._end_args(ends))

    def _end_args(self, ends: Sequence[Any]) -> list[tuple[Any, ...]]:
        """complete's arguments for each of *ends*, checked (before any write)."""
        if self._pg:
            return [(_terminal_value(e["status"]), _req(e["now"]), self._text(e.get("error")),
                     self._text(e.get("error_detail")), e["run_id"]) for e in ends]
        # SQLite text takes any string (see _text)
        return [(_terminal_value(e["status"]), _req(e["now"]), e.get("error"),
                 e.get("error_detail"), e["run_id"]) for e in ends]

    def _complete_rows(self, args: list[tuple[Any, ...]]) -> list[bool]:
        """complete_runs for its checked arguments, in a transaction of its own."""
        if not args:
            return []
        distinct = len({a[4] for a in args}) == len(args)
        if self._pg and distinct:
            with self._write():
                applied = self._completed(args)
            return [a[4] in applied for a in args]
        return self._each_applies(self._complete_for(args), args, distinct=distinct)

    def _completed(self, args: list[tuple[Any, ...]]) -> set[str]:
        """PostgreSQL, in the caller's transaction: the ends of *args* (run
        ids distinct) in one guarded UPDATE ... FROM (VALUES ...) per chunk;
        the runs it ended, which RETURNING names (an executemany would cost
        a round trip per run, and tell only the total)."""
        applied: set[str] = set()
        for chunk in _chunks(args):
            applied.update(run_id for (run_id,) in self._exec(
                self._sql.get(("completes", len(chunk))),
                [v for a in chunk for v in a]).fetchall())
        return applied

    def _all_complete(self, args: list[tuple[Any, ...]]) -> bool:
        """In the caller's transaction: apply the ends of *args* (run ids
        distinct); whether every one applied. If not, the caller rolls back
        and learns run by run (see complete_and_claim)."""
        if self._pg:
            return len(self._completed(args)) == len(args)
        return self._exec_many(self._complete_for(args), args) == len(args)

    @_operation
    def renew_leases(
        self, owner: str, run_ids: Sequence[str], *, lease_until: datetime, now: datetime
    ) -> list[str]:
        R = self._Run
        until_us = _req(lease_until)
        _req(now)
        renewed: list[tuple[int, str]] = []
        with self._write():
            # deduplicated first: an id repeated in two chunks would be returned twice
            for chunk in _chunks(list(dict.fromkeys(run_ids))):
                mine = R.id.in_(chunk) & (R.owner == owner) & R.status.in_(_LIVE_SQL)
                rows = list(self._lock(R.select(R.created_at, R.id).where(mine)).tuples())
                if rows:
                    R.update(lease_until=until_us).where(
                        R.id.in_([i for _, i in rows])).execute()
                renewed += rows
        # (created_at, id), as every store returns runs, whatever the chunks
        return [run_id for _, run_id in sorted(renewed)]

    @_operation
    def abandon_runs(self, *, now: datetime, owner: str | None = None) -> list[JobRun]:
        R = self._Run
        now_us = _req(now)
        where = R.status.in_(_LIVE_SQL)
        if owner is not None:
            where &= R.owner == owner
        else:
            where &= R.lease_until.is_null(False) & (R.lease_until < now_us)
        with self._write():
            rows = [_run(r) for r in self._lock(R.select().where(where)).dicts()]
            for run in rows:
                values = self._finish(now_us, RunStatus.abandoned,
                                      f"scheduler {run.owner} stopped renewing its lease")
                R.update(values).where((R.id == run.id) & R.status.in_(_LIVE_SQL)).execute()
            ids = [r.id for r in rows]
            out = []
            for chunk in _chunks(ids):
                out += [_run(r) for r in R.select().where(R.id.in_(chunk)).dicts()]
        return sorted(out, key=lambda r: (r.created_at, r.id))

    @_operation
    def get_run(self, run_id: str) -> JobRun | None:
        row = self._exec(self._sql.get_run, (run_id,)).fetchone()
        return None if row is None else _run_tuple(row)

    @_operation
    def list_runs(
        self,
        *,
        plugin_id: str | None = None,
        job_id: str | None = None,
        status: RunStatus | str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> RunPage:
        check_limit(limit)
        R = self._Run
        query = R.select().order_by(R.created_at.desc(), R.id.desc()).limit(limit + 1)
        status = None if status is None else RunStatus(status)
        if status is not None and not status.terminal and not self._pg:
            # SQLite: the runs in flight, found through their own index
            # however long the history. In a subquery: on its own, the
            # condition loses to an index that saves the sort; and the plugin
            # id compared as +plugin_id, or the plugin's index wins (with
            # every run of the plugin). PostgreSQL's planner finds the index.
            live = R.status.in_(_LIVE_SQL) & (R.status == status.value)
            if plugin_id is not None:
                live &= pw.NodeList((pw.SQL("+"), R.plugin_id), glue="") == plugin_id
            if job_id is not None:
                live &= R.job == job_id
            query = query.where(R.id.in_(R.select(R.id).where(live)))
        else:
            if plugin_id is not None:
                query = query.where(R.plugin_id == plugin_id)
            if job_id is not None:
                query = query.where(R.job == job_id)
            if status is not None:
                query = query.where(R.status == status.value)
        if cursor is not None:
            at, last_id = decode_cursor(cursor)
            query = query.where((R.created_at < at) | ((R.created_at == at) & (R.id < last_id)))
        runs = [_run(r) for r in query.dicts()]
        more = len(runs) > limit
        runs = runs[:limit]
        next_cursor = encode_cursor(runs[-1].created_at, runs[-1].id) if more else None
        return RunPage(runs=tuple(runs), next_cursor=next_cursor)

    @_operation
    def cancel_runs(
        self,
        plugin_id: str,
        *,
        reason: str,
        now: datetime,
        job_id: str | None = None,
        owner: str | None = None,
    ) -> list[str]:
        R = self._Run
        where = (R.plugin_id == plugin_id) & R.status.in_(_LIVE_SQL)
        if job_id is not None:
            where &= R.job == job_id
        if owner is not None:
            where &= R.owner == owner
        values = self._finish(_req(now), RunStatus.cancelled, reason)
        with self._write():
            query = self._lock(R.select(R.id).where(where).order_by(R.created_at, R.id))
            ids = [run_id for (run_id,) in query.tuples()]
            for chunk in _chunks(ids):
                R.update(values).where(R.id.in_(chunk) & R.status.in_(_LIVE_SQL)).execute()
        return ids

    @_operation
    def prune_runs(
        self,
        *,
        now: datetime,
        max_age: timedelta | None = None,
        keep_per_job: int | None = None,
    ) -> int:
        if max_age is not None and (not isinstance(max_age, timedelta) or max_age < timedelta(0)):
            raise InvalidArgument(f"max_age must be a non-negative timedelta, not {max_age!r}")
        if keep_per_job is not None and (
            isinstance(keep_per_job, bool) or not isinstance(keep_per_job, int) or keep_per_job < 0
        ):
            raise InvalidArgument(f"keep_per_job must be a non-negative integer, not {keep_per_job!r}")
        now_us = _req(now)
        R = self._Run
        terminal = R.status.in_(_TERMINAL)
        deleted = 0
        with self._write():
            if max_age is not None:
                cutoff = now_us - max_age // timedelta(microseconds=1)
                deleted += R.delete().where(terminal & (R.created_at < cutoff)).execute()
            if keep_per_job is not None:
                rank = pw.fn.ROW_NUMBER().over(
                    partition_by=[R.job], order_by=[R.created_at.desc(), R.id.desc()]
                )
                # Only finished runs are ranked: a run in flight counted among
                # the newest would cost the job its newest finished run.
                ranked = (R.select(R.id.alias("rid"), rank.alias("rn"))
                          .where(R.status.in_(_TERMINAL)).alias("ranked"))
                beyond = pw.Select([ranked], [ranked.c.rid]).where(ranked.c.rn > keep_per_job)
                deleted += R.delete().where(terminal & R.id.in_(beyond)).execute()
        return deleted
