"""Security: the trigger endpoints need the token (and failed attempts are logged without it), canary API
keys never leak anywhere, CSV import stays inside CSV_DATA_DIR, request bodies and query parameters are
bounded (through gunicorn), and Flower refuses requests without basic auth.
"""
from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import uuid

import psycopg2
import pytest
import redis as redis_lib
import requests
from pythonjsonlogger.json import JsonFormatter

from api_data import app_with  # noqa: F401  (fixture)
from conftest import ROOT, wait_for
from pipeline_helpers import run_inline, settings_for, table

from .conftest import AUTH, free_port, kill_group
from .helpers import finished, runs

MARKETS, TICKERS = "/api/v3/coins/markets", "/v1/tickers"


def _trigger_operations(spec: dict) -> list[tuple[str, str]]:
    return [(method, path) for path, ops in spec["paths"].items() for method, op in ops.items()
            if method in ("post", "put", "patch", "delete")]


def test_every_trigger_needs_the_token_and_refusals_are_logged_without_it(client, db_conn, caplog, monkeypatch):
    import hmac

    from crypto_app.api import auth

    spec = client.get("/openapi.json").get_json()
    writes = _trigger_operations(spec)
    assert len(writes) >= 2
    for method, path in writes:                       # every operation that starts work declares the token
        assert spec["paths"][path][method].get("security") == [{"bearerAuth": []}], (method, path)

    compared, original = [], hmac.compare_digest
    monkeypatch.setattr(auth.hmac, "compare_digest", lambda a, b: compared.append(1) or original(a, b))
    caplog.set_level(logging.INFO)
    wrong = f"guess-{uuid.uuid4()}"
    for method, template in writes:
        path = template.replace("{source}", "coingecko").replace("{backfill_id}", str(uuid.uuid4()))
        call = getattr(client, method)
        body = {"json": {"source": "coingecko"}} if "{" not in template else {}
        none = call(path, **body)
        assert none.status_code == 401 and none.headers["WWW-Authenticate"].startswith("Bearer"), path
        assert call(path, headers={"Authorization": f"Bearer {wrong}"}, **body).status_code == 403
        assert call(path, headers={"Authorization": "Basic dGVzdC10b2tlbjo="}, **body).status_code == 401
        assert call(path, headers={"Authorization": "Bearer "}, **body).status_code == 401
        assert call(path + "?token=test-token&api_token=test-token", **body).status_code == 401   # not from the URL
        assert call(path, headers={"Authorization": "Bearer test-token-and-more"}, **body).status_code == 403
    assert runs(db_conn) == []                        # nothing was queued
    assert len(compared) == 2 * len(writes)           # the token is checked with hmac.compare_digest only

    refusals = [r for r in caplog.records if r.getMessage() == "trigger refused"]
    assert len(refusals) == 6 * len(writes)
    assert {r.reason for r in refusals} == {"missing_token", "wrong_token"}
    lines = "\n".join(JsonFormatter().format(r) for r in caplog.records)   # with every extra field
    assert wrong not in lines and "test-token" not in lines and "dGVzdC10b2tlbjo=" not in lines


