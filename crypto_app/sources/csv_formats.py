"""Reading and understanding one CSV file: bounded line reading with byte offsets, encodings, the
header (delimiter, banner lines, column aliases) and identity derived from the file name.

The column mapping is a pure function of (header cells, file name), so `CsvSource.normalize` can
rebuild a file's format from a stored record alone (its keys are the header, `_file` its path).
"""
from __future__ import annotations

import codecs
import csv
import hashlib
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import PurePosixPath
from typing import Iterator

DELIMITERS = (",", ";", "\t", "|")
HEADER_SEARCH_LINES = 20            # banner lines allowed before the header

# Canonical field -> header aliases, best first. Compared after `_key` (lowercase, "_"/"-" as spaces).
ALIASES: dict[str, tuple[str, ...]] = {
    "price_usd": ("price_usd", "price (usd)", "close (usd)", "close_usd", "close", "price", "current_price",
                  "last price", "last"),
    "open_usd": ("open_usd", "open (usd)", "open"),
    "high_usd": ("high_usd", "high (usd)", "high"),
    "low_usd": ("low_usd", "low (usd)", "low"),
    # Two different volumes, never mixed up:
    # - volume_usd: traded WITHIN the row's own interval (a candle's volume; the interval is the dataset's
    #   native_interval): what candle files carry, e.g. CryptoDataDownload's "Volume USDT" (the hour's volume
    #   in Binance_BTCUSDT_1h.csv; USD-quoted first, "Volume BTC" is the base currency's) or Kaggle's
    #   "Volume" (the day's volume in coin_Bitcoin.csv);
    # - volume_24h_usd: a rolling 24-hour volume, only for columns that say so (API exports).
    "volume_usd": ("volume_usd", "volume (usd)", "volume usd", "volume usdt", "volume usdc", "volume busd",
                   "volume to", "volume"),
    "volume_24h_usd": ("volume_24h_usd", "volume_24h", "24h volume", "total_volume"),
    "market_cap_usd": ("market_cap_usd", "market cap (usd)", "market_cap", "marketcap"),
    # A full datetime or unix time beats a bare date (CDD has both "Unix" in ms and "Date").
    "observed_at": ("observed_at", "timestamp", "unix", "unix timestamp", "datetime", "date time",
                    "last_updated", "time", "date"),
    "symbol": ("symbol", "ticker"),
    "name": ("name", "coin", "asset", "coin_name"),
    "external_id": ("external_id", "id", "coin_id"),
    "market_cap_rank": ("market_cap_rank", "rank", "cmc_rank"),
    "circulating_supply": ("circulating_supply",),
    "total_supply": ("total_supply",),
    "max_supply": ("max_supply",),
    "change_24h_pct": ("change_24h_pct", "price_change_percentage_24h", "percent_change_24h",
                       "change 24h %", "24h %"),
}
HEADER_MARKERS = ("price_usd", "observed_at")   # a header names at least one of these

USD_QUOTES = ("USDT", "USDC", "BUSD", "TUSD", "USD")
# Known quote currencies of trading-pair files, longest match first when splitting "BTCUSDT".
QUOTES = USD_QUOTES + ("FDUSD", "EUR", "GBP", "JPY", "KRW", "AUD", "CAD", "TRY", "BRL", "BTC", "ETH", "BNB")

# Identity from the file name, for files without symbol/name columns (first match wins):
#   bitcoin_cash_price.csv        Kaggle CoinMarketCap 2018  -> name "Bitcoin Cash"
#   coin_Tether.csv               Kaggle 2021 (has Name/Symbol columns too) -> name "Tether"
#   Binance_BTCUSDT_d.csv         CryptoDataDownload <Exchange>_<PAIR>_<timeframe> -> symbol "BTC", quote "USDT"
_CMC_NAME = re.compile(r"^(?P<name>[A-Za-z0-9_]+?)_price$", re.I)
_KAGGLE_COIN = re.compile(r"^coin_(?P<name>[A-Za-z0-9_]+)$", re.I)
_CDD_PAIR = re.compile(r"^[A-Za-z][A-Za-z0-9]*_(?P<pair>[A-Za-z0-9]+(?:[-/][A-Za-z0-9]+)?)_"
                       r"(?:d|h|m|minute|daily|hourly|\d+[smhdw]?)$", re.I)
_VOLUME_CCY = re.compile(r"^volume ([a-z][a-z0-9]{1,9})$")


def _key(cell: str) -> str:
    return " ".join(cell.replace("\ufeff", "").replace("_", " ").replace("-", " ").lower().split())


_ALIAS_KEYS = {field: tuple(_key(a) for a in aliases) for field, aliases in ALIASES.items()}
_ALL_ALIAS_KEYS = {k for keys in _ALIAS_KEYS.values() for k in keys}
_MARKER_KEYS = {k for field in HEADER_MARKERS for k in _ALIAS_KEYS[field]}


def slugify(text: str | None) -> str | None:
    """"Bitcoin Cash" -> "bitcoin-cash"; None for no name."""
    if not text:
        return None
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or None


