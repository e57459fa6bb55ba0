"""The figures of a soak report (soak.py's JSON) that the README quotes:

    python -m tests.benchmarks.soak_summary tests/benchmarks/results/soak-<time>.json

per day of data at steady state (rows and bytes written), the database and each table at chosen days, the
flatness of the database from the end of the retention window on (overall, and at the same point of the
drop cycle), and maintenance time per day of data. Sizes are pg_database_size and
pg_total_relation_size (heap + TOAST + indexes), read after each simulated day's last maintenance run.
"""
from __future__ import annotations

import json
import statistics
import sys

MB = 1_000_000


def band(values: dict) -> dict:
    """min, max, mean (MB) and how far the extremes lie from the mean, of {day: bytes}."""
    if not values:
        return {}
    low, high, mean = min(values.values()), max(values.values()), statistics.mean(values.values())
    return {"days": f"{min(values)}-{max(values)}", "min": round(low / MB), "max": round(high / MB),
            "mean": round(mean / MB), "max_over_min": round(high / low, 3),
            "within_pct_of_mean": round(100 * max(high - mean, mean - low) / mean, 1)}


def summary(report: dict) -> dict:
    days = report["per_day"]
    retention = report["retention_raw_days"]
    by_day = {d["day"]: d for d in days}
    size = {d["day"]: d["sizes"] for d in days}
    drops = [d["day"] for d in days if d["maintenance"].get("partitions_dropped")]
    last = days[-1]["day"]
    # From the end of the retention window on: the first drop (raw rows are kept RETENTION_RAW_DAYS and
    # expire a whole partition at a time: a day, or a week in the soaks before migration 0008).
    steady = [day for day in size if drops and day >= drops[0]]
    db = {day: size[day]["database"] for day in steady}
    not_candles = {day: size[day]["database"] - size[day]["candles"] for day in steady}
    # growth of one day of data before anything expires (day 2 minus day 1: no first-day catalog cost)
    per_day_quotes = size[2]["quotes"] - size[1]["quotes"]
    per_day_pages = size[2]["raw_pages"] - size[1]["raw_pages"]
    after_drop = [day for day in drops if day >= retention]
    candle_growth = ((size[last]["candles"] - size[after_drop[0]]["candles"]) / (last - after_drop[0])
                     if after_drop and last > after_drop[0] else None)
    rolled = sum(d["maintenance"].get("quotes_rolled_up", 0) for d in days)
    maint = sum(d["maintenance_seconds"] for d in days)
    data_days_rolled = rolled / 864_000
    return {
        "mode": report["mode"], "days": last, "retention_raw_days": retention, "start": report["start"],
        "end": report["end"], "soak_seconds": report.get("soak_seconds"),
        "load_seconds_per_day_median": statistics.median(d["load_seconds"] for d in days),
        "written_per_day": {"quote_rows": size[2]["rows"]["quotes"] - size[1]["rows"]["quotes"],
                            "quotes_mb": round(per_day_quotes / MB, 1), "raw_pages_mb": round(per_day_pages / MB, 1)},
        "drop_days": drops,
        "database_mb_from_first_drop": band(db),
        "database_minus_candles_mb_from_first_drop": band(not_candles),
        "after_each_drop_mb": {day: {"database": round(size[day]["database"] / MB),
                                     "quotes": round(size[day]["quotes"] / MB),
                                     "raw_pages": round(size[day]["raw_pages"] / MB),
                                     "candles": round(size[day]["candles"] / MB),
                                     "quote_rows": size[day]["rows"]["quotes"]} for day in drops},
        "candles_mb_per_day_after_first_drop": round(candle_growth / MB, 1) if candle_growth else None,
        "maintenance": {"seconds_total": round(maint, 1), "quotes_rolled_up": rolled,
                        "quotes_compacted": sum(d["maintenance"].get("quotes_compacted", 0) for d in days),
                        "seconds_per_day_of_data_rolled_up": round(maint / data_days_rolled, 1) if rolled else None,
                        "drop_days_seconds": {day: by_day[day]["maintenance_seconds"] for day in drops},
                        "other_days_seconds_median": statistics.median(
                            [d["maintenance_seconds"] for d in days if d["day"] not in drops] or [0])},
        "end_sizes_mb": {k: round(v / MB) for k, v in size[last].items() if isinstance(v, int)},
        "end_rows": size[last]["rows"],
    }


def main(argv=None) -> int:
    path = (argv or sys.argv[1:])[0]
    with open(path) as f:
        print(json.dumps(summary(json.load(f)), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
