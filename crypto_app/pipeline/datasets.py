"""Which dataset a batch belongs to, and its provenance.

- An API source's batches belong to `<source>:<endpoint>` (the source class's `endpoint`), e.g.
  `coingecko:markets`, `coinpaprika:tickers`.
- A CSV file's batches belong to `csv:<path relative to CSV_DATA_DIR>`, or to the name the data dir's
  `datasets.json` gives the file: {"Binance_BTCUSDT_d.csv": {"name": "cdd-binance-btcusdt",
  "publisher": "CryptoDataDownload", "url": "https://...", "description": "...", "interval": "1d"}}.
  Several files may share a name (one dataset split over files). A configured name has no ':' (so it
  never collides with the `<source>:...` names) and only letters, digits, '.', '_' and '-'.

The first batch of a run for a dataset creates it if needed and records the import (first/last import
time, last run, the file) on an autocommit connection, once per run and dataset: batch transactions
never lock the dataset row, so segments of one file load in parallel.

The native interval of a dataset (the spacing of its series) is declared (`interval` in datasets.json)
or detected from the first batch that shows one (`detect_interval`); snapshot sources have none.
"""
from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from ..sources.base import PermanentSourceError

CONFIG_FILE = "datasets.json"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
INTERVALS = {"1m": timedelta(minutes=1), "5m": timedelta(minutes=5), "15m": timedelta(minutes=15),
             "30m": timedelta(minutes=30), "1h": timedelta(hours=1), "4h": timedelta(hours=4),
             "1d": timedelta(days=1), "1w": timedelta(weeks=1)}
_KEYS = {"name", "publisher", "url", "description", "interval"}


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    source: str
    endpoint: str | None = None
    file: str | None = None
    publisher: str | None = None
    url: str | None = None
    description: str | None = None
    interval: timedelta | None = None        # declared


def load_config(data_dir) -> dict[str, dict]:
    """The data dir's datasets.json ({} when there is none); a malformed one fails naming what is wrong."""
    path = Path(data_dir) / CONFIG_FILE
    if not path.is_file():
        return {}
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PermanentSourceError(f"{path}: not readable JSON: {exc}") from None
    if not isinstance(config, dict):
        raise PermanentSourceError(f"{path}: expected an object {{file: {{name, publisher, ...}}}}")
    for file, entry in config.items():
        if not isinstance(entry, dict) or set(entry) - _KEYS:
            raise PermanentSourceError(f"{path}: entry {file!r} must be an object with keys among {sorted(_KEYS)}")
        if "name" in entry and not (isinstance(entry["name"], str) and _NAME.match(entry["name"])):
            raise PermanentSourceError(f"{path}: entry {file!r}: name {entry['name']!r} must be 1-100 letters, "
                                       "digits, '.', '_' or '-' (no ':')")
        if "interval" in entry and entry["interval"] not in INTERVALS:
            raise PermanentSourceError(f"{path}: entry {file!r}: interval {entry['interval']!r} is not one of "
                                       f"{', '.join(INTERVALS)}")
        for key in ("publisher", "url", "description"):
            if key in entry and not isinstance(entry[key], str):
                raise PermanentSourceError(f"{path}: entry {file!r}: {key} must be a string")
    return config


def spec_for(source, locator: dict, config: dict) -> DatasetSpec:
    """The dataset of a batch of `source` read at `locator`."""
    if source.name != "csv":
        endpoint = getattr(source, "endpoint", None) or "default"
        interval = locator.get("interval") if getattr(source, "dataset_per_interval", False) else None
        if interval:        # a history endpoint: its daily and hourly points are separate datasets
            return DatasetSpec(name=f"{source.name}:{endpoint}:{interval}", source=source.name, endpoint=endpoint,
                               interval=INTERVALS.get(interval))
        return DatasetSpec(name=f"{source.name}:{endpoint}", source=source.name, endpoint=endpoint)
    file = locator.get("file") or "unknown-file"
    entry = config.get(file) or {}
    return DatasetSpec(name=entry.get("name") or f"csv:{file}", source="csv", file=file,
                       publisher=entry.get("publisher"), url=entry.get("url"), description=entry.get("description"),
                       interval=INTERVALS.get(entry.get("interval")))


