"""The API's view of the broker: publish tasks by name and ping workers, without importing worker code."""
from __future__ import annotations

from celery import Celery
from flask import current_app

from .celery_settings import celery_settings, display_name


def celery_client(app=None) -> Celery:
    app = app or current_app
    client = app.extensions.get("celery_client")
    if client is None:
        client = Celery("cryptoflow-api")
        client.conf.update(celery_settings(app.config["SETTINGS"]))
        app.extensions["celery_client"] = client
    return client


def send_task(name: str, kwargs: dict, task_id: str) -> None:
    """Publish a task; raise on an unreachable broker instead of retrying for long."""
    celery_client().send_task(name, kwargs=kwargs, task_id=task_id, shadow=display_name(name, kwargs), retry=True,
                              retry_policy={"max_retries": 1, "interval_start": 0.2, "interval_step": 0.2,
                                            "interval_max": 0.5})


def ping_workers(timeout: float = 1.0) -> list[str]:
    """Names of the workers that answered a ping within `timeout` seconds."""
    replies = celery_client().control.ping(timeout=timeout) or []
    return sorted(name for reply in replies for name in reply)
