"""Plausibility rules: is a validated quote believable? Each rule is named and has a severity per source
(crypto_app.config.PLAUSIBILITY_DEFAULTS, overridden by PLAUSIBILITY_<SOURCE>):
  hard  the record is quarantined; the reason names the rule and the values ("ohlc_order: high_usd 5 ...");
  soft  the record is stored with the rule's name in its `flags`;
  off   the rule is not applied.

Every rule is a pure function returning None (plausible) or a message naming the values. `price_jump`
takes the previous price as an argument, so what "previous" means (here: the previous accepted
observation of the same asset and source, from this run or from `quotes`) is the caller's choice.

Every record `check` accepts carries `flags`: the sorted names of the soft rules it tripped ([] if none).
Counts go to the run as "soft:<rule>" (records flagged) and "hard:<rule>" (records quarantined).
"""
from __future__ import annotations

from bisect import bisect_left
from collections import Counter, deque
from datetime import datetime, timedelta, timezone
from decimal import Decimal

from ..config import PLAUSIBILITY_DEFAULTS
from .previous import newest_prices_before

PRICE_FIELDS = ("price_usd", "open_usd", "high_usd", "low_usd")
NON_NEGATIVE_FIELDS = PRICE_FIELDS + ("market_cap_usd", "volume_24h_usd", "volume_usd", "circulating_supply",
                                      "total_supply", "max_supply")


# -- the rules ------------------------------------------------------------------------------------

def ohlc_order(open_: Decimal | None, high: Decimal | None, low: Decimal | None, close: Decimal | None) -> str | None:
    """low <= open, close <= high (only among the values present)."""
    if high is not None and low is not None and high < low:
        return f"high_usd {high} is below low_usd {low}"
    for name, value in (("open_usd", open_), ("price_usd", close)):
        if value is None:
            continue
        if high is not None and value > high:
            return f"{name} {value} is above high_usd {high}"
        if low is not None and value < low:
            return f"{name} {value} is below low_usd {low}"
    return None


def non_negative_finite(values: dict) -> str | None:
    for name in NON_NEGATIVE_FIELDS:
        value = values.get(name)
        if value is not None and (not value.is_finite() or value < 0):
            return f"{name} {value} is not a finite number >= 0"
    return None


def market_cap_ceiling(market_cap: Decimal | None, ceiling: Decimal) -> str | None:
    if market_cap is not None and market_cap > ceiling:
        return f"market_cap_usd {market_cap} is above the ceiling {ceiling}"
    return None


def market_cap_consistency(market_cap: Decimal | None, price: Decimal | None, supply: Decimal | None,
                           tolerance: Decimal) -> str | None:
    """market cap within `tolerance` (relative) of price x circulating supply, when all three are known."""
    if not market_cap or not price or not supply:
        return None            # missing, or 0 (which upstreams write for "unknown")
    implied = price * supply
    if abs(market_cap - implied) > tolerance * implied:
        return (f"market_cap_usd {market_cap} is not price_usd {price} x circulating_supply {supply} "
                f"= {implied.normalize():f} (tolerance {tolerance})")
    return None


def price_jump(price: Decimal | None, previous: Decimal | None, factor: Decimal) -> str | None:
    """A move by `factor` or more, up or down, versus the previous observation's price."""
    if not price or not previous:
        return None
    if price >= previous * factor or previous >= price * factor:
        return f"price_usd {price} versus {previous} before (x{factor} or more)"
    return None


def future_time(observed_at: datetime, now: datetime, skew_seconds: int) -> str | None:
    if observed_at > now + timedelta(seconds=skew_seconds):
        return f"observed_at {observed_at.isoformat()} is in the future (now {now.isoformat(timespec='seconds')})"
    return None


RULES = tuple(PLAUSIBILITY_DEFAULTS)


# -- applying them to a batch ---------------------------------------------------------------------------

