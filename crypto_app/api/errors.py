"""One JSON error shape for every failure: {status, error, message, details, request_id}.

Flask's, werkzeug's, webargs' and flask-smorest's own errors (404, 405, 413, 422, ...) all go through
the handlers below, so clients parse one shape whatever failed.
"""
from __future__ import annotations

import logging

from flask import g, jsonify, request
from sqlalchemy.exc import OperationalError, TimeoutError as PoolTimeout
from werkzeug.exceptions import HTTPException
from werkzeug.http import HTTP_STATUS_CODES

log = logging.getLogger(__name__)


class ApiError(Exception):
    """Raise from a view to answer with a given status and message."""

    def __init__(self, status: int, message: str, details: dict | None = None, headers: dict | None = None,
                 extra: dict | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.details = details or {}
        self.headers = headers or {}
        self.extra = extra or {}


def error_body(status: int, error: str, message: str, details=None) -> dict:
    return {"status": status, "error": error, "message": message, "details": details or {},
            "request_id": getattr(g, "request_id", None)}


def error_response(status: int, message: str, details=None, headers=None, extra=None):
    body = error_body(status, HTTP_STATUS_CODES.get(status, "Error"), message, details)
    body.update(extra or {})
    return jsonify(body), status, headers or {}


def use_error_schema_in_docs(api) -> None:
    """Make the OpenAPI document describe the errors this API really sends.

    flask-smorest registers its own error schema ({code, status, message, errors}) at init and refers
    to it from the default and 422 responses; swap it for ours before any blueprint refers to it.
    """
    from .schemas import ErrorSchema

    if api.ERROR_SCHEMA is ErrorSchema:  # set by an earlier app in this process: init used it already
        return
    api.ERROR_SCHEMA = ErrorSchema
    api.spec.components.schemas.pop("Error", None)
    api._register_responses()  # re-registers the (lazy) default responses with ErrorSchema


def register(app) -> None:
    @app.errorhandler(ApiError)
    def _api_error(err: ApiError):
        return error_response(err.status, err.message, err.details, err.headers, err.extra)

    @app.errorhandler(HTTPException)
    def _http_error(err: HTTPException):
        details, headers = {}, {}
        message = err.description if isinstance(err.description, str) else err.name
        data = getattr(err, "data", None)  # webargs / flask-smorest abort() payload
        if isinstance(data, dict):
            if data.get("messages"):
                details = data["messages"]
                message = "The request's parameters are invalid: see details."
            if isinstance(data.get("message"), str):
                message = data["message"]
            headers = data.get("headers") or {}
        if err.code == 413:
            limit = app.config.get("MAX_CONTENT_LENGTH")
            message = f"The request body is larger than the {limit} bytes this API accepts."
            details = {"max_bytes": limit}
        if err.code == 405 and err.valid_methods:
            headers = {"Allow": ", ".join(err.valid_methods)}
        return error_response(err.code, message, details, headers)

    @app.errorhandler(OperationalError)
    @app.errorhandler(PoolTimeout)
    def _database_unavailable(err):
        log.error("database unavailable", extra={"path": request.path, "error": err.__class__.__name__})
        return error_response(503, "The database is unavailable; try again shortly.",
                              {"component": "database"}, {"Retry-After": "5"})

    @app.errorhandler(Exception)
    def _unexpected(err: Exception):
        log.exception("unhandled error", extra={"path": request.path})
        return error_response(500, "An unexpected error occurred; quote the request_id when reporting it.")
