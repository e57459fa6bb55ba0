"""Planning a backfill: which (asset, source) pairs, split into windows sized to each history endpoint.

`plan_backfill(conn, settings, request)` returns a Plan (windows with their state at creation) without
writing; `create_backfill(conn, settings, plan)` stores it, refusing an overlap with a backfill still
going (BackfillConflict names it); the caller publishes one task per pending window (`pending_windows`).

Rules:
- `assets` are asset slugs or source ids ("bitcoin", "btc-bitcoin"); `top: N` takes the N best ranked
  assets of the latest quotes. A pair (asset, source) needs the source's id of the asset, learnt by
  an earlier snapshot of that source: named assets without one are refused (PlanError), `top` skips them
  (listed in `skipped`).
- `until` defaults to, and is capped at, just after the newest final grid point (`final_until`: a point
  at t is final at t + the source's finality delay, CoinGecko 00:10 UTC for the previous day), so every
  backfilled row is final when stored and a day is fetched once. `since` is floored to the interval's grid.
- Windows: CoinGecko 365 days (daily) or 90 days (hourly), CoinPaprika 365 days / 5000 points; a window
  never straddles the plan's reach: windows before it (CoinGecko public/demo: the past 365 days) are
  `unavailable` at once, with the reason, and cost no request; CoinPaprika's free plan (no key: daily for
  the last year, hourly for the last day) splits windows the same way, but asks (its 402 is the reason).
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

from psycopg2.extras import Json, execute_values

from ..sources import HISTORY
from ..sources import coingecko_history, coinpaprika_history
from ..sources.history import INTERVALS

FINALITY = {"coingecko": coingecko_history.FINALITY_DELAY, "coinpaprika": coinpaprika_history.FINALITY_DELAY}
WINDOW_SIZES = {"coingecko": coingecko_history.window_size, "coinpaprika": coinpaprika_history.window_size}
ENDPOINTS = {"coingecko": "market_chart", "coinpaprika": "historical"}
PROVISIONAL = "provisional"      # the flag of a stored point that is not final yet (replaced when it is)
PLAN_LOCK = "cryptoflow:backfill-plan"


class PlanError(ValueError):
    """The request cannot be planned; the message says why (an HTTP 422)."""


class BackfillConflict(Exception):
    def __init__(self, backfill_id: str, detail: str):
        super().__init__(f"backfill {backfill_id} is already filling {detail}")
        self.backfill_id = backfill_id


@dataclass
class Window:
    source: str
    asset_id: int
    asset: str
    external_id: str
    starts_at: datetime
    ends_at: datetime
    status: str = "pending"
    error: str | None = None

    @property
    def endpoint(self) -> str:
        return ENDPOINTS[self.source]


@dataclass
class Plan:
    id: str
    interval: str
    since: datetime
    until: datetime
    sources: list[str]
    windows: list[Window] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    request: dict = field(default_factory=dict)

    @property
    def requests(self) -> int:
        return sum(1 for w in self.windows if w.status == "pending")


def history_dataset(source: str, interval: str) -> str:
    """The dataset of a history source at an interval: daily and hourly points never share one."""
    return f"{source}:{ENDPOINTS[source]}:{interval}"


def newest_final(now: datetime, step: timedelta, source: str) -> datetime:
    """The newest grid point of `source` at `step` whose finality delay has passed at `now`."""
    return floor_to(now - FINALITY[source], step)


def floor_to(moment: datetime, step: timedelta) -> datetime:
    seconds = int(step.total_seconds())
    return datetime.fromtimestamp(int(moment.timestamp()) // seconds * seconds, timezone.utc)


def ceil_to(moment: datetime, step: timedelta) -> datetime:
    floored = floor_to(moment, step)
    return floored if floored == moment else floored + step


def plan_backfill(conn, settings, request: dict, now: datetime | None = None) -> Plan:
    now = now or datetime.now(timezone.utc)
    interval = request.get("interval") or "1d"
    if interval not in INTERVALS:
        raise PlanError(f"interval must be one of {', '.join(INTERVALS)}")
    step = INTERVALS[interval]
    sources = list(request.get("sources") or HISTORY)
    unknown = [s for s in sources if s not in HISTORY]
    if unknown:
        raise PlanError(f"no history endpoint for {unknown}; sources with one: {', '.join(HISTORY)}")
    gaps_of = request.get("gaps_of")
    if gaps_of:
        return _plan_gaps(conn, settings, request, gaps_of, step, now)
    provisional = bool(request.get("provisional"))
    # keep-current (provisional) starts just after the newest final point and reaches the current bucket
    since = _utc(request["since"]) if provisional else floor_to(_utc(request["since"]), step)
    until = floor_to(now, step) + step if provisional else final_until(now, step, sources, request.get("until"))
    if since >= until:
        raise PlanError(f"nothing to fill: since {since.isoformat()} is not before until {until.isoformat()} "
                        "(only final points are backfilled)")
    plan = Plan(str(uuid.uuid4()), interval, since, until, sources, request=_jsonable(request))
    pairs = _pairs(conn, request, sources, plan)
    for asset_id, asset, source, external_id in pairs:
        plan.windows.extend(_windows(settings, source, asset_id, asset, external_id, since, until, step, now))
    if not plan.windows:
        raise PlanError("nothing to fill: no asset has an id on the requested sources")
    return plan


def final_until(now: datetime, step: timedelta, sources: list[str], until=None) -> datetime:
    """The end (exclusive) of what may be backfilled: grid points whose finality has passed (a point at
    t is final at t + the source's finality delay). So a backfilled row is final when stored, and a
    day is fetched once. A requested `until` (exclusive) can only bring it earlier."""
    end = floor_to(now - max(FINALITY[s] for s in sources), step) + step
    return min(end, ceil_to(_utc(until), step)) if until else end


def _plan_gaps(conn, settings, request: dict, gaps_of: dict, step: timedelta, now: datetime) -> Plan:
    """Windows over exactly the gaps of one asset's dataset `<source>:<endpoint>` in [since, until)."""
    from .coverage import coverage

    source = gaps_of["source"]
    if source not in HISTORY:
        raise PlanError(f"no history endpoint for {source!r}; sources with one: {', '.join(HISTORY)}")
    since = floor_to(_utc(gaps_of["since"]), step)
    until = final_until(now, step, [source], gaps_of.get("until"))
    if since >= until:
        raise PlanError("nothing to fill: since is not before until (only final points are backfilled)")
    plan = Plan(str(uuid.uuid4()), request.get("interval") or "1d", since, until, [source],
                request=_jsonable({**request, "gaps_of": _jsonable(gaps_of)}))
    pairs = _pairs(conn, {"assets": [gaps_of["asset"]]}, [source], plan)
    asset_id, asset, _, external_id = pairs[0]
    name = history_dataset(source, plan.interval)
    found = coverage(conn, asset_id, step, since, until, dataset=name)
    for gap in found["gaps"]:
        plan.windows.extend(_windows(settings, source, asset_id, asset, external_id, gap["first"],
                                     gap["last"] + step, step, now))
    if not plan.windows:
        raise PlanError(f"nothing to fill: {asset} has no gaps in {name} between "
                        f"{since.isoformat()} and {until.isoformat()}")
    return plan


def _pairs(conn, request: dict, sources: list[str], plan: Plan) -> list[tuple]:
    with conn.cursor() as cur:
        if request.get("top"):
            cur.execute("SELECT a.id, a.slug FROM latest_quotes q JOIN assets a ON a.id = q.asset_id "
                        "WHERE q.market_cap_rank IS NOT NULL GROUP BY a.id, a.slug "
                        "ORDER BY min(q.market_cap_rank), a.id LIMIT %s", (int(request["top"]),))
            assets, strict = cur.fetchall(), False
        else:
            names = list(dict.fromkeys(request.get("assets") or []))
            assets, missing = [], []
            for name in names:
                cur.execute("SELECT id, slug FROM assets WHERE slug = %s UNION ALL "
                            "SELECT a.id, a.slug FROM asset_identifiers i JOIN assets a ON a.id = i.asset_id "
                            "WHERE i.external_id = %s AND i.source <> 'csv' LIMIT 1", (name, name))
                row = cur.fetchone()
                (assets.append(row) if row else missing.append(name))
            if missing:
                raise PlanError(f"unknown assets: {', '.join(missing)} (use asset slugs or source ids; an asset "
                                "is known once a snapshot of a source has seen it)")
            strict = True
        pairs, lacking = [], []
        for asset_id, slug in assets:
            for source in sources:
                cur.execute("SELECT external_id FROM asset_identifiers WHERE source = %s AND asset_id = %s "
                            "ORDER BY first_seen_at, external_id LIMIT 1", (source, asset_id))
                row = cur.fetchone()
                if row:
                    pairs.append((asset_id, slug, source, row[0]))
                else:
                    lacking.append(f"{slug} on {source}")
    conn.commit()
    if lacking and strict:
        raise PlanError(f"no source id known for {', '.join(lacking)}: run a snapshot of that source first "
                        "(POST /api/v1/runs) or leave the source out")
    plan.skipped = lacking
    return pairs


def _windows(settings, source, asset_id, asset, external_id, since, until, step, now) -> list[Window]:
    size = max(step, floor_to_step(WINDOW_SIZES[source](_interval_name(step)), step))
    reach = split = None
    if source == "coingecko":
        start = coingecko_history.reach_start(settings.coingecko_api_plan, now)
        reach = split = ceil_to(start + timedelta(minutes=10), step) if start is not None else None
    elif source == "coinpaprika" and not settings.coinpaprika_api_key:
        # the free plan: daily data for the last year, hourly for the last day. Older windows are still
        # asked (CoinPaprika's 402 gives the reason), but never together with servable days.
        split = ceil_to(now - coinpaprika_history.FREE_REACH[_interval_name(step)] + timedelta(minutes=10), step)
    out, cursor = [], since
    while cursor < until:
        end = min(cursor + size, until)
        if split is not None and cursor < split < end:
            end = split                          # never straddle the plan's reach
        window = Window(source, asset_id, asset, external_id, cursor, end)
        if reach is not None and end <= reach:
            window.status = "unavailable"
            window.error = (f"beyond the plan: CoinGecko {settings.coingecko_api_plan} serves the past 365 days "
                            f"(from {reach.isoformat()}); COINGECKO_API_PLAN=pro reaches further")
        out.append(window)
        cursor = end
    return out


def floor_to_step(span: timedelta, step: timedelta) -> timedelta:
    return span // step * step


def _interval_name(step: timedelta) -> str:
    return next(name for name, value in INTERVALS.items() if value == step)


def create_backfill(conn, plan: Plan, trigger: str = "api") -> None:
    """Store the plan (one transaction); BackfillConflict if a running backfill covers the same
    asset/source/interval over an overlapping range (any of its windows, whatever their state: a
    running backfill still owns the range it was asked for)."""
    with conn.cursor() as cur:
        cur.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (PLAN_LOCK,))
        cur.execute("SELECT w.backfill_id, a.slug, w.source FROM backfill_windows w JOIN assets a ON a.id = w.asset_id "
                    "JOIN backfills b ON b.id = w.backfill_id AND b.status = 'running' "
                    "WHERE w.asset_id = ANY(%s) AND w.source = ANY(%s) AND w.interval = %s "
                    "AND w.starts_at < %s AND w.ends_at > %s ORDER BY b.created_at LIMIT 1",
                    (sorted({w.asset_id for w in plan.windows}), plan.sources, plan.interval, plan.until, plan.since))
        row = cur.fetchone()
        if row is not None:
            conn.rollback()
            raise BackfillConflict(str(row[0]), f"{row[1]} from {row[2]} at {plan.interval}")
        request = {**plan.request, "skipped": plan.skipped} if plan.skipped else plan.request
        cur.execute("INSERT INTO backfills (id, interval, since, until, sources, request, trigger) "
                    "VALUES (%s, %s, %s, %s, %s, %s, %s)",
                    (plan.id, plan.interval, plan.since, plan.until, plan.sources, Json(request), trigger))
        execute_values(cur, "INSERT INTO backfill_windows (backfill_id, source, endpoint, asset_id, external_id, "
                            "interval, starts_at, ends_at, status, error, finished_at) VALUES %s",
                       [(plan.id, w.source, w.endpoint, w.asset_id, w.external_id, plan.interval, w.starts_at,
                         w.ends_at, w.status, w.error, None if w.status == "pending" else datetime.now(timezone.utc))
                        for w in plan.windows])
    conn.commit()


def pending_windows(conn, backfill_id: str) -> list[int]:
    with conn.cursor() as cur:
        cur.execute("SELECT id FROM backfill_windows WHERE backfill_id = %s AND status = 'pending' "
                    "ORDER BY starts_at DESC, id", (backfill_id,))
        ids = [r[0] for r in cur.fetchall()]
    conn.commit()
    return ids


def _utc(value) -> datetime:
    if isinstance(value, str):
        value = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if not isinstance(value, datetime):      # a date
        value = datetime(value.year, value.month, value.day)
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


def _jsonable(request: dict) -> dict:
    return {k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in request.items() if v is not None}
