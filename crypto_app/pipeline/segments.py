"""Large CSV files loaded by several workers at once.

A CSV run (the coordinator task) splits every new or changed file of at least 2 x CSV_SEGMENT_BYTES into
segments that start on line starts, records the plan in the csv checkpoint under "segments", and queues
one `tasks.ingest_csv_segment` per segment; any worker can take one. Each segment keeps its own progress
(byte position, next line, rows) in the checkpoint, written in the same transaction as its rows, so a
killed segment resumes where it stopped. The last segment to finish (or the coordinator, if it finishes
last) moves the file into the ordinary per-file cursor as fully read and finishes the run.

Checkpoint layout: cursor["segments"][rel] = {"sha256", "size", "run_id",
    "parts": {"<start>": {"end", "pos", "line", "rows", "done"}}}
Limitation: a segment boundary is a line start, so a file with quoted line breaks inside fields must be
loaded sequentially (CSV_SEGMENT_BYTES=0).
"""
from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

from ..sources.csv_files import CsvSource
from .datasets import DatasetRegistry
from .identity import IdentityResolver, load_overrides
from .ingest import transform
from .lifecycle import finish_run
from .load import LoadBatch, RunSuperseded, load_batch
from .plausibility import PlausibilityCheck

log = logging.getLogger(__name__)
BLOCK = 1 << 20


def scan(path: Path, header_end: int, segment_bytes: int, prefix_offset: int = 0) -> dict:
    """One pass over the file: its sha256, the sha256 of its first `prefix_offset` bytes, and the parts."""
    size = path.stat().st_size
    starts = [header_end]
    with open(path, "rb") as fh:
        target = header_end + segment_bytes
        while target < size:
            fh.seek(target)
            fh.readline()
            boundary = fh.tell()
            if boundary >= size:
                break
            starts.append(boundary)
            target = boundary + segment_bytes
    marks = sorted(set(starts) | ({prefix_offset} if prefix_offset else set()))
    whole, prefix, lines_at = hashlib.sha256(), None, {}
    pos = newlines = index = 0
    with open(path, "rb") as fh:
        while block := fh.read(BLOCK):
            end = pos + len(block)
            while index < len(marks) and marks[index] <= end:
                part = block[:marks[index] - pos]
                lines_at[marks[index]] = newlines + part.count(b"\n") + 1
                if marks[index] == prefix_offset:
                    snapshot = whole.copy()
                    snapshot.update(part)
                    prefix = snapshot.hexdigest()
                index += 1
            whole.update(block)
            newlines += block.count(b"\n")
            pos = end
    bounds = starts + [size]
    parts = {str(start): {"end": bounds[i + 1], "pos": start, "line": lines_at.get(start, 1), "rows": 0,
                          "done": False}
             for i, start in enumerate(starts)}
    return {"sha256": whole.hexdigest(), "prefix_sha256": prefix, "size": size, "parts": parts}


def plan(conn, settings, run_id: str) -> tuple[list[dict], set[str]]:
    """Split the large new or changed files; return (segment task kwargs to queue, files split)."""
    if settings.csv_segment_bytes <= 0:
        return [], set()
    source = CsvSource(settings)
    cursor = _cursor(conn)
    files_state = (cursor.get("position") or {}).get("files") or {}
    segments = cursor.get("segments") or {}
    planned, split = {}, set()
    for rel, path in source.file_list():
        size = path.stat().st_size
        if size < 2 * settings.csv_segment_bytes:
            continue
        header_end = source.header_end(path, rel)
        if header_end is None:
            continue
        entry = files_state.get(rel) or {}
        offset = int(entry.get("offset") or 0) if int(entry.get("offset") or 0) <= size else 0
        info = scan(path, header_end, settings.csv_segment_bytes, offset)
        if offset and info["prefix_sha256"] == entry.get("prefix_sha256"):
            continue     # unchanged, or grown / unfinished: the sequential reader resumes it at its offset
        previous = segments.get(rel)
        parts = info["parts"]
        if previous and previous.get("sha256") == info["sha256"]:      # resume it; a new run, a new count
            parts = {start: {**part, "unfinished": 0} for start, part in previous["parts"].items()}
        planned[rel] = {"sha256": info["sha256"], "size": info["size"], "run_id": run_id, "parts": parts}
        split.add(rel)
    if not planned:
        return [], set()
    with conn.cursor() as cur:
        cur.execute("INSERT INTO checkpoints (source, cursor, run_id) VALUES ('csv', '{}'::jsonb, %s) "
                    "ON CONFLICT (source) DO NOTHING", (run_id,))
        cur.execute("UPDATE checkpoints SET cursor = jsonb_set(cursor, '{segments}', "
                    "COALESCE(cursor->'segments', '{}'::jsonb) || %s::jsonb, true) WHERE source = 'csv'",
                    (json.dumps(planned),))
        cur.execute("UPDATE etl_runs SET stats = stats || '{\"segmented\": true}'::jsonb WHERE id = %s", (run_id,))
        # proportional re-ingest: segments store no row hashes, so these files forget theirs
        cur.execute("DELETE FROM csv_row_hashes WHERE file = ANY(%s)", (sorted(planned),))
    conn.commit()
    tasks = [{"run_id": run_id, "rel": rel, "start": int(start), "end": part["end"]}
             for rel, seg in planned.items() for start, part in seg["parts"].items() if not part["done"]]
    log.info("csv files split into segments", extra={"run_id": run_id, "source": "csv",
                                                     "files": sorted(split), "segments": len(tasks)})
    return tasks, split


