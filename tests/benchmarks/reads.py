"""Reads: gunicorn (as the Procfile starts it) under a 32-connection load, next to the bare SQL behind each
request (the floor), and the SQL the API actually issues for it (captured in-process).

The list endpoint serves the latest quote per (asset, source); a history CSV of 1M rows yields only a few
thousand of those. So that "page 10,000" exists and /api/v1/stats has a table worth counting, the
benchmark pads latest_quotes to `list_rows` rows with synthetic assets (set-based SQL, deterministic,
spread over the three sources; `pad_latest`). The report says how many rows were ingested and padded.
"""
from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import quote

from .procs import BIN, ROOT, Children, connect, free_port, libpq, log, scalar

PAGE = 100
DEEP_PAGE = 10_000
REQUEST_TIMEOUT = 120      # seconds the load generator waits for one response (then counts an error)
SLOW_SECONDS = 0.2         # a floor statement slower than this gets fewer runs, no pgbench, no HTTP warm-up
SOURCES = ("coingecko", "coinpaprika", "csv")
VALUE_COLUMNS = ("price_usd", "open_usd", "high_usd", "low_usd", "market_cap_usd", "volume_24h_usd",
                 "circulating_supply", "total_supply", "max_supply", "market_cap_rank", "change_24h_pct")

# -- the bare SQL behind each request (as crypto_app/api/*.py builds it; written out so the floor stays
#    the same reference while the product changes) -----------------------------------------------------
SORT = "coalesce(lq.market_cap_usd, -1)"
ROW_COLUMNS = ("lq.asset_id, a.slug, a.symbol, a.name, lq.source, "
               + ", ".join(f"lq.{c}" for c in VALUE_COLUMNS)
               + f", lq.observed_at, lq.fetched_at, lq.run_id, {SORT} AS sort_key")
FROM = "FROM latest_quotes lq JOIN assets a ON a.id = lq.asset_id"
ORDER = f"ORDER BY {SORT} DESC, lq.asset_id, lq.source"


def page_sql(where: str = "", offset: int = 0, limit: int = PAGE + 1) -> str:
    return f"SELECT {ROW_COLUMNS} {FROM} {where} {ORDER} LIMIT {limit} OFFSET {offset}"


def cursor_sql(cur, sort_key, asset_id: int, source: str, limit: int = PAGE + 1) -> str:
    """The keyset page after (sort_key, asset_id, source): two index range scans, merged (data.after_cursor)."""
    return cur.mogrify(f"""
        SELECT * FROM (
            (SELECT {ROW_COLUMNS} {FROM} WHERE {SORT} = %(v)s AND (lq.asset_id, lq.source) > (%(id)s, %(src)s)
             ORDER BY lq.asset_id, lq.source LIMIT {limit})
            UNION ALL
            (SELECT {ROW_COLUMNS} {FROM} WHERE {SORT} < %(v)s {ORDER} LIMIT {limit})
        ) page ORDER BY sort_key DESC, asset_id, source LIMIT {limit}""",
                       {"v": sort_key, "id": asset_id, "src": source}).decode()


CANDLES_SQL = """
    SELECT source, date_bin(%(step)s::interval, observed_at, TIMESTAMPTZ '2000-01-03 00:00:00+00') AS bucket,
           (array_agg(price_usd ORDER BY observed_at))[1] AS open, max(price_usd) AS high, min(price_usd) AS low,
           (array_agg(price_usd ORDER BY observed_at DESC))[1] AS close,
           (array_agg(market_cap_usd ORDER BY observed_at DESC))[1] AS market_cap_usd,
           (array_agg(volume_24h_usd ORDER BY observed_at DESC))[1] AS volume_24h_usd, count(*) AS samples
    FROM quotes WHERE asset_id = %(asset_id)s AND observed_at >= %(since)s AND observed_at <= %(until)s
    GROUP BY source, bucket ORDER BY bucket, source LIMIT 1001"""
STATS_SQL = ["""
    SELECT source, status, count(*) AS runs, coalesce(sum(fetched), 0), coalesce(sum(loaded), 0),
           coalesce(sum(rejected), 0), count(duration_seconds), coalesce(sum(duration_seconds), 0),
           max(coalesce(finished_at, created_at)) FROM etl_runs GROUP BY source, status""",
             "SELECT source, count(*) AS quotes, max(observed_at) AS newest FROM latest_quotes GROUP BY source"]
