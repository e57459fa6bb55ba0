"""Identity: every record resolves to one canonical asset, never by ticker symbol alone.

Rules, in order, for a validated record of source S:
1. (S, source id) already known in asset_identifiers -> that asset.
2. An override in `<CSV_DATA_DIR>/asset_overrides.json` pins (S, source id) -> asset slug.
3. The record names a coin (source id and/or name): an existing asset with the same symbol whose slug
   or name matches the record's slug hint or name is the same coin ("bitcoin" from CoinGecko,
   "btc-bitcoin" from CoinPaprika, "Bitcoin"/"BTC" from a CSV); otherwise a new asset is created.
   Two coins sharing a symbol but not a name stay two assets.
4. The record carries only a symbol (some CSV files): a pin in the overrides' "symbols" section, else
   the single asset with that symbol; several -> rejected as ambiguous, none -> rejected as unknown.
   Never guessed.
Records without a source id (CSV rows) get a synthetic one, "<symbol>:<slug>", so later rows are rule 1.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

OVERRIDES_FILE = "asset_overrides.json"


def slugify(text: str | None) -> str | None:
    if not text:
        return None
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return slug or None


def load_overrides(data_dir: Path) -> dict:
    path = Path(data_dir) / OVERRIDES_FILE
    if not path.exists():
        return {"identifiers": {}, "symbols": {}}
    data = json.loads(path.read_text(encoding="utf-8"))
    return {"identifiers": {k.lower(): v for k, v in data.get("identifiers", {}).items()},
            "symbols": {k.upper(): v for k, v in data.get("symbols", {}).items()}}


class IdentityError(Exception):
    """The record cannot be tied to exactly one asset; the message is the rejection reason."""


class IdentityResolver:
    """Resolves records of one source to asset ids, caching what it learnt for the rest of the run."""

    def __init__(self, conn, source: str, overrides: dict):
        self.conn = conn
        self.source = source
        self.overrides = overrides
        self._by_external: dict[str, int] = {}
        self._by_symbol: dict[str, int | str] = {}

    def resolve(self, record: dict) -> int:
        """Return the asset id for a validated record, or raise IdentityError."""
        symbol = record.get("symbol")
        name = record.get("name")
        external_id = record.get("external_id")
        if not external_id and not name:
            return self._by_symbol_only(symbol)
        slug_hint = slugify(record.get("slug_hint")) or slugify(name) or slugify(external_id)
        if not external_id:
            external_id = f"{(symbol or '').lower()}:{slug_hint}"
        cached = self._by_external.get(external_id)
        if cached is not None:
            return cached
        asset_id = self._known_identifier(external_id)
        if asset_id is None:
            pinned = self.overrides["identifiers"].get(f"{self.source}:{external_id}".lower())
            if pinned:
                asset_id = self._asset_by_slug(pinned, symbol, name, create=True)
            else:
                asset_id = self._matching_asset(symbol, name, slug_hint) or self._create_asset(slug_hint, symbol, name)
            asset_id = self._link(external_id, asset_id, symbol, name)
        self._by_external[external_id] = asset_id
        return asset_id

    # -- lookups ------------------------------------------------------------------------------

    def _known_identifier(self, external_id: str) -> int | None:
        with self.conn.cursor() as cur:
            cur.execute("SELECT asset_id FROM asset_identifiers WHERE source = %s AND external_id = %s",
                        (self.source, external_id))
            row = cur.fetchone()
        return row[0] if row else None

    def _matching_asset(self, symbol: str | None, name: str | None, slug_hint: str | None) -> int | None:
        if not symbol:
            return self._asset_by_slug(slug_hint, None, name, create=False) if slug_hint else None
        name_slug = slugify(name)
        with self.conn.cursor() as cur:
            cur.execute("SELECT id, slug, name FROM assets WHERE lower(symbol) = lower(%s) ORDER BY id", (symbol,))
            candidates = cur.fetchall()
        for asset_id, slug, asset_name in candidates:
            asset_name_slug = slugify(asset_name)
            if slug_hint in (slug, asset_name_slug) or (name_slug and name_slug in (slug, asset_name_slug)):
                return asset_id
        return None

    def _by_symbol_only(self, symbol: str | None) -> int:
        if not symbol:
            raise IdentityError("the record names no coin: no source id, symbol or name")
        cached = self._by_symbol.get(symbol)
        if isinstance(cached, int):
            return cached
        if isinstance(cached, str):
            raise IdentityError(cached)
        pinned = self.overrides["symbols"].get(symbol.upper())
        if pinned:
            slug = pinned["slug"] if isinstance(pinned, dict) else pinned
            name = pinned.get("name") if isinstance(pinned, dict) else None
            asset_id = self._asset_by_slug(slug, symbol, name or slug.replace("-", " ").title(), create=True)
            self._by_symbol[symbol] = asset_id
            return asset_id
        with self.conn.cursor() as cur:
            cur.execute("SELECT id, slug FROM assets WHERE lower(symbol) = lower(%s) ORDER BY id", (symbol,))
            rows = cur.fetchall()
        if len(rows) == 1:
            self._by_symbol[symbol] = rows[0][0]
            return rows[0][0]
        if rows:
            reason = (f"ambiguous symbol {symbol!r}: it names {len(rows)} assets "
                      f"({', '.join(slug for _, slug in rows)}); add a name column or pin the symbol "
                      f"in {OVERRIDES_FILE}")
        else:
            reason = (f"unknown symbol {symbol!r} and no name to create an asset from; add a name column "
                      f"or pin the symbol in {OVERRIDES_FILE}")
        self._by_symbol[symbol] = reason
        raise IdentityError(reason)

    # -- writes (safe under concurrency: ON CONFLICT, then read back) ----------------------------

    def _asset_by_slug(self, slug: str, symbol, name, create: bool) -> int | None:
        with self.conn.cursor() as cur:
            cur.execute("SELECT id FROM assets WHERE slug = %s", (slug,))
            row = cur.fetchone()
            if row or not create:
                return row[0] if row else None
            cur.execute("INSERT INTO assets (slug, symbol, name) VALUES (%s, %s, %s) "
                        "ON CONFLICT (slug) DO NOTHING", (slug, (symbol or slug).upper(), name or slug))
            cur.execute("SELECT id FROM assets WHERE slug = %s", (slug,))
            return cur.fetchone()[0]

    def _create_asset(self, slug_hint: str | None, symbol: str | None, name: str | None) -> int:
        base = slug_hint or slugify(symbol) or "asset"
        candidates = [base] + ([f"{base}-{symbol.lower()}"] if symbol else []) + [f"{base}-{n}" for n in range(2, 50)]
        with self.conn.cursor() as cur:
            for slug in candidates:
                cur.execute("INSERT INTO assets (slug, symbol, name) VALUES (%s, %s, %s) "
                            "ON CONFLICT (slug) DO NOTHING RETURNING id",
                            (slug, (symbol or base).upper(), name or symbol or base))
                row = cur.fetchone()
                if row:
                    return row[0]
                # the slug exists: it is the same coin if another worker just created it for this symbol
                cur.execute("SELECT id, symbol FROM assets WHERE slug = %s", (slug,))
                existing = cur.fetchone()
                if existing and symbol and existing[1].lower() == symbol.lower():
                    return existing[0]
        raise IdentityError(f"could not find a free slug for {base!r}")

    def _link(self, external_id: str, asset_id: int, symbol, name) -> int:
        with self.conn.cursor() as cur:
            cur.execute("INSERT INTO asset_identifiers (source, external_id, asset_id, symbol, name) "
                        "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (source, external_id) DO NOTHING",
                        (self.source, external_id, asset_id, symbol, name))
            cur.execute("SELECT asset_id FROM asset_identifiers WHERE source = %s AND external_id = %s",
                        (self.source, external_id))
            return cur.fetchone()[0]
