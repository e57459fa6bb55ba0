"""Ingestion: the floors (raw COPY; COPY + one set-based upsert) and the project's real ingestion path.

- `flask etl import FILE` (crypto_app/cli.py): the CSV source, validation, identity, COPY + upsert per
  chunk, checkpoints and run bookkeeping, in one process whose peak RSS is read from wait4.
- Through Celery: `flask etl run csv --enqueue` against N worker nodes (`celery -A tasks worker`, as the
  Procfile starts them, one process each); timed from the run's own created_at/finished_at.
"""
from __future__ import annotations

import io
import os
import time
from pathlib import Path

from .procs import BIN, Children, RssSampler, connect, log, scalar

COPY_COLUMNS = "date, symbol, name, open, high, low, close, volume, marketcap"
FLOOR_TABLE = """
CREATE TABLE {name} (
    date timestamptz NOT NULL, symbol text NOT NULL, name text NOT NULL,
    open numeric, high numeric, low numeric, close numeric, volume numeric, marketcap numeric
)"""
# Symbols are shared by several coins: (symbol, name) is the coin, as the product's identity has it.
FLOOR_INDEX = "CREATE UNIQUE INDEX {name}_key ON {name} (symbol, name, date)"
DATA_TABLES = ("rejected_records", "raw_payloads", "raw_pages", "candles", "quotes", "latest_quotes", "dataset_assets", "datasets",
               "asset_identifiers", "assets",
               "checkpoints", "csv_row_hashes")


def _copy_file(cur, table: str, path: Path) -> None:
    with open(path, "rb") as fh:
        cur.copy_expert(f"COPY {table} ({COPY_COLUMNS}) FROM STDIN WITH (FORMAT csv, HEADER true)", fh, size=1 << 20)


def copy_floor(db_url: str, path: Path, rows: int) -> dict:
    """Raw COPY of the file into a plain table with a unique index on (symbol, name, date)."""
    conn = connect(db_url, autocommit=False)
    try:
        with conn.cursor() as cur:
            cur.execute("DROP TABLE IF EXISTS bench_copy_floor")
            cur.execute(FLOOR_TABLE.format(name="bench_copy_floor"))
            cur.execute(FLOOR_INDEX.format(name="bench_copy_floor"))
        conn.commit()
        started = time.perf_counter()
        with conn.cursor() as cur:
            _copy_file(cur, "bench_copy_floor", path)
        conn.commit()
        seconds = time.perf_counter() - started
        loaded = scalar(conn, "SELECT count(*) FROM bench_copy_floor")
        with conn.cursor() as cur:
            cur.execute("DROP TABLE bench_copy_floor")
        conn.commit()
    finally:
        conn.close()
    return {"name": "COPY floor: raw COPY into an indexed table", "rows": loaded, "seconds": round(seconds, 2),
            "rows_per_s": round(rows / seconds)}


def upsert_floor(db_url: str, path: Path, rows: int, chunk_rows: int = 100_000) -> dict:
    """COPY into a staging table plus one set-based upsert per chunk, into an empty indexed table."""
    conn = connect(db_url, autocommit=False)
    try:
        with conn.cursor() as cur:
            cur.execute("DROP TABLE IF EXISTS bench_upsert_floor")
            cur.execute(FLOOR_TABLE.format(name="bench_upsert_floor"))
            cur.execute(FLOOR_INDEX.format(name="bench_upsert_floor"))
            cur.execute("CREATE TEMP TABLE bench_stage (LIKE bench_upsert_floor) ON COMMIT DELETE ROWS")
        conn.commit()
        started = time.perf_counter()
        with open(path, "rb") as fh, conn.cursor() as cur:
            fh.readline()                       # header
            while True:
                lines = fh.readlines(chunk_rows * 110)
                if not lines:
                    break
                cur.copy_expert(f"COPY bench_stage ({COPY_COLUMNS}) FROM STDIN WITH (FORMAT csv)",
                                io.BytesIO(b"".join(lines)))
                cur.execute("""
                    INSERT INTO bench_upsert_floor SELECT DISTINCT ON (symbol, name, date) * FROM bench_stage
                    ON CONFLICT (symbol, name, date) DO UPDATE SET open = EXCLUDED.open, high = EXCLUDED.high,
                        low = EXCLUDED.low, close = EXCLUDED.close, volume = EXCLUDED.volume,
                        marketcap = EXCLUDED.marketcap
                    WHERE (bench_upsert_floor.open, bench_upsert_floor.high, bench_upsert_floor.low,
                           bench_upsert_floor.close, bench_upsert_floor.volume, bench_upsert_floor.marketcap)
                          IS DISTINCT FROM (EXCLUDED.open, EXCLUDED.high, EXCLUDED.low, EXCLUDED.close,
                                            EXCLUDED.volume, EXCLUDED.marketcap)""")
                conn.commit()
        seconds = time.perf_counter() - started
        loaded = scalar(conn, "SELECT count(*) FROM bench_upsert_floor")
        with conn.cursor() as cur:
            cur.execute("DROP TABLE bench_upsert_floor")
        conn.commit()
    finally:
        conn.close()
    return {"name": "COPY to staging + set-based upsert (100k-row chunks)", "rows": loaded,
            "seconds": round(seconds, 2), "rows_per_s": round(rows / seconds)}


