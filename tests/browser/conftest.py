"""A real system with data for the browser tests, and headless Chromium driven by Selenium.

`system` (one per module): a throwaway Redis server of its own (so the suite's per-test flush of the test
Redis database never drops the worker's queues), a database `<test db>_browser` migrated afresh, the fake
upstream, gunicorn serving the app on a free 127.0.0.1 port and one real Celery worker. Data arrives the
way it does in production: runs triggered through POST /api/v1/runs and executed by the worker: a CSV
import (a bitcoin history with OHLC, the sample markets, a coin whose name is HTML, a row the validation
rejects), a CoinPaprika run (bitcoin now) and a CoinGecko run the upstream refuses with 401 (failed).

`browser`: Chromium from Debian's `chromium` and `chromium-driver` packages; the tests are skipped, saying
so, only when those are not installed (.ci/run installs them). With DASHBOARD_SCREENSHOTS=<dir> set (see
`make screenshots`) the tests also save a full-page PNG of every page they visit.
"""
from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests

from conftest import ROOT, WorkerProcess, _recreate_database, _with_database, wait_for
from fake_upstream import FIXTURES, FakeUpstream, paprika_ticker
from faults.conftest import ThrowawayRedis, free_port, kill_group

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
AUTH = {"Authorization": "Bearer test-token"}
EVIL_NAME = '<img src=x onerror="window.__xss=1"><script>window.__xss=2</script>Evil Coin'
HISTORY_DAYS = 60

needs_chromium = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER),
    reason="headless Chromium is not installed here: apt-get install -y chromium chromium-driver "
           "(.ci/run installs them, so CI always runs these tests)")


