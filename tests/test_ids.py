"""Ids the stores give runs and jobs: UUID version 7, ordered by creation time."""

import time
import uuid

from pjcore.store_base import new_id


def test_ids_are_uuid7_and_unique():
    ids = [new_id() for _ in range(20_000)]
    assert len(set(ids)) == len(ids)
    for value in ids[:2000]:
        parsed = uuid.UUID(value)
        assert parsed.version == 7 and parsed.variant == uuid.RFC_4122
        assert str(parsed) == value  # canonical form: lower-case hex, dashes


def test_ids_made_later_sort_later():
    first = new_id()
    time.sleep(0.002)  # ids of one millisecond share the time part only
    second = new_id()
    assert first < second
    # the leading 48 bits are the Unix time in milliseconds
    millis = int(second.replace("-", "")[:12], 16)
    assert abs(millis - time.time() * 1000) < 5_000
