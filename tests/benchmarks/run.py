"""`make bench` / `python -m tests.benchmarks [options]`: generate, ingest, read, report.

It works on its own database `<name>_bench` (dropped and recreated, `flask db upgrade`) on the server of
DATABASE_URL, and its own Redis database (REDIS_URL with --redis-db, flushed), so it never touches the
user's data. Without DATABASE_URL / REDIS_URL it starts the embedded servers (crypto_app.embedded), as
`make run` does. Every process it starts is stopped at the end, also on error or Ctrl-C.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import tempfile
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import urlsplit

from . import generate, ingest, reads, report
from .procs import BIN, ROOT, Children, child_env, flush_redis, libpq, log, machine_facts, pick_redis_db, \
    recreate_database, with_database, with_redis_db

DEFAULT_ROWS = 1_000_000


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="make bench ARGS=...", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=DEFAULT_ROWS, help="quote rows in the generated CSV (default 1,000,000)")
    p.add_argument("--seed", type=int, default=42, help="seed of the generated data")
    p.add_argument("--list-rows", type=int, help="pad latest_quotes to this many rows for the reads "
                   "(default: --rows, so page 10,000 exists at 1M; 0: no padding)")
    p.add_argument("--duration", type=float, default=10.0, help="seconds of load per read line (default 10)")
    p.add_argument("--connections", type=int, default=32, help="concurrent keep-alive connections (default 32)")
    p.add_argument("--sql-runs", type=int, default=50, help="runs of each floor statement for its median")
    p.add_argument("--sql-duration", type=float, default=3.0, help="seconds of pgbench per floor (0: skip)")
    p.add_argument("--copy-repeats", type=int, default=3, help="raw COPY floor runs (the median is reported)")
    p.add_argument("--celery-workers", default="auto", help="worker counts to ingest with through Celery, e.g. 1,2 "
                   "(default: 1,2 when the product splits large CSV files into segments for several workers, "
                   "else 1; 0: skip the Celery measurement)")
    p.add_argument("--segment-bytes", type=int, help="CSV_SEGMENT_BYTES for the Celery runs (default: the "
                   "product's own setting)")
    p.add_argument("--api-log-level", default="INFO", help="LOG_LEVEL of gunicorn during the reads "
                   "(default INFO, the production default: one access log line per request)")
    p.add_argument("--skip", default="", help="comma-separated phases to skip: floors, reingest, celery, reads")
    p.add_argument("--only", choices=("reads",), help="reads: only the reads (the data is still generated and "
                   "ingested once, by `flask etl import`; floors, re-ingest and Celery are skipped)")
    p.add_argument("--read-lines", default="", help="comma-separated read lines to measure (default: all), e.g. "
                   "health_live,data_first,data_first_304,data_distinct")
    p.add_argument("--db-name", help="bench database name (default: <DATABASE_URL's database>_bench)")
    p.add_argument("--redis-db", type=int, help="Redis database number for the bench (default: an empty one "
                   "no client uses, e.g. 12; it is flushed)")
    p.add_argument("--workdir", help="where to write the generated data (default: a new temp dir, removed after)")
    p.add_argument("--keep-data", action="store_true", help="keep the generated files and logs")
    p.add_argument("--baseline", help="an earlier bench JSON to compare with (e.g. the 1M run when running 10M)")
    p.add_argument("--output-dir", default=str(ROOT / "bench-results"))
    args = p.parse_args(argv)
    if args.rows < 1000:
        p.error("--rows must be at least 1000")
    if args.list_rows is None:
        args.list_rows = args.rows
    args.skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    if args.only == "reads":
        args.skip |= {"floors", "reingest", "celery"}
    args.read_lines = {s.strip() for s in args.read_lines.split(",") if s.strip()}
    if args.celery_workers != "auto":
        args.celery_workers = [int(n) for n in args.celery_workers.split(",") if n.strip() and int(n) > 0]
    return args


def _servers() -> tuple[str, str, bool]:
    env = {"DATABASE_URL": os.environ.get("DATABASE_URL", ""), "REDIS_URL": os.environ.get("REDIS_URL", "")}
    from crypto_app import embedded

    embedded.ensure_environment(env)
    is_embedded = str(embedded.PG_DIR) in env["DATABASE_URL"]
    return env["DATABASE_URL"], env["REDIS_URL"], is_embedded


def _on_sigterm(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv=None) -> int:
    args = parse_args(argv)
    warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
    signal.signal(signal.SIGTERM, _on_sigterm)
    started_at = datetime.now(timezone.utc)
    stamp = started_at.strftime("%Y%m%d-%H%M%S")
    t0 = time.monotonic()
    server_db, server_redis, is_embedded = _servers()
    db_name = args.db_name or f"{urlsplit(server_db).path.lstrip('/') or 'cryptoflow'}_bench"
    db_url = libpq(with_database(server_db, db_name))
    if args.redis_db is None:
        args.redis_db = pick_redis_db(server_redis)
    redis_url = with_redis_db(server_redis, args.redis_db)
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="cryptoflow-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    data_dir = workdir / "data"
    log_dir = workdir / "logs"
    for d in (data_dir, log_dir):
        d.mkdir(exist_ok=True)
    # the synthetic random walks reach market caps above the $10T ceiling (~2% of 200k rows): every rule
    # still runs on every row, but those rows are flagged rather than quarantined (PLAUSIBILITY_CSV)
    env = child_env(db_url, redis_url, CSV_DATA_DIR=str(data_dir), PLAUSIBILITY_CSV="market_cap_ceiling:soft")
    children = Children(log_dir)
    result = {"benchmark": "cryptoflow make bench", "format": 1, "started_at": started_at.isoformat(timespec="seconds"),
              "status": "running", "params": {k: (sorted(v) if isinstance(v, set) else v) for k, v in vars(args).items()},
              "machine": machine_facts(with_database(libpq(server_db), "postgres"), is_embedded),
              "notes": []}
    result["params"]["database"] = db_name
    result["params"]["redis_db"] = args.redis_db
    log(f"bench database {db_name} on {'embedded ' if is_embedded else ''}PostgreSQL "
        f"{result['machine'].get('postgres_version')}, Redis db {args.redis_db}, work dir {workdir}")
    ok = False
    try:
        run_phases(args, result, children, env, db_url, redis_url, server_db, db_name, data_dir, workdir)
        result["status"] = "ok"
        ok = True
    except KeyboardInterrupt as exc:
        result["status"] = f"interrupted ({exc or 'Ctrl-C'})"
        log("interrupted: stopping everything")
    except Exception as exc:  # noqa: BLE001  report what was measured, then fail
        result["status"] = f"failed: {exc.__class__.__name__}: {str(exc)[:2000]}"
        log(result["status"])
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)   # a second Ctrl-C must not skip the cleanup
        children.stop_all()
        try:
            flush_redis(redis_url)
        except Exception:  # noqa: BLE001
            pass
        signal.signal(signal.SIGINT, signal.default_int_handler)
        result["machine"]["load_avg_at_end"] = [round(x, 2) for x in os.getloadavg()]
        result["total_seconds"] = round(time.monotonic() - t0, 1)
        baseline = None
        if args.baseline:
            try:
                baseline = json.loads(Path(args.baseline).read_text())
            except (OSError, ValueError) as exc:
                log(f"baseline {args.baseline} unreadable: {exc}")
        result["targets"] = report.evaluate(result, baseline)
        paths = report.write(result, Path(args.output_dir), stamp, latest=ok)
        print()
        print(report.text_table(report.COLUMNS, report.table_rows(result)))
        print()
        print(report.text_table(("target", "measured", "met", "note"),
                                [(t["target"], t["measured"], {True: "yes", False: "NO", None: "-"}[t["met"]],
                                  t["note"]) for t in result["targets"]], max_notes=60))
        print()
        log(f"written: {', '.join(str(p.relative_to(ROOT)) if p.is_relative_to(ROOT) else str(p) for p in paths)}")
        if args.keep_data or not ok:
            log(f"data and logs kept in {workdir}")
        elif not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0 if ok else 1


def run_phases(args, result, children, env, db_url, redis_url, server_db, db_name, data_dir, workdir) -> None:
    rows = args.rows
    ingest_timeout = max(900.0, rows / 300)

    # 1. a fresh database and Redis db
    log(f"recreating database {db_name}; flushing Redis db {args.redis_db}")
    recreate_database(server_db, db_name)
    flush_redis(redis_url)
    children.run("db-upgrade", [str(BIN / "flask"), "--app", "wsgi:app", "db", "upgrade"], env, timeout=180)

    # 2. the data
    csv_path = data_dir / "history.csv"
    started = time.perf_counter()
    dataset = generate.generate(csv_path, rows, args.seed)
    generate.write_overrides(data_dir)
    result["dataset"] = {"rows": dataset.rows, "coins": dataset.coins, "shared_symbols": dataset.shared_symbols,
                         "days": dataset.days, "first_date": dataset.first_date.isoformat(),
                         "last_date": dataset.last_date.isoformat(), "file_mb": round(csv_path.stat().st_size / 2**20, 1),
                         "generate_seconds": round(time.perf_counter() - started, 1)}
    log(f"generated {csv_path.name}: {dataset.rows:,} rows, {dataset.coins:,} coins, {dataset.shared_symbols} shared "
        f"symbols, {result['dataset']['file_mb']} MB in {result['dataset']['generate_seconds']} s")
    ing = result["ingest"] = {}

    # 3. floors, then the real ingestion path
    if "floors" not in args.skip:
        copies = []
        for i in range(max(1, args.copy_repeats)):
            copies.append(ingest.copy_floor(db_url, csv_path, rows))
            log(f"COPY floor run {i + 1}: {copies[-1]['rows_per_s']:,} rows/s ({copies[-1]['seconds']} s)")
        best = sorted(copies, key=lambda c: c["rows_per_s"])[len(copies) // 2]
        ing["copy_floor"] = {**best, "repeats": len(copies), "all_rows_per_s": [c["rows_per_s"] for c in copies]}
        ing["upsert_floor"] = ingest.upsert_floor(db_url, csv_path, rows)
        log(f"COPY + upsert floor: {ing['upsert_floor']['rows_per_s']:,} rows/s")
    ing["cli"] = ingest.cli_import(children, env, db_url, csv_path, rows, "ingest-cli", "CSV ingest (flask etl import)",
                                   ingest_timeout)
    if ing["cli"].get("loaded") != rows or ing["cli"].get("quotes_in_db") != rows:
        result["notes"].append(f"the first ingest stored {ing['cli'].get('quotes_in_db'):,} quotes "
                               f"(loaded {ing['cli'].get('loaded')}) of {rows:,} rows")

    # 4. re-ingest: unchanged, then 1% changed
    if "reingest" not in args.skip:
        ing["reingest_unchanged"] = ingest.cli_import(children, env, db_url, csv_path, rows, "reingest-unchanged",
                                                      "re-ingest, file unchanged", ingest_timeout, may_skip=True)
        generate.generate(csv_path, rows, args.seed, changed_every=100)
        ing["reingest_1pct"] = ingest.cli_import(children, env, db_url, csv_path, rows, "reingest-1pct",
                                                 "re-ingest, 1% of rows changed", ingest_timeout)
        expected = sum(1 for i in range(rows) if i % 100 == generate.CHANGED_OFFSET)
        ing["reingest_1pct"]["changed_rows_in_file"] = expected
        if ing["reingest_1pct"].get("updated") != expected:
            result["notes"].append(f"1% re-ingest: {expected:,} rows changed in the file, the run reports "
                                   f"{ing['reingest_1pct'].get('updated')} updated")

    # 5. through Celery: 1 worker, and 2 when the product splits a large file among workers
    ing["celery"] = []
    from crypto_app.config import load_settings

    celery_env = dict(env)
    if args.segment_bytes is not None:
        celery_env["CSV_SEGMENT_BYTES"] = str(args.segment_bytes)
    segment_bytes = getattr(load_settings(celery_env), "csv_segment_bytes", None)
    file_bytes = csv_path.stat().st_size
    ing["segments"] = {"supported": segment_bytes is not None, "csv_segment_bytes": segment_bytes,
                       "file_bytes": file_bytes,
                       "segments": (max(1, file_bytes // segment_bytes) if segment_bytes and file_bytes >= 2 * segment_bytes
                                    else 0)}
    counts = args.celery_workers if args.celery_workers != "auto" else ([1, 2] if segment_bytes is not None else [1])
    if segment_bytes is None:
        ing["parallel_note"] = ("crypto_app has no chunk-parallel CSV loading: a CSV run is one Celery task holding "
                                "the csv source lock, reading the file in sequence")
    elif not ing["segments"]["segments"]:
        ing["parallel_note"] = (f"the file ({file_bytes / 2**20:.0f} MB) is under 2 x CSV_SEGMENT_BYTES "
                                f"({segment_bytes / 2**20:.0f} MB): not split, so one worker loads it "
                                f"(--segment-bytes to split smaller files)")
    else:
        ing["parallel_note"] = ""
    if "celery" not in args.skip and counts:
        for count in counts:
            ingest.reset_data(db_url)
            flush_redis(redis_url)
            workers = ingest.start_workers(children, celery_env, redis_url, count, f"w{count}")
            try:
                ing["celery"].append(ingest.celery_ingest(
                    children, celery_env, db_url, rows, workers,
                    f"CSV ingest through Celery, {count} worker{'s' if count > 1 else ''}", ingest_timeout,
                    tag=f"w{count}"))
            finally:
                if count != counts[-1] or "reads" in args.skip:
                    for w in workers:
                        w.stop()

    if "reads" in args.skip:
        return
    # 6. reads
    rd = result["reads"] = {}
    rd["list"] = reads.pad_latest(db_url, args.list_rows)
    server = reads.Server(children, env, workdir, args.api_log_level)
    targets, facts = reads.build_targets(db_url, server.port, args.list_rows, dataset)
    if args.read_lines:
        targets = [t for t in targets if t["name"] in args.read_lines]
    rd["facts"] = facts
    if facts["deep_page"] < reads.DEEP_PAGE:
        result["notes"].append(f"latest_quotes has {facts['latest_rows']:,} rows: the deep page measured is page "
                               f"{facts['deep_page']:,}, not 10,000 (use --rows/--list-rows ≥ 1,000,000)")
    if not facts["etag"]:
        result["notes"].append("the API sends no ETag on /api/v1/data: no conditional (304) pass was measured")
    log(f"targets: {', '.join(t['name'] for t in targets)}; deep page {facts['deep_page']:,} "
        f"({facts.get('deep_cursor_source')}); ETag: {facts['etag']}")
    reads.measure_sql(targets, db_url, env, args.sql_runs, args.sql_duration, args.connections, workdir)
    rd["loadgen_ceiling"] = reads.loadgen_ceiling(children, env, args.connections, min(args.duration, 5.0), workdir)
    log(f"load generator ceiling: {rd['loadgen_ceiling']['requests_per_s']:,} req/s")
    rd["targets"] = targets
    reads.measure_http(targets, server, args.connections, args.duration, workdir)
    for t in targets:
        if len(t["urls"]) > 3:
            t["urls"] = t["urls"][:3] + [f"... {len(t['urls']) - 3:,} more"]
    server.stop()
    rd["gunicorn_restarts"] = server.restarts
    result["notes"] += [f"{note}; restarted" for note in server.restarts]
    rd["gunicorn_log_errors"] = [line for line in server.child.log_tail(4000).splitlines() if "error" in line.lower()][-10:]
    failed = [t["name"] for t in targets if not t["http"].get("requests") or
              t["http"]["errors"] > 0.5 * max(1, t["http"]["requests"])]
    if failed:
        raise RuntimeError(f"reads failed (no answers or mostly errors): {', '.join(failed)}")
