"""This checkout's processes: who runs the system, who uses the embedded servers, how to stop or see them.

    python -m crypto_app.checkout run -- CMD ...      `make run`: refuse while another instance owns var/,
                                                       check the settings, start the missing servers, run CMD
    python -m crypto_app.checkout exec [--stop-after] -- CMD ...
                                                       start the missing servers, run CMD with the URLs set
                                                       (--stop-after: stop them when CMD ends and nobody else uses them)
    python -m crypto_app.checkout env                  start what is missing, print the URLs as shell exports
    python -m crypto_app.checkout stop                 `make stop`: stop the running system, then the servers
    python -m crypto_app.checkout status               `make status`: what runs, on which ports, who uses the servers

Files under var/ (CRYPTOFLOW_VAR_DIR):
    run.lock, run.json    flock held by the `make run` in charge for its lifetime; its pid, process group, ports
    embedded.json         URLs of the embedded servers (how `flask etl` finds them) and whether they stop when unused
    sessions/<pid>.json   one per live process using the embedded servers (make run, make test, make bench, ...)
    embedded.lock         serializes starting, joining and leaving, so "the last one out stops them" holds

Servers started by a `--stop-after` session (make run, make test, make bench) are stopped by whichever such
session leaves last; servers that were running before are never stopped by a session, only by `make stop`.
"""
from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from datetime import datetime, timezone

from . import embedded
from .config import ConfigError, load_settings

STATE = embedded.VAR_DIR / "embedded.json"
SESSIONS = embedded.VAR_DIR / "sessions"
RUN_LOCK = embedded.VAR_DIR / "run.lock"
RUN_INFO = embedded.VAR_DIR / "run.json"


