"""Redis-backed coordination shared by every worker on every machine.

- `RateLimiter`: a token bucket per source, refilled continuously, taken atomically in one Lua script
  that reads Redis' own clock (so workers with skewed clocks still share one bucket).
- `SourceLock`: one run per source at a time; the value is the run id, it expires unless renewed,
  and only its holder can renew or release it.
"""
from __future__ import annotations

import redis as redis_lib

KEY_PREFIX = "cryptoflow"

_TOKEN_BUCKET = """
local key = KEYS[1]
local rate = tonumber(ARGV[1])        -- tokens per second
local capacity = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local state = redis.call('HMGET', key, 'tokens', 'ts')
local tokens = tonumber(state[1])
local ts = tonumber(state[2])
if tokens == nil then
  tokens = capacity
  ts = now
end
tokens = math.min(capacity, tokens + math.max(0, now - ts) * rate)
local wait = 0
if tokens >= 1 then
  tokens = tokens - 1
else
  wait = (1 - tokens) / rate
end
redis.call('HSET', key, 'tokens', tostring(tokens), 'ts', tostring(now))
redis.call('EXPIRE', key, math.ceil(capacity / rate) + 60)
return tostring(wait)
"""

_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


def redis_client(url: str, timeout: float = 5.0) -> redis_lib.Redis:
    return redis_lib.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout,
                                    decode_responses=True)


class RateLimiter:
    """Token bucket: at most `per_minute` requests a minute across all workers, bursts up to `burst`."""

    def __init__(self, client: redis_lib.Redis, source: str, per_minute: float, burst: int = 1):
        self.client = client
        self.key = f"{KEY_PREFIX}:ratelimit:{source}"
        self.rate = per_minute / 60.0
        self.capacity = max(1, burst)
        self._script = client.register_script(_TOKEN_BUCKET)

    def try_acquire(self) -> float:
        """Take a token. Return 0.0 if taken, else the seconds to wait before one is available."""
        return float(self._script(keys=[self.key], args=[repr(self.rate), self.capacity]))


class SourceLock:
    """At most one run per source. The lock's value is the id of the run holding it."""

    def __init__(self, client: redis_lib.Redis, source: str):
        self.client = client
        self.source = source
        self.key = f"{KEY_PREFIX}:lock:{source}"
        self._renew = client.register_script(_RENEW)
        self._release = client.register_script(_RELEASE)

    def acquire(self, run_id: str, ttl_seconds: float) -> bool:
        return bool(self.client.set(self.key, str(run_id), nx=True, px=int(ttl_seconds * 1000)))

    def claim(self, run_id: str, ttl_seconds: float) -> bool:
        """Hold the lock for `run_id`: take it if free, extend it if already ours."""
        return self.acquire(run_id, ttl_seconds) or self.renew(run_id, ttl_seconds)

    def renew(self, run_id: str, ttl_seconds: float) -> bool:
        return bool(self._renew(keys=[self.key], args=[str(run_id), int(ttl_seconds * 1000)]))

    def release(self, run_id: str) -> bool:
        return bool(self._release(keys=[self.key], args=[str(run_id)]))

    def holder(self) -> str | None:
        return self.client.get(self.key)