def _write_data(data_dir: Path) -> None:
    """The CSV files the import reads: a bitcoin daily history up to today, the sample markets, a coin
    named with HTML and a row with a negative price (rejected, with its reason)."""
    shutil.copy(ROOT / "data" / "sample_markets.csv", data_dir / "sample_markets.csv")
    shutil.copy(ROOT / "data" / "asset_overrides.json", data_dir / "asset_overrides.json")
    today = date.today()
    with open(data_dir / "bitcoin_history.csv", "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["Date", "Symbol", "Name", "Open", "High", "Low", "Close", "Volume"])
        price = 90000
        for back in range(HISTORY_DAYS, -1, -1):
            day = today - timedelta(days=back)
            swing = (back * 7919) % 2400 - 1200                   # deterministic ups and downs
            close = price + swing
            out.writerow([day.isoformat(), "BTC", "Bitcoin", price, max(price, close) + 350,
                          min(price, close) - 420, close, 30_000_000_000 + back * 1000])
            price = close
    (data_dir / "extra_coins.csv").write_text(
        "symbol,name,price_usd,market_cap_usd,observed_at\n"
        f"EVIL,\"{EVIL_NAME.replace(chr(34), chr(34) * 2)}\",1.25,1000000,{today.isoformat()}T00:00:00Z\n"
        f"BADC,Bad Coin,-5,1000,{today.isoformat()}T00:00:00Z\n")


def _bitcoin_ticker_now() -> dict:
    ticker = json.loads((FIXTURES / "coinpaprika_ticker_btc-bitcoin.json").read_text())
    ticker["last_updated"] = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    ticker["quotes"]["USD"]["price"] = 91234.5
    return ticker


class System:
    """The running pieces; `trigger(source)` starts a run through the API and waits for its end."""

    def __init__(self, base: str, env: dict, fake: FakeUpstream):
        self.base, self.env, self.fake = base, env, fake
        self.runs: dict[str, dict] = {}

    def trigger(self, source: str, timeout: float = 60.0) -> dict:
        response = requests.post(f"{self.base}/api/v1/runs", json={"source": source}, headers=AUTH, timeout=10)
        assert response.status_code == 202, response.text
        run_id = response.json()["id"]

        def finished():
            run = requests.get(f"{self.base}/api/v1/runs/{run_id}", timeout=10).json()
            return run if run["status"] in ("succeeded", "partial", "failed") else None

        run = wait_for(finished, timeout=timeout, interval=0.2, message=f"the {source} run to finish")
        self.runs.setdefault(source, run)
        return run


@pytest.fixture(scope="module")
def system(test_env, tmp_path_factory):
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip(needs_chromium.kwargs["reason"])
    work = tmp_path_factory.mktemp("dashboard")
    data_dir = work / "data"
    data_dir.mkdir()
    _write_data(data_dir)
    redis_server = ThrowawayRedis(work / "redis").start()
    name = urlsplit(test_env["DATABASE_URL"]).path.lstrip("/") + "_browser"
    _recreate_database(test_env["DATABASE_URL"], name)
    fake = FakeUpstream(coins=5).start()
    env = {**test_env, "DATABASE_URL": _with_database(test_env["DATABASE_URL"], name),
           "REDIS_URL": redis_server.url(0), "CSV_DATA_DIR": str(data_dir), **fake.env(
               COINGECKO_RATE_PER_MINUTE=6000, COINPAPRIKA_RATE_PER_MINUTE=6000)}
    procs: list = []
    worker = None
    try:
        migrated = subprocess.run([sys.executable, "-m", "flask", "--app", "wsgi:app", "db", "upgrade"], cwd=ROOT,
                                  env=env, timeout=120, capture_output=True, text=True)
        assert migrated.returncode == 0, migrated.stderr[-3000:]
        port = free_port()
        prom = work / "prometheus"
        prom.mkdir()
        log = open(work / "gunicorn.log", "wb")
        gunicorn = subprocess.Popen(
            [str(Path(sys.executable).parent / "gunicorn"), "-c", "gunicorn.conf.py", "-b", f"127.0.0.1:{port}",
             "wsgi:app"], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            env={**env, "WEB_CONCURRENCY": "1", "GUNICORN_THREADS": "8", "PROMETHEUS_MULTIPROC_DIR": str(prom)})
        procs.append(gunicorn)
        base = f"http://127.0.0.1:{port}"

        def up():
            assert gunicorn.poll() is None, (work / "gunicorn.log").read_text()[-3000:]
            try:
                return requests.get(base + "/health/live", timeout=1).status_code == 200
            except requests.RequestException:
                return False

        worker = WorkerProcess(env, "dash", 1, work / "worker.log")
        wait_for(up, timeout=60, interval=0.2, message="gunicorn to answer /health/live")
        system = System(base, env, fake)
        fake.script("/api/v3/coins/markets", [fake.gecko_error(401, "Invalid API Key", 10002)] * 5)
        fake.script("/v1/tickers", [fake.json_response(200, [_bitcoin_ticker_now(), paprika_ticker(2)])])
        for source in ("csv", "coinpaprika", "coingecko"):
            system.trigger(source, timeout=90)
        yield system
    finally:
        if worker is not None:
            worker.stop()
        for proc in procs:
            kill_group(proc, timeout=20)
        fake.stop()
        redis_server.stop()


# --- the browser -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def driver(system):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="cryptoflow-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", "--window-size=1360,900", f"--user-data-dir={profile}"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    browser = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    browser.set_page_load_timeout(30)
    browser.set_script_timeout(20)
    try:
        yield browser
    finally:
        browser.quit()
        shutil.rmtree(profile, ignore_errors=True)


class Page:
    """The browser on the system: open pages, wait on the DOM, read console errors, save screenshots."""

    def __init__(self, driver, system):
        self.driver, self.system = driver, system
        self.shots = os.environ.get("DASHBOARD_SCREENSHOTS")

    def open(self, path: str):
        self.driver.get(self.system.base + path)
        return self

    def js(self, script: str, *args):
        return self.driver.execute_script(script, *args)

    def wait(self, script: str, *args, timeout: float = 15.0, message: str | None = None):
        """Poll a JS expression (a function body returning a value) until it is truthy."""
        return wait_for(lambda: self.js(script, *args), timeout=timeout, interval=0.1,
                        message=message or script)

    def text(self, selector: str) -> str:
        return self.js("const e = document.querySelector(arguments[0]); return e ? e.textContent : null;", selector)

    def refreshed(self, at_least: int = 1):
        """Wait until the page's loader has completed `at_least` times (common.js counts them)."""
        return self.wait("return Number(document.getElementById('refresh-state').dataset.refreshes || 0) >= "
                         "arguments[0];", at_least, message="the page's data to load")

    def console_errors(self) -> list[dict]:
        return [entry for entry in self.driver.get_log("browser") if entry["level"] == "SEVERE"]

    def screenshot(self, name: str) -> None:
        if not self.shots:
            return
        folder = Path(self.shots)
        folder.mkdir(parents=True, exist_ok=True)
        height = self.js("return Math.max(document.body.scrollHeight, document.documentElement.scrollHeight);")
        self.driver.set_window_size(1360, min(max(int(height) + 140, 700), 6000))
        time.sleep(0.4)                  # charts resize themselves to their new boxes
        self.driver.save_screenshot(str(folder / f"{name}.png"))
        self.driver.set_window_size(1360, 900)


@pytest.fixture
def page(driver, system):
    driver.get_log("browser")            # drop what earlier tests left
    return Page(driver, system)
