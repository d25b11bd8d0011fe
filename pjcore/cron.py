"""Cron schedules: strict validation and next fire times in a job's timezone.

This is the only module that imports croniter. croniter is used on *naive
wall-clock* times only; mapping wall-clock times to instants (and the DST
rules) is done here, so croniter's own timezone handling never matters.

Dialect (see the README for the user-facing version):

* 5 fields ``minute hour day-of-month month day-of-week``, or 6 fields with
  an extra **seconds field first**: ``second minute hour dom month dow``.
* ``*``, ``N``, ``N-M`` (N <= M), ``*/S``, ``N/S``, ``N-M/S`` (1 <= S <= the
  field maximum), lists. ``N/S`` runs from N to the field maximum, and
  ``N-N`` is just N.
* Month names ``JAN``-``DEC`` and weekday names ``SUN``-``SAT``, any case.
  Day-of-week runs 0-7 and Sunday is 0 or 7, so ``1/2`` and ``1-7/2`` are
  Monday, Wednesday, Friday and Sunday.
* ``?`` as ``*`` in day fields (alone); ``L`` (last day) and ``NW`` (nearest
  weekday, alone in its field) in day-of-month; ``D#K`` (K-th weekday D of the
  month, not mixed with plain days) in day-of-week.
* Macros ``@yearly`` ``@annually`` ``@monthly`` ``@weekly`` ``@daily``
  ``@midnight`` ``@hourly``.
* When both day-of-month and day-of-week are restricted (neither is ``*`` nor
  ``?``), a day matches if **either** does (Vixie cron), unlike Paperclip,
  which ANDs them: ``0 0 13 * 5`` fires on the 13th and on every Friday.
* An expression with no fire time (``0 0 30 2 *``) is invalid.

DST rules, for a zone with transitions:

* Schedules with a fixed hour (``30 2 * * *``): a wall time skipped by the
  spring-forward gap fires once, at the first instant after the gap; a wall
  time repeated by the fall-back fires once, at its first occurrence.
* Schedules whose hour field matches every hour (``*``, ``*/1``, ``0-23``)
  fire on the wall clock as it is lived: nothing inside the gap, and in both
  passes of a repeated hour, so an "every 10 minutes" job keeps its cadence
  through both transitions.
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

from pjcore.exceptions import CronError, InvalidArgument

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


def _values(part: str, field: tuple, expr: str) -> range:
    """The values of one plain list element (``*``, ``N``, ``N-M``, with ``/S``)."""
    name, lo, hi, _ = field
    m = _PART.match(part)
    if not m:
        raise CronError(expr, f"invalid element {part!r} in the {name} field")
    step = 1
    if m["step"] is not None:
        step = int(m["step"])
        if not 1 <= step <= hi:
            raise CronError(expr, f"step {step} out of range [1-{hi}] in the {name} field")
    if m["star"]:
        return range(lo, hi + 1, step)
    start = _value(m["start"], field, expr)
    if m["end"] is not None:
        end = _value(m["end"], field, expr)
        if start > end:
            raise CronError(expr, f"range {part!r} has start > end in the {name} field")
    else:
        # "N/S" runs from N to the field maximum; a bare "N" is just N.
        end = hi if m["step"] is not None else start
    return range(start, end + 1, step)


def _field(text: str, field: tuple, expr: str) -> str:
    """Check one field and return it in the form handed to croniter.

    Plain elements are expanded here into an explicit sorted list, because
    croniter reads ranges in ways no other cron does: an equal range
    (``5-5``, ``7-7``) means the *whole* field, and ``7/1`` in day-of-week
    every day. Only ``*``, ``L``, ``NW`` and ``D#K`` reach croniter as written.
    """
    name = field[0]
    if text == "":
        raise CronError(expr, f"empty {name} field")
    if text == "*":
        return "*"
    parts = text.split(",")
    day_field = name in ("day-of-month", "day-of-week")
    if day_field and "?" in parts:
        if len(parts) > 1:
            raise CronError(expr, f"'?' must stand alone in the {name} field")
        return "*"
    values: set[int] = set()
    specials: list[str] = []
    for part in parts:
        if part == "":
            raise CronError(expr, f"empty element in the {name} field")
        if name == "day-of-month":
            if part in ("L", "l"):
                specials.append("L")
                continue
            m = _NEAREST_WEEKDAY.match(part)
            if m:
                if len(parts) > 1:
                    raise CronError(expr, f"'{part}' must stand alone in the {name} field")
                return f"{_value(m['day'], field, expr)}W"
        if name == "day-of-week":
            m = _NTH_WEEKDAY.match(part)
            if m:
                day = _value(m["day"], field, expr) % 7
                if not 1 <= int(m["nth"]) <= 5:
                    raise CronError(expr, f"'#{m['nth']}' must be #1 to #5 in the {name} field")
                specials.append(f"{day}#{int(m['nth'])}")
                continue
        values.update(_values(part, field, expr))
    if name == "day-of-week":
        values = {v % 7 for v in values}  # Sunday is 0 or 7
        if values and specials:
            raise CronError(
                expr, f"'D#K' elements cannot be mixed with plain days in the {name} field"
            )
    return ",".join([*map(str, sorted(values)), *sorted(set(specials))])


def _normalize(expression: object) -> tuple[list[str], bool]:
    """Check the syntax and ranges; return (croniter fields, has_seconds)."""
    if not isinstance(expression, str):
        raise CronError(expression, f"must be a string, not {type(expression).__name__}")
    if len(expression) > MAX_EXPRESSION_LENGTH:
        raise CronError(expression[:40] + "...", f"longer than {MAX_EXPRESSION_LENGTH} characters")
    fields = expression.split()
    if not fields:
        raise CronError(expression, "must not be empty")
    if len(fields) == 1 and fields[0].startswith("@"):
        macro = fields[0].lower()
        if macro not in MACROS:
            raise CronError(expression, f"unknown macro {fields[0]!r} (known: {', '.join(MACROS)})")
        fields = MACROS[macro].split(" ")
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
    return [_field(text, f, expression) for text, f in zip(fields, layout)], len(fields) == 6


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
        raise InvalidArgument("naive datetime: pass a timezone-aware instant")
    return after


class CronSchedule:
    """A validated cron expression bound to a timezone.

    Instances are immutable from the outside and safe to share between
    threads; :func:`get_schedule` caches them.
    """

    __slots__ = ("expression", "timezone", "_seconds", "_tz", "_iters", "_lock",
                 "_hour_wild", "_memo", "__weakref__")

    def __init__(self, expression: str, timezone_name: str = "UTC") -> None:
        fields, self._seconds = _normalize(expression)
        self.expression = expression
        self.timezone = timezone_name
        self._tz = validate_timezone(timezone_name)
        hour, dom, month, dow = fields[-4:]
        self._hour_wild = hour == "*" or hour == ",".join(map(str, range(24)))
        self._lock = threading.Lock()
        # next_after by UTC instant: jobs sharing a schedule ask for the same
        # instants (a burst of jobs due at one slot asks for one)
        self._memo: dict[datetime, datetime] = {}
        # Vixie OR is built here, not left to croniter: croniter ANDs the day
        # fields whenever one side uses ``W`` or ``#`` (``0 0 15W * MON``
        # would never fire on Mondays). Each side is a croniter with the other
        # day field ``*``, and the next fire time is the earlier of the two.
        if dom != "*" and dow != "*":
            sides = [(dom, "*"), ("*", dow)]
        else:
            sides = [(dom, dow)]
        self._iters = []
        for side_dom, side_dow in sides:
            side = [*fields[:-3], side_dom, month, side_dow]
            try:
                it = croniter(
                    " ".join(side),
                    datetime(2000, 1, 1),
                    second_at_beginning=self._seconds,
                    max_years_between_matches=50,
                )
            except (CroniterError, ValueError, TypeError, KeyError) as exc:
                raise CronError(expression, str(exc)) from None
            # A side that names an impossible date (``30 2`` of ``0 0 30 2 1``)
            # contributes nothing; an expression with no side left must fail
            # here, at manifest load, not at its first tick.
            try:
                it.get_next(datetime)
            except CroniterBadDateError:
                continue
            self._iters.append(it)
        if not self._iters:
            raise CronError(expression, "never fires (no matching date)")

    def __repr__(self) -> str:
        return f"CronSchedule({self.expression!r}, {self.timezone!r})"

    def _naive_next(self, naive: datetime) -> datetime:
        found = []
        with self._lock:
            for it in self._iters:
                it.set_current(naive, force=True)
                try:
                    found.append(it.get_next(datetime))
                except CroniterBadDateError:
                    pass  # this side has no date in croniter's 50-year window
        if not found:
            raise CronError(self.expression, f"no fire time within 50 years after {naive}")
        return min(found)

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
        found = self._memo.get(after)
        if found is None:
            found = self._next_after(after)
            memo = self._memo
            if len(memo) >= _MEMO_SIZE:
                memo.clear()  # bounded; a dict op is atomic under the GIL
            memo[after] = found
        return found

    def _next_after(self, after: datetime) -> datetime:
        local = after.astimezone(self._tz)
        # A fixed-hour schedule fires a repeated wall time at its first
        # occurrence only, even when *after* lies in the second pass;
        # an every-hour schedule lives the pass *after* is in.
        fold = local.fold if self._hour_wild else 0
        naive_after = local.replace(tzinfo=None, fold=0)
        for naive in self._naive_iter(naive_after):
            utc = self._instant(naive, fold)
            if utc is None:  # in a spring-forward gap
                if self._hour_wild:
                    continue
                utc = self._gap_end(naive)
            if utc <= after:
                continue
            if self._hour_wild and utc.astimezone(self._tz).utcoffset() < local.utcoffset():
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


#: next_after results kept per schedule
_MEMO_SIZE = 64


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
