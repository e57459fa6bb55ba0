"""Response cache for the read endpoints, keyed by the data version; ETags and 304 Not Modified.

What the cached endpoints answer changes only when a transaction that writes `latest_quotes`, `quotes`,
`assets` or `asset_identifiers`, or what the stats count in `etl_runs`, commits, and every such commit
increments `data_version.version` in the same transaction (triggers of migration 0002). So a response
computed after reading version V stays right for as long as the version is V. Endpoints whose answers
depend on anything else (the clock, heartbeats, Redis, Celery) are not cached.

- Each request reads the version first (one primary-key lookup on a connection of its thread, in
  autocommit: a round trip, no pool checkout, no transaction), then looks up (version, path and query)
  in an in-process LRU. A hit is served without touching the tables, the view or the serializers.
- On a miss the view reads the data *after* it read the version, so the data is at least as new as the
  version: an entry can be newer than its key, never older. After a commit the next request sees the new
  version and recomputes: nothing stale is served once a commit is visible, there is no TTL.
- The cache is per gunicorn worker, bounded in entries and bytes (READ_CACHE_MAX_ENTRIES,
  READ_CACHE_MAX_BYTES; 0 bytes turns it off), and emptied when the version moves on. Redis plays no
  part: reads never depend on it. When the version cannot be read the request is computed uncached.

The bodies carry the request id and the request's latency (metadata.request_id, api_latency_ms): an
entry keeps the body as a template with those two slots and fills them per request. The ETag is a hash
of the template, i.e. of the content without those two values, hence weak (W/"..."): equal content
gives an equal ETag even across versions and workers. A request with a matching If-None-Match gets
304 Not Modified with no body.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

from flask import Response, current_app, g, request

from .fastjson import dumps_compact, dumps_value
from .readconn import VersionReader

log = logging.getLogger(__name__)
EXTENSION = "cryptoflow_read_cache"
DEFAULT_MAX_BYTES = 64 * 1024 * 1024
DEFAULT_MAX_ENTRIES = 10_000
MAX_ENTRY_FRACTION = 8  # one entry may take at most this fraction of the budget

# Stand-ins for the two per-request values; NUL cannot occur in the data (PostgreSQL text refuses it)
# nor in a query string (refused with 400 before any view runs).
_REQUEST_ID = "\x00cryptoflow:request_id\x00"
_LATENCY = "\x00cryptoflow:latency\x00"
_SLOTS = {json.dumps(_REQUEST_ID).encode(): "request_id", json.dumps(_LATENCY).encode(): "latency"}
CACHE_CONTROL = "no-cache"  # clients may keep a copy, and revalidate it with If-None-Match
LAYER_VERSION = "cryptoflow.read_cache_version"  # environ key: the version the WSGI layer read (a miss)

# --- cached bodies ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Entry:
    """A rendered JSON body with slots for the per-request values, its status and ETag."""

    parts: tuple  # bytes, or a slot name ("request_id", "latency")
    status: int
    etag: str
    size: int

    @classmethod
    def from_payload(cls, payload, status: int = 200) -> "Entry":
        meta = payload.get("metadata") if isinstance(payload, dict) else None
        if isinstance(meta, dict):
            payload = {**payload, "metadata": {**meta}}
            if "request_id" in meta:
                payload["metadata"]["request_id"] = _REQUEST_ID
            if "api_latency_ms" in meta:
                payload["metadata"]["api_latency_ms"] = _LATENCY
        return cls.from_text(json_text(payload), status)

    @classmethod
    def from_rows_json(cls, rows: list[str], metadata: dict) -> "Entry":
        """The body of {"data": rows, "metadata": metadata} as Flask writes it in compact mode (see
        compact_json()), the rows being JSON texts already (from PostgreSQL). PostgreSQL leaves non-ASCII
        characters and DEL unescaped where Python escapes them: those rows are written again by Python."""
        rows = [row if row.isascii() and "\x7f" not in row else
                json.dumps(json.loads(row), sort_keys=True, separators=(",", ":")) for row in rows]
        meta = {**metadata}
        if "request_id" in meta:
            meta["request_id"] = _REQUEST_ID
        if "api_latency_ms" in meta:
            meta["api_latency_ms"] = _LATENCY
        meta_text = json_text(meta)[:-1]  # compact mode (the caller checked compact_json()), no newline
        return cls.from_text('{"data":[' + ",".join(rows) + '],"metadata":' + meta_text + "}\n")

    @classmethod
    def from_text(cls, text: str, status: int = 200) -> "Entry":
        body = text.encode()
        parts: list = []
        digest = hashlib.blake2b(digest_size=16)
        start = 0
        while True:
            hits = [(body.find(token, start), token) for token in _SLOTS]
            hits = [(at, token) for at, token in hits if at >= 0]
            if not hits:
                break
            at, token = min(hits)
            parts.append(body[start:at])
            parts.append(_SLOTS[token])
            digest.update(body[start:at])
            digest.update(b"\x00" + _SLOTS[token].encode() + b"\x00")
            start = at + len(token)
        parts.append(body[start:])
        digest.update(body[start:])
        return cls(tuple(p for p in parts if p != b""), status, digest.hexdigest(), len(body))

    def body(self, request_id, latency_ms) -> bytes:
        """The body with this request's id and latency (`latency_ms()`, called once if there is a slot)."""
        latency = None
        chunks = []
        for part in self.parts:
            if part == "request_id":
                chunks.append(dumps_value(request_id))
            elif part == "latency":
                if latency is None:
                    latency = dumps_value(latency_ms())
                chunks.append(latency)
            else:
                chunks.append(part)
        return b"".join(chunks)

    def response(self) -> Response:
        if request.if_none_match and request.if_none_match.contains_weak(self.etag):
            response = Response(status=304)
        else:
            response = Response(self.body(getattr(g, "request_id", None), _latency_ms), status=self.status,
                                mimetype="application/json")
        response.set_etag(self.etag, weak=True)
        response.headers["Cache-Control"] = CACHE_CONTROL
        return response