HEALTH_SQL = ["""
    SELECT s.source, ok.finished_at, last.status, last.created_at, last.error, first.created_at, recent.statuses, h.id
    FROM unnest(ARRAY['coingecko','coinpaprika','csv'], CAST(ARRAY[NULL, NULL, NULL] AS uuid[])) AS s(source, holder)
    LEFT JOIN LATERAL (SELECT finished_at FROM etl_runs r WHERE r.source = s.source
                       AND r.status IN ('succeeded', 'partial') ORDER BY r.created_at DESC LIMIT 1) ok ON true
    LEFT JOIN LATERAL (SELECT status, created_at, error FROM etl_runs r WHERE r.source = s.source
                       ORDER BY r.created_at DESC LIMIT 1) last ON true
    LEFT JOIN LATERAL (SELECT created_at FROM etl_runs r WHERE r.source = s.source
                       ORDER BY r.created_at LIMIT 1) first ON true
    LEFT JOIN LATERAL (SELECT array_agg(status) AS statuses FROM (SELECT status FROM etl_runs r
                       WHERE r.source = s.source AND r.status IN ('succeeded', 'partial', 'failed')
                       ORDER BY r.created_at DESC LIMIT 3) x) recent ON true
    LEFT JOIN etl_runs h ON h.id = s.holder"""]


# -- padding the list -----------------------------------------------------------------------------------

