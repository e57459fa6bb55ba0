"""The row path's rules (validate.py, numbers.py, plausibility.py, identity.py) applied column-wise to a CSV
chunk read by crypto_app.sources.csv_columnar: the same decisions, reasons and stored values as
`ingest.transform` on the same chunk, at a fraction of the per-row Python cost.

How each rule stays exactly the row path's:
- numbers: the column's decimal mark is decided by numbers.column_marks from the same texts. A value in
  the one shape whose meaning is settled by the mark alone (digits, or digits "." digits under a "." mark;
  at most 100 digits each side, no sign, no spaces) is stored as its own text: PostgreSQL reads NUMERIC
  text exactly as Decimal does, so nothing passes through a binary float. Missing tokens ("", "-", "N/A"
  after trimming blanks and tabs) are NULL. ANY other cell sends its whole row through the row path's own
  `validate_record` (same messages, same ambiguity reasons), and a valid row joins the others as the
  text of its Decimals;
- dates and identity: each distinct date text and each distinct (id, symbol, name) combination of the chunk
  is read once, with the row path's functions; assets are resolved in the order of their first valid row;
- plausibility: screened column-wise, suspect rows checked exactly by the row path's rules
  (columnar_checks.py).
"""
from __future__ import annotations

from collections import Counter
from datetime import datetime, timedelta, timezone

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..models.quotes import QUOTE_VALUE_COLUMNS
from ..sources.csv_formats import describe, identity
from .identity import IdentityError
from .numbers import VALUE_EVIDENCE, evidence, marks_from_evidence
from .columnar_checks import plausible
from .proportional import RECORD_FORMAT, known_in, pack, row_hashes, rows_to_process
from .validate import (MISSING_TOKENS, NUMBER_FIELDS, RULE_ERRORS, identified, invalid_reason, rule_name,
                       rule_observed, rule_symbol, rule_text, validate_record)

_UNSIGNED = ("price_usd", "open_usd", "high_usd", "low_usd", "market_cap_usd", "volume_24h_usd", "volume_usd",
             "circulating_supply", "total_supply", "max_supply")
_DOT_SIMPLE = r"^[0-9]{1,100}(\.[0-9]{1,100})?$"
_PLAIN_SIMPLE = r"^[0-9]{1,100}$"
_SEP = "\x1f"          # never in a chunk read column-wise (control characters send it to the row reader)


class ColumnRows:
    """The accepted rows of a chunk as columns of text, ready for COPY (load.py)."""

    columnar = True

    def __init__(self, table: pa.Table, micros: np.ndarray, assets: np.ndarray):
        self.table = table                 # asset_id, QUOTE_VALUE_COLUMNS, flags, observed_at (all text)
        self._micros = micros              # observed_at, microseconds since the epoch, row order
        self._assets = assets
        self.hashes: bytes | None = None   # proportional re-ingest: hashes of the chunk's stored records
        self.skipped = 0                   # records unchanged since they were stored: not written again

    def __len__(self) -> int:
        return self.table.num_rows

    def __bool__(self) -> bool:
        return self.table.num_rows > 0

    def newest_observed_at(self):
        return _EPOCH + int(self._micros.max()) * _MICRO if self._micros.size else None

    def oldest_observed_at(self):
        return _EPOCH + int(self._micros.min()) * _MICRO if self._micros.size else None

    def __iter__(self):
        """{"asset_id", "observed_at"} per row (what datasets.detect_interval reads)."""
        for asset_id, micros in zip(self._assets.tolist(), self._micros.tolist()):
            yield {"asset_id": asset_id, "observed_at": _EPOCH + micros * _MICRO}

    def deduplicated(self) -> "ColumnRows":
        """The last row per (asset, observed_at), in row order (load._dedupe for rows)."""
        n = self.table.num_rows
        if n < 2:
            return self
        pairs = np.stack([self._assets[::-1], self._micros[::-1]], axis=1)
        _, first_of_reversed = np.unique(pairs, axis=0, return_index=True)
        if first_of_reversed.size == n:
            return self
        keep = np.sort(n - 1 - first_of_reversed)
        return ColumnRows(self.table.take(pa.array(keep, pa.int64())), self._micros[keep], self._assets[keep])


