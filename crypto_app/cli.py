"""`flask etl ...`: run a source or import a CSV file from the command line, with progress.

    flask etl run SOURCE            run now in this process (shared lock and rate limit still apply)
    flask etl run SOURCE --enqueue  hand it to the workers and follow it until it ends
    flask etl import PATH [--force] import one CSV file inside CSV_DATA_DIR, with a progress bar
    --take-over                     (run, import) take the source from the run holding its lock
    flask etl status                sources: last success, last run, running run, lock holder (cli_status.py)
    flask etl runs                  recent runs (cli_status.py)
    flask etl maintain              the maintenance run now (cli_maintenance.py)

`flask` finds this checkout's embedded servers by itself (crypto_app.cli_app); errors are one line.
"""
from __future__ import annotations

import sys
import time
import uuid
from pathlib import Path

import click
import psycopg2
from flask import current_app
from flask.cli import AppGroup

from .cli_output import ProgressBar, require_servers

etl = AppGroup("etl", help="Run and inspect ingestion.")
TAKE_OVER_HELP = ("Take the source's lock from the run holding it: that run is marked failed (superseded) and, "
                  "if still alive, stops at its next batch. Without it, a dead CLI run on this host is taken "
                  "over by itself; any other holder is refused with how long its lock lasts.")


def register_cli(app) -> None:
    from . import cli_status  # noqa: F401  (adds `etl status` and `etl runs`)

    app.cli.add_command(etl)


@etl.command("run")
@click.argument("source")
@click.option("--enqueue", is_flag=True, help="Queue it for the Celery workers and follow it.")
@click.option("--timeout", default=3600, show_default=True, help="With --enqueue: seconds to follow the run.")
@click.option("--take-over", is_flag=True, help=TAKE_OVER_HELP)
def run_command(source: str, enqueue: bool, timeout: int, take_over: bool):
    """Run one ingestion of SOURCE (coingecko, coinpaprika, csv) and print its summary."""
    from .pipeline.runs import BrokerUnavailable, RunAlreadyActive, UnknownSource, check_source, trigger_run

    require_servers(current_app)
    settings = current_app.config["SETTINGS"]
    try:
        check_source(settings, source)
        if enqueue:
            run = trigger_run(source, "cli")
            click.echo(f"queued run {run.id}")
            _follow(str(run.id), timeout)
            return
    except (UnknownSource, RunAlreadyActive, BrokerUnavailable) as exc:
        raise click.ClickException(str(exc)) from None
    _run_inline(source, {}, unit="batches", take_over=take_over)


@etl.command("import")
@click.argument("path", type=click.Path(dir_okay=False))
@click.option("--force", is_flag=True, help="Read the file again from its start, even if unchanged since its last import, and validate "
              "and upsert every record (none is skipped as already stored).")
@click.option("--take-over", is_flag=True, help=TAKE_OVER_HELP)
def import_command(path: str, force: bool, take_over: bool):
    """Import one CSV file (it must lie inside CSV_DATA_DIR) and print the run summary."""
    require_servers(current_app)
    settings = current_app.config["SETTINGS"]
    data_dir = settings.csv_data_dir.resolve()
    target = Path(path).resolve()
    if not target.is_relative_to(data_dir):
        raise click.ClickException(f"{path} is outside CSV_DATA_DIR ({data_dir}); copy or link it there first")
    if not target.is_file():
        raise click.ClickException(f"{path}: no such file")
    rel = str(target.relative_to(data_dir))
    if not force and _unchanged(settings, rel):
        click.echo(f"{path}: unchanged since its last import, skipped (use --force to re-import)")
        return
    options = {"files": [rel], "force": True} if force else {"files": [rel]}
    _run_inline("csv", options, unit="bytes", total=target.stat().st_size, take_over=take_over)


