"""Proportional re-ingest: a changed CSV file costs one read plus the work of what changed.

Each chunk read column-wise stores, in the transaction of its quotes, the 8-byte hashes of the records it
stored (table csv_row_hashes, migration 0006): blake2b of the record's bytes, keyed by the chunk's decimal
marks, the rules and overrides, and the file's header (its columns in order and the field each maps to). So
a record whose reading depends on its column's evidence is "the same" only under the same marks, and none
is skipped after a change of what its cells mean (a reordered header, a new alias mapping such as 0007's
volume_usd).
When a file is read again from its start, the run loads the file's hashes once (`known_hashes`) and its
first batch replaces them (`LoadBatch.row_hashes`, reset). In each chunk, a record whose hash is known was
stored exactly as it reads now and is not validated or upserted again, EXCEPT where a neighbour's change
can change its outcome (`rows_to_process`):
- its (asset, observed_at) is shared with a changed record (which one is kept depends on both);
- it follows a changed record of its asset in time (its price_jump flag compares with that record);
- it precedes one of those (read as context, for the comparison only: its own outcome is not written).
With price_jump severity hard (a quarantined row is no one's previous), nothing is skipped, and nothing is
skipped by `flask etl import --force` (every record validated and upserted again, e.g. after an upgrade).
Limits: chunks the row reader reads (irregular lines) and segments of big files store no hashes; a file
read in segments forgets its hashes (segments.plan), so its next change is a full read.
"""
from __future__ import annotations

import hashlib

import numpy as np

EMPTY = np.zeros(0, dtype=np.uint64)
# Part of every record hash, with the file's column mapping (FileFormat) and the rules in force: bump it when
# a product change alters what a stored record holds for the same bytes (a field's meaning, a new column),
# so that the next read of a changed file re-processes every record instead of keeping old readings.
RECORD_FORMAT = "record-format-1"


def known_hashes(conn, rel: str, page: int = 64) -> np.ndarray:
    """The sorted hashes of the records stored from file `rel` (empty if none): 8 bytes per record held
    (80 MB for a 10M-row file), filled in place a page of chunks at a time and sorted in place (duplicates
    kept: known_in does not mind them). Fetching every chunk at once and np.unique held ~8x that."""
    with conn.cursor() as cur:
        cur.execute("SELECT coalesce(sum(length(hashes)), 0) FROM csv_row_hashes WHERE file = %s", (rel,))
        total = int(cur.fetchone()[0]) // 8
        out = np.empty(total, dtype=np.uint64)
        at, after = 0, -1
        while at < total:
            cur.execute("SELECT chunk_start, hashes FROM csv_row_hashes WHERE file = %s AND chunk_start > %s "
                        "ORDER BY chunk_start LIMIT %s", (rel, after, page))
            rows = cur.fetchall()
            if not rows:
                break
            for after, blob in rows:
                part = np.frombuffer(blob, dtype=np.uint64)[: total - at]
                out[at:at + part.size] = part
                at += part.size
            del rows
    if not conn.autocommit:
        conn.commit()
    out = out[:at]
    out.sort()
    return out if at else EMPTY


def known_in(hashes: np.ndarray, known: np.ndarray) -> np.ndarray:
    """Which of `hashes` are in `known` (sorted, unique): a binary search each, no set built per chunk."""
    if not known.size:
        return np.zeros(hashes.size, dtype=bool)
    at = np.minimum(np.searchsorted(known, hashes), known.size - 1)
    return known[at] == hashes


def row_hashes(lines: list[bytes], marks: dict, rules: str = "") -> np.ndarray:
    """One 8-byte hash per record line, keyed by the chunk's decimal marks and `rules` (what else decides a
    record's outcome: plausibility settings, identity overrides, the header and its mapping), so a change of either
    re-reads everything."""
    key = _key((repr(sorted(marks.items())) + rules).encode())
    blake = hashlib.blake2b
    return np.frombuffer(b"".join(blake(line, digest_size=8, key=key).digest() for line in lines), dtype=np.uint64)


_KEYS: dict = {}


def _key(salt: bytes) -> bytes:
    key = _KEYS.get(salt)
    if key is None:
        key = _KEYS[salt] = hashlib.blake2b(salt, digest_size=32).digest()
    return key


def rows_to_process(unchanged: np.ndarray, candidate: np.ndarray, assets: np.ndarray, micros: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray]:
    """(process, write) masks over the chunk's rows. `candidate`: rows with a known asset and time;
    `unchanged`: candidate rows whose hash is known. Rows that are not candidates are always processed."""
    process = ~candidate.copy()
    write = ~candidate.copy()
    idx = np.flatnonzero(candidate)
    if not idx.size:
        return process, write
    order = idx[np.lexsort((idx, micros[idx], assets[idx]))]
    a, t = assets[order], micros[order]
    dirty = ~unchanged[order]
    same_asset = a[1:] == a[:-1]
    new_key = np.r_[True, (a[1:] != a[:-1]) | (t[1:] != t[:-1])]
    group = np.cumsum(new_key) - 1
    group_dirty = np.zeros(int(group[-1]) + 1, dtype=bool)
    np.logical_or.at(group_dirty, group, dirty)
    dirty = dirty | group_dirty[group]
    follows = np.zeros(order.size, dtype=bool)
    follows[1:] = dirty[:-1] & same_asset
    dirty = dirty | follows
    group_dirty[:] = False
    np.logical_or.at(group_dirty, group, dirty)
    dirty = dirty | group_dirty[group]
    context = np.zeros(order.size, dtype=bool)
    context[:-1] = dirty[1:] & same_asset & ~dirty[:-1]
    write[order] = dirty
    process[order] = dirty | context
    return process, write


def pack(hashes: np.ndarray) -> bytes:
    return np.ascontiguousarray(hashes, dtype=np.uint64).tobytes()
