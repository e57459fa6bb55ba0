"""Deterministic, realistic multi-coin daily history: `Date,Symbol,Name,Open,High,Low,Close,Volume,Marketcap`.

Like the Kaggle "every cryptocurrency daily market price" files: one row per coin and day, coin after
coin (by rank), each coin's history ending on the same day and starting when it was listed. Some
symbols are shared by several coins with different names (BTG: Bitcoin Gold and Bitgem, HOT: Holo and
Hydro Protocol, ... and about 4% of the synthetic coins), so a loader that keys on the symbol alone
loses rows. Same `rows` and `seed` -> byte-identical file.

`changed_every=100` writes the same file with every 100th row's Close (and Marketcap) changed: the
"1% of rows changed" version a data vendor would publish as a correction.
"""
from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

HEADER = "Date,Symbol,Name,Open,High,Low,Close,Volume,Marketcap\n"
END_DATE = date(2024, 12, 31)
FULL_HISTORY_COINS = 25          # the top coins have the whole history (the 1-year history read uses them)
CHANGED_OFFSET = 37              # which row of each `changed_every` block is changed

# (name, symbol, first price in USD, circulating supply): real coins, with real symbol collisions.
REAL_COINS = [
    ("Bitcoin", "BTC", 29_000.0, 19.2e6), ("Ethereum", "ETH", 1_900.0, 120e6), ("Tether", "USDT", 1.0, 83e9),
    ("BNB", "BNB", 310.0, 153e6), ("Solana", "SOL", 22.0, 410e6), ("XRP", "XRP", 0.5, 53e9),
    ("USDC", "USDC", 1.0, 26e9), ("Cardano", "ADA", 0.3, 35e9), ("Dogecoin", "DOGE", 0.07, 141e9),
    ("TRON", "TRX", 0.08, 89e9), ("Uniswap", "UNI", 6.0, 600e6), ("Universe", "UNI", 0.0006, 1e9),
    ("Bitcoin Gold", "BTG", 15.0, 17.5e6), ("Bitgem", "BTG", 0.02, 40e6),
    ("Holo", "HOT", 0.0015, 177e9), ("Hydro Protocol", "HOT", 0.001, 1.7e9),
    ("Harmony", "ONE", 0.015, 13e9), ("BigONE Token", "ONE", 0.001, 5e9),
    ("SelfKey", "KEY", 0.003, 5.5e9), ("KEY", "KEY", 0.0005, 2e9),
    ("Blockchain Cuties Universe", "BCUG", 0.2, 5e6), ("Bluzelle", "BLZ", 0.1, 400e6),
    ("Cybermiles", "CMT", 0.005, 800e6), ("CometBFT", "CMT", 0.4, 20e6), ("Chainlink", "LINK", 7.0, 540e6),
]
_SYLLABLES = ("bit", "coin", "chain", "nex", "ora", "zen", "lum", "vor", "tal", "qua", "sol", "ter", "mon",
              "kai", "rix", "dex", "fin", "pol", "ark", "neo", "vex", "ion", "sta", "lyn", "cor", "mir",
              "tra", "gal", "hex", "zo", "ka", "ri", "ta", "po", "lo", "xa", "mu", "ve", "da", "ne")
_SUFFIXES = ("", "", "", " Coin", " Token", " Protocol", " Network", " Finance", " Chain", " Swap", " DAO")


@dataclass(frozen=True)
class Coin:
    name: str
    symbol: str
    price: float
    supply: float
    volatility: float
    listed_days: int              # days of history


@dataclass(frozen=True)
class Dataset:
    path: Path
    rows: int
    coins: int
    days: int                     # longest history, in days
    shared_symbols: int           # symbols that name more than one coin
    first_date: date
    last_date: date
    top: tuple                    # (name, symbol) of the first coins, by rank


