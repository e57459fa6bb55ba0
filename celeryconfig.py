"""Celery settings, all derived from the environment through crypto_app.config.

What an operator should know:
- JSON only; tasks are acknowledged late and re-queued if the worker process dies (acks_late +
  task_reject_on_worker_lost), one message prefetched per process.
- Redis' visibility timeout is longer than the hard time limit plus the longest retry countdown, so a
  slow task is never handed to a second worker while the first still runs it.
- Beat has one entry per enabled source, at the interval from `<SOURCE>_SCHEDULE_SECONDS`, plus the
  reaper that fails runs whose worker vanished. Run exactly one beat (no `-B` on workers).
"""
from crypto_app.config import PROJECT_ROOT, load_settings

_settings = load_settings()

broker_url = _settings.redis_url
broker_connection_retry_on_startup = True
broker_connection_timeout = 5
broker_transport_options = {
    # longest countdown (retry_backoff_max + rate-limit waits) + hard time limit, with margin
    "visibility_timeout": _settings.run_time_limit_seconds * 2 + 1800,
    "socket_timeout": 10,
    "socket_connect_timeout": 5,
}
task_ignore_result = True
result_backend = None

task_serializer = "json"
result_serializer = "json"
accept_content = ["json"]
timezone = "UTC"
enable_utc = True

task_acks_late = True
task_reject_on_worker_lost = True
worker_prefetch_multiplier = 1
task_time_limit = _settings.run_time_limit_seconds
task_soft_time_limit = max(_settings.run_time_limit_seconds - 30, 5)
worker_send_task_events = True
task_send_sent_event = True
worker_hijack_root_logger = False
worker_redirect_stdouts = False

beat_schedule_filename = str(PROJECT_ROOT / "var" / "celerybeat-schedule")
beat_schedule = {
    f"ingest-{name}": {
        "task": "tasks.ingest_source",
        "schedule": float(source.schedule_seconds),
        "kwargs": {"source": name, "trigger": "schedule"},
    }
    for name, source in _settings.sources.items()
    if source.enabled
}
beat_schedule["reap-stale-runs"] = {
    "task": "tasks.reap_stale_runs",
    "schedule": 60.0,
}
