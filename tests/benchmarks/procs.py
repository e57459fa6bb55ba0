"""Child processes, the bench database and Redis database, and machine facts.

Every child runs in its own process group (its own session) so that it, and whatever it forks
(gunicorn's workers, Celery's pool), can be stopped as one, and a Ctrl-C in the terminal reaches only
the benchmark, which then stops them in order. Every wait has a timeout.
"""
from __future__ import annotations

import os
import platform
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import psutil
import psycopg2
from psycopg2 import sql

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# -- child processes ----------------------------------------------------------------------------------

@dataclass
class Child:
    name: str
    proc: subprocess.Popen
    log_path: Path | None
    started: float = field(default_factory=time.monotonic)
    rusage: object = None            # resource usage from wait4 once it ended (ru_maxrss of it and its children)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.poll() is None

    def poll(self):
        """Like Popen.poll, but reaps with wait4 to keep the child's own peak RSS."""
        if self.proc.returncode is not None:
            return self.proc.returncode
        try:
            pid, status, rusage = os.wait4(self.proc.pid, os.WNOHANG)
        except ChildProcessError:
            return self.proc.poll()
        if pid == 0:
            return None
        self.rusage = rusage
        self.proc.returncode = os.waitstatus_to_exitcode(status)
        return self.proc.returncode

    def wait(self, timeout: float, interval: float = 0.02) -> int:
        deadline = time.monotonic() + timeout
        while (code := self.poll()) is None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name} still running after {timeout:.0f}s")
            time.sleep(interval)
        return code

    def peak_rss_mb(self) -> float | None:
        """Peak RSS of the process (largest of it and its reaped descendants), once it ended."""
        if self.rusage is None:
            return None
        kb = self.rusage.ru_maxrss / (1024 if sys.platform == "darwin" else 1)
        return round(kb / 1024, 1)

    def log_tail(self, chars: int = 3000) -> str:
        if self.log_path and self.log_path.exists():
            return self.log_path.read_text(errors="replace")[-chars:]
        return ""

    def stop(self, timeout: float = 35.0) -> None:
        """SIGTERM to the process group, then SIGKILL after `timeout`."""
        if self.poll() is not None:
            self._kill_group(signal.SIGKILL)    # leftovers of a group whose leader already exited
            return
        self._kill_group(signal.SIGTERM)
        try:
            self.wait(timeout, interval=0.05)
        except TimeoutError:
            log(f"{self.name} ignored SIGTERM for {timeout:.0f}s: killing it")
            self._kill_group(signal.SIGKILL)
            try:
                self.wait(10)
            except TimeoutError:
                log(f"{self.name} (pid {self.pid}) could not be reaped")
        self._kill_group(signal.SIGKILL)

    def _kill_group(self, signum) -> None:
        try:
            os.killpg(self.proc.pid, signum)
        except (ProcessLookupError, PermissionError):
            pass


class Children:
    """The processes this benchmark started; `stop_all` in a finally stops every one still running."""

    def __init__(self, log_dir: Path):
        self.log_dir = log_dir
        self.items: list[Child] = []

    def start(self, name: str, cmd: list[str], env: dict, capture: bool = False) -> Child:
        log_path = self.log_dir / f"{name}.log"
        out = open(log_path, "wb")
        try:
            proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        finally:
            out.close()
        child = Child(name, proc, log_path)
        self.items.append(child)
        return child

    def run(self, name: str, cmd: list[str], env: dict, timeout: float) -> Child:
        """Start, wait (bounded), and return the ended child; raise with its log tail if it failed."""
        child = self.start(name, cmd, env)
        try:
            code = child.wait(timeout)
        except TimeoutError:
            child.stop(10)
            raise RuntimeError(f"{name} did not finish within {timeout:.0f}s:\n{child.log_tail()}") from None
        if code != 0:
            raise RuntimeError(f"{name} exited with {code}:\n{child.log_tail()}")
        return child

    def stop_all(self) -> None:
        for child in reversed(self.items):
            if child.poll() is None:
                log(f"stopping {child.name} (pid {child.pid})")
            child.stop()