_RECORD_IMPORT = """
INSERT INTO datasets AS d (name, source, endpoint, files, publisher, url, description, native_interval,
                           interval_declared, first_import_at, last_import_at, last_run_id)
VALUES (%(name)s, %(source)s, %(endpoint)s, %(files)s, %(publisher)s, %(url)s, %(description)s, %(interval)s,
        %(declared)s, now(), now(), %(run_id)s)
ON CONFLICT (name) DO UPDATE SET
    files = CASE WHEN EXCLUDED.files IS NULL OR d.files @> EXCLUDED.files THEN d.files
                 ELSE coalesce(d.files, '{}') || EXCLUDED.files END,
    publisher = coalesce(EXCLUDED.publisher, d.publisher), url = coalesce(EXCLUDED.url, d.url),
    description = coalesce(EXCLUDED.description, d.description),
    native_interval = CASE WHEN EXCLUDED.interval_declared THEN EXCLUDED.native_interval ELSE d.native_interval END,
    interval_declared = d.interval_declared OR EXCLUDED.interval_declared,
    first_import_at = coalesce(d.first_import_at, now()), last_import_at = now(), last_run_id = EXCLUDED.last_run_id
RETURNING id, source, native_interval
"""


@dataclass
class DatasetRef:
    id: int
    name: str
    native_interval: timedelta | None


class DatasetRegistry:
    """Resolves the dataset of each batch of one run (cached), recording the import once per dataset."""

    def __init__(self, conn, run_id: str, data_dir=None):
        self.conn = conn                     # autocommit
        self.run_id = str(run_id)
        self.config = load_config(data_dir) if data_dir is not None else {}
        self._seen: dict[tuple[str, str | None], DatasetRef] = {}

    def for_batch(self, source, locator: dict) -> DatasetRef:
        spec = spec_for(source, locator, self.config)
        key = (spec.name, spec.file)
        ref = self._seen.get(key)
        if ref is None:
            with self.conn.cursor() as cur:
                cur.execute(_RECORD_IMPORT, {
                    "name": spec.name, "source": spec.source, "endpoint": spec.endpoint,
                    "files": [spec.file] if spec.file else None, "publisher": spec.publisher, "url": spec.url,
                    "description": spec.description, "interval": spec.interval,
                    "declared": spec.interval is not None, "run_id": self.run_id})
                dataset_id, stored_source, interval = cur.fetchone()
            if stored_source != spec.source:
                raise PermanentSourceError(f"dataset {spec.name!r} belongs to source {stored_source}, not "
                                           f"{spec.source}; give the file another name in {CONFIG_FILE}")
            ref = self._seen[key] = DatasetRef(dataset_id, spec.name, interval)
        return ref

    def learned_interval(self, ref: DatasetRef, rows: list[dict]) -> timedelta | None:
        """The interval to record for `ref` from this batch's rows (None: nothing new to record)."""
        if ref.native_interval is not None:
            return None
        found = detect_interval(rows)
        if found is not None:
            ref.native_interval = found
        return found


def detect_interval(rows: list[dict]) -> timedelta | None:
    """The most common positive spacing between consecutive observations of the same asset (ties: the
    shortest), or None when no asset has two observations."""
    by_asset: dict[object, list] = {}
    for row in rows:
        by_asset.setdefault(row.get("asset_id"), []).append(row["observed_at"])
    gaps: Counter = Counter()
    for times in by_asset.values():
        times.sort()
        gaps.update(b - a for a, b in zip(times, times[1:]) if b > a)
    if not gaps:
        return None
    return min(gaps.items(), key=lambda item: (-item[1], item[0]))[0]
