"""The validation rules, and the bulk path agreeing with the marshmallow schema on every input."""
import random
from datetime import datetime, timezone
from decimal import Decimal

import pytest
from marshmallow import ValidationError

from crypto_app.pipeline.validate import QUOTE_SCHEMA, AmbiguousNumber, parse_decimal, validate_record

SAMPLES = [None, "", "-", "N/A", "null", 0, -1, 1, 2.5, -0.0, 1e30, float("nan"), float("inf"), "NaN", "Infinity",
           "-3.5", "1,234.56", "1.234,56", "820,947,000", "9,92,65,40,000", "14.748.800.659", "6.32696E+11",
           "$12", " 7 ", "1_000", "abc", "12abc", True, [], {}, Decimal("3.14"), "2147483648", "0", "3.0",
           "2024-04-07T16:49:31.736Z", "Feb 20, 2018", "2015-02-26 23:59:59", 1711843200000, 1711843200,
           "yesterday", "BTC", "Bitcoin", "  ", datetime(2024, 1, 1), "2024-13-45"]
FIELDS = list(QUOTE_SCHEMA.fields)


def _schema(record):
    try:
        return QUOTE_SCHEMA.load(record), None
    except ValidationError as err:
        return None, err.messages


def test_the_bulk_path_and_the_schema_agree_on_random_records():
    rng = random.Random(7)
    for _ in range(3000):
        record = {name: rng.choice(SAMPLES) for name in rng.sample(FIELDS, rng.randint(0, len(FIELDS)))}
        if rng.random() < 0.5:
            record.update(price_usd=rng.choice(["1.5", 3, "9,999"]), observed_at="2024-01-01", symbol="X")
        fast, slow = validate_record(record), _schema(record)
        assert (fast[0] is None) == (slow[0] is None), record
        assert fast == slow, record


def test_money_rules():
    assert parse_decimal("820,947,000") == Decimal("820947000")
    assert parse_decimal("9,92,65,40,000") == Decimal("9926540000")
    with pytest.raises(AmbiguousNumber):          # several dots: grouping only where "," marks decimals
        parse_decimal("14.748.800.659")
    assert parse_decimal("14.748.800.659", ",") == Decimal("14748800659")
    assert parse_decimal("6.32696E+11") == Decimal("632696000000")
    assert parse_decimal(0.1) == Decimal("0.1")                     # no binary float expansion
    clean, errors = validate_record({"symbol": "X", "price_usd": "-1", "observed_at": "2024-01-01"})
    assert errors == {"price_usd": ["must not be negative"]}
    clean, errors = validate_record({"symbol": "X", "price_usd": "1", "observed_at": "2024-01-01",
                                     "change_24h_pct": "-4.2", "max_supply": "-", "market_cap_usd": "1e40"})
    assert clean["change_24h_pct"] == Decimal("-4.2") and clean["max_supply"] is None
    assert clean["market_cap_usd"] == Decimal("1E+40")
    assert clean["observed_at"] == datetime(2024, 1, 1, tzinfo=timezone.utc)


def test_a_lone_sign_or_currency_mark_is_not_a_number_and_never_crashes():
    # found by hypothesis (tests/faults/test_properties.py): "$" raised IndexError instead of ValueError
    from crypto_app.pipeline.validate import parse_decimal

    for text in ("$", "-", "+", "$-", "$+", "-$", " $ "):
        with pytest.raises(ValueError):
            parse_decimal(text)


def test_a_negative_number_of_three_decimals_keeps_its_sign():
    # found by hypothesis (tests/faults/test_properties.py): "-1.818" was stored as 1.818 (the "1.234"
    # check read the number without its sign)
    from decimal import Decimal

    from crypto_app.pipeline.validate import parse_decimal

    assert parse_decimal("-1.818") == Decimal("-1.818")
    assert parse_decimal("+1.818") == Decimal("1.818")
    assert parse_decimal(" -12.345 ", ".") == Decimal("-12.345")
    assert parse_decimal("-1.818", ",") == Decimal("-1818")     # a column whose decimals use ',': "." groups