def transform_block(source, resolver, batch, checks=None, dataset_id=None, known=None):
    """`ingest.transform` for a batch whose records are a column-wise Block.

    `known`: the hashes of the records stored from this file (pipeline/proportional.py), or None to
    neither skip nor hash; with it, the result's `hashes` are what to store for this chunk."""
    block, locator = batch.block, batch.locator
    table, rel = block.table, locator["file"]
    n = table.num_rows
    fmt = describe(tuple(table.column_names), rel)
    rejections, quality = [], Counter()
    for raw, reason in batch.invalid:
        rejections.append((reason, {"_record": [reason]}, raw, locator))
    if any(name.startswith("_") for name in table.column_names):      # normalize() would not see them
        return _by_rows(source, resolver, batch, checks, dataset_id)

    marks = _marks(table, fmt)
    seen = check = None
    if known is not None:                       # proportional re-ingest (pipeline/proportional.py)
        # what else decides a record's stored values: the record format, the rules, the overrides, and the
        # meaning of its cells (the header's columns in their order, and the field each maps to: a changed
        # header or alias maps the same bytes to other fields, and no record is "stored exactly as it reads now")
        rules = (RECORD_FORMAT + repr((checks.severity, checks.settings) if checks is not None else None)
                 + repr(resolver.overrides) + repr(fmt.columns) + repr(sorted(fmt.fields.items())))
        hashes = row_hashes(block.raw_lines(), marks, rules)
        seen = known_in(hashes, known)          # the same bytes, under the same marks, as a stored record
        check = np.flatnonzero(~seen) if seen.any() else None
    ok = np.ones(n, dtype=bool)
    values: dict[str, pa.Array] = {}
    for field in QUOTE_VALUE_COLUMNS:
        column = fmt.fields.get(field)
        if column is None:
            if field == "price_usd":
                ok[:] = False
            continue
        arr = table.column(column).combine_chunks()
        if field in _UNSIGNED:
            pattern = _DOT_SIMPLE if marks.get(field) == "." else _PLAIN_SIMPLE
            if check is None:
                simple = pc.match_substring_regex(arr, pattern).to_numpy(zero_copy_only=False)
            else:       # only hashes of records read column-wise are stored: a seen record's numbers are simple
                simple = np.ones(n, dtype=bool)
                if check.size:
                    simple[check] = pc.match_substring_regex(arr.take(pa.array(check, pa.int64())),
                                                             pattern).to_numpy(zero_copy_only=False)
            missing = pc.is_in(pc.ascii_lower(pc.utf8_trim(arr, " \t")), value_set=pa.array(sorted(MISSING_TOKENS)))
            ok &= simple if field == "price_usd" else simple | missing.to_numpy(zero_copy_only=False)
            values[field] = pc.if_else(missing, pa.scalar(None, pa.string()), arr)
        else:                                            # rank, change: rare columns, the row path decides
            ok[:] = False

    # dates: each distinct text once (moments[code]); fallback rows append their own
    date_column = fmt.fields.get("observed_at")
    moments: list = []
    code = np.zeros(n, dtype=np.int64)
    if date_column is None:
        ok[:] = False
    else:
        encoded = pc.dictionary_encode(table.column(date_column).combine_chunks())
        for text in encoded.dictionary.to_pylist():
            try:
                moments.append(rule_observed(text))
            except RULE_ERRORS:
                moments.append(None)
        code = encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64)
        if moments:
            ok &= np.array([m is not None for m in moments], dtype=bool)[code]

    # identity: each distinct (id, symbol, name) combination once
    id_columns = [fmt.fields[f] for f in ("external_id", "symbol", "name") if f in fmt.fields]
    if id_columns:
        joined = pc.binary_join_element_wise(*[table.column(c).combine_chunks() for c in id_columns], _SEP)
        encoded_ids = pc.dictionary_encode(joined)
        combos = [dict(zip(id_columns, key.split(_SEP))) for key in encoded_ids.dictionary.to_pylist()]
        combo_of = encoded_ids.indices.to_numpy(zero_copy_only=False).astype(np.int64)
    else:
        combos, combo_of = [{}], np.zeros(n, dtype=np.int64)
    idents = []
    for record in combos:
        ident = identity(record, fmt)
        try:
            clean = {"external_id": rule_text(ident["external_id"]), "symbol": rule_symbol(ident["symbol"]),
                     "name": rule_name(ident["name"]), "slug_hint": rule_text(ident["slug_hint"])}
        except RULE_ERRORS:
            clean = None
        idents.append(clean if clean is not None and identified(clean) else None)
    ok &= np.array([c is not None for c in idents], dtype=bool)[combo_of]

    # rows the vectorised rules do not settle: the row path, record by record
    fallback = {}                                   # row -> clean record (valid rows only)
    for i in np.flatnonzero(~ok).tolist():
        record = block.record(i, rel)
        clean, errors = validate_record(source.normalize(record), marks)
        if errors:
            rejections.append((invalid_reason(source, record, errors, quality), errors, record, locator))
        else:
            fallback[i] = clean
            moments.append(clean["observed_at"])
            code[i] = len(moments) - 1

    # resolve identities in the order of each one's first valid row (the row path's order)
    valid_rows = np.flatnonzero(ok)
    found, at = np.unique(combo_of[valid_rows], return_index=True)
    requests = sorted([(int(valid_rows[a]), "combo", int(c)) for c, a in zip(found.tolist(), at.tolist())]
                      + [(i, "row", i) for i in fallback])
    combo_asset = np.full(len(combos), -1, dtype=np.int64)
    asset_of = np.full(n, -1, dtype=np.int64)
    errors_of: dict[int, str] = {}
    for i, kind, key in requests:
        try:
            asset = resolver.resolve(idents[key] if kind == "combo" else fallback[key])
        except IdentityError as exc:
            asset = -1
            errors_of[key if kind == "combo" else -1 - key] = str(exc)
        if kind == "combo":
            combo_asset[key] = asset
        else:
            asset_of[key] = asset
    vector_rows = ok.copy()
    asset_of[vector_rows] = combo_asset[combo_of[vector_rows]]
    for i in fallback:
        vector_rows[i] = True
    for i in np.flatnonzero(vector_rows & (asset_of < 0)).tolist():
        message = errors_of.get(-1 - i) if i in fallback else errors_of.get(int(combo_of[i]))
        rejections.append((message, {"symbol": [message]}, block.record(i, rel), locator))
    candidate = vector_rows & (asset_of >= 0)
    micros_of = np.array([_micros(m) if m is not None else 0 for m in moments], dtype=np.int64)
    write = process = None
    if known is not None:
        unchanged = candidate & ok & seen
        process, write = rows_to_process(unchanged, candidate, asset_of, micros_of[code])
        candidate &= process
    rows_idx = np.flatnonzero(candidate)

    take = pa.array(rows_idx, pa.int64())
    columns = {}
    for field in QUOTE_VALUE_COLUMNS:
        arr = values[field].take(take) if field in values else pa.nulls(rows_idx.size, pa.string())
        if fallback:
            patched = arr.to_pylist()
            for k, i in enumerate(rows_idx.tolist()):
                if i in fallback:
                    v = fallback[i].get(field)
                    patched[k] = None if v is None else str(v)
            arr = pa.array(patched, pa.string())
        columns[field] = arr
    assets = asset_of[rows_idx]
    obs = code[rows_idx]
    micros = micros_of[obs] if rows_idx.size else np.zeros(0, dtype=np.int64)
    at_row = _Moments(moments, obs)

    flags: dict[int, list] = {}
    keep = np.ones(rows_idx.size, dtype=bool)
    if checks is not None and rows_idx.size:
        keep = plausible(checks, columns, assets, at_row, micros, flags, rows_idx, block, rel, locator,
                          rejections, quality, dataset_id)
    if write is not None:                       # context rows: read for price_jump only, not written
        keep &= write[rows_idx]
    kept = np.flatnonzero(keep)
    flag_text = [None] * kept.size
    if flags:
        position = {int(k): j for j, k in enumerate(kept.tolist())}
        for k, names in flags.items():
            if k in position and names:
                names = sorted(set(names))
                flag_text[position[k]] = "{" + ",".join(names) + "}"
                quality.update(f"soft:{rule}" for rule in names)
    kept_take = pa.array(kept, pa.int64())
    out = {"asset_id": pc.cast(pa.array(assets[kept], pa.int64()), pa.string())}
    for field in QUOTE_VALUE_COLUMNS:
        out[field] = columns[field].take(kept_take)
    out["flags"] = pa.array(flag_text, pa.string())
    iso = pa.array([m.isoformat() if m is not None else None for m in moments], pa.string())
    out["observed_at"] = iso.take(pa.array(obs[kept], pa.int64()))
    result = ColumnRows(pa.table(out), micros[kept], assets[kept])
    if known is not None:                       # the hashes of every record of the chunk now stored
        stored = np.zeros(n, dtype=bool)
        stored[rows_idx[kept]] = True
        stored &= ok                            # rows the row path validated are never skipped
        stored |= unchanged & ~write
        result.hashes = pack(hashes[stored])
        result.skipped = int((unchanged & ~write).sum())
    return result, rejections, quality


