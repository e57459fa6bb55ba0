"""Start Flower behind basic auth: `python -m crypto_app.flower`.

FLOWER_BASIC_AUTH (user:password) protects it. When it is unset, a random password is generated once,
kept in var/flower_auth (mode 600) and printed, so Flower is never served without a password.
"""
from __future__ import annotations

import os
import secrets
import sys

from .config import PROJECT_ROOT, load_settings


def basic_auth(settings) -> str:
    if settings.flower_basic_auth:
        return settings.flower_basic_auth
    path = PROJECT_ROOT / "var" / "flower_auth"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"admin:{secrets.token_urlsafe(12)}\n")
        path.chmod(0o600)
    auth = path.read_text().strip()
    print(f"[flower] FLOWER_BASIC_AUTH is unset; using the generated login in {path}", file=sys.stderr)
    return auth


def main() -> None:
    settings = load_settings()
    args = [sys.executable, "-m", "celery", "-A", "tasks", "flower", f"--port={settings.flower_port}",
            f"--basic-auth={basic_auth(settings)}", "--address=0.0.0.0"]
    os.execv(sys.executable, args)


if __name__ == "__main__":
    main()
