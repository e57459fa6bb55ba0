"""The plausibility rules (plausibility.py) on a chunk read column-wise (columnar.py): a float64 screen with a
wide margin finds every row that COULD trip a rule (1e-9 relative; values below 1e-290, where binary floats
lose precision, always count); those rows, and only those, go through the row path's rule functions on exact
Decimals, so a flag or a quarantine never depends on binary rounding. price_jump with severity hard (a
quarantined row is no one's previous) runs the row path's sequential check when any row is suspect.
"""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from decimal import Decimal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .plausibility import _newest, _rejection, price_jump

_MARGIN = 1e-9
_TINY = 1e-290
_EPOCH, _MICRO = datetime(1970, 1, 1, tzinfo=timezone.utc), timedelta(microseconds=1)


def _micros(moment: datetime) -> int:
    return (moment - _EPOCH) // _MICRO


def _floats(arr: pa.Array) -> np.ndarray:
    try:
        return pc.cast(arr, pa.float64()).to_numpy(zero_copy_only=False)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return np.array([np.nan if v is None else float(v) for v in arr.to_pylist()], dtype=np.float64)


def _may_exceed(a, b):
    """a > b might hold (a, b >= 0, NaN = missing counts as not comparable -> False)."""
    with np.errstate(invalid="ignore", over="ignore"):
        return (a >= b * (1 - _MARGIN)) | _tiny(a) | _tiny(b)


def _tiny(x):
    with np.errstate(invalid="ignore"):
        return x < _TINY


def plausible(checks, columns, assets, observed, micros, flags, rows_idx, block, rel, locator, rejections,
               quality, dataset_id) -> np.ndarray:
    count = len(rows_idx)
    f = {name: _floats(columns[name]) for name in ("price_usd", "open_usd", "high_usd", "low_usd",
                                                     "market_cap_usd", "circulating_supply")}
    present = {name: ~np.isnan(v) for name, v in f.items()}
    rules = {rule for rule, _, _ in checks._rules}
    suspect = np.zeros(count, dtype=bool)
    if "ohlc_order" in rules:
        hi, lo, op, cl = f["high_usd"], f["low_usd"], f["open_usd"], f["price_usd"]
        both = present["high_usd"] & present["low_usd"]
        suspect |= both & _may_exceed(lo, hi)
        for value, name in ((op, "open_usd"), (cl, "price_usd")):
            suspect |= present[name] & present["high_usd"] & _may_exceed(value, hi)
            suspect |= present[name] & present["low_usd"] & _may_exceed(lo, value)
    if "market_cap_ceiling" in rules:
        ceiling = float(checks.settings.market_cap_ceiling_usd)
        suspect |= present["market_cap_usd"] & _may_exceed(f["market_cap_usd"], np.full(count, ceiling))
    if "market_cap_consistency" in rules:
        mc, p, s = f["market_cap_usd"], f["price_usd"], f["circulating_supply"]
        tol = float(checks.settings.market_cap_tolerance)
        with np.errstate(invalid="ignore", over="ignore"):
            implied = p * s
            clear = np.abs(mc - implied) < tol * implied - _MARGIN * (np.abs(mc) + np.abs(implied))
        all3 = present["market_cap_usd"] & present["price_usd"] & present["circulating_supply"]
        suspect |= all3 & (~clear | _tiny(mc) | _tiny(p) | _tiny(s))
    now = checks.clock()
    if "future_time" in rules:
        limit = now.timestamp() + checks.settings.clock_skew_seconds
        suspect |= micros > int((limit - 1) * 1_000_000)
    keep = np.ones(count, dtype=bool)
    for k in np.flatnonzero(suspect).tolist():
        clean = _clean(columns, k, observed[k])
        hard, soft = checks._row_rules(clean, now)
        if hard:
            quality.update(f"hard:{rule}" for rule in hard)
            reason, errors, _ = _rejection(hard, None)
            rejections.append((reason, errors, block.record(int(rows_idx[k]), rel), locator))
            keep[k] = False
        elif soft:
            flags.setdefault(k, []).extend(soft)
    if checks.severity["price_jump"] != "off":
        _price_jumps(checks, columns, f["price_usd"], assets, observed, micros, flags, keep, rows_idx, block, rel,
                     locator, rejections, quality, dataset_id)
    return keep