_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_MICRO = timedelta(microseconds=1)


def _micros(moment: datetime) -> int:
    return (moment - _EPOCH) // _MICRO


class _Moments:
    """observed_at of candidate row k: moments[codes[k]]."""

    def __init__(self, moments, codes):
        self.moments, self.codes = moments, codes

    def __getitem__(self, k):
        return self.moments[self.codes[k]]


def _ascii_evidence(arr: pa.Array) -> dict:
    """numbers.evidence of an ASCII column, cheaply: each pattern needs a character ("," for the comma
    kinds, "." for dot_dec, two "." for multi_dot) that a plain substring count rules out first, and
    "any value matches" is tried on the first values before the whole column."""
    def any_match(pattern: str) -> bool:
        if len(arr) > 2048 and pc.any(pc.match_substring_regex(arr.slice(0, 2048), pattern)).as_py():
            return True
        return bool(pc.any(pc.match_substring_regex(arr, pattern)).as_py())

    commas = bool(pc.any(pc.match_substring(arr, ",")).as_py())
    dots = pc.max(pc.count_substring(arr, ".")).as_py() or 0
    return {"dot_dec": dots >= 1 and any_match(VALUE_EVIDENCE["dot_dec"]),
            "comma_dec": commas and any_match(VALUE_EVIDENCE["comma_dec"]),
            "multi_dot": dots >= 2 and any_match(VALUE_EVIDENCE["multi_dot"]),
            "multi_comma": commas and any_match(VALUE_EVIDENCE["multi_comma"])}


def _marks(table: pa.Table, fmt) -> dict:
    """numbers.column_marks of the chunk's number columns, matched column-wise where the column is ASCII."""
    found = {}
    for field, column in fmt.fields.items():
        if field not in NUMBER_FIELDS:
            continue
        arr = table.column(column).combine_chunks()
        if pc.all(pc.string_is_ascii(arr)).as_py() is not False:
            found[field] = _ascii_evidence(arr)
        else:
            found[field] = evidence(arr.to_pylist())
    return marks_from_evidence(found)


def _by_rows(source, resolver, batch, checks, dataset_id):
    from .ingest import transform
    batch.records, batch.block = batch.block.records(batch.locator["file"]), None
    return transform(source, resolver, batch, checks, dataset_id)


__all__ = ["ColumnRows", "transform_block"]
