"""Structured JSON logging for the API, the worker and beat.

Every line carries stable keys: `request_id` inside an HTTP request, `task_id` inside a Celery task,
and whatever `extra={...}` the caller adds (`run_id`, `source`, ...).
"""
from __future__ import annotations

import logging
import sys

from pythonjsonlogger.json import JsonFormatter


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


def configure_logging(level: str = "INFO", service: str = "api") -> None:
    root = logging.getLogger()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(
        "%(asctime)s %(levelname)s %(name)s %(message)s",
        rename_fields={"asctime": "ts", "levelname": "level", "name": "logger"},
        static_fields={"service": service},
    ))
    handler.addFilter(ContextFilter())
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("urllib3", "werkzeug"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(level)))