def _clean(columns, k, observed_at) -> dict:
    clean = {}
    for field, arr in columns.items():
        text = arr[k].as_py()
        clean[field] = None if text is None else (int(text) if field == "market_cap_rank" else Decimal(text))
    clean["observed_at"] = observed_at
    return clean


def _price_jumps(checks, columns, price, assets, observed, micros, flags, keep, rows_idx, block, rel, locator,
                 rejections, quality, dataset_id) -> None:
    factor = checks.settings.price_jump_factor
    hard = checks.severity["price_jump"] == "hard"
    live = np.flatnonzero(keep)
    if not live.size:
        return
    stamps = micros[live]
    order = live[np.lexsort((stamps, assets[live]))]            # by asset, then time; stable
    group_assets = assets[order]
    starts = np.flatnonzero(np.r_[True, group_assets[1:] != group_assets[:-1]])
    first_seen = {int(group_assets[s]): observed[int(order[s])] for s in starts.tolist()}
    stored = checks._stored_before(dataset_id, first_seen)
    previous = np.r_[np.nan, price[order][:-1]]
    previous_exact, first_previous = {}, {}
    for s in starts.tolist():
        asset = int(group_assets[s])
        first = observed[int(order[s])]
        prev = _newest(stored.get(asset), checks.remembered((dataset_id, asset), first), first)
        first_previous[s] = prev
        previous_exact[s] = prev[1] if prev else None
        previous[s] = float(prev[1]) if prev else np.nan
    current = price[order]
    ff = float(factor)
    with np.errstate(invalid="ignore", over="ignore"):
        clear = (current < previous * ff * (1 - _MARGIN)) & (previous < current * ff * (1 - _MARGIN))
    has_previous = ~np.isnan(previous)
    suspect = has_previous & (~clear | _tiny(current) | _tiny(previous))
    start_set = set(starts.tolist())
    if hard and suspect.any():
        _price_jumps_by_row(checks, columns, assets, observed, flags, keep, order, starts, previous_exact,
                            rows_idx, block, rel, locator, rejections, quality, dataset_id, first_previous)
        return
    for p in np.flatnonzero(suspect).tolist():
        k = int(order[p])
        prev = previous_exact[p] if p in start_set else Decimal(columns["price_usd"][int(order[p - 1])].as_py())
        if price_jump(Decimal(columns["price_usd"][k].as_py()), prev, factor):
            flags.setdefault(k, []).append("price_jump")
    _remember(checks, columns, group_assets, order, starts, observed, micros, dataset_id)


def _remember(checks, columns, group_assets, order, starts, observed, micros, dataset_id) -> None:
    """PlausibilityCheck.remember of the rows of this batch (all kept: price_jump is soft here)."""
    prices = columns["price_usd"].take(pa.array(order, pa.int64())).to_pylist()
    times = micros[order].tolist()
    bounds = starts.tolist() + [order.size]
    accepted = {}
    for g in range(len(bounds) - 1):
        s, e = bounds[g], bounds[g + 1]
        accepted[(dataset_id, int(group_assets[s]))] = [(times[p], prices[p], observed[int(order[p])])
                                                        for p in range(s, e)]
    checks.remember(accepted)


def _price_jumps_by_row(checks, columns, assets, observed, flags, keep, order, starts, previous_exact, rows_idx,
                        block, rel, locator, rejections, quality, dataset_id, first_previous) -> None:
    """price_jump with severity hard: the row path's sequential rule (a quarantined row is no one's previous)."""
    factor = checks.settings.price_jump_factor
    bounds = list(starts.tolist()) + [order.size]
    accepted = {}
    for g in range(len(bounds) - 1):
        s = bounds[g]
        previous = first_previous[s]
        key = (dataset_id, int(assets[int(order[s])]))
        for p in range(s, bounds[g + 1]):
            k = int(order[p])
            value = Decimal(columns["price_usd"][k].as_py())
            message = price_jump(value, previous[1] if previous else None, factor)
            if message:
                quality["hard:price_jump"] += 1
                reason, errors, _ = _rejection({"price_jump": message}, None)
                rejections.append((reason, errors, block.record(int(rows_idx[k]), rel), locator))
                keep[k] = False
                continue
            previous = (observed[k], value)
            accepted.setdefault(key, []).append((_micros(observed[k]), value, observed[k]))
    checks.remember(accepted)
