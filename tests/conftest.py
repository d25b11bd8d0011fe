"""Shared fixtures: job stores over every backend, and PostgreSQL access.

PostgreSQL tests use ``PJCORE_TEST_POSTGRES_URL`` (default
``postgresql://postgres@127.0.0.1:5432/test``). When it is unreachable they
are skipped, unless ``PJCORE_REQUIRE_POSTGRES`` is set (and not ``"0"``), in
which case they fail: CI sets it so a broken database never passes silently.
"""

from __future__ import annotations

import os
import uuid
from contextlib import contextmanager
from typing import Any, Iterator
from urllib.parse import urlsplit, urlunsplit

import pytest
from loguru import logger

# must run before pjcore.testing is imported, for readable assertion failures
pytest.register_assert_rewrite("pjcore.testing")

from pjcore.exceptions import StoreError  # noqa: E402

POSTGRES_URL_ENV = "PJCORE_TEST_POSTGRES_URL"
REQUIRE_POSTGRES_ENV = "PJCORE_REQUIRE_POSTGRES"
DEFAULT_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"


def redact(url: str) -> str:
    """*url* without its password, for messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"{parts.username}:***@{netloc}"))


def postgres_required() -> bool:
    return os.environ.get(REQUIRE_POSTGRES_ENV, "") not in ("", "0")


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """A reachable PostgreSQL URL, or skip (fail when PostgreSQL is required).

    Checked once per session: pytest caches the skip/fail for later requests.
    """
    url = os.environ.get(POSTGRES_URL_ENV) or DEFAULT_POSTGRES_URL
    try:
        import psycopg2

        psycopg2.connect(url, connect_timeout=3).close()
        return url
    except Exception as exc:  # noqa: BLE001 - any failure means "not reachable"
        error = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    password = urlsplit(url).password
    if password:
        error = error.replace(password, "***")
    message = (
        f"PostgreSQL not reachable at {redact(url)}: {error}; set {POSTGRES_URL_ENV} "
        f"to a reachable database (set {REQUIRE_POSTGRES_ENV}=1 to fail instead of skip)"
    )
    if postgres_required():
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


@contextmanager
def make_postgres_store(url: str, **options: Any) -> Iterator[Any]:
    """A PeeweeJobStore on *url* in tables of its own (a unique ``table_prefix``),
    dropped afterwards, so tests never see each other's rows."""
    from pjcore.contrib.peewee_store import PeeweeJobStore

    options.setdefault("table_prefix", f"pjt_{uuid.uuid4().hex[:8]}_")
    store = PeeweeJobStore(url, **options)
    try:
        yield store
    finally:
        try:
            store.drop_tables()
        except StoreError:
            # the test closed the store: drop through a fresh one
            cleaner = PeeweeJobStore(url, **options)
            cleaner.drop_tables()
            cleaner.close()
        store.close()


@pytest.fixture(
    params=["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def store(request, tmp_path) -> Iterator[Any]:
    """A fresh, empty job store of each backend."""
    if request.param == "memory":
        from pjcore.contrib.memory import MemoryJobStore

        store = MemoryJobStore()
        yield store
        store.close()
    elif request.param == "sqlite":
        from pjcore.contrib.peewee_store import PeeweeJobStore

        store = PeeweeJobStore(f"sqlite:///{tmp_path}/jobs.db")
        yield store
        store.close()
    else:
        with make_postgres_store(request.getfixturevalue("postgres_url")) as store:
            yield store


@pytest.fixture
def pjcore_logs():
    """What pjcore logs during the test (loguru), with logging switched back off after."""
    messages: list = []
    logger.enable("pjcore")
    handler_id = logger.add(messages.append, format="{message}", level="DEBUG")
    try:
        yield messages
    finally:
        logger.remove(handler_id)
        logger.disable("pjcore")
