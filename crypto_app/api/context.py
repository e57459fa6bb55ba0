"""Per-request context: the request id (kept from X-Request-ID or made up), timing, the access log line."""
from __future__ import annotations

import io
import logging
import re
import time
import uuid

from flask import g, request
from werkzeug.exceptions import RequestEntityTooLarge

log = logging.getLogger("crypto_app.api.access")
_SAFE_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")


def register(app) -> None:
    @app.before_request
    def _start():
        g.request_started = time.perf_counter()
        g.request_id = request_id_for(request.headers.get("X-Request-ID", ""))
        if "\x00" in request.path or any("\x00" in key + value for key, value in request.args.items(multi=True)):
            from .errors import ApiError  # PostgreSQL text cannot hold NUL: refuse it here, not with a 500

            raise ApiError(400, "NUL characters are not allowed in the URL.")

    @app.before_request
    def _bounded_chunked_body():
        # A chunked body has no Content-Length to check against MAX_CONTENT_LENGTH: werkzeug then reads at
        # most that many bytes and silently drops the rest, so an oversized body parsed as invalid JSON (400)
        # or, cut at the right place, as a valid request. Read one byte past the limit to answer 413.
        limit = app.config.get("MAX_CONTENT_LENGTH")
        if not limit or request.environ.get("CONTENT_LENGTH"):
            return
        if "chunked" not in request.environ.get("HTTP_TRANSFER_ENCODING", "").lower():
            return
        body = request.environ["wsgi.input"].read(limit + 1)
        if len(body) > limit:
            raise RequestEntityTooLarge()
        request.environ["wsgi.input"] = io.BytesIO(body)
        request.environ["CONTENT_LENGTH"] = str(len(body))

    @app.after_request
    def _finish(response):
        request_id = getattr(g, "request_id", None)
        if request_id:
            response.headers["X-Request-ID"] = request_id
        started = getattr(g, "request_started", None)
        duration_ms = round((time.perf_counter() - started) * 1000, 2) if started else None
        log_request(request_id, request.method, request.path, response.status_code, duration_ms,
                    request.remote_addr)
        return response


def request_id_for(incoming: str) -> str:
    """The request's id: a caller's X-Request-ID when it is a plain token; anything else (spaces,
    newlines...) is replaced by a new one."""
    return incoming if _SAFE_ID.match(incoming) else uuid.uuid4().hex


def log_request(request_id, method: str, path: str, status: int, duration_ms, remote_addr) -> None:
    """The access log line: one per request, also for those answered by the read-cache layer."""
    log.info("request", extra={
        "request_id": request_id, "method": method, "path": path,
        "status": status, "duration_ms": duration_ms, "remote_addr": remote_addr,
    })