# -- the product's ingestion ----------------------------------------------------------------------------

def _last_run(conn) -> dict | None:
    with conn.cursor() as cur:
        cur.execute("SELECT id::text, status, fetched, loaded, rejected, pages, duration_seconds, error, stats, "
                    "extract(epoch FROM finished_at - created_at) FROM etl_runs ORDER BY created_at DESC LIMIT 1")
        row = cur.fetchone()
    if row is None:
        return None
    keys = ("run_id", "status", "fetched", "loaded", "rejected", "pages", "run_seconds", "error", "stats",
            "enqueue_to_finish_seconds")
    out = dict(zip(keys, row))
    stats = out.pop("stats") or {}
    out.update({k: stats.get(k) for k in ("inserted", "updated", "unchanged", "segmented")})
    for k in ("run_seconds", "enqueue_to_finish_seconds"):
        out[k] = None if out[k] is None else round(float(out[k]), 3)
    return out


def cli_import(children: Children, env: dict, db_url: str, path: Path, rows: int, name: str, label: str,
               timeout: float, may_skip: bool = False) -> dict:
    """`flask etl import PATH`: wall time, the run's own duration, peak RSS, and what the run recorded.
    With `may_skip`, the CLI may skip an unchanged file without starting a run (its checkpoint says the file
    was read completely and has not changed): that is reported as status `skipped`, with no run figures."""
    log(f"{label}: flask etl import {path.name} ({rows:,} rows)")
    conn = connect(db_url)
    try:
        before = (_last_run(conn) or {}).get("run_id")
    finally:
        conn.close()
    started, cpu_before = time.perf_counter(), cpu_times()
    child = children.run(name, [str(BIN / "flask"), "--app", "wsgi:app", "etl", "import", str(path)], env, timeout)
    wall = time.perf_counter() - started
    cores = busy_cores(cpu_before)
    conn = connect(db_url)
    try:
        run = _last_run(conn) or {}
        quotes = scalar(conn, "SELECT count(*) FROM quotes")
    finally:
        conn.close()
    if run.get("run_id") == before:        # no new run: never report the previous run's figures as this one's
        skipped = may_skip and "unchanged since its last import" in child.log_tail()
        if not skipped:
            raise RuntimeError(f"{label}: `flask etl import` started no run\n{child.log_tail()}")
        run = {"status": "skipped", "run_seconds": None, "loaded": 0, "rejected": 0}
    result = {"name": label, "rows": rows, "seconds": round(wall, 2), "rows_per_s": round(rows / wall),
              "peak_rss_mb": child.peak_rss_mb(), "quotes_in_db": quotes, "busy_cores": cores, **run}
    if run["status"] == "skipped":         # nothing was read: a rows/s figure would be invented
        result["rows_per_s"] = None
        log(f"{label}: {wall:.1f}s wall, skipped before a run (the file is unchanged since its last import)")
        return result
    log(f"{label}: {wall:.1f}s wall ({result['rows_per_s']:,} rows/s), run {run.get('run_seconds')}s, "
        f"status {run.get('status')}, loaded {run.get('loaded')}, rejected {run.get('rejected')}, "
        f"peak RSS {result['peak_rss_mb']} MB, {cores} of {os.cpu_count()} cores busy")
    if run.get("status") not in ("succeeded", "partial", "skipped"):
        raise RuntimeError(f"{label}: the run ended {run.get('status')}: {run.get('error')}\n{child.log_tail()}")
    return result