def compact_json() -> bool:
    """Whether Flask writes compact JSON (sorted keys, no spaces): always, unless in debug mode."""
    provider = current_app.json
    return not ((provider.compact is None and current_app.debug) or provider.compact is False) \
        and provider.sort_keys and provider.ensure_ascii


def json_text(payload) -> str:
    """The JSON text Flask's provider would send for `payload` (same options, same trailing newline);
    in compact mode written by orjson where its text is the same (fastjson.py)."""
    provider = current_app.json
    if (provider.compact is None and current_app.debug) or provider.compact is False:
        return provider.dumps(payload, indent=2) + "\n"
    if provider.sort_keys and provider.ensure_ascii:
        text = dumps_compact(payload, provider.default)
        if text is not None:
            return text + "\n"
    return provider.dumps(payload, separators=(",", ":")) + "\n"


def _latency_ms() -> float:
    started = getattr(g, "request_started", None)
    return round((time.perf_counter() - started) * 1000, 2) if started else 0.0


# --- the LRU ------------------------------------------------------------------------------------

class ResponseCache:
    """Entries of one data version at a time, least recently used evicted beyond the bounds."""

    def __init__(self, max_bytes: int, max_entries: int):
        self.max_bytes = max_bytes
        self.max_entries = max_entries
        self.version: int | None = None
        self._entries: OrderedDict = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = self.misses = self.evictions = 0

    @property
    def enabled(self) -> bool:
        return self.max_bytes > 0 and self.max_entries > 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def bytes(self) -> int:
        return self._bytes

    def get(self, version: int, key) -> Entry | None:
        with self._lock:
            if version != self.version:
                self.misses += 1
                return None
            entry = self._entries.get(key)
            if entry is None:
                self.misses += 1
                return None
            self._entries.move_to_end(key)
            self.hits += 1
            return entry

    def put(self, version: int, key, entry: Entry) -> None:
        if not self.enabled or entry.size > self.max_bytes // MAX_ENTRY_FRACTION:
            return
        with self._lock:
            if self.version is None or version > self.version:
                self._entries.clear()  # a newer version: everything before it is obsolete
                self._bytes = 0
                self.version = version
            elif version < self.version:
                return  # computed against an older version than the cache already holds
            old = self._entries.pop(key, None)
            if old is not None:
                self._bytes -= old.size
            self._entries[key] = entry
            self._bytes += entry.size
            while self._entries and (self._bytes > self.max_bytes or len(self._entries) > self.max_entries):
                _, evicted = self._entries.popitem(last=False)
                self._bytes -= evicted.size
                self.evictions += 1


