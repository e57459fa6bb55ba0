"""Worker liveness without a ping in the request: workers write a heartbeat, /health reads it.

Each Celery worker's event loop sends Celery's own heartbeat every 2 s (`heartbeat_sent`, the timer
that also feeds Flower). tasks/__init__.py hooks it to `beat_worker`, which records the worker in one
Redis sorted set, `cryptoflow:workers`, scored with Redis' own clock (workers on machines with skewed
clocks still compare right); a worker that shuts down cleanly removes itself (`forget_worker`).
`live_workers` returns the workers whose last beat is at most `max_age` seconds old, in one round trip:
/health calls it instead of a Celery broadcast ping that waits its whole timeout for replies.

A worker whose event loop is stuck stops beating, exactly like one that died; a worker started with
`--without-heartbeat` never appears (do not use that flag).
"""
from __future__ import annotations

import logging

import redis as redis_lib

from .coordination import KEY_PREFIX

log = logging.getLogger(__name__)
WORKERS_KEY = f"{KEY_PREFIX}:workers"
FORGET_AFTER = 3600            # entries of workers gone for an hour are dropped on the next beat

_BEAT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[2]))
redis.call('EXPIRE', KEYS[1], ARGV[2])
return 1
"""

_LIVE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local found = redis.call('ZRANGEBYSCORE', KEYS[1], now - tonumber(ARGV[1]), '+inf', 'WITHSCORES')
local out = {}
for i = 1, #found, 2 do
  out[#out + 1] = found[i]
  out[#out + 1] = tostring(now - tonumber(found[i + 1]))
end
return out
"""


def beat_worker(client: redis_lib.Redis, hostname: str) -> None:
    client.eval(_BEAT, 1, WORKERS_KEY, hostname, FORGET_AFTER)


def forget_worker(client: redis_lib.Redis, hostname: str) -> None:
    client.zrem(WORKERS_KEY, hostname)


def live_workers(client: redis_lib.Redis, max_age: float) -> dict[str, float]:
    """{worker name: seconds since its last heartbeat} for the workers that beat within `max_age`."""
    return parse_live(client.eval(*live_workers_command(max_age)))


def live_workers_command(max_age: float) -> tuple:
    """Arguments of EVAL for `live_workers`, to queue it in a pipeline with other reads."""
    return _LIVE, 1, WORKERS_KEY, repr(float(max_age))


def parse_live(flat) -> dict[str, float]:
    return {_text(flat[i]): round(max(float(flat[i + 1]), 0.0), 1) for i in range(0, len(flat), 2)}


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
