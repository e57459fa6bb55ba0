"""A WSGI layer in front of the Flask app: read-cache hits answered before routing, hooks and serializers.

readcache.py keeps one response per (data version, path and query) and, inside Flask, answers a hit from
a before_request hook. Even so a hit paid for Flask's request and app contexts, URL routing, every hook,
the Response object and prometheus-flask-exporter's hooks: most of its time. This layer does the same
lookup with the same key and answers a hit itself, with the same bytes and headers:

- what may be looked up is decided as inside Flask: GET or HEAD, an endpoint declared cacheable (its
  route found by the app's own URL map, memoized per path), its `when(request)`, and the cache on.
  Anything else (other methods, unknown or redirecting paths, a body, an Authorization header, NUL in
  the URL, an unreadable version) goes to Flask untouched;
- on a miss the version read is handed to Flask in the environ (LAYER_VERSION): the view computes the
  answer against it and stores it, without a second version read;
- a hit answers like Entry.response(): the body with this request's id and latency, or 304 Not Modified
  when If-None-Match holds its ETag; headers Content-Type, Content-Length, ETag, Cache-Control and
  X-Request-ID (the caller's when it is a plain token, as context.py decides);
- it is counted in the same Prometheus metrics prometheus-flask-exporter keeps for Flask's answers
  (flask_http_request_duration_seconds by method, url_rule, status; flask_http_request_total by method,
  status) and logged with the same access log line (context.log_request).
"""
from __future__ import annotations

import time

from werkzeug.datastructures import ETags
from werkzeug.exceptions import HTTPException
from werkzeug.http import parse_etags
from werkzeug.wrappers import Request

from . import readcache
from .context import log_request, request_id_for
from .metrics import EXTENSION as METRICS_EXTENSION

MAX_MEMOIZED_PATHS = 10_000  # path -> route; emptied when full (paths of unknown assets are unbounded)
DURATION_METRIC = "flask_http_request_duration_seconds"
TOTAL_METRIC = "flask_http_request_total"
_NOT_CACHEABLE = None


class CachedReads:
    """WSGI middleware: `app.wsgi_app = CachedReads(app, app.wsgi_app)` (readcache.register does it)."""

    def __init__(self, app, wsgi_app):
        self.app = app
        self.wsgi_app = wsgi_app
        self.enabled = True  # tests turn it off to compare with the answers Flask gives
        self.served = 0  # answers given here (for tests: not a metric, increments may race across threads)
        self.cache: readcache.ReadCache = app.extensions[readcache.EXTENSION]
        self._routes: dict[str, tuple | None] = {}
        self._duration, self._total = http_metrics(app)

    def __call__(self, environ, start_response):
        started = time.perf_counter()
        if not self.enabled or environ.get("REQUEST_METHOD") not in ("GET", "HEAD") \
                or not self.cache.responses.enabled or "HTTP_AUTHORIZATION" in environ or _has_body(environ):
            return self.wsgi_app(environ, start_response)
        request = Request(environ)
        route = self._route(environ, request.path)
        if route is _NOT_CACHEABLE or not route[1](request) or _has_nul(request):
            return self.wsgi_app(environ, start_response)
        version = self.cache.versions.read()
        if version is None:
            return self.wsgi_app(environ, start_response)  # Flask reads it again, then computes uncached
        entry = self.cache.responses.get(version, readcache.request_key(request))
        if entry is None:
            environ[readcache.LAYER_VERSION] = version
            return self.wsgi_app(environ, start_response)
        return self._answer(entry, request, route[0], started, start_response)

    def _route(self, environ, path: str):
        """(url rule, when) for a cacheable endpoint at `path`, else None; memoized per path."""
        try:
            return self._routes[path]
        except KeyError:
            pass
        try:
            rule, _ = self.app.url_map.bind_to_environ(environ).match(method="GET", return_rule=True)
        except HTTPException:  # 404, 405, or a redirect (e.g. a missing trailing slash): Flask answers
            rule = None
        when = readcache.CACHEABLE.get(rule.endpoint) if rule is not None else None
        route = (str(rule), when) if when is not None else _NOT_CACHEABLE
        if len(self._routes) >= MAX_MEMOIZED_PATHS:
            self._routes.clear()
        self._routes[path] = route
        return route

    def _answer(self, entry: readcache.Entry, request: Request, url_rule: str, started: float, start_response):
        environ = request.environ
        request_id = request_id_for(environ.get("HTTP_X_REQUEST_ID", ""))
        etag = f'W/"{entry.etag}"'
        if _matches(environ.get("HTTP_IF_NONE_MATCH"), entry.etag):
            status, body = 304, b""
            headers = [("ETag", etag), ("Cache-Control", readcache.CACHE_CONTROL), ("X-Request-ID", request_id)]
        else:
            status = entry.status
            body = entry.body(request_id, lambda: round((time.perf_counter() - started) * 1000, 2))
            headers = [("Content-Type", "application/json"), ("Content-Length", str(len(body))), ("ETag", etag),
                       ("Cache-Control", readcache.CACHE_CONTROL), ("X-Request-ID", request_id)]
        method = environ["REQUEST_METHOD"]
        self.served += 1
        start_response(_STATUS_LINES.get(status) or f"{status} {_reason(status)}", headers)
        elapsed = time.perf_counter() - started
        self._duration.labels(method=method, url_rule=url_rule, status=status).observe(elapsed)
        self._total.labels(method=method, status=status).inc()
        log_request(request_id, method, request.path, status, round(elapsed * 1000, 2), request.remote_addr)
        return [] if method == "HEAD" or status == 304 else [body]


def http_metrics(app) -> tuple:
    """The HTTP metrics prometheus-flask-exporter registered for `app` (histogram, counter), to count the
    answers it cannot see. Its objects are not exposed, so they are found in its registry by name."""
    http = app.extensions[METRICS_EXTENSION]["http"]
    collectors = http.registry._names_to_collectors  # noqa: SLF001  (no public lookup by name)
    try:
        return collectors[DURATION_METRIC], collectors[TOTAL_METRIC]
    except KeyError as exc:
        raise RuntimeError(f"prometheus-flask-exporter registered no {exc.args[0]}: the read-cache layer "
                           f"cannot count its answers") from None


def _has_body(environ) -> bool:
    return environ.get("CONTENT_LENGTH", "") not in ("", "0") or "HTTP_TRANSFER_ENCODING" in environ


def _has_nul(request: Request) -> bool:
    # refused by context.py with 400 (PostgreSQL text cannot hold NUL): that is Flask's to answer
    return "\x00" in request.path or "\x00" in request.query_string.decode("latin-1") \
        or any("\x00" in key + value for key, value in request.args.items(multi=True))


def _matches(header: str | None, etag: str) -> bool:
    """What request.if_none_match.contains_weak(etag) says (werkzeug parses the header the same way)."""
    if not header:
        return False
    etags: ETags = parse_etags(header)
    return etags.contains_weak(etag)


def _reason(status: int) -> str:
    from http import HTTPStatus

    return HTTPStatus(status).phrase.upper()


_STATUS_LINES = {200: "200 OK", 304: "304 NOT MODIFIED"}
