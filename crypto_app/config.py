"""Every setting of cryptoflow, read from the environment in one place.

A bad value fails at start with a message that names the variable.
"""
from __future__ import annotations

import os
import re
from decimal import Decimal, InvalidOperation
from dataclasses import dataclass, field, fields
from pathlib import Path
from urllib.parse import urlparse

PROJECT_ROOT = Path(__file__).resolve().parent.parent
SOURCES = ("coingecko", "coinpaprika", "csv")
COINGECKO_PLANS = ("public", "demo", "pro")
COINGECKO_DEFAULT_URLS = {
    "public": "https://api.coingecko.com/api/v3",
    "demo": "https://api.coingecko.com/api/v3",
    "pro": "https://pro-api.coingecko.com/api/v3",
}


# Plausibility rules (crypto_app/pipeline/plausibility.py) and their default severity: "hard" quarantines
# the record, "soft" stores it with a flag, "off" skips the rule. PLAUSIBILITY_<SOURCE> overrides them.
PLAUSIBILITY_DEFAULTS = {
    "ohlc_order": "hard",               # low <= open, close <= high
    "non_negative_finite": "hard",      # prices, caps, volumes and supplies finite and >= 0
    "market_cap_ceiling": "hard",       # market cap above PLAUSIBILITY_MARKET_CAP_CEILING_USD
    "market_cap_consistency": "soft",   # market cap ~ price x circulating supply
    "price_jump": "soft",               # x PLAUSIBILITY_PRICE_JUMP_FACTOR versus the previous observation
    "future_time": "hard",              # observed_at later than now + PLAUSIBILITY_CLOCK_SKEW_SECONDS
}
# Per-source departures from the defaults: CoinGecko's high_24h/low_24h lag its current_price, so a
# price just outside its own 24h range is common there and only flagged.
PLAUSIBILITY_SOURCE_DEFAULTS = {"coingecko": {"ohlc_order": "soft"}}
SEVERITIES = ("hard", "soft", "off")


class ConfigError(ValueError):
    """A setting in the environment is missing or malformed."""


CONFIG_ERROR_EXIT = 2


