"""GET /api/v1/data: the latest normalized quote per asset and source, filtered and paged.

One row per asset and dataset (two CSV files of the same coin are two rows; `source` is `csv` for
both, `dataset` names each). Order is stable: market cap descending (unknown market caps last), then
asset id, then dataset id; that is the index `ix_latest_quotes_sort`, which keyset cursors walk.

Reads are served through the response cache (readcache.py). Uncached, a page is one SQL statement
(plain SQL per shape of request, nothing built per request) that also reads the maintained count when
there is one; a bounded count follows only for other filters when the page does not tell the total
(`page_total`). PostgreSQL writes the rows as the JSON text QuoteRowSchema would dump (`_row_json_sql`;
tests compare both); the legacy rows are dumped by a FastDumper (fastdump.py).
"""
from __future__ import annotations

from decimal import Decimal, InvalidOperation

import marshmallow as ma
from flask_smorest import Blueprint
from marshmallow import fields, validate

from ..config import SOURCES
from ..extensions import db
from ..models.quotes import QUOTE_VALUE_COLUMNS
from . import readcache
from .errors import ApiError
from .fastdump import FastDumper
from . import pagination
from .pagination import CursorField, bounded_count_sql, encode_cursor, list_metadata, window
from .schemas import ErrorSchema, ListMetadataSchema, PageArgsSchema, QuoteRowSchema, UtcDateTime

blp = Blueprint("data", __name__, url_prefix="/api/v1", description="Latest normalized quotes")

MAX_LIST_ITEMS = 50


class DataArgsSchema(PageArgsSchema):
    symbol = fields.String(validate=validate.Length(min=1, max=200), metadata={
        "description": "Ticker symbol, case-insensitive; several comma-separated (BTC,ETH)"})
    source = fields.String(validate=validate.Length(min=1, max=200), metadata={
        "description": f"Source, or several comma-separated; one of {', '.join(SOURCES)} (csv: every CSV dataset)"})
    dataset = fields.String(validate=validate.Length(min=1, max=2000), metadata={
        "description": "Dataset name (see /api/v1/datasets), or several comma-separated, e.g. "
                       "coingecko:markets,csv:Binance_BTCUSDT_d.csv"})
    asset = fields.String(validate=validate.Length(min=1, max=200), metadata={
        "description": "Asset id or slug"})
    since = UtcDateTime(metadata={
        "description": "Only quotes observed at or after this time (ISO 8601; UTC when no offset is given)"})
    until = UtcDateTime(metadata={
        "description": "Only quotes observed at or before this time (ISO 8601; UTC when no offset is given)"})
    cursor = CursorField(metadata={
        "description": "Opaque keyset cursor from a previous page's metadata.next_cursor; alone, "
                       "without page or offset. Stays fast at any depth."})

    @ma.validates_schema
    def _filters(self, data, **kwargs):
        if "source" in data:
            unknown = [s for s in split_list(data["source"]) if s not in SOURCES]
            if unknown:
                raise ma.ValidationError(f"unknown source {', '.join(unknown)}; known: {', '.join(SOURCES)}",
                                         "source")
        for name in ("symbol", "source", "dataset"):
            if name in data and len(split_list(data[name])) > MAX_LIST_ITEMS:
                raise ma.ValidationError(f"at most {MAX_LIST_ITEMS} values", name)
        if data.get("since") and data.get("until") and data["since"] > data["until"]:
            raise ma.ValidationError("since must not be after until", "since")


QUOTE_ROWS = FastDumper(QuoteRowSchema())


class DataPageSchema(ma.Schema):
    data = fields.List(fields.Nested(QuoteRowSchema), required=True)
    metadata = fields.Nested(ListMetadataSchema, required=True)


def split_list(value: str) -> list[str]:
    return [part.strip() for part in value.split(",") if part.strip()]


