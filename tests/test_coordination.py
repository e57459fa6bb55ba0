"""Redis coordination (real Redis): the shared token bucket, the per-source lock, and the reaper."""
import multiprocessing
import time
import uuid

from crypto_app.coordination import RateLimiter, SourceLock, redis_client
from crypto_app.pipeline.reaper import reap_stale_runs
from pipeline_helpers import run_inline, settings_for, table


def _hammer(url, start, seconds, queue):
    limiter = RateLimiter(redis_client(url), "coingecko", per_minute=120, burst=2)
    time.sleep(max(0.0, start - time.time()))   # every process hammers the same window, however late it spawned
    taken, deadline = [], start + seconds
    while time.time() < deadline:
        if limiter.try_acquire() == 0:
            taken.append(time.time())
        else:
            time.sleep(0.01)
    queue.put(taken)


def test_the_token_bucket_is_shared_by_processes(test_env):
    queue = multiprocessing.get_context("spawn").Queue()
    start = time.time() + 8.0   # spawned interpreters need a moment to start on a loaded machine
    procs = [multiprocessing.get_context("spawn").Process(target=_hammer, args=(test_env["REDIS_URL"], start, 3.0, queue))
             for _ in range(3)]
    for p in procs:
        p.start()
    taken = sorted(t for _ in procs for t in queue.get(timeout=30))
    for p in procs:
        p.join(timeout=10)
    # 2 tokens/s for 3 s, plus a burst of 2: never more than 8, whatever the number of processes
    assert 3 <= len(taken) <= 8, len(taken)   # at least the burst and one refill, even if a process started late
    for i, start in enumerate(taken):
        assert sum(1 for t in taken[i:] if t - start < 1.0) <= 2 + 2


def test_the_source_lock_has_one_holder_and_only_it_may_renew_or_release(redis):
    client = redis_client(redis.connection_pool.connection_kwargs and _url(redis))
    lock = SourceLock(client, "csv")
    assert lock.acquire("run-a", 5)
    assert not lock.acquire("run-b", 5) and lock.holder() == "run-a"
    assert not lock.renew("run-b", 5) and not lock.release("run-b")
    assert lock.claim("run-a", 5)                      # its holder may claim it again (redelivery)
    assert lock.release("run-a") and lock.holder() is None
    assert lock.acquire("run-b", 0.2)
    time.sleep(0.4)
    assert lock.holder() is None                       # expires without renewal: a dead worker frees it


def _url(redis):
    kw = redis.connection_pool.connection_kwargs
    return f"redis://{kw['host']}:{kw['port']}/{kw.get('db', 0)}"


def test_the_reaper_fails_a_silent_run_and_the_next_run_resumes_its_checkpoint(test_env, fake_upstream, db_conn):
    import psycopg2

    from crypto_app.sources.base import TransientSourceError

    fake_upstream.set_coins(30)
    settings = settings_for(test_env, **fake_upstream.env(COINGECKO_PER_PAGE=10, COINGECKO_RATE_PER_MINUTE=6000))
    fake_upstream.script("/api/v3/coins/markets", [fake_upstream.json_response(500, {})], query={"page": "2"})
    try:
        run_inline(settings, "coingecko")
    except TransientSourceError:
        pass
    dead = table(db_conn, "SELECT id::text FROM etl_runs WHERE status = 'running'")[0][0]
    redis = redis_client(test_env["REDIS_URL"])
    SourceLock(redis, "coingecko").acquire(dead, 600)       # its worker died holding the lock
    with db_conn.cursor() as cur:
        cur.execute("UPDATE etl_runs SET heartbeat_at = now() - interval '1 hour' WHERE id = %s", (dead,))
    conn = psycopg2.connect(test_env["DATABASE_URL"])
    try:
        assert reap_stale_runs(conn, redis, 900) == [(dead, "coingecko")]
    finally:
        conn.close()
    status, error = table(db_conn, "SELECT status, error FROM etl_runs WHERE id = %s", (dead,))[0]
    assert status == "failed" and error.startswith("worker lost")
    assert SourceLock(redis, "coingecko").holder() is None

    fake_upstream.clear_requests()
    _, outcome = run_inline(settings, "coingecko")
    assert [r[2]["page"] for r in fake_upstream.requests_to("/api/v3/coins/markets")] == ["2", "3", "4"]
    assert len(table(db_conn, "SELECT 1 FROM quotes")) == 30
    assert uuid.UUID(dead)
