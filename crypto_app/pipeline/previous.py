"""The stored observation just before a time, in bulk: what a rule comparing a new row with the previous
observation of the same asset and dataset (the plausibility rule `price_jump`) needs.

One statement for a whole batch: an index probe per (asset, dataset, time) on the quotes key
(asset_id, dataset_id, observed_at), read backwards from the time.
"""
from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Iterable

_SQL = """
SELECT k.asset_id, k.dataset_id, k.before, p.observed_at, p.price_usd
FROM unnest(%s::bigint[], %s::integer[], %s::timestamptz[]) AS k(asset_id, dataset_id, before)
CROSS JOIN LATERAL (
    SELECT q.observed_at, q.price_usd FROM quotes q
    WHERE q.asset_id = k.asset_id AND q.dataset_id = k.dataset_id AND q.observed_at < k.before
    ORDER BY q.observed_at DESC LIMIT 1) p
"""


def newest_prices_before(conn, keys: Iterable[tuple[int, int, datetime]]
                         ) -> dict[tuple[int, int, datetime], tuple[datetime, Decimal]]:
    """{(asset_id, dataset_id, before): (observed_at, price_usd)} of the newest stored quote of that asset
    and dataset observed strictly before `before`; keys with no earlier quote are absent.

    `conn` is a psycopg2 connection (the batch's own, to see what earlier batches of the run committed).
    For a batch, pass each (asset, dataset) once with the batch's earliest time for it, and compare the
    later rows of the batch with the rows before them in the batch."""
    unique = list(dict.fromkeys(keys))
    if not unique:
        return {}
    with conn.cursor() as cur:
        cur.execute(_SQL, ([k[0] for k in unique], [k[1] for k in unique], [k[2] for k in unique]))
        return {(asset_id, dataset_id, before): (observed_at, price)
                for asset_id, dataset_id, before, observed_at, price in cur.fetchall()}
