"""Redis-backed coordination shared by every worker on every machine.

- `RateLimiter`: a token bucket per source, refilled continuously, taken atomically in one Lua script
  that reads Redis' own clock (so workers with skewed clocks still share one bucket).
  A 429's Retry-After blocks the bucket (`block`) for every worker and run until it has passed.
- `SourceLock`: one run per source at a time; the value is the run id, it expires unless renewed,
  and only its holder can renew or release it. Beside it, a liveness key (who holds it: run, host, pid,
  kind) that the holder refreshes on every heartbeat and that expires when the holder falls silent.
- `lock_state`: what an operator surface needs to know about a source's lock (holder, heartbeat age).
- `PendingVerdicts`: run failures that could not be written to PostgreSQL (it was down), applied by the
  next delivery or the reaper once it is back.
"""
from __future__ import annotations

import json
import os
import socket
import time

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
local blocked = tonumber(redis.call('HGET', key, 'blocked_until') or '0') or 0
if blocked > now then
  return tostring(blocked - now)
end
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
local keep = math.ceil(capacity / rate) + 60
if redis.call('TTL', key) < keep then
  redis.call('EXPIRE', key, keep)
end
return tostring(wait)
"""

_BLOCK = """
local key = KEYS[1]
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local untl = now + tonumber(ARGV[1])
local blocked = tonumber(redis.call('HGET', key, 'blocked_until') or '0') or 0
if untl > blocked then
  redis.call('HSET', key, 'blocked_until', tostring(untl))
  blocked = untl
end
local ttl = redis.call('TTL', key)
local needed = math.ceil(blocked - now) + 60
if ttl < needed then
  redis.call('EXPIRE', key, needed)
end
return tostring(blocked - now)
"""

_TAKE_OVER = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  return 1
end
return 0
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

    def block(self, seconds: float) -> float:
        """Nobody takes a token for `seconds` (an upstream's Retry-After); an earlier longer block wins.
        Returns the seconds the bucket stays blocked."""
        return float(self.client.register_script(_BLOCK)(keys=[self.key], args=[repr(float(seconds))]))


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

    # -- liveness: who holds the lock, and whether it still beats -----------------------------------

    @property
    def alive_key(self) -> str:
        return f"{KEY_PREFIX}:alive:{self.source}"

    def beat(self, run_id: str, grace_seconds: float, kind: str = "worker") -> None:
        """The holder says it is alive for `grace_seconds` more (heartbeat, or a retry's countdown)."""
        info = {"run_id": str(run_id), "host": socket.gethostname(), "pid": os.getpid(), "kind": kind,
                "beat_at": time.time(), "grace": float(grace_seconds)}
        self.client.set(self.alive_key, json.dumps(info), px=max(1, int(grace_seconds * 1000)))

    def take_over(self, old_run_id: str, run_id: str, ttl_seconds: float) -> bool:
        """Replace holder `old_run_id` by `run_id`, only if it still holds the lock."""
        script = self.client.register_script(_TAKE_OVER)
        return bool(script(keys=[self.key], args=[str(old_run_id), str(run_id), int(ttl_seconds * 1000)]))

    def state(self) -> dict | None:
        """The lock's holder, or None when the source is free. Keys: run_id, ttl_seconds (until the lock
        expires by itself), silent (no heartbeat within its grace: the holder is probably dead),
        heartbeat_age_seconds, host, pid, kind (worker or cli), pid_alive (None unless on this host)."""
        pipe = self.client.pipeline()
        pipe.get(self.key)
        pipe.pttl(self.key)
        pipe.get(self.alive_key)
        holder, pttl, raw = pipe.execute()
        if holder is None:
            return None
        info = {}
        if raw:
            try:
                info = json.loads(raw)
            except ValueError:
                info = {}
        if info.get("run_id") != holder:
            info = {}
        age = round(max(0.0, time.time() - float(info["beat_at"])), 1) if info.get("beat_at") else None
        pid_alive = None
        if info.get("host") == socket.gethostname() and info.get("pid"):
            pid_alive = _pid_alive(int(info["pid"]))
        return {"run_id": holder, "ttl_seconds": round(max(pttl, 0) / 1000, 1), "silent": not info,
                "heartbeat_age_seconds": age, "host": info.get("host"), "pid": info.get("pid"),
                "kind": info.get("kind"), "pid_alive": pid_alive}


def lock_state(client: redis_lib.Redis, source: str) -> dict | None:
    """For /health and the CLI: who holds `source`'s lock and whether it still beats (see SourceLock.state).
    A source is blocked when its holder is `silent` (or its pid is gone) but the lock has not expired yet."""
    return SourceLock(client, source).state()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class PendingVerdicts:
    """Run failures decided while PostgreSQL was unreachable: kept in Redis (a week at most) until
    someone with a database connection writes them (`pop_all`, then the caller's UPDATE)."""

    KEY = f"{KEY_PREFIX}:pending-verdicts"

    def __init__(self, client: redis_lib.Redis):
        self.client = client

    def add(self, run_id: str, source: str, error: str) -> None:
        self.client.hset(self.KEY, str(run_id), json.dumps({"source": source, "error": error}))
        self.client.expire(self.KEY, 7 * 24 * 3600)

    def all(self) -> dict[str, dict]:
        return {run_id: json.loads(raw) for run_id, raw in (self.client.hgetall(self.KEY) or {}).items()}

    def done(self, run_id: str) -> None:
        self.client.hdel(self.KEY, str(run_id))