def history_days(rows: int) -> int:
    """Two years of daily rows when there are rows enough for 50 coins, else at least 366 days."""
    return 730 if rows >= 730 * 50 else max(366, rows // 50)


def plan_coins(rows: int, seed: int) -> tuple[list[Coin], int]:
    """The coins (in file order) whose histories add up to exactly `rows` rows, and the longest history."""
    rng = random.Random(f"coins:{seed}")
    days = history_days(rows)
    coins: list[Coin] = []
    names, symbols = set(), []
    total = 0
    index = 0
    while total < rows:
        if index < len(REAL_COINS):
            name, symbol, price, supply = REAL_COINS[index]
        else:
            name, symbol = _synthetic_name(rng, names, symbols)
            price = 10 ** rng.uniform(-6, 3)
            supply = 10 ** rng.uniform(6, 11.5)
        names.add(_slug(name))
        symbols.append(symbol)
        listed = days if index < FULL_HISTORY_COINS else rng.randint(max(30, days // 4), days)
        listed = min(listed, rows - total)
        coins.append(Coin(name, symbol, price, supply, rng.uniform(0.01, 0.07), listed))
        total += listed
        index += 1
    return coins, days


def _slug(name: str) -> str:
    return "".join(ch for ch in name.lower() if ch.isalnum())


def _synthetic_name(rng: random.Random, names: set, symbols: list) -> tuple[str, str]:
    while True:
        stem = "".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(2, 3)))
        name = stem.capitalize() + rng.choice(_SUFFIXES)
        if _slug(name) in names:
            continue
        if symbols and rng.random() < 0.04:      # a symbol another coin already uses
            return name, rng.choice(symbols)
        consonants = "".join(c for c in stem.upper()[1:] if c not in "AEIOU")
        taken = set(symbols)
        for candidate in (stem[0].upper() + consonants[:2], stem[0].upper() + consonants[:3], stem[:4].upper(),
                          stem[:5].upper(), stem.upper()):
            if len(candidate) >= 3 and candidate not in taken:
                return name, candidate
        # every short form is taken: a symbol shared by accident, as happens in real life
        return name, stem[:4].upper()


def _money(value: float, significant: int = 8) -> str:
    if value <= 0:
        return "0"
    decimals = max(2, significant - 1 - math.floor(math.log10(value)))
    return f"{value:.{min(decimals, 14)}f}"


def generate(path: Path, rows: int, seed: int = 42, changed_every: int | None = None) -> Dataset:
    """Write `rows` data rows to `path` (deterministic in rows and seed); return what was written."""
    coins, days = plan_coins(rows, seed)
    first = END_DATE - timedelta(days=days - 1)
    row_index = 0
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="\n") as out:
        out.write(HEADER)
        lines = []
        for number, coin in enumerate(coins):
            rng = random.Random(f"prices:{seed}:{number}")
            close = coin.price
            start = END_DATE - timedelta(days=coin.listed_days - 1)
            stable = coin.symbol in ("USDT", "USDC")
            for day in range(coin.listed_days):
                open_ = close
                if stable:
                    close = 1.0 + rng.gauss(0, 0.0008)
                else:
                    close = max(open_ * math.exp(rng.gauss(0.0005, coin.volatility)), 1e-9)
                high = max(open_, close) * (1 + abs(rng.gauss(0, coin.volatility / 3)))
                low = min(open_, close) * (1 - min(abs(rng.gauss(0, coin.volatility / 3)), 0.5))
                market_cap = close * coin.supply
                volume = market_cap * rng.uniform(0.005, 0.25)
                shown = close
                if changed_every and row_index % changed_every == CHANGED_OFFSET:
                    shown = close * 1.0001          # this row only: the walk (next day's open) is unchanged
                    market_cap = shown * coin.supply
                when = (start + timedelta(days=day)).isoformat()
                lines.append(f"{when} 23:59:59,{coin.symbol},{coin.name},{_money(open_)},{_money(high)},"
                             f"{_money(low)},{_money(shown)},{volume:.2f},{market_cap:.2f}\n")
                row_index += 1
                if len(lines) >= 10_000:
                    out.writelines(lines)
                    lines.clear()
        out.writelines(lines)
    by_symbol: dict[str, int] = {}
    for coin in coins:
        by_symbol[coin.symbol] = by_symbol.get(coin.symbol, 0) + 1
    return Dataset(path=path, rows=row_index, coins=len(coins), days=days,
                   shared_symbols=sum(1 for n in by_symbol.values() if n > 1), first_date=first,
                   last_date=END_DATE, top=tuple((c.name, c.symbol) for c in coins[:5]))


def write_overrides(data_dir: Path) -> Path:
    """data/asset_overrides.json as the project ships it: pins for symbol-only rows (unused by rows with names)."""
    path = data_dir / "asset_overrides.json"
    path.write_text(json.dumps({
        "symbols": {"BTC": {"slug": "bitcoin", "name": "Bitcoin"}, "ETH": {"slug": "ethereum", "name": "Ethereum"},
                    "USDT": {"slug": "tether", "name": "Tether"}, "BNB": {"slug": "binancecoin", "name": "BNB"},
                    "SOL": {"slug": "solana", "name": "Solana"}},
        "identifiers": {},
    }, indent=2) + "\n", encoding="utf-8")
    return path


if __name__ == "__main__":   # python -m tests.benchmarks.generate OUT.csv ROWS [SEED]
    import sys

    info = generate(Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]) if len(sys.argv) > 3 else 42)
    print(info)
