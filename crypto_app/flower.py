"""Start Flower behind basic auth: `python -m crypto_app.flower`; `... flower login` prints how to log in.

FLOWER_BASIC_AUTH (user:password) protects it. When it is unset, a random password is generated once,
kept in var/flower_auth (mode 600), and `make run` prints it once at start. The login reaches Flower through
its own FLOWER_BASIC_AUTH environment variable, never the command line (argv is visible to every local
user in `ps`; a process's environment only to its owner). Flower listens on BIND_HOST (default 127.0.0.1).
"""
from __future__ import annotations

import os
import secrets
import sys

from .config import settings_or_exit
from .embedded import VAR_DIR

AUTH_FILE = VAR_DIR / "flower_auth"


def basic_auth(settings) -> str:
    if settings.flower_basic_auth:
        return settings.flower_basic_auth
    if not AUTH_FILE.exists():
        AUTH_FILE.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(AUTH_FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(f"admin:{secrets.token_urlsafe(12)}\n")
    return AUTH_FILE.read_text().strip()


def login_line(settings) -> str:
    """What `make run` prints once: where Flower is and how to log in."""
    url = f"http://{settings.bind_host}:{settings.flower_port}"
    if settings.flower_basic_auth:
        return f"Flower   {url}   (login: the user:password in FLOWER_BASIC_AUTH)"
    return f"Flower   {url}   (login {basic_auth(settings)}, kept in {AUTH_FILE})"


def main(argv: list[str]) -> int:
    settings = settings_or_exit()
    if argv[:1] == ["login"]:
        print(login_line(settings))
        return 0
    env = {**os.environ, "FLOWER_BASIC_AUTH": basic_auth(settings), "FLOWER_ADDRESS": settings.bind_host,
           "FLOWER_PORT": str(settings.flower_port)}
    os.execve(sys.executable, [sys.executable, "-m", "celery", "-A", "tasks", "flower"], env)
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
