"""Validation of normalized records: the one definition of what a storable quote is.

Every source maps its raw record onto the canonical field names (crypto_app.sources.base); this
marshmallow schema parses and checks them. Rules:
- money and supply: exact Decimal, finite, never negative; written numbers are read by
  crypto_app.pipeline.numbers under the decimal mark of their column (a CSV file's own evidence; "."
  for JSON sources): "820,947,000", "9,92,65,40,000", "1.234,56" where "," marks decimals, "6.32696E+11";
  a number whose meaning the evidence does not settle raises AmbiguousNumber (the row is quarantined);
  "", "-", "null", "N/A" mean missing and become None (never zero);
- percentage changes: finite, negative allowed;
- observed_at: timezone-aware UTC; ISO 8601 strings, dates, "Feb 20, 2018", unix seconds or milliseconds;
- a record needs a price and something to identify the coin (a source id, a symbol or a name).
"""
from __future__ import annotations

import re
from functools import lru_cache
from datetime import date, datetime, timezone
from decimal import Decimal, InvalidOperation

from marshmallow import EXCLUDE, Schema, ValidationError, fields, missing as missing_, validates_schema

from .numbers import MACHINE, AmbiguousNumber, parse_text

MISSING_TOKENS = {"", "-", "--", "null", "none", "n/a", "na"}
_MS_THRESHOLD = 10_000_000_000  # unix times above this are milliseconds
_DATE_FORMATS = ("%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M", "%Y-%m-%d", "%b %d, %Y", "%d/%m/%Y", "%m/%d/%Y",
                 "%Y/%m/%d", "%d.%m.%Y", "%Y-%m-%dT%H:%M:%S", "%d-%m-%Y", "%B %d, %Y")


def is_missing(value) -> bool:
    return value is None or (isinstance(value, str) and value.strip().lower() in MISSING_TOKENS)


def parse_decimal(value, mark: str | None = MACHINE) -> Decimal:
    """Parse a number; raise ValueError if it is not one (AmbiguousNumber if its meaning depends on a
    convention `mark` does not settle: see crypto_app.pipeline.numbers). JSON numbers need no mark."""
    if isinstance(value, bool):
        raise ValueError("not a number")
    if isinstance(value, Decimal):
        number = value
    elif isinstance(value, int):
        number = Decimal(value)
    elif isinstance(value, float):
        number = Decimal(repr(value))  # the shortest text that round-trips, not the binary expansion
    elif isinstance(value, str):
        try:
            number = Decimal(value)      # the common case, read inline: "28348.6", "1.0", "820947000"
        except InvalidOperation:
            number = parse_text(value, mark)
        else:
            dot = value.find(".")
            if dot != -1 and len(value) - dot == 4:
                start = 1 if value[0] in "+-" else 0
                if 1 <= dot - start <= 3 and value[start] != "0":
                    number = parse_text(value, mark)                  # "1.234": needs the column's mark
            elif "_" in value or value[:1].isspace() or value[-1:].isspace():
                number = parse_text(value, mark)
    else:
        raise ValueError(f"not a number: {value!r}")
    if not number.is_finite():
        raise ValueError("must be a finite number (NaN and infinity are rejected)")
    return _storable(number, len(value) if isinstance(value, str) else None)


# PostgreSQL's NUMERIC holds at most 131072 digits before the decimal point and 16383 after it; a finite
# Decimal ("1e200000") can be far larger or finer, and one such value would fail its whole batch.
_NUMERIC_MAX_ADJUSTED, _NUMERIC_MIN_EXPONENT = 131071, -16383


def _storable(number: Decimal, digits_at_most: int | None) -> Decimal:
    adjusted = number.adjusted()
    if adjusted > _NUMERIC_MAX_ADJUSTED or (
            (digits_at_most is None or adjusted - digits_at_most < _NUMERIC_MIN_EXPONENT)
            and number.as_tuple().exponent < _NUMERIC_MIN_EXPONENT):
        raise ValueError("out of range: at most 131072 digits before the decimal point and 16383 after")
    return number


_EARLIEST, _LATEST = datetime(1970, 1, 1, tzinfo=timezone.utc), datetime(3000, 1, 1, tzinfo=timezone.utc)


