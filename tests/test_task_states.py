"""What Flower and the result backend say about ingestion tasks, through a real Celery worker: a failed
run is a FAILURE whose message is the run's error, a retry is a RETRY, a succeeded run a SUCCESS, and
each task is shown under a name that says its source."""
import pytest
from celery import Celery

from conftest import wait_for
from pipeline_helpers import table

pytestmark = pytest.mark.worker
INGEST = "tasks.ingest_source"
MARKETS = "/api/v3/coins/markets"


@pytest.fixture
def backend_probe(test_env):
    probe = Celery("states")
    probe.conf.update(broker_url=test_env["REDIS_URL"], result_backend=test_env["REDIS_URL"],
                      broker_connection_retry_on_startup=True)
    yield probe
    probe.close()


def _state(probe, task_id):
    return probe.AsyncResult(task_id).state


def test_a_failed_run_is_a_failure_and_a_succeeded_one_a_success(worker, backend_probe, fake_upstream, db_conn):
    fake_upstream.set_coins(5)
    fake_upstream.script(MARKETS, [fake_upstream.html_error(403)])
    w = worker(env={"LOG_LEVEL": "INFO", **fake_upstream.env(COINGECKO_RATE_PER_MINUTE=6000)})
    failing = backend_probe.send_task(INGEST, kwargs={"source": "coingecko", "trigger": "schedule"},
                                      shadow="ingest coingecko")
    wait_for(lambda: _state(backend_probe, failing.id) in ("FAILURE", "SUCCESS"), timeout=60,
             message=f"the failing task to end: {w.log_tail()}")
    result = backend_probe.AsyncResult(failing.id)
    error = table(db_conn, "SELECT error FROM etl_runs WHERE id = %s", (failing.id,))[0][0]
    assert result.state == "FAILURE" and "403" in error
    assert error in str(result.result) and type(result.result).__name__ == "RunFailed", result.result

    ok = backend_probe.send_task(INGEST, kwargs={"source": "coingecko", "trigger": "schedule"})
    wait_for(lambda: _state(backend_probe, ok.id) in ("FAILURE", "SUCCESS"), timeout=60,
             message=f"the succeeding task to end: {w.log_tail()}")
    assert backend_probe.AsyncResult(ok.id).state == "SUCCESS"
    assert backend_probe.AsyncResult(ok.id).result["status"] == "succeeded"
    assert "ingest coingecko" in w.log_path.read_text()            # the worker names the task by its source


def test_a_retrying_run_shows_retry_then_success(worker, backend_probe, fake_upstream, db_conn):
    fake_upstream.set_coins(5)
    fake_upstream.script(MARKETS, [fake_upstream.rate_limited(retry_after=3)])
    worker(env=fake_upstream.env(COINGECKO_RATE_PER_MINUTE=6000))
    task = backend_probe.send_task(INGEST, kwargs={"source": "coingecko", "trigger": "schedule"})
    wait_for(lambda: _state(backend_probe, task.id) == "RETRY", timeout=30, message="the RETRY state")
    wait_for(lambda: _state(backend_probe, task.id) == "SUCCESS", timeout=60, message="the SUCCESS state")
