"""`flask etl status` and `flask etl runs`: what the sources and their runs are doing, from the terminal.

Read-only: one query over etl_runs per command, and the Redis lock of each source.
"""
from __future__ import annotations

from datetime import datetime, timezone

import click
import psycopg2
from flask import current_app

from .cli import etl
from .cli_output import SetupError, require_servers

ACTIVE = ("queued", "running")


def _connect(settings):
    try:
        return psycopg2.connect(settings.libpq_url, connect_timeout=5)
    except psycopg2.OperationalError as exc:
        reason = (str(exc).strip().splitlines() or ["unreachable"])[-1]
        raise SetupError(f"cannot reach PostgreSQL: {reason}") from None


def _ago(moment: datetime | None) -> str:
    if moment is None:
        return "never"
    seconds = max(int((datetime.now(timezone.utc) - moment).total_seconds()), 0)
    for size, unit in ((86400, "d"), (3600, "h"), (60, "m")):
        if seconds >= size:
            return f"{seconds // size}{unit} ago"
    return f"{seconds}s ago"


def _short(text: str | None, width: int) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _table(headers: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(str(c)) for c in column) for column in zip(headers, *rows)]
    for line in [headers] + rows:
        click.echo("  ".join(str(c).ljust(w) for c, w in zip(line, widths)).rstrip())


def _locks(settings, sources) -> dict:
    """source -> 'free' / 'held by RUN (expires in Ns)' / 'unknown (...)'."""
    from .coordination import SourceLock, redis_client

    if "REDIS_URL" in (current_app.config.get("SERVERS_MISSING") or {}):
        return {name: "unknown (no Redis)" for name in sources}
    try:
        client = redis_client(settings.redis_url)
        out = {}
        for name in sources:
            lock = SourceLock(client, name)
            holder = lock.holder()
            out[name] = f"held by {holder} (expires in {max(client.pttl(lock.key), 0) // 1000}s)" if holder else "free"
        return out
    except Exception as exc:  # Redis down: the rest of the status is still worth printing
        return {name: f"unknown (Redis: {exc.__class__.__name__})" for name in sources}


@etl.command("status")
def status_command():
    """Each source: last success, last run (status and error), the run going now, who holds its lock."""
    require_servers(current_app, redis=False)
    settings = current_app.config["SETTINGS"]
    conn = _connect(settings)
    try:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT s.name, "
                " (SELECT max(finished_at) FROM etl_runs WHERE source = s.name AND status IN ('succeeded', 'partial')), "
                " last.status, last.finished_at, last.error, "
                " running.id::text, running.status, running.started_at, running.fetched "
                "FROM unnest(%s::text[]) AS s(name) "
                "LEFT JOIN LATERAL (SELECT status, finished_at, error FROM etl_runs WHERE source = s.name "
                "  AND status NOT IN ('queued', 'running') ORDER BY created_at DESC LIMIT 1) last ON true "
                "LEFT JOIN LATERAL (SELECT id, status, started_at, fetched FROM etl_runs WHERE source = s.name "
                "  AND status IN ('queued', 'running') ORDER BY created_at DESC LIMIT 1) running ON true",
                (list(settings.sources),))
            rows = cur.fetchall()
    finally:
        conn.close()
    locks = _locks(settings, [r[0] for r in rows])
    table = []
    for name, success, last_status, last_at, error, run_id, run_status, run_started, run_fetched in rows:
        enabled = "yes" if settings.sources[name].enabled else "no"
        last = f"{last_status} {_ago(last_at)}" if last_status else "none"
        if error:
            last += f": {_short(error, 60)}"
        since = f" since {_ago(run_started)[:-4]}" if run_started else ""
        running = f"{run_id} {run_status}{since}, {run_fetched:,} fetched" if run_id else "-"
        table.append([name, enabled, _ago(success), last, running, locks[name]])
    _table(["SOURCE", "ENABLED", "LAST SUCCESS", "LAST RUN", "RUNNING", "LOCK"], table)


@etl.command("runs")
@click.option("--source", help="Only this source's runs.")
@click.option("--limit", default=20, show_default=True, type=click.IntRange(1, 1000), help="How many runs.")
def runs_command(source: str | None, limit: int):
    """The most recent runs, newest first."""
    require_servers(current_app, redis=False)
    settings = current_app.config["SETTINGS"]
    if source is not None and source not in settings.sources:
        raise click.BadParameter(f"unknown source {source!r}; known: {', '.join(settings.sources)}",
                                 param_hint="--source")
    conn = _connect(settings)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT id::text, source, trigger, status, fetched, loaded, rejected, duration_seconds, "
                        "created_at, error FROM etl_runs WHERE %(source)s::text IS NULL OR source = %(source)s "
                        "ORDER BY created_at DESC LIMIT %(limit)s", {"source": source, "limit": limit})
            rows = cur.fetchall()
    finally:
        conn.close()
    if not rows:
        click.echo("no runs yet" + (f" of {source}" if source else ""))
        return
    _table(["RUN", "SOURCE", "TRIGGER", "STATUS", "FETCHED", "LOADED", "REJECTED", "DURATION", "CREATED", "ERROR"],
           [[run_id, src, trigger, status, f"{fetched:,}", f"{loaded:,}", f"{rejected:,}",
             f"{duration:.1f}s" if duration is not None else "-", _ago(created), _short(error, 50) or "-"]
            for run_id, src, trigger, status, fetched, loaded, rejected, duration, created, error in rows])
