"""The Celery app, bound to the Flask app context (Flask's own Celery pattern).

Workers: `celery -A tasks worker`; beat: `celery -A tasks beat`. Tasks are thin: they take the lock,
call the pipeline, and retry; the work itself lives in crypto_app.pipeline.
"""
from __future__ import annotations

from celery import Celery, Task, signals

from crypto_app import create_app
from crypto_app.logs import configure_logging


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
    # Celery leaves logging alone when this signal has a receiver; ours is JSON with task ids.
    configure_logging(flask_app.config["SETTINGS"].log_level, service="celery")


flask_app = create_app()
celery_app = celery_init_app(flask_app)
app = celery_app

from . import ingest, maintenance  # noqa: E402,F401  (register the tasks)


@signals.beat_init.connect
def _ingest_on_start(sender=None, **_kwargs):
    """Beat's first interval would leave a fresh install empty for minutes: queue every source now."""
    from crypto_app.celery_settings import INGEST_TASK, display_name

    for name in flask_app.config["SETTINGS"].enabled_sources:
        kwargs = {"source": name, "trigger": "schedule"}
        sender.app.send_task(INGEST_TASK, kwargs=kwargs, shadow=display_name(INGEST_TASK, kwargs))