def split_pair(pair: str) -> tuple[str, str | None]:
    """"BTCUSDT" -> ("BTC", "USDT"), "ETH/BTC" -> ("ETH", "BTC"), "USDT" -> ("USDT", None)."""
    text = pair.strip().upper()
    for sep in ("/", "-"):
        if sep in text:
            base, _, quote = text.partition(sep)
            return base, quote or None
    for quote in sorted(QUOTES, key=len, reverse=True):
        if text.endswith(quote) and len(text) > len(quote):
            return text[: -len(quote)], quote
    return text, None


def identity_from_filename(path: str) -> dict:
    """Identity hints from a file name: {"name", "symbol", "quote"} (values may be None)."""
    stem = PurePosixPath(path).stem
    if m := _CMC_NAME.match(stem):
        return {"name": m["name"].replace("_", " ").strip().title(), "symbol": None, "quote": None}
    if m := _KAGGLE_COIN.match(stem):
        return {"name": m["name"].replace("_", " ").strip(), "symbol": None, "quote": None}
    if m := _CDD_PAIR.match(stem):
        base, quote = split_pair(m["pair"])
        if quote:
            return {"name": None, "symbol": base, "quote": quote}
    return {"name": None, "symbol": None, "quote": None}


def split_row(line: str, delimiter: str) -> list[str]:
    return next(csv.reader([line], delimiter=delimiter), [])


def header_score(line: str) -> tuple[int, str, list[str]]:
    """(number of known columns, delimiter, cells) for the best delimiter; 0 if no date/price column."""
    best = (0, ",", [])
    for delimiter in DELIMITERS:
        if delimiter not in line and delimiter != ",":
            continue
        try:
            cells = split_row(line, delimiter)
        except csv.Error:
            continue
        keys = [_key(c) for c in cells]
        if not _MARKER_KEYS.intersection(keys):
            continue
        score = len(_ALL_ALIAS_KEYS.intersection(keys))
        if score > best[0]:
            best = (score, delimiter, cells)
    return best


def header_columns(cells: list[str]) -> tuple[str, ...]:
    """Record keys: header cells stripped; blanks named column_<n>, repeats suffixed .2, .3..."""
    seen: dict[str, int] = {}
    out = []
    for i, cell in enumerate(cells):
        name = cell.replace("\ufeff", "").strip() or f"column_{i + 1}"
        count = seen.get(name, 0) + 1
        seen[name] = count
        out.append(name if count == 1 else f"{name}.{count}")
    return tuple(out)


@dataclass(frozen=True)
class FileFormat:
    """The meaning of one file's columns."""

    columns: tuple[str, ...]
    fields: dict                    # canonical field -> column name
    file_symbol: str | None         # identity derived from the file name / header
    file_name: str | None
    quote: str | None               # quote currency of a trading-pair file, if known

    @property
    def not_usd_reason(self) -> str | None:
        if self.quote and self.quote not in USD_QUOTES:
            return f"prices in this file are quoted in {self.quote}, not USD"
        return None


@lru_cache(maxsize=512)
def describe(columns: tuple[str, ...], path: str) -> FileFormat:
    """The FileFormat of a file with these header columns at this (relative) path."""
    keys = {}
    for column in columns:
        keys.setdefault(_key(column), column)
    fields = {}
    for field, aliases in _ALIAS_KEYS.items():
        for alias in aliases:
            if alias in keys:
                fields[field] = keys[alias]
                break
    hints = identity_from_filename(path)
    quote = hints["quote"]
    symbol = hints["symbol"]
    # CDD headers name the pair: "Volume BTC" (base), "Volume USDT" (quote); trust them over the name.
    currencies = [m[1].upper() for k in keys if (m := _VOLUME_CCY.match(k)) and m[1] not in ("from", "to")]
    if len(currencies) == 2:
        symbol, quote = currencies
    return FileFormat(columns=columns, fields=fields, file_symbol=symbol, file_name=hints["name"], quote=quote)


def no_coin_reason(rel: str, fmt: FileFormat) -> str | None:
    """Why a file cannot be loaded at all when it names no coin anywhere (no id, symbol or name column and
    nothing in its file name); None when it does."""
    if fmt.file_symbol or fmt.file_name or any(f in fmt.fields for f in ("external_id", "symbol", "name")):
        return None
    return (f"{rel}: the file names no coin: no symbol, name or id column (columns: {', '.join(fmt.columns)}) "
            f"and no coin in the file name; add a Symbol or Name column or name the file like bitcoin_price.csv")


def identity(record: dict, fmt: FileFormat) -> dict:
    """external_id, symbol, name, slug_hint of one record."""
    def cell(field):
        column = fmt.fields.get(field)
        value = record.get(column) if column else None
        return value.strip() or None if isinstance(value, str) else value

    external_id = cell("external_id")
    symbol = cell("symbol")
    if isinstance(symbol, str) and (fmt.quote or "/" in symbol):
        base, quote = split_pair(symbol)
        if quote and (fmt.quote is None or quote == fmt.quote.upper()):
            symbol = base
    symbol = symbol or fmt.file_symbol
    name = cell("name") or fmt.file_name
    return {"external_id": external_id, "symbol": symbol, "name": name,
            "slug_hint": external_id or slugify(name)}