def pad_latest(db_url: str, list_rows: int) -> dict:
    """Add synthetic assets (3 sources each) until latest_quotes has `list_rows` rows; VACUUM ANALYZE."""
    conn = connect(db_url)
    try:
        ingested = scalar(conn, "SELECT count(*) FROM latest_quotes")
        missing = max(0, list_rows - ingested)
        started = time.perf_counter()
        if missing:
            assets = -(-missing // len(SOURCES))
            log(f"padding latest_quotes from {ingested:,} to {list_rows:,} rows ({assets:,} synthetic assets)")
            with conn.cursor() as cur:
                cur.execute("BEGIN")
                cur.execute("""
                    INSERT INTO assets (slug, symbol, name)
                    SELECT 'bench-pad-' || g, 'PAD' || g, 'Bench Pad ' || g FROM generate_series(1, %s) g""",
                            (assets,))
                cur.execute("""
                    CREATE TEMP TABLE pad ON COMMIT DROP AS
                    SELECT a.id AS asset_id, a.slug, a.symbol, a.name, s.source,
                           (hashtext(a.slug || s.source) & 2147483647)::float8 / 2147483647 AS u,
                           (hashtext(s.source || a.slug) & 2147483647)::float8 / 2147483647 AS w
                    FROM assets a CROSS JOIN unnest(%s::text[]) WITH ORDINALITY AS s(source, n)
                    WHERE a.slug LIKE 'bench-pad-%%'
                    ORDER BY a.id, s.n LIMIT %s""", (list(SOURCES), missing))
                cur.execute("""
                    INSERT INTO asset_identifiers (source, external_id, asset_id, symbol, name)
                    SELECT source, slug, asset_id, symbol, name FROM pad""")
                cur.execute("""
                    INSERT INTO latest_quotes (asset_id, source, price_usd, open_usd, high_usd, low_usd, market_cap_usd,
                        volume_24h_usd, circulating_supply, market_cap_rank, observed_at, fetched_at, run_id,
                        payload_hash)
                    SELECT asset_id, source, p, p * 0.99, p * 1.02, p * 0.97,
                           CASE WHEN w < 0.05 THEN NULL ELSE round((p * supply)::numeric, 2) END,
                           round((p * supply * 0.05)::numeric, 2), round(supply::numeric),
                           NULL, TIMESTAMPTZ '2024-12-31 23:59:59+00' - make_interval(mins => (w * 1440)::int),
                           now(), '00000000-0000-0000-0000-00000000bec4', 'bench-pad'
                    FROM (SELECT *, round((10 ^ (u * 9 - 6))::numeric, 8) + 0.00000001 AS p,
                                 10 ^ (6 + w * 5) AS supply FROM pad) x""")
                cur.execute("COMMIT")
        padded_seconds = time.perf_counter() - started
        total = scalar(conn, "SELECT count(*) FROM latest_quotes")
    finally:
        conn.close()
    vacuum_analyze(db_url)
    return {"latest_rows_ingested": ingested, "latest_rows_padded": missing, "latest_rows": total,
            "pad_seconds": round(padded_seconds, 1)}


VACUUMED = ("assets", "asset_identifiers", "latest_quotes", "quotes", "etl_runs")


def vacuum_analyze(db_url: str, tables=VACUUMED) -> float:
    """VACUUM ANALYZE of the tables the reads use (autovacuum may be off or behind); returns the seconds."""
    log(f"VACUUM ANALYZE of {', '.join(tables)}")
    started = time.perf_counter()
    conn = connect(db_url)
    try:
        with conn.cursor() as cur:
            for table in tables:
                cur.execute(f"VACUUM ANALYZE {table}")
    finally:
        conn.close()
    return round(time.perf_counter() - started, 1)


# -- the SQL floors ---------------------------------------------------------------------------------------

def time_sql(db_url: str, statements: list[str], runs: int, max_seconds: float = 3.0) -> dict:
    """Median (and p99-ish max) latency of running `statements` in a row on one connection."""
    conn = connect(db_url)
    samples = []
    try:
        with conn.cursor() as cur:
            started = time.perf_counter()
            for statement in statements:        # warm the cache and the plan
                cur.execute(statement)
                cur.fetchall()
            if time.perf_counter() - started > SLOW_SECONDS:
                runs = 3                        # a slow statement: three runs tell enough
            deadline = time.perf_counter() + max_seconds
            while len(samples) < runs and (len(samples) < 5 or time.perf_counter() < deadline):
                started = time.perf_counter()
                for statement in statements:
                    cur.execute(statement)
                    cur.fetchall()
                samples.append(time.perf_counter() - started)
    finally:
        conn.close()
    return {"runs": len(samples), "median_ms": round(statistics.median(samples) * 1000, 3),
            "min_ms": round(min(samples) * 1000, 3)}


def find_pgbench() -> str | None:
    candidates = [shutil.which("pgbench")]
    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin/pgbench"), reverse=True)
    try:
        import pgserver

        candidates.append(Path(pgserver.__file__).parent / "pginstall" / "bin" / "pgbench")
    except ImportError:
        pass
    for c in candidates:
        if c and Path(c).exists():
            return str(c)
    return None


def pgbench_qps(pgbench: str | None, db_url: str, statements: list[str], clients: int, seconds: float,
                workdir: Path) -> float | None:
    """Transactions (= one request's statements) per second with `clients` connections, or None."""
    if not pgbench or seconds <= 0:
        return None
    script = workdir / "pgbench.sql"
    script.write_text("".join(" ".join(s.split()) + ";\n" for s in statements))
    try:
        out = subprocess.run([pgbench, "-n", "-c", str(clients), "-j", str(min(clients, os.cpu_count() or 2)),
                              "-T", str(max(1, int(seconds))), "-f", str(script), libpq(db_url)],
                             capture_output=True, text=True, timeout=seconds + 60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.search(r"tps = ([\d.]+) \(without initial connection time\)", out.stdout)
    return round(float(match.group(1)), 1) if match else None


# -- the SQL the API issues, captured in-process ---------------------------------------------------------

class ApiSqlCapture:
    """The Flask app in this process, with a hook on its engine: which statements does a request run?"""

    def __init__(self, env: dict):
        from sqlalchemy import event

        from crypto_app import create_app
        from crypto_app.config import load_settings
        from crypto_app.extensions import db

        self.app = create_app(settings=load_settings({**env, "LOG_LEVEL": "ERROR"}))
        self.client = self.app.test_client()
        with self.app.app_context():
            self.engine = db.engine
        self.captured: list = []
        event.listen(self.engine, "before_cursor_execute",
                     lambda conn, cursor, statement, params, context, many: self.captured.append((statement, params)))
        versions = getattr(self.app.extensions.get("cryptoflow_read_cache"), "versions", None)
        if versions is not None and hasattr(versions, "query"):  # statements run on the read connection
            run_on_read_connection = versions.query

            def query(statement, params):
                self.captured.append((statement, params))
                return run_on_read_connection(statement, params)

            versions.query = query

    def statements(self, path: str) -> tuple[int, list, float]:
        """Status, statements and time of the first request of `path` in this process (a cache miss)."""
        self.captured.clear()
        started = time.perf_counter()
        response = self.client.get(path)
        elapsed = time.perf_counter() - started
        return response.status_code, list(self.captured), round(elapsed * 1000, 3)

    def request_ms(self, path: str, runs: int, max_seconds: float = 3.0) -> float:
        """Median time of the whole request in this process (no network, no concurrency): the app's own cost."""
        samples = []
        deadline = time.perf_counter() + max_seconds
        while len(samples) < runs and (len(samples) < 3 or time.perf_counter() < deadline):
            started = time.perf_counter()
            self.client.get(path)
            samples.append(time.perf_counter() - started)
        return round(statistics.median(samples) * 1000, 3)

    def time(self, statements: list, runs: int, max_seconds: float = 3.0) -> dict:
        timed = [(s, p) for s, p in statements if not s.lstrip().upper().startswith(("SET ", "SHOW "))]
        out = []
        with self.engine.connect() as conn:
            for statement, params in timed:
                samples = []
                deadline = time.perf_counter() + max_seconds / max(1, len(timed))
                while len(samples) < runs and (len(samples) < 3 or time.perf_counter() < deadline):
                    started = time.perf_counter()
                    conn.exec_driver_sql(statement, params).fetchall()
                    samples.append(time.perf_counter() - started)
                conn.rollback()
                out.append({"sql": " ".join(statement.split())[:300], "median_ms": round(statistics.median(samples) * 1000, 3),
                            "counts": bool(re.search(r"\bcount\s*\(", statement, re.I))})
        return {"statements": len(timed), "median_ms_total": round(sum(s["median_ms"] for s in out), 3),
                "count_queries": sum(1 for s in out if s["counts"]), "detail": out}


# -- gunicorn and the load generator -----------------------------------------------------------------------

def start_gunicorn(children: Children, env: dict, workdir: Path, log_level: str) -> tuple[object, int]:
    port = free_port()
    prom = workdir / "prometheus"
    prom.mkdir(exist_ok=True)
    genv = {**env, "PORT": str(port), "LOG_LEVEL": log_level, "PROMETHEUS_MULTIPROC_DIR": str(prom)}
    cmd = [str(BIN / "gunicorn"), "-c", "gunicorn.conf.py", "wsgi:app"]
    if _has_control_socket():
        # gunicorn >= 24 listens on ONE control socket per user ($HOME/.gunicorn/gunicorn.ctl): the last master
        # started owns it, and anyone's `shutdown` through it would stop ours. Ours gets its own.
        cmd += ["--control-socket", str(workdir / "gunicorn.ctl")]
    child = children.start(f"gunicorn-{port}", cmd, genv)
    deadline = time.monotonic() + 60
    while True:
        if child.poll() is not None:
            raise RuntimeError(f"gunicorn exited with {child.proc.returncode}:\n{child.log_tail()}")
        try:
            status, _, _ = http_get(port, "/health/live", timeout=2)
            if status == 200:
                break
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"gunicorn did not answer /health/live within 60s:\n{child.log_tail()}")
        time.sleep(0.2)
    log(f"gunicorn up on port {port} (pid {child.pid})")
    return child, port


def _has_control_socket() -> bool:
    try:
        from gunicorn.config import KNOWN_SETTINGS
    except ImportError:
        return False
    return any(getattr(setting, "name", None) == "control_socket" for setting in KNOWN_SETTINGS)


def http_get(port: int, path: str, headers: dict | None = None, timeout: float = 30) -> tuple[int, dict, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path, headers=headers or {})
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


def loadgen(port: int, urls: list[str], connections: int, duration: float, workdir: Path, name: str,
            conditional: bool = False, shuffle: bool = False, warmup_urls: list[str] | None = None,
            warmup: float | None = None) -> dict:
    urls_file = workdir / f"urls-{name}.txt"
    urls_file.write_text("\n".join(urls) + "\n")
    cmd = [sys.executable, "-m", "tests.benchmarks.loadgen", "--port", str(port), "--connections", str(connections),
           "--duration", str(duration), "--urls-file", str(urls_file),
           "--warmup", str(min(2.0, max(0.5, duration / 5)) if warmup is None else warmup),
           "--timeout", str(REQUEST_TIMEOUT)]
    if conditional:
        cmd.append("--conditional")
    if shuffle:
        cmd += ["--shuffle-seed", "42"]
    if warmup_urls:
        warm_file = workdir / f"warmup-{name}.txt"
        warm_file.write_text("\n".join(warmup_urls) + "\n")
        cmd += ["--warmup-urls-file", str(warm_file)]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=duration * 2 + 3 * REQUEST_TIMEOUT + 60)
    if out.returncode != 0:
        raise RuntimeError(f"load generator failed for {name}:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout)


def loadgen_ceiling(children: Children, env: dict, connections: int, duration: float, workdir: Path) -> dict:
    """The load generator against a server that does nothing: what it can measure at most."""
    port = free_port()
    server = children.start("trivial-server", [sys.executable, "-m", "tests.benchmarks.loadgen",
                                               "--serve-trivial", str(port)], env)
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                http_get(port, "/", timeout=1)
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError(f"trivial server did not start:\n{server.log_tail()}")
                time.sleep(0.1)
        return loadgen(port, ["/"], connections, duration, workdir, "ceiling")
    finally:
        server.stop(5)


# -- the targets -------------------------------------------------------------------------------------------

def build_targets(db_url: str, port: int, list_rows: int, dataset) -> tuple[list[dict], dict]:
    """The requests to measure, each with its floor SQL. Also returns facts (deep page, asset, ETag...)."""
    targets, facts = list_targets(db_url, port)
    conn = connect(db_url)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT id FROM assets WHERE slug = 'bitcoin' "
                        "UNION ALL SELECT asset_id FROM quotes GROUP BY asset_id HAVING count(*) >= 365 LIMIT 1")
            asset_id = cur.fetchone()[0]
            facts["history_asset_id"] = asset_id
            since = f"{dataset.last_date.replace(year=dataset.last_date.year - 1).isoformat()}T23:59:59Z"
            until = f"{dataset.last_date.isoformat()}T23:59:59Z"
            history_sql = cur.mogrify(CANDLES_SQL, {"step": "1 day", "asset_id": asset_id, "since": since,
                                                    "until": until}).decode()
    finally:
        conn.close()
    targets += [
        {"name": "history_1y", "label": f"/api/v1/assets/{asset_id}/history 1 year, 1d candles",
         "urls": [f"/api/v1/assets/{asset_id}/history?interval=1d&since={quote(since)}&until={quote(until)}"],
         "sql": [history_sql]},
        *service_targets(),
    ]
    return targets, facts


