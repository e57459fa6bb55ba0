"""One JSON error shape for every failure: {status, error, message, details, request_id}."""
from __future__ import annotations

import logging
import uuid

from flask import g, jsonify, request
from werkzeug.exceptions import HTTPException

log = logging.getLogger(__name__)


class ApiError(Exception):
    """Raise from a view to answer with a given status and message."""

    def __init__(self, status: int, message: str, details: dict | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.details = details or {}
        self.headers = headers or {}


def error_body(status: int, error: str, message: str, details=None) -> dict:
    return {"status": status, "error": error, "message": message, "details": details or {},
            "request_id": getattr(g, "request_id", None)}


def register(app) -> None:
    @app.before_request
    def _request_id():
        incoming = request.headers.get("X-Request-ID", "")
        g.request_id = incoming[:128] if incoming else uuid.uuid4().hex

    @app.after_request
    def _echo_request_id(response):
        response.headers["X-Request-ID"] = getattr(g, "request_id", "")
        return response

    @app.errorhandler(ApiError)
    def _api_error(err: ApiError):
        from werkzeug.http import HTTP_STATUS_CODES

        body = error_body(err.status, HTTP_STATUS_CODES.get(err.status, "Error"), err.message, err.details)
        return jsonify(body), err.status, err.headers

    @app.errorhandler(HTTPException)
    def _http_error(err: HTTPException):
        details = {}
        data = getattr(err, "data", None)  # webargs / flask-smorest validation errors
        if isinstance(data, dict) and data.get("messages"):
            details = data["messages"]
        message = err.description if isinstance(err.description, str) else err.name
        if err.code == 422 and details:
            message = "The request's parameters are invalid: see details."
        return jsonify(error_body(err.code, err.name, message, details)), err.code

    @app.errorhandler(Exception)
    def _unexpected(err: Exception):
        log.exception("unhandled error", extra={"path": request.path})
        return jsonify(error_body(500, "Internal Server Error", "An unexpected error occurred; "
                                  "quote the request_id when reporting it.")), 500
