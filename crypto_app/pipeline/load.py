"""Loading one batch: quotes, latest quotes, raw payload, rejections, checkpoint and run counters,
all in ONE transaction, so a crash between rows and checkpoint cannot duplicate or lose anything.

Quotes go through COPY into a temporary staging table and one set-based upsert:
- a quote is unique on (asset, dataset, observed_at) (a batch belongs to one dataset: see datasets.py);
  replaying the same payload changes nothing (the update only fires when a value or a flag differs);
- the latest quote per (asset, dataset) only moves forward in time: an older observation never
  overwrites a newer one;
- duplicates inside a batch keep the last occurrence instead of failing the batch;
- `dataset_assets` (rows, first and last observation per dataset and asset) moves in the same statement;
- a record's `flags` (sorted soft-rule names) are stored as text[], NULL when there are none.

The PostgreSQL-side guard against two writers of one source: every batch transaction takes the source's
advisory lock in shared mode (segments of one run write side by side) and refuses to commit for a run
that is already failed; a delivery that starts a run takes the same lock exclusively and fails every
other running run of the source as superseded (lifecycle.start_delivery). So a run whose Redis lock was
lost stops at its next batch even if Redis forgot who held it, and its batches never interleave with
the new run's.
"""
from __future__ import annotations

import io
import queue
import re
import threading
from dataclasses import dataclass, field
from datetime import datetime

import psycopg2
from psycopg2.extras import Json, execute_values

from ..models.quotes import QUOTE_VALUE_COLUMNS


STORED_COLUMNS = QUOTE_VALUE_COLUMNS + ("flags",)
ROW_COLUMNS = ("asset_id",) + STORED_COLUMNS + ("observed_at", "fetched_at", "run_id", "payload_hash")
_COLS = ", ".join(ROW_COLUMNS)
_VALUES_CHANGED = "({t}) IS DISTINCT FROM ({e})".format(
    t=", ".join(f"%(table)s.{c}" for c in STORED_COLUMNS),
    e=", ".join(f"EXCLUDED.{c}" for c in STORED_COLUMNS))
_SET = ", ".join(f"{c} = EXCLUDED.{c}" for c in STORED_COLUMNS + ("observed_at", "fetched_at", "run_id",
                                                                   "payload_hash"))

_STAGE = f"""
CREATE TEMP TABLE IF NOT EXISTS stage_quotes (
    asset_id bigint, {", ".join(f"{c} {'integer' if c == 'market_cap_rank' else 'numeric'}" for c in QUOTE_VALUE_COLUMNS)},
    flags text[], observed_at timestamptz, fetched_at timestamptz, run_id uuid, payload_hash text
) ON COMMIT DELETE ROWS
"""

_SET_FROM_STAGE = ", ".join(f"{c} = s.{c}" for c in STORED_COLUMNS + ("fetched_at", "run_id", "payload_hash"))
_STAGE_CHANGED = "({q}) IS DISTINCT FROM ({s})".format(q=", ".join(f"q.{c}" for c in STORED_COLUMNS),
                                                       s=", ".join(f"s.{c}" for c in STORED_COLUMNS))
# quotes is partitioned (migration 0005_storage), so RETURNING cannot read xmax to tell an insert from an
# update: new rows are inserted (DO NOTHING on the key), then the rows that existed before this statement
# (the UPDATE reads the statement's snapshot, not the rows the INSERT just wrote) are updated where a value
# or a flag differs. The time bounds let PostgreSQL prune the partitions the batch cannot touch.
_UPSERT_QUOTES = f"""
WITH inserted AS (
    INSERT INTO quotes (source, dataset_id, {_COLS})
    SELECT %(source)s, %(dataset_id)s, {_COLS} FROM stage_quotes
    ON CONFLICT (asset_id, dataset_id, observed_at) DO NOTHING
    RETURNING asset_id, observed_at
), updated AS (
    UPDATE quotes q SET {_SET_FROM_STAGE} FROM stage_quotes s
    WHERE q.asset_id = s.asset_id AND q.dataset_id = %(dataset_id)s AND q.observed_at = s.observed_at
      AND q.observed_at >= %(first)s AND q.observed_at <= %(last)s AND {_STAGE_CHANGED}
    RETURNING q.asset_id, q.observed_at
), written AS (
    SELECT asset_id, observed_at, true AS inserted FROM inserted
    UNION ALL SELECT asset_id, observed_at, false FROM updated
), counted AS (
    INSERT INTO dataset_assets AS da (dataset_id, asset_id, rows, first_observed_at, last_observed_at)
    SELECT %(dataset_id)s, asset_id, count(*) FILTER (WHERE inserted), min(observed_at), max(observed_at)
    FROM written GROUP BY asset_id
    ON CONFLICT (asset_id, dataset_id) DO UPDATE SET rows = da.rows + EXCLUDED.rows,
        first_observed_at = LEAST(da.first_observed_at, EXCLUDED.first_observed_at),
        last_observed_at = GREATEST(da.last_observed_at, EXCLUDED.last_observed_at)
)
SELECT count(*) FILTER (WHERE inserted), count(*) FILTER (WHERE NOT inserted) FROM written
"""