class PlausibilityCheck:
    """Applies the rules of one source to the batches of one run.

    `conn` (psycopg2, may be None) is read for the newest stored price of each asset in the batch's
    dataset before the batch's rows: one query per batch (crypto_app.pipeline.previous). The prices
    accepted in the last three batches are remembered (`remembered`), since those may still be on their
    way to the database: "previous" is then the same whether or not they were committed yet. Another dataset's prices are never compared: two files of one coin
    may disagree without either jumping."""

    def __init__(self, settings, source: str, conn=None, clock=None):
        self.settings = settings                     # PlausibilitySettings
        self.source = source
        self.severity = settings.for_source(source)
        self.conn = conn
        self.clock = clock or (lambda: datetime.now(timezone.utc))
        # accepted (time, price) of the last batches per (dataset, asset): a batch may still be on its way to
        # the database (pipeline/load.py BatchWriter: one queued, one being written) when the next is checked
        self._recent: deque = deque(maxlen=3)
        s = settings
        checks = {
            "ohlc_order": lambda row, now: ohlc_order(row.get("open_usd"), row.get("high_usd"), row.get("low_usd"),
                                                      row.get("price_usd")),
            "non_negative_finite": lambda row, now: non_negative_finite(row),
            "market_cap_ceiling": lambda row, now: market_cap_ceiling(row.get("market_cap_usd"),
                                                                      s.market_cap_ceiling_usd),
            "market_cap_consistency": lambda row, now: market_cap_consistency(
                row.get("market_cap_usd"), row.get("price_usd"), row.get("circulating_supply"), s.market_cap_tolerance),
            "future_time": lambda row, now: future_time(row["observed_at"], now, s.clock_skew_seconds),
        }
        self._rules = [(rule, self.severity[rule], check) for rule, check in checks.items()
                       if self.severity[rule] != "off"]

    def check(self, rows: list[tuple[dict, object]], dataset_id: int | None = None
              ) -> tuple[list[tuple[dict, object]], list[tuple], Counter]:
        """rows: (clean record with asset_id, raw record). Returns (accepted rows with `flags`,
        quarantined as (reason, errors, raw), counts by "soft:<rule>" / "hard:<rule>")."""
        counts: Counter = Counter()
        now = self.clock()
        accepted, quarantined = [], []
        for clean, raw in rows:
            hard, soft = self._row_rules(clean, now)
            if hard:
                counts.update(f"hard:{rule}" for rule in hard)
                quarantined.append(_rejection(hard, raw))
                continue
            clean["flags"] = soft
            accepted.append((clean, raw))
        if self.severity["price_jump"] != "off" and accepted:
            accepted = self._price_jumps(accepted, quarantined, counts, dataset_id)
        for clean, _ in accepted:
            clean["flags"] = sorted(clean["flags"])
            counts.update(f"soft:{rule}" for rule in clean["flags"])
        return accepted, quarantined, counts

    def _row_rules(self, row: dict, now: datetime) -> tuple[dict, list]:
        hard, soft = {}, []
        for rule, severity, check in self._rules:
            message = check(row, now)
            if message is None:
                continue
            if severity == "hard":
                hard[rule] = message
            else:
                soft.append(rule)
        return hard, soft

    def _price_jumps(self, accepted, quarantined, counts, dataset_id) -> list:
        factor, hard = self.settings.price_jump_factor, self.severity["price_jump"] == "hard"
        by_asset: dict[int, list] = {}
        for item in accepted:
            by_asset.setdefault(item[0]["asset_id"], []).append(item)
        stored = self._stored_before(dataset_id,
                                     {a: min(c["observed_at"] for c, _ in items) for a, items in by_asset.items()})
        keep, kept = set(), {}
        for asset_id, items in by_asset.items():
            items.sort(key=lambda item: item[0]["observed_at"])
            first = items[0][0]["observed_at"]
            previous = _newest(stored.get(asset_id), self.remembered((dataset_id, asset_id), first), first)
            for clean, raw in items:
                message = price_jump(clean["price_usd"], previous[1] if previous else None, factor)
                if message and hard:
                    counts["hard:price_jump"] += 1
                    quarantined.append(_rejection({"price_jump": message}, raw))
                    continue
                if message:
                    clean["flags"].append("price_jump")
                keep.add(id(clean))
                previous = (clean["observed_at"], clean["price_usd"])
                kept.setdefault((dataset_id, asset_id), []).append(
                    (_micros(clean["observed_at"]), clean["price_usd"], clean["observed_at"]))
        self.remember(kept)
        return [item for item in accepted if id(item[0]) in keep]

    def remembered(self, key: tuple, before: datetime) -> tuple | None:
        """The newest (time, price) before `before` accepted for `key` in the last batches of this run (which
        may not be committed yet; older ones are in the database)."""
        limit, best = _micros(before), None
        for batch in self._recent:                     # oldest first: a later batch wins a tie
            found = batch.get(key)
            if not found:
                continue
            micros, prices, times = found
            i = bisect_left(micros, limit) - 1
            if i >= 0 and (best is None or times[i] >= best[0]):
                price = prices[i]
                best = (times[i], price if isinstance(price, Decimal) else Decimal(price))
        return best

    def remember(self, accepted: dict) -> None:
        """{(dataset, asset): [(microseconds, price, time), ...]} accepted in one batch, in row order."""
        batch = {}
        for key, items in accepted.items():
            items.sort(key=lambda item: item[0])       # stable: the last of equal times is the stored one
            batch[key] = ([m for m, _, _ in items], [p for _, p, _ in items], [t for _, _, t in items])
        self._recent.append(batch)

    def _stored_before(self, dataset_id: int | None, first_seen: dict) -> dict:
        if self.conn is None or dataset_id is None or not first_seen:
            return {}
        found = newest_prices_before(self.conn, [(a, dataset_id, before) for a, before in first_seen.items()])
        if not self.conn.autocommit:
            self.conn.commit()
        return {asset_id: value for (asset_id, _, _), value in found.items()}


_EPOCH, _MICRO = datetime(1970, 1, 1, tzinfo=timezone.utc), timedelta(microseconds=1)


def _micros(moment: datetime) -> int:
    return (moment - _EPOCH) // _MICRO


def _newest(stored, remembered, before: datetime):
    candidates = [c for c in (stored, remembered) if c is not None and c[0] < before]
    return max(candidates, key=lambda c: c[0]) if candidates else None


def _rejection(hard: dict, raw) -> tuple:
    reason = "; ".join(f"{rule}: {message}" for rule, message in hard.items())
    return f"implausible: {reason}", {rule: [message] for rule, message in hard.items()}, raw
