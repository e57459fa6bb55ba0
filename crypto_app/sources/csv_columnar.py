"""Column-wise parsing of one block of CSV bytes (pyarrow), for the blocks where it means exactly what
the row reader (csv.reader over decoded lines, crypto_app.sources.csv_files) would read.

A block qualifies when every line is one record the row reader would take as is: quotes only around
whole fields with no quote or line break inside ("Feb 20, 2018"),
valid UTF-8 (the row reader's first choice), no NUL/control bytes, no line over MAX_LINE_BYTES, "\\r" only
as part of "\\r\\n", and every non-empty line exactly as many cells as the header. Anything else returns
None and the caller reads that chunk row by row, so irregular input keeps the row reader's outcomes
(cp1252 lines, quoted fields, ragged rows, binary garbage, overlong lines).

pyarrow rather than polars: both parse 300k rows as strings in well under a second here, but pyarrow
reads a byte buffer we have already cut on a record boundary (polars 2 has no batched reader of a
buffer, only scan_csv of a path), and pyarrow.compute has the string kernels the validation needs.
"""
from __future__ import annotations

import os
import re
from functools import lru_cache

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from .csv_formats import MAX_LINE_BYTES

if "ARROW_DEFAULT_MEMORY_POOL" not in os.environ:
    # malloc gives freed chunk memory back; mimalloc (pyarrow's default) kept ~20 MB more per importing process
    pa.set_memory_pool(pa.system_memory_pool())

_BINARY = re.compile(rb"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_NEWLINE = 10


@lru_cache(maxsize=8)
def _quoted_fields(delimiter: str) -> re.Pattern:
    """A whole field in quotes, with no quote or line break inside: csv.reader and pyarrow read it alike."""
    d = re.escape(delimiter.encode())
    return re.compile(rb'(?m)(?:^|(?<=' + d + rb'))"[^"\r\n]*"(?=' + d + rb'|\r?$)')


class Block:
    """The records of a qualifying block: `table` (raw strings, one column per header column), `lines`
    (1-based line number of each record) and `ends` (byte offset, within the block, just after each
    record's line)."""

    __slots__ = ("table", "lines", "ends", "starts", "data")

    def __init__(self, table: pa.Table, lines: np.ndarray, ends: np.ndarray, starts: np.ndarray, data: bytes):
        self.table, self.lines, self.ends, self.starts, self.data = table, lines, ends, starts, data

    def raw_lines(self) -> list[bytes]:
        """The bytes of each record's line (what proportional re-ingest hashes)."""
        data = self.data
        return [data[s:e] for s, e in zip(self.starts.tolist(), self.ends.tolist())]

    @property
    def num_rows(self) -> int:
        return self.table.num_rows

    def record(self, index: int, rel: str) -> dict:
        """Row `index` as the row reader's record: {header column: text, "_line", "_file"}."""
        table = self.table
        record = {name: table.column(name)[index].as_py() for name in table.column_names}
        record["_line"], record["_file"] = int(self.lines[index]), rel
        return record

    def records(self, rel: str) -> list[dict]:
        names = self.table.column_names
        columns = [self.table.column(name).to_pylist() for name in names]
        return [{**dict(zip(names, cells)), "_line": int(line), "_file": rel}
                for cells, line in zip(zip(*columns), self.lines.tolist())]

    def head(self, count: int) -> "Block":
        return Block(self.table.slice(0, count), self.lines[:count], self.ends[:count], self.starts[:count], self.data)


def parse_block(data: bytes, columns: tuple[str, ...], delimiter: str, first_line: int) -> Block | None:
    """The records of `data` (whole lines), or None if the block does not qualify (see the module doc)."""
    if not data or _BINARY.search(data) is not None:
        return None
    quoted = b'"' in data
    if quoted and b'"' in _quoted_fields(delimiter).sub(b"", data):
        return None                      # a quote that is not a whole field: the row reader's rules
    if b"\r" in data and data.count(b"\r") != data.count(b"\r\n"):
        return None
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    raw = np.frombuffer(data, dtype=np.uint8)
    newlines = np.flatnonzero(raw == _NEWLINE)
    ends = newlines + 1
    if data[-1] != _NEWLINE:
        ends = np.append(ends, len(data))
    starts = np.concatenate(([0], ends[:-1]))
    lengths = ends - starts
    if lengths.size and int(lengths.max()) > MAX_LINE_BYTES:
        return None
    content = lengths - (raw[ends - 1] == _NEWLINE) - ((ends - 2 >= starts) & (raw[np.maximum(ends - 2, 0)] == 13)
                                                     & (raw[ends - 1] == _NEWLINE))
    nonempty = content > 0
    try:
        table = pacsv.read_csv(
            pa.py_buffer(data),
            read_options=pacsv.ReadOptions(column_names=list(columns), use_threads=False,
                                           block_size=max(len(data) + 1, 1 << 20)),
            parse_options=pacsv.ParseOptions(delimiter=delimiter, quote_char='"' if quoted else False,
                                             double_quote=False, escape_char=False,
                                             newlines_in_values=False, ignore_empty_lines=True),
            convert_options=pacsv.ConvertOptions(column_types={c: pa.string() for c in columns},
                                                 strings_can_be_null=False, quoted_strings_can_be_null=False,
                                                 null_values=[], check_utf8=True))
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return None                      # a row with another number of cells: the row reader decides
    lines = np.flatnonzero(nonempty) + first_line
    if table.num_rows != lines.size:
        return None
    record_ends, record_starts = ends[nonempty], starts[nonempty]
    blank = None                         # the row reader skips rows whose cells are all blank
    for name in table.column_names:
        empty = pc.equal(pc.utf8_trim_whitespace(table[name]), "")
        blank = empty if blank is None else pc.and_(blank, empty)
    if blank is not None and pc.any(blank).as_py():
        keep = pc.invert(blank)
        mask = keep.to_numpy(zero_copy_only=False)
        return Block(table.filter(keep), lines[mask], record_ends[mask], record_starts[mask], data)
    return Block(table, lines, record_ends, record_starts, data)