# Rows the maintenance task already rolled up (crypto_app/pipeline/maintenance.py) and deleted are not stored
# again when a file is re-imported: a raw row and a rollup of the same observation would both be counted by
# the history API and by the next rollup (samples and volume sums doubled). A staged row is "already rolled
# up" when its dataset's daily candle for its day (kept forever) spans its observation time. Maintenance
# rolls up only rows older than RETENTION_RAW_DAYS (at least 1 day), so a batch whose oldest row is younger
# than a day (every API snapshot batch) is answered without reading candles at all.
_HAS_ROLLUPS = """
SELECT CASE WHEN %(first)s::timestamptz >= now() - INTERVAL '1 day' THEN false
            ELSE EXISTS (SELECT 1 FROM candles WHERE dataset_id = %(dataset_id)s AND resolution = '1d'
                                                 AND bucket <= %(last)s AND last_observed_at >= %(first)s) END
"""
_DROP_ROLLED_UP = """
WITH dropped AS (
    DELETE FROM stage_quotes s USING candles c
    WHERE c.dataset_id = %(dataset_id)s AND c.asset_id = s.asset_id AND c.resolution = '1d'
      AND c.bucket = date_bin(INTERVAL '1 day', s.observed_at, TIMESTAMPTZ '2000-01-03 00:00:00+00')
      AND s.observed_at BETWEEN c.first_observed_at AND c.last_observed_at
    RETURNING 1
) SELECT count(*) FROM dropped
"""

_UPSERT_LATEST = f"""
INSERT INTO latest_quotes (source, dataset_id, {_COLS})
SELECT DISTINCT ON (asset_id) %(source)s, %(dataset_id)s, {_COLS} FROM stage_quotes
ORDER BY asset_id, observed_at DESC
ON CONFLICT (asset_id, dataset_id) DO UPDATE SET {_SET}
WHERE latest_quotes.observed_at < EXCLUDED.observed_at
   OR (latest_quotes.observed_at = EXCLUDED.observed_at AND {_VALUES_CHANGED % {"table": "latest_quotes"}})
"""


class RunSuperseded(Exception):
    """The run was failed (superseded, reaped, given up) while it was still writing: nothing more commits."""


def source_lock_key(source: str) -> str:
    """Text of the per-source advisory lock (hashed by PostgreSQL with hashtextextended)."""
    return f"cryptoflow:source:{source}"


def guard_run(cur, run_id: str, source: str) -> None:
    """Inside a batch transaction: share the source's advisory lock and check the run may still write."""
    cur.execute("SELECT pg_advisory_xact_lock_shared(hashtextextended(%s, 0))", (source_lock_key(source),))
    cur.execute("SELECT status, error FROM etl_runs WHERE id = %s", (run_id,))
    row = cur.fetchone()
    if row is not None and row[0] == "failed":
        raise RunSuperseded(row[1] or f"run {run_id} was failed while it was writing")


# etl_runs.stats->'quality' holds counts that batches ADD to ("ambiguous_numbers", "soft:<rule>",
# "hard:<rule>"), in the transaction of their rows; statements that replace `stats` keep it (KEEP_QUALITY).
KEEP_QUALITY = ("CASE WHEN stats ? 'quality' THEN jsonb_build_object('quality', stats->'quality') "
                "ELSE '{}'::jsonb END")
_UPDATE_RUN = """
UPDATE etl_runs SET fetched = fetched + %(fetched)s, loaded = loaded + %(loaded)s, rejected = rejected + %(rejected)s,
    pages = pages + %(pages)s, heartbeat_at = now(), checkpoint_after = COALESCE(%(checkpoint)s, checkpoint_after),
    stats = (COALESCE(%(stats)s::jsonb, stats, '{}'::jsonb) - 'quality') || CASE
        WHEN stats ? 'quality' OR %(quality)s::jsonb <> '{}'::jsonb THEN jsonb_build_object('quality',
            COALESCE(stats->'quality', '{}'::jsonb) || COALESCE((
                SELECT jsonb_object_agg(key, COALESCE((stats->'quality'->>key)::bigint, 0) + value::bigint)
                FROM jsonb_each_text(%(quality)s::jsonb)), '{}'::jsonb))
        ELSE '{}'::jsonb END
WHERE id = %(run_id)s
"""