def start_delivery(conn, run_id: str, rel: str, start: int) -> int:
    """Count a delivery of a segment on its run; return how many deliveries of it in a row died before.

    The count lives in the segment's part of the checkpoint ("unfinished"), carried by every progress
    write of the segment and reset when it is done, so a segment killed after some progress still counts."""
    path = ["segments", rel, "parts", str(start), "unfinished"]
    with conn.cursor() as cur:
        cur.execute("UPDATE etl_runs SET deliveries = deliveries + 1, heartbeat_at = now() WHERE id = %s", (run_id,))
        cur.execute("UPDATE checkpoints SET cursor = jsonb_set(cursor, %s::text[], "
                    "to_jsonb(COALESCE((cursor #>> %s::text[])::int, 0) + 1), true) WHERE source = 'csv' "
                    "RETURNING (cursor #>> %s::text[])::int", (path, path, path))
        row = cur.fetchone()
    conn.commit()
    return (row[0] - 1) if row and row[0] is not None else 0


def run_segment(settings, conn, identity_conn, run_id: str, rel: str, start: int, end: int,
                should_stop=None) -> bool:
    """Load one segment from where it stopped; return True when it is done.

    `should_stop()` is asked before each batch; a reason raises RunSuperseded (what was loaded stays)."""
    part = (((_cursor(conn).get("segments") or {}).get(rel) or {}).get("parts") or {}).get(str(start))
    if part is None or part.get("done"):
        return True
    unfinished = int(part.get("unfinished") or 0)
    source = CsvSource(settings)
    resolver = IdentityResolver(identity_conn, "csv", load_overrides(settings.csv_data_dir))
    datasets = DatasetRegistry(identity_conn, run_id, settings.csv_data_dir)
    rows_total = int(part.get("rows") or 0)
    checks = PlausibilityCheck(settings.plausibility, "csv", identity_conn)
    for batch in source.segment_batches(rel, int(part["pos"]), end, int(part.get("line") or 1)):
        reason = should_stop() if should_stop else None
        if reason:
            raise RunSuperseded(reason)
        dataset = datasets.for_batch(source, batch.locator) if batch.size else None
        rows, rejections, quality = transform(source, resolver, batch, checks, dataset.id if dataset else None)
        rows_total += len(rows)
        progress = {"end": end, "pos": batch.next_cursor["pos"], "line": batch.next_cursor["line"],
                    "rows": rows_total, "done": batch.done, "unfinished": 0 if batch.done else unfinished}
        load_batch(conn, LoadBatch(
            run_id=run_id, source="csv", rows=rows, dataset_id=dataset.id if dataset else None,
            dataset_interval=datasets.learned_interval(dataset, rows) if dataset else None,
            content_hash=batch.content_hash, locator=batch.locator,
            fetched_at=batch.fetched_at, record_count=batch.size, rejections=rejections,
            checkpoint_patch=(["segments", rel, "parts", str(start)], progress),
            run_counters={"fetched": batch.size + len(batch.invalid), "loaded": len(rows),
                          "rejected": len(rejections), "pages": 1}, quality=quality))
    return True


def finalize(conn, settings, run_id: str) -> str | None:
    """Fold finished files into the per-file cursor; finish the run when nothing of it is left.

    Returns the run's final status if this call finished it."""
    with conn.cursor() as cur:
        cur.execute("SELECT status, stats, fetched, rejected FROM etl_runs WHERE id = %s FOR UPDATE", (run_id,))
        row = cur.fetchone()
        cur.execute("SELECT cursor FROM checkpoints WHERE source = 'csv' FOR UPDATE")
        found = cur.fetchone()
        cursor = dict(found[0]) if found else {}
        segments = dict(cursor.get("segments") or {})
        position = dict(cursor.get("position") or {})
        files = dict(position.get("files") or {})
        coordinator_done = bool(row and (row[1] or {}).get("coordinator_done"))
        for rel, seg in list(segments.items()):
            # only once the coordinator stopped writing the per-file cursor, or it would overwrite this
            if coordinator_done and all(p.get("done") for p in seg["parts"].values()):
                files[rel] = {"size": seg["size"], "offset": seg["size"], "prefix_sha256": seg["sha256"],
                              "rows": sum(int(p.get("rows") or 0) for p in seg["parts"].values()), "done": True}
                del segments[rel]
        position["files"] = files
        cur.execute("UPDATE checkpoints SET cursor = cursor || %s::jsonb WHERE source = 'csv'",
                    (json.dumps({"segments": segments, "position": position}),))
    conn.commit()
    if row is None:
        return None
    status, stats, fetched, rejected = row
    pending = any(seg.get("run_id") == run_id for seg in segments.values())
    if status != "running" or pending or not (stats or {}).get("coordinator_done"):
        return None
    share = rejected / fetched if fetched else 0.0
    final = "partial" if share > settings.reject_share_partial else "succeeded"
    finish_run(conn, run_id, final)
    return final


def _cursor(conn) -> dict:
    with conn.cursor() as cur:
        cur.execute("SELECT cursor FROM checkpoints WHERE source = 'csv'")
        row = cur.fetchone()
    conn.commit()
    return dict(row[0]) if row and row[0] else {}
