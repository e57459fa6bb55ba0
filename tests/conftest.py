"""Shared fixtures: real PostgreSQL and Redis (the machine's or embedded ones), never mocks.

Where the servers come from:
- DATABASE_URL / REDIS_URL set: the tests use those servers, but never their data: they create a
  database `<name>_test` (TEST_DATABASE_NAME overrides) and use Redis database TEST_REDIS_DB (default 15).
- unset: the embedded PostgreSQL and Redis under var/ are started (crypto_app.checkout), and stopped at the
  end unless they were running before or another process still uses them.
The test database is dropped and migrated afresh once per session; every test starts from empty tables.
"""
from __future__ import annotations
pytest_plugins = ["fake_upstream"]

import atexit
import os
from datetime import datetime, timezone
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import psycopg2
import pytest
import redis as redis_lib
from psycopg2 import sql

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures"
sys.path.insert(0, str(ROOT))

from crypto_app import create_app  # noqa: E402
from crypto_app.config import load_settings  # noqa: E402
from crypto_app import checkout  # noqa: E402

TABLES = ("backfill_windows", "backfills", "rejected_records", "raw_payloads", "raw_pages", "candles", "quotes", "latest_quotes", "dataset_assets", "datasets",
          "asset_identifiers", "assets", "checkpoints", "etl_runs", "csv_row_hashes")


def _server_urls() -> tuple[str, str]:
    env = {"DATABASE_URL": os.environ.get("DATABASE_URL", ""), "REDIS_URL": os.environ.get("REDIS_URL", "")}
    if not (env["DATABASE_URL"] and env["REDIS_URL"]):
        # embedded servers: stopped when pytest ends, unless they ran before or another session uses them
        session = checkout.Session("pytest", stop_after=True)
        session.open(env)
        atexit.register(session.close)
    return env["DATABASE_URL"], env["REDIS_URL"]


def _with_database(url: str, name: str) -> str:
    return urlsplit(url)._replace(path="/" + name).geturl()


def _with_redis_db(url: str, number: int) -> str:
    parts = urlsplit(url)
    return parts._replace(path=f"/{number}").geturl()


def _recreate_database(server_url: str, name: str) -> None:
    conn = psycopg2.connect(_with_database(server_url, "postgres"), connect_timeout=10)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))
            cur.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))
            cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    finally:
        conn.close()


@pytest.fixture(scope="session")
def test_env() -> dict:
    """Environment (URLs and settings) every test process and subprocess uses."""
    server_db, server_redis = _server_urls()
    base_name = urlsplit(server_db).path.lstrip("/") or "cryptoflow"
    name = os.environ.get("TEST_DATABASE_NAME") or f"{base_name}_test"
    _recreate_database(server_db, name)
    env = dict(os.environ)
    env.update({
        "DATABASE_URL": _with_database(server_db, name),
        "REDIS_URL": _with_redis_db(server_redis, int(os.environ.get("TEST_REDIS_DB", "15"))),
        "API_TOKEN": "test-token",
        "LOG_LEVEL": os.environ.get("TEST_LOG_LEVEL", "WARNING"),
        "CSV_DATA_DIR": str(ROOT / "data"),
        "COINGECKO_BASE_URL": "http://127.0.0.1:9/api/v3",   # nothing listens: tests never reach the internet
        "COINPAPRIKA_BASE_URL": "http://127.0.0.1:9/v1",
    })
    migrated = subprocess.run([sys.executable, "-m", "flask", "--app", "wsgi:app", "db", "upgrade"], cwd=ROOT,
                              env=env, timeout=120, capture_output=True, text=True)
    if migrated.returncode:
        pytest.exit(f"flask db upgrade failed:\n{migrated.stderr[-3000:]}", returncode=3)
    return env


@pytest.fixture(scope="session")
def settings(test_env):
    return load_settings(test_env)


@pytest.fixture(scope="session")
def app(test_env, settings):
    application = create_app({"TESTING": True}, settings=settings)
    yield application


