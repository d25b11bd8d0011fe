"""Clocks: the real one, and a manual one that tests move by hand.

The scheduler never calls ``time.sleep`` or ``datetime.now`` itself; it asks
its clock for the time and waits through it, so a test can drive real
scheduler threads through hours of schedule in milliseconds.
"""

from __future__ import annotations

import threading
import time
from datetime import datetime, timedelta, timezone

__all__ = ["Clock", "ManualClock", "SystemClock"]

UTC = timezone.utc


def _aware(instant: datetime) -> datetime:
    # astimezone() would read a naive value as local time: refuse it instead
    if instant.tzinfo is None or instant.utcoffset() is None:
        raise ValueError(f"naive datetime {instant!r}: a ManualClock needs an aware instant")
    return instant.astimezone(UTC)


class Clock:
    """Interface: ``now()`` and ``wait(event, until)``."""

    def now(self) -> datetime:
        """The current instant, timezone-aware UTC."""
        raise NotImplementedError

    def wait(self, event: threading.Event, until: datetime | None, max_wait: float) -> bool:
        """Block until *event* is set, the clock reaches *until*, or
        *max_wait* real seconds pass. Return whether *event* was set."""
        raise NotImplementedError


class SystemClock(Clock):
    def now(self) -> datetime:
        return datetime.now(UTC)

    def wait(self, event: threading.Event, until: datetime | None, max_wait: float) -> bool:
        timeout = max_wait
        if until is not None:
            timeout = min(max_wait, max(0.0, (until - self.now()).total_seconds()))
        return event.wait(timeout)

    def __repr__(self) -> str:
        return "SystemClock()"


class ManualClock(Clock):
    """A clock that moves only when told to; waiting threads wake when it does."""

    def __init__(self, start: datetime | None = None) -> None:
        self._now = _aware(start or datetime(2026, 1, 15, 10, 30, tzinfo=UTC))
        self._cond = threading.Condition()

    def now(self) -> datetime:
        with self._cond:
            return self._now

    def advance(self, seconds: float = 0.0, **delta: float) -> datetime:
        """Move forward by *seconds* (or ``timedelta`` keywords) and wake waiters."""
        step = timedelta(seconds=seconds, **delta)
        if step < timedelta(0):
            raise ValueError("a ManualClock never goes back")
        with self._cond:
            self._now += step
            self._cond.notify_all()
            return self._now

    def set(self, instant: datetime) -> datetime:
        with self._cond:
            instant = _aware(instant)
            if instant < self._now:
                raise ValueError("a ManualClock never goes back")
            self._now = instant
            self._cond.notify_all()
            return self._now

    def wait(self, event: threading.Event, until: datetime | None, max_wait: float) -> bool:
        deadline = time.monotonic() + max_wait
        with self._cond:
            while not event.is_set():
                if until is not None and self._now >= until:
                    return False
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                # Short slices: the event is set from other threads without
                # notifying this condition.
                self._cond.wait(min(left, 0.005))
            return True

    def __repr__(self) -> str:
        return f"ManualClock({self._now.isoformat()})"
