"""Comparing two runs: count deltas, assets added or missing, the largest price moves.

Assets and prices come from the quotes each run wrote to the history (`quotes.run_id`): an asset a run
saw but did not write (its values had not changed) does not count as seen by that run.
"""
from __future__ import annotations

import marshmallow as ma
from marshmallow import fields, validate
from sqlalchemy import select, text

from ..extensions import db
from ..models import EtlRun
from ..pipeline.runs import get_run
from .errors import ApiError
from .schemas import Money, SourceField

TERMINAL = ("succeeded", "partial", "failed")
COUNTED = ("fetched", "loaded", "rejected", "pages", "duration_seconds")
LIST_LIMIT = 100

RUN_ASSETS_SQL = """
    WITH qa AS (SELECT DISTINCT ON (asset_id) asset_id, price_usd FROM quotes WHERE run_id = :a
                ORDER BY asset_id, observed_at DESC),
         qb AS (SELECT DISTINCT ON (asset_id) asset_id, price_usd FROM quotes WHERE run_id = :b
                ORDER BY asset_id, observed_at DESC)
"""
ADDED_SQL = text(RUN_ASSETS_SQL + """
    SELECT x.asset_id, s.slug, s.symbol, s.name, count(*) OVER () AS total
    FROM (SELECT asset_id FROM qb EXCEPT SELECT asset_id FROM qa) x JOIN assets s ON s.id = x.asset_id
    ORDER BY x.asset_id LIMIT :limit
""")
MOVES_SQL = text(RUN_ASSETS_SQL + """
    SELECT qa.asset_id, s.slug, s.symbol, s.name, qa.price_usd AS price_a, qb.price_usd AS price_b,
           round((qb.price_usd - qa.price_usd) / qa.price_usd * 100, 4) AS change_pct
    FROM qa JOIN qb USING (asset_id) JOIN assets s ON s.id = qa.asset_id
    WHERE qa.price_usd > 0
    ORDER BY abs((qb.price_usd - qa.price_usd) / qa.price_usd) DESC, qa.asset_id LIMIT :top
""")

COMMON_SQL = text(RUN_ASSETS_SQL + "SELECT count(*) FROM qa JOIN qb USING (asset_id)")


class CompareArgsSchema(ma.Schema):
    a = fields.UUID(metadata={"description": "The earlier run (default: the finished run before b)"})
    b = fields.UUID(metadata={"description": "The later run (default: the newest finished run)"})
    source = SourceField("With defaults: pick the runs of this source")
    top = fields.Integer(load_default=10, validate=validate.Range(min=1, max=100),
                         metadata={"description": "How many price moves to list"})


class RunBriefSchema(ma.Schema):
    id = fields.UUID()
    source = fields.String()
    status = fields.String()
    created_at = fields.DateTime()
    finished_at = fields.DateTime(allow_none=True)


class DeltaSchema(ma.Schema):
    a = fields.Float(allow_none=True)
    b = fields.Float(allow_none=True)
    delta = fields.Float(allow_none=True, metadata={"description": "b - a"})


class AssetBriefSchema(ma.Schema):
    asset_id = fields.Integer()
    slug = fields.String()
    symbol = fields.String()
    name = fields.String()


class AssetChangesSchema(ma.Schema):
    added_count = fields.Integer(metadata={"description": "Assets written by b and not by a"})
    missing_count = fields.Integer(metadata={"description": "Assets written by a and not by b"})
    common_count = fields.Integer()
    added = fields.List(fields.Nested(AssetBriefSchema), metadata={"description": f"At most {LIST_LIMIT}"})
    missing = fields.List(fields.Nested(AssetBriefSchema), metadata={"description": f"At most {LIST_LIMIT}"})


class PriceMoveSchema(AssetBriefSchema):
    price_a = Money("Price in USD in run a")
    price_b = Money("Price in USD in run b")
    change_pct = Money("Change from a to b, in percent")


class CompareSchema(ma.Schema):
    a = fields.Nested(RunBriefSchema)
    b = fields.Nested(RunBriefSchema)
    counts = fields.Dict(keys=fields.String(), values=fields.Nested(DeltaSchema), metadata={
        "description": "fetched, loaded, rejected, pages, duration_seconds of each run and the delta"})
    assets = fields.Nested(AssetChangesSchema)
    price_moves = fields.List(fields.Nested(PriceMoveSchema), metadata={
        "description": "Assets written by both runs, largest relative price change first"})


def _finished(source: str | None, before: EtlRun | None = None) -> EtlRun | None:
    stmt = select(EtlRun).where(EtlRun.status.in_(TERMINAL))
    if source:
        stmt = stmt.where(EtlRun.source == source)
    if before is not None:
        stmt = stmt.where(EtlRun.created_at < before.created_at)
    return db.session.scalars(stmt.order_by(EtlRun.created_at.desc()).limit(1)).first()


def _pick(args: dict) -> tuple[EtlRun, EtlRun]:
    b = get_run(args["b"]) if args.get("b") else _finished(args.get("source"))
    if args.get("b") and b is None:
        raise ApiError(404, f"No run {args['b']}.")
    a = get_run(args["a"]) if args.get("a") else (_finished(b.source, before=b) if b else None)
    if args.get("a") and a is None:
        raise ApiError(404, f"No run {args['a']}.")
    if a is None or b is None:
        raise ApiError(404, "Nothing to compare: pass a and b, or wait for two finished runs of the source.")
    return a, b


def _assets(sql, first, second) -> tuple[list[dict], int]:
    rows = db.session.execute(sql, {"a": first, "b": second, "limit": LIST_LIMIT}).mappings().all()
    return [dict(r) for r in rows], (rows[0]["total"] if rows else 0)


def compare_runs(args: dict) -> dict:
    a, b = _pick(args)
    counts = {}
    for name in COUNTED:
        va, vb = getattr(a, name), getattr(b, name)
        counts[name] = {"a": va, "b": vb, "delta": None if va is None or vb is None else vb - va}
    ids = {"a": str(a.id), "b": str(b.id)}
    added, added_count = _assets(ADDED_SQL, ids["a"], ids["b"])
    missing, missing_count = _assets(ADDED_SQL, ids["b"], ids["a"])
    moves = [dict(r) for r in db.session.execute(MOVES_SQL, {**ids, "top": args["top"]}).mappings()]
    common = db.session.execute(COMMON_SQL, ids).scalar_one()
    return {"a": a, "b": b, "counts": counts, "price_moves": moves,
            "assets": {"added_count": added_count, "missing_count": missing_count, "common_count": common,
                       "added": added, "missing": missing}}