def service_targets() -> list[dict]:
    """/api/v1/stats and /health, with their floors."""
    return [
        {"name": "stats", "label": "/api/v1/stats", "urls": ["/api/v1/stats"], "sql": STATS_SQL},
        {"name": "health", "label": "/health (report cached 1 s per process: DB + Redis, worker heartbeats)",
         "urls": ["/health"], "sql": HEALTH_SQL},
    ]


def list_targets(db_url: str, port: int) -> tuple[list[dict], dict]:
    """/health/live and the /api/v1/data lines (first page, 304, distinct pages, filters, deep pages), each
    with its floor SQL; facts: the deep page, the list's rows, the ETag. A line the data cannot give (no
    page 2 to reach by cursor) is left out."""
    conn = connect(db_url)
    facts = {}
    try:
        with conn.cursor() as cur:
            total = scalar(conn, "SELECT count(*) FROM latest_quotes")
            deep = max(1, min(DEEP_PAGE, (total - 1) // PAGE + 1))
            facts.update(deep_page=deep, latest_rows=total)
            deep_cursor_key = None
            if deep > 1:   # the row that ends page deep-1, in the API's order (ties: asset, then dataset id)
                cur.execute(f"SELECT {SORT}, lq.asset_id, lq.source, lq.dataset_id {FROM} "
                            f"ORDER BY {SORT} DESC, lq.asset_id, lq.dataset_id OFFSET %s LIMIT 1",
                            ((deep - 1) * PAGE - 1,))
                deep_cursor_key = cur.fetchone()
            deep_sql = cursor_sql(cur, *deep_cursor_key[:3]) if deep_cursor_key else page_sql()
    finally:
        conn.close()

    deep_cursor = _deep_cursor(port, deep_cursor_key, deep) if deep_cursor_key else None
    facts["deep_cursor_source"] = deep_cursor[1] if deep_cursor else None
    status, headers, _ = http_get(port, "/api/v1/data")
    facts["etag"] = "etag" in headers
    facts["cache_control"] = headers.get("cache-control")

    # 40,000 distinct first-page-like URLs: 81-100 rows each, from offsets 0-1,999 (a few index entries to
    # skip), shuffled; the warm-up uses other URLs (limit=80), so no measured request can hit a cache entry
    # unless more than 40,000 requests are made.
    distinct = [f"/api/v1/data?limit={limit}&offset={offset}" for limit in range(81, 101) for offset in range(2000)]
    distinct_warmup = [f"/api/v1/data?limit=80&offset={offset}" for offset in range(2000)]
    targets = [
        {"name": "health_live", "label": "/health/live (gunicorn + Flask, no I/O)", "urls": ["/health/live"],
         "sql": []},
        {"name": "data_first", "label": "/api/v1/data first page", "urls": ["/api/v1/data"], "sql": [page_sql()],
         "target": "first_page"},
    ]
    if facts["etag"]:
        targets.append({"name": "data_first_304", "label": "/api/v1/data first page, If-None-Match",
                        "urls": ["/api/v1/data"], "sql": [page_sql()], "conditional": True})
    targets += [
        {"name": "data_distinct", "label": "/api/v1/data shallow pages, distinct URLs (uncached)",
         "urls": distinct, "sql": [page_sql(offset=1000, limit=91)], "shuffle": True, "warmup_urls": distinct_warmup,
         "note": "limit 81-100 x offset 0-1999 (40,000 URLs), shuffled; warm-up on other URLs; the floor is "
                 "the mean of the mix (offset 1,000, 91 rows)"},
        {"name": "data_symbol", "label": "/api/v1/data?symbol=BTC", "urls": ["/api/v1/data?symbol=BTC"],
         "sql": [page_sql("WHERE lower(a.symbol) IN ('btc')")]},
        {"name": "data_source", "label": "/api/v1/data?source=csv", "urls": ["/api/v1/data?source=csv"],
         "sql": [page_sql("WHERE lq.source IN ('csv')")]},
        {"name": "data_cursor_deep", "label": f"/api/v1/data page {deep:,} by cursor",
         "urls": [f"/api/v1/data?cursor={deep_cursor[0]}"] if deep_cursor else [], "sql": [deep_sql]},
        {"name": "data_offset_deep", "label": f"/api/v1/data page {deep:,} by page/page_size",
         "urls": [f"/api/v1/data?page={deep}&page_size={PAGE}"], "sql": [page_sql(offset=(deep - 1) * PAGE)]},
    ]
    return [t for t in targets if t["urls"]], facts


def _deep_cursor(port: int, key, deep: int) -> tuple[str, str] | None:
    """The cursor of page `deep`: encoded by the API's own encode_cursor from the row that ends page deep-1
    (sort key, asset id, dataset id: `key` is (sort key, asset id, source, dataset id)), checked against the
    same page by page number; else walked with next_cursor (limit=1000)."""
    offset_page = _rows(port, f"/api/v1/data?page={deep}&page_size={PAGE}")
    try:
        from crypto_app.api.pagination import encode_cursor

        cursor = encode_cursor(str(key[0]), key[1], key[3])
        if _rows(port, f"/api/v1/data?cursor={cursor}") == offset_page:
            return cursor, "encode_cursor (checked against the page by number)"
        log("the encoded deep cursor does not give the page by number: walking next_cursor instead")
    except Exception as exc:   # the API changed its cursor helper: walk instead
        log(f"encode_cursor unusable ({exc.__class__.__name__}: {exc}): walking next_cursor instead")
    wanted, seen, cursor = (deep - 1) * PAGE, 0, None
    deadline = time.monotonic() + 300
    while seen < wanted and time.monotonic() < deadline:
        size = min(1000, wanted - seen)
        path = f"/api/v1/data?limit={size}" + (f"&cursor={cursor}" if cursor else "")
        status, _, body = http_get(port, path)
        page = json.loads(body)
        seen += len(page["data"])
        cursor = page["metadata"].get("next_cursor")
        if status != 200 or not cursor:
            break
    if seen == wanted and cursor:
        return cursor, "walked next_cursor"
    log(f"could not reach page {deep} by cursor (walked {seen:,} rows)")
    return None


def _rows(port: int, path: str) -> list:
    status, _, body = http_get(port, path)
    if status != 200:
        return [status]
    return [(r["asset_id"], r["source"]) for r in json.loads(body)["data"]]


def measure_sql(targets: list[dict], db_url: str, env: dict, runs: int, sql_seconds: float, clients: int,
                workdir: Path) -> None:
    """Fill each target's floor (median latency, pgbench q/s) and the API's own statements."""
    pgbench = find_pgbench()
    try:
        capture = ApiSqlCapture(env)
    except Exception as exc:   # noqa: BLE001  the bench still measures HTTP and floors without it
        log(f"in-process capture of the API's SQL unavailable: {exc.__class__.__name__}: {exc}")
        capture = None
    for t in targets:
        if t["sql"]:
            t["floor"] = time_sql(db_url, t["sql"], runs)
            if t["floor"]["median_ms"] / 1000 > SLOW_SECONDS:   # 32 clients would queue for minutes
                t["floor"]["qps"] = round(min(clients, os.cpu_count() or 2) / (t["floor"]["median_ms"] / 1000), 1)
                t["floor"]["qps_note"] = "estimated as cores / median latency (too slow for pgbench at 32 clients)"
            else:
                t["floor"]["qps"] = pgbench_qps(pgbench, db_url, t["sql"], clients, sql_seconds, workdir)
            t["floor"]["sql"] = [" ".join(s.split())[:400] for s in t["sql"]]
        if capture is not None and t["name"] not in ("health_live",):
            try:
                status, statements, first_ms = capture.statements(t["urls"][0])
                t["api_sql"] = {"status": status, **capture.time(statements, max(5, runs // 5)),
                                "in_process_first_ms": first_ms,
                                "in_process_request_ms": capture.request_ms(t["urls"][0], max(5, runs // 5))}
            except Exception as exc:   # noqa: BLE001
                t["api_sql"] = {"error": f"{exc.__class__.__name__}: {exc}"}
        floor = t.get("floor", {})
        log(f"SQL {t['name']}: floor median {floor.get('median_ms')} ms, {floor.get('qps')} q/s at {clients}; "
            f"API issues {t.get('api_sql', {}).get('statements')} statements, "
            f"{t.get('api_sql', {}).get('median_ms_total')} ms; whole request in-process: first "
            f"{t.get('api_sql', {}).get('in_process_first_ms')} ms, repeated {t.get('api_sql', {}).get('in_process_request_ms')} ms")


class Server:
    """The gunicorn under test; restarted (once per line, and noted) if something outside stops it."""

    def __init__(self, children: Children, env: dict, workdir: Path, log_level: str):
        self.children, self.env, self.workdir, self.log_level = children, env, workdir, log_level
        self.restarts: list[str] = []
        self.child, self.port = start_gunicorn(children, env, workdir, log_level)

    def alive(self) -> bool:
        return self.child.poll() is None

    def restart(self, why: str) -> None:
        tail = [line for line in self.child.log_tail(200_000).splitlines() if "signal" in line.lower()][-2:]
        note = f"{time.strftime('%H:%M:%S')} gunicorn (pid {self.child.pid}) was gone {why}: {' / '.join(tail)}"
        log(note + "; restarting it")
        self.restarts.append(note)
        self.child.stop(10)
        self.child, self.port = start_gunicorn(self.children, self.env, self.workdir, self.log_level)

    def stop(self) -> None:
        self.child.stop()


def measure_http(targets: list[dict], server: Server, connections: int, duration: float, workdir: Path) -> None:
    for t in targets:
        # no warm-up for a request whose SQL alone takes seconds: 32 queued requests would take minutes
        slow = (t.get("floor") or {}).get("median_ms", 0) / 1000 > SLOW_SECONDS
        warmup_urls = t.pop("warmup_urls", None)
        for attempt in (1, 2):
            if not server.alive():
                server.restart(f"before {t['name']}")
            t["http"] = loadgen(server.port, t["urls"], connections, duration, workdir, t["name"],
                                conditional=t.get("conditional", False), shuffle=t.get("shuffle", False),
                                warmup_urls=warmup_urls, warmup=0 if slow else None)
            if server.alive() or attempt == 2:
                break
            server.restart(f"after {t['name']} (measured again)")
        if not server.alive():
            raise RuntimeError(f"gunicorn stopped twice while measuring {t['name']}: {server.restarts}")
        h = t["http"]
        log(f"HTTP {t['name']}: {h['requests_per_s']:,} req/s, p50 {h['p50_ms']} ms, p99 {h['p99_ms']} ms, "
            f"errors {h['errors']}, statuses {h['statuses']}")