# --- SQL ------------------------------------------------------------------------------------------
# Plain SQL, written once per shape of request: no statement building or compiling per request.
# The ORDER BY must stay the very expression of ix_latest_quotes_sort.
SORT_EXPR = "COALESCE(lq.market_cap_usd, '-1'::numeric)"
ORDER_BY = f"{SORT_EXPR} DESC, lq.asset_id, lq.dataset_id"
FROM_JOINED = "latest_quotes lq JOIN assets a ON a.id = lq.asset_id JOIN datasets ds ON ds.id = lq.dataset_id"
_SCHEMA_COLUMNS = {"asset_id": "lq.asset_id", "slug": "a.slug", "symbol": "a.symbol", "name": "a.name",
                   "source": "lq.source", "dataset": "ds.name", **{c: f"lq.{c}" for c in QUOTE_VALUE_COLUMNS},
                   "flags": "coalesce(lq.flags, '{}'::text[])",
                   "observed_at": "lq.observed_at", "fetched_at": "lq.fetched_at", "run_id": "lq.run_id"}
COLUMNS = ", ".join(f"{expr} AS {name}" for name, expr in _SCHEMA_COLUMNS.items())


def _row_json_sql(schema: ma.Schema) -> str | None:
    """The columns of a LATERAL subquery `j` whose row_to_json(j) is, as text, what `schema` dumps for a
    row, written as Flask writes it: keys in sorted order, no spaces; money as the numeric's text
    (PostgreSQL writes numerics in plain notation, which is what format(Decimal, "f") gives); uuids as
    to_json writes them; times as isoformat() writes them. None when a field is of a kind this cannot
    express: the rows are then dumped in Python."""
    items = []
    for name, field in sorted(schema.dump_fields.items(), key=lambda item: item[1].data_key or item[0]):
        key = field.data_key or name
        column = _SCHEMA_COLUMNS.get(field.attribute or name)
        if column is None or not key.isidentifier():
            return None
        if type(field) is fields.Decimal and field.as_string and field.places is None:
            items.append(f"{column}::text AS {key}")
        elif type(field) in (fields.Integer, fields.String, fields.UUID) \
                and not getattr(field, "as_string", False):
            items.append(f"{column} AS {key}")
        elif type(field) in (fields.DateTime, fields.AwareDateTime) and field.format in (None, "iso", "iso8601"):
            items.append(f"{_isoformat(column)} AS {key}")
        elif type(field) is fields.List and type(field.inner) is fields.String:
            items.append(f"to_json({column}) AS {key}")
        else:
            return None
    return ", ".join(items)


def _isoformat(column: str) -> str:
    """datetime.isoformat() of a timestamptz as psycopg2 returns it (in the session's time zone): six
    digits of microseconds unless there are none, then the offset as +HH:MM (historical offsets with
    seconds, from before time zones were standardized, would lose their seconds)."""
    return f"replace(to_char({column}, 'YYYY-MM-DD\"T\"HH24:MI:SS.USTZH:TZM'), '.000000', '')"


QUOTE_ROW_JSON = _row_json_sql(QuoteRowSchema())  # None: QuoteRowSchema's rows are dumped in Python


def _filters(args: dict, params: dict) -> list[str]:
    """WHERE conditions for the filters of `args` (symbol and slug need `a`, the assets table)."""
    where = []
    if args.get("symbol"):
        params["symbols"] = [s.lower() for s in split_list(args["symbol"])]
        where.append("lower(a.symbol) = ANY(%(symbols)s)")
    if args.get("source"):
        params["sources"] = split_list(args["source"])
        where.append("lq.source = ANY(%(sources)s)")
    if args.get("dataset"):
        params["datasets"] = split_list(args["dataset"])
        where.append("lq.dataset_id IN (SELECT id FROM datasets WHERE name = ANY(%(datasets)s))")
    if args.get("asset"):
        ref = args["asset"].strip()
        if _is_id(ref):
            params["asset_id"] = int(ref)
            where.append("lq.asset_id = %(asset_id)s")
        else:
            params["slug"] = ref
            where.append("a.slug = %(slug)s")
    if args.get("since"):
        params["since"] = args["since"]
        where.append("lq.observed_at >= %(since)s")
    if args.get("until"):
        params["until"] = args["until"]
        where.append("lq.observed_at <= %(until)s")
    return where


def _is_id(ref: str) -> bool:
    return ref.isascii() and ref.isdigit() and len(ref) < 19  # longer digit strings cannot be a bigint id


def needs_assets(args: dict) -> bool:
    """Whether the filters look at the assets table (symbol, or an asset given by slug)."""
    ref = (args.get("asset") or "").strip()
    return bool(args.get("symbol")) or bool(ref and not _is_id(ref))


