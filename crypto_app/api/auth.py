"""Bearer-token guard for the endpoints that start work (run triggers).

The token comes from the API_TOKEN setting and is compared in constant time. Without API_TOKEN set,
triggering is refused altogether (503): an unset token must never mean "open to everyone".
"""
from __future__ import annotations

import functools
import hmac
import logging

from flask import current_app, request

from .errors import ApiError

log = logging.getLogger(__name__)
SECURITY_SCHEME = "bearerAuth"
SECURITY = [{SECURITY_SCHEME: []}]
BEARER_CHALLENGE = 'Bearer realm="cryptoflow"'


def register_security_scheme(api) -> None:
    api.spec.components.security_scheme(SECURITY_SCHEME, {
        "type": "http", "scheme": "bearer",
        "description": "The value of the server's API_TOKEN setting: `Authorization: Bearer <token>`.",
    })


def require_token(view):
    """Refuse the request unless it carries `Authorization: Bearer <API_TOKEN>`."""

    @functools.wraps(view)
    def wrapper(*args, **kwargs):
        check_token()
        return view(*args, **kwargs)

    return wrapper


def check_token() -> None:
    expected = current_app.config["SETTINGS"].api_token
    if not expected:
        log.error("trigger refused", extra={"reason": "api_token_unset", "path": request.path})
        raise ApiError(503, "Triggering runs is disabled: API_TOKEN must be set on the server.",
                       {"setting": "API_TOKEN"})
    scheme, _, supplied = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not supplied.strip():
        log.warning("trigger refused", extra={"reason": "missing_token", "path": request.path,
                                              "remote_addr": request.remote_addr})
        raise ApiError(401, "A bearer token is required: send `Authorization: Bearer <API_TOKEN>`.",
                       headers={"WWW-Authenticate": BEARER_CHALLENGE})
    if not hmac.compare_digest(supplied.strip().encode(), expected.encode()):
        log.warning("trigger refused", extra={"reason": "wrong_token", "path": request.path,
                                              "remote_addr": request.remote_addr})
        raise ApiError(403, "The bearer token is not valid.")
