"""pjcore.cron: the dialect, strict errors, ported Paperclip cases, timezones and DST."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, reject, settings
from hypothesis import strategies as st

from pjcore import cron
from pjcore.exceptions import CronError, PjError

UTC = timezone.utc
NY = "America/New_York"
BERLIN = "Europe/Berlin"


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def local(tz: str, *args: int, fold: int = 0) -> datetime:
    return datetime(*args, tzinfo=ZoneInfo(tz), fold=fold)


def fires(expr: str, start: datetime, end: datetime, tz: str = "UTC") -> list[datetime]:
    """Every fire time in (start, end], found by walking next_after as a scheduler does."""
    out = []
    t = start
    while True:
        t = cron.next_after(expr, t, tz)
        if t > end:
            return out
        out.append(t)


def local_day(tz: str, year: int, month: int, day: int) -> tuple[datetime, datetime]:
    """Just before local midnight and just before the next one, as UTC instants.

    In UTC because arithmetic on an aware datetime is wall-clock arithmetic:
    one microsecond before a midnight that ends a repeated hour would land
    in its first pass.
    """
    start = local(tz, year, month, day).astimezone(UTC)
    nxt = local(tz, year, month, day).replace(tzinfo=None) + timedelta(days=1)
    end = nxt.replace(tzinfo=ZoneInfo(tz)).astimezone(UTC)
    return start - timedelta(microseconds=1), end - timedelta(microseconds=1)


# -- the dialect -------------------------------------------------------------


class TestDialect:
    T = utc(2025, 1, 15, 10, 30)  # a Wednesday

    def test_five_fields(self):
        assert cron.preview("*/20 * * * *", self.T, 3) == [
            utc(2025, 1, 15, 10, 40), utc(2025, 1, 15, 11, 0), utc(2025, 1, 15, 11, 20),
        ]

    def test_six_fields_have_seconds_first(self):
        assert cron.preview("*/5 * * * * *", self.T, 3) == [
            utc(2025, 1, 15, 10, 30, 5), utc(2025, 1, 15, 10, 30, 10), utc(2025, 1, 15, 10, 30, 15),
        ]
        # second=30 minute=0 hour=9: 09:00:30, not 00:30 past some hour
        assert cron.preview("30 0 9 * * *", self.T, 2) == [
            utc(2025, 1, 16, 9, 0, 30), utc(2025, 1, 17, 9, 0, 30),
        ]

    @pytest.mark.parametrize("expr", ["0 0 1 jan *", "0 0 1 JAN *", "0 0 1 Jan *", "0 0 1 1 *"])
    def test_month_names_any_case(self, expr):
        assert cron.preview(expr, self.T, 2) == [utc(2026, 1, 1), utc(2027, 1, 1)]

    @pytest.mark.parametrize("expr", ["0 9 * * MON-FRI", "0 9 * * mon-fri", "0 9 * * 1-5"])
    def test_weekday_names(self, expr):
        days = cron.preview(expr, self.T, 5)
        assert [d.weekday() for d in days] == [3, 4, 0, 1, 2]  # Thu Fri Mon Tue Wed

    @pytest.mark.parametrize("expr", ["0 0 * * 0", "0 0 * * 7", "0 0 * * SUN", "0 0 * * sun",
                                      "0 0 * * 7-7", "0 0 * * 7/1", "0 0 * * 0,7"])
    def test_sunday_is_0_and_7(self, expr):
        assert cron.preview(expr, self.T, 2) == [utc(2025, 1, 19), utc(2025, 1, 26)]

    def test_ranges_ending_on_sunday_7(self):
        days = cron.preview("0 0 * * 5-7", self.T, 6)
        assert [d.weekday() for d in days] == [4, 5, 6, 4, 5, 6]  # Fri Sat Sun

    def test_weekday_steps_run_over_0_to_7(self):
        # 1/2 == 1-7/2 == 1,3,5,7: Monday, Wednesday, Friday and Sunday
        for expr in ("0 0 * * 1/2", "0 0 * * 1-7/2", "0 0 * * MON/2"):
            days = cron.preview(expr, utc(2025, 1, 12), 4)  # from a Sunday
            assert [d.weekday() for d in days] == [0, 2, 4, 6], expr

    @pytest.mark.parametrize(
        "macro, expected",
        [
            ("@hourly", [utc(2025, 1, 15, 11), utc(2025, 1, 15, 12)]),
            ("@daily", [utc(2025, 1, 16), utc(2025, 1, 17)]),
            ("@midnight", [utc(2025, 1, 16), utc(2025, 1, 17)]),
            ("@weekly", [utc(2025, 1, 19), utc(2025, 1, 26)]),  # Sundays
            ("@monthly", [utc(2025, 2, 1), utc(2025, 3, 1)]),
            ("@yearly", [utc(2026, 1, 1), utc(2027, 1, 1)]),
            ("@annually", [utc(2026, 1, 1), utc(2027, 1, 1)]),
            ("@DAILY", [utc(2025, 1, 16), utc(2025, 1, 17)]),
            ("  @hourly  ", [utc(2025, 1, 15, 11), utc(2025, 1, 15, 12)]),
        ],
    )
    def test_macros(self, macro, expected):
        assert cron.preview(macro, self.T, 2) == expected

    def test_question_mark_is_a_day_wildcard(self):
        assert cron.preview("0 0 ? * MON", self.T, 2) == cron.preview("0 0 * * MON", self.T, 2)
        assert cron.preview("0 0 1 * ?", self.T, 2) == [utc(2025, 2, 1), utc(2025, 3, 1)]

    def test_last_day_of_month(self):
        assert cron.preview("0 0 L * *", self.T, 4) == [
            utc(2025, 1, 31), utc(2025, 2, 28), utc(2025, 3, 31), utc(2025, 4, 30),
        ]
        assert cron.preview("0 0 L 2 *", utc(2027, 6, 1), 2) == [utc(2028, 2, 29), utc(2029, 2, 28)]
        assert cron.preview("0 0 1,L * *", self.T, 3) == [
            utc(2025, 1, 31), utc(2025, 2, 1), utc(2025, 2, 28),
        ]

    def test_nearest_weekday(self):
        # 2025-02-15 is a Saturday -> Friday 14th; 2025-06-15 a Sunday -> Monday 16th
        assert cron.preview("0 0 15W * *", self.T, 6) == [
            utc(2025, 2, 14), utc(2025, 3, 14), utc(2025, 4, 15), utc(2025, 5, 15),
            utc(2025, 6, 16), utc(2025, 7, 15),
        ]
        # 1W never crosses into the previous month: Saturday 1st -> Monday 3rd
        assert cron.next_after("0 0 1W 3 *", self.T) == utc(2025, 3, 3)

    def test_nth_weekday(self):
        # second Friday of each month
        assert cron.preview("0 0 * * 5#2", self.T, 3) == [
            utc(2025, 2, 14), utc(2025, 3, 14), utc(2025, 4, 11),
        ]
        assert cron.preview("0 0 * * SUN#1", self.T, 2) == cron.preview("0 0 * * 7#1", self.T, 2)
        assert cron.preview("0 0 * * MON#1,FRI#3", self.T, 3) == [
            utc(2025, 1, 17), utc(2025, 2, 3), utc(2025, 2, 21),
        ]

    def test_equal_ranges_are_single_values(self):
        # croniter reads "5-5" as the whole field; pjcore expands ranges itself
        assert cron.preview("5-5 * * * *", self.T, 2) == [
            utc(2025, 1, 15, 11, 5), utc(2025, 1, 15, 12, 5),
        ]
        assert cron.preview("0 3-3 * * *", self.T, 2) == [utc(2025, 1, 16, 3), utc(2025, 1, 17, 3)]
        assert cron.preview("0 0 1 feb-feb *", self.T, 2) == [utc(2025, 2, 1), utc(2026, 2, 1)]

    def test_start_step_at_the_field_maximum(self):
        assert cron.preview("59/15 * * * *", self.T, 2) == [
            utc(2025, 1, 15, 10, 59), utc(2025, 1, 15, 11, 59),
        ]


class TestDayOrSemantics:
    """Vixie cron: with both day fields restricted a day matches if either does."""

    START, END = utc(2025, 1, 1), utc(2026, 1, 1)

    def test_13th_or_friday(self):
        got = fires("0 0 13 * 5", self.START, self.END)
        assert all(d.day == 13 or d.weekday() == 4 for d in got)
        assert sum(d.day == 13 for d in got) == 12  # every 13th ...
        assert sum(d.weekday() == 4 for d in got) == 52  # ... and every Friday
        assert utc(2025, 1, 13) in got  # a Monday the 13th
        assert utc(2025, 1, 3) in got  # a Friday the 3rd

    def test_contrast_with_paperclip_and(self):
        ours = set(fires("0 0 13 * 5", self.START, self.END))
        # Paperclip ANDs the fields: only the Friday-the-13ths of 2025
        paperclip = {d for d in ours if d.day == 13 and d.weekday() == 4}
        assert paperclip == {utc(2025, 6, 13)}
        assert len(ours) == 12 + 52 - 1

    def test_one_restricted_field_is_not_an_or(self):
        assert all(d.weekday() == 4 for d in fires("0 0 * * 5", self.START, self.END))
        assert all(d.day == 13 for d in fires("0 0 13 * *", self.START, self.END))
        assert all(d.weekday() == 4 for d in fires("0 0 ? * 5", self.START, self.END))

    def test_or_with_special_forms(self):
        # croniter alone would AND these (or find no date at all)
        got = fires("0 0 15W * MON", self.START, utc(2025, 5, 1))
        assert utc(2025, 1, 15) in got and utc(2025, 1, 6) in got
        assert all(d.weekday() == 0 or d.day in (14, 15) for d in got)
        got = fires("0 0 L * MON#1", self.START, utc(2025, 5, 1))
        assert got == [utc(2025, 1, 6), utc(2025, 1, 31), utc(2025, 2, 3), utc(2025, 2, 28),
                       utc(2025, 3, 3), utc(2025, 3, 31), utc(2025, 4, 7), utc(2025, 4, 30)]

    def test_impossible_day_of_month_side_still_fires_on_weekdays(self):
        # "30 2" never happens, but under OR the Mondays of February do
        got = fires("0 0 30 2 1", self.START, self.END)
        assert got == [utc(2025, 2, 3), utc(2025, 2, 10), utc(2025, 2, 17), utc(2025, 2, 24)]


# -- strict errors -----------------------------------------------------------


@pytest.mark.parametrize(
    "expr, fragments",
    [
        ("", ["must not be empty"]),
        ("   \t\n", ["must not be empty"]),
        ("* * * *", ["got 4"]),
        ("* * * * * * *", ["got 7"]),
        ("0 0 1 1 * 2025", ["day-of-week field"]),
        ("60 * * * *", ["60", "minute field"]),
        ("* 24 * * *", ["24", "hour field"]),
        ("0 0 0 * *", ["day-of-month field"]),
        ("0 0 32 * *", ["day-of-month field"]),
        ("0 0 * 0 *", ["month field"]),
        ("0 0 * 13 *", ["month field"]),
        ("0 0 * * 8", ["day-of-week field"]),
        ("60 * * * * *", ["second field"]),
        ("*/0 * * * *", ["step 0", "minute field"]),
        ("5-3 * * * *", ["start > end", "minute field"]),
        ("* * * * FRI-MON", ["start > end", "day-of-week field"]),
        ("abc * * * *", ["'abc'", "minute field"]),
        ("JAN * * * *", ["minute field"]),
        ("0 0 * FOO *", ["month field"]),
        ("0 0 * MON *", ["month field"]),
        ("0 0 * * JAN", ["day-of-week field"]),
        ("-1 * * * *", ["minute field"]),
        ("5x * * * *", ["minute field"]),
        ("1-2-3 * * * *", ["minute field"]),
        ("*/5/2 * * * *", ["minute field"]),
        ("1,,2 * * * *", ["empty element", "minute field"]),
        (",1 * * * *", ["empty element", "minute field"]),
        ("0 0 30 2 *", ["never fires"]),
        ("0 0 31 4 *", ["never fires"]),
        ("0 0 31 2,4,6 *", ["never fires"]),
        ("@reboot", ["unknown macro"]),
        ("@every 5m", ["got 2"]),
        ("@", ["unknown macro"]),
        ("H * * * *", ["minute field"]),
        ("H(0-29) * * * *", ["minute field"]),
        ("R * * * *", ["minute field"]),
        ("? * * * *", ["minute field"]),
        ("0 0 * * 5L", ["'5L'", "day-of-week field"]),
        ("0 0 * * L", ["day-of-week field"]),
        ("L * * * *", ["minute field"]),
        ("0 0 LW * *", ["day-of-month field"]),
        ("0 0 L/2 * *", ["day-of-month field"]),
        ("0 0 0W * *", ["day-of-month field"]),
        ("0 0 15W,20 * *", ["stand alone", "day-of-month field"]),
        ("0 0 ?,1 * *", ["stand alone", "day-of-month field"]),
        ("0 0 * * 1#0", ["day-of-week field"]),
        ("0 0 * * 1#6", ["day-of-week field"]),
        ("0 0 * * 1-3#2", ["day-of-week field"]),
        ("0 0 * * MON#1,FRI", ["mixed", "day-of-week field"]),
        ("*/60 * * * *", ["step 60", "minute field"]),
        ("*/61 * * * * *", ["step 61", "second field"]),
        ("0 */24 * * *", ["step 24", "hour field"]),
        ("0 0 */32 * *", ["step 32", "day-of-month field"]),
        ("0 0 * */13 *", ["step 13", "month field"]),
        ("0 0 * * */8", ["step 8", "day-of-week field"]),
        ("0 " * 150, ["longer than 200"]),
    ],
)
def test_invalid_expressions(expr, fragments):
    with pytest.raises(CronError) as info:
        cron.validate(expr)
    for fragment in fragments:
        assert fragment in str(info.value)
    assert info.value.expression is not None
    assert info.value.reason in str(info.value)


def test_cron_error_is_value_error_and_pj_error():
    with pytest.raises(ValueError):
        cron.validate("60 * * * *")
    with pytest.raises(PjError):
        cron.validate("60 * * * *")
    assert issubclass(CronError, ValueError) and issubclass(CronError, PjError)


@pytest.mark.parametrize("value", [None, 5, 5.0, ["* * * * *"], b"* * * * *", {"a": 1}])
def test_non_string_expressions(value):
    with pytest.raises(CronError, match="must be a string"):
        cron.validate(value)
    with pytest.raises(CronError, match="must be a string"):
        cron.CronSchedule(value)


def test_errors_from_every_entry_point():
    for call in (
        lambda: cron.next_after("60 * * * *", utc(2025, 1, 1)),
        lambda: cron.preview("60 * * * *", utc(2025, 1, 1), 3),
        lambda: cron.get_schedule("60 * * * *"),
        lambda: cron.CronSchedule("60 * * * *"),
    ):
        with pytest.raises(CronError, match="minute field"):
            call()


@pytest.mark.parametrize("tz", ["Mars/Olympus", "Europe/Pariss", "", " UTC", "../etc/passwd",
                                "/usr/share/zoneinfo/UTC", "Europe", "a\x00b", "x" * 65])
def test_unknown_timezone(tz):
    with pytest.raises(CronError, match="timezone"):
        cron.validate("* * * * *", tz)
    with pytest.raises(CronError):
        cron.validate_timezone(tz)


@pytest.mark.parametrize("tz", [None, 5, ["UTC"], b"UTC"])
def test_non_string_timezone(tz):
    with pytest.raises(CronError, match="timezone"):
        cron.validate("* * * * *", tz)
    with pytest.raises(CronError, match="timezone"):
        cron.validate_timezone(tz)


def test_validate_timezone_returns_the_zone():
    assert cron.validate_timezone("Europe/Paris") == ZoneInfo("Europe/Paris")
    assert cron.get_timezone("UTC") == ZoneInfo("UTC")


def test_valid_expressions_return_none_and_are_cached():
    assert cron.validate("*/15 * * * *") is None
    assert cron.validate("0 9 * * MON-FRI", "Europe/Paris") is None
    assert cron.get_schedule("0 9 * * *", NY) is cron.get_schedule("0 9 * * *", NY)
    assert cron.get_schedule("0 9 * * *", NY) is not cron.get_schedule("0 9 * * *", BERLIN)
    s = cron.get_schedule("0 9 * * *", NY)
    assert (s.expression, s.timezone) == ("0 9 * * *", NY)
    assert "0 9 * * *" in repr(s)


# -- behaviours ported from Paperclip's tests (spec §10.1, §10.4) -------------


class TestPorted:
    NOW = utc(2025, 1, 15, 10, 30)  # Wednesday

    @pytest.mark.parametrize(
        "expr, after, expected",
        [
            ("* * * * *", NOW, utc(2025, 1, 15, 10, 31)),
            ("0 * * * *", NOW, utc(2025, 1, 15, 11, 0)),
            ("0 9 * * *", NOW, utc(2025, 1, 16, 9, 0)),
            ("*/15 * * * *", NOW, utc(2025, 1, 15, 10, 45)),
            ("0 9 * * 1-5", NOW, utc(2025, 1, 16, 9, 0)),
            ("0 0 1 * *", utc(2025, 1, 31, 23, 50), utc(2025, 2, 1)),
            ("0 0 1 1 *", utc(2025, 12, 31), utc(2026, 1, 1)),
            ("0 0 1 1 *", utc(2025, 12, 31, 23, 59, 59), utc(2026, 1, 1)),
            ("30 14 * * *", utc(2025, 1, 15, 14, 30), utc(2025, 1, 16, 14, 30)),
            ("30 14 * * *", utc(2025, 1, 15, 14, 29, 59), utc(2025, 1, 15, 14, 30)),
            ("0 0 1 3 *", utc(2025, 3, 2), utc(2026, 3, 1)),
            ("0 0 * * *", utc(2025, 1, 15, 23, 59), utc(2025, 1, 16)),
            ("0 * * * *", utc(2025, 1, 15, 10, 59, 59), utc(2025, 1, 15, 11)),
            ("59 23 31 12 *", utc(2025, 12, 31, 23, 59), utc(2026, 12, 31, 23, 59)),
            ("0 9 * * 1", NOW, utc(2025, 1, 20, 9)),  # next Monday
        ],
    )
    def test_next_after(self, expr, after, expected):
        assert cron.next_after(expr, after) == expected

    def test_weekday_schedule_on_a_wednesday_gives_thursday(self):
        nxt = cron.next_after("0 9 * * 1-5", self.NOW)
        assert nxt.weekday() == 3 and nxt.hour == 9

    def test_strictly_after(self):
        at = utc(2025, 1, 15, 14, 30)
        assert cron.next_after("30 14 * * *", at) > at
        assert cron.next_after("* * * * *", at) == at + timedelta(minutes=1)

    def test_seconds_are_zeroed_for_five_fields(self):
        nxt = cron.next_after("* * * * *", utc(2025, 1, 15, 10, 30, 45, 123456))
        assert nxt == utc(2025, 1, 15, 10, 31)
        assert (nxt.second, nxt.microsecond) == (0, 0)
        nxt = cron.next_after("*/10 * * * * *", utc(2025, 1, 15, 10, 30, 45, 123456))
        assert nxt == utc(2025, 1, 15, 10, 30, 50)

    def minutes(self, expr: str) -> list[int]:
        got = fires(expr, utc(2025, 1, 15, 10, 0) - timedelta(seconds=1), utc(2025, 1, 15, 10, 59))
        return [d.minute for d in got]

    def test_field_expansion(self):
        assert self.minutes("*/15 * * * *") == [0, 15, 30, 45]
        assert self.minutes("10/10 * * * *") == [10, 20, 30, 40, 50]
        assert self.minutes("0-30/10 * * * *") == [0, 10, 20, 30]
        assert self.minutes("5,10,15 * * * *") == [5, 10, 15]
        assert self.minutes("1,5-7,*/20 * * * *") == [0, 1, 5, 6, 7, 20, 40]
        assert self.minutes("15,5,5,15 * * * *") == [5, 15]  # de-duplicated and sorted
        assert self.minutes("50-59/4,3 * * * *") == [3, 50, 54, 58]
        assert self.minutes("7 * * * *") == [7]
        assert len(self.minutes("* * * * *")) == 60


# -- timezones ---------------------------------------------------------------


class TestTimezones:
    def test_naive_datetimes_are_refused(self):
        with pytest.raises(ValueError, match="naive"):
            cron.next_after("* * * * *", datetime(2025, 1, 15, 10, 30))
        with pytest.raises(ValueError):
            cron.preview("* * * * *", datetime(2025, 1, 15, 10, 30), 2)

    @pytest.mark.parametrize("value", ["2025-01-15T10:30:00Z", 1736937000, None])
    def test_non_datetimes_are_refused(self, value):
        with pytest.raises((TypeError, ValueError)):
            cron.next_after("* * * * *", value)

    def test_result_is_utc_whatever_the_input_zone(self):
        after = datetime(2025, 1, 15, 15, 30, tzinfo=timezone(timedelta(hours=5)))
        nxt = cron.next_after("* * * * *", after, "Europe/Paris")
        assert nxt == utc(2025, 1, 15, 10, 31)
        assert nxt.utcoffset() == timedelta(0)
        assert nxt.tzinfo is UTC

    def test_paris_winter_and_summer(self):
        assert cron.next_after("0 9 * * *", utc(2025, 1, 15), "Europe/Paris") == utc(2025, 1, 15, 8)
        assert cron.next_after("0 9 * * *", utc(2025, 7, 15), "Europe/Paris") == utc(2025, 7, 15, 7)

    def test_half_hour_offset(self):
        assert cron.next_after("0 9 * * *", utc(2025, 1, 15), "Asia/Kolkata") == utc(2025, 1, 15, 3, 30)
        assert cron.preview("0 * * * *", utc(2025, 1, 15), 2, "Asia/Kolkata") == [
            utc(2025, 1, 15, 0, 30), utc(2025, 1, 15, 1, 30),
        ]

    def test_days_are_local_days(self):
        # Monday 00:30 in Tokyo is Sunday 15:30 UTC
        assert cron.next_after("30 0 * * MON", utc(2025, 1, 15), "Asia/Tokyo") == utc(2025, 1, 19, 15, 30)

    @pytest.mark.parametrize("tz", ["UTC", NY, BERLIN, "Asia/Kolkata", "Australia/Lord_Howe"])
    @pytest.mark.parametrize("expr", ["*/7 * * * *", "0 9 * * *", "0 */5 * * *", "15 30 2 * * *"])
    def test_preview_is_strictly_increasing(self, tz, expr):
        got = cron.preview(expr, utc(2026, 3, 7), 40, tz)
        assert len(got) == 40
        assert all(a < b for a, b in zip(got, got[1:]))
        assert got[0] > utc(2026, 3, 7)
        assert cron.get_schedule(expr, tz).preview(utc(2026, 3, 7), 40) == got

    def test_preview_count(self):
        assert cron.preview("* * * * *", utc(2025, 1, 1), 0) == []
        assert len(cron.preview("* * * * *", utc(2025, 1, 1))) == 5


# -- DST ---------------------------------------------------------------------

# (zone, spring-forward day, fall-back day, the wall hour skipped/repeated, UTC offsets)
TRANSITIONS = [
    (NY, (2026, 3, 8), (2026, 11, 1), 2, 1),
    (BERLIN, (2026, 3, 29), (2026, 10, 25), 2, 2),
]


class TestDST:
    def test_ny_spring_forward_fixed_hour_fires_once_after_the_gap(self):
        start, end = local_day(NY, 2026, 3, 8)
        assert fires("30 2 * * *", start, end, NY) == [utc(2026, 3, 8, 7, 0)]  # 03:00 EDT
        assert fires("0 2 * * *", start, end, NY) == [utc(2026, 3, 8, 7, 0)]
        # the days around are unaffected
        assert cron.preview("30 2 * * *", start, 2, NY)[1] == utc(2026, 3, 9, 6, 30)
        assert cron.next_after("30 2 * * *", start - timedelta(days=1), NY) == utc(2026, 3, 7, 7, 30)

    def test_ny_fall_back_fixed_hour_fires_once_at_first_occurrence(self):
        start, end = local_day(NY, 2026, 11, 1)
        assert fires("30 1 * * *", start, end, NY) == [utc(2026, 11, 1, 5, 30)]  # 01:30 EDT
        assert fires("*/20 1 * * *", start, end, NY) == [
            utc(2026, 11, 1, 5, 0), utc(2026, 11, 1, 5, 20), utc(2026, 11, 1, 5, 40),
        ]

    def test_fixed_hour_from_inside_the_second_pass(self):
        # 06:10Z is 01:10 EST, the second pass; 01:30 already fired at 05:30Z
        assert cron.next_after("30 1 * * *", utc(2026, 11, 1, 6, 10), NY) == utc(2026, 11, 2, 6, 30)
        assert cron.next_after("30 1 * * *", utc(2026, 11, 1, 5, 10), NY) == utc(2026, 11, 1, 5, 30)
        # the same wall time after the repeated hour is not ambiguous
        assert cron.next_after("30 2 * * *", utc(2026, 11, 1, 6, 10), NY) == utc(2026, 11, 1, 7, 30)

    def test_berlin_fixed_hour(self):
        start, end = local_day(BERLIN, 2026, 3, 29)
        assert fires("30 2 * * *", start, end, BERLIN) == [utc(2026, 3, 29, 1, 0)]  # 03:00 CEST
        start, end = local_day(BERLIN, 2026, 10, 25)
        assert fires("30 2 * * *", start, end, BERLIN) == [utc(2026, 10, 25, 0, 30)]  # 02:30 CEST
        assert cron.next_after("30 2 * * *", utc(2026, 10, 25, 1, 10), BERLIN) == utc(2026, 10, 26, 1, 30)

    def test_wall_times_in_and_after_the_gap_collapse(self):
        start, end = local_day(NY, 2026, 3, 8)
        # 02:00, 02:30 and 03:00 all mean 07:00Z; it fires once
        assert fires("0,30 2-3 * * *", start, end, NY) == [utc(2026, 3, 8, 7), utc(2026, 3, 8, 7, 30)]

    @pytest.mark.parametrize("zone, spring, fall, _hour, _fallhour", TRANSITIONS)
    @pytest.mark.parametrize(
        "expr, step",
        [
            ("0 * * * *", timedelta(hours=1)),
            ("0 */1 * * *", timedelta(hours=1)),
            ("0 0-23 * * *", timedelta(hours=1)),
            ("@hourly", timedelta(hours=1)),
            ("*/20 * * * *", timedelta(minutes=20)),
            ("*/30 * * * * *", timedelta(seconds=30)),
        ],
    )
    def test_every_hour_schedules_keep_their_cadence(self, zone, spring, fall, _hour, _fallhour,
                                                     expr, step):
        for day, hours in ((spring, 23), (fall, 25)):
            start, end = local_day(zone, *day)
            got = fires(expr, start, end, zone)
            assert len(got) == hours * (timedelta(hours=1) // step), (zone, day)
            # evenly spaced in real time straight through the transition: the
            # repeated hour is lived twice, the skipped one not at all
            assert all(b - a == step for a, b in zip(got, got[1:])), (zone, day)
            assert got[0] == start + timedelta(microseconds=1)

    @pytest.mark.parametrize("zone, spring, fall, hour, fallhour", TRANSITIONS)
    def test_nothing_fires_inside_the_gap(self, zone, spring, fall, hour, fallhour):
        start, end = local_day(zone, *spring)
        tz = ZoneInfo(zone)
        walls = [d.astimezone(tz) for d in fires("*/20 * * * *", start, end, zone)]
        assert [w.hour for w in walls].count(hour) == 0
        assert [w.hour for w in walls].count(hour + 1) == 3

    @pytest.mark.parametrize("zone, spring, fall, hour, fallhour", TRANSITIONS)
    def test_repeated_hour_fires_in_both_passes(self, zone, spring, fall, hour, fallhour):
        start, end = local_day(zone, *fall)
        tz = ZoneInfo(zone)
        walls = [d.astimezone(tz) for d in fires("*/20 * * * *", start, end, zone)]
        repeated = [w for w in walls if w.hour == fallhour]
        assert len(repeated) == 6
        assert [w.fold for w in repeated] == [0, 0, 0, 1, 1, 1]
        assert [w.minute for w in repeated] == [0, 20, 40] * 2

    def test_from_inside_the_second_pass_every_hour_schedules_go_on(self):
        assert cron.next_after("*/20 * * * *", utc(2026, 11, 1, 6, 10), NY) == utc(2026, 11, 1, 6, 20)
        assert cron.next_after("*/20 * * * *", utc(2026, 11, 1, 5, 50), NY) == utc(2026, 11, 1, 6, 0)
        # exactly at the transition instant
        assert cron.next_after("0 * * * *", utc(2026, 11, 1, 6, 0), NY) == utc(2026, 11, 1, 7, 0)
        assert cron.next_after("0 * * * *", utc(2026, 11, 1, 5, 59, 59), NY) == utc(2026, 11, 1, 6, 0)

    @pytest.mark.parametrize("zone, spring, fall, _hour, _fallhour", TRANSITIONS)
    @pytest.mark.parametrize(
        "expr",
        ["30 2 * * *", "30 1 * * *", "0 * * * *", "*/20 * * * *", "*/30 * * * * *",
         "*/20 1 * * *", "*/20 2 * * *", "0,30 1-3 * * *", "0 */2 * * *", "15 * * * 0",
         "0 0 * * *", "45 30 2 * * *"],
    )
    def test_whole_days_around_transitions_are_strictly_increasing(
        self, zone, spring, fall, _hour, _fallhour, expr
    ):
        for day in (spring, fall):
            start, _ = local_day(zone, *day)
            got = fires(expr, start - timedelta(days=1), start + timedelta(days=2), zone)
            assert got, (expr, day)
            assert all(a < b for a, b in zip(got, got[1:])), (expr, day)
            assert len(set(got)) == len(got)
            # every fire time is what next_after gives from just before it
            for t in got:
                assert cron.next_after(expr, t - timedelta(microseconds=1), zone) == t

    @pytest.mark.parametrize(
        "zone, day, expr, expected",
        [
            # Santiago: the clock jumps at midnight, so midnight itself is skipped ...
            ("America/Santiago", (2026, 9, 6), "0 0 * * *", [utc(2026, 9, 6, 4)]),  # 01:00 -03
            ("America/Santiago", (2026, 9, 6), "*/15 * * * *", 23 * 4),
            # ... or 23:00-24:00 of the day before is lived twice
            ("America/Santiago", (2026, 4, 4), "*/15 * * * *", 25 * 4),
            ("America/Santiago", (2026, 4, 4), "30 23 * * *", [utc(2026, 4, 5, 2, 30)]),
            # Lord Howe moves by 30 minutes
            ("Australia/Lord_Howe", (2026, 4, 5), "*/15 * * * *", 98),  # 01:30-02:00 twice
            ("Australia/Lord_Howe", (2026, 4, 5), "0 * * * *", 24),
            ("Australia/Lord_Howe", (2026, 4, 5), "45 1 * * *", [utc(2026, 4, 4, 14, 45)]),
            ("Australia/Lord_Howe", (2026, 10, 4), "*/15 * * * *", 94),  # no 02:00, 02:15
            ("Australia/Lord_Howe", (2026, 10, 4), "0 * * * *", 23),
            ("Australia/Lord_Howe", (2026, 10, 4), "15 2 * * *", [utc(2026, 10, 3, 15, 30)]),
        ],
    )
    def test_other_kinds_of_transition(self, zone, day, expr, expected):
        start, end = local_day(zone, *day)
        got = fires(expr, start, end, zone)
        assert all(a < b for a, b in zip(got, got[1:]))
        assert (len(got) if isinstance(expected, int) else got) == expected

    def test_fixed_hour_per_day_counts(self):
        for zone, spring, fall, hour, fallhour in TRANSITIONS:
            for day in (spring, fall):
                start, end = local_day(zone, *day)
                for h in range(24):
                    got = fires(f"30 {h} * * *", start, end, zone)
                    assert len(got) == 1, (zone, day, h)


# -- thread safety -----------------------------------------------------------


def test_shared_schedule_from_many_threads():
    schedule = cron.get_schedule("*/7 * * * *", BERLIN)
    starts = [utc(2026, 3, 29) + timedelta(minutes=13 * i) for i in range(400)]
    expected = [schedule.next_after(t) for t in starts]
    barrier = threading.Barrier(8)

    def work(offset: int) -> list[datetime]:
        barrier.wait()
        return [schedule.next_after(t) for t in starts[offset:] + starts[:offset]]

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(work, range(8)))
    for offset, got in enumerate(results):
        assert got == expected[offset:] + expected[:offset]


# -- properties --------------------------------------------------------------

ZONES = ["UTC", NY, BERLIN, "Asia/Kolkata", "Australia/Lord_Howe", "America/Santiago",
         "Pacific/Chatham"]


def _field(lo: int, hi: int, names: list[str] | None = None) -> st.SearchStrategy[str]:
    value = st.integers(lo, hi).map(str)
    if names:
        value = value | st.sampled_from(names).flatmap(
            lambda n: st.sampled_from([n, n.lower(), n.capitalize()])
        )
    bounds = st.tuples(st.integers(lo, hi), st.integers(lo, hi)).map(sorted)
    step = st.integers(1, min(hi, 12))
    element = st.one_of(
        st.just("*"),
        value,
        bounds.map(lambda b: f"{b[0]}-{b[1]}"),
        step.map(lambda s: f"*/{s}"),
        st.tuples(st.integers(lo, hi), step).map(lambda t: f"{t[0]}/{t[1]}"),
        st.tuples(bounds, step).map(lambda t: f"{t[0][0]}-{t[0][1]}/{t[1]}"),
    )
    return st.lists(element, min_size=1, max_size=3).map(",".join)


MONTHS = ["JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"]
DAYS = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"]

_DOM = _field(1, 31) | st.sampled_from(["?", "L", "1,L", "15W", "1W", "31W"])
_DOW = _field(0, 7, DAYS) | st.sampled_from(["?", "5#2", "SUN#1", "MON#1,FRI#5", "7#3"])
# Hours and minutes are kept to the shapes that matter around DST: every hour,
# the hours around transitions, or a few; same for minutes.
_HOUR = st.sampled_from(["*", "*/1", "0-23", "1", "2", "3", "1-3", "*/2", "0,2", "23", "0"]) | _field(0, 23)
_MINUTE = st.sampled_from(["0", "30", "*/15", "*/20", "59", "0,45"]) | _field(0, 59)
_SECOND = st.sampled_from(["0", "30", "*/20", "59"])

CRONS = st.one_of(
    st.tuples(_MINUTE, _HOUR, _DOM, _field(1, 12, MONTHS), _DOW),
    st.tuples(_SECOND, _MINUTE, _HOUR, st.just("*"), st.just("*"), _DOW),
    st.tuples(_MINUTE, _HOUR, st.just("*"), st.just("*"), st.just("*")),
).map(" ".join) | st.sampled_from(list(cron.MACROS))

# DST transitions of the zones above, so that start instants often land near one
_EDGES = [utc(2026, 3, 8, 7), utc(2026, 11, 1, 6), utc(2026, 3, 29, 1), utc(2026, 10, 25, 1),
          utc(2026, 4, 4, 15), utc(2026, 10, 3, 15), utc(2026, 4, 5, 3), utc(2026, 9, 6, 4),
          utc(2026, 4, 4, 14), utc(2026, 9, 26, 14)]
INSTANTS = st.one_of(
    st.datetimes(datetime(2000, 1, 1), datetime(2060, 1, 1)).map(lambda d: d.replace(tzinfo=UTC)),
    st.tuples(st.sampled_from(_EDGES),
              st.timedeltas(timedelta(hours=-30), timedelta(hours=30))).map(lambda p: p[0] + p[1]),
    # inside the repeated or skipped hour itself
    st.tuples(st.sampled_from(_EDGES),
              st.timedeltas(timedelta(hours=-2), timedelta(hours=2))).map(lambda p: p[0] + p[1]),
)
PROPERTY = settings(max_examples=300, deadline=None,
                    suppress_health_check=[HealthCheck.filter_too_much, HealthCheck.too_slow])


def _schedule(expr: str, tz: str) -> cron.CronSchedule:
    try:
        return cron.get_schedule(expr, tz)
    except CronError:
        reject()  # e.g. "0 0 31 2 *": invalid, and tested elsewhere


@PROPERTY
@given(CRONS, st.sampled_from(ZONES), INSTANTS, st.floats(0, 1),
       st.timedeltas(timedelta(0), timedelta(hours=2)) | st.timedeltas(timedelta(0), timedelta(days=3)))
def test_next_after_is_a_strictly_later_monotonic_function_of_a_fixed_set(expr, tz, t, frac, delta):
    s = _schedule(expr, tz)
    n = s.next_after(t)
    assert n > t
    assert n.tzinfo is UTC
    # any instant between t and n has the same next fire time: next_after
    # reads one fixed set of fire times, whatever pass or gap t is in
    mid = t + (n - t) * frac
    if mid < n:
        assert s.next_after(mid) == n
    assert s.next_after(n - timedelta(microseconds=1)) == n
    # monotonic
    t2 = t + delta
    assert s.next_after(t2) >= n


@PROPERTY
@given(CRONS, st.sampled_from(ZONES), INSTANTS)
def test_preview_is_strictly_increasing_property(expr, tz, t):
    s = _schedule(expr, tz)
    got = s.preview(t, 6)
    assert all(a < b for a, b in zip([t, *got], got))


CRON_CHARS = "0123456789*/-,?#LWlw@ \tJANFEBMONSUNjanmonHR()"


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=60), st.text(CRON_CHARS, max_size=40), CRONS),
       st.one_of(st.just("UTC"), st.sampled_from(ZONES), st.text(max_size=30)))
def test_validate_only_ever_raises_cron_error(expr, tz):
    try:
        cron.validate(expr, tz)
    except CronError:
        pass


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(CRON_CHARS, min_size=1, max_size=8), min_size=5, max_size=6).map(" ".join))
def test_field_shaped_garbage_only_raises_cron_error(expr):
    try:
        schedule = cron.get_schedule(expr)
    except CronError:
        return
    assert schedule.next_after(utc(2025, 1, 1)) > utc(2025, 1, 1)
