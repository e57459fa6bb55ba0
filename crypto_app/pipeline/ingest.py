"""One ingestion run of one source: fetch batches, validate, resolve identity, load, checkpoint.

The Celery task (tasks/ingest.py) and the CLI (crypto_app/cli.py) both call `IngestionRun.execute`.
It resumes from the source's checkpoint when the previous attempt did not finish, and raises:
- RateLimitWait: the shared bucket has no token for longer than we are willing to sleep; the caller
  retries later with a countdown (the task) or sleeps (the CLI). Progress so far is committed.
- TransientSourceError: the caller retries with backoff; progress so far is committed.
- PermanentSourceError: the run is failed by the caller; retrying will not help.
- RunSuperseded: the run lost its lock (`should_stop` said so at a batch boundary) or was failed by the
  run that took its source; what it committed stays.
"""
from __future__ import annotations

import json
import logging
import math
import random
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

from ..coordination import RateLimiter
from ..sources import build_source
from ..sources.base import Batch, SourceError
from .datasets import DatasetRegistry
from .drift import detect_drift, observe
from .identity import IdentityError, IdentityResolver, load_overrides
from .load import KEEP_QUALITY, BatchWriter, LoadBatch, RunSuperseded
from .numbers import MACHINE, column_marks
from .plausibility import PlausibilityCheck
from .validate import NUMBER_FIELDS, invalid_reason, validate_record

log = logging.getLogger(__name__)


class RateLimitWait(Exception):
    def __init__(self, seconds: float):
        super().__init__(f"rate limit: next token in {seconds:.2f}s")
        self.seconds = seconds


@dataclass
class RunOutcome:
    status: str
    fetched: int = 0
    loaded: int = 0
    rejected: int = 0
    pages: int = 0
    stats: dict = field(default_factory=dict)
    schema_drift: dict | None = None


def make_throttle(limiter: RateLimiter | None, max_sleep: float, stats: dict):
    """Before each upstream request: take a token, sleeping for short waits, raising for long ones."""

    def throttle() -> None:
        if limiter is None:
            return
        while True:
            wait = limiter.try_acquire()
            if wait <= 0:
                return
            stats["rate_limit_waits"] = stats.get("rate_limit_waits", 0) + 1
            if wait > max_sleep:
                raise RateLimitWait(wait)
            stats["rate_limit_wait_seconds"] = round(stats.get("rate_limit_wait_seconds", 0.0) + wait, 3)
            time.sleep(wait)

    return throttle


