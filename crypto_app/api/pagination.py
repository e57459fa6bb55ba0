"""Paging in one place: page/page_size, limit/offset, keyset cursors, and counts that stay cheap.

A cursor is the URL-safe base64 of the last row's sort key as JSON. It is opaque to clients (they only
pass back what `next_cursor` gave them) and keyset-based, so page 10,000 costs what page 2 costs.
"""
from __future__ import annotations

import base64
import binascii
import json
import time
from dataclasses import dataclass

import marshmallow as ma
from flask import g
from sqlalchemy import func, select, text

from ..extensions import db

EXACT_COUNT_CAP = 10_000
CURSOR_VERSION = 1
MAX_KEY_PART_CHARS = 200  # a sort key of a cursor we issued is a number, an id or a source name


class CursorField(ma.fields.String):
    """An opaque keyset cursor; deserializes to the decoded key (a list)."""

    def _deserialize(self, value, attr, data, **kwargs):
        raw = super()._deserialize(value, attr, data, **kwargs)
        try:
            decoded = json.loads(base64.urlsafe_b64decode(raw.encode("ascii") + b"=" * (-len(raw) % 4)))
        except (ValueError, UnicodeError, binascii.Error):
            raise ma.ValidationError("not a cursor this API issued") from None
        if not (isinstance(decoded, list) and decoded and decoded[0] == CURSOR_VERSION):
            raise ma.ValidationError("not a cursor this API issued")
        key = decoded[1:]
        for part in key:
            _check_key_part(part)
        return key


def _check_key_part(part) -> None:
    """A decoded cursor is input like any query parameter: plain scalars only, text PostgreSQL can hold."""
    if isinstance(part, bool) or not isinstance(part, (str, int, type(None))):
        raise ma.ValidationError("not a cursor this API issued")
    if not isinstance(part, str):
        return
    if "\x00" in part:
        from .errors import ApiError  # the same answer as a NUL in the raw query string

        raise ApiError(400, "NUL characters are not allowed in the URL.",
                       {"query": {"cursor": ["the cursor holds a NUL character"]}})
    try:
        part.encode("utf-8")
    except UnicodeEncodeError:
        raise ma.ValidationError("not a cursor this API issued") from None
    if len(part) > MAX_KEY_PART_CHARS:
        raise ma.ValidationError("not a cursor this API issued")


def encode_cursor(*key) -> str:
    payload = json.dumps([CURSOR_VERSION, *key], separators=(",", ":"), default=str)
    return base64.urlsafe_b64encode(payload.encode()).decode("ascii").rstrip("=")


@dataclass(frozen=True)
class Window:
    size: int
    offset: int | None  # None when paging by cursor
    cursor: list | None

    @property
    def page(self) -> int | None:
        if self.offset is None or self.offset % self.size:
            return None
        return self.offset // self.size + 1


def window(args: dict, default_size: int) -> Window:
    """Resolve the paging arguments (already validated by PageArgsSchema) into one window."""
    size = args.get("limit") or args.get("page_size") or default_size
    cursor = args.get("cursor")
    if cursor is not None:
        if "page" in args or "offset" in args:
            from .errors import ApiError

            raise ApiError(400, "cursor cannot be combined with page or offset",
                           {"query": {"cursor": ["use cursor alone, or page/offset without it"]}})
        return Window(size, None, cursor)
    if "offset" in args:
        return Window(size, args["offset"], None)
    return Window(size, (args.get("page", 1) - 1) * size, None)


def bounded_count(stmt, table_name: str | None = None) -> tuple[int, bool]:
    """Count the rows of `stmt` up to EXACT_COUNT_CAP; beyond, estimate. Returns (count, exact).

    Unfiltered (`table_name` given): the table's own statistics (pg_class.reltuples), which also lets a
    large table skip the capped count. Filtered: the planner's estimate for the query. Either way no
    request counts more than the cap.
    """
    reltuples = None
    if table_name is not None:
        reltuples = db.session.execute(
            text("SELECT reltuples::bigint FROM pg_class WHERE oid = to_regclass(:t)"), {"t": table_name}
        ).scalar()
        if reltuples is not None and reltuples > 2 * EXACT_COUNT_CAP:
            return int(reltuples), False
    capped = select(func.count()).select_from(stmt.limit(EXACT_COUNT_CAP + 1).subquery())
    n = db.session.execute(capped).scalar_one()
    if n <= EXACT_COUNT_CAP:
        return n, True
    estimate = reltuples if table_name is not None else planner_rows(stmt)
    return max(int(estimate or 0), n), False


def bounded_count_sql(sql: str, params: dict) -> tuple[int, bool]:
    """bounded_count() for a plain SQL SELECT (pyformat parameters): its rows counted up to
    EXACT_COUNT_CAP, the planner's estimate beyond. Returns (count, exact)."""
    conn = db.session.connection()
    n = conn.exec_driver_sql(f"SELECT count(*) FROM ({sql} LIMIT {EXACT_COUNT_CAP + 1}) capped", params).scalar_one()
    if n <= EXACT_COUNT_CAP:
        return n, True
    plan = conn.exec_driver_sql("EXPLAIN (FORMAT JSON) " + sql, params).scalar()
    if isinstance(plan, str):
        plan = json.loads(plan)
    return max(int(plan[0]["Plan"]["Plan Rows"]), n), False


def planner_rows(stmt) -> int:
    """The planner's row estimate for `stmt` (EXPLAIN, never executed)."""
    compiled = stmt.compile(dialect=db.engine.dialect, compile_kwargs={"render_postcompile": True})
    conn = db.session.connection()
    plan = conn.exec_driver_sql("EXPLAIN (FORMAT JSON) " + str(compiled), compiled.params).scalar()
    if isinstance(plan, str):
        plan = json.loads(plan)
    return int(plan[0]["Plan"]["Plan Rows"])


def list_metadata(win: Window, total: int, exact: bool, has_more: bool, next_cursor: str | None) -> dict:
    return {
        "request_id": getattr(g, "request_id", None),
        "api_latency_ms": latency_ms(),
        "page": win.page,
        "page_size": win.size,
        "offset": win.offset,
        "total_count": total,
        "total_count_exact": exact,
        "has_more": has_more,
        "next_cursor": next_cursor,
    }


def latency_ms() -> float:
    started = getattr(g, "request_started", None)
    return round((time.perf_counter() - started) * 1000, 2) if started else 0.0