# --- wiring -------------------------------------------------------------------------------------

class ReadCache:
    """Per app: the version reader and the LRU."""

    def __init__(self, dsn: str | None, max_bytes: int, max_entries: int):
        self.versions = VersionReader(dsn)
        self.responses = ResponseCache(max_bytes, max_entries)


def _config_int(app, name: str, default: int) -> int:
    value = app.config.get(name, os.environ.get(name))
    return default if value in (None, "") else int(value)


def register(app) -> None:
    cache = ReadCache(app.config["SETTINGS"].libpq_url,
                      _config_int(app, "READ_CACHE_MAX_BYTES", DEFAULT_MAX_BYTES),
                      _config_int(app, "READ_CACHE_MAX_ENTRIES", DEFAULT_MAX_ENTRIES))
    app.extensions[EXTENSION] = cache

    @app.before_request
    def _serve_from_cache():
        when = CACHEABLE.get(request.endpoint)
        if when is None or request.method not in ("GET", "HEAD") or not cache.responses.enabled \
                or not when(request):
            return None
        if LAYER_VERSION in request.environ:  # the WSGI layer (cachelayer.py) read it and found no entry
            g.read_cache_version = request.environ[LAYER_VERSION]
            return None
        version = cache.versions.read()
        g.read_cache_version = version
        if version is None:
            return None
        entry = cache.responses.get(version, request_key())
        return entry.response() if entry is not None else None

    from .cachelayer import CachedReads

    app.wsgi_app = CachedReads(app, app.wsgi_app)  # hits answered before Flask routes the request


CACHEABLE: dict[str, object] = {}  # endpoint -> when(request)


def cacheable(endpoint: str, when=None) -> None:
    """Declare that `endpoint`'s GET answers depend only on the data under data_version (and on the
    path and query). `when(request)` can narrow it down (e.g. not when the answer depends on the time)."""
    CACHEABLE[endpoint] = when or (lambda req: True)


def request_key(req=None) -> tuple:
    """(path, parameters) of `req` (default: the current request). Parameters sorted by name; repeated
    names keep their order (the first one is the one parsed)."""
    req = req or request
    return req.path, tuple(sorted(req.args.items(multi=True), key=lambda item: item[0]))


def query(sql: str, params: dict) -> list[dict] | None:
    """VersionReader.query() when this request read the version (so its thread's connection has just
    answered), else None: run it through SQLAlchemy."""
    if getattr(g, "read_cache_version", None) is None:
        return None
    return current_app.extensions[EXTENSION].versions.query(sql, params)


def serve(payload_fn) -> Response:
    """Answer the current request with the JSON of `payload_fn()` (a payload, or an Entry), keeping it in
    the cache when the endpoint is cacheable and the version was read (the before_request hook found no
    entry), and honouring If-None-Match either way."""
    produced = payload_fn()
    entry = produced if isinstance(produced, Entry) else Entry.from_payload(produced)
    version = getattr(g, "read_cache_version", None)
    if version is not None:
        current_app.extensions[EXTENSION].responses.put(version, request_key(), entry)
    return entry.response()


DOC_304 = {"304": {"description": "Not Modified: the ETag in If-None-Match is still current (no body)"}}
