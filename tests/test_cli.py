"""`flask etl run` and `flask etl import`, and the bounds on retries and redeliveries."""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, wait_for
from crypto_app import create_app
from crypto_app.coordination import SourceLock, redis_client
from pipeline_helpers import settings_for, table

FIXTURES = Path(__file__).parent / "fixtures"


def _cli_app(test_env, **overrides):
    return create_app({"TESTING": True}, settings=settings_for(test_env, **overrides))


def test_import_loads_a_file_and_prints_the_summary(test_env, db_conn, tmp_path):
    shutil.copy(FIXTURES / "csv_kaggle_cmc_bitcoin_cash_price.csv", tmp_path / "bitcoin_cash_price.csv")
    result = _cli_app(test_env, CSV_DATA_DIR=tmp_path).test_cli_runner().invoke(
        args=["etl", "import", str(tmp_path / "bitcoin_cash_price.csv")])
    assert result.exit_code == 0, result.output
    assert "csv: succeeded" in result.output and "records/s" in result.output
    trigger, loaded = table(db_conn, "SELECT trigger, loaded FROM etl_runs")[0]
    assert trigger == "cli" and loaded > 100
    assert table(db_conn, "SELECT DISTINCT a.slug FROM quotes q JOIN assets a ON a.id = q.asset_id") == [("bitcoin-cash",)]


def test_import_refuses_a_path_outside_the_data_folder(test_env, db_conn, tmp_path):
    inside = tmp_path / "data"
    inside.mkdir()
    outside = tmp_path / "secret.csv"
    outside.write_text("Date,Close\n2024-01-01,1\n")
    result = _cli_app(test_env, CSV_DATA_DIR=inside).test_cli_runner().invoke(
        args=["etl", "import", str(inside / ".." / "secret.csv")])
    assert result.exit_code != 0 and "outside CSV_DATA_DIR" in result.output
    assert table(db_conn, "SELECT count(*) FROM etl_runs") == [(0,)]


def test_run_inline_against_the_upstream_and_refuse_when_a_run_is_going(test_env, fake_upstream, db_conn):
    app = _cli_app(test_env, **fake_upstream.env(COINGECKO_RATE_PER_MINUTE=6000))
    result = app.test_cli_runner().invoke(args=["etl", "run", "coingecko"])
    assert result.exit_code == 0, result.output
    assert "coingecko: succeeded — fetched 30, loaded 30" in result.output

    SourceLock(redis_client(test_env["REDIS_URL"]), "coingecko").acquire("other-run", 60)
    busy = app.test_cli_runner().invoke(args=["etl", "run", "coingecko"])
    assert busy.exit_code != 0 and "already going: other-run" in busy.output
    unknown = app.test_cli_runner().invoke(args=["etl", "run", "kraken"])
    assert unknown.exit_code != 0 and "unknown source" in unknown.output