def is_filtered(args: dict) -> bool:
    return any(args.get(k) for k in ("symbol", "source", "dataset", "asset", "since", "until"))


def _and(conditions: list[str]) -> str:
    return " AND ".join(conditions) if conditions else "true"


def _decode_cursor(key: list) -> dict:
    try:
        if len(key) != 3 or not isinstance(key[1], int) or not isinstance(key[2], int) \
                or isinstance(key[1], bool) or isinstance(key[2], bool):
            raise ValueError("not the shape of a cursor this API issued")
        sort_value, asset_id, dataset_id = Decimal(str(key[0])), int(key[1]), int(key[2])
        if not sort_value.is_finite() or abs(sort_value.adjusted()) > 1000 or abs(asset_id) >= 2**63 \
                or abs(dataset_id) >= 2**31:
            raise ValueError("out of range")
    except (IndexError, TypeError, ValueError, InvalidOperation):
        raise ApiError(422, "The cursor is not one this API issued.",
                       {"query": {"cursor": ["not a cursor this API issued"]}}) from None
    return {"c_sort": sort_value, "c_asset": asset_id, "c_dataset": dataset_id}


def page_sql(args: dict, win, select_list: str, params: dict, extra: str = "", lateral: str = "") -> str:
    """The SELECT of one page (`win.size + 1` rows, to tell whether more follow), in the API's order.

    The first page is one walk of ix_latest_quotes_sort joined to assets. Any other page first finds the
    keys of its rows on latest_quotes alone (joined to assets only when a filter needs it), then reads and
    formats just those rows:
    - by cursor: the rows strictly after the key, as two range scans of the sort index (the rest of the
      key's market cap, then the lower market caps), so page 10,000 costs what page 2 costs;
    - by offset: the skipped rows are walked in the index and never joined nor formatted.
    Every variant returns `select_list`, then sort_key, k_asset and k_dataset (for the next cursor), then
    `extra` (", expression AS name" items); `lateral` is joined after latest_quotes `lq` and assets `a`."""
    where = _filters(args, params)
    params["limit"] = win.size + 1
    tail = f"{SORT_EXPR} AS sort_key, lq.asset_id AS k_asset, lq.dataset_id AS k_dataset{extra}"
    if win.cursor is None and win.offset == 0:
        return (f"SELECT {select_list}, {tail} FROM {FROM_JOINED}{lateral} WHERE {_and(where)} "
                f"ORDER BY {ORDER_BY} LIMIT %(limit)s")
    source = FROM_JOINED if needs_assets(args) else "latest_quotes lq"
    keys = f"SELECT lq.asset_id, lq.dataset_id, {SORT_EXPR} AS sort_key FROM {source}"
    if win.cursor is not None:
        params.update(_decode_cursor(win.cursor))
        same = _and(where + [f"{SORT_EXPR} = %(c_sort)s",
                             "(lq.asset_id, lq.dataset_id) > (%(c_asset)s, %(c_dataset)s)"])
        lower = _and(where + [f"{SORT_EXPR} < %(c_sort)s"])
        keys = (f"({keys} WHERE {same} ORDER BY lq.asset_id, lq.dataset_id LIMIT %(limit)s) "
                f"UNION ALL ({keys} WHERE {lower} ORDER BY {ORDER_BY} LIMIT %(limit)s) "
                f"ORDER BY sort_key DESC, asset_id, dataset_id LIMIT %(limit)s")
    else:
        params["offset"] = win.offset
        keys = f"{keys} WHERE {_and(where)} ORDER BY {ORDER_BY} OFFSET %(offset)s LIMIT %(limit)s"
    return (f"SELECT {select_list}, {tail} FROM ({keys}) k "
            f"JOIN latest_quotes lq ON lq.asset_id = k.asset_id AND lq.dataset_id = k.dataset_id "
            f"JOIN assets a ON a.id = lq.asset_id JOIN datasets ds ON ds.id = lq.dataset_id{lateral} "
            f"ORDER BY k.sort_key DESC, k.asset_id, k.dataset_id")


