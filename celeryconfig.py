"""Celery settings for the worker and beat, all from the environment.

The values and the reasons for them live in crypto_app/celery_settings.py. In short: JSON only;
acks_late + task_reject_on_worker_lost (a task whose worker dies is re-queued); prefetch 1; a Redis
visibility timeout longer than the hard time limit plus the longest countdown; UTC; one beat entry per
enabled source at `<SOURCE>_SCHEDULE_SECONDS`, plus the reaper of runs whose worker vanished.
Run exactly one beat (never `-B` on workers).
"""
from crypto_app.celery_settings import celery_settings
from crypto_app.config import load_settings

globals().update(celery_settings(load_settings()))
