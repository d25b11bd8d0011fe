"""Cron schedules: strict validation and next fire times in a job's timezone.

This is the only module that imports croniter. croniter is used on *naive
wall-clock* times only; mapping wall-clock times to instants (and the DST
rules) is done here, so croniter's own timezone handling never matters.

Dialect (see the README for the user-facing version):

* 5 fields ``minute hour day-of-month month day-of-week``, or 6 fields with
  an extra **seconds field first**: ``second minute hour dom month dow``.
* ``*``, ``N``, ``N-M`` (N <= M), ``*/S``, ``N/S``, ``N-M/S`` (S >= 1), lists.
* Month names ``JAN``-``DEC`` and weekday names ``SUN``-``SAT``; Sunday is 0 or 7.
* ``?`` as ``*`` in day fields; ``L`` (last day) and ``NW`` (nearest weekday)
  in day-of-month; ``D#K`` (K-th weekday D of the month) in day-of-week.
* Macros ``@yearly`` ``@annually`` ``@monthly`` ``@weekly`` ``@daily``
  ``@midnight`` ``@hourly``.
* When both day-of-month and day-of-week are restricted, a day matches if
  **either** does (Vixie cron), unlike Paperclip, which ANDs them.

DST rules, for a zone with transitions:

* Schedules with a fixed hour (``30 2 * * *``): a wall time skipped by the
  spring-forward gap fires once, at the first instant after the gap; a wall
  time repeated by the fall-back fires once, at its first occurrence.
* Schedules whose hour field is ``*`` fire on the wall clock as it is lived:
  nothing inside the gap, and in both passes of a repeated hour, so an
  "every 10 minutes" job keeps its cadence through both transitions.
"""

from __future__ import annotations

import re
import threading
from datetime import datetime, timedelta, timezone
from functools import lru_cache
from typing import Iterator
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter
from croniter.croniter import CroniterBadDateError, CroniterError

from pjcore.exceptions import CronError

__all__ = [
    "CronSchedule",
    "MAX_EXPRESSION_LENGTH",
    "get_schedule",
    "get_timezone",
    "next_after",
    "preview",
    "validate",
    "validate_timezone",
]

UTC = timezone.utc
MAX_EXPRESSION_LENGTH = 200

MACROS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}

_MONTHS = {m: i for i, m in enumerate(
    ["JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"], 1
)}
_DAYS = {d: i for i, d in enumerate(["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"])}

# (name, minimum, maximum, names)
_SECOND = ("second", 0, 59, None)
_FIELDS_5 = (
    ("minute", 0, 59, None),
    ("hour", 0, 23, None),
    ("day-of-month", 1, 31, None),
    ("month", 1, 12, _MONTHS),
    ("day-of-week", 0, 7, _DAYS),
)

_VALUE = r"[0-9]+|[A-Za-z]{3}"
_PART = re.compile(
    rf"^(?:(?P<star>\*)|(?P<start>{_VALUE})(?:-(?P<end>{_VALUE}))?)(?:/(?P<step>[0-9]+))?$"
)
_NEAREST_WEEKDAY = re.compile(r"^(?P<day>[0-9]+)W$")
_NTH_WEEKDAY = re.compile(rf"^(?P<day>{_VALUE})#(?P<nth>[0-9]+)$")


def _value(token: str, field: tuple, expr: str) -> int:
    name, lo, hi, names = field
    if token.isdigit():
        value = int(token)
    elif names is not None and token.upper() in names:
        value = names[token.upper()]
    else:
        raise CronError(expr, f"invalid value {token!r} in the {name} field")
    if not lo <= value <= hi:
        raise CronError(expr, f"value {value} out of range [{lo}-{hi}] in the {name} field")
    return value


