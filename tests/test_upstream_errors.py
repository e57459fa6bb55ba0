"""Upstream failures name their cause, over real sockets: an unresolvable name, a refused port, a server
that accepts and never answers, a TLS handshake with a plain-HTTP server, HTTP statuses and bodies that
are not the expected JSON (tests/fake_upstream.py). Each error has a `kind` (the metric label) and a
message that says what happened, to which host, on which path, without secrets.

Then through a real worker: a run against an unresolvable CoinGecko fails with the DNS cause in the
run's error, in the worker's JSON log line (error_kind) and in cryptoflow_upstream_errors_total.
"""
from __future__ import annotations

import json
import socket
import threading
import time

import pytest

from crypto_app.config import load_settings
from crypto_app.sources import build_source
from crypto_app.sources.base import PermanentSourceError, SourceError, TransientSourceError
from crypto_app.sources.http import HttpClient

from conftest import wait_for

UNRESOLVABLE = "cryptoflow-test.invalid"    # RFC 6761: .invalid never resolves
MARKETS = "/api/v3/coins/markets"
SECRET = "CG-secret-key-123"


def _resolver_answers_quickly() -> bool:
    """getaddrinfo has no timeout of its own: ask in a thread and give it 10 s (a resolver that does not
    answer would otherwise hang the test instead of failing it)."""
    done = threading.Event()

    def ask():
        try:
            socket.getaddrinfo(UNRESOLVABLE, 80)
        except OSError:
            pass
        done.set()

    threading.Thread(target=ask, daemon=True).start()
    return done.wait(10)


def _get(url: str, timeout: float = 1.0) -> SourceError:
    client = HttpClient(timeout, headers={"x-cg-demo-api-key": SECRET}, name="coingecko")
    try:
        client.get_json(url, {"vs_currency": "usd", "x_cg_demo_api_key": SECRET})
    except SourceError as exc:
        return exc
    finally:
        client.close()
    pytest.fail(f"{url} did not fail")


def _no_secret(error: SourceError) -> None:
    assert SECRET not in str(error) and "vs_currency" not in str(error)


def test_an_unresolvable_host_is_a_dns_error_naming_the_host_and_reason():
    if not _resolver_answers_quickly():
        pytest.skip("this machine's DNS resolver does not answer within 10 s")
    started = time.monotonic()
    error = _get(f"http://{UNRESOLVABLE}{MARKETS}")
    assert time.monotonic() - started < 15
    assert isinstance(error, TransientSourceError) and error.kind == "dns"
    assert str(error).startswith(f"coingecko: DNS lookup failed for {UNRESOLVABLE} (")
    assert str(error).endswith(f") on {MARKETS}") and "ConnectionError" not in str(error)
    _no_secret(error)


def test_a_closed_port_is_refused():
    with socket.socket() as sock:           # a port that was free a moment ago and has no listener
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    error = _get(f"http://127.0.0.1:{port}{MARKETS}")
    assert isinstance(error, TransientSourceError) and error.kind == "refused"
    assert str(error) == f"coingecko: connection refused by 127.0.0.1:{port} on {MARKETS}"


def test_a_server_that_never_answers_times_out():
    with socket.socket() as server:         # accepts (the kernel completes the handshake), never replies
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        port = server.getsockname()[1]
        started = time.monotonic()
        error = _get(f"http://127.0.0.1:{port}{MARKETS}", timeout=0.5)
        assert time.monotonic() - started < 5
    assert isinstance(error, TransientSourceError) and error.kind == "timeout"
    assert str(error) == f"coingecko: 127.0.0.1:{port} timed out: no response within 0.5s on {MARKETS}"


def test_https_to_a_plain_http_server_is_a_tls_error(fake_upstream):
    url = fake_upstream.url.replace("http://", "https://") + MARKETS
    error = _get(url, timeout=2)
    assert isinstance(error, TransientSourceError) and error.kind == "tls"
    assert str(error).startswith(f"coingecko: TLS handshake with {url.split('/')[2]} failed (")
    assert "WRONG_VERSION_NUMBER" in str(error) or "record layer" in str(error)


@pytest.mark.parametrize("scripted, kind, error_type", [
    (lambda f: f.rate_limited(retry_after=3), "http_429", TransientSourceError),
    (lambda f: f.gecko_error(500, "busy"), "http_500", TransientSourceError),
    (lambda f: f.html_error(502), "http_502", TransientSourceError),
    (lambda f: f.gecko_error(401, "Invalid API Key", 10002), "http_401", PermanentSourceError),
    (lambda f: f.paprika_error(404, "Not Found"), "http_404", PermanentSourceError),
    (lambda f: f.redirect("/elsewhere"), "redirect", PermanentSourceError),
    (lambda f: f.html_error(200), "invalid_payload", PermanentSourceError),
    (lambda f: f.truncated_json(), "invalid_payload", TransientSourceError),
    (lambda f: f.truncated_json(cut_connection=True), "truncated", TransientSourceError),
])
def test_http_statuses_and_bad_bodies_have_a_kind(fake_upstream, scripted, kind, error_type):
    fake_upstream.script(MARKETS, [scripted(fake_upstream)])
    error = _get(fake_upstream.url + MARKETS)
    assert isinstance(error, error_type) and error.kind == kind, (error.kind, str(error))
    _no_secret(error)


def test_a_source_names_a_body_of_the_wrong_shape_invalid_payload(fake_upstream):
    fake_upstream.script(MARKETS, [fake_upstream.json_response(200, {"coins": []})])
    source = build_source("coingecko", load_settings(fake_upstream.env(HTTP_TIMEOUT_SECONDS=2)))
    with pytest.raises(PermanentSourceError) as info:
        list(source.batches({}))
    assert info.value.kind == "invalid_payload"


@pytest.mark.worker
def test_a_run_against_an_unresolvable_upstream_fails_naming_dns_everywhere(worker, client, db_conn, test_env):
    if not _resolver_answers_quickly():
        pytest.skip("this machine's DNS resolver does not answer within 10 s")
    w = worker(env={"COINGECKO_BASE_URL": f"http://{UNRESOLVABLE}/api/v3", "TASK_MAX_RETRIES": "0",
                    "HTTP_TIMEOUT_SECONDS": "2", "LOG_LEVEL": "INFO"})
    response = client.post("/api/v1/runs", json={"source": "coingecko"},
                           headers={"Authorization": "Bearer test-token"})
    assert response.status_code in (201, 202), response.get_json()
    run_id = response.get_json()["id"]

    def finished():
        with db_conn.cursor() as cur:
            cur.execute("SELECT status, error, stats FROM etl_runs WHERE id = %s AND finished_at IS NOT NULL",
                        (run_id,))
            return cur.fetchone()

    status, error, stats = wait_for(finished, timeout=60, message=f"the run to fail: {w.log_tail()}")
    assert status == "failed"
    assert f"coingecko: DNS lookup failed for {UNRESOLVABLE} (" in error and f"on {MARKETS}" in error
    assert stats["upstream_errors"] == {"dns": 1}
    lines = [json.loads(line) for line in w.log_path.read_text().splitlines() if line.startswith("{")]
    failed = [line for line in lines if line.get("message") == "run failed" and line.get("run_id") == run_id]
    assert failed and failed[0]["error_kind"] == "dns" and failed[0]["service"] == "worker"
    assert "DNS lookup failed" in failed[0]["error"]
    scrape = client.get("/metrics").get_data(as_text=True)
    assert 'cryptoflow_upstream_errors_total{kind="dns",source="coingecko"} 1.0' in scrape
