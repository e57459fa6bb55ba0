"""Large CSV files split into segments that several Celery workers load in parallel."""
import os
import shutil
import signal
import time
from pathlib import Path

import pytest

from conftest import wait_for
from pipeline_helpers import table

pytestmark = pytest.mark.worker
DATA = Path(__file__).parent.parent / "data"


def _history(path: Path, days: int, coins: int = 20) -> int:
    with path.open("w") as f:
        f.write("Date,Symbol,Name,Open,High,Low,Close,Volume,Marketcap\n")
        for day in range(days):
            date = f"{2000 + day // 336:04d}-{day % 336 // 28 + 1:02d}-{day % 28 + 1:02d}"
            for c in range(coins):
                f.write(f"{date},C{c},Coin {c},{c + 1}.5,{c + 2},{c + 1},{c + 1}.{day % 7 + 1}25,{day * 10},{c * 1000}\n")
    return days * coins


def _run(db_conn):
    rows = table(db_conn, "SELECT id::text, status, fetched, loaded, rejected, error FROM etl_runs WHERE source = 'csv'")
    return rows[0] if rows else None


def test_a_large_file_is_loaded_by_several_workers_exactly_once(worker, celery_probe, db_conn, tmp_path):
    total = _history(tmp_path / "big.csv", days=1500)          # 30,000 rows, ~1.8 MB
    shutil.copy(DATA / "asset_overrides.json", tmp_path)
    env = {"CSV_DATA_DIR": str(tmp_path), "CSV_SEGMENT_BYTES": "150000", "CSV_CHUNK_ROWS": "1000"}
    worker(concurrency=1, env=env, name="a")
    worker(concurrency=1, env=env, name="b")
    celery_probe.send_task("tasks.ingest_source", kwargs={"source": "csv", "trigger": "schedule"})
    wait_for(lambda: (_run(db_conn) or [None, "queued"])[1] in ("succeeded", "partial", "failed"), timeout=120,
             message="the segmented run to finish")
    run = _run(db_conn)
    assert run[1:5] == ("succeeded", total, total, 0), run
    assert table(db_conn, "SELECT count(*), count(DISTINCT (asset_id, observed_at)) FROM quotes") == [(total, total)]
    segments = {r[0] for r in table(db_conn, "SELECT DISTINCT locator->>'segment' FROM raw_payloads")}
    assert len(segments) >= 10                                  # it really was split
    cursor = table(db_conn, "SELECT cursor FROM checkpoints WHERE source = 'csv'")[0][0]
    assert cursor["position"]["files"]["big.csv"]["done"] and not cursor.get("segments")

    celery_probe.send_task("tasks.ingest_source", kwargs={"source": "csv", "trigger": "schedule"})
    wait_for(lambda: len(table(db_conn, "SELECT 1 FROM etl_runs WHERE status = 'succeeded'")) == 2, timeout=60,
             message="the second run")
    assert table(db_conn, "SELECT fetched FROM etl_runs ORDER BY created_at DESC LIMIT 1") == [(0,)]


def test_a_killed_segment_resumes_and_nothing_is_lost_or_doubled(worker, celery_probe, db_conn, tmp_path):
    total = _history(tmp_path / "big.csv", days=2000)
    shutil.copy(DATA / "asset_overrides.json", tmp_path)
    env = {"CSV_DATA_DIR": str(tmp_path), "CSV_SEGMENT_BYTES": "400000", "CSV_CHUNK_ROWS": "500"}
    w = worker(concurrency=2, env=env)
    celery_probe.send_task("tasks.ingest_source", kwargs={"source": "csv", "trigger": "schedule"})
    wait_for(lambda: (_run(db_conn) or [0, 0, 0, 0])[3] > 3000, timeout=60, message="some progress")
    for pid in w.children():
        os.kill(pid, signal.SIGKILL)
    time.sleep(0.5)
    wait_for(lambda: (_run(db_conn) or [None, "queued"])[1] in ("succeeded", "partial", "failed"), timeout=150,
             message="the run to finish after the kill")
    run = _run(db_conn)
    assert run[1] == "succeeded", run
    assert table(db_conn, "SELECT count(*), count(DISTINCT (asset_id, observed_at)) FROM quotes") == [(total, total)]