class RssSampler:
    """Polls a process tree's RSS (largest single process, and the whole tree) while it runs."""

    def __init__(self, pid: int):
        self.root = psutil.Process(pid)
        self.max_single = 0
        self.max_tree = 0

    def sample(self) -> None:
        try:
            procs = [self.root] + self.root.children(recursive=True)
        except psutil.Error:
            return
        total = 0
        for p in procs:
            try:
                rss = p.memory_info().rss
            except psutil.Error:
                continue
            total += rss
            self.max_single = max(self.max_single, rss)
        self.max_tree = max(self.max_tree, total)

    @property
    def single_mb(self) -> float:
        return round(self.max_single / 2**20, 1)

    @property
    def tree_mb(self) -> float:
        return round(self.max_tree / 2**20, 1)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- database and redis -------------------------------------------------------------------------------

def with_database(url: str, name: str) -> str:
    return urlsplit(url)._replace(path="/" + name).geturl()


def with_redis_db(url: str, number: int) -> str:
    return urlsplit(url)._replace(path=f"/{number}").geturl()


def libpq(url: str) -> str:
    scheme, _, rest = url.partition("://")
    return ("postgresql" if scheme.startswith("postgres") else scheme) + "://" + rest


def recreate_database(server_url: str, name: str) -> None:
    conn = psycopg2.connect(with_database(libpq(server_url), "postgres"), connect_timeout=10)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))
            cur.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))
            cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    finally:
        conn.close()


def pick_redis_db(url: str, preferred=(12, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 13, 11)) -> int:
    """A Redis database number that holds no keys and that no client has selected: the Redis server may be
    shared (test runs use 15 or TEST_REDIS_DB, the app 0), and Celery workers on the same database number
    would take each other's tasks."""
    import redis

    client = redis.Redis.from_url(with_redis_db(url, 0), socket_timeout=5, socket_connect_timeout=5)
    try:
        try:
            count = int(client.config_get("databases").get("databases", 16))
        except redis.RedisError:
            count = 16
        busy = {int(k[2:]) for k in client.info("keyspace")}
        busy |= {int(c.get("db", 0)) for c in client.client_list()}
    finally:
        client.close()
    for number in preferred:
        if number < count and number not in busy:
            return number
    raise RuntimeError(f"every Redis database of {url} is in use; pass --redis-db N")


def flush_redis(url: str) -> None:
    import redis

    client = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
    try:
        client.flushdb()
    finally:
        client.close()


def child_env(db_url: str, redis_url: str, **extra: str) -> dict:
    """The environment of the processes a benchmark starts: the caller's, on the benchmark's database and Redis
    database, the upstream APIs unreachable (nothing may fetch from them), no inherited Prometheus directory."""
    env = {**os.environ, "DATABASE_URL": db_url, "REDIS_URL": redis_url, "LOG_LEVEL": "WARNING",
           "COINGECKO_BASE_URL": "http://127.0.0.1:9/api/v3", "COINPAPRIKA_BASE_URL": "http://127.0.0.1:9/v1",
           "PYTHONUNBUFFERED": "1", **extra}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    return env


def connect(url: str, autocommit: bool = True):
    conn = psycopg2.connect(libpq(url), connect_timeout=10)
    conn.autocommit = autocommit
    return conn


def scalar(conn, query: str, params=None):
    with conn.cursor() as cur:
        cur.execute(query, params)
        row = cur.fetchone()
    return row[0] if row else None


# -- machine facts --------------------------------------------------------------------------------------

def machine_facts(db_url: str, embedded: bool) -> dict:
    facts = {
        "hostname": socket.gethostname(),
        "os": f"{platform.system()} {platform.release()}",
        "cpu_model": _cpu_model(),
        "cores_logical": os.cpu_count(),
        "cores_physical": psutil.cpu_count(logical=False),
        "ram_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "postgres_embedded": embedded,
        "git_commit": _git("rev-parse", "--short", "HEAD"),
        "git_dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
        "load_avg_at_start": [round(x, 2) for x in os.getloadavg()],
    }
    try:
        conn = connect(db_url)
        try:
            facts["postgres_version"] = scalar(conn, "SHOW server_version")
            facts["postgres_settings"] = {name: scalar(conn, f"SHOW {name}") for name in (
                "shared_buffers", "work_mem", "max_connections", "synchronous_commit", "max_wal_size")}
        finally:
            conn.close()
    except psycopg2.Error as exc:
        facts["postgres_version"] = f"unknown ({exc.__class__.__name__})"
    return facts


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _git(*args) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10)
        return out.stdout.strip() if out.returncode == 0 else None
    except (OSError, subprocess.TimeoutExpired):
        return None
