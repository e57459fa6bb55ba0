"""`flask etl backfill`: fill assets' history from the APIs' history endpoints, with a progress bar.

    flask etl backfill bitcoin ethereum --since 2025-01-01 --interval 1d     queue for the workers, follow
    flask etl backfill --top 100 --since 2025-01-01 --inline                 run the windows in this process
    flask etl backfill bitcoin --since 2024-01-01 --dry-run                  print the windows and their cost

The same plan, tables and window code as POST /api/v1/backfills (crypto_app/pipeline/backfill_*.py).
"""
from __future__ import annotations

import sys
import time
from datetime import timezone

import click
import psycopg2
from flask import current_app

from .cli import etl
from .pipeline.backfill_plan import BackfillConflict, PlanError, plan_backfill
from .pipeline.backfill_window import run_window
from .pipeline.backfills import start_backfill, summary
from .sources import HISTORY
from .sources.history import INTERVALS


@etl.command("backfill")
@click.argument("assets", nargs=-1)
@click.option("--top", type=click.IntRange(1, 1000), help="Instead of ASSETS: the N best ranked assets.")
@click.option("--since", required=True, type=click.DateTime(["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S"]),
              help="First bucket (UTC).")
@click.option("--until", type=click.DateTime(["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S"]),
              help="End, exclusive (default: just after the newest final point).")
@click.option("--interval", type=click.Choice(list(INTERVALS)), default="1d", show_default=True)
@click.option("--source", "sources", multiple=True, type=click.Choice(list(HISTORY)),
              help="History source (repeatable; default: all).")
@click.option("--dry-run", is_flag=True, help="Print the windows and the requests they cost; change nothing.")
@click.option("--inline", is_flag=True, help="Run the windows in this process instead of on the workers.")
@click.option("--timeout", default=24 * 3600, show_default=True, help="Seconds to follow the backfill.")
def backfill_command(assets, top, since, until, interval, sources, dry_run, inline, timeout):
    """Backfill ASSETS (slugs or source ids) from the history endpoints."""
    if bool(assets) == bool(top):
        raise click.UsageError("give ASSETS or --top N")
    settings = current_app.config["SETTINGS"]
    request = {"assets": list(assets) or None, "top": top, "sources": list(sources) or None, "interval": interval,
               "since": since.replace(tzinfo=timezone.utc),
               "until": until.replace(tzinfo=timezone.utc) if until else None}
    conn = psycopg2.connect(settings.libpq_url, connect_timeout=10)
    try:
        if dry_run:
            _print_plan(settings, _plan(conn, settings, request))
            return
        backfill_id = _start(conn, settings, request, inline)
        _progress(conn, settings, backfill_id, inline, timeout)
    finally:
        conn.close()


def _plan(conn, settings, request):
    try:
        return plan_backfill(conn, settings, request)
    except PlanError as exc:
        raise click.ClickException(str(exc)) from None


def _print_plan(settings, plan) -> None:
    click.echo(f"plan: {plan.interval} from {plan.since:%Y-%m-%d %H:%M} to {plan.until:%Y-%m-%d %H:%M} UTC, "
               f"sources {', '.join(plan.sources)}")
    for w in plan.windows:
        cost = "1 request" if w.status == "pending" else f"0 requests ({w.status}: {w.error})"
        click.echo(f"  {w.source:<12} {w.asset:<20} {w.starts_at:%Y-%m-%d %H:%M} -> {w.ends_at:%Y-%m-%d %H:%M}  {cost}")
    per_source = {}
    for w in plan.windows:
        if w.status == "pending":
            per_source[w.source] = per_source.get(w.source, 0) + 1
    minutes = max((n / settings.sources[s].rate_per_minute for s, n in per_source.items()), default=0)
    click.echo(f"windows: {len(plan.windows)}, requests: {plan.requests} "
               f"({', '.join(f'{s} {n}' for s, n in sorted(per_source.items())) or 'none'}); "
               f"at the configured rate limits about {minutes * 60:.0f}s")
    for skipped in plan.skipped:
        click.echo(f"skipped: {skipped} (no source id known)")


def _start(conn, settings, request, inline: bool) -> str:
    from .broker import send_task
    from .celery_settings import BACKFILL_TASK

    send = (lambda window_id: None) if inline else (lambda window_id: send_task(
        BACKFILL_TASK, {"window_id": window_id}, f"backfill-window-{window_id}"))
    try:
        plan = start_backfill(conn, settings, request, send, trigger="cli")
    except PlanError as exc:
        raise click.ClickException(str(exc)) from None
    except BackfillConflict as exc:
        raise click.ClickException(f"{exc}; follow it with GET /api/v1/backfills/{exc.backfill_id}") from None
    click.echo(f"backfill {plan.id}: {len(plan.windows)} windows, {plan.requests} requests", err=True)
    return plan.id


def _progress(conn, settings, backfill_id: str, inline: bool, timeout: int) -> None:
    state = summary(conn, settings, backfill_id)
    total = state["windows"]["total"]
    deadline = time.monotonic() + timeout
    with click.progressbar(length=total, label="windows", show_pos=True, show_eta=True, file=sys.stderr) as bar:
        finished = total - state["windows"]["left"]
        bar.update(finished)
        failures: dict = {}                 # inline: transient failures per window (TASK_MAX_RETRIES)
        while state["status"] == "running":
            if time.monotonic() > deadline:
                raise click.ClickException(f"backfill {backfill_id} still running after {timeout}s")
            if inline:
                _run_pending_inline(conn, settings, backfill_id, failures)
            else:
                time.sleep(1)
            state = summary(conn, settings, backfill_id)
            now_finished = total - state["windows"]["left"]
            bar.update(now_finished - finished)
            finished = now_finished
    w, r = state["windows"], state["rows"]
    click.echo(f"backfill {backfill_id}: {state['status']} - windows {w['done']} done, {w['failed']} failed, "
               f"{w['unavailable']} unavailable, {w['cancelled']} cancelled; rows {r['inserted']} inserted, "
               f"{r['updated']} updated, {r['unchanged']} unchanged, {r['rejected']} rejected; "
               f"{state['requests']} requests")
    for error in state["errors"]:
        click.echo(f"  {error['status']}: {error['asset']} {error['source']} "
                   f"{error['starts_at']:%Y-%m-%d} -> {error['ends_at']:%Y-%m-%d}: {error['error']}")
    if state["status"] == "failed":
        sys.exit(1)


def _run_pending_inline(conn, settings, backfill_id: str, failures: dict) -> None:
    with conn.cursor() as cur:
        cur.execute("SELECT id FROM backfill_windows WHERE backfill_id = %s AND status IN ('pending', 'running') "
                    "ORDER BY starts_at DESC, id LIMIT 1", (backfill_id,))
        row = cur.fetchone()
    conn.commit()
    if row is None:
        return
    step = run_window(settings, row[0], failures.get(row[0], 0))
    failures[row[0]] = step.failures
    if step.retry_in is not None:
        time.sleep(min(step.retry_in, 60))


