"""`flask etl maintain`: the maintenance run (partitions, rollups, retention) now, in this process.

The same run as the beat task's (crypto_app.pipeline.maintenance.deliver_maintenance): one run row of source
`maintenance` with trigger `cli`, the same lock (refused while another maintenance run holds it), the same
resumable steps. For an operator who changed a retention setting, or whose beat was down past the health's
overdue threshold, and does not want to wait for the next schedule."""
from __future__ import annotations

import uuid

import click
from flask import current_app

from .cli import etl
from .cli_output import require_servers

# The counts a run reports, in the order its steps run, with the words an operator reads.
COUNTS = (("partitions_created", "partitions created"), ("partitions_dropped", "expired partitions dropped"),
          ("quotes_rolled_up", "raw rows rolled up"), ("hourly_candles", "hourly candles written"),
          ("daily_candles", "daily candles written"), ("hourly_candles_expired", "hourly candles expired"),
          ("raw_pages_pruned", "raw page bodies pruned"), ("rejected_expired", "rejected records expired"),
          ("partitions_compacted", "days compacted"), ("quotes_compacted", "raw rows compacted"),
          ("partitions_busy", "partitions left for the next run (busy)"),
          ("compactions_busy", "compactions left for a later run (busy)"))


@etl.command("maintain")
def maintain_command():
    """Run maintenance now (partitions ahead, rollups, expiry, retention, compaction) and print what it did."""
    from .pipeline.maintenance import SOURCE, deliver_maintenance

    require_servers(current_app)
    settings = current_app.config["SETTINGS"]
    run_id = str(uuid.uuid4())
    click.echo(f"run {run_id} ({SOURCE})", err=True)
    step = deliver_maintenance(settings, run_id, trigger="cli", kind="cli")
    if step.summary.get("skipped"):
        holder = step.summary.get("running_run_id")
        raise click.ClickException(f"maintenance is already going: run {holder} holds its lock; follow it with "
                                   f"`flask etl runs --source {SOURCE}`")
    if step.status == "failed":
        raise click.ClickException(f"run {run_id} failed: {step.error}")   # one line, the root cause
    counts = step.summary
    done = ", ".join(f"{counts.get(key, 0):,} {words}" for key, words in COUNTS if counts.get(key))
    click.echo(f"run {run_id} {SOURCE}: succeeded in {counts.get('seconds', 0):.1f}s — {done or 'nothing to do'}")
