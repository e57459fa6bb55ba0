"""Every process logs JSON lines with its own `service`: gunicorn (its own banner lines too), the Celery
worker and beat (started with `--quiet` as the Procfile does: no plain-text banner), Flower and the CLI.
Each process is started for real and stopped (TERM, then KILL) within a bounded time."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from conftest import ROOT

from crypto_app.logs import detect_service

BIN = os.path.dirname(sys.executable)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _run_for(cmd: list[str], env: dict, seconds: float, until: str | None = None) -> list[str]:
    """Run `cmd` (its own process group) for up to `seconds`, or until a line containing `until` shows up."""
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    deadline = time.monotonic() + seconds
    os.set_blocking(proc.stdout.fileno(), False)
    buffer = b""
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            chunk = proc.stdout.read() or b""
            buffer += chunk
            if until and until.encode() in buffer:
                time.sleep(0.5)
                break
            time.sleep(0.1)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        os.set_blocking(proc.stdout.fileno(), True)
        buffer += proc.stdout.read() or b""
        proc.stdout.close()
    return [line for line in buffer.decode(errors="replace").splitlines() if line.strip()]


def _assert_json(lines: list[str], service: str) -> list[dict]:
    assert lines, "no output at all"
    plain = [line for line in lines if not line.startswith("{")]
    assert not plain, f"plain-text lines: {plain[:5]}"
    records = [json.loads(line) for line in lines]
    assert {r["service"] for r in records} == {service}, {r["service"] for r in records}
    assert all({"ts", "level", "logger", "message"} <= set(r) for r in records)
    lines_seen = [(r["ts"], r["logger"], r["message"]) for r in records]
    assert len(lines_seen) == len(set(lines_seen)), "a line was printed twice (two handlers)"
    return records


def test_the_service_is_told_by_the_command_line():
    assert detect_service(["/v/bin/gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"], {}) == "api"
    assert detect_service(["/v/bin/celery", "-A", "tasks", "--quiet", "worker"], {}) == "worker"
    assert detect_service(["/v/lib/celery/__main__.py", "-A", "tasks", "beat"], {}) == "beat"
    assert detect_service(["/v/bin/celery", "-A", "tasks", "flower", "--port=1"], {}) == "flower"
    assert detect_service(["/v/bin/flask", "--app", "wsgi:app", "etl", "run", "csv"], {}) == "cli"
    assert detect_service(["/v/bin/flask", "--app", "wsgi:app", "run"], {}) == "api"
    assert detect_service(["/v/bin/flask", "etl", "status"], {"CRYPTOFLOW_SERVICE": "worker"}) == "worker"


def test_gunicorn_logs_its_own_lines_as_json_with_service_api(test_env):
    port = _free_port()
    env = {**test_env, "PORT": str(port), "WEB_CONCURRENCY": "1", "LOG_LEVEL": "INFO"}
    lines = _run_for([f"{BIN}/gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"], env, 40, until="Booting worker")
    records = _assert_json(lines, "api")
    assert any(r["logger"] == "gunicorn.error" and r["message"].startswith("Listening at") for r in records)


def test_beat_logs_json_with_service_beat(test_env, tmp_path):
    env = {**test_env, "LOG_LEVEL": "INFO", "ENABLED_SOURCES": "csv", "CSV_SCHEDULE_SECONDS": "3600"}
    lines = _run_for([sys.executable, "-m", "celery", "-A", "tasks", "--quiet", "beat", "--loglevel=INFO",
                      f"--schedule={tmp_path / 'schedule'}"], env, 40, until="Starting")
    records = _assert_json(lines, "beat")
    assert any(r["message"] == "beat: Starting..." for r in records)


def test_flower_logs_json_with_service_flower(test_env):
    env = {**test_env, "LOG_LEVEL": "INFO", "FLOWER_PORT": str(_free_port()), "FLOWER_BASIC_AUTH": "u:p"}
    lines = _run_for([sys.executable, "-m", "crypto_app.flower"], env, 40, until="Registered tasks")
    lines = [line for line in lines if not line.startswith("[flower]")]    # its one-time login notice
    records = _assert_json(lines, "flower")
    assert any(r["message"].startswith("Visit me at") for r in records)


@pytest.mark.parametrize("level", ["INFO"])
def test_the_cli_logs_json_with_service_cli(test_env, db_conn, level):
    env = {**test_env, "LOG_LEVEL": level}
    result = subprocess.run([f"{BIN}/flask", "--app", "wsgi:app", "etl", "import", "data/sample_markets.csv"],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    logged = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    assert logged and {r["service"] for r in logged} == {"cli"}
    assert any(r["message"] == "batch loaded" for r in logged)


@pytest.mark.worker
def test_a_rate_limit_wait_is_one_structured_line(worker, client, db_conn, fake_upstream):
    fake_upstream.set_coins(8)
    w = worker(env={**fake_upstream.env(COINGECKO_PER_PAGE=5, COINGECKO_RATE_PER_MINUTE=60, COINGECKO_RATE_BURST=1,
                                        RATE_LIMIT_MAX_SLEEP_SECONDS=0), "LOG_LEVEL": "INFO"})
    run_id = client.post("/api/v1/runs", json={"source": "coingecko"},
                         headers={"Authorization": "Bearer test-token"}).get_json()["id"]

    def finished():
        with db_conn.cursor() as cur:
            cur.execute("SELECT status FROM etl_runs WHERE id = %s AND finished_at IS NOT NULL", (run_id,))
            return cur.fetchone()

    deadline = time.monotonic() + 60
    while not finished() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert finished() == ("succeeded",), w.log_tail()
    records = [json.loads(line) for line in w.log_path.read_text().splitlines() if line.startswith("{")]
    ours = [r for r in records if r.get("run_id") == run_id]
    waits = [r for r in ours if r["message"] == "rate limit wait"]
    assert waits and all(r["countdown"] >= 1 and r["source"] == "coingecko" and r["service"] == "worker"
                         for r in waits)
    assert [r["message"] for r in ours].count("run started") == 1
    assert [r["message"] for r in ours].count("run resumed") == len(waits)
    assert not [r for r in records if " retry: " in r["message"]], "Celery's bare retry line"
