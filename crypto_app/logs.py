"""Structured JSON logging for every process: the API, the worker, beat, Flower and the CLI.

Every line is one JSON object with `ts`, `level`, `logger`, `message`, `service` (api, worker, beat,
flower, cli: `detect_service`), `request_id` inside an HTTP request, `task_id`/`task_name` inside a
Celery task, and whatever `extra={...}` the caller adds (`run_id`, `source`, `error_kind`, ...).

- The root logger has exactly one handler (ours); libraries' loggers propagate to it.
- gunicorn's own loggers use the same handler through `gunicorn_logconfig` (gunicorn.conf.py).
- Celery's per-retry line ("Task ...[id] retry: Retry in 4s: ...") is dropped: the task logs its own
  line naming the run, the reason and the countdown.
"""
from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from pythonjsonlogger.json import JsonFormatter

SERVICES = ("api", "worker", "beat", "flower", "cli")
CELERY_SERVICES = {"worker": "worker", "beat": "beat", "flower": "flower"}


class ContextFilter(logging.Filter):
    """Adds the request id or the Celery task id of the current context to each record."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            try:
                from flask import g, has_request_context

                if has_request_context():
                    record.request_id = getattr(g, "request_id", None)
            except Exception:  # logging must never fail the caller
                pass
        if not hasattr(record, "task_id"):
            try:
                from celery import current_task

                if current_task and current_task.request and current_task.request.id:
                    record.task_id = current_task.request.id
                    record.task_name = current_task.name
            except Exception:
                pass
        return True


class DropCeleryRetryLines(logging.Filter):
    """Celery logs every retry as "Task name[id] retry: Retry in 4s: <exc>"; ours says it better."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.name == "celery.app.trace" and isinstance(record.msg, str)
                    and " retry: " in record.msg)


def detect_service(argv: list[str] | None = None, env: dict | None = None) -> str:
    """Which process this is: CRYPTOFLOW_SERVICE if set, else from the command line."""
    env = os.environ if env is None else env
    if env.get("CRYPTOFLOW_SERVICE") in SERVICES:
        return env["CRYPTOFLOW_SERVICE"]
    argv = list(sys.argv if argv is None else argv)
    program = Path(argv[0]).name if argv else ""
    module = Path(argv[0]).parent.name if argv and program == "__main__.py" else ""
    words = [a for a in argv[1:] if not a.startswith("-")]
    if program == "celery" or module == "celery":
        return next((CELERY_SERVICES[w] for w in words if w in CELERY_SERVICES), "cli")
    if program == "flask" or module == "flask":
        return "api" if _flask_command(argv[1:]) == "run" else "cli"   # `flask run` serves the API
    return "api"


def _flask_command(args: list[str]) -> str | None:
    takes_value = {"--app", "-A", "--env-file", "-e"}
    skip = False
    for arg in args:
        if skip:
            skip = False
        elif arg in takes_value:
            skip = True
        elif not arg.startswith("-"):
            return arg
    return None


def json_formatter(service: str | None = None) -> JsonFormatter:
    return JsonFormatter(
        "%(asctime)s %(levelname)s %(name)s %(message)s",
        rename_fields={"asctime": "ts", "levelname": "level", "name": "logger"},
        static_fields={"service": service or detect_service()},
    )


def json_handler(service: str | None = None) -> logging.Handler:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(json_formatter(service))
    handler.addFilter(ContextFilter())
    handler.addFilter(DropCeleryRetryLines())
    return handler


def configure_logging(level: str = "INFO", service: str | None = None) -> None:
    """One JSON handler on the root logger (replacing any other); `service` defaults to detect_service()."""
    root = logging.getLogger()
    root.handlers[:] = [json_handler(service)]
    root.setLevel(level)
    logging.captureWarnings(True)            # warnings.warn (e.g. Celery's SecurityWarning) as JSON lines too
    for noisy in ("urllib3", "werkzeug"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(level)))
    for own in ("gunicorn.error", "celery", "tornado", "flower"):
        logger = logging.getLogger(own)      # handlers of their own would print each line twice
        logger.handlers[:] = []
        logger.propagate = True


def gunicorn_logconfig(level: str = "INFO") -> dict:
    """gunicorn's `logconfig_dict`: its master and workers log JSON lines with service "api"."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": "crypto_app.logs.json_formatter", "service": "api"}},
        "filters": {"context": {"()": "crypto_app.logs.ContextFilter"}},
        "handlers": {"json": {"class": "logging.StreamHandler", "formatter": "json", "filters": ["context"],
                              "stream": "ext://sys.stderr"}},
        "root": {"level": level, "handlers": ["json"]},
        "loggers": {
            "gunicorn.error": {"level": level, "handlers": [], "propagate": True},
            # the app logs one line per request itself (crypto_app.api.access, with its request id)
            "gunicorn.access": {"level": "CRITICAL", "handlers": [], "propagate": False},
        },
    }
