"""The Celery app, bound to the Flask app context (Flask's own Celery pattern).

Workers: `celery -A tasks worker`; beat: `celery -A tasks beat`. Tasks are thin: they take the lock,
call the pipeline, and retry; the work itself lives in crypto_app.pipeline.
"""
from __future__ import annotations

import logging

import redis as redis_lib
from celery import Celery, Task, signals

from crypto_app import create_app, liveness
from crypto_app.config import settings_or_exit
from crypto_app.coordination import redis_client
from crypto_app.logs import configure_logging

log = logging.getLogger("tasks")


def celery_init_app(flask_app) -> Celery:
    class FlaskTask(Task):
        def __call__(self, *args, **kwargs):
            with flask_app.app_context():
                return self.run(*args, **kwargs)

    app = Celery("cryptoflow", task_cls=FlaskTask)
    app.config_from_object("celeryconfig")
    app.set_default()
    flask_app.extensions["celery"] = app
    return app


@signals.setup_logging.connect
def _setup_logging(**_kwargs):
    # Celery leaves logging alone when this signal has a receiver; ours is JSON with task ids, and the
    # service (worker, beat, flower) comes from the command line.
    configure_logging(flask_app.config["SETTINGS"].log_level)


flask_app = create_app(settings=settings_or_exit())   # a bad setting: one line, exit 2
celery_app = celery_init_app(flask_app)
app = celery_app

from . import backfill, ingest, maintenance  # noqa: E402,F401  (register the tasks)


@signals.beat_init.connect
def _ingest_on_start(sender=None, **_kwargs):
    """Beat's first interval would leave a fresh install empty for minutes: queue every source now."""
    from crypto_app.celery_settings import INGEST_TASK, display_name

    for name in flask_app.config["SETTINGS"].enabled_sources:
        kwargs = {"source": name, "trigger": "schedule"}
        sender.app.send_task(INGEST_TASK, kwargs=kwargs, shadow=display_name(INGEST_TASK, kwargs))


# -- worker liveness for /health (crypto_app/liveness.py) -------------------------------------------------

_liveness: dict = {}


def _liveness_client():
    client = _liveness.get("client")
    if client is None:
        client = _liveness["client"] = redis_client(flask_app.config["SETTINGS"].redis_url, timeout=1.0)
    return client


@signals.heartbeat_sent.connect
def _worker_alive(sender=None, **_kwargs):
    """Celery's own 2 s heartbeat, from the worker's event loop: record it where /health reads it."""
    hostname = getattr(getattr(sender, "eventer", None), "hostname", None)
    if not hostname:
        return
    try:
        liveness.beat_worker(_liveness_client(), hostname)
        if _liveness.pop("failing", False):
            log.info("worker heartbeat recorded again", extra={"worker": hostname})
    except redis_lib.RedisError as exc:
        if not _liveness.get("failing"):      # once per outage, not every 2 s
            _liveness["failing"] = True
            log.warning("worker heartbeat not recorded", extra={"worker": hostname, "error": str(exc)})


@signals.worker_ready.connect
def _worker_ready(sender=None, **_kwargs):
    """The JSON counterpart of Celery's banner (run the worker with `celery -q`: the banner is plain text)."""
    controller = getattr(sender, "controller", None)
    log.info("worker ready", extra={"worker": getattr(sender, "hostname", None),
                                    "concurrency": getattr(controller, "concurrency", None),
                                    "queues": sorted(sender.app.amqp.queues),
                                    "tasks": sorted(n for n in sender.app.tasks if not n.startswith("celery."))})


@signals.worker_shutdown.connect
def _worker_gone(sender=None, **_kwargs):
    try:
        liveness.forget_worker(_liveness_client(), sender.hostname)
    except (redis_lib.RedisError, AttributeError):
        pass      # it ages out of /health within WORKER_STALE_AFTER_SECONDS anyway