@pytest.fixture(autouse=True)
def _fresh_api_data_now():
    """api_data.NOW ("now" of the rows tests write) is taken afresh for each test: freshness and staleness
    are judged against the real clock, and a suite running 15 minutes must not age the first test's 'now'."""
    import api_data
    api_data.NOW = datetime.now(timezone.utc).replace(microsecond=0)
    yield


@pytest.fixture(autouse=True)
def clean_state(request):
    """Empty tables and the test Redis database before each test that touches services."""
    if not _uses_services(request):
        yield
        return
    test_env = request.getfixturevalue("test_env")
    conn = psycopg2.connect(test_env["DATABASE_URL"], connect_timeout=10)
    try:
        with conn, conn.cursor() as cur:
            cur.execute(sql.SQL("TRUNCATE {} RESTART IDENTITY CASCADE").format(
                sql.SQL(", ").join(sql.Identifier(t) for t in TABLES)))
    finally:
        conn.close()
    redis_lib.Redis.from_url(test_env["REDIS_URL"], socket_timeout=5).flushdb()
    yield


def _uses_services(request) -> bool:
    return any(name in request.fixturenames
               for name in ("test_env", "app", "client", "db_conn", "redis", "worker", "settings"))


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def redis(test_env):
    client = redis_lib.Redis.from_url(test_env["REDIS_URL"], socket_timeout=5)
    yield client
    client.close()


@pytest.fixture
def db_conn(test_env):
    """A plain psycopg2 connection to the test database, for asserting on tables."""
    conn = psycopg2.connect(test_env["DATABASE_URL"], connect_timeout=10)
    conn.autocommit = True
    yield conn
    conn.close()


def wait_for(predicate, timeout: float = 30.0, interval: float = 0.1, message: str = "condition"):
    """Poll `predicate` until it returns a truthy value; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {message}")
        time.sleep(interval)


# --- real Celery workers --------------------------------------------------------------------------

class WorkerProcess:
    """A `celery -A tasks worker` subprocess; stopped (TERM, then KILL) at teardown."""

    def __init__(self, env: dict, name: str, concurrency: int, log_path: Path):
        import socket

        self.name = f"{name}@{socket.gethostname()}"
        self.log_path = log_path
        self._log = open(log_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "tasks", "worker", "--pool=prefork",
             f"--concurrency={concurrency}", "--loglevel=INFO", f"--hostname={self.name}",
             "--without-gossip", "--without-mingle"],
            cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)

    def children(self) -> list[int]:
        out = subprocess.run(["pgrep", "-P", str(self.proc.pid)], capture_output=True, text=True, timeout=5)
        return [int(pid) for pid in out.stdout.split()]

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self, timeout: float = 20.0) -> None:
        import signal

        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
            except ProcessLookupError:
                pass
        self._log.close()


@pytest.fixture
def celery_probe(test_env):
    from celery import Celery

    probe = Celery("probe")
    probe.conf.update(broker_url=test_env["REDIS_URL"], broker_connection_timeout=5,
                      broker_connection_retry_on_startup=True)
    yield probe
    probe.close()


@pytest.fixture
def worker(test_env, tmp_path, celery_probe):
    """Start real Celery workers: `worker(concurrency=1, env={...})` returns a running WorkerProcess."""
    started: list[WorkerProcess] = []

    def start(concurrency: int = 1, env: dict | None = None, name: str | None = None) -> WorkerProcess:
        name = name or f"w{len(started) + 1}"
        proc = WorkerProcess({**test_env, **(env or {})}, name, concurrency, tmp_path / f"{name}.log")
        started.append(proc)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if proc.proc.poll() is not None:
                pytest.fail(f"worker {name} exited: {proc.log_tail()}")
            if celery_probe.control.ping(destination=[proc.name], timeout=0.5):
                return proc
        pytest.fail(f"worker {name} did not answer a ping within 60s: {proc.log_tail()}")

    yield start
    for proc in started:
        proc.stop()
