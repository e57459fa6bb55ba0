"""`flask etl backfill`: --dry-run prints the windows and their cost; --inline fills them with a progress bar."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

from crypto_app import create_app
from pipeline_helpers import run_inline, settings_for, table


def _day(days_ago: int) -> str:
    today = datetime.now(timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)
    return (today - timedelta(days=days_ago)).date().isoformat()


def test_dry_run_then_inline_backfill(test_env, db_conn, fake_upstream):
    fake_upstream.set_coins(3)
    settings = settings_for(test_env, **fake_upstream.env(COINGECKO_RATE_PER_MINUTE=6000,
                                                          COINPAPRIKA_RATE_PER_MINUTE=6000))
    run_inline(settings, "coingecko")
    run_inline(settings, "coinpaprika")
    runner = create_app({"TESTING": True}, settings=settings).test_cli_runner()
    fake_upstream.clear_requests()
    dry = runner.invoke(args=["etl", "backfill", "coin-1", "coin-2", "--since", _day(400), "--interval", "1d",
                              "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert "0 requests (unavailable: beyond the plan" in dry.output
    assert "windows: 8, requests: 6 (coingecko 2, coinpaprika 4)" in dry.output, dry.output
    assert fake_upstream.requests == [] and table(db_conn, "SELECT count(*) FROM backfills") == [(0,)]
    done = runner.invoke(args=["etl", "backfill", "coin-1", "coin-2", "--since", _day(40), "--inline"])
    assert done.exit_code == 0, done.output
    assert "succeeded - windows 4 done, 0 failed, 0 unavailable, 0 cancelled; rows 164 inserted" in done.output
    assert table(db_conn, "SELECT trigger, status FROM backfills") == [("cli", "succeeded")]
