"""The instant conversions every store shares: integer microseconds since the epoch."""

from datetime import datetime, timedelta, timezone

import pytest

from pjcore import store_base
from pjcore.exceptions import InvalidArgument
from pjcore.store_base import duration_ms, from_micros, to_micros


@pytest.mark.parametrize("micros", [0, 1, -1, 1_795_817_870_123_456, -62_135_596_800_000_000,
                                    253_402_300_799_999_999])
def test_microseconds_round_trip_exactly(micros):
    instant = from_micros(micros)
    assert instant.tzinfo is timezone.utc
    assert to_micros(instant) == micros
    assert instant == datetime(1970, 1, 1, tzinfo=timezone.utc) + timedelta(microseconds=micros)


def test_none_stays_none():
    assert from_micros(None) is None


def test_one_instant_read_twice_is_one_object_and_the_cache_is_bounded(monkeypatch):
    monkeypatch.setattr(store_base, "_INSTANTS", {})
    monkeypatch.setattr(store_base, "_INSTANTS_MAX", 8)
    assert from_micros(5) is from_micros(5)
    for micros in range(100):
        assert to_micros(from_micros(micros)) == micros
        assert len(store_base._INSTANTS) <= 8


def test_duration_is_whole_milliseconds_truncated_and_never_negative():
    start = from_micros(1_000_000)
    assert duration_ms(start, from_micros(1_001_999)) == 1
    assert duration_ms(start, from_micros(999_000)) == 0
    assert duration_ms(None, start) is None


@pytest.mark.parametrize("cursor", ["--5:x", "²:x", "٣:x", "+5:x", "5 :x"])
@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_a_cursor_whose_number_is_not_ascii_digits_is_refused(kind, cursor, tmp_path):
    from pjcore.contrib.memory import MemoryJobStore
    from pjcore.contrib.peewee_store import PeeweeJobStore

    store = MemoryJobStore() if kind == "memory" else PeeweeJobStore(f"sqlite:///{tmp_path}/c.db")
    try:
        with pytest.raises(InvalidArgument, match="malformed cursor"):
            store.list_runs(cursor=cursor)
    finally:
        store.close()
