"""Celery settings derived from cryptoflow's Settings (celeryconfig.py applies them to the worker and
beat; the API builds its publishing client from the same function)."""
from __future__ import annotations

from .config import PROJECT_ROOT, Settings

INGEST_TASK = "tasks.ingest_source"
REAP_TASK = "tasks.reap_stale_runs"
SEGMENT_TASK = "tasks.ingest_csv_segment"
BACKFILL_TASK = "tasks.backfill_window"
KEEP_CURRENT_TASK = "tasks.keep_history_current"
MAINTENANCE_TASK = "tasks.maintenance"
RESULT_EXPIRES_SECONDS = 24 * 3600


def display_name(task: str, kwargs: dict) -> str:
    """The name Flower and the worker log show for one call (Celery's `shadow`): it says the source."""
    if task == INGEST_TASK and kwargs.get("source"):
        return f"ingest {kwargs['source']}"
    if task == SEGMENT_TASK and kwargs.get("rel"):
        return f"ingest csv segment {kwargs['rel']}@{kwargs.get('start', 0)}"
    return task


def celery_settings(settings: Settings) -> dict:
    return {
        "broker_url": settings.redis_url,
        "broker_connection_retry_on_startup": True,
        "broker_connection_timeout": 5,
        "broker_transport_options": {
            # longest countdown (retry backoff, rate-limit waits) + hard time limit, with margin:
            # shorter and Redis would hand a slow or waiting task to a second worker
            "visibility_timeout": settings.run_time_limit_seconds * 2 + 1800,
            "socket_timeout": 10,
            "socket_connect_timeout": 5,
        },
        # results (task state: SUCCESS, FAILURE with the run's error, RETRY) kept a day in Redis, so
        # Flower and `AsyncResult(task_id).state` tell the truth; the run itself lives in etl_runs
        "task_ignore_result": False,
        "result_backend": settings.redis_url,
        "result_expires": RESULT_EXPIRES_SECONDS,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "timezone": "UTC",
        "enable_utc": True,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "task_time_limit": settings.run_time_limit_seconds,
        "task_soft_time_limit": max(settings.run_time_limit_seconds - 30, 5),
        "worker_send_task_events": True,
        "task_send_sent_event": True,
        "worker_hijack_root_logger": False,
        "worker_redirect_stdouts": False,
        "worker_pool_restarts": True,   # `make smoke` restarts the pool to check that runs resume
        "beat_schedule_filename": str(PROJECT_ROOT / "var" / "celerybeat-schedule"),
        "beat_schedule": beat_schedule(settings),
    }


def beat_schedule(settings: Settings) -> dict:
    schedule = {
        f"ingest-{name}": {
            "task": INGEST_TASK,
            "schedule": float(source.schedule_seconds),
            "kwargs": {"source": name, "trigger": "schedule"},
            "options": {"shadow": display_name(INGEST_TASK, {"source": name})},
        }
        for name, source in settings.sources.items()
        if source.enabled
    }
    schedule["reap-stale-runs"] = {"task": REAP_TASK, "schedule": 60.0}
    if settings.keep_current_seconds:
        for name in ("coingecko", "coinpaprika"):     # the sources with a history endpoint
            if name in settings.sources and settings.sources[name].enabled:
                schedule[f"keep-current-{name}"] = {"task": KEEP_CURRENT_TASK,
                                                   "schedule": float(settings.keep_current_seconds),
                                                   "kwargs": {"source": name}}
    schedule["maintenance"] = {"task": MAINTENANCE_TASK,
                               "schedule": float(settings.storage.maintenance_schedule_seconds),
                               "kwargs": {"trigger": "schedule"}}
    return schedule
