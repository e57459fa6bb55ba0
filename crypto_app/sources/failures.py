"""Name the cause of a failed upstream request: a short `kind` for metrics and a sentence for operators.

requests wraps urllib3, which wraps the socket layer: a DNS failure reaches us as
`requests.ConnectionError(MaxRetryError(reason=NameResolutionError(...) from socket.gaierror))`, whose
own text is a long repr. `describe(exc, host, timeout)` walks that chain (exception args, urllib3's
`reason`, `__cause__`, `__context__`) to the innermost meaningful error and returns `(kind, text)`:

    dns        DNS lookup failed for api.coingecko.com (Name or service not known)
    refused    connection refused by 127.0.0.1:9
    timeout    connecting to h timed out after 20s / h timed out: no response within 20s
    tls        TLS handshake with h failed (WRONG_VERSION_NUMBER: wrong version number)
    reset      connection reset by h
    truncated  h closed the connection mid-body
    connection anything else at the connection level (the exception's class name)

HTTP-level failures are named by the client itself: `http_<status>`, `redirect`, `invalid_payload`.
The text names hosts and error reasons only: never URLs with queries, never headers.
"""
from __future__ import annotations

import socket
import ssl

import requests
from urllib3 import exceptions as u3

KINDS = ("dns", "refused", "timeout", "tls", "reset", "truncated", "connection", "redirect", "invalid_payload",
         "request")   # plus http_<status>


def chain(exc: BaseException) -> list[BaseException]:
    """`exc` and every exception it wraps, outermost first (each once)."""
    seen: list[BaseException] = []
    pending = [exc]
    while pending:
        current = pending.pop(0)
        if current is None or any(current is s for s in seen):
            continue
        seen.append(current)
        inner = [a for a in getattr(current, "args", ()) if isinstance(a, BaseException)]
        reason = getattr(current, "reason", None)
        if isinstance(reason, BaseException):
            inner.append(reason)
        pending.extend(inner + [current.__cause__, current.__context__])
    return seen


def _first(errors, types):
    return next((e for e in errors if isinstance(e, types)), None)


def describe(exc: BaseException, host: str, timeout: float) -> tuple[str, str]:
    errors = chain(exc)
    gai = _first(errors, socket.gaierror)
    if gai is not None or _first(errors, u3.NameResolutionError) is not None:
        why = getattr(gai, "strerror", None) or "no address"
        return "dns", f"DNS lookup failed for {host} ({why})"
    tls = _first(errors, ssl.SSLError)
    if tls is not None or _first(errors, (requests.exceptions.SSLError, u3.SSLError)) is not None:
        return "tls", f"TLS handshake with {host} failed ({_tls_reason(tls)})"
    if _first(errors, ConnectionRefusedError) is not None:
        return "refused", f"connection refused by {host}"
    # urllib3's NewConnectionError subclasses ConnectTimeoutError: look at what the socket said first
    if _first(errors, (TimeoutError, socket.timeout)) is not None or _first(errors, requests.Timeout) is not None:
        if _first(errors, (requests.exceptions.ConnectTimeout, u3.ConnectTimeoutError)) is not None:
            return "timeout", f"connecting to {host} timed out after {timeout:g}s"
        return "timeout", f"{host} timed out: no response within {timeout:g}s"
    if _first(errors, ConnectionResetError) is not None:
        return "reset", f"connection reset by {host}"
    if _first(errors, (requests.exceptions.ChunkedEncodingError, u3.ProtocolError, u3.IncompleteRead)) is not None:
        return "truncated", f"{host} closed the connection mid-response"
    os_error = _first(errors, OSError)
    if os_error is not None and getattr(os_error, "strerror", None):
        return "connection", f"connection to {host} failed ({os_error.strerror})"
    return "connection", f"connection to {host} failed ({exc.__class__.__name__})"


def _tls_reason(error: ssl.SSLError | None) -> str:
    if error is None:
        return "SSL error"
    verify = getattr(error, "verify_message", None)
    if verify:
        return f"certificate: {verify}"
    reason = getattr(error, "reason", None)
    text = (error.args[1] if len(error.args) > 1 and isinstance(error.args[1], str) else str(error))
    text = text.split("] ", 1)[-1].split(" (_ssl.c", 1)[0]
    return f"{reason}: {text}" if reason else text