def _check_field(text: str, field: tuple, expr: str) -> None:
    name, lo, hi, _ = field
    if text == "":
        raise CronError(expr, f"empty {name} field")
    for part in text.split(","):
        if part == "":
            raise CronError(expr, f"empty element in the {name} field")
        if name in ("day-of-month", "day-of-week") and part == "?":
            continue
        if name == "day-of-month":
            if part in ("L", "l"):
                continue
            m = _NEAREST_WEEKDAY.match(part)
            if m:
                _value(m["day"], field, expr)
                continue
        if name == "day-of-week":
            m = _NTH_WEEKDAY.match(part)
            if m:
                _value(m["day"], field, expr)
                if not 1 <= int(m["nth"]) <= 5:
                    raise CronError(expr, f"'#{m['nth']}' must be #1 to #5 in the {name} field")
                continue
        m = _PART.match(part)
        if not m:
            raise CronError(expr, f"invalid element {part!r} in the {name} field")
        if m["step"] is not None:
            step = int(m["step"])
            if not 1 <= step <= hi:
                raise CronError(expr, f"step {step} out of range [1-{hi}] in the {name} field")
        if m["start"] is not None:
            start = _value(m["start"], field, expr)
            if m["end"] is not None:
                end = _value(m["end"], field, expr)
                if start > end:
                    raise CronError(expr, f"range {part!r} has start > end in the {name} field")


def _normalize(expression: object) -> tuple[str, bool]:
    """Check the syntax and ranges; return (croniter expression, has_seconds)."""
    if not isinstance(expression, str):
        raise CronError(expression, f"must be a string, not {type(expression).__name__}")
    if len(expression) > MAX_EXPRESSION_LENGTH:
        raise CronError(expression[:40] + "...", f"longer than {MAX_EXPRESSION_LENGTH} characters")
    expr = " ".join(expression.split())
    if not expr:
        raise CronError(expression, "must not be empty")
    if expr.startswith("@"):
        if expr.lower() not in MACROS:
            raise CronError(expression, f"unknown macro {expr!r} (known: {', '.join(MACROS)})")
        return MACROS[expr.lower()], False
    fields = expr.split(" ")
    if len(fields) == 5:
        layout = _FIELDS_5
    elif len(fields) == 6:
        layout = (_SECOND, *_FIELDS_5)
    else:
        raise CronError(
            expression,
            f"expected 5 fields (minute hour day month weekday) or 6 with seconds first, "
            f"got {len(fields)}",
        )
    for text, field in zip(fields, layout):
        _check_field(text, field, expression)
    return expr, len(fields) == 6


def validate_timezone(name: object) -> ZoneInfo:
    """Return the :class:`~zoneinfo.ZoneInfo` for an IANA name, or raise :class:`CronError`."""
    if not isinstance(name, str) or not name or len(name) > 64:
        raise CronError(name, "timezone must be a non-empty IANA name such as 'Europe/Paris'")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise CronError(name, f"unknown timezone {name!r}") from None


get_timezone = validate_timezone


def _aware(after: datetime) -> datetime:
    if not isinstance(after, datetime):
        raise TypeError(f"expected a datetime, got {type(after).__name__}")
    if after.tzinfo is None or after.utcoffset() is None:
        raise ValueError("naive datetime: pass a timezone-aware instant")
    return after


