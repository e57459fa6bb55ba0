"""Reads at soak size (soak.py --reads, --reads-only): `make bench`'s read lines on the soak's database.

After a soak the database holds what a system that ran that many days holds (its span ends within the
hour before the soak started): RETENTION_RAW_DAYS to RETENTION_RAW_DAYS + 7 days of raw quotes, the hourly
and daily candles of everything older, 3,000 latest quotes (the soak's list, not padded as make bench pads
it). gunicorn is started as make bench starts it (reads.Server: the Procfile's command, its own control
socket and process group, stopped at the end and on error) with the storage settings the soak recorded,
and every line is measured by loadgen.py (reads.measure_http: 32 connections, --duration s after a
warm-up) next to its bare-SQL floor where reads.py has one (reads.measure_sql):

- health_live, data_first, data_first_304, data_distinct, data_cursor_deep: as in make bench
  (reads.list_targets); with 3,000 list rows the deepest page is page 30;
- history_1y: coin-1, 1d candles from 365 days before the reads to then, with `until` (so cached, as make
  bench's history_1y). Checked first: `resolution` must be a rollup (1h while hourly candles are kept,
  CANDLE_HOURLY_RETENTION_DAYS, default 400, else 1d: crypto_app/api/history.py rollup_for), not raw, and
  when the span lies inside the window the candles must be one per dataset and UTC day of the span,
  holding every observation (288 a day per dataset); the report says how many of coin-1's hourly and
  daily rollup candles the database holds (none until a day has expired);
- history_1y_distinct: the same window without `until` (never cached) over coin-1..coin-2000, shuffled;
  no floor (the API's one statement is timed in-process instead);
- history_1d_1h: the last day in 1h candles, without `until`, over coin-1..coin-2000 (raw rows while
  RETENTION_RAW_DAYS > 1); floor: reads.CANDLES_SQL over coin-1's raw rows of that day;
- stats, health: as in make bench (/health says degraded: no worker runs).

Each line's req/s is also given as a share of health_live's in the same run, and the issue's targets for
/api/v1/data are judged as make bench judges them (report.evaluate).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import tempfile
import time
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path
from urllib.parse import quote

import psycopg2

from . import reads, report
from .procs import Children, child_env, connect, flush_redis, libpq, log, pick_redis_db, scalar, with_redis_db
from .soak_db import PAPRIKA, sizes

LIST_LINES = ("health_live", "data_first", "data_first_304", "data_distinct", "data_cursor_deep")
VACUUMED = reads.VACUUMED + ("candles",)


def soak_run(db_url: str) -> dict:
    """The span and settings the soak recorded (soak_db.prepare, finish)."""
    try:
        conn = connect(db_url)
    except psycopg2.OperationalError as exc:
        raise RuntimeError(f"no soak database ({exc}): run the soak first") from None
    try:
        if scalar(conn, "SELECT to_regclass('soak_run')") is None:
            raise RuntimeError("the soak database has no soak_run table (a soak from before --reads): run it again")
        with conn.cursor() as cur:
            cur.execute("SELECT params, finished_at FROM soak_run")
            params, finished = cur.fetchone()
    finally:
        conn.close()
    if finished is None:
        raise RuntimeError("the soak in this database did not finish its span")
    return {**params, "finished_at": finished.isoformat()}


def _stamp(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def history_targets(db_url: str, now: datetime) -> list[dict]:
    since_1y, since_1d, until = _stamp(now - timedelta(days=365)), _stamp(now - timedelta(days=1)), _stamp(now)
    conn = connect(db_url)
    try:
        asset_id = scalar(conn, "SELECT id FROM assets WHERE slug = 'coin-1'")
        with conn.cursor() as cur:
            floor_1h = cur.mogrify(reads.CANDLES_SQL, {"step": "1 hour", "asset_id": asset_id, "since": since_1d,
                                                       "until": until}).decode()
    finally:
        conn.close()
    year = f"interval=1d&since={quote(since_1y)}"
    day = f"interval=1h&since={quote(since_1d)}"
    assets = range(1, PAPRIKA + 1)
    return [
        {"name": "history_1y", "label": "/api/v1/assets/coin-1/history 1 year, 1d candles (with until: cached)",
         "urls": [f"/api/v1/assets/coin-1/history?{year}&until={quote(until)}"], "sql": []},
        {"name": "history_1y_distinct", "label": "history 1 year, 1d candles, coin-1..2000, no until (uncached)",
         "urls": [f"/api/v1/assets/coin-{i}/history?{year}" for i in assets], "sql": [], "shuffle": True},
        {"name": "history_1d_1h", "label": "history last day, 1h candles, coin-1..2000, no until (uncached)",
         "urls": [f"/api/v1/assets/coin-{i}/history?{day}" for i in assets], "sql": [floor_1h], "shuffle": True,
         "note": "floor: coin-1's raw rows of the day (both datasets)"},
    ]


def check_history(port: int, url: str, run: dict, now: datetime, db_url: str) -> dict:
    """One answer of the year's history: its resolution, candles and samples against the span."""
    status, _, body = reads.http_get(port, url, timeout=120)
    if status != 200:
        return {"ok": False, "status": status, "body": body[:300].decode(errors="replace")}
    answer = json.loads(body)
    candles = answer.get("candles") or []
    start, end = datetime.fromisoformat(run["start"]), datetime.fromisoformat(run["end"])
    last_tick = end - timedelta(minutes=5)
    out = {"url": url, "resolution": answer.get("resolution"), "raw_since": answer.get("raw_since"),
           "candles": len(candles), "by_dataset": dict(Counter(c["dataset"] for c in candles)),
           "samples": sum(c["samples"] for c in candles), "truncated": answer.get("truncated"),
           "first_bucket": candles[0]["bucket"] if candles else None,
           "last_bucket": candles[-1]["bucket"] if candles else None}
    if start >= now - timedelta(days=365):     # the whole span in the window: every observation, both datasets
        out["expected_candles"] = 2 * ((last_tick.date() - start.date()).days + 1)
        out["expected_samples"] = 2 * int((end - start) / timedelta(minutes=5))
    conn = connect(db_url)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT c.resolution, count(*), min(c.bucket), max(c.bucket) FROM candles c "
                        "JOIN assets a ON a.id = c.asset_id WHERE a.slug = 'coin-1' GROUP BY 1")
            out["rollups_in_db"] = {r: {"candles": n, "first": lo.isoformat(), "last": hi.isoformat()}
                                    for r, n, lo, hi in cur.fetchall()}
    finally:
        conn.close()
    if not out["rollups_in_db"]:
        out["note"] = ("no rows of coin-1 had been rolled up yet (a partition is dropped once its end is "
                       "RETENTION_RAW_DAYS old): the answer merged raw rows only")
    out["ok"] = (out["resolution"] in ("1h", "1d") and not out["truncated"]
                 and out.get("expected_candles", out["candles"]) == out["candles"]
                 and out.get("expected_samples", out["samples"]) == out["samples"])
    return out


