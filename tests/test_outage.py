"""Outages: the job store's database goes away while schedulers run, and comes back.

PostgreSQL outages go through :class:`TcpProxy`, a forwarder on 127.0.0.1
between the store under test and the server: the test cuts it (every
connection closed, new ones refused) and restores it, so only that store sees
the outage while the server keeps serving everything else. The proxy can also
lose a statement's answer in transit (the server applied it, the client
never learns it did): the ambiguous commit. SQLite outages are another
connection holding an exclusive lock for longer than the store's busy timeout.

Everything is asserted through the store: runs, statuses, ``missed_count``,
and the slot accounting of the fault tests (``fault_worker.account``).
"""

from __future__ import annotations

import socket
import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from typing import Any, Callable
from urllib.parse import urlsplit

import pjtest
import pytest
from loguru import logger

from conftest import make_postgres_store
from fault_worker import account
from pjcore.clock import ManualClock, SystemClock
from pjcore.contrib.peewee_store import PeeweeJobStore
from pjcore.contrib.runner import ThreadRunner
from pjcore.contrib.scheduler import ThreadScheduler
from pjcore.exceptions import JobAlreadyRunning, StoreError
from pjcore.manifest import JobDeclaration, JobPolicy
from pjcore.models import RunStatus

UTC = timezone.utc
T0 = datetime(2026, 1, 15, 10, 30, tzinfo=UTC)
PLUGIN, KEY = "outage-plugin", "outage"


# -- the proxy ----------------------------------------------------------------------------


class TcpProxy:
    """Forwards 127.0.0.1:<port> to a server; :meth:`cut` it and :meth:`restore` it."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._up = True
        self._trigger: bytes | None = None
        self._hold = False  # answers from the server are dropped
        self.tripped = threading.Event()
        self.connections = 0  # accepted and forwarded, in all
        threading.Thread(target=self._accept, name="proxy-accept", daemon=True).start()

    def url(self, url: str) -> str:
        """*url* with its host and port replaced by the proxy's."""
        parts = urlsplit(url)
        credentials = parts.netloc.rpartition("@")[0]
        netloc = f"{credentials}@" if credentials else ""
        return parts._replace(netloc=f"{netloc}127.0.0.1:{self.port}").geturl()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # closed
            with self._lock:
                up = self._up
            if not up:
                client.close()  # refused: the client sees the server hang up
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            with self._lock:
                self.connections += 1
                self._sockets |= {client, upstream}
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, to_server: bool) -> None:
        try:
            while data := src.recv(65536):
                if not to_server and self._hold:
                    continue  # the answer is lost in transit
                dst.sendall(data)
                if to_server and self._trigger is not None and self._trigger in data:
                    self._trigger, self._hold = None, True
                    threading.Timer(0.2, self._trip).start()
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def _trip(self) -> None:
        self.cut()
        self.tripped.set()

    def cut_after(self, pattern: bytes) -> threading.Event:
        """Cut once a client sends *pattern*: forward it, drop the server's
        answer, cut 0.2 s later. The server has applied the statement; the
        client only sees its connection die. Returns the event set on the cut."""
        self.tripped.clear()
        self._trigger = pattern
        return self.tripped

    def cut(self) -> None:
        """Close every connection and refuse new ones until :meth:`restore`."""
        with self._lock:
            self._up = False
            sockets, self._sockets = self._sockets, set()
        for s in sockets:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def restore(self) -> None:
        with self._lock:
            self._up, self._hold, self._trigger = True, False, None

    def close(self) -> None:
        self.cut()
        self._listener.close()


@pytest.fixture
def proxy(postgres_url):
    parts = urlsplit(postgres_url)
    proxy = TcpProxy(parts.hostname or "127.0.0.1", parts.port or 5432)
    yield proxy
    proxy.close()


@pytest.fixture
def log():
    """pjcore's log messages (WARNING and above) during the test."""
    messages: list[str] = []
    logger.enable("pjcore")
    sink = logger.add(lambda m: messages.append(m.record["message"]), level="WARNING",
                      format="{message}")
    yield messages
    logger.remove(sink)
    logger.disable("pjcore")


