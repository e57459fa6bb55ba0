"""Two bench runs side by side (e.g. 1M and 10M rows): every line's throughput, p99 and peak RSS at both
sizes and how much slower the bigger run is, as a Markdown table (the README's Performance tables).

    python -m tests.benchmarks.compare bench-results/<1M run>.json bench-results/<10M run>.json
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from .report import _n

INGEST = (("copy_floor", "raw COPY floor"), ("upsert_floor", "COPY + upsert floor"),
          ("cli", "`flask etl import`"), ("reingest_1pct", "re-ingest, 1% of rows changed"))


def lines(result: dict) -> dict:
    """{line name: (label, throughput, unit, p99 ms, peak RSS MB, note)} of one bench JSON."""
    out = {}
    ingest = result.get("ingest", {})
    for key, label in INGEST:
        r = ingest.get(key)
        if r and r.get("rows_per_s"):
            out[key] = (label, r["rows_per_s"], "rows/s", None, r.get("peak_rss_mb"), r.get("busy_cores"))
    for r in ingest.get("celery", []):
        out[f"celery_{r['workers']}"] = (f"Celery, {r['workers']} worker(s)", r["rows_per_s"], "rows/s", None,
                                         r.get("peak_rss_mb"), r.get("busy_cores"))
    for t in result.get("reads", {}).get("targets", []):
        http = t.get("http") or {}
        if http.get("requests_per_s"):
            out[t["name"]] = (t.get("label") or t["name"], http["requests_per_s"], "req/s", http.get("p99_ms"),
                              None, None)
    return out


def table(small: dict, big: dict) -> str:
    a, b = lines(small), lines(big)
    rows_a, rows_b = small["params"]["rows"], big["params"]["rows"]
    head = (f"| line | {_n(rows_a)} rows | {_n(rows_b)} rows | {_n(rows_b)} vs {_n(rows_a)} |\n"
            "| --- | --- | --- | --- |")
    body = []
    for name, (label, x, unit, p99a, rss_a, _) in a.items():
        if name not in b:
            body.append(f"| {label} | {_n(x)} {unit} | not measured | |")
            continue
        _, y, _, p99b, rss_b, _ = b[name]
        extra_a = f", p99 {_n(p99a, 1)} ms" if p99a is not None else (f", {_n(rss_a)} MB" if rss_a else "")
        extra_b = f", p99 {_n(p99b, 1)} ms" if p99b is not None else (f", {_n(rss_b)} MB" if rss_b else "")
        factor = x / y if y else None
        verdict = ("" if factor is None else "same" if 0.95 <= factor <= 1.05 else
                   f"{factor:.2f}× slower" if factor > 1 else f"{1 / factor:.2f}× faster")
        body.append(f"| {label} | {_n(x)} {unit}{extra_a} | {_n(y)} {unit}{extra_b} | {verdict} |")
    return "\n".join([head, *body])


def main(argv=None) -> int:
    args = argv if argv is not None else sys.argv[1:]
    if len(args) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    small, big = (json.loads(Path(p).read_text()) for p in args)
    print(table(small, big))
    return 0


if __name__ == "__main__":
    sys.exit(main())