def _on_sigterm(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def measure(db_url: str, args) -> dict:
    """Every line, on gunicorn against `db_url` (the soak's database); never raises: `status` says."""
    db_url = libpq(db_url)
    out = {"status": "running", "params": {k: getattr(args, k) for k in (
        "duration", "connections", "sql_duration", "sql_runs", "api_log_level", "redis_db")}}
    out["load_avg_at_start"] = [round(x, 2) for x in os.getloadavg()]
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="cryptoflow-soak-reads-"))
    children = Children(workdir)
    redis_url = None
    try:
        run = out["soak"] = soak_run(db_url)
        redis_db = args.redis_db if args.redis_db is not None else pick_redis_db(os.environ["REDIS_URL"])
        redis_url = with_redis_db(os.environ["REDIS_URL"], redis_db)
        out["params"]["redis_db"] = redis_db
        flush_redis(redis_url)
        env = child_env(db_url, redis_url, **run["storage_env"])
        out["vacuum_analyze_seconds"] = reads.vacuum_analyze(db_url, VACUUMED)
        conn = connect(db_url, autocommit=False)
        try:
            out["sizes"] = sizes(conn)
        finally:
            conn.close()
        server = reads.Server(children, env, workdir, args.api_log_level)
        now = datetime.now(timezone.utc)
        out["reads_at"] = now.isoformat()
        out["hours_after_span"] = round((now - datetime.fromisoformat(run["end"])) / timedelta(hours=1), 2)
        targets, facts = reads.list_targets(db_url, server.port)
        targets = [t for t in targets if t["name"] in LIST_LINES]
        history = history_targets(db_url, now)
        targets += history + reads.service_targets()
        out["facts"] = facts
        check = out["history_check"] = check_history(server.port, history[0]["urls"][0], run, now, db_url)
        log(f"history_1y: resolution {check.get('resolution')}, {check.get('candles')} candles "
            f"(expected {check.get('expected_candles')}), {check.get('samples')} samples "
            f"(expected {check.get('expected_samples')}): {'ok' if check['ok'] else 'WRONG'}")
        for t in targets:
            if t["name"].startswith("history_1d"):
                _, _, body = reads.http_get(server.port, t["urls"][0], timeout=120)
                facts[f"{t['name']}_resolution"] = json.loads(body).get("resolution")
        _, _, body = reads.http_get(server.port, "/health", timeout=30)
        health = json.loads(body)
        facts["health_status"], facts["health_reasons"] = health.get("status"), health.get("reasons")
        reads.measure_sql(targets, db_url, env, args.sql_runs, args.sql_duration, args.connections, workdir)
        reads.measure_http(targets, server, args.connections, args.duration, workdir)
        server.stop()
        out["gunicorn_restarts"] = server.restarts
        live = next((t["http"]["requests_per_s"] for t in targets if t["name"] == "health_live"), None)
        for t in targets:
            t["vs_health_live"] = round(t["http"]["requests_per_s"] / live, 3) if live else None
            if len(t["urls"]) > 3:
                t["urls"] = t["urls"][:3] + [f"... {len(t['urls']) - 3:,} more"]
        out["targets"] = targets
        out["goals"] = [g for g in report.evaluate({"reads": {"targets": targets, "facts": facts}})
                        if "/api/v1/data" in g["target"] or g["target"].startswith("page ")]
        failed = [t["name"] for t in targets if not t["http"].get("requests") or
                  t["http"]["errors"] > 0.5 * max(1, t["http"]["requests"])]
        if failed:
            raise RuntimeError(f"reads failed (no answers or mostly errors): {', '.join(failed)}")
        out["status"] = "ok" if check["ok"] else "failed: the year's history is not what the soak wrote"
    except KeyboardInterrupt as exc:
        out["status"] = f"interrupted ({exc or 'Ctrl-C'})"
    except Exception as exc:  # noqa: BLE001  report what was measured
        out["status"] = f"failed: {exc.__class__.__name__}: {str(exc)[:2000]}"
        log(out["status"])
    finally:
        children.stop_all()
        if redis_url:
            try:
                flush_redis(redis_url)
            except Exception:  # noqa: BLE001
                pass
        signal.signal(signal.SIGTERM, previous)
        out["seconds"] = round(time.monotonic() - started, 1)
        out["load_avg_at_end"] = [round(x, 2) for x in os.getloadavg()]
        if out["status"] == "ok":
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            log(f"logs kept in {workdir}")
    return out