@dataclass
class BatchResult:
    staged: int = 0
    inserted: int = 0
    updated: int = 0
    newest_observed_at: datetime | None = None
    already_rolled_up: int = 0          # staged rows whose observation is already in the rollups: not stored


    @property
    def unchanged(self) -> int:
        return self.staged - self.inserted - self.updated - self.already_rolled_up


@dataclass
class LoadBatch:
    """Everything one transaction writes."""

    run_id: str
    source: str
    rows: list[dict]                     # validated records with "asset_id" (and optionally "flags")
    content_hash: str
    locator: dict
    fetched_at: datetime
    dataset_id: int | None = None        # pipeline/datasets.py; None: the source's default dataset
    dataset_interval: object = None      # a timedelta to record as the dataset's native interval, if unknown
    raw_body: object = None
    record_count: int = 0
    rejections: list[tuple[str, dict, object, dict]] = field(default_factory=list)  # (reason, errors, record, locator)
    checkpoint: dict | None = None       # replaces the top-level keys it names in checkpoints.cursor
    checkpoint_patch: tuple[list[str], dict] | None = None   # (json path, value) set inside the cursor
    run_counters: dict = field(default_factory=dict)   # fetched/loaded/rejected/pages increments
    run_stats: dict | None = None                       # replaces etl_runs.stats (but not its "quality")
    quality: dict = field(default_factory=dict)         # added to etl_runs.stats->'quality' (counts by key)
    in_transaction: object = None        # callable(cursor, BatchResult) run before the commit (a backfill
    #                                      window marks itself done with its rows: pipeline/backfill_window.py)
    row_hashes: tuple | None = None     # (file, chunk start, reset, packed hashes or None): pipeline/proportional.py


def _copy_text(value) -> str:
    if value is None:
        return "\\N"
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)


def load_batch(conn, batch: LoadBatch) -> BatchResult:
    """Write one batch in one transaction on `conn` (psycopg2, not autocommit). Commits."""
    result = BatchResult()
    try:
        with conn.cursor() as cur:
            guard_run(cur, batch.run_id, batch.source)
            _store_raw(cur, batch)
            if batch.rejections:
                execute_values(cur, "INSERT INTO rejected_records (run_id, source, reason, errors, record, locator) VALUES %s",
                               [(batch.run_id, batch.source, _jsonable(reason), Json(_jsonable(errors)),
                                 Json(_jsonable(record)), Json(_jsonable(locator)))
                                for reason, errors, record, locator in batch.rejections])
            rows = batch.rows.deduplicated() if _columnar(batch.rows) else _dedupe(batch.rows)
            if rows:
                if batch.dataset_id is None:
                    batch.dataset_id = _default_dataset(cur, batch.source)
                result = _upsert_quotes(cur, batch, rows)
            if batch.dataset_interval is not None and batch.dataset_id is not None:
                cur.execute("UPDATE datasets SET native_interval = %s WHERE id = %s AND native_interval IS NULL",
                            (batch.dataset_interval, batch.dataset_id))
            if batch.row_hashes is not None:
                _store_row_hashes(cur, *batch.row_hashes)
            if batch.checkpoint is not None:
                cur.execute("INSERT INTO checkpoints (source, cursor, run_id, updated_at) VALUES (%s, %s, %s, now()) "
                            "ON CONFLICT (source) DO UPDATE SET cursor = checkpoints.cursor || EXCLUDED.cursor, "
                            "run_id = EXCLUDED.run_id, updated_at = now()",
                            (batch.source, Json(batch.checkpoint), batch.run_id))
            if batch.checkpoint_patch is not None:
                path, value = batch.checkpoint_patch
                cur.execute("UPDATE checkpoints SET cursor = jsonb_set(cursor, %s::text[], %s::jsonb, true), "
                            "updated_at = now() WHERE source = %s", (path, Json(value), batch.source))
            if batch.in_transaction is not None:
                batch.in_transaction(cur, result)
            c = batch.run_counters
            cur.execute(_UPDATE_RUN, {
                "fetched": c.get("fetched", 0), "loaded": c.get("loaded", 0), "rejected": c.get("rejected", 0),
                "pages": c.get("pages", 0), "checkpoint": Json(batch.checkpoint) if batch.checkpoint is not None else None,
                "stats": Json(batch.run_stats) if batch.run_stats is not None else None,
                "quality": Json({k: int(v) for k, v in batch.quality.items() if v}), "run_id": batch.run_id})
        conn.commit()
    except BaseException:
        conn.rollback()
        raise
    return result