def parse_timestamp(value) -> datetime:
    """Parse an observation time into an aware UTC datetime; raise ValueError if impossible.

    Times run from 1970 to 3000, as unix times do here: "0001-01-01T00:00:00+05:00" is year 0 in UTC,
    which PostgreSQL stores but Python cannot read back (every later read of the row would fail)."""
    moment = _parse_timestamp(value)
    if not _EARLIEST <= moment < _LATEST:
        raise ValueError(f"out of range: {value!r:.60} is not between 1970 and 3000")
    return moment


def _parse_timestamp(value) -> datetime:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=timezone.utc)
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day, tzinfo=timezone.utc)
    if isinstance(value, (int, float, Decimal)) and not isinstance(value, bool):
        return _from_epoch(float(value))
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"not a time: {value!r}")
    text = value.strip()
    if re.fullmatch(r"\d{9,14}(\.\d+)?", text):
        return _from_epoch(float(text))
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)
    except ValueError:
        pass
    for fmt in _DATE_FORMATS:
        try:
            return datetime.strptime(text, fmt).replace(tzinfo=timezone.utc)
        except ValueError:
            continue
    raise ValueError(f"not a recognised date or time: {value!r}")


def _from_epoch(seconds: float) -> datetime:
    if seconds > _MS_THRESHOLD:
        seconds /= 1000.0
    if not (0 < seconds < 32503680000):  # 1970 .. 3000
        raise ValueError("unix time out of range")
    return datetime.fromtimestamp(seconds, tz=timezone.utc)


# --- the rules: one function per kind of field, used by the schema and by the bulk path --------

_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")   # PostgreSQL text cannot hold NUL or unpaired surrogates


def rule_text(value, mark=None):
    if value is None or value is missing_:
        return None
    text = str(value).strip()
    if _UNSTORABLE.search(text):
        raise ValueError("contains a NUL or an unpaired surrogate character")
    return text or None


def rule_symbol(value, mark=None):
    return (rule_text(value) or "").upper()[:32] or None


def rule_name(value, mark=None):
    return (rule_text(value) or "")[:200] or None


def _amount(signed: bool, required: bool):
    def rule(value, mark=MACHINE):
        if value is missing_ or is_missing(value):
            if required:
                raise ValueError("is missing (a price is required)")
            return None
        number = parse_decimal(value, mark)
        if not signed and number < 0:
            raise ValueError("must not be negative")
        return number
    return rule


rule_price = _amount(signed=False, required=True)
rule_amount = _amount(signed=False, required=False)
rule_change = _amount(signed=True, required=False)


def rule_rank(value, mark=MACHINE):
    if value is missing_ or is_missing(value):
        return None
    number = parse_decimal(value, mark)
    if number != number.to_integral_value() or number < 0 or number > 2**31 - 1:
        raise ValueError("must be a whole number between 0 and 2147483647")
    return int(number) or None  # CoinPaprika ranks inactive coins 0: no rank


def rule_observed(value, mark=None):
    if value is missing_ or is_missing(value):
        raise ValueError("is missing (an observation time is required)")
    return parse_timestamp(value)


RULE_ERRORS = (ValueError, OverflowError, OSError)


class Rule(fields.Field):
    """A marshmallow field that applies one rule function (missing values go to the rule too)."""

    def __init__(self, rule, **kwargs):
        super().__init__(allow_none=True, **kwargs)
        self.rule = rule

    def deserialize(self, value, attr=None, data=None, **kwargs):
        try:
            return self.rule(value)
        except RULE_ERRORS as exc:
            raise ValidationError(str(exc)) from None

    def _serialize(self, value, attr, obj, **kwargs):
        return None if value is None else str(value)


