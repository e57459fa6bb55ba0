"""JSON request bodies are refused when nested deeper than any real request, before a parser sees them.

Python's json module recurses once per level: a 60 KB body of 30,000 `[` raised RecursionError (a 500)
inside whichever parser read it first. Every JSON body (any media type webargs or Flask treats as JSON)
passes this one check in a before_request hook, so no view, schema or legacy route can miss it.
"""
from __future__ import annotations

import re
from itertools import accumulate

from flask import request
from webargs.core import is_json

MAX_JSON_DEPTH = 32  # the deepest body this API accepts is {"options": {"files": [...]}}: depth 3
_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.S)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")


def json_depth(body: bytes) -> int:
    """The deepest nesting of arrays and objects in `body`, brackets inside strings not counted."""
    brackets = _STRING.sub(b"", body).translate(None, _NOT_BRACKETS)
    return max(accumulate(1 if b in b"[{" else -1 for b in brackets), default=0)


def register(app) -> None:
    @app.before_request
    def _bounded_json_depth():
        if request.content_length == 0 or not is_json(request.mimetype):
            return
        body = request.get_data(cache=True)   # MAX_CONTENT_LENGTH still applies (413)
        if body and json_depth(body) > MAX_JSON_DEPTH:
            from .errors import ApiError

            raise ApiError(400, f"The JSON body is nested deeper than the {MAX_JSON_DEPTH} levels this API accepts.",
                           {"json": [f"nesting deeper than {MAX_JSON_DEPTH} levels"]})