def reset_data(db_url: str) -> None:
    """Empty the data tables (runs stay) so the next ingestion starts from nothing."""
    conn = connect(db_url)
    try:
        with conn.cursor() as cur:
            cur.execute(f"TRUNCATE {', '.join(DATA_TABLES)} RESTART IDENTITY CASCADE")
    finally:
        conn.close()


def start_workers(children: Children, env: dict, redis_url: str, count: int, tag: str) -> list:
    """`count` Celery worker nodes of one process each (as `celery -A tasks worker` in the Procfile)."""
    from celery import Celery

    nodes = []
    for i in range(count):
        hostname = f"bench-{tag}-{i + 1}@%h"
        nodes.append(children.start(f"celery-{tag}-{i + 1}", [
            str(BIN / "celery"), "-A", "tasks", "worker", "--loglevel=WARNING", "--concurrency=1",
            f"--hostname={hostname}"], env))
    probe = Celery("bench-probe")
    probe.conf.update(broker_url=redis_url, broker_connection_timeout=5, broker_connection_retry_on_startup=True)
    try:
        deadline = time.monotonic() + 90
        while True:
            for node in nodes:
                if node.poll() is not None:
                    raise RuntimeError(f"{node.name} exited: {node.log_tail()}")
            answered = probe.control.ping(timeout=1.0) or []
            names = {n for reply in answered for n in reply if n.startswith(f"bench-{tag}-")}
            if len(names) >= count:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {len(names)} of {count} Celery workers answered within 90s:\n"
                                   + nodes[0].log_tail())
    finally:
        probe.close()
    return nodes


def cpu_times() -> tuple[float, float]:
    """(busy, total) jiffies of all cores from /proc/stat (Linux); (0, 0) where there is none."""
    try:
        with open("/proc/stat") as f:
            fields = [float(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return 0.0, 0.0
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)       # idle + iowait
    return sum(fields) - idle, sum(fields)


def busy_cores(before: tuple[float, float]) -> float | None:
    """How many of the machine's cores were busy on average since `before` (everything: PostgreSQL, the
    workers, and anything else running), e.g. 1.6 of 2."""
    busy, total = cpu_times()
    if total <= before[1]:
        return None
    return round((busy - before[0]) / (total - before[1]) * (os.cpu_count() or 1), 2)


def celery_ingest(children: Children, env: dict, db_url: str, rows: int, workers: list, label: str,
                  timeout: float, tag: str) -> dict:
    """`flask etl run csv --enqueue`, followed until the run ends; peak RSS of the worker processes."""
    log(f"{label}: flask etl run csv --enqueue ({rows:,} rows, {len(workers)} worker node(s))")
    samplers = [RssSampler(w.pid) for w in workers]
    cpu_before = cpu_times()
    cli = children.start(f"enqueue-{tag}", [str(BIN / "flask"), "--app", "wsgi:app", "etl", "run", "csv",
                                            "--enqueue", "--timeout", str(int(timeout))], env)
    started = time.perf_counter()
    deadline = time.monotonic() + timeout + 30
    while cli.poll() is None:
        for s in samplers:
            s.sample()
        if time.monotonic() > deadline:
            cli.stop(5)
            raise RuntimeError(f"{label}: not finished within {timeout:.0f}s")
        time.sleep(0.2)
    wall = time.perf_counter() - started
    conn = connect(db_url)
    try:
        run = _last_run(conn) or {}
        quotes = scalar(conn, "SELECT count(*) FROM quotes")
    finally:
        conn.close()
    if cli.proc.returncode != 0 or run.get("status") not in ("succeeded", "partial"):
        raise RuntimeError(f"{label}: run {run.get('status')}: {run.get('error')}\n{cli.log_tail()}\n"
                           + workers[0].log_tail())
    seconds = run.get("enqueue_to_finish_seconds") or wall
    result = {"name": label, "rows": rows, "seconds": round(seconds, 2), "rows_per_s": round(rows / seconds),
              "cli_wall_seconds": round(wall, 2), "workers": len(workers),
              "peak_rss_mb": max(s.single_mb for s in samplers),
              "peak_rss_tree_mb": round(sum(s.tree_mb for s in samplers), 1), "quotes_in_db": quotes,
              "busy_cores": busy_cores(cpu_before), **run}
    log(f"{label}: {seconds:.1f}s enqueue->finish ({result['rows_per_s']:,} rows/s), status {run.get('status')}, "
        f"loaded {run.get('loaded')}, worker peak RSS {result['peak_rss_mb']} MB, "
        f"{result['busy_cores']} of {os.cpu_count()} cores busy")
    return result