def settings_or_exit(env: dict | None = None) -> "Settings":
    """load_settings() for a process entry point (CLI, gunicorn, celery, Flower): a bad setting prints one
    line naming the variable, without a traceback, and exits with status 2."""
    try:
        return load_settings(env)
    except ConfigError as exc:
        import sys

        print(f"cryptoflow: configuration error: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(CONFIG_ERROR_EXIT) from None


def _str(env, name, default=None):
    value = env.get(name)
    if value is None or value.strip() == "":
        return default
    return value.strip()


def _int(env, name, default, minimum=None, maximum=None):
    raw = _str(env, name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a whole number, got {raw!r}") from None
    if minimum is not None and value < minimum:
        raise ConfigError(f"{name} must be at least {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ConfigError(f"{name} must be at most {maximum}, got {value}")
    return value


def _float(env, name, default, minimum=None, maximum=None):
    raw = _str(env, name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise ConfigError(f"{name} must be a finite number, got {raw!r}")
    if minimum is not None and value < minimum:
        raise ConfigError(f"{name} must be at least {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ConfigError(f"{name} must be at most {maximum}, got {value}")
    return value


def _url(env, name, default, schemes):
    raw = _str(env, name, default)
    if raw is None:
        return None
    parsed = urlparse(raw)
    if parsed.scheme not in schemes:
        raise ConfigError(f"{name} must be a URL starting with one of {', '.join(s + '://' for s in schemes)}, got {parsed.scheme or raw!r}")
    return raw.rstrip("/") if parsed.scheme.startswith("http") else raw


def _choice(env, name, default, choices):
    raw = (_str(env, name, default) or "").lower()
    if raw not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}, got {raw!r}")
    return raw


def _sources(env, name, default):
    raw = _str(env, name, default) or ""
    names = [part.strip().lower() for part in raw.split(",") if part.strip()]
    unknown = [n for n in names if n not in SOURCES]
    if unknown:
        raise ConfigError(f"{name} names unknown sources {unknown}; known: {', '.join(SOURCES)}")
    return tuple(names)


def _decimal(env, name, default: str, minimum: str, maximum: str | None = None) -> Decimal:
    raw = _str(env, name, default)
    try:
        value = Decimal(raw)
    except InvalidOperation:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from None
    if not value.is_finite() or value < Decimal(minimum) or (maximum is not None and value > Decimal(maximum)):
        bounds = f"at least {minimum}" + (f" and at most {maximum}" if maximum is not None else "")
        raise ConfigError(f"{name} must be a finite number {bounds}, got {raw!r}")
    return value


def _severities(env, name, source) -> dict:
    """PLAUSIBILITY_<SOURCE>="price_jump:hard,market_cap_consistency:off" over the defaults."""
    out = {**PLAUSIBILITY_DEFAULTS, **PLAUSIBILITY_SOURCE_DEFAULTS.get(source, {})}
    for part in (_str(env, name) or "").split(","):
        if not part.strip():
            continue
        rule, _, severity = (p.strip().lower() for p in part.partition(":"))
        if rule not in PLAUSIBILITY_DEFAULTS:
            raise ConfigError(f"{name} names an unknown plausibility rule {rule!r}; known: "
                              f"{', '.join(PLAUSIBILITY_DEFAULTS)}")
        if severity not in SEVERITIES:
            raise ConfigError(f"{name}: rule {rule} needs a severity hard, soft or off (rule:severity), "
                              f"got {part.strip()!r}")
        out[rule] = severity
    return out


@dataclass(frozen=True)
class PlausibilitySettings:
    """Severity of each rule per source, and the rules' thresholds."""

    severities: dict                    # source -> {rule: "hard" | "soft" | "off"}
    price_jump_factor: Decimal
    market_cap_tolerance: Decimal       # relative: 0.1 = within 10% of price x circulating supply
    market_cap_ceiling_usd: Decimal
    clock_skew_seconds: int

    def for_source(self, source: str) -> dict:
        return self.severities.get(source) or dict(PLAUSIBILITY_DEFAULTS)


def load_plausibility(env) -> PlausibilitySettings:
    return PlausibilitySettings(
        severities={name: _severities(env, f"PLAUSIBILITY_{name.upper()}", name) for name in SOURCES},
        price_jump_factor=_decimal(env, "PLAUSIBILITY_PRICE_JUMP_FACTOR", "20", "1.01"),
        market_cap_tolerance=_decimal(env, "PLAUSIBILITY_MARKET_CAP_TOLERANCE", "0.1", "0", "100"),
        market_cap_ceiling_usd=_decimal(env, "PLAUSIBILITY_MARKET_CAP_CEILING_USD", "1e13", "1"),
        clock_skew_seconds=_int(env, "PLAUSIBILITY_CLOCK_SKEW_SECONDS", 300, 0, 86400 * 366),
    )


@dataclass(frozen=True)
class SourceSettings:
    """Schedule and rate limit of one source."""

    name: str
    schedule_seconds: int
    rate_per_minute: float
    burst: int
    enabled: bool


@dataclass(frozen=True)
class StorageSettings:
    """Retention and the maintenance task (crypto_app/pipeline/maintenance.py; README "Storage")."""

    retention_raw_days: int = 30             # full-resolution quote rows, then rolled up and deleted
    candle_hourly_retention_days: int = 400  # hourly candles; daily candles are kept forever
    raw_payload_retention_days: int = 30     # raw page bodies (their hashes are kept)
    rejected_retention_days: int = 90        # rejected records
    maintenance_schedule_seconds: int = 3600
    maintenance_chunk_hours: int = 6         # quote rows rolled up and deleted per transaction

    @property
    def overdue_after_seconds(self) -> int:
        """/health degrades when the last successful maintenance run is older than this."""
        return self.maintenance_schedule_seconds * 3 + 600


def _storage_settings(env) -> StorageSettings:
    return StorageSettings(
        retention_raw_days=_int(env, "RETENTION_RAW_DAYS", 30, 1, 36500),
        candle_hourly_retention_days=_int(env, "CANDLE_HOURLY_RETENTION_DAYS", 400, 1, 36500),
        raw_payload_retention_days=_int(env, "RAW_PAYLOAD_RETENTION_DAYS", 30, 1, 36500),
        rejected_retention_days=_int(env, "REJECTED_RETENTION_DAYS", 90, 1, 36500),
        maintenance_schedule_seconds=_int(env, "MAINTENANCE_SCHEDULE_SECONDS", 3600, 10, 7 * 24 * 3600),
        maintenance_chunk_hours=_int(env, "MAINTENANCE_CHUNK_HOURS", 6, 1, 24 * 31),
    )


@dataclass(frozen=True)
class Settings:
    database_url: str | None
    redis_url: str | None
    bind_host: str
    port: int
    flower_port: int
    flower_basic_auth: str | None
    api_token: str | None
    log_level: str
    coingecko_base_url: str
    coingecko_api_key: str | None
    coingecko_api_plan: str
    coingecko_per_page: int
    coingecko_max_pages: int
    coinpaprika_base_url: str
    coinpaprika_api_key: str | None
    csv_data_dir: Path
    csv_chunk_rows: int
    csv_segment_bytes: int
    csv_columnar: bool
    http_timeout_seconds: float
    reject_share_partial: float
    task_max_retries: int
    run_time_limit_seconds: int
    rate_limit_max_sleep_seconds: float
    max_deliveries: int
    run_stale_after_seconds: int
    db_retry_budget_seconds: int
    retry_backoff_max_seconds: int
    max_request_bytes: int
    worker_stale_after_seconds: float = 10.0
    health_cache_seconds: float = 1.0
    sources: dict = field(default_factory=dict)
    plausibility: PlausibilitySettings = field(default_factory=lambda: load_plausibility({}))
    keep_current_seconds: int = 3600     # history sources' keep-current backfill (0: off)
    backfill_stall_seconds: int = 600    # a running backfill with no window change for this long is re-queued
    storage: "StorageSettings" = None    # retention, rollups and the maintenance task (below)

    @property
    def libpq_url(self) -> str | None:
        """DATABASE_URL as psycopg2/libpq take it (no SQLAlchemy driver suffix)."""
        if not self.database_url:
            return None
        scheme, _, rest = self.database_url.partition("://")
        return ("postgresql" if scheme.startswith("postgres") else scheme) + "://" + rest

    @property
    def enabled_sources(self) -> tuple[str, ...]:
        return tuple(name for name, s in self.sources.items() if s.enabled)

    def public_dict(self) -> dict:
        """Settings without secrets, for logs and diagnostics."""
        hidden = {"api_token", "coingecko_api_key", "coinpaprika_api_key", "flower_basic_auth"}
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            out[f.name] = ("***" if value else None) if f.name in hidden else value
        return out


# Default rate limits stay inside each free tier: CoinGecko keyless is ~10/min per IP,
# CoinPaprika free is 20k calls a month (about 27/hour on average; bursts are allowed).
DEFAULT_RATES = {"coingecko": 10.0, "coinpaprika": 10.0, "csv": 600.0}
DEFAULT_SCHEDULES = {"coingecko": 300, "coinpaprika": 300, "csv": 3600}


_HOST = re.compile(r"^[A-Za-z0-9.\-]{1,253}$|^\[?[0-9A-Fa-f:.]+\]?$")


def _host(env, name, default):
    raw = _str(env, name, default)
    if not _HOST.match(raw):
        raise ConfigError(f"{name} must be an IP address or host name to listen on (127.0.0.1, 0.0.0.0, ::), got {raw!r}")
    return raw.strip("[]")


def _paid_plans_have_keys(settings: "Settings") -> None:
    """A paid plan without its key would only fail at the first run, minutes later: refuse it at start."""
    if settings.coingecko_api_plan != "public" and not settings.coingecko_api_key:
        raise ConfigError(f"COINGECKO_API_PLAN={settings.coingecko_api_plan} needs COINGECKO_API_KEY "
                          "(or COINGECKO_API_PLAN=public, keyless)")
    if "pro-api.coingecko.com" in settings.coingecko_base_url and not settings.coingecko_api_key:
        raise ConfigError("COINGECKO_BASE_URL points at the pro API, which needs COINGECKO_API_KEY")
    if "api-pro.coinpaprika.com" in settings.coinpaprika_base_url and not settings.coinpaprika_api_key:
        raise ConfigError("COINPAPRIKA_BASE_URL points at the pro API, which needs COINPAPRIKA_API_KEY "
                          "(unset COINPAPRIKA_BASE_URL for the free API)")


def load_settings(env: dict | None = None) -> Settings:
    env = dict(os.environ if env is None else env)
    plan = _choice(env, "COINGECKO_API_PLAN", "public", COINGECKO_PLANS)
    enabled = _sources(env, "ENABLED_SOURCES", ",".join(SOURCES))
    sources = {}
    for name in SOURCES:
        prefix = name.upper()
        sources[name] = SourceSettings(
            name=name,
            schedule_seconds=_int(env, f"{prefix}_SCHEDULE_SECONDS", DEFAULT_SCHEDULES[name], minimum=1),
            rate_per_minute=_float(env, f"{prefix}_RATE_PER_MINUTE", DEFAULT_RATES[name], minimum=0.01),
            burst=_int(env, f"{prefix}_RATE_BURST", 1, minimum=1),
            enabled=name in enabled,
        )
    data_dir = Path(_str(env, "CSV_DATA_DIR", "data"))
    if not data_dir.is_absolute():
        data_dir = PROJECT_ROOT / data_dir
    log_level = (_str(env, "LOG_LEVEL", "INFO") or "INFO").upper()
    if log_level not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        raise ConfigError(f"LOG_LEVEL must be DEBUG, INFO, WARNING, ERROR or CRITICAL, got {log_level!r}")
    flower_auth = _str(env, "FLOWER_BASIC_AUTH")
    if flower_auth is not None and not all(":" in login for login in flower_auth.split(",")):
        raise ConfigError("FLOWER_BASIC_AUTH must look like user:password (several: comma-separated)")
    settings = Settings(
        database_url=_url(env, "DATABASE_URL", None, ("postgresql", "postgresql+psycopg2", "postgres")),
        redis_url=_url(env, "REDIS_URL", None, ("redis", "rediss", "unix")),
        bind_host=_host(env, "BIND_HOST", "127.0.0.1"),
        port=_int(env, "PORT", 8000, 1, 65535),
        flower_port=_int(env, "FLOWER_PORT", 5555, 1, 65535),
        flower_basic_auth=flower_auth,
        api_token=_str(env, "API_TOKEN"),
        log_level=log_level,
        coingecko_base_url=_url(env, "COINGECKO_BASE_URL", COINGECKO_DEFAULT_URLS[plan], ("http", "https")),
        coingecko_api_key=_str(env, "COINGECKO_API_KEY"),
        coingecko_api_plan=plan,
        coingecko_per_page=_int(env, "COINGECKO_PER_PAGE", 250, 1, 250),
        coingecko_max_pages=_int(env, "COINGECKO_MAX_PAGES", 4, 1, 10000),
        coinpaprika_base_url=_url(env, "COINPAPRIKA_BASE_URL",
                                  "https://api-pro.coinpaprika.com/v1" if _str(env, "COINPAPRIKA_API_KEY")
                                  else "https://api.coinpaprika.com/v1", ("http", "https")),
        coinpaprika_api_key=_str(env, "COINPAPRIKA_API_KEY"),
        csv_data_dir=data_dir,
        csv_chunk_rows=_int(env, "CSV_CHUNK_ROWS", 20000, 1, 10_000_000),
        csv_segment_bytes=_int(env, "CSV_SEGMENT_BYTES", 32 * 1024 * 1024, 0),
        csv_columnar=bool(_int(env, "CSV_COLUMNAR", 1, 0, 1)),
        http_timeout_seconds=_float(env, "HTTP_TIMEOUT_SECONDS", 20.0, 0.1, 600),
        reject_share_partial=_float(env, "REJECT_SHARE_PARTIAL", 0.05, 0.0, 1.0),
        task_max_retries=_int(env, "TASK_MAX_RETRIES", 5, 0, 100),
        run_time_limit_seconds=_int(env, "RUN_TIME_LIMIT_SECONDS", 3600, 10),
        rate_limit_max_sleep_seconds=_float(env, "RATE_LIMIT_MAX_SLEEP_SECONDS", 2.0, 0.0, 60.0),
        max_deliveries=_int(env, "MAX_DELIVERIES", 5, 1, 100),
        run_stale_after_seconds=_int(env, "RUN_STALE_AFTER_SECONDS", 900, 10),
        db_retry_budget_seconds=_int(env, "DB_RETRY_BUDGET_SECONDS", 600, 1, 7 * 24 * 3600),
        retry_backoff_max_seconds=_int(env, "RETRY_BACKOFF_MAX_SECONDS", 60, 1, 3600),
        max_request_bytes=_int(env, "MAX_REQUEST_BYTES", 64 * 1024, 1024),
        worker_stale_after_seconds=_float(env, "WORKER_STALE_AFTER_SECONDS", 10.0, 3.0, 600.0),
        health_cache_seconds=_float(env, "HEALTH_CACHE_SECONDS", 1.0, 0.0, 60.0),
        sources=sources,
        plausibility=load_plausibility(env),
        keep_current_seconds=_int(env, "HISTORY_KEEP_CURRENT_SECONDS", 3600, 0),
        backfill_stall_seconds=_int(env, "BACKFILL_STALL_SECONDS", 600, 1),
        storage=_storage_settings(env),
    )
    _paid_plans_have_keys(settings)
    return settings