def count_sql(args: dict, params: dict) -> str:
    """The rows matching the filters, to count (joined to assets only when a filter needs it: every latest
    quote has its asset, the foreign key guarantees that the join drops nothing)."""
    source = FROM_JOINED if needs_assets(args) else "latest_quotes lq"
    return f"SELECT 1 FROM {source} WHERE {_and(_filters(args, params))}"


MAINTAINED_COUNT = "SELECT coalesce(sum(latest_quotes), 0)::bigint FROM source_quote_stats"


def maintained_count_sql(args: dict, params: dict) -> str | None:
    """With no filter, or a filter on sources only: the exact count, from source_quote_stats (kept by
    triggers in the writing transactions, so as exact as a count(*) in the same snapshot)."""
    if any(args.get(k) for k in ("symbol", "dataset", "asset", "since", "until")):
        return None
    if args.get("source"):
        params["count_sources"] = split_list(args["source"])
        return f"{MAINTAINED_COUNT} WHERE source = ANY(%(count_sources)s)"
    return MAINTAINED_COUNT


def page_total(args: dict, win, n_rows: int, has_more: bool, maintained) -> tuple[int, bool]:
    """total_count and whether it is exact: the maintained count when there is one; else what the page
    says when, read by offset, it ends the result (and is not past its end); else a count bounded by
    EXACT_COUNT_CAP, an estimate beyond (pagination.bounded_count_sql)."""
    if maintained is not None:
        return int(maintained), True
    if win.cursor is None and not has_more and (n_rows or win.offset == 0) \
            and win.offset + n_rows <= pagination.EXACT_COUNT_CAP:
        return win.offset + n_rows, True
    params: dict = {}
    return bounded_count_sql(count_sql(args, params), params)


def quote_page_body(args: dict, default_size: int, dumper: FastDumper | None = None) -> "readcache.Entry":
    """One page of latest quotes with its metadata; what /api/v1/data and /data answer. The rows of
    QuoteRowSchema come as JSON text from PostgreSQL; other row schemas (`dumper`) are dumped here."""
    win = window(args, default_size)
    params: dict = {}
    in_sql = dumper is None and QUOTE_ROW_JSON is not None and readcache.compact_json()
    select_list = "row_to_json(j)::text AS row_json" if in_sql else COLUMNS
    lateral = f" CROSS JOIN LATERAL (SELECT {QUOTE_ROW_JSON}) j" if in_sql else ""
    maintained = maintained_count_sql(args, params)
    # the maintained count is read by the page's statement (an InitPlan, run once), in the same snapshot
    extra = f", ({maintained}) AS maintained_total" if maintained is not None else ""
    sql = page_sql(args, win, select_list, params, extra, lateral)
    rows = readcache.query(sql, params)  # on the connection the version was read on, when there is one
    if rows is None:
        rows = [row._mapping for row in db.session.connection().exec_driver_sql(sql, params).fetchall()]
    has_more = len(rows) > win.size
    rows = rows[: win.size]
    next_cursor = None
    if has_more and rows:
        last = rows[-1]
        next_cursor = encode_cursor(str(last["sort_key"]), last["k_asset"], last["k_dataset"])
    if maintained is not None and not rows:
        maintained = db.session.connection().exec_driver_sql(maintained, params).scalar()
    elif maintained is not None:
        maintained = rows[0]["maintained_total"]
    total, exact = page_total(args, win, len(rows), has_more, maintained)
    meta = list_metadata(win, total, exact, has_more, next_cursor)
    if in_sql:
        return readcache.Entry.from_rows_json([row["row_json"] for row in rows], meta)
    return readcache.Entry.from_payload({"data": (dumper or QUOTE_ROWS).dump_many(rows), "metadata": meta})


@blp.route("/data")
@blp.arguments(DataArgsSchema, location="query")
@blp.response(200, DataPageSchema, description=(
    "Latest quote per asset and source, ordered by market cap (unknown last), asset id, source. "
    "Page with page/page_size, limit/offset, or the keyset `cursor` from metadata.next_cursor."))
@blp.alt_response(400, schema=ErrorSchema, description="Paging arguments that contradict each other")
@blp.doc(responses=readcache.DOC_304)
def list_data(args):
    """Latest quotes"""
    return readcache.serve(lambda: quote_page_body(args, default_size=100))


readcache.cacheable("data.list_data")
