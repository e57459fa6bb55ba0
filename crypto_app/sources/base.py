"""The one small interface every source implements.

A source turns a cursor into batches of raw records and maps one raw record onto the canonical field
names. It knows nothing of the database, Redis or Celery: the pipeline gives it a `throttle` callable
to call before every upstream request (the shared rate limit) and stores what it returns.

Adding a source = one new module in this package with a `Source` subclass, registered in
`crypto_app.sources.REGISTRY`.
"""
from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Iterator

# Canonical fields a source's `normalize` may fill. Values stay as the source sent them (str, int,
# float, Decimal, None): parsing, range checks and type conversion belong to the validation schema
# (crypto_app.pipeline.validate), so every source obeys the same rules.
IDENTITY_FIELDS = ("external_id", "symbol", "name", "slug_hint")
VALUE_FIELDS = (
    "price_usd", "open_usd", "high_usd", "low_usd", "market_cap_usd", "volume_24h_usd", "volume_usd",
    "circulating_supply", "total_supply", "max_supply", "market_cap_rank", "change_24h_pct",
    "observed_at",
)
CANONICAL_FIELDS = IDENTITY_FIELDS + VALUE_FIELDS


@dataclass
class Batch:
    """One page of an API, or one chunk of a file."""

    records: list[dict]                 # raw records, as the source sent them
    locator: dict                       # where they came from: {"page": 3} or {"file": .., "start": .., "end": ..}
    next_cursor: dict                   # the cursor to save once this batch is stored
    content_hash: str                   # sha256 of the raw bytes of this batch
    raw: Any = None                     # what to keep in raw_payloads.body (parsed JSON; None for file chunks)
    fetched_at: datetime = field(default_factory=lambda: datetime.now(timezone.utc))
    done: bool = False                  # True on the last batch of a run
    invalid: list[tuple[dict, str]] = field(default_factory=list)  # (raw record, reason) the source could
    #                                     not even parse (a CSV row with broken quoting, binary garbage):
    #                                     the pipeline quarantines them with the reason
    block: Any = None                   # a CSV chunk read column-wise (csv_columnar.Block) instead of `records`

    @property
    def size(self) -> int:
        """How many records the batch carries (rows of `block`, or `records`)."""
        return self.block.num_rows if self.block is not None else len(self.records)


Throttle = Callable[[], None]


class SourceError(Exception):
    """Base of the errors a source raises. `kind` names the cause for metrics and logs: dns, refused,
    timeout, tls, reset, truncated, connection, redirect, invalid_payload, http_<status>, or None (a
    source's own check, e.g. a missing file); see crypto_app.sources.failures."""

    def __init__(self, message: str, status: int | None = None, kind: str | None = None):
        super().__init__(message)
        self.status = status
        self.kind = kind or (f"http_{status}" if status else None)


class TransientSourceError(SourceError):
    """Worth retrying: connection errors, timeouts, 5xx, 429. `retry_after` in seconds if known."""

    def __init__(self, message: str, retry_after: float | None = None, status: int | None = None,
                 kind: str | None = None):
        super().__init__(message, status=status, kind=kind)
        self.retry_after = retry_after


class PermanentSourceError(SourceError):
    """Retrying will not help: 401/403/404, a body that is not the expected JSON, a bad file."""

    def __init__(self, message: str, status: int | None = None, kind: str | None = None):
        super().__init__(message, status=status, kind=kind)


class Source(ABC):
    """Base class of a source. Subclasses set `name` and implement `batches` and `normalize`."""

    name: str = ""
    rate_limited: bool = True           # API sources take a token from the shared bucket per request
    endpoint: str | None = None         # API sources: the endpoint read; its rows are dataset "<name>:<endpoint>"
    cursor_persists: bool = False       # False: a finished run's cursor is dropped and the next run starts
    #                                     over (API snapshots); True: it is handed to the next run (files)
    number_format: str | None = "."     # decimal mark of its numbers ("." for JSON); None: decided per
    #                                     column from each batch's evidence (files written by people)

    def __init__(self, settings, throttle: Throttle | None = None,
                 on_http_status: Callable[[int], None] | None = None, **options):
        self.settings = settings
        self.options = options
        self.throttle: Throttle = throttle or (lambda: None)
        self.on_http_status = on_http_status or (lambda status: None)

    @abstractmethod
    def batches(self, cursor: dict) -> Iterator[Batch]:
        """Yield batches starting from `cursor` (empty dict: from the beginning)."""

    @abstractmethod
    def normalize(self, record: dict) -> dict:
        """Map one raw record onto CANONICAL_FIELDS (a field mapping, no validation)."""

    def column_of(self, record: dict, field: str) -> str:
        """The name the source gives the canonical `field` (for rejection reasons)."""
        return field


def content_hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def json_hash(obj: Any) -> str:
    return content_hash(json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str).encode())
