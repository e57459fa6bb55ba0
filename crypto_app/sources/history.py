"""What the two history endpoints share: a window of one coin's series, and the plan's reach.

A history source fetches ONE window (`fetch_window(external_id, start, end, interval)`) and returns one
Batch whose records are points `{"id", "symbol", "name", "t", "price", "market_cap", "total_volume"}`
(identity fields come from the caller, who knows which asset the window is for). `batches(cursor)` does
the same for the window given as options, so a history source is still a `Source`.

`Unavailable` is raised when the upstream says the window is beyond the plan (CoinPaprika's 402,
CoinGecko's 401 "exceeds the allowed time range" / error_code 10012): the window is marked `unavailable`
with that reason and never retried.
"""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

from .base import PermanentSourceError

INTERVALS = {"1h": timedelta(hours=1), "1d": timedelta(days=1)}


class Unavailable(PermanentSourceError):
    """The window is outside what the plan serves; the message is the upstream's reason."""


def utc(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def beyond_plan(exc: PermanentSourceError) -> bool:
    """Does this upstream refusal mean "your plan does not reach that far" (not "your key is wrong")?"""
    text = str(exc).lower()
    if exc.status == 402:
        return True
    return exc.status in (401, 403) and ("10012" in text or "time range" in text or "past 365 days" in text)


def aligned(moment: datetime, interval: timedelta) -> bool:
    """Is `moment` on the interval's UTC grid (00:00 for days, hh:00 for hours)?"""
    seconds = int(interval.total_seconds())
    return moment.microsecond == 0 and int(moment.timestamp()) % seconds == 0