class BatchWriter:
    """Writes batches in order on one background thread, so the next batch is fetched and parsed while
    this one is stored (PostgreSQL works on its own core meanwhile). At most one batch waits.

    `close()` waits until every submitted batch is committed and re-raises a write error."""

    def __init__(self, conn, on_written):
        self.conn = conn
        self.on_written = on_written
        self._queue: queue.Queue = queue.Queue(maxsize=1)
        self._error: BaseException | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="batch-writer", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            if self._error is not None:
                continue                        # drain: nothing after a failed batch may be written
            batch, context = item
            try:
                self.on_written(batch, context, load_batch(self.conn, batch))
            except BaseException as exc:        # handed to the submitting thread
                self._error = exc

    def submit(self, batch: LoadBatch, context=None) -> None:
        if self._error is not None:
            raise self._error
        self._queue.put((batch, context))

    def close(self, raise_error: bool = True) -> None:
        if not self._closed:
            self._closed = True
            self._queue.put(None)
            self._thread.join()
        if self._error is not None and raise_error:
            raise self._error


_RAW_PAGE = """
INSERT INTO raw_pages AS p (content_hash, source, record_count, body, first_seen_at, last_seen_at)
VALUES (%(hash)s, %(source)s, %(count)s, %(body)s, %(at)s, %(at)s)
ON CONFLICT (content_hash) DO UPDATE SET last_seen_at = GREATEST(p.last_seen_at, EXCLUDED.last_seen_at),
    body = COALESCE(p.body, EXCLUDED.body),
    pruned_at = CASE WHEN p.body IS NULL AND EXCLUDED.body IS NOT NULL THEN NULL ELSE p.pruned_at END
"""


def _store_raw(cur, batch: LoadBatch) -> None:
    """The page's content once per hash (raw_pages; seen again: only its last_seen_at moves, and a pruned
    body comes back), and this run's reference to it (raw_payloads: run, locator, hash)."""
    body = Json(_jsonable(batch.raw_body)) if batch.raw_body is not None else None
    cur.execute(_RAW_PAGE, {"hash": batch.content_hash, "source": batch.source, "count": batch.record_count,
                            "body": body, "at": batch.fetched_at})
    cur.execute("INSERT INTO raw_payloads (run_id, source, locator, content_hash, fetched_at, record_count) "
                "VALUES (%s, %s, %s, %s, %s, %s)",
                (batch.run_id, batch.source, Json(batch.locator), batch.content_hash, batch.fetched_at,
                 batch.record_count))


def _dedupe(rows: list[dict]) -> list[dict]:
    """Keep the last record per (asset, observed_at): one bad duplicate must not fail the batch."""
    unique = {}
    for row in rows:
        unique[(row["asset_id"], row["observed_at"])] = row
    return list(unique.values())


def _default_dataset(cur, source: str) -> int:
    """The source's default dataset (migration 0003: coingecko:markets, coinpaprika:tickers,
    csv:unknown-file), for a caller that names none; the pipeline always names one."""
    cur.execute("SELECT id FROM datasets WHERE name = cryptoflow_default_dataset_name(%s)", (source,))
    row = cur.fetchone()
    if row is None:
        cur.execute("INSERT INTO datasets (name, source, endpoint) SELECT n, %s, split_part(n, ':', 2) "
                    "FROM cryptoflow_default_dataset_name(%s) n ON CONFLICT (name) DO NOTHING", (source, source))
        cur.execute("SELECT id FROM datasets WHERE name = cryptoflow_default_dataset_name(%s)", (source,))
        row = cur.fetchone()
    return row[0]