# -- reading lines ------------------------------------------------------------------------------------

MAX_LINE_BYTES = 1 << 20            # longer lines are quarantined, never held in memory
SKIP_PIECE_BYTES = 1 << 16          # how an overlong line is skipped
RAW_CHARS = 500                     # how much of an unparseable row is kept for the quarantine
HASH_BLOCK = 1 << 20
_BINARY = re.compile(rb"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_ENCODINGS = ("utf-8", "cp1252", "latin-1")   # tried in this order, per line


def decode_line(data: bytes) -> tuple[str, str]:
    for encoding in _ENCODINGS[:-1]:
        try:
            return data.decode(encoding), encoding
        except UnicodeDecodeError:
            continue
    return data.decode("latin-1"), "latin-1"


def max_cells(header_width: int) -> int:
    """More cells than this on a row is not a tolerable extra column but a broken row."""
    return 2 * header_width + 16


@dataclass(frozen=True)
class Header:
    columns: tuple[str, ...]
    delimiter: str
    end: int                        # byte offset just after the header line


def read_header(fh) -> Header | None:
    """Find the header (the first line naming a date or price column) within the first lines."""
    fh.seek(0)
    pos = 0
    for index in range(HEADER_SEARCH_LINES):
        data = fh.readline(MAX_LINE_BYTES + 1)
        if not data:
            return None
        pos += len(data)
        if len(data) > MAX_LINE_BYTES and not data.endswith(b"\n"):
            pos += _skip_rest_of_line(fh, [])
            continue
        if index == 0 and data.startswith(codecs.BOM_UTF8):
            data = data[len(codecs.BOM_UTF8):]
        score, delimiter, cells = header_score(decode_line(data)[0])
        if score:
            return Header(header_columns(cells), delimiter, pos)
    return None


def _skip_rest_of_line(fh, hashes) -> int:
    skipped = 0
    while True:
        piece = fh.readline(SKIP_PIECE_BYTES)
        if not piece:
            return skipped
        for h in hashes:
            h.update(piece)
        skipped += len(piece)
        if piece.endswith(b"\n"):
            return skipped


class LineFeed:
    """Decoded lines for csv.reader, tracking the byte offset, hashes and the lines it had to drop."""

    def __init__(self, fh, pos: int, line_no: int, file_hash):
        self.fh, self.pos, self.line_no, self.file_hash = fh, pos, line_no, file_hash
        self.chunk_hash = hashlib.sha256()
        self.encodings: set[str] = set()
        self.bad: list[tuple[dict, str]] = []
        self.record_line: int | None = None   # first line of the record being read
        self.record_head = ""
        self.limit: int | None = None          # stop at the first record boundary at or past this offset

    def new_chunk(self) -> None:
        self.chunk_hash = hashlib.sha256()
        self.encodings = set()

    def end_record(self) -> None:
        self.record_line, self.record_head = None, ""

    def _read(self) -> bytes:
        data = self.fh.readline(MAX_LINE_BYTES + 1)
        self.file_hash.update(data)
        self.chunk_hash.update(data)
        return data

    def skip_to(self, offset: int) -> None:
        """Consume (hash, count) the banner and header lines up to `offset`."""
        while self.pos < offset:
            data = self._read()
            if not data:
                return
            self.pos += len(data)
            if len(data) > MAX_LINE_BYTES and not data.endswith(b"\n"):
                self.pos += _skip_rest_of_line(self.fh, (self.file_hash, self.chunk_hash))
            self.line_no += 1

    def lines(self) -> Iterator[str]:
        while True:
            if self.limit is not None and self.pos >= self.limit and self.record_line is None:
                return
            data = self._read()
            if not data:
                return
            line_no = self.line_no
            self.line_no += 1
            self.pos += len(data)
            if len(data) > MAX_LINE_BYTES and not data.endswith(b"\n"):
                size = len(data) + _skip_rest_of_line(self.fh, (self.file_hash, self.chunk_hash))
                self.pos += size - len(data)
                self._drop(line_no, data[:RAW_CHARS * 4], f"line longer than {MAX_LINE_BYTES} bytes ({size} bytes)")
                continue
            if _BINARY.search(data):
                self._drop(line_no, data, "binary data: NUL or control characters in the line")
                continue
            text, encoding = decode_line(data)
            if encoding != "utf-8":
                self.encodings.add(encoding)
            if self.record_line is None:
                self.record_line, self.record_head = line_no, text[:RAW_CHARS]
            yield text

    def _drop(self, line_no: int, data: bytes, reason: str) -> None:
        raw = decode_line(data)[0].replace("\x00", "\\x00")[:RAW_CHARS]
        self.bad.append(({"_line": line_no, "raw": raw}, reason))