def wait_for(condition: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    return pjtest.wait_for(condition, timeout, what, poll=0.01)


def decl(job_key: str, schedule: str = "* * * * *", **policy: Any) -> JobDeclaration:
    return JobDeclaration(job_key=job_key, display_name=job_key, schedule=schedule,
                          policy=JobPolicy(**policy))


class Rig:
    """A store, a runner and a scheduler; the handler of every job records
    ``(job_key, slot)`` and then calls ``self.behaviour(ctx)`` if set."""

    def __init__(self, store, *, clock=None, **options: Any) -> None:
        self.store = store
        self.clock = clock or ManualClock(T0)
        self.calls: list[tuple[str, datetime]] = []
        self.events: list[tuple[str, str, RunStatus]] = []
        self.behaviour: dict[str, Callable] = {}
        self.runner = ThreadRunner(max_workers=options.get("max_concurrent", 10))
        options.setdefault("default_timeout", None)
        self.scheduler = ThreadScheduler(
            store=store, runner=self.runner, clock=self.clock, resolve=lambda p, j: self._handle,
            notify=lambda name, run, job: self.events.append((name, run.id, run.status)),
            **options)

    def _handle(self, ctx) -> None:
        self.calls.append((ctx.job_key, ctx.scheduled_for))
        behaviour = self.behaviour.get(ctx.job_key)
        if behaviour is not None:
            behaviour(ctx)

    def load(self, *decls: JobDeclaration) -> dict[str, Any]:
        self.store.sync_jobs(PLUGIN, KEY, list(decls), now=self.clock.now())
        self.scheduler.register_plugin(PLUGIN, KEY)
        return {j.job_key: j for j in self.store.list_jobs(PLUGIN)}

    def runs(self, store=None) -> list:
        page = (store or self.store).list_runs(plugin_id=PLUGIN, limit=1000)
        return sorted(page.runs, key=lambda r: (r.created_at, r.id))

    def finished(self, run_id: str) -> list:
        return [e for e in self.events if e[0] == "run_finished" and e[1] == run_id]

    def close(self) -> None:
        self.scheduler.stop(timeout=2)
        self.runner.stop(1)
        self.store.close()


def clean(figures: dict) -> dict:
    assert figures["problems"] == [], figures["problems"]
    assert figures["duplicates"] == 0
    return figures


# -- the store reconnects -----------------------------------------------------------------


def in_every_thread(pool: ThreadPoolExecutor, workers: int, operation: Callable[[], Any]) -> list:
    """*operation* once in each of the pool's *workers* threads and once here."""
    barrier = threading.Barrier(workers)

    def attempt() -> Any:
        barrier.wait(5)  # each worker thread takes exactly one
        try:
            return operation()
        except Exception as exc:  # noqa: BLE001 - the result is the exception
            return exc

    futures = [pool.submit(attempt) for _ in range(workers)]
    try:
        here = operation()
    except Exception as exc:  # noqa: BLE001
        here = exc
    return [f.result(10) for f in futures] + [here]


@pytest.mark.postgres
def test_every_thread_reconnects_after_the_connection_is_cut(postgres_url, proxy):
    # The store lends pooled connections to threads, one operation at a
    # time: whichever thread comes first after an outage must find live ones.
    with make_postgres_store(proxy.url(postgres_url), pool_size=4) as store, \
            ThreadPoolExecutor(3) as pool:
        store.sync_jobs(PLUGIN, KEY, [decl("sync")], now=T0)
        count = lambda: len(store.list_jobs())  # noqa: E731
        assert in_every_thread(pool, 3, count) == [1, 1, 1, 1]
        opened = proxy.connections
        assert 1 <= opened <= 4
        proxy.cut()
        failed = in_every_thread(pool, 3, count)
        # a clean pjcore error in every thread, naming the store, never a driver error
        assert all(isinstance(e, StoreError) and "list_jobs failed" in str(e) for e in failed), failed
        proxy.restore()
        assert in_every_thread(pool, 3, count) == [1, 1, 1, 1]
        # Cut while every connection sits idle, then back: the next operation
        # notices the dead connection and reconnects instead of failing on it.
        proxy.cut()
        proxy.restore()
        assert in_every_thread(pool, 3, count) == [1, 1, 1, 1]
        # never more connections than the pool holds, however many threads
        assert proxy.connections - opened <= 2 * 4


@pytest.mark.postgres
def test_a_connection_lost_inside_a_transaction_is_dropped_and_reopened(postgres_url, proxy):
    import psycopg2

    with make_postgres_store(proxy.url(postgres_url)) as store, \
            ThreadPoolExecutor(1) as pool:
        store.sync_jobs(PLUGIN, KEY, [decl("sync")], now=T0)
        job = store.list_jobs()[0]
        # Another session holds the job row: create_run waits on it inside its
        # transaction, and the connection dies there.
        holder = psycopg2.connect(postgres_url)
        try:
            cursor = holder.cursor()
            cursor.execute(f'SELECT id FROM "{store.table_prefix}jobs" WHERE id = %s FOR UPDATE',
                           (job.id,))
            blocked = pool.submit(store.create_run, job.id, trigger="manual", now=T0)
            time.sleep(0.3)
            assert not blocked.done()
            proxy.cut()
            with pytest.raises(StoreError, match="create_run failed"):
                blocked.result(10)
            holder.rollback()
        finally:
            holder.close()
        proxy.restore()
        # the same thread, at once: a new connection, no transaction left over
        run = pool.submit(store.create_run, job.id, trigger="manual", now=T0).result(10)
        assert [r.id for r in store.list_runs().runs] == [run.id]


# -- ambiguous commits: applied on the server, lost on the way back ------------------------


@pytest.fixture
def proxied_rig(postgres_url, proxy):
    """A scheduler whose store goes through the proxy, and a direct store on
    the same tables to look at them."""
    rigs = []

    def make(**options: Any) -> tuple[Rig, Any]:
        direct = PeeweeJobStore(postgres_url, table_prefix=prefix)
        rig = Rig(PeeweeJobStore(proxy.url(postgres_url), table_prefix=prefix), **options)
        rigs.append((rig, direct))
        return rig, direct

    with make_postgres_store(postgres_url) as owner_store:
        prefix = owner_store.table_prefix
        yield make
        for rig, direct in rigs:
            proxy.restore()
            rig.close()
            direct.close()


@pytest.mark.postgres
def test_a_claim_committed_but_reported_failed_is_still_run(proxied_rig, proxy, log):
    rig, direct = proxied_rig(lease_seconds=600)
    job = rig.load(decl("sync"))["sync"]  # every minute: first slot 10:31
    rig.clock.set(T0 + timedelta(seconds=30))
    rig.scheduler.tick()  # nothing due; looks for expired runs (a commit) out of the way
    cut = proxy.cut_after(b"COMMIT")
    rig.clock.set(T0 + timedelta(minutes=1))
    with pytest.raises(StoreError):
        rig.scheduler.tick()
    assert cut.wait(5)
    proxy.restore()
    # the claim did commit: a run nobody started, recorded running by the
    # claim (a worker was idle for it)
    (run,) = rig.runs(direct)
    assert (run.status, run.owner, run.scheduled_for) == (
        RunStatus.running, rig.scheduler.owner, T0 + timedelta(minutes=1))
    assert direct.get_job(job.id).next_run_at == T0 + timedelta(minutes=2)
    rig.clock.advance(1)
    rig.scheduler.tick()  # the first round after the failure finds it and starts it
    wait_for(lambda: direct.get_run(run.id).status is RunStatus.succeeded, what="run succeeded")
    assert rig.calls == [("sync", T0 + timedelta(minutes=1))]
    assert len(rig.runs(direct)) == 1
    assert any("starting it now" in m for m in log)
    clean(account(direct, PLUGIN))


@pytest.mark.postgres
def test_a_start_applied_but_reported_failed_runs_the_handler_once(proxied_rig, proxy, log):
    rig, direct = proxied_rig(lease_seconds=600)
    # A runner that cannot tell its idle workers: the claim records the run
    # queued and the worker marks it running (mark_running's UPDATE)
    rig.runner.idle_workers = lambda: None
    rig.load(decl("sync"))
    rig.clock.set(T0 + timedelta(seconds=30))
    rig.scheduler.tick()
    cut = proxy.cut_after(b"= 'running'")  # mark_running's UPDATE
    rig.clock.set(T0 + timedelta(minutes=1))
    assert rig.scheduler.tick() == 1
    assert cut.wait(5)
    proxy.restore()
    (run,) = wait_for(lambda: [r for r in rig.runs(direct) if r.status.terminal], what="run ended")
    assert run.status is RunStatus.succeeded, run.error
    assert rig.calls == [("sync", T0 + timedelta(minutes=1))]
    assert any("could not start" in m for m in log)


@pytest.mark.postgres
def test_an_end_applied_but_reported_failed_is_recorded_once(proxied_rig, proxy, log):
    rig, direct = proxied_rig(lease_seconds=600)
    job = rig.load(decl("sync"))["sync"]
    rig.clock.set(T0 + timedelta(seconds=30))
    rig.scheduler.tick()
    cut = proxy.cut_after(b"= 'succeeded'")  # complete_run's UPDATE
    rig.clock.set(T0 + timedelta(minutes=1))
    assert rig.scheduler.tick() == 1
    assert cut.wait(5)
    (run,) = rig.runs(direct)
    assert run.status is RunStatus.succeeded  # on the server; the scheduler does not know
    wait_for(lambda: any("could not record the end" in m for m in log), what="deferred end")
    # until its end is recorded the job stays busy here
    assert rig.scheduler.diagnostics()["active_run_ids"] == [run.id]
    proxy.restore()
    with pytest.raises(JobAlreadyRunning):
        rig.scheduler.trigger(job.id)
    rig.clock.advance(1)
    rig.scheduler.tick()
    assert rig.scheduler.diagnostics()["active_run_ids"] == []
    assert direct.get_run(run.id).status is RunStatus.succeeded
    assert len(rig.finished(run.id)) == 1  # announced once, as succeeded
    assert not any("ended elsewhere" in m for m in log)


@pytest.mark.postgres
def test_an_end_deferred_past_the_lease_never_overwrites_the_abandonment(proxied_rig, proxy, log):
    # A partition: "cut" loses its database, "peer" does not. cut's run
    # ends during the partition and outlives its lease: the peer records it
    # abandoned; cut's late record must not overwrite that.
    cut, direct = proxied_rig(lease_seconds=30)
    peer = Rig(direct, clock=cut.clock, lease_seconds=30)
    try:
        release = threading.Event()
        cut.behaviour["sync"] = lambda ctx: release.wait(10)
        cut.load(decl("sync"))
        peer.scheduler.register_plugin(PLUGIN, KEY)
        cut.clock.set(T0 + timedelta(minutes=1))
        assert cut.scheduler.tick() == 1
        (run,) = wait_for(lambda: [r for r in cut.runs(direct) if r.status is RunStatus.running])
        proxy.cut()
        release.set()
        wait_for(lambda: any("could not record the end" in m for m in log), what="deferred end")
        cut.clock.set(T0 + timedelta(minutes=1, seconds=45))  # the lease ran out at 10:31:30
        peer.scheduler.tick()
        abandoned = direct.get_run(run.id)
        assert abandoned.status is RunStatus.abandoned and cut.scheduler.owner in abandoned.error
        proxy.restore()
        cut.scheduler.tick()
        assert cut.scheduler.diagnostics()["active_run_ids"] == []  # settled: ended elsewhere
        assert direct.get_run(run.id) == abandoned  # never overwritten
        assert any("ended elsewhere" in m for m in log)
        assert cut.calls == [("sync", T0 + timedelta(minutes=1))] and peer.calls == []
    finally:
        peer.scheduler.stop(1)
        peer.runner.stop(1)


# -- schedulers on real threads through an outage -----------------------------------------


def ride_out(store, outage_start: Callable[[], None], outage_end: Callable[[], None],
             log: list[str], *, observer=None, outage: float = 3.0) -> dict:
    """Per-second jobs on a real clock; the database goes away for *outage*
    seconds while runs are in flight, then comes back.

    ``fast-*`` jobs return at once; ``slow`` sleeps 1.5 s, so its run ends
    during the outage (its end cannot be recorded then); ``long`` sleeps 5 s
    once, so its run spans the outage (its lease, 2 s, cannot be renewed
    then). Returns the figures of the slot accounting.
    """
    observer = observer or store
    rig = Rig(store, clock=SystemClock(), lease_seconds=2.0, max_idle=0.5)
    long_runs: list[str] = []

    def long(ctx) -> None:
        if not long_runs:
            long_runs.append(ctx.run_id)
            ctx.wait(5)

    rig.behaviour.update({"slow": lambda ctx: ctx.wait(1.5), "long": long})
    rig.load(*(decl(f"fast-{i}", "* * * * * *") for i in range(4)),
             decl("slow", "* * * * * *"), decl("long", "* * * * * *"))
    rig.scheduler.start()
    try:
        wait_for(lambda: long_runs and any(r.status is RunStatus.running and r.job_key == "slow"
                                           for r in rig.runs(observer)),
                 what="slow and long runs in flight")
        in_flight = {r.id for r in rig.runs(observer) if not r.status.terminal}
        cut_at = datetime.now(UTC)
        outage_start()
        time.sleep(outage)
        outage_end()
        back_at = datetime.now(UTC)
        # back in business: every job runs a slot after the outage
        wait_for(lambda: {r.job_key for r in rig.runs(observer) if r.scheduled_for > back_at}
                 >= {"fast-0", "fast-1", "fast-2", "fast-3", "slow"}, timeout=8,
                 what="every job runs again")
        diagnostics = rig.scheduler.diagnostics()
        assert diagnostics["running"] and diagnostics["consecutive_errors"] == 0
    finally:
        rig.scheduler.stop(timeout=5)
    runs = {r.id: r for r in rig.runs(observer)}
    # the runs in flight when the database went away: none lost, none abandoned
    assert {runs[i].status for i in in_flight} == {RunStatus.succeeded}, [
        (runs[i].job_key, runs[i].status, runs[i].error) for i in in_flight]
    # the slow run ended during the outage: recorded afterwards, with its real end
    assert any(cut_at < runs[i].finished_at < back_at for i in in_flight)
    # the long run's lease was renewed once the database was back
    assert runs[long_runs[0]].lease_until > back_at
    assert any("tick failed" in m for m in log) and any("resumed after" in m for m in log)
    assert any("could not record the end" in m for m in log)
    assert len(rig.calls) == len(set(rig.calls))  # no slot handled twice
    figures = clean(account(observer, PLUGIN))
    assert figures["missed"] > 0  # slots of the outage: coalesced and counted, per run_once
    rig.runner.stop(1)
    return figures


@pytest.mark.postgres
def test_a_scheduler_rides_out_a_postgres_outage(postgres_url, proxy, log):
    with make_postgres_store(postgres_url) as direct:
        store = PeeweeJobStore(proxy.url(postgres_url), table_prefix=direct.table_prefix)
        try:
            figures = ride_out(store, proxy.cut, proxy.restore, log, observer=direct)
        finally:
            proxy.restore()
            store.close()
    print(f"\nPostgreSQL outage (proxy cut 3 s): {figures}")


def test_a_scheduler_rides_out_a_long_sqlite_lock(tmp_path, log):
    path = tmp_path / "jobs.db"
    store = PeeweeJobStore(f"sqlite:///{path}", timeout=0.3)
    observer = PeeweeJobStore(f"sqlite:///{path}")  # reads go on under the lock (WAL)
    locker = sqlite3.connect(path, isolation_level=None, timeout=10, check_same_thread=False)
    try:
        figures = ride_out(store, lambda: locker.execute("BEGIN EXCLUSIVE"),
                           lambda: locker.execute("COMMIT"), log, observer=observer)
    finally:
        if locker.in_transaction:
            locker.execute("ROLLBACK")
        locker.close()
        store.close()
        observer.close()
    print(f"\nSQLite lock held 3 s (busy timeout 0.3 s): {figures}")