def test_a_large_import_keeps_memory_flat(test_env, db_conn, tmp_path):
    """300,000 rows through the real import path in its own process: peak RSS stays far below the file."""
    path = tmp_path / "history.csv"
    with path.open("w") as f:
        f.write("Date,Symbol,Name,Close,Volume\n")
        for i in range(300_000):
            f.write(f"{1420070400 + i * 600},C{i % 50},Coin {i % 50},{i % 997}.5,{i}\n")   # until 2020: not in the future
    env = {**test_env, "CSV_DATA_DIR": str(tmp_path), "CSV_CHUNK_ROWS": "5000"}
    code = ("import resource, subprocess, sys; "
            "r = subprocess.run(sys.argv[1:]); "
            "print('peak_kb', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(r.returncode)")
    done = subprocess.run([sys.executable, "-c", code, str(ROOT / ".venv" / "bin" / "flask"), "etl", "import", str(path)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=170)
    assert done.returncode == 0, done.stderr[-2000:]
    peak_mb = int(done.stdout.split("peak_kb")[1].split()[0]) / 1024
    assert table(db_conn, "SELECT count(*) FROM quotes") == [(300_000,)]
    assert path.stat().st_size > 10_000_000 and peak_mb < 250, f"peak {peak_mb:.0f} MB"   # target < 300 MB at any size; the app with pyarrow alone is ~190


@pytest.mark.worker
def test_transient_failures_are_bounded(worker, celery_probe, fake_upstream, db_conn):
    fake_upstream.script("/api/v3/coins/markets", [fake_upstream.json_response(500, {"error": "boom"})] * 10)
    worker(env=fake_upstream.env(COINGECKO_RATE_PER_MINUTE=6000, TASK_MAX_RETRIES=2))
    celery_probe.send_task("tasks.ingest_source", kwargs={"source": "coingecko", "trigger": "schedule"})
    run = wait_for(lambda: table(db_conn, "SELECT status, error FROM etl_runs WHERE status = 'failed'"), timeout=60,
                   message="the run to give up")[0]
    assert run[1].startswith("gave up after 3 transient failures")
    assert len(fake_upstream.requests_to("/api/v3/coins/markets")) == 3


@pytest.mark.worker
def test_a_run_whose_deliveries_keep_dying_is_given_up(worker, celery_probe, fake_upstream, db_conn, test_env):
    with db_conn.cursor() as cur:
        cur.execute("INSERT INTO etl_runs (id, source, trigger, status, unfinished_deliveries) "
                    "VALUES ('00000000-0000-0000-0000-0000000000aa', 'coingecko', 'api', 'running', 5)")
    SourceLock(redis_client(test_env["REDIS_URL"]), "coingecko").acquire("00000000-0000-0000-0000-0000000000aa", 60)
    worker(env=fake_upstream.env(MAX_DELIVERIES=5))
    celery_probe.send_task("tasks.ingest_source", kwargs={"source": "coingecko", "trigger": "api",
                                                          "run_id": "00000000-0000-0000-0000-0000000000aa"})
    run = wait_for(lambda: table(db_conn, "SELECT status, error FROM etl_runs WHERE status = 'failed'"), timeout=60,
                   message="the poison run to be given up")[0]
    assert "deliveries in a row died" in run[1]
    assert fake_upstream.requests == []


def test_an_unchanged_file_is_skipped_unless_forced(test_env, db_conn, tmp_path):
    # named the way CoinMarketCap names it: the file names its coin only there
    shutil.copy(FIXTURES / "csv_kaggle_cmc_bitcoin_cash_price.csv", tmp_path / "bitcoin_cash_price.csv")
    app = _cli_app(test_env, CSV_DATA_DIR=tmp_path)
    first = app.test_cli_runner().invoke(args=["etl", "import", str(tmp_path / "bitcoin_cash_price.csv")])
    assert first.exit_code == 0, first.output
    loaded = table(db_conn, "SELECT loaded FROM etl_runs")[0][0]
    again = app.test_cli_runner().invoke(args=["etl", "import", str(tmp_path / "bitcoin_cash_price.csv")])
    assert again.exit_code == 0 and "unchanged since its last import, skipped (use --force to re-import)" in again.output
    assert "fetched 0" not in again.output and table(db_conn, "SELECT count(*) FROM etl_runs") == [(1,)]
    forced = app.test_cli_runner().invoke(args=["etl", "import", "--force", str(tmp_path / "bitcoin_cash_price.csv")])
    assert forced.exit_code == 0 and f"loaded {loaded:,}" in forced.output, forced.output
    assert table(db_conn, "SELECT count(*), min(loaded) FROM etl_runs") == [(2, loaded)]


def test_a_failing_run_prints_its_error_once_on_one_line(test_env, fake_upstream, db_conn):
    fake_upstream.script("/api/v3/coins/markets", [fake_upstream.html_error(200)] * 3)
    result = _cli_app(test_env, **fake_upstream.env(COINGECKO_RATE_PER_MINUTE=6000)).test_cli_runner().invoke(
        args=["etl", "run", "coingecko"])
    assert result.exit_code == 1
    errors = [line for line in result.output.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and errors[0].startswith("Error: "), result.output


def test_status_and_runs_show_sources_runs_and_locks(test_env, fake_upstream, db_conn):
    app = _cli_app(test_env, **fake_upstream.env(COINGECKO_RATE_PER_MINUTE=6000))
    assert app.test_cli_runner().invoke(args=["etl", "run", "coingecko"]).exit_code == 0
    with db_conn.cursor() as cur:
        cur.execute("INSERT INTO etl_runs (id, source, trigger, status, error, finished_at) VALUES "
                    "('00000000-0000-0000-0000-0000000000bb', 'coinpaprika', 'api', 'failed', "
                    "'coinpaprika connection failed: DNS', now())")
        cur.execute("INSERT INTO etl_runs (id, source, trigger, status, started_at) VALUES "
                    "('00000000-0000-0000-0000-0000000000cc', 'csv', 'cli', 'running', now())")
    SourceLock(redis_client(test_env["REDIS_URL"]), "csv").acquire("00000000-0000-0000-0000-0000000000cc", 60)

    status = app.test_cli_runner().invoke(args=["etl", "status"])
    assert status.exit_code == 0, status.output
    lines = {line.split()[0]: line for line in status.output.splitlines()[1:]}
    assert "succeeded" in lines["coingecko"] and "s ago" in lines["coingecko"] and "free" in lines["coingecko"]
    assert "failed" in lines["coinpaprika"] and "DNS" in lines["coinpaprika"] and "never" in lines["coinpaprika"]
    assert "00000000-0000-0000-0000-0000000000cc running" in lines["csv"]
    assert "held by 00000000-0000-0000-0000-0000000000cc (expires in" in lines["csv"]

    runs = app.test_cli_runner().invoke(args=["etl", "runs", "--limit", "2"])
    assert runs.exit_code == 0 and len(runs.output.splitlines()) == 3, runs.output
    only = app.test_cli_runner().invoke(args=["etl", "runs", "--source", "coingecko"])
    body = only.output.splitlines()[1:]
    assert len(body) == 1 and "coingecko" in body[0] and "succeeded" in body[0] and "30" in body[0]
    assert app.test_cli_runner().invoke(args=["etl", "runs", "--source", "kraken"]).exit_code == 2


def test_flask_needs_no_wrapper_and_help_needs_no_database(test_env, tmp_path):
    """Plain `.venv/bin/flask` (the app from .flaskenv): help without servers; commands say what to do."""
    env = {k: v for k, v in test_env.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    env["CRYPTOFLOW_VAR_DIR"] = str(tmp_path / "var")          # no embedded servers recorded there
    flask = str(ROOT / ".venv" / "bin" / "flask")
    helped = subprocess.run([flask, "etl", "--help"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert helped.returncode == 0 and "status" in helped.stdout and "runs" in helped.stdout, helped.stderr
    for args in (["etl", "status"], ["etl", "run", "csv"], ["etl", "runs"]):
        done = subprocess.run([flask, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 2, (args, done.stderr)
        assert done.stderr.strip().splitlines() == [done.stderr.strip()] and "make run" in done.stderr, done.stderr
    bad = subprocess.run([flask, "etl", "status"], cwd=ROOT, env={**test_env, "PORT": "abc"},
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and bad.stderr.strip() == "cryptoflow: configuration error: PORT must be a whole number, got 'abc'"
    with_urls = subprocess.run([flask, "etl", "runs"], cwd=ROOT, env=test_env, capture_output=True, text=True, timeout=60)
    assert with_urls.returncode == 0 and "no runs yet" in with_urls.stdout, with_urls.stderr


def test_the_progress_bar_keeps_info_lines_off_the_terminal(test_env, tmp_path):
    import logging

    from crypto_app import cli_output
    from crypto_app.logs import configure_logging

    configure_logging("INFO", service="cli")
    root = logging.getLogger()
    before = list(root.handlers)
    bar = cli_output.ProgressBar(total=10, disable=False, file=open(tmp_path / "tty", "w"))
    try:
        assert before[0] not in root.handlers
        logging.getLogger("crypto_app.test").info("batch loaded")
        bar.show_rows(60000, 12345.6)
        assert "60,000 rows, 12,346 rows/s" in str(bar) and "e+" not in str(bar)
    finally:
        bar.close()
    assert root.handlers == before
    assert "batch loaded" in cli_output.LOG_FILE.read_text()


def test_maintain_runs_maintenance_now_and_refuses_while_one_is_going(test_env, db_conn):
    from datetime import timedelta

    import api_data as d
    from storage_data import assets, now, write_snapshots

    ids = assets(db_conn, 2)
    start = (now() - timedelta(days=45)).replace(hour=10, minute=0, second=0, microsecond=0)
    old = write_snapshots(test_env["DATABASE_URL"], d.run(db_conn, "coingecko"), ids, start, count=24)  # 2 h
    app = _cli_app(test_env)
    result = app.test_cli_runner().invoke(args=["etl", "maintain"])
    assert result.exit_code == 0, result.output
    assert "maintenance: succeeded in " in result.output
    assert f"{len(old)} raw rows rolled up, 4 hourly candles written, 2 daily candles written" in result.output
    assert table(db_conn, "SELECT source, trigger, status, fetched FROM etl_runs WHERE source = 'maintenance'") == [
        ("maintenance", "cli", "succeeded", len(old))]
    assert table(db_conn, "SELECT count(*) FROM quotes") == [(0,)]

    again = app.test_cli_runner().invoke(args=["etl", "maintain"])
    assert again.exit_code == 0 and "nothing to do" in again.output, again.output

    SourceLock(redis_client(test_env["REDIS_URL"]), "maintenance").acquire("other-run", 60)
    busy = app.test_cli_runner().invoke(args=["etl", "maintain"])
    assert busy.exit_code == 1 and "maintenance is already going: run other-run holds its lock" in busy.output
    assert table(db_conn, "SELECT count(*) FROM etl_runs WHERE source = 'maintenance'") == [(2,)]
