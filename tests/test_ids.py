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


def test_ids_of_one_process_sort_in_the_order_they_were_made():
    # thousands per millisecond: the order within a millisecond is kept too,
    # so rows inserted one after the other sit side by side in id order
    ids = [new_id() for _ in range(50_000)]
    assert ids == sorted(ids)
    millis = [value.replace("-", "")[:12] for value in ids]
    assert len(set(millis)) < len(ids)  # many shared a millisecond


def test_ids_made_from_many_threads_are_unique_and_ordered_per_thread():
    import threading

    made: dict[int, list[str]] = {}

    def make(k: int) -> None:
        made[k] = [new_id() for _ in range(5_000)]

    threads = [threading.Thread(target=make, args=(k,)) for k in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    every = [value for ids in made.values() for value in ids]
    assert len(set(every)) == len(every) == 20_000
    assert all(ids == sorted(ids) for ids in made.values())


def test_the_step_within_a_millisecond_is_random():
    # counting up by a random step: the next id is not the last one plus one
    values = [int(new_id().replace("-", ""), 16) for _ in range(2_000)]
    steps = {b - a for a, b in zip(values, values[1:]) if b - a < 1 << 20}
    assert len(steps) > 10


def test_a_forked_child_does_not_count_on_from_its_parent():
    import os

    from pjcore import store_base

    new_id()
    assert store_base._last_ms != 0
    read, write = os.pipe()
    # another thread holds the id lock at the fork: the child must not wait
    # for a release that only the parent's thread would make
    with store_base._id_lock:
        pid = os.fork()
        if pid == 0:  # the child: report its state, make no test output
            fresh = store_base._last_ms == 0
            new_id()  # would block forever on the inherited, held lock
            os.write(write, b"1" if fresh else b"0")
            os._exit(0)
    os.close(write)
    import select
    import signal

    ready, _, _ = select.select([read], [], [], 10)
    if not ready:  # stuck on the inherited lock
        os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    assert ready and os.read(read, 1) == b"1"
    os.close(read)