class CronSchedule:
    """A validated cron expression bound to a timezone.

    Instances are immutable from the outside and safe to share between
    threads; :func:`get_schedule` caches them.
    """

    __slots__ = ("expression", "timezone", "_expr", "_seconds", "_tz", "_iter", "_lock",
                 "_hour_wild", "__weakref__")

    def __init__(self, expression: str, timezone_name: str = "UTC") -> None:
        self._expr, self._seconds = _normalize(expression)
        self.expression = expression
        self.timezone = timezone_name
        self._tz = validate_timezone(timezone_name)
        hour = self._expr.split(" ")[2 if self._seconds else 1]
        self._hour_wild = hour == "*"
        self._lock = threading.Lock()
        try:
            self._iter = croniter(
                self._expr,
                datetime(2000, 1, 1),
                second_at_beginning=self._seconds,
                max_years_between_matches=50,
            )
        except (CroniterError, ValueError, TypeError, KeyError) as exc:
            raise CronError(expression, str(exc)) from None
        # An expression that is well-formed but names an impossible date
        # (``0 0 30 2 *``) must fail here, at manifest load, not at first tick.
        try:
            self._naive_next(datetime(2000, 1, 1))
        except CroniterBadDateError:
            raise CronError(expression, "never fires (no matching date)") from None

    def __repr__(self) -> str:
        return f"CronSchedule({self.expression!r}, {self.timezone!r})"

    def _naive_next(self, naive: datetime) -> datetime:
        with self._lock:
            self._iter.set_current(naive, force=True)
            return self._iter.get_next(datetime)

    def _naive_iter(self, naive: datetime) -> Iterator[datetime]:
        while True:
            naive = self._naive_next(naive)
            yield naive

    def _instant(self, naive: datetime, fold: int) -> datetime | None:
        """Map a wall time to a UTC instant; None when it falls in a DST gap."""
        local = naive.replace(tzinfo=self._tz, fold=fold)
        utc = local.astimezone(UTC)
        if utc.astimezone(self._tz).replace(tzinfo=None) != naive:
            return None
        return utc

    def _gap_end(self, naive: datetime) -> datetime:
        """The first instant after the DST gap that swallowed *naive*."""
        before = naive.replace(tzinfo=self._tz, fold=1).astimezone(UTC)
        after = naive.replace(tzinfo=self._tz, fold=0).astimezone(UTC)
        lo, hi = min(before, after), max(before, after)
        target = hi.astimezone(self._tz).utcoffset()
        while hi - lo > timedelta(seconds=1):
            mid = lo + (hi - lo) / 2
            if mid.astimezone(self._tz).utcoffset() == target:
                hi = mid
            else:
                lo = mid
        return hi.replace(microsecond=0)

    def _transition(self, lo: datetime, hi: datetime) -> datetime:
        """First instant in (lo, hi] whose UTC offset differs from lo's."""
        start = lo.astimezone(self._tz).utcoffset()
        while hi - lo > timedelta(seconds=1):
            mid = lo + (hi - lo) / 2
            if mid.astimezone(self._tz).utcoffset() == start:
                lo = mid
            else:
                hi = mid
        return hi.replace(microsecond=0)

    def next_after(self, after: datetime) -> datetime:
        """The first fire time strictly after the aware instant *after*, in UTC."""
        after = _aware(after).astimezone(UTC)
        local = after.astimezone(self._tz)
        fold = local.fold
        naive_after = local.replace(tzinfo=None, fold=0)
        for naive in self._naive_iter(naive_after):
            utc = self._instant(naive, fold)
            if utc is None:
                utc = self._instant(naive, 1 - fold)
            if utc is None:  # in a spring-forward gap
                if self._hour_wild:
                    continue
                utc = self._gap_end(naive)
            if utc <= after:
                continue
            if self._hour_wild and utc.utcoffset() is not None:
                off_after = local.utcoffset()
                off_next = utc.astimezone(self._tz).utcoffset()
                if off_after is not None and off_next is not None and off_next < off_after:
                    # A fall-back lies between: the repeated wall hour is lived
                    # twice, and its second pass has fire times of its own.
                    turn = self._transition(after, utc)
                    wall = turn.astimezone(self._tz).replace(tzinfo=None)
                    for again in self._naive_iter(wall - timedelta(microseconds=1)):
                        cand = self._instant(again, 1)
                        if cand is None or cand >= utc:
                            break
                        if cand > after:
                            return cand
            return utc
        raise AssertionError("unreachable")  # pragma: no cover

    def preview(self, after: datetime, count: int) -> list[datetime]:
        """The next *count* fire times strictly after *after*, in UTC."""
        out: list[datetime] = []
        t = after
        for _ in range(count):
            t = self.next_after(t)
            out.append(t)
        return out


@lru_cache(maxsize=4096)
def _cached(expression: str, timezone_name: str) -> CronSchedule:
    return CronSchedule(expression, timezone_name)


def get_schedule(expression: str, timezone_name: str = "UTC") -> CronSchedule:
    """A cached :class:`CronSchedule`; raises :class:`CronError` when invalid."""
    if not isinstance(expression, str):
        raise CronError(expression, f"must be a string, not {type(expression).__name__}")
    if not isinstance(timezone_name, str):
        raise CronError(timezone_name, "timezone must be a non-empty IANA name such as 'Europe/Paris'")
    return _cached(expression, timezone_name)


def validate(expression: str, timezone_name: str = "UTC") -> None:
    """Raise :class:`CronError` unless *expression* is a schedule pjcore can run."""
    get_schedule(expression, timezone_name)


def next_after(expression: str, after: datetime, timezone_name: str = "UTC") -> datetime:
    """Next fire time of *expression* strictly after *after* (aware), in UTC."""
    return get_schedule(expression, timezone_name).next_after(after)


def preview(
    expression: str, after: datetime, count: int = 5, timezone_name: str = "UTC"
) -> list[datetime]:
    """The next *count* fire times of *expression* after *after*, in UTC."""
    return get_schedule(expression, timezone_name).preview(after, count)
