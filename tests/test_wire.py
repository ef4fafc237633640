"""Timestamps on the wire look like JavaScript's `Date.toISOString()`, whatever the zone."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

from spaces.wire import iso_ms


@pytest.mark.parametrize(("value", "expected"), [
    (datetime(2026, 11, 23, 11, 24, 14, 471999, tzinfo=UTC), "2026-11-23T11:24:14.471Z"),
    (datetime(2026, 1, 1, tzinfo=UTC), "2026-01-01T00:00:00.000Z"),
    (datetime(2026, 1, 1, 1, 30, tzinfo=timezone(timedelta(hours=2))), "2025-12-31T23:30:00.000Z"),
    (datetime(2026, 7, 1, 12, 0, 0, 5000, tzinfo=ZoneInfo("Europe/Paris")),
     "2026-07-01T10:00:00.005Z"),
    (datetime(999, 3, 4, 5, 6, 7, tzinfo=UTC), "0999-03-04T05:06:07.000Z"),
])
def test_iso_ms_is_utc_with_milliseconds_and_a_z(value: datetime, expected: str) -> None:
    assert iso_ms(value) == expected