class IngestionRun:
    """Executes (or resumes) run `run_id` of `source_name`."""

    def __init__(self, run_id: str, source_name: str, settings, conn, identity_conn, redis=None,
                 max_sleep: float | None = None, options: dict | None = None, progress=None, should_stop=None):
        self.run_id = str(run_id)
        self.source_name = source_name
        self.settings = settings
        self.conn = conn                      # psycopg2 connection for batch transactions
        self.identity_conn = identity_conn    # autocommit connection for asset creation
        self.redis = redis
        self.max_sleep = settings.rate_limit_max_sleep_seconds if max_sleep is None else max_sleep
        self.options = options or {}
        self.progress = progress or (lambda batch, counts: None)
        self.should_stop = should_stop or (lambda: None)   # returns a reason to stop, checked per batch

    def execute(self) -> RunOutcome:
        stats, totals = self._load_run_state()
        http_status = Counter(stats.get("http_status", {}))
        source_settings = self.settings.sources[self.source_name]
        limiter = None
        if self.redis is not None:
            limiter = RateLimiter(self.redis, self.source_name, source_settings.rate_per_minute, source_settings.burst)
        source = build_source(self.source_name, self.settings,
                              on_http_status=lambda status: http_status.update([str(status)]), **self.options)
        if source.rate_limited:
            source.throttle = make_throttle(limiter, self.max_sleep, stats)

        saved = self._checkpoint()
        position = saved.get("position") or {}
        if saved.get("complete") and not source.cursor_persists:
            position = {}
        previous_fields = saved.get("fields")
        seen_types: dict[str, str] = dict(saved.get("fields_this_run") or {}) if not saved.get("complete") else {}
        resolver = IdentityResolver(self.identity_conn, self.source_name, load_overrides(self.settings.csv_data_dir))
        datasets = DatasetRegistry(self.identity_conn, self.run_id,
                                   self.settings.csv_data_dir if source.name == "csv" else None)
        newest = saved.get("newest_observed_at")
        checks = PlausibilityCheck(self.settings.plausibility, self.source_name, self.identity_conn)
        files = FileHashes(self.identity_conn,       # --force: every record processed again, none skipped
                           skip=checks.severity["price_jump"] != "hard" and not self.options.get("force"))

        guard = threading.Lock()            # stats are updated by the writer thread, copied by this one

        def written(batch, counts, result):
            with guard:
                for key in ("inserted", "updated", "unchanged"):
                    stats[key] = stats.get(key, 0) + getattr(result, key)
                if result.already_rolled_up:        # a re-import of rows the maintenance task rolled up
                    stats["already_rolled_up"] = stats.get("already_rolled_up", 0) + result.already_rolled_up
            self.progress(batch, counts)
            log.info("batch loaded", extra={"run_id": self.run_id, "source": self.source_name,
                                            "locator": batch.locator, **counts,
                                            "inserted": result.inserted, "updated": result.updated})

        writer = BatchWriter(self.conn, written)
        try:
            for batch in source.batches(position):
                reason = self.should_stop()
                if reason:
                    raise RunSuperseded(reason)
                dataset = datasets.for_batch(source, batch.locator) if batch.size else None
                size, sample = batch.size, sample_records(batch)
                known, row_hashes = files.for_batch(batch)
                rows, rejections, quality = transform(source, resolver, batch, checks,
                                                      dataset.id if dataset else None, known)
                batch.block = None             # the chunk's raw columns are not needed any more (memory)
                if getattr(rows, "skipped", 0):
                    quality["unchanged_rows_skipped"] += rows.skipped
                if row_hashes is not None:
                    row_hashes = (*row_hashes, getattr(rows, "hashes", None))
                observe(seen_types, sample)
                counts = {"fetched": size + len(batch.invalid), "loaded": len(rows),
                          "rejected": len(rejections), "pages": 1}
                for key in ("fetched", "loaded", "rejected", "pages"):
                    totals[key] += counts[key]
                batch_newest = newest_observed_at(rows)
                if batch_newest and (newest is None or batch_newest.isoformat() > newest):
                    newest = batch_newest.isoformat()
                checkpoint = {"position": batch.next_cursor, "run_id": self.run_id, "complete": False,
                              "newest_observed_at": newest, "fields": previous_fields,
                              "fields_this_run": dict(seen_types)}
                with guard:
                    stats["http_status"] = dict(http_status)
                    snapshot = json.loads(json.dumps(stats))
                writer.submit(LoadBatch(
                    run_id=self.run_id, source=self.source_name, rows=rows,
                    dataset_id=dataset.id if dataset else None,
                    dataset_interval=datasets.learned_interval(dataset, rows) if dataset else None,
                    content_hash=batch.content_hash,
                    locator=batch.locator, fetched_at=batch.fetched_at, raw_body=batch.raw,
                    record_count=size, rejections=rejections, checkpoint=checkpoint,
                    run_counters=counts, run_stats=snapshot, quality=quality, row_hashes=row_hashes), counts)
            writer.close()
        except SourceError as exc:
            if exc.kind:    # counted per cause: cryptoflow_upstream_errors_total{source, kind}
                errors = stats.setdefault("upstream_errors", {})
                errors[exc.kind] = errors.get(exc.kind, 0) + 1
            raise
        finally:
            writer.close(raise_error=False)   # interrupted: what was submitted is committed first
            stats["http_status"] = dict(http_status)
            self._save_stats(stats)   # also when interrupted: a 429 or a wait is history worth keeping

        drift = detect_drift(previous_fields, seen_types)
        if drift:
            log.warning("schema drift", extra={"run_id": self.run_id, "source": self.source_name, "drift": drift})
        self._finish_checkpoint(seen_types or previous_fields, newest)
        share = totals["rejected"] / totals["fetched"] if totals["fetched"] else 0.0
        status = "partial" if share > self.settings.reject_share_partial else "succeeded"
        return RunOutcome(status=status, stats=stats, schema_drift=drift, **totals)

    # -- steps ------------------------------------------------------------------------------------

    def _load_run_state(self) -> tuple[dict, dict]:
        with self.conn.cursor() as cur:
            cur.execute("SELECT stats, fetched, loaded, rejected, pages FROM etl_runs WHERE id = %s", (self.run_id,))
            row = cur.fetchone()
        self.conn.commit()
        if row is None:
            raise LookupError(f"run {self.run_id} does not exist")
        stats, fetched, loaded, rejected, pages = row
        return dict(stats or {}), {"fetched": fetched, "loaded": loaded, "rejected": rejected, "pages": pages}

    def _save_stats(self, stats: dict) -> None:
        try:
            self.conn.rollback()
            with self.conn.cursor() as cur:
                cur.execute("UPDATE etl_runs SET stats = (%s::jsonb - 'quality') || " + KEEP_QUALITY + " WHERE id = %s",
                            (json.dumps(stats), self.run_id))
            self.conn.commit()
        except Exception:  # the database may be the reason we are here; the caller handles that
            log.warning("could not save run stats", extra={"run_id": self.run_id})

    def _checkpoint(self) -> dict:
        with self.conn.cursor() as cur:
            cur.execute("SELECT cursor FROM checkpoints WHERE source = %s", (self.source_name,))
            row = cur.fetchone()
        self.conn.commit()
        return dict(row[0]) if row and row[0] else {}

    def _finish_checkpoint(self, fields, newest) -> None:
        """Mark the crawl complete (also when the source had nothing new to yield)."""
        with self.conn.cursor() as cur:
            cur.execute("INSERT INTO checkpoints (source, cursor, run_id) VALUES (%s, '{}'::jsonb, %s) "
                        "ON CONFLICT (source) DO NOTHING", (self.source_name, self.run_id))
            cur.execute("UPDATE checkpoints SET cursor = (cursor - 'fields_this_run') || jsonb_build_object("
                        "'complete', true, 'fields', %s::jsonb, 'newest_observed_at', %s::text, 'run_id', %s::text), "
                        "run_id = %s, updated_at = now() WHERE source = %s",
                        (json.dumps(fields), newest, self.run_id, self.run_id, self.source_name))
        self.conn.commit()


