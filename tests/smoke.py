"""`make smoke`: an end-to-end check against a running system (`make run` in another shell).

1. /health answers 200 and the database is up;
2. a CSV run triggered through the API (POST /api/v1/runs, bearer API_TOKEN) finishes, and its rows are
   served by /api/v1/data;
3. the Celery worker pool is restarted (remote control `pool_restart`), answers pings again, and the
   next CSV run resumes from the checkpoint: the unchanged files are not read again (fetched == 0).
Exit code 0 when all steps pass. It writes nothing but runs and their bookkeeping.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.error
import urllib.request


def call(url: str, method: str = "GET", body: dict | None = None, token: str | None = None) -> tuple[int, dict]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=15) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


def step(message: str) -> None:
    print(f"smoke: {message}", flush=True)


def run_csv(base: str, token: str, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        status, body = call(f"{base}/api/v1/runs", "POST", {"source": "csv"}, token)
        if status == 202:
            break
        if status == 409 and time.monotonic() < deadline:   # a scheduled run is going: wait for it
            time.sleep(1)
            continue
        raise SystemExit(f"smoke: trigger answered {status}: {body}")
    run_id = body["id"]
    while time.monotonic() < deadline:
        status, run = call(f"{base}/api/v1/runs/{run_id}")
        if run.get("status") in ("succeeded", "partial", "failed"):
            return run
        time.sleep(0.5)
    raise SystemExit(f"smoke: run {run_id} did not finish within {timeout}s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=f"http://localhost:{os.environ.get('PORT', '8000')}")
    args = parser.parse_args()
    token = os.environ.get("API_TOKEN")
    if not token:
        raise SystemExit("smoke: set API_TOKEN to the token the running system was started with")
    base = args.url.rstrip("/")

    status, health = call(f"{base}/health")
    if status != 200 or health.get("checks", {}).get("database", {}).get("status") != "up":
        raise SystemExit(f"smoke: /health answered {status}: {health}")
    step(f"/health {status} ({health.get('status')})")

    run = run_csv(base, token)
    if run["status"] == "failed":
        raise SystemExit(f"smoke: CSV run failed: {run.get('error')}")
    status, data = call(f"{base}/api/v1/data?source=csv&page_size=5")
    if status != 200 or not data.get("data"):
        raise SystemExit(f"smoke: /api/v1/data served no CSV rows ({status})")
    step(f"CSV run {run['id']} {run['status']}; /api/v1/data serves {data['metadata']['total_count']} CSV rows")

    from celery import Celery

    broker = os.environ.get("REDIS_URL") or f"redis://127.0.0.1:{os.environ.get('EMBEDDED_REDIS_PORT', '6390')}/0"
    control = Celery("smoke", broker=broker)
    control.control.broadcast("pool_restart", arguments={"reload": False}, reply=True, timeout=10)
    deadline = time.monotonic() + 60
    while not control.control.ping(timeout=1):
        if time.monotonic() > deadline:
            raise SystemExit("smoke: the worker did not answer after its pool restart")
    step("worker pool restarted and answering")

    again = run_csv(base, token)
    if again["status"] != "succeeded" or again["fetched"] != 0:
        raise SystemExit(f"smoke: the run after the restart did not resume from the checkpoint: {again}")
    step(f"run {again['id']} after the restart resumed from the checkpoint (nothing re-read)")
    step("all good")
    return 0


if __name__ == "__main__":
    sys.exit(main())