class AlreadyRunning(RuntimeError):
    pass


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _alive(pid: int | None, group: bool = False) -> bool:
    if not pid:
        return False
    try:
        (os.killpg if group else os.kill)(pid, 0)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def _read_json(path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _write_json(path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(path)


@contextmanager
def _locked():
    embedded.VAR_DIR.mkdir(parents=True, exist_ok=True)
    with open(embedded.VAR_DIR / "embedded.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# --- who uses the embedded servers ------------------------------------------------------------------

def live_sessions() -> list[dict]:
    """Sessions whose process still lives (stale files of dead ones are removed)."""
    alive = []
    for path in sorted(SESSIONS.glob("*.json")) if SESSIONS.is_dir() else []:
        info = _read_json(path)
        if _alive(info.get("pid")):
            alive.append(info)
        else:
            path.unlink(missing_ok=True)
    return alive


def embedded_urls() -> dict:
    """DATABASE_URL / REDIS_URL of this checkout's embedded servers that are running now (none started)."""
    state = _read_json(STATE)
    urls = {}
    if state.get("database_url") and embedded.postgres_pid():
        urls["DATABASE_URL"] = state["database_url"]
    if state.get("redis_url") and state.get("redis_port") and embedded.redis_answers(state["redis_port"]):
        urls["REDIS_URL"] = state["redis_url"]
    return urls


class Session:
    """One process using the embedded servers: open() starts what is missing, close() stops what nobody
    uses any more (only servers started by a stop_after session)."""

    def __init__(self, command: str, stop_after: bool):
        self.command, self.stop_after, self.active = command, stop_after, False
        self.path = SESSIONS / f"{os.getpid()}.json"

    def open(self, env: dict) -> list[str]:
        wanted = [name for name in ("DATABASE_URL", "REDIS_URL") if not env.get(name)]
        if not wanted:
            return []
        with _locked():
            started = embedded.ensure_environment(env)
            state = _read_json(STATE)
            if started:
                state["managed"] = self.stop_after
                state["started_by"] = {"pid": os.getpid(), "command": self.command, "at": _now()}
            if "DATABASE_URL" in wanted:
                state["database_url"] = env["DATABASE_URL"]
            if "REDIS_URL" in wanted:
                state.update(redis_url=env["REDIS_URL"], redis_port=embedded.redis_port())
            _write_json(STATE, state)
            if self.command != "env":
                _write_json(self.path, {"pid": os.getpid(), "command": self.command, "since": _now()})
                self.active = True
        return started

    def close(self) -> None:
        if not self.active:
            return
        self.active = False
        with _locked():
            self.path.unlink(missing_ok=True)
            others = live_sessions()
            if others or not _read_json(STATE).get("managed"):
                return
            embedded.stop()
            STATE.unlink(missing_ok=True)


# --- who runs the system -----------------------------------------------------------------------------

def run_owner() -> dict | None:
    """The `make run` in charge of this checkout (its run.json), or None. Also reports the processes of
    one that died without cleaning up while its process group still lives."""
    if not RUN_LOCK.exists():
        return None
    with open(RUN_LOCK, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read_json(RUN_INFO) or {"pid": None}
        fcntl.flock(handle, fcntl.LOCK_UN)
    info = _read_json(RUN_INFO)
    return info if _alive(info.get("group"), group=True) else None


def _describe(owner: dict) -> str:
    return (f"pid {owner.get('pid')}, API on {owner.get('bind_host', '127.0.0.1')}:{owner.get('port')}, "
            f"Flower on port {owner.get('flower_port')}, since {owner.get('since')}")


class RunOwnership:
    def __init__(self):
        self.handle = None

    @staticmethod
    def refuse_if_owned() -> None:
        owner = run_owner()
        if owner is not None:
            raise AlreadyRunning(f"already running from this checkout ({_describe(owner)}); "
                                 "`make stop` stops it, `make status` shows it")

    def acquire(self, info: dict) -> None:
        self.refuse_if_owned()
        RUN_LOCK.parent.mkdir(parents=True, exist_ok=True)
        self.handle = open(RUN_LOCK, "a")
        try:
            fcntl.flock(self.handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.handle.close()
            raise AlreadyRunning("another `make run` of this checkout is starting; `make status` shows it") from None
        self.update(info)

    def update(self, info: dict) -> None:
        _write_json(RUN_INFO, {**_read_json(RUN_INFO), **info})

    def release(self) -> None:
        if self.handle is not None:
            RUN_INFO.unlink(missing_ok=True)
            fcntl.flock(self.handle, fcntl.LOCK_UN)
            self.handle.close()
            self.handle = None


# --- commands ----------------------------------------------------------------------------------------

def run_command(command: list[str], name: str, stop_after: bool, own: bool) -> int:
    env = dict(os.environ)
    ownership = RunOwnership() if own else None
    session = Session(name, stop_after)
    try:
        if ownership:
            ownership.refuse_if_owned()             # first: whatever else is wrong, say that one runs
            settings = load_settings(env)           # a bad setting stops here, before anything starts
            ownership.acquire({"pid": os.getpid(), "port": settings.port, "flower_port": settings.flower_port,
                               "bind_host": settings.bind_host, "since": _now(), "checkout": str(embedded.VAR_DIR.parent)})
        session.open(env)
        child = subprocess.Popen(command, env=env, process_group=0)
        if ownership:
            ownership.update({"group": child.pid})

        stopping = []

        def forward(signum, _frame):
            stopping.append(signum)
            try:
                os.killpg(child.pid, signum)
            except ProcessLookupError:
                pass

        signal.signal(signal.SIGINT, forward)
        signal.signal(signal.SIGTERM, forward)
        code = child.wait()
        return 0 if stopping else code    # a stop was asked for (Ctrl-C, make stop): ending is success
    finally:
        session.close()
        if ownership:
            ownership.release()


def stop_command(timeout: float = 90.0) -> int:
    owner = run_owner()
    if owner is not None:
        print(f"stopping cryptoflow ({_describe(owner)})", flush=True)
        target, group = (owner.get("pid"), False) if _alive(owner.get("pid")) else (owner.get("group"), True)
        (os.killpg if group else os.kill)(target, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while run_owner() is not None and time.monotonic() < deadline:
            time.sleep(0.2)
        if run_owner() is not None:
            print(f"still running after {timeout:.0f}s: killing process group {owner.get('group')}", flush=True)
            if _alive(owner.get("group"), group=True):
                os.killpg(owner["group"], signal.SIGKILL)
            if _alive(owner.get("pid")):
                os.kill(owner["pid"], signal.SIGKILL)
    with _locked():
        users = live_sessions()
        if users:
            print("embedded servers left running, still used by " +
                  ", ".join(f"pid {u['pid']} ({u['command']})" for u in users), flush=True)
            return 0
        stopped = embedded.stop()
        STATE.unlink(missing_ok=True)
    if owner is None and not stopped:
        print("nothing of this checkout was running")
    return 0


def status_command() -> int:
    owner = run_owner()
    print(f"cryptoflow in {embedded.VAR_DIR.parent}")
    print(f"  system      {'running: ' + _describe(owner) if owner else 'not running (make run starts it)'}")
    pg = embedded.postgres_pid()
    print(f"  PostgreSQL  {f'embedded, running (pid {pg}), data in {embedded.PG_DIR}' if pg else 'embedded: not running'}")
    port = _read_json(STATE).get("redis_port") or embedded.redis_port()
    up = embedded.redis_answers(port)
    print(f"  Redis       {f'embedded, running on 127.0.0.1:{port} (pid {embedded.redis_pid()})' if up else 'embedded: not running'}")
    users = live_sessions()
    print("  used by     " + (", ".join(f"pid {u['pid']} ({u['command']})" for u in users) or "nobody"))
    return 0


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("run", "exec", "env", "stop", "status"):
        print(__doc__, file=sys.stderr)
        return 2
    action, rest = argv[0], argv[1:]
    if action in ("run", "exec"):
        stop_after = action == "run" or (bool(rest) and rest[0] == "--stop-after")
        rest = rest[1:] if rest and rest[0] == "--stop-after" else rest
        rest = rest[1:] if rest and rest[0] == "--" else rest
        if not rest:
            print(f"usage: python -m crypto_app.checkout {action} [--stop-after] -- CMD ...", file=sys.stderr)
            return 2
        # the name is for this session only: popped, so that a `make run` started under `make test` (the
        # lifecycle tests) is not recorded as "make test" too
        given = os.environ.pop("CRYPTOFLOW_COMMAND_NAME", None)
        name = "make run" if action == "run" else (given or " ".join(rest)[:80])
        try:
            return run_command(rest, name, stop_after, own=action == "run")
        except ConfigError as exc:
            print(f"cryptoflow: configuration error: {exc}", file=sys.stderr)
            return 2
        except embedded.EmbeddedError as exc:
            print(f"cryptoflow: {exc}", file=sys.stderr)
            return 2
        except AlreadyRunning as exc:
            print(f"cryptoflow: {exc}", file=sys.stderr)
            return 1
    if action == "env":
        env = dict(os.environ)
        try:
            Session("env", stop_after=False).open(env)   # records the URLs; leaves the servers running
        except embedded.EmbeddedError as exc:
            print(f"cryptoflow: {exc}", file=sys.stderr)
            return 2
        print(f"export DATABASE_URL='{env['DATABASE_URL']}'\nexport REDIS_URL='{env['REDIS_URL']}'")
        return 0
    return stop_command() if action == "stop" else status_command()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
