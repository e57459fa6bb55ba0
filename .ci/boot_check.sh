#!/usr/bin/env bash
# Boot `make run`, wait for /health to answer 200 and the sample CSV rows to be served, stop it.
set -uo pipefail
cd "$(dirname "$0")/.."
[ -n "${DATABASE_URL:-}" ] || unset DATABASE_URL
[ -n "${REDIS_URL:-}" ] || unset REDIS_URL
[ -n "${REDIS_URL:-}" ] && .venv/bin/python -c "import redis,os; redis.Redis.from_url(os.environ['REDIS_URL']).flushdb()"
export PORT=18765 FLOWER_PORT=18766 API_TOKEN=ci-token
log=$(mktemp)
setsid make run >"$log" 2>&1 &
pid=$!
stop() {
  kill -INT -- "-$pid" 2>/dev/null
  for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.5; done
  echo "boot: make run did not stop within 30s of Ctrl-C; killing it"
  kill -KILL -- "-$pid" 2>/dev/null
  return 1
}
fail() { echo "boot: $1"; echo "--- last lines of make run ---"; tail -n 60 "$log"; stop; exit 1; }

ok=""
for _ in $(seq 1 120); do
  code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$PORT/health" || true)
  [ "$code" = "200" ] && { ok=1; break; }
  kill -0 "$pid" 2>/dev/null || fail "make run exited early"
  sleep 1
done
[ -n "$ok" ] || fail "/health did not answer 200 within 120s (last: $code)"
echo "boot: /health answered 200"

ok=""
for _ in $(seq 1 90); do
  body=$(curl -s "http://127.0.0.1:$PORT/api/v1/data?source=csv&page_size=5" || true)
  if echo "$body" | .venv/bin/python -c "import json,sys; d=json.load(sys.stdin); sys.exit(0 if d.get('data') else 1)" 2>/dev/null; then
    ok=1; break
  fi
  sleep 1
done
[ -n "$ok" ] || fail "/api/v1/data served no sample CSV rows within 90s"
echo "boot: the sample CSV rows are served"
stop || { tail -n 40 "$log"; exit 1; }
echo "boot: make run stopped cleanly"