def _unchanged(settings, rel: str) -> bool:
    """Whether a run would skip this file: read completely before, unchanged since (the csv checkpoint)."""
    from .sources.csv_files import CsvSource

    conn = psycopg2.connect(settings.libpq_url, connect_timeout=10)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT cursor->'position' FROM checkpoints WHERE source = 'csv'")
            row = cur.fetchone()
    finally:
        conn.close()
    return bool(row and row[0]) and rel in CsvSource(settings, files=[rel]).unchanged_files(row[0])


def _run_inline(source: str, options: dict, unit: str, total: int | None = None, take_over: bool = False):
    from .coordination import lock_state, redis_client
    from .pipeline import driver, takeover

    settings = current_app.config["SETTINGS"]
    run_id = str(uuid.uuid4())
    taken = takeover.take_over(settings, redis_client(settings.redis_url), source, run_id, forced=take_over)
    if taken:
        click.echo(f"took over {source} from run {taken['run_id']} ({taken['reason']}); it is marked failed "
                   f"(superseded) and, if still alive, stops at its next batch", err=True)
    started = time.monotonic()
    rows = 0
    bar = ProgressBar(total=total, unit="B" if unit == "bytes" else " batch", unit_scale=unit == "bytes")

    def progress(batch, counts):
        nonlocal rows
        rows += counts["fetched"]
        step = batch.locator.get("end", 0) - batch.locator.get("start", 0) if unit == "bytes" else 1
        bar.update(step)
        bar.show_rows(rows, rows / max(time.monotonic() - started, 1e-6))

    attempt = driver.Attempt(source, run_id, "cli", options)
    try:
        while True:
            step = driver.deliver(settings, attempt, kind="cli", max_sleep=float("inf"), progress=progress,
                                  on_started=lambda rid: click.echo(f"run {rid} ({source})", err=True))
            if step.retry_in is None:
                break
            click.echo(f"transient failure ({step.exc or step.error}); retrying in {step.retry_in}s", err=True)
            time.sleep(step.retry_in)
            attempt = step.attempt
    finally:
        bar.close()
    if step.summary.get("skipped"):
        holder = step.summary.get("running_run_id")
        raise click.ClickException(takeover.busy_message(source, lock_state(redis_client(settings.redis_url), source),
                                                         holder))
    if step.status == "failed":
        raise click.ClickException(f"run {run_id} failed: {step.error}")   # one line, the root cause
    conn = psycopg2.connect(settings.libpq_url, connect_timeout=10)
    try:
        _print_summary(conn, run_id)
    finally:
        conn.close()


def _print_summary(conn, run_id: str, with_error: bool = True) -> None:
    with conn.cursor() as cur:
        cur.execute("SELECT source, status, fetched, loaded, rejected, pages, duration_seconds, error "
                    "FROM etl_runs WHERE id = %s", (run_id,))
        source, status, fetched, loaded, rejected, pages, duration, error = cur.fetchone()
    conn.rollback()   # end the read's transaction: the failure path returns without closing `conn`
    rate = f", {fetched / duration:,.0f} records/s" if duration else ""
    click.echo(f"run {run_id} {source}: {status} — fetched {fetched:,}, loaded {loaded:,}, rejected {rejected:,}, "
               f"{pages:,} batches in {duration or 0:.1f}s{rate}")
    if error and with_error:
        click.echo(f"Error: {error}", err=True)


def _follow(run_id: str, timeout: int) -> None:
    from .extensions import db
    from .pipeline.runs import TERMINAL, get_run

    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        db.session.expire_all()
        run = get_run(run_id)
        line = f"{run.status}: fetched {run.fetched}, loaded {run.loaded}, rejected {run.rejected}, pages {run.pages}"
        if line != last:
            click.echo(line, err=True)
            last = line
        if run.status in TERMINAL:
            if run.error:
                click.echo(f"Error: {run.error}", err=True)
            if run.status == "failed":
                sys.exit(1)
            return
        time.sleep(1)
    raise click.ClickException(f"run {run_id} still not finished after {timeout}s")


from . import cli_backfill, cli_maintenance  # noqa: E402,F401  (register `flask etl backfill`, `maintain`)
