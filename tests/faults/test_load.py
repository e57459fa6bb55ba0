"""A bounded load test on loopback: 20 s at 24 keep-alive connections against /api/v1/data served by
gunicorn (2 workers x 8 threads), while real workers ingest 1,000 coins from each API source.

Invariants: zero errors (every answer a 200 with a well-formed page) during the ingestion, and afterwards
every row ingested is there, read back through the API by walking its cursor, equal to the upstream's.
"""
from __future__ import annotations

import random
import statistics
import threading
import time
from datetime import datetime, timezone
from decimal import Decimal

import pytest
import requests

from conftest import wait_for
from fake_upstream import gecko_coin

from .conftest import AUTH
from .helpers import finished

pytestmark = pytest.mark.worker
CONNECTIONS, SECONDS, COINS = 24, 20.0, 1000


def _walk(base: str) -> list[dict]:
    """Every row of /api/v1/data, by cursor."""
    rows, url = [], f"{base}/api/v1/data?page_size=100"
    while True:
        page = requests.get(url, timeout=30).json()
        rows += page["data"]
        cursor = page["metadata"]["next_cursor"]
        if not cursor:
            return rows
        url = f"{base}/api/v1/data?page_size=100&cursor={cursor}"


def test_reads_under_load_while_ingesting_make_no_errors_and_lose_no_row(
        live_api, start_worker, fake_upstream, db_conn, report):
    fake_upstream.set_coins(COINS)
    fake_upstream.latency = 0.4                         # a slow upstream: the ingestion spans the load
    env = fake_upstream.env(COINGECKO_PER_PAGE=50, COINGECKO_MAX_PAGES=30, COINGECKO_RATE_PER_MINUTE=6000,
                            COINPAPRIKA_RATE_PER_MINUTE=6000)
    w = start_worker(env, concurrency=2)
    base = live_api(workers=2, threads=8)

    latencies: list[float] = []
    errors: list[str] = []
    counts = {"requests": 0, "rows": 0}
    lock = threading.Lock()
    stop = time.monotonic() + SECONDS

    def client(seed: int):
        rnd, session = random.Random(seed), requests.Session()
        cursor = None
        while time.monotonic() < stop:
            kind = rnd.random()
            walking = 0.4 <= kind < 0.7
            if kind < 0.4:
                url = f"{base}/api/v1/data?page={rnd.randint(1, 20)}&page_size=100"
            elif kind < 0.7:
                url = f"{base}/api/v1/data?page_size=100" + (f"&cursor={cursor}" if cursor else "")
            elif kind < 0.85:
                url = f"{base}/api/v1/data?symbol=C{rnd.randint(1, COINS)},C{rnd.randint(1, COINS)}"
            else:
                url = f"{base}/api/v1/data?source={rnd.choice(['coingecko', 'coinpaprika'])}&limit=50&offset={rnd.randint(0, 900)}"
            started = time.perf_counter()
            try:
                answer = session.get(url, timeout=15)
                body = answer.json()
                ok = answer.status_code == 200 and isinstance(body.get("data"), list) and "metadata" in body
                problem = None if ok else f"{answer.status_code} {url} {answer.text[:200]}"
            except (requests.RequestException, ValueError) as exc:
                problem, body = f"{exc.__class__.__name__} {url}: {exc}", {}
            elapsed = time.perf_counter() - started
            if walking and not problem:
                cursor = body["metadata"]["next_cursor"]          # walk on; None starts over
            with lock:
                counts["requests"] += 1
                latencies.append(elapsed)
                if problem:
                    errors.append(problem)
                else:
                    counts["rows"] += len(body["data"])
        session.close()

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(CONNECTIONS)]
    load_started, load_from = time.monotonic(), datetime.now(timezone.utc)
    for t in threads:
        t.start()
    for source in ("coingecko", "coinpaprika"):        # the ingestion starts with the load, through the API
        answer = requests.post(f"{base}/api/v1/runs", json={"source": source}, headers=AUTH, timeout=10)
        assert answer.status_code == 202, answer.text
    for t in threads:
        t.join(timeout=SECONDS + 30)
    assert not [t for t in threads if t.is_alive()]
    load_seconds, load_to = time.monotonic() - load_started, datetime.now(timezone.utc)

    done = wait_for(finished(db_conn, count=2), timeout=120, message=f"the ingestion to finish: {w.log_tail()}")
    assert [r["status"] for r in done] == ["succeeded", "succeeded"], done
    with db_conn.cursor() as cur:
        cur.execute("SELECT source, started_at, finished_at FROM etl_runs")
        spans = cur.fetchall()
    # both ingestions ran while the load did (the same clock: one machine)
    assert all(started < load_to and ended > load_from for _, started, ended in spans), (spans, load_from, load_to)
    assert errors == [], errors[:10]

    served = _walk(base)
    assert len(served) == 2 * COINS
    by_key = {(row["slug"], row["source"]): Decimal(row["price_usd"]) for row in served}
    assert len(by_key) == 2 * COINS                     # every row once
    for i in range(1, COINS + 1):
        price = Decimal(str(gecko_coin(i)["current_price"]))
        assert by_key[(f"coin-{i}", "coingecko")] == price
        assert by_key[(f"coin-{i}", "coinpaprika")] == price
    with db_conn.cursor() as cur:
        cur.execute("SELECT count(*), count(DISTINCT (asset_id, source)) FROM quotes")
        assert cur.fetchone() == (2 * COINS, 2 * COINS)

    ordered = sorted(latencies)
    report("requests", counts["requests"])
    report("errors", len(errors))
    report("requests per second", round(counts["requests"] / load_seconds, 1))
    report("latency ms p50/p95/p99/max", tuple(round(1000 * x, 1) for x in (
        statistics.median(ordered), ordered[int(0.95 * len(ordered))], ordered[int(0.99 * len(ordered))],
        ordered[-1])))
    report("rows served during load", counts["rows"])
    report("rows present after", len(served))
    report("ingestion seconds (gecko, paprika)", tuple(round((e - s).total_seconds(), 1) for _, s, e in sorted(spans)))
