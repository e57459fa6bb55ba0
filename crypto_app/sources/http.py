"""The one small HTTP client both API sources use.

`HttpClient.get_json(url, params)` returns `(parsed JSON, raw bytes)` or raises a source error that says
whether retrying can help:

- connection errors, timeouts, a body cut off mid-transfer, 5xx, CoinGecko's 408, and 429 (JSON or
  Cloudflare HTML) -> TransientSourceError; a connection-level failure names its cause and `kind`
  (dns, refused, timeout, tls, reset, truncated: see failures.py), e.g. "coingecko: DNS lookup failed
  for api.coingecko.com (Name or service not known) on /api/v3/coins/markets"; a 429 carries
  `retry_after` seconds from `Retry-After`
  (seconds or an HTTP date) or else from `x-ratelimit-reset` (`2025-07-25 14:54:00 +0000`);
- a redirect (never followed: CoinPaprika answers a trailing slash with a 301 HTML page), 400/401/402/
  403/404 and other 4xx, a 2xx that is HTML or otherwise not JSON -> PermanentSourceError, with the
  upstream's own message when its error body is JSON;
- a 2xx JSON body that does not decode (truncated) -> TransientSourceError.

Every error carries `kind`: the cause above, `http_<status>`, `redirect` or `invalid_payload`.

`throttle()` runs before every request (the shared rate limit; whatever it raises propagates untouched)
and `on_http_status(code)` after every response. API keys travel in headers only: messages, logs and
locators name the path, never the query's secrets or the headers, and any header secret an upstream
echoes back is masked.
"""
from __future__ import annotations

import json
import logging
import time
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from typing import Any, Callable
from urllib.parse import urlsplit

import requests

from . import failures
from .base import PermanentSourceError, TransientSourceError

log = logging.getLogger(__name__)

TRANSIENT_STATUSES = frozenset({408, 429})        # plus every 5xx
SECRET_HEADER_HINTS = ("key", "auth", "token", "secret", "cookie")
USER_AGENT = "cryptoflow/1.0 (+market data ETL)"
_BODY_EXCERPT = 160


class HttpClient:
    """A requests.Session with the project's timeout, headers, throttle and error mapping."""

    def __init__(self, timeout: float, headers: dict | None = None, throttle: Callable[[], None] | None = None,
                 on_http_status: Callable[[int], None] | None = None, name: str = "upstream"):
        self.timeout = float(timeout)
        self.name = name
        self.throttle = throttle or (lambda: None)
        self.on_http_status = on_http_status or (lambda status: None)
        self.session = requests.Session()
        self.session.headers.update({"Accept": "application/json", "User-Agent": USER_AGENT})
        self.session.headers.update(headers or {})
        self._secrets = [str(v) for k, v in (headers or {}).items()
                         if v and any(hint in k.lower() for hint in SECRET_HEADER_HINTS)]

    def close(self) -> None:
        self.session.close()

    def get_json(self, url: str, params: dict | None = None) -> tuple[Any, bytes]:
        split = urlsplit(url)
        path = split.path
        self.throttle()
        started = time.monotonic()
        try:
            response = self.session.get(url, params=params, timeout=(self.timeout, self.timeout),
                                        allow_redirects=False)
            raw = response.content
        except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError,
                requests.exceptions.ContentDecodingError) as exc:
            host = split.hostname or "?"
            kind, cause = failures.describe(exc, f"{host}:{split.port}" if split.port else host, self.timeout)
            raise TransientSourceError(f"{self.name}: {cause} on {path}", kind=kind) from exc
        except requests.RequestException as exc:    # a malformed URL or header: configuration, not luck
            raise PermanentSourceError(f"{self.name} request to {path} failed: {exc.__class__.__name__}",
                                       kind="request") from exc
        status = response.status_code
        self.on_http_status(status)
        log.debug("upstream response", extra={"source": self.name, "path": path, "status": status,
                                              "bytes": len(raw), "seconds": round(time.monotonic() - started, 3)})
        if 300 <= status < 400:
            where = urlsplit(response.headers.get("Location", "")).path or "?"
            raise PermanentSourceError(f"{self.name} answered {status} redirecting {path} to {where}; "
                                       "redirects are not followed (check the base URL)", status=status,
                                       kind="redirect")
        if status >= 500 or status in TRANSIENT_STATUSES:
            retry_after = retry_after_seconds(response.headers) if status == 429 else None
            raise TransientSourceError(f"{self.name} answered {status} on {path}: {self._detail(response, raw)}",
                                       retry_after=retry_after, status=status)
        if status >= 400:
            raise PermanentSourceError(f"{self.name} answered {status} on {path}: {self._detail(response, raw)}",
                                       status=status)
        return self._decode(response, raw, path), raw

    def _decode(self, response: requests.Response, raw: bytes, path: str) -> Any:
        content_type = response.headers.get("Content-Type", "").split(";")[0].strip().lower() or "no content-type"
        start = raw.lstrip()[:1]
        if "html" in content_type or start == b"<" or (start not in (b"[", b"{") and "json" not in content_type):
            raise PermanentSourceError(f"{self.name} expected JSON, got {content_type} on {path} "
                                       f"({response.status_code}): {self._excerpt(raw)!r}",
                                       status=response.status_code, kind="invalid_payload")
        try:
            return json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise TransientSourceError(f"{self.name} sent JSON that does not decode on {path} "
                                       f"({len(raw)} bytes, truncated?): {exc}", status=response.status_code,
                                       kind="invalid_payload") from None

    def _detail(self, response: requests.Response, raw: bytes) -> str:
        """The upstream's own error message when the body is JSON, else a short excerpt of the body."""
        message = None
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            body = None
        if isinstance(body, dict):
            status = body.get("status")
            if isinstance(status, dict) and status.get("error_message"):
                code = status.get("error_code")
                message = f"{status['error_message']}" + (f" (error_code {code})" if code is not None else "")
            elif body.get("error"):
                message = str(body["error"])
            elif body.get("message"):
                message = str(body["message"])
        if message is None:
            content_type = response.headers.get("Content-Type", "").split(";")[0] or "no content-type"
            message = f"{content_type} body {self._excerpt(raw)!r}"
        return self.mask(message)

    def _excerpt(self, raw: bytes) -> str:
        text = raw[:_BODY_EXCERPT].decode("utf-8", "replace")
        return self.mask(" ".join(text.split()))

    def mask(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text


def retry_after_seconds(headers, now: datetime | None = None) -> float | None:
    """Seconds to wait from `Retry-After` (seconds or HTTP date) or `x-ratelimit-reset`; None if neither."""
    now = now or datetime.now(timezone.utc)
    value = (headers.get("Retry-After") or "").strip()
    if value:
        try:
            return max(0.0, float(value))
        except ValueError:
            pass
        try:
            return _seconds_until(parsedate_to_datetime(value), now)
        except (TypeError, ValueError, IndexError):
            pass
    value = (headers.get("x-ratelimit-reset") or "").strip()
    if value:
        for fmt in ("%Y-%m-%d %H:%M:%S %z", "%Y-%m-%dT%H:%M:%S%z"):
            try:
                return _seconds_until(datetime.strptime(value, fmt), now)
            except ValueError:
                continue
        try:
            number = float(value)
        except ValueError:
            return None
        # a unix time, or (some APIs) seconds until the reset
        return _seconds_until(datetime.fromtimestamp(number, timezone.utc), now) if number > 1e9 else max(0.0, number)
    return None


def _seconds_until(moment: datetime, now: datetime) -> float:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return max(0.0, (moment - now).total_seconds())
