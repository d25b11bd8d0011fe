"""Checkpoints of a SQLite WAL, made by a thread of their own.

SQLite checkpoints in whichever connection's commit takes the WAL past
``wal_autocheckpoint`` pages (1,000 by default): that commit then copies the
pages into the database file and syncs both files before it returns. In a
pjcore process that connection is nearly always the scheduler's loop, which
then starts nothing meanwhile (15-35 us per job of a 10,000-job burst on the
development machine, a tenth of it). The peewee store therefore gives its
connections a WAL limit four times the default (a safety net, see
:data:`SAFETY_PAGES`) and checkpoints from here instead: after every
:data:`EVERY` commits of the process, and :data:`IDLE` seconds after fewer.

A ``PASSIVE`` checkpoint never waits for readers or writers, nor blocks them:
commits go on while it copies. What is durable when is unchanged: with
``synchronous=NORMAL`` a commit is safe from a crash of the process at once,
and from a power loss once a checkpoint synced it.
"""

from __future__ import annotations

import sqlite3
import threading

from loguru import logger

__all__ = ["EVERY", "IDLE", "SAFETY_PAGES", "WAL_SIZE_LIMIT", "WalCheckpointer"]

#: commits of the process between two checkpoints (about the default 1,000
#: pages of WAL, at the 15 or so pages a dispatch round writes)
EVERY = 64
#: seconds after which fewer commits are checkpointed all the same
IDLE = 5.0
#: ``wal_autocheckpoint`` of the store's own connections. A WAL is written
#: from its start again only when a checkpoint caught up with it between two
#: commits, which a stream of commits seldom leaves time for: in a burst the
#: WAL grows to this (16 MB), and the commit that takes it there checkpoints
#: what the thread has not yet copied
SAFETY_PAGES = 4_000
#: bytes a WAL is cut back to once written from its start again (SQLite's
#: ``journal_size_limit``): a burst does not leave a 16 MB file behind
WAL_SIZE_LIMIT = 4 * 1024 * 1024


class WalCheckpointer:
    """Checkpoints the WAL of the SQLite file at *path* from a daemon thread.

    :meth:`committed` is called after each commit of the process (cheap: a
    counter); the thread starts at the first one and ends with :meth:`stop`.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        #: seconds after which fewer than EVERY commits are checkpointed
        self.idle = IDLE
        #: checkpoints made (for tests and diagnostics)
        self.checkpoints = 0
        self._commits = 0  # since the last checkpoint; lost increments only delay one
        self._due = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stopped = False

    def committed(self) -> None:
        self._commits += 1
        thread = self._thread
        # not alive: not started yet, or this is a child process forked
        # after it started (threads do not survive a fork)
        if thread is None or not thread.is_alive():
            self._start()
        if self._commits >= EVERY and not self._due.is_set():
            self._due.set()

    def _start(self) -> None:
        with self._lock:
            if (self._thread is not None and self._thread.is_alive()) or self._stopped:
                return
            # a daemon: a process that never closes its store still exits
            self._thread = threading.Thread(target=self._run, daemon=True,
                                            name="pjcore-wal-checkpoint")
            self._thread.start()

    def _run(self) -> None:
        conn: sqlite3.Connection | None = None
        try:
            while not self._stopped:
                self._due.wait(self.idle)
                self._due.clear()
                if self._stopped or not self._commits:
                    continue
                self._commits = 0
                try:
                    if conn is None:
                        conn = sqlite3.connect(self.path, check_same_thread=False)
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                    self.checkpoints += 1
                except sqlite3.Error as exc:  # another checkpoint, a file gone: next time
                    logger.debug("pjcore could not checkpoint {path}: {error}", path=self.path,
                                 error=exc)
        finally:
            if conn is not None:
                conn.close()

    def stop(self, timeout: float = 5.0) -> None:
        """End the thread (after the checkpoint it may be making). Idempotent."""
        with self._lock:
            self._stopped = True
            thread = self._thread
        self._due.set()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