def summary(result: dict) -> str:
    """The read lines as a table (with the share of /health/live), the history check, the targets."""
    rows = report.table_rows({"reads": {"targets": result.get("targets", [])}})
    columns = report.COLUMNS[:5] + ("vs /health/live",) + report.COLUMNS[6:]
    shares = [t.get("vs_health_live") for t in result.get("targets", [])]
    table = [row[:5] + ("–" if s is None else f"{s * 100:.0f}%",) + row[6:] for row, s in zip(rows, shares)]
    lines = [f"reads at soak size: {result['status']}"]
    soak = result.get("soak") or {}
    sizes_ = result.get("sizes") or {}
    if soak:
        lines.append(f"soak: {soak.get('mode')} {soak.get('days')} days {soak.get('start')} .. {soak.get('end')}, "
                     f"RETENTION_RAW_DAYS {soak.get('storage_env', {}).get('RETENTION_RAW_DAYS')}; reads "
                     f"{result.get('hours_after_span')} h after the span; rows {sizes_.get('rows')}, database "
                     f"{(sizes_.get('database') or 0) / 2**20:,.0f} MB; load average {result.get('load_avg_at_start')} "
                     f"→ {result.get('load_avg_at_end')}")
    if table:
        lines += ["", report.text_table(columns, table)]
    check = result.get("history_check")
    if check:
        rollups = {r: v["candles"] for r, v in (check.get("rollups_in_db") or {}).items()}
        lines += ["", f"history_1y check: {'ok' if check['ok'] else 'WRONG'}: resolution {check.get('resolution')}, "
                      f"{check.get('candles')} candles {check.get('by_dataset')} "
                      f"(expected {check.get('expected_candles')}), {check.get('samples')} samples "
                      f"(expected {check.get('expected_samples')}), coin-1's rollups in the database: {rollups}"
                      + (f"; {check['note']}" if check.get("note") else "")]
    facts = result.get("facts") or {}
    if facts:
        lines.append(f"history_1d_1h resolution {facts.get('history_1d_1h_resolution')}; /health "
                     f"{facts.get('health_status')} {facts.get('health_reasons')}; list {facts.get('latest_rows')} "
                     f"rows, deep page {facts.get('deep_page')}")
    if result.get("goals"):
        lines += ["", report.text_table(("target", "measured", "met", "note"),
                                        [(g["target"], g["measured"], {True: "yes", False: "NO", None: "-"}[g["met"]],
                                          g["note"]) for g in result["goals"]], max_notes=60)]
    return "\n".join(lines)