def _upsert_quotes(cur, batch: LoadBatch, rows) -> BatchResult:
    cur.execute(_STAGE)
    if _columnar(rows):
        return _upsert_columns(cur, batch, rows)
    buffer = io.StringIO()
    for row in rows:
        values = [row["asset_id"]] + [row.get(c) for c in QUOTE_VALUE_COLUMNS] + [
            _array_text(row.get("flags")), row["observed_at"], batch.fetched_at, batch.run_id, batch.content_hash]
        buffer.write("\t".join(_copy_text(v) for v in values))
        buffer.write("\n")
    buffer.seek(0)
    cur.copy_expert(f"COPY stage_quotes ({_COLS}) FROM STDIN", buffer)
    params = {"source": batch.source, "dataset_id": batch.dataset_id,
              "first": min(row["observed_at"] for row in rows), "last": max(row["observed_at"] for row in rows)}
    rolled = _drop_rolled_up(cur, params)
    cur.execute(_UPSERT_QUOTES, params)
    inserted, updated = cur.fetchone()
    cur.execute(_UPSERT_LATEST, params)
    return BatchResult(staged=len(rows), inserted=inserted, updated=updated, already_rolled_up=rolled,
                       newest_observed_at=max(row["observed_at"] for row in rows))


def _drop_rolled_up(cur, params: dict) -> int:
    """Remove from the stage the rows already rolled up (see _DROP_ROLLED_UP); one index probe when none can be."""
    if params["dataset_id"] is None:
        return 0
    cur.execute(_HAS_ROLLUPS, params)
    if not cur.fetchone()[0]:
        return 0
    cur.execute(_DROP_ROLLED_UP, params)
    return cur.fetchone()[0]


def _store_row_hashes(cur, rel: str, start: int, reset: bool, hashes: bytes | None) -> None:
    if reset:
        cur.execute("DELETE FROM csv_row_hashes WHERE file = %s", (rel,))
    if hashes:
        cur.execute("INSERT INTO csv_row_hashes (file, chunk_start, hashes) VALUES (%s, %s, %s) "
                    "ON CONFLICT (file, chunk_start) DO UPDATE SET hashes = EXCLUDED.hashes",
                    (rel, start, psycopg2.Binary(hashes)))


def _columnar(rows) -> bool:
    """Rows as columns (crypto_app.pipeline.columnar.ColumnRows) rather than a list of dicts."""
    return getattr(rows, "columnar", False)


def _upsert_columns(cur, batch: LoadBatch, rows) -> BatchResult:
    """COPY (CSV format: an unquoted empty field is NULL) straight from the columns of text."""
    import pyarrow as pa
    import pyarrow.csv as pacsv
    table = rows.table
    count = table.num_rows
    constant = {"fetched_at": batch.fetched_at.isoformat(), "run_id": str(batch.run_id),
                "payload_hash": batch.content_hash}
    for name, value in constant.items():
        table = table.append_column(name, pa.array([value] * count, pa.string()))
    buffer = pa.BufferOutputStream()
    pacsv.write_csv(table.select(list(ROW_COLUMNS)), buffer,
                    write_options=pacsv.WriteOptions(include_header=False, quoting_style="needed"))
    cur.copy_expert(f"COPY stage_quotes ({_COLS}) FROM STDIN (FORMAT csv)", pa.BufferReader(buffer.getvalue()))
    # the time range of the batch: the update of changed rows reads only the partitions it covers
    params = {"source": batch.source, "dataset_id": batch.dataset_id,
              "first": rows.oldest_observed_at(), "last": rows.newest_observed_at()}
    rolled = _drop_rolled_up(cur, params)
    cur.execute(_UPSERT_QUOTES, params)
    inserted, updated = cur.fetchone()
    cur.execute(_UPSERT_LATEST, params)
    return BatchResult(staged=count, inserted=inserted, updated=updated, already_rolled_up=rolled,
                       newest_observed_at=rows.newest_observed_at())


_FLAG = re.compile(r"^[a-z][a-z0-9_]{0,62}$")


def _array_text(flags) -> str | None:
    """A text[] literal for COPY: the sorted, distinct flag names; None (NULL) for no flags."""
    if not flags:
        return None
    names = sorted(set(flags))
    bad = [n for n in names if not isinstance(n, str) or not _FLAG.match(n)]
    if bad:
        raise ValueError(f"flag names must be lowercase rule names, got {bad!r}")
    return "{" + ",".join(names) + "}"


_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def _jsonable(value):
    """What jsonb can hold: Decimals and datetimes as text; NUL and unpaired surrogates (which PostgreSQL
    refuses, and which would fail the whole batch) replaced by U+FFFD. The content hash stays the one of
    the bytes as received."""
    if value is None:
        return None
    if isinstance(value, str):
        return _UNSTORABLE.sub("\ufffd", value)
    if isinstance(value, dict):
        return {_jsonable(str(k)): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (int, float, bool)):
        return value
    return _jsonable(str(value))
