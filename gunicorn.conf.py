"""gunicorn settings for the API: `gunicorn -c gunicorn.conf.py wsgi:app` (what the Procfile runs).

- bind: $BIND_HOST:$PORT (default 127.0.0.1:8000; docker compose sets BIND_HOST=0.0.0.0 inside its network); workers: $WEB_CONCURRENCY (default 2).
- logging: JSON lines on stderr (crypto_app/logs.py), gunicorn's own "Booting worker" lines included.
- gthread workers: the master's heartbeat does not depend on requests, so a legacy `?sync=true`
  trigger may wait (up to 300 s) without the worker being killed for it.
- Prometheus: with several workers the HTTP metrics live in files under PROMETHEUS_MULTIPROC_DIR
  (default var/prometheus), wiped when gunicorn starts; a worker that exits is marked dead so its
  gauges disappear while its counters keep counting.
"""
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from crypto_app.config import PROJECT_ROOT, settings_or_exit  # noqa: E402  (a bad setting: one line, exit 2)
from crypto_app.logs import gunicorn_logconfig  # noqa: E402

_settings = settings_or_exit()
bind = f"[{_settings.bind_host}]:{_settings.port}" if ":" in _settings.bind_host else f"{_settings.bind_host}:{_settings.port}"
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
worker_class = "gthread"
threads = int(os.environ.get("GUNICORN_THREADS", "4"))
timeout = int(os.environ.get("GUNICORN_TIMEOUT", "60"))
graceful_timeout = 30
keepalive = 5
accesslog = None  # the app logs one JSON line per request, with its request id
errorlog = "-"
loglevel = _settings.log_level.lower()
logconfig_dict = gunicorn_logconfig(_settings.log_level)   # gunicorn's own lines as JSON, service "api"
# gunicorn >= 24 opens a control socket, by default ONE per user: a second gunicorn on the machine (tests,
# a benchmark, another checkout) would take it over and could be stopped through it. One per port instead.
control_socket = str(PROJECT_ROOT / "var" / f"gunicorn-{_settings.port}.ctl")
os.makedirs(PROJECT_ROOT / "var", exist_ok=True)
forwarded_allow_ips = os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1")

if workers > 1:
    os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", str(PROJECT_ROOT / "var" / "prometheus"))


def on_starting(server):
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if path:
        os.makedirs(path, exist_ok=True)
        for stale in Path(path).glob("*.db"):  # samples of a previous gunicorn: not ours to add up
            stale.unlink()


def child_exit(server, worker):
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)
