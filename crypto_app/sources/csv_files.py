"""CSV files under CSV_DATA_DIR: streamed in byte-addressed chunks, resumable, formats detected.

Cursor: {"files": {rel_path: {"size", "offset", "prefix_sha256", "rows", "done"}}} where
prefix_sha256 is the sha256 of the file's first `offset` bytes. An unchanged finished file is
skipped, a grown or unfinished one whose prefix still matches resumes at `offset`, anything else is
read again from the start. Offsets always fall on record boundaries.

Records are {header cell: raw string} plus "_line" (1-based line of the record) and "_file" (path
relative to the data dir); `normalize` rebuilds the column mapping from those keys alone.
"""
from __future__ import annotations

import codecs
import csv
import hashlib
import logging
import os
from pathlib import Path
from typing import Iterator

from .base import CANONICAL_FIELDS, Batch, PermanentSourceError, Source
from .csv_formats import (HASH_BLOCK, HEADER_SEARCH_LINES, MAX_LINE_BYTES, RAW_CHARS, FileFormat, LineFeed,
                          decode_line, describe, identity, max_cells, no_coin_reason, read_header)

log = logging.getLogger(__name__)


class CsvSource(Source):
    """Every *.csv under CSV_DATA_DIR (or the `files` option), in chunks of CSV_CHUNK_ROWS records."""

    name = "csv"
    rate_limited = False
    cursor_persists = True          # the per-file cursor outlives a completed run: unchanged files are skipped
    number_format = None            # each column's decimal mark is decided from the file's own evidence

    # -- files ------------------------------------------------------------------------------------

    def _root(self) -> Path:
        root = Path(self.settings.csv_data_dir)
        if not root.is_dir():
            raise PermanentSourceError(f"CSV data directory {root} does not exist")
        return root.resolve()

    def _files(self, root: Path) -> list[tuple[str, Path]]:
        wanted = self.options.get("files")
        if wanted is None:
            found = []
            for dirpath, dirnames, filenames in os.walk(root):
                dirnames.sort()
                for filename in filenames:
                    path = Path(dirpath) / filename
                    if not filename.lower().endswith(".csv"):
                        continue
                    if not path.resolve().is_relative_to(root):
                        log.warning("csv file outside data dir skipped", extra={"source": self.name, "file": str(path)})
                        continue
                    if path.is_file():
                        found.append((path.relative_to(root).as_posix(), path))
            return sorted(found)
        if isinstance(wanted, (str, os.PathLike)):
            wanted = [wanted]
        out = {}
        for item in wanted:
            given = Path(item)
            candidate = given if given.is_absolute() else root / given
            resolved = candidate.resolve()
            if not resolved.is_relative_to(root):
                raise PermanentSourceError(f"{item}: outside the CSV data directory {root}; refusing to read it")
            if not resolved.is_file():
                raise PermanentSourceError(f"{item}: no such file in the CSV data directory {root}")
            lexical = Path(os.path.normpath(candidate))
            rel = lexical.relative_to(root) if lexical.is_relative_to(root) else resolved.relative_to(root)
            out[rel.as_posix()] = resolved
        return sorted(out.items())

    # -- batches ----------------------------------------------------------------------------------

    def batches(self, cursor: dict) -> Iterator[Batch]:
        root = self._root()
        files = self._files(root)
        state = {"files": _valid_entries((cursor or {}).get("files"))}
        excluded = set(self.options.get("exclude") or ())   # files loaded in parallel segments instead
        files = [(rel, path) for rel, path in files if rel not in excluded]
        if self.options.get("files") is None:   # a full scan forgets files that are gone
            present = {rel for rel, _ in files} | excluded
            state["files"] = {k: v for k, v in state["files"].items() if k in present}
        if self.options.get("force"):           # `flask etl import --force`: read these files from the start
            for rel, _ in files:
                state["files"].pop(rel, None)
        pending = None
        for rel, path in files:
            for batch in self._file_batches(rel, path, state):
                if pending is not None:
                    yield pending
                pending = batch
        if pending is not None:
            pending.done = True
            yield pending

    def unchanged_files(self, cursor: dict) -> list[str]:
        """The files (of the `files` option, or all) that a run would skip: read completely, unchanged since."""
        entries = _valid_entries((cursor or {}).get("files"))
        out = []
        for rel, path in self._files(self._root()):
            if rel in entries:
                with open(path, "rb") as fh:
                    if self._resume_point(fh, os.fstat(fh.fileno()).st_size, entries[rel])[0] is None:
                        out.append(rel)
        return out

    def _file_batches(self, rel: str, path: Path, state: dict) -> Iterator[Batch]:
        try:
            fh = open(path, "rb")
        except OSError as exc:
            raise PermanentSourceError(f"{rel}: cannot open: {exc}") from None
        with fh:
            size = os.fstat(fh.fileno()).st_size
            header = read_header(fh)
            start, line_no, rows, file_hash = self._resume_point(fh, size, state["files"].get(rel))
            if start is None:
                return                       # unchanged since it was read completely
            fh.seek(start)
            feed = LineFeed(fh, start, line_no, file_hash)
            if header is None:
                yield from self._unreadable(rel, fh, feed, size, state)
                return
            fmt = describe(header.columns, rel)
            refusal = no_coin_reason(rel, fmt)
            if refusal and self.options.get("files") is not None:
                raise PermanentSourceError(refusal)      # asked for this file: the run fails with one error
            if refusal:
                log.warning("csv file refused", extra={"source": self.name, "file": rel, "error": refusal})
                yield from self._unreadable(rel, fh, feed, size, state, refusal)
                return
            first_line = feed.line_no
            feed.skip_to(header.end)
            yield from self._records(rel, fmt, header.delimiter, feed, start, first_line, rows, size, state)

    def _resume_point(self, fh, size: int, entry: dict | None):
        """(start offset, line number there, rows so far, hash of the bytes before it); start None: skip."""
        if entry and entry["offset"] <= size:
            prefix, newlines = hashlib.sha256(), 0
            fh.seek(0)
            remaining = entry["offset"]
            while remaining:
                block = fh.read(min(HASH_BLOCK, remaining))
                if not block:
                    break
                prefix.update(block)
                newlines += block.count(b"\n")
                remaining -= len(block)
            if not remaining and prefix.hexdigest() == entry["prefix_sha256"]:
                if entry["done"] and entry["offset"] == size:
                    return None, 0, 0, None
                return entry["offset"], newlines + 1, entry["rows"], prefix
        return 0, 1, 0, hashlib.sha256()

    def _records(self, rel, fmt: FileFormat, delimiter, feed: LineFeed, start, first_line, rows, size, state):
        if not self.settings.csv_columnar or fmt.not_usd_reason:
            yield from self._rows(rel, fmt, delimiter, feed, start, first_line, rows, size, state)
            return
        from .csv_columnar import parse_block     # pyarrow: imported by the processes that read CSV only
        chunk_rows, limit = self.settings.csv_chunk_rows, feed.limit
        guess = 128 * chunk_rows            # bytes read for a chunk; adapted to the file's line length
        while True:                             # start, first_line: where this chunk's bytes begin
            want = guess if limit is None else min(guess, limit - feed.pos)
            data = feed.fh.read(want) if want > 0 else b""
            if data and not data.endswith(b"\n"):
                data += feed.fh.readline(MAX_LINE_BYTES + 1)
            at_end = len(data) < want or (limit is not None and start + len(data) >= limit)
            block = parse_block(data, fmt.columns, delimiter, feed.line_no) if data else None
            if block is not None and block.num_rows < chunk_rows and not at_end:
                feed.fh.seek(feed.pos)
                guess *= 2                      # too few records for a full chunk: read more
                continue
            if data and block is None:          # irregular: this chunk exactly as the row reader reads it
                feed.fh.seek(feed.pos)
                batches = self._rows(rel, fmt, delimiter, feed, start, first_line, rows, size, state, single=True)
                for batch in batches:
                    rows = state["files"][rel]["rows"]
                    yield batch
                if state["files"][rel]["done"]:
                    return
                start, first_line = feed.pos, feed.line_no
                continue
            if block is not None and block.num_rows >= chunk_rows:
                block = block.head(chunk_rows)
                used = int(block.ends[-1])
                guess = max(1 << 16, int(used / chunk_rows * chunk_rows * 1.1) + 4096)
                at_end = False
            else:
                used = len(data)
            feed.fh.seek(feed.pos + used)
            piece = data[:used]
            feed.file_hash.update(piece)
            feed.chunk_hash.update(piece)
            feed.pos += used
            feed.line_no += piece.count(b"\n")
            count = block.num_rows if block is not None else 0
            rows += count
            batch = self._batch(rel, feed, start, first_line, [], [], rows, size, state, last=at_end)
            batch.block = block if count else None
            yield batch
            if at_end:
                return
            start, first_line = feed.pos, feed.line_no

    def _rows(self, rel, fmt: FileFormat, delimiter, feed: LineFeed, start, first_line, rows, size, state,
              single=False):
        """The row reader; `single`: stop after the first full chunk (the columnar reader goes on)."""
        columns, width = fmt.columns, len(fmt.columns)
        limit, chunk_rows = max_cells(width), self.settings.csv_chunk_rows
        not_usd = fmt.not_usd_reason
        records, invalid = [], []
        reader = csv.reader(feed.lines(), delimiter=delimiter)
        while True:
            try:
                row = next(reader)
            except StopIteration:
                break
            except csv.Error as exc:
                invalid.extend(feed.bad)
                feed.bad.clear()
                lines = f"lines {feed.record_line}-{feed.line_no - 1}"   # an open quote can swallow several
                invalid.append(({"_line": feed.record_line, "raw": feed.record_head}, f"unparseable CSV row ({lines}): {exc}"))
                feed.end_record()
                row = None
            if feed.bad:
                invalid.extend(feed.bad)
                feed.bad.clear()
            if row is not None:
                line, head = feed.record_line, feed.record_head
                feed.end_record()
                if not row or not any(cell.strip() for cell in row):
                    continue                # blank line
                if len(row) > limit:
                    invalid.append(({"_line": line, "raw": head}, f"{len(row)} cells on a row under a {width}-column header"))
                elif not_usd:
                    invalid.append(({"_line": line, "raw": head}, not_usd))
                else:
                    record = dict(zip(columns, row))
                    if len(row) < width:
                        record.update(dict.fromkeys(columns[len(row):]))
                    record["_line"], record["_file"] = line, rel
                    records.append(record)
            if len(records) + len(invalid) >= chunk_rows:
                rows += len(records)
                yield self._batch(rel, feed, start, first_line, records, invalid, rows, size, state, last=False)
                if single:
                    return
                start, first_line, records, invalid = feed.pos, feed.line_no, [], []
        invalid.extend(feed.bad)
        feed.bad.clear()
        rows += len(records)
        yield self._batch(rel, feed, start, first_line, records, invalid, rows, size, state, last=True)

    def _unreadable(self, rel, fh, feed: LineFeed, size, state, reason: str | None = None):
        """No header found (or no coin named): one quarantined entry for the file, read (hashed) to the end
        so it is not retried."""
        start, first_line = feed.pos, feed.line_no
        fh.seek(0)
        first = fh.readline(RAW_CHARS * 4)
        fh.seek(start)
        if reason is None:
            reason = f"no header row naming a date or price column in the first {HEADER_SEARCH_LINES} lines"
        if reason.startswith("no header") and first.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
            reason = "UTF-16 encoded file: save it as UTF-8"
        invalid = [({"_line": 1, "raw": decode_line(first)[0].replace("\x00", "")[:RAW_CHARS]}, reason)] if size else []
        while block := fh.read(HASH_BLOCK):
            feed.file_hash.update(block)
            feed.chunk_hash.update(block)
            feed.pos += len(block)
            feed.line_no += block.count(b"\n")
        yield self._batch(rel, feed, start, first_line, [], invalid if start == 0 else [], 0, size, state, last=True)

    def _batch(self, rel, feed: LineFeed, start, first_line, records, invalid, rows, size, state, last) -> Batch:
        end = feed.pos
        state["files"][rel] = {"size": max(size, end), "offset": end, "prefix_sha256": feed.file_hash.hexdigest(),
                               "rows": rows, "done": last}
        encoding = "+".join(["utf-8", *sorted(feed.encodings)])
        batch = Batch(records=records, invalid=invalid, raw=None, content_hash=feed.chunk_hash.hexdigest(),
                      locator={"file": rel, "start": start, "end": end, "first_line": first_line, "encoding": encoding},
                      next_cursor={"files": {k: dict(v) for k, v in state["files"].items()}})
        feed.new_chunk()
        return batch

    # -- one segment of a large file (loaded by one of several workers in parallel) ---------------

    def file_path(self, rel: str) -> Path:
        """The file `rel` inside the data dir (path traversal refused like the `files` option)."""
        return dict(self._with_files([rel]))[rel]

    def file_list(self) -> list[tuple[str, Path]]:
        """(relative path, path) of every file this source would read."""
        return self._files(self._root())

    def header_end(self, path: Path, rel: str = "") -> int | None:
        """Where the data of a file starts; None if it has no header or names no coin (read sequentially)."""
        with open(path, "rb") as fh:
            header = read_header(fh)
        if header is None or no_coin_reason(rel or path.name, describe(header.columns, rel or path.name)):
            return None
        return header.end

    def _with_files(self, rels):
        saved = self.options.get("files")
        self.options["files"] = list(rels)
        try:
            return self._files(self._root())
        finally:
            self.options["files"] = saved

    def segment_batches(self, rel: str, start: int, end: int, first_line: int) -> Iterator[Batch]:
        """Batches of the records that begin in [start, end) of file `rel`; `start` is a line start.

        The cursor of each batch is {"pos": byte offset reached, "line": line number there}; resume with
        start=pos, first_line=line."""
        with open(self.file_path(rel), "rb") as fh:
            header = read_header(fh)
            if header is None:
                raise PermanentSourceError(f"{rel}: no header row; cannot load it in segments")
            fh.seek(start)
            feed = LineFeed(fh, start, first_line, hashlib.sha256())
            if start < header.end:
                feed.skip_to(header.end)
            feed.limit = end
            scratch = {"files": {}}
            batches = self._records(rel, describe(header.columns, rel), header.delimiter, feed, feed.pos,
                                    feed.line_no, 0, end, scratch)
            for batch in batches:
                batch.locator["segment"] = start
                batch.next_cursor = {"pos": batch.locator["end"], "line": feed.line_no}
                batch.done = batch.locator["end"] >= end or scratch["files"][rel]["done"]
                yield batch

    # -- normalize --------------------------------------------------------------------------------

    def normalize(self, record: dict) -> dict:
        columns = tuple(k for k in record if not k.startswith("_"))
        fmt = describe(columns, record.get("_file") or "")
        out = dict.fromkeys(CANONICAL_FIELDS)
        for field, column in fmt.fields.items():
            out[field] = record.get(column)
        out.update(identity(record, fmt))
        return out

    def column_of(self, record: dict, field: str) -> str:
        columns = tuple(k for k in record if not k.startswith("_"))
        return describe(columns, record.get("_file") or "").fields.get(field, field)


def _valid_entries(files) -> dict:
    """The well-formed entries of a stored cursor; anything else is read again from the start."""
    out = {}
    for rel, entry in (files or {}).items() if isinstance(files, dict) else ():
        try:
            out[rel] = {"size": int(entry["size"]), "offset": int(entry["offset"]),
                        "prefix_sha256": str(entry["prefix_sha256"]), "rows": int(entry["rows"]),
                        "done": bool(entry["done"])}
        except (KeyError, TypeError, ValueError):
            continue
    return out