class FileHashes:
    """Per CSV file of a run: the hashes of its stored records (proportional re-ingest), loaded once when
    the file is read from its start, whose first batch then replaces them."""

    def __init__(self, conn, skip: bool = True):
        self.conn, self.skip = conn, skip
        self._known: dict[str, object] = {}

    def for_batch(self, batch: Batch):
        """(hashes to skip by or None, (file, chunk start, reset) for LoadBatch.row_hashes or None)."""
        rel = batch.locator.get("file") if isinstance(batch.locator, dict) else None
        if rel is None:
            return None, None
        reset = rel not in self._known and batch.locator.get("start") == 0
        if rel not in self._known:
            from .proportional import EMPTY, known_hashes     # numpy: imported by the processes that read CSV
            self._known[rel] = known_hashes(self.conn, rel) if reset and self.skip else EMPTY
        return self._known[rel], (rel, int(batch.locator["start"]), reset)


def backoff_seconds(failures: int, retry_after: float | None, maximum: float = 600.0) -> float:
    """Exponential backoff with full jitter; an upstream's Retry-After wins when it is longer."""
    ceiling = min(maximum, 2.0 ** max(failures, 1))
    delay = random.uniform(ceiling / 2, ceiling)
    if retry_after:
        delay = max(delay, float(retry_after) + random.uniform(0, 1))
    return math.ceil(min(delay, max(maximum, float(retry_after or 0)) + 1))


def transform(source, resolver: IdentityResolver, batch: Batch, checks: PlausibilityCheck | None = None,
              dataset_id: int | None = None, known=None) -> tuple[list[dict], list[tuple], Counter]:
    """Normalize, validate, resolve and check the records of one batch: (rows to load, rejections, quality
    counts: "ambiguous_numbers", "soft:<rule>", "hard:<rule>").

    Numbers of a source without a fixed number format (CSV files) are read under the decimal mark of
    their column in this batch (crypto_app.pipeline.numbers). Every row carries `flags` (the soft
    plausibility rules it tripped), stored in quotes.flags; `price_jump` compares within `dataset_id`.

    A CSV chunk read column-wise (batch.block) goes through crypto_app.pipeline.columnar, which applies
    these same rules to whole columns and returns its rows as columns (ColumnRows)."""
    if batch.block is not None:
        from .columnar import transform_block   # pyarrow: imported by the processes that read CSV only
        return transform_block(source, resolver, batch, checks, dataset_id, known)
    rejections, quality = [], Counter()
    for raw, reason in batch.invalid:
        rejections.append((reason, {"_record": [reason]}, raw, batch.locator))
    normalized = []
    for record in batch.records:
        try:
            normalized.append((record, source.normalize(record)))
        except Exception as exc:  # a mapping bug must quarantine the record, not kill the run
            rejections.append((f"could not normalize: {exc.__class__.__name__}: {exc}",
                               {"_record": [str(exc)]}, record, batch.locator))
    marks = _number_marks(normalized) if getattr(source, "number_format", MACHINE) is None else None
    checked = []
    for record, values in normalized:
        clean, errors = validate_record(values, marks)
        if errors:
            rejections.append((invalid_reason(source, record, errors, quality), errors, record, batch.locator))
            continue
        try:
            clean["asset_id"] = resolver.resolve(clean)
        except IdentityError as exc:
            rejections.append((str(exc), {"symbol": [str(exc)]}, record, batch.locator))
            continue
        checked.append((clean, record))
    if checks is None:
        for clean, _ in checked:
            clean["flags"] = []
        return [clean for clean, _ in checked], rejections, quality
    accepted, implausible, counts = checks.check(checked, dataset_id)
    quality.update(counts)
    rejections.extend((reason, errors, record, batch.locator) for reason, errors, record in implausible)
    return [clean for clean, _ in accepted], rejections, quality


def newest_observed_at(rows):
    """The latest observed_at among a batch's rows (dicts or ColumnRows); None if there are none."""
    if getattr(rows, "columnar", False):
        return rows.newest_observed_at()
    return max((r["observed_at"] for r in rows), default=None)


def sample_records(batch: Batch, count: int = 5) -> list[dict]:
    """The first records of a batch as dicts (what schema drift looks at)."""
    if batch.block is None:
        return batch.records
    return [batch.block.record(i, batch.locator["file"]) for i in range(min(count, batch.block.num_rows))]


def _number_marks(normalized: list[tuple[dict, dict]]) -> dict:
    """The decimal mark of each number field's column in this batch."""
    columns = {}
    for name in NUMBER_FIELDS:
        texts = [v for _, values in normalized if isinstance(v := values.get(name), str)]
        if texts:
            columns[name] = texts
    return column_marks(columns)
