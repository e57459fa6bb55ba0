"""How old a source's data is, the same way for /health and /metrics.

A source that succeeded is as old as its last success (the newest succeeded or partial run's
finished_at). A source that never succeeded is as old as the longer of: the time since its first run
was created (its runs kept failing), or the time since this process started (a fresh install that
has not run it yet). It is stale when that age exceeds twice its schedule: a new source gets the
time its schedule allows before it is called stale, and a source whose runs always fail becomes
stale as surely as one that stopped.
"""
from __future__ import annotations

import time

PROCESS_STARTED = time.time()
STALE_AFTER_SCHEDULES = 2


def source_age(success_age: float | None, first_run_age: float | None) -> tuple[float, str]:
    """(seconds, measured from: "last_success" | "first_run" | "process_start")."""
    if success_age is not None:
        return max(float(success_age), 0.0), "last_success"
    since_start = max(time.time() - PROCESS_STARTED, 0.0)
    if first_run_age is not None and float(first_run_age) > since_start:
        return float(first_run_age), "first_run"
    return since_start, "process_start"


def is_stale(age: float, schedule_seconds: float) -> bool:
    return age > STALE_AFTER_SCHEDULES * schedule_seconds
