"""The maintenance task (rollups, retention): a thin caller of crypto_app.pipeline.maintenance.

Its run id is the task id, so a message redelivered after its worker died (acks_late) resumes the same
run; every step is resumable, so nothing is lost or done twice."""
from __future__ import annotations

from crypto_app.celery_settings import MAINTENANCE_TASK
from crypto_app.pipeline.driver import RunFailed
from crypto_app.pipeline.maintenance import deliver_maintenance

from . import celery_app, flask_app


@celery_app.task(bind=True, name=MAINTENANCE_TASK, throws=(RunFailed,))
def maintenance(self, trigger: str = "schedule", run_id: str | None = None):
    step = deliver_maintenance(flask_app.config["SETTINGS"], run_id or self.request.id, trigger)
    if step.status == "failed":
        raise RunFailed(f"run {step.run_id} failed: {step.error}")
    return step.summary
