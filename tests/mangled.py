"""Build CSV files the way a spreadsheet mangles them, from true values.

The Kaggle "coin_Bitcoin.csv" file, opened and re-saved by a spreadsheet whose locale uses "." to group
thousands (and "," for decimals), comes out like this: a value with decimals loses its decimal point and
gets its 16 significant digits grouped with "." (Close 144.539993286133 -> "1.445.399.932.861.330"),
whole numbers stay plain ("134"), and big numbers come out in scientific notation ("1.10288E+12").
The true values below are real rows of coin_Bitcoin.csv (Kaggle "Cryptocurrency Historical Prices",
2013-04-29 .. 2013-05-03) and the fixture tests/fixtures/csv_kaggle_coin_Tether.csv.
"""
from __future__ import annotations

from decimal import Decimal

KAGGLE_HEADER = "SNo,Name,Symbol,Date,High,Low,Open,Close,Volume,Marketcap\n"
VALUE_COLUMNS = ("High", "Low", "Open", "Close", "Volume", "Marketcap")

# Date -> (High, Low, Open, Close, Volume, Marketcap): true values of coin_Bitcoin.csv
BITCOIN_2013 = {
    "2013-04-29 23:59:59": ("147.48800659179688", "134", "134.44400024414062", "144.5399932861328", "0",
                            "1603768864.5"),
    "2013-04-30 23:59:59": ("146.92999267578125", "134.0500030517578", "144", "139", "0", "1542813125"),
    "2013-05-01 23:59:59": ("139.88999938964844", "107.72000122070312", "139", "116.98999786376952", "0",
                            "1298954593.75"),
    "2013-05-02 23:59:59": ("125.5999984741211", "92.28199768066406", "116.37999725341795", "105.20999908447266",
                            "0", "1168517495.25"),
    "2013-05-03 23:59:59": ("108.12799835205078", "79.0999984741211", "106.25", "97.75", "0", "1085995169"),
}
# one later day with a market cap the spreadsheet writes in scientific notation (exactly 1.10288E+12)
BITCOIN_2021 = {"2021-02-21 23:59:59": ("58330.5703125", "55672.609375", "55887.3359375", "57539.9453125",
                                        "51897585192", "1102880000000")}


def spreadsheet_dot_grouped(true_text: str) -> str:
    """How a "."-grouping spreadsheet writes back a value it read from a "."-decimal file."""
    value = Decimal(true_text)
    if value == value.to_integral_value() and value < Decimal("1e11"):
        return str(int(value))                                  # whole numbers stay plain
    if value >= Decimal("1e11"):
        mantissa = format(value, ".5E")                         # 1.10288E+12
        head, exponent = mantissa.split("E")
        return f"{head.rstrip('0').rstrip('.')}E+{int(exponent):02d}"
    digits = format(value, ".15E").split("E")[0].replace(".", "").replace("-", "")   # 16 significant digits
    grouped = f"{int(digits):,}".replace(",", ".")
    return grouped


def mangled_kaggle_file(rows: dict, name: str = "Bitcoin", symbol: str = "BTC") -> str:
    lines = [KAGGLE_HEADER]
    for i, (day, values) in enumerate(rows.items(), start=1):
        cells = [spreadsheet_dot_grouped(v) for v in values]
        lines.append(",".join([str(i), name, symbol, day, *[f'"{c}"' if "," in c else c for c in cells]]) + "\n")
    return "".join(lines)


def true_rows(rows: dict) -> dict:
    """day (YYYY-MM-DD) -> {column: Decimal}."""
    return {day[:10]: dict(zip(VALUE_COLUMNS, (Decimal(v) for v in values))) for day, values in rows.items()}
