"""Sources: one module per upstream, all behind crypto_app.sources.base.Source."""
from __future__ import annotations

import importlib

# name -> "module:Class". A fourth source is one new module and one line here.
REGISTRY = {
    "coingecko": "crypto_app.sources.coingecko:CoinGeckoSource",
    "coinpaprika": "crypto_app.sources.coinpaprika:CoinPaprikaSource",
    "csv": "crypto_app.sources.csv_files:CsvSource",
}


def source_class(name: str):
    try:
        module_name, class_name = REGISTRY[name].split(":")
    except KeyError:
        raise KeyError(f"unknown source {name!r}; known: {', '.join(REGISTRY)}") from None
    return getattr(importlib.import_module(module_name), class_name)


def build_source(name: str, settings, **kwargs):
    return source_class(name)(settings, **kwargs)


# history endpoints (backfills): source name -> "module:Class" fetching one window of one coin
HISTORY = {
    "coingecko": "crypto_app.sources.coingecko_history:CoinGeckoHistorySource",
    "coinpaprika": "crypto_app.sources.coinpaprika_history:CoinPaprikaHistorySource",
}


def build_history_source(name: str, settings, **kwargs):
    try:
        module_name, class_name = HISTORY[name].split(":")
    except KeyError:
        raise KeyError(f"no history endpoint for source {name!r}; known: {', '.join(HISTORY)}") from None
    return getattr(importlib.import_module(module_name), class_name)(settings, **kwargs)