class QuoteRecordSchema(Schema):
    """A normalized record, ready for identity resolution and loading."""

    class Meta:
        unknown = EXCLUDE

    external_id = Rule(rule_text)
    symbol = Rule(rule_symbol)
    name = Rule(rule_name)
    slug_hint = Rule(rule_text)
    price_usd = Rule(rule_price)
    open_usd = Rule(rule_amount)
    high_usd = Rule(rule_amount)
    low_usd = Rule(rule_amount)
    market_cap_usd = Rule(rule_amount)
    volume_24h_usd = Rule(rule_amount)
    volume_usd = Rule(rule_amount)
    circulating_supply = Rule(rule_amount)
    total_supply = Rule(rule_amount)
    max_supply = Rule(rule_amount)
    market_cap_rank = Rule(rule_rank)
    change_24h_pct = Rule(rule_change)
    observed_at = Rule(rule_observed)

    @validates_schema
    def _identified(self, data, **kwargs):
        if not identified(data):
            raise ValidationError("a record needs a source id, a symbol or a name", "symbol")


def identified(data: dict) -> bool:
    return bool(data.get("external_id") or data.get("symbol") or data.get("name"))


QUOTE_SCHEMA = QuoteRecordSchema()


# The bulk path: the schema's own rule functions applied in a plain loop. marshmallow's per-field
# machinery costs ~10x the rules themselves on million-row files; a record that breaks a rule is then
# loaded through the schema, whose messages are the ones stored with the rejection.
_FIELD_RULES = tuple((name, field.rule) for name, field in QUOTE_SCHEMA.fields.items())


# Fields whose text is a written number, read under the decimal mark of their column.
NUMBER_FIELDS = ("price_usd", "open_usd", "high_usd", "low_usd", "market_cap_usd", "volume_24h_usd", "volume_usd",
                 "circulating_supply", "total_supply", "max_supply", "market_cap_rank", "change_24h_pct")


def validate_record(normalized: dict, marks: dict | None = None) -> tuple[dict | None, dict | None]:
    """Return (clean record, None) or (None, field errors).

    `marks`: the decimal mark of each number field's column (crypto_app.pipeline.numbers.column_marks);
    without it numbers are read as JSON sources write them ("." decimals)."""
    if marks:
        return _validate_with_marks(normalized, marks)
    clean = {}
    get = normalized.get
    try:
        for name, rule in _FIELD_RULES:
            clean[name] = rule(get(name, missing_))
    except RULE_ERRORS:
        clean = None
    if clean is not None and identified(clean):
        return clean, None
    try:
        return QUOTE_SCHEMA.load(normalized), None   # only reached if the two disagree: trust the schema
    except ValidationError as err:
        return None, err.messages


def _validate_with_marks(normalized: dict, marks: dict) -> tuple[dict | None, dict | None]:
    """The schema's rules and messages, with each number read under its column's mark."""
    bound = _bound_rules(tuple(sorted(marks.items())))
    clean = {}
    get = normalized.get
    try:
        for name, rule, mark in bound:
            clean[name] = rule(get(name, missing_), mark)
    except RULE_ERRORS:
        clean = None
    if clean is not None:
        if identified(clean):
            return clean, None
        return None, {"symbol": ["a record needs a source id, a symbol or a name"]}
    errors = {}
    for name, rule, mark in bound:
        try:
            rule(get(name, missing_), mark)
        except RULE_ERRORS as exc:
            errors[name] = [str(exc)]
    return None, errors


@lru_cache(maxsize=256)
def _bound_rules(marks: tuple) -> tuple:
    by_field = dict(marks)
    return tuple((name, rule, by_field.get(name, MACHINE)) for name, rule in _FIELD_RULES)


def ambiguous_fields(errors: dict) -> list[str]:
    """The fields of a rejection whose number was ambiguous."""
    return sorted(name for name, messages in errors.items()
                  if isinstance(messages, list) and any(str(m).startswith("ambiguous number") for m in messages))




def invalid_reason(source, record, errors: dict, quality) -> str:
    """The rejection reason of a record validation refused (the row and the column-wise paths share it):
    `ambiguous number: <Column> '<value>': <why>` (counted in `quality`), else the invalid fields."""
    ambiguous = ambiguous_fields(errors)
    if not ambiguous:
        return "invalid fields: " + ", ".join(sorted(errors))
    quality["ambiguous_numbers"] += 1
    return "ambiguous number: " + "; ".join(
        f"{source.column_of(record, name)} {errors[name][0][len('ambiguous number '):]}" for name in ambiguous)


__all__ = ["AmbiguousNumber", "parse_decimal", "validate_record", "ambiguous_fields", "invalid_reason", "NUMBER_FIELDS"]