class _KeepLines(logging.Handler):
    """Every log record of this process, formatted as the app's JSON lines with all their extra fields."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []
        self.setFormatter(JsonFormatter())

    def emit(self, record):
        self.lines.append(self.format(record))


@pytest.mark.worker
def test_canary_api_keys_never_appear_in_logs_tables_redis_or_responses(
        start_worker, fake_upstream, db_conn, test_env, app_with, report, request):
    gecko_key, paprika_key = f"CG-canary-{uuid.uuid4().hex}", f"cp-canary-{uuid.uuid4().hex}"
    keys = {"COINGECKO_API_PLAN": "demo", "COINGECKO_API_KEY": gecko_key, "COINPAPRIKA_API_KEY": paprika_key}
    f = fake_upstream
    f.set_coins(12)
    echo_cg, echo_cp = f"invalid or exhausted key {gecko_key}", f"key {paprika_key} is not allowed"
    # upstreams that echo the key back: in error bodies, in headers, in HTML, in a 200 error object
    f.script(MARKETS, [f.gecko_error(429, echo_cg) | {"headers": {"Content-Type": "application/json",
                                                                 "Retry-After": "1", "X-Echo": gecko_key}}],
             query={"page": "1"})
    f.script(MARKETS, [f.gecko_error(401, echo_cg)], query={"page": "2"})
    f.script(TICKERS, [{"status": 500, "headers": {"Content-Type": "text/html"}, "body": f"<h1>{echo_cp}</h1>"},
                       f.paprika_error(503, echo_cp)])
    env = {**keys, "LOG_LEVEL": "DEBUG", **f.env(COINGECKO_PER_PAGE=5, COINGECKO_RATE_PER_MINUTE=6000,
                                                 COINPAPRIKA_RATE_PER_MINUTE=6000)}
    w = start_worker(env, concurrency=2)
    client = app_with(LOG_LEVEL="DEBUG", **keys).test_client()    # (its logging setup replaces the handlers)
    kept = _KeepLines()
    logging.getLogger().addHandler(kept)
    request.addfinalizer(lambda: logging.getLogger().removeHandler(kept))
    responses = []
    for source in ("coingecko", "coinpaprika"):
        answer = client.post("/api/v1/runs", json={"source": source}, headers=AUTH)
        assert answer.status_code == 202, answer.get_json()
        responses.append(answer.get_data(as_text=True))
    done = wait_for(finished(db_conn, count=2), timeout=60, message=f"both runs: {w.log_tail()}")
    by_source = {r["source"]: r for r in done}
    assert by_source["coingecko"]["status"] == "failed" and "***" in by_source["coingecko"]["error"]
    assert by_source["coinpaprika"]["status"] == "succeeded"
    f.script(MARKETS, [f.json_response(200, {"error": echo_cg})])        # a 200 that is an error object
    answer = client.post("/api/v1/runs", json={"source": "coingecko"}, headers=AUTH)
    responses.append(answer.get_data(as_text=True))
    third = wait_for(finished(db_conn, count=3), timeout=60, message=f"the third run: {w.log_tail()}")
    assert [r for r in third if r["id"] == answer.get_json()["id"]][0]["status"] == "failed"

    # the keys did reach the upstream, in headers only
    sent = f.requests
    assert all(h.get("x-cg-demo-api-key") == gecko_key for _, p, _, h in sent if p.startswith("/api/v3"))
    assert all(h.get("authorization") == paprika_key for _, p, _, h in sent if p.startswith("/v1"))
    assert not [q for _, _, q, _ in sent if gecko_key in json.dumps(q) or paprika_key in json.dumps(q)]

    # every output: API responses, the app's and the worker's logs, every table, every Redis key
    for run in runs(db_conn):
        responses.append(client.get(f"/api/v1/runs/{run['id']}?rejected_limit=500").get_data(as_text=True))
    for path in ("/api/v1/runs", "/api/v1/etl/jobs", "/api/v1/data", "/data", "/api/v1/stats", "/stats", "/health",
                 "/metrics", "/api/v1/metrics", "/openapi.json", "/api/v1/runs/compare?source=coingecko"):
        responses.append(client.get(path).get_data(as_text=True))
    logging.getLogger().removeHandler(kept)
    app_logs = "\n".join(kept.lines)
    worker_log = w.log_path.read_text(errors="replace")
    tables = table(db_conn, "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    dump = "\n".join(str(row) for (name,) in tables for row in table(db_conn, f'SELECT t::text FROM "{name}" t'))
    r = redis_lib.Redis.from_url(test_env["REDIS_URL"], socket_timeout=5)
    redis_dump = []
    for key in r.scan_iter():
        kind = r.type(key)
        value = {b"string": r.get, b"list": lambda k: r.lrange(k, 0, -1), b"hash": r.hgetall,
                 b"set": r.smembers, b"zset": lambda k: r.zrange(k, 0, -1)}.get(kind, lambda k: b"")(key)
        redis_dump.append(repr((key, value)))
    outputs = {"api responses": "\n".join(responses), "app logs": app_logs, "worker log": worker_log,
               "database": dump, "redis": "\n".join(redis_dump)}
    assert "***" in dump and "upstream response" in worker_log     # the echoes were masked; DEBUG was on
    assert '"request"' in app_logs and "run queued" in app_logs
    leaks = {name: text.count(key) for name, text in outputs.items() for key in (gecko_key, paprika_key)
             if key in text}
    assert leaks == {}, leaks
    report("bytes grepped for the canaries", {name: len(text) for name, text in outputs.items()})


def test_csv_import_reads_only_inside_csv_data_dir(app_with, test_env, db_conn, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    outside = tmp_path / "outside.csv"
    outside.write_text("Date,Symbol,Name,Close\n2024-01-01,OUT,Outsider,1\n")
    (data / "inside.csv").write_text("Date,Symbol,Name,Close\n2024-01-01,INS,Insider,1\n")
    (data / "link.csv").symlink_to(outside)
    (data / "sub").mkdir()
    runner = app_with(CSV_DATA_DIR=str(data)).test_cli_runner()
    for path in (str(outside), str(data / ".." / "outside.csv"), str(data / "link.csv"),
                 str(data / "sub" / ".." / ".." / "outside.csv"), "/etc/passwd"):
        refused = runner.invoke(args=["etl", "import", path])
        assert refused.exit_code != 0 and "outside CSV_DATA_DIR" in refused.output, (path, refused.output)
    assert runs(db_conn) == []                        # refused before any run was recorded
    done = runner.invoke(args=["etl", "import", str(data / "inside.csv")])
    assert done.exit_code == 0, done.output
    # a full scan of the folder skips the link that escapes it
    _, outcome = run_inline(settings_for(test_env, CSV_DATA_DIR=data), "csv")
    names = {n for (n,) in table(db_conn, "SELECT a.name FROM quotes q JOIN assets a ON a.id = q.asset_id")}
    assert names == {"Insider"}


def test_bodies_over_the_limit_get_413_and_query_parameters_are_bounded(live_api, db_conn):
    base = live_api(workers=1, threads=4)
    json_headers = {**AUTH, "Content-Type": "application/json"}
    big = b'{"source": "' + b"x" * 70_000 + b'"}'
    answer = requests.post(base + "/api/v1/runs", data=big, headers=json_headers, timeout=10)
    assert answer.status_code == 413 and answer.json()["details"] == {"max_bytes": 64 * 1024}

    def chunks():                                     # no Content-Length: a chunked body of 1 MB
        yield b'{"source": "'
        for _ in range(64):
            yield b"y" * 16384
        yield b'"}'
    chunked = requests.post(base + "/api/v1/runs", data=chunks(), headers=json_headers, timeout=10)
    assert chunked.status_code == 413, (chunked.status_code, chunked.text[:300])

    def padded():                                     # valid JSON in the first 64 KB, then 1 MB of blanks
        yield b'{"source": "csv"}'
        for _ in range(64):
            yield b" " * 16384
    accepted = requests.post(base + "/api/v1/runs", data=padded(), headers=json_headers, timeout=10)
    assert accepted.status_code == 413, (accepted.status_code, accepted.text[:300])
    unauthenticated = requests.post(base + "/api/v1/runs", data=big, timeout=10,
                                    headers={"Content-Type": "application/json"})
    assert unauthenticated.status_code in (401, 413)
    assert runs(db_conn) == []

    bounded = ["page_size=101", "limit=1001", "offset=10000001", "page=1000001", "page=0", "page_size=-1",
               "symbol=" + ",".join(f"S{i}" for i in range(51)), "symbol=" + "A" * 201, "source=nope",
               "until=9999-12-31T23:00:00-05:00", "since=0001-01-01T00:00:00%2B05:00", "since=not-a-date",
               "cursor=" + "A" * 500, "page=1&offset=0", "asset=" + "9" * 30 + "x" * 300]
    for query in bounded:
        answer = requests.get(f"{base}/api/v1/data?{query}", timeout=10)
        assert 400 <= answer.status_code < 500, (query, answer.status_code, answer.text[:300])
        assert answer.json()["status"] == answer.status_code
    odd = ["asset=%C2%B2", "asset=" + "9" * 30, "symbol=%C2%B2", "since=2024-01-01T00:00:00%2B15:59",
           "since=2024-01-01T00:00:00%2B16:22", "until=2024-01-01T00:00:00-23:59"]
    for query in odd:
        answer = requests.get(f"{base}/api/v1/data?{query}", timeout=10)
        assert answer.status_code == 200 and answer.json()["data"] == [], (query, answer.text[:300])
    assert requests.get(f"{base}/api/v1/assets/%C2%B2/history", timeout=10).status_code == 404
    assert requests.get(f"{base}/api/v1/runs/x?rejected_limit=501", timeout=10).status_code in (404, 422)
    huge = requests.get(f"{base}/api/v1/data?symbol={'B' * 20_000}", timeout=10)   # beyond the request line limit
    assert 400 <= huge.status_code < 500


def test_flower_refuses_requests_without_basic_auth(test_env, tmp_path):
    port = free_port()
    password = uuid.uuid4().hex
    env = {**test_env, "FLOWER_PORT": str(port), "FLOWER_BASIC_AUTH": f"admin:{password}"}
    log = open(tmp_path / "flower.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "crypto_app.flower"], cwd=ROOT, env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        base = f"http://127.0.0.1:{port}"

        def answering():
            if proc.poll() is not None:
                pytest.fail(f"flower exited: {(tmp_path / 'flower.log').read_text()[-2000:]}")
            try:
                return [requests.get(base + "/", timeout=1)]   # a list: a 401 Response is falsy
            except requests.RequestException:
                return None
        first = wait_for(answering, timeout=60, interval=0.3, message="flower to listen")[0]
        assert first.status_code == 401 and "Basic" in first.headers.get("WWW-Authenticate", "")
        for path in ("/", "/workers", "/tasks", "/broker", "/api/workers", "/api/tasks", "/api/queues/length"):
            assert requests.get(base + path, timeout=5).status_code == 401, path
            assert requests.get(base + path, auth=("admin", "wrong"), timeout=5).status_code == 401, path
        # Known and left as Flower ships it: /metrics (Prometheus counters of task names and states, no
        # arguments or results) and /healthcheck answer without credentials; Flower has no switch for it.
        open_metrics = requests.get(base + "/metrics", timeout=5)
        assert open_metrics.status_code == 200 and password not in open_metrics.text
        assert requests.get(base + "/", auth=("admin", password), timeout=10).status_code == 200
        assert requests.get(base + "/api/workers", auth=("admin", password), timeout=10).status_code == 200
    finally:
        kill_group(proc, signal.SIGTERM, timeout=10)
        log.close()
    assert password not in (tmp_path / "flower.log").read_text(errors="replace")
