"""The development lifecycle against real embedded servers (issue 12, findings 7 and 8): a second `make run`
that fails leaves the running system alone, `make stop` / `make status`, servers stopped only by the last
process using them, Flower's login out of argv, everything listening on 127.0.0.1 by default.

Each test gets a var/ of its own (CRYPTOFLOW_VAR_DIR in a temp dir) and free ports for the API, Flower and
the embedded Redis, so it never touches the checkout's own var/ or anything another test uses. Every wait is
bounded; teardown stops whatever is left (checkout stop, then the process groups, then the servers by pid).
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest
import requests

from conftest import ROOT, wait_for

from .conftest import free_port, kill_group

CHECKOUT = [sys.executable, "-m", "crypto_app.checkout"]
FLASK = str(ROOT / ".venv" / "bin" / "flask")


def listen_addresses(port: int) -> set[str]:
    """Local addresses (hex, as /proc/net/tcp writes them) that listen on `port`."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            parts = line.split()
            address, hex_port = parts[1].rsplit(":", 1)
            if parts[3] == "0A" and int(hex_port, 16) == port:
                found.add(address)
    return found


LOOPBACK = "0100007F"   # 127.0.0.1 in /proc/net/tcp


class Checkout:
    """This checkout's commands with a var/ and ports of their own."""

    def __init__(self, var: Path):
        self.var = var
        self.port, self.flower_port, self.redis_port = free_port(), free_port(), free_port()
        self.env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "FLOWER_BASIC_AUTH")}
        self.env.update({"CRYPTOFLOW_VAR_DIR": str(var), "EMBEDDED_REDIS_PORT": str(self.redis_port),
                         "PORT": str(self.port), "FLOWER_PORT": str(self.flower_port), "ENABLED_SOURCES": "csv",
                         "WEB_CONCURRENCY": "1", "WORKER_CONCURRENCY": "1", "LOG_LEVEL": "WARNING",
                         "PROMETHEUS_MULTIPROC_DIR": str(var / "prometheus")})
        self.procs: list[subprocess.Popen] = []

    def run(self, args: list[str], timeout: float = 120, **env) -> subprocess.CompletedProcess:
        return subprocess.run(args, cwd=ROOT, env={**self.env, **env}, capture_output=True, text=True, timeout=timeout)

    def start(self, args: list[str], log_name: str, **env) -> subprocess.Popen:
        log = open(self.var.parent / log_name, "wb")
        proc = subprocess.Popen(args, cwd=ROOT, env={**self.env, **env}, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        proc.log_path = self.var.parent / log_name
        self.procs.append(proc)
        return proc

    def postgres_pid(self) -> int | None:
        try:
            pid = int((self.var / "pgdata" / "postmaster.pid").read_text().split()[0])
            os.kill(pid, 0)
            return pid
        except (OSError, ValueError, IndexError):
            return None

    def redis_up(self) -> bool:
        import socket

        try:
            with socket.create_connection(("127.0.0.1", self.redis_port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def cleanup(self) -> None:
        try:
            self.run(CHECKOUT + ["stop"], timeout=120)
        except subprocess.TimeoutExpired:
            pass
        for proc in self.procs:
            kill_group(proc, signal.SIGKILL, timeout=10)
        pid = self.postgres_pid()
        if pid:
            os.kill(pid, signal.SIGKILL)
        try:
            os.kill(int((self.var / "redis" / "redis.pid").read_text()), signal.SIGKILL)
        except (OSError, ValueError):
            pass


@pytest.fixture
def checkout():
    # Outside pytest's tmp_path: as root, PostgreSQL runs as the `pgserver` user, which must traverse to it
    root = Path(tempfile.mkdtemp(prefix="cryptoflow-lifecycle-"))
    root.chmod(0o755)
    instance = Checkout(root / "var")
    yield instance
    instance.cleanup()
    shutil.rmtree(root, ignore_errors=True)


def test_a_failing_second_make_run_leaves_the_running_system_alone_and_make_stop_stops_it(checkout):
    first = checkout.start(["make", "--no-print-directory", "run"], "make-run.log")
    base = f"http://127.0.0.1:{checkout.port}"

    def serving():
        if first.poll() is not None:
            pytest.fail(f"make run exited: {first.log_path.read_text(errors='replace')[-3000:]}")
        try:
            return requests.get(base + "/api/v1/data?page_size=1", timeout=2).status_code == 200
        except requests.RequestException:
            return False

    wait_for(serving, timeout=150, interval=0.5, message="make run to serve /api/v1/data")
    wait_for(lambda: listen_addresses(checkout.flower_port), timeout=60, interval=0.5, message="Flower to listen")
    pg_pid = checkout.postgres_pid()
    assert pg_pid and checkout.redis_up()

    # finding 7: both listen on 127.0.0.1 only; Flower's generated login is printed once and is in no argv
    assert listen_addresses(checkout.port) == {LOOPBACK}
    assert listen_addresses(checkout.flower_port) == {LOOPBACK}
    user, password = (checkout.var / "flower_auth").read_text().strip().split(":", 1)
    assert first.log_path.read_text(errors="replace").count(password) == 1
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            assert password.encode() not in cmdline.read_bytes(), cmdline
        except OSError:
            continue
    flower = f"http://127.0.0.1:{checkout.flower_port}/api/workers"
    assert requests.get(flower, timeout=10).status_code == 401
    assert requests.get(flower, auth=(user, password), timeout=10).status_code == 200

    status = checkout.run(["make", "--no-print-directory", "status"])
    assert status.returncode == 0, status.stderr
    assert "running: pid " in status.stdout and f"127.0.0.1:{checkout.port}" in status.stdout, status.stdout
    assert f"embedded, running (pid {pg_pid})" in status.stdout
    assert f"running on 127.0.0.1:{checkout.redis_port}" in status.stdout and "(make run)" in status.stdout

    # the trap of issue 12: a second make run that fails must not stop the first one's servers
    broken = checkout.run(["make", "--no-print-directory", "run"], timeout=60, PORT="abc")
    assert broken.returncode != 0
    assert "already running from this checkout (pid" in broken.stderr, broken.stderr
    other_port = checkout.run(["make", "--no-print-directory", "run"], timeout=60, PORT=str(free_port()))
    assert other_port.returncode != 0 and f"API on 127.0.0.1:{checkout.port}" in other_port.stderr
    bad_setting = checkout.run(CHECKOUT + ["run", "--", "true"], timeout=60, PORT="abc",
                               CRYPTOFLOW_VAR_DIR=str(checkout.var.parent / "other-var"))
    assert bad_setting.returncode == 2
    assert bad_setting.stderr.strip() == "cryptoflow: configuration error: PORT must be a whole number, got 'abc'"
    time.sleep(2)
    assert checkout.postgres_pid() == pg_pid and checkout.redis_up() and first.poll() is None
    assert requests.get(base + "/api/v1/data?page_size=1", timeout=5).status_code == 200

    # plain `flask etl status`, no URLs in the environment: it finds the servers through var/embedded.json
    found = checkout.run([FLASK, "etl", "status"], timeout=60)
    assert found.returncode == 0, found.stderr
    assert found.stdout.splitlines()[0].split()[:2] == ["SOURCE", "ENABLED"] and "\ncsv " in found.stdout

    stopped = checkout.run(["make", "--no-print-directory", "stop"], timeout=150)
    assert stopped.returncode == 0, stopped.stderr
    assert "stopping cryptoflow (pid" in stopped.stdout
    first.wait(timeout=30)
    assert checkout.postgres_pid() is None and not checkout.redis_up()
    assert not listen_addresses(checkout.port) and not listen_addresses(checkout.flower_port)
    after = checkout.run(CHECKOUT + ["status"])
    assert "not running (make run starts it)" in after.stdout and "embedded: not running" in after.stdout
    assert not (checkout.var / "run.json").exists() and not (checkout.var / "embedded.json").exists()


def test_servers_are_stopped_by_the_last_session_using_them_never_under_another(checkout):
    holder = checkout.start(CHECKOUT + ["exec", "--stop-after", "--", "sleep", "300"], "holder.log",
                            CRYPTOFLOW_COMMAND_NAME="make test")
    wait_for(lambda: checkout.postgres_pid() and checkout.redis_up() and list((checkout.var / "sessions").glob("*")),
             timeout=90, interval=0.3, message="the first session to start the servers")
    pg_pid = checkout.postgres_pid()

    # a second stop-after session (another `make test`, `make bench`) ends first: it leaves them running
    short = checkout.run(CHECKOUT + ["exec", "--stop-after", "--", sys.executable, "-c",
                                     "import os; print(os.environ['DATABASE_URL'], os.environ['REDIS_URL'])"])
    assert short.returncode == 0 and f"127.0.0.1:{checkout.redis_port}" in short.stdout, short.stderr
    assert checkout.postgres_pid() == pg_pid and checkout.redis_up()
    # `make stop` while a session still uses them: says who, stops nothing
    kept = checkout.run(CHECKOUT + ["stop"])
    assert "left running, still used by pid" in kept.stdout and "(make test)" in kept.stdout
    assert checkout.postgres_pid() == pg_pid

    os.killpg(holder.pid, signal.SIGTERM)              # the session that started them ends last: it stops them
    holder.wait(timeout=90)
    assert checkout.postgres_pid() is None and not checkout.redis_up()

    # servers started by a command that does not stop them (`make worker`, `... env`) are never stopped
    # by a session, only by `make stop`
    exported = checkout.run(CHECKOUT + ["env"])
    assert exported.returncode == 0 and "export DATABASE_URL=" in exported.stdout, exported.stderr
    pg_pid = checkout.postgres_pid()
    assert checkout.run(CHECKOUT + ["exec", "--stop-after", "--", "true"]).returncode == 0
    assert checkout.postgres_pid() == pg_pid and checkout.redis_up()
    assert checkout.run(CHECKOUT + ["stop"]).returncode == 0
    assert checkout.postgres_pid() is None and not checkout.redis_up()


def test_flower_takes_its_login_from_the_environment_not_argv(checkout):
    password = uuid.uuid4().hex
    proc = checkout.start([sys.executable, "-m", "crypto_app.flower"], "flower.log",
                          FLOWER_BASIC_AUTH=f"admin:{password}", DATABASE_URL="postgresql://127.0.0.1:9/none",
                          REDIS_URL=f"redis://127.0.0.1:{checkout.redis_port}/0")
    wait_for(lambda: proc.poll() is not None or listen_addresses(checkout.flower_port), timeout=60, interval=0.3,
             message="Flower to listen")
    assert proc.poll() is None, proc.log_path.read_text(errors="replace")[-2000:]
    assert password.encode() not in Path(f"/proc/{proc.pid}/cmdline").read_bytes()
    assert listen_addresses(checkout.flower_port) == {LOOPBACK}
    base = f"http://127.0.0.1:{checkout.flower_port}/"
    assert requests.get(base, timeout=10).status_code == 401
    assert requests.get(base, auth=("admin", password), timeout=10).status_code != 401
    kill_group(proc)
    assert password not in proc.log_path.read_text(errors="replace")


@pytest.mark.skipif(os.geteuid() != 0, reason="the embedded PostgreSQL needs a system user only as root")
def test_as_root_with_a_minimal_path_the_postgres_user_is_created_or_the_fix_is_one_line(checkout):
    name = f"cf{uuid.uuid4().hex[:8]}"
    code = ("import sys; from crypto_app import embedded as e\n"
            "if sys.argv[2] == 'nosbin': e.SBIN_DIRS = ()\n"
            "try:\n    e.ensure_system_user(sys.argv[1])\n"
            "except e.EmbeddedError as exc:\n    print(exc); sys.exit(2)\n")
    try:
        made = checkout.run([sys.executable, "-c", code, name, "sbin"], PATH="/usr/bin:/bin")
        assert made.returncode == 0, made.stdout + made.stderr
        subprocess.run(["getent", "passwd", name], check=True, capture_output=True, timeout=10)
    finally:
        subprocess.run(["/usr/sbin/userdel", name], capture_output=True, timeout=30)
    missing = checkout.run([sys.executable, "-c", code, name + "x", "nosbin"], PATH="/nonexistent")
    assert missing.returncode == 2 and len(missing.stdout.strip().splitlines()) == 1
    assert "useradd" in missing.stdout and "DATABASE_URL" in missing.stdout
