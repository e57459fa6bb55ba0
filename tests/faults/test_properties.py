"""Property-based tests (hypothesis) of normalization and validation (crypto_app/pipeline/validate.py),
the one definition of what a storable quote is.

- Any valid record, written the ways sources and spreadsheets write numbers and times, round-trips:
  validated, resolved and loaded into real PostgreSQL, it reads back as the same values.
- No input makes validation raise: it returns a clean record or field errors, nothing else.
- Whatever validation accepts, from any input a source could hand it, PostgreSQL stores and reads back
  unchanged (an accepted record that cannot be stored would fail its whole batch, and so its run).
"""
from __future__ import annotations

import uuid
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal

import psycopg2
import pytest
from hypothesis import HealthCheck, assume, given, settings, strategies as st

from crypto_app.pipeline.identity import IdentityResolver
from crypto_app.pipeline.load import LoadBatch, load_batch
from crypto_app.pipeline.validate import validate_record
from crypto_app.sources.coingecko import CoinGeckoSource
from crypto_app.sources.coinpaprika import CoinPaprikaSource
from crypto_app.models.quotes import QUOTE_VALUE_COLUMNS

SETTINGS = dict(deadline=None, suppress_health_check=list(HealthCheck), database=None)  # no .hypothesis dir
AMOUNTS = ("open_usd", "high_usd", "low_usd", "market_cap_usd", "volume_24h_usd", "volume_usd",
           "circulating_supply", "total_supply", "max_supply")
EPOCH_2009, YEAR_2100 = datetime(2009, 1, 3, tzinfo=timezone.utc), datetime(2100, 1, 1, tzinfo=timezone.utc)

# -- strategies ------------------------------------------------------------------------------------------

clean_text = st.text(st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=40) \
    .filter(lambda s: s.strip())
money = st.decimals(min_value=0, max_value=Decimal("1e30"), allow_nan=False, allow_infinity=False, places=None)
signed = st.decimals(min_value=Decimal("-1e6"), max_value=Decimal("1e6"), allow_nan=False, allow_infinity=False)
instants = st.datetimes(min_value=EPOCH_2009.replace(tzinfo=None), max_value=YEAR_2100.replace(tzinfo=None),
                        timezones=st.just(timezone.utc))


@st.composite
def written_number(draw, value: Decimal):
    """`value` as a source or a spreadsheet might write it."""
    forms = [str(value), format(value, "f"), format(value, ",f")]
    if value == value.to_integral_value() and abs(value) < 10**18:
        forms.append(int(value))
    as_float = float(value)
    if Decimal(repr(as_float)) == value:
        forms.append(as_float)
    return draw(st.sampled_from(forms))


@st.composite
def written_time(draw, moment: datetime):
    forms = [moment.isoformat(), moment.isoformat().replace("+00:00", "Z"),
             moment.astimezone(timezone(timedelta(hours=draw(st.integers(-12, 14))))).isoformat()]
    if moment.microsecond == 0:
        seconds = int(moment.timestamp())
        forms += [seconds, str(seconds), seconds * 1000, moment.strftime("%Y-%m-%d %H:%M:%S")]
        if moment.hour == moment.minute == moment.second == 0:
            forms += [moment.strftime("%b %d, %Y"), moment.strftime("%Y/%m/%d"), moment.date()]
    return draw(st.sampled_from(forms))


@st.composite
def valid_records(draw):
    """(normalized record as a source hands it over, the values expected after loading)."""
    expected = {"external_id": draw(clean_text).strip(), "price_usd": draw(money),
                "observed_at": draw(instants)}
    for name in AMOUNTS:
        expected[name] = draw(st.none() | money)
    expected["change_24h_pct"] = draw(st.none() | signed)
    expected["market_cap_rank"] = draw(st.none() | st.integers(1, 2**31 - 1))
    expected["symbol"] = draw(st.none() | st.from_regex(r"[A-Z0-9]{1,10}", fullmatch=True))
    expected["name"] = draw(st.none() | clean_text.map(str.strip))
    record = {"external_id": expected["external_id"], "symbol": expected["symbol"], "name": expected["name"],
              "slug_hint": expected["external_id"], "observed_at": draw(written_time(expected["observed_at"]))}
    for name in ("price_usd", *AMOUNTS, "change_24h_pct"):
        value = expected[name]
        record[name] = draw(st.sampled_from([None, "", "-", "N/A"])) if value is None else draw(written_number(value))
    rank = expected["market_cap_rank"]
    record["market_cap_rank"] = None if rank is None else draw(st.sampled_from([rank, str(rank)]))
    return record, expected


HOSTILE = ["-", "N/A", "1e999999", "1e200000", "1e-20000", "-0", "NaN", "sNaN", "Infinity", "1,2,3", "1.2.3,4",
           "$-5", "9,92,65,40,000", "14.748.800.659", "6.32696E+11", "1e-999999", "0x10", "١٢٣", "\x00", "a\x00b",
           "\ud800", "2024-02-30", "0001-01-01T00:00:00+05:00", "9999-12-31T23:59:59-05:00", "99999999999999"]
anything = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text() | st.binary(max_size=20)
    | st.decimals() | st.datetimes() | st.dates() | st.sampled_from(HOSTILE),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3),
    max_leaves=5)
FIELDS = ("external_id", "symbol", "name", "slug_hint", "price_usd", *AMOUNTS, "market_cap_rank",
          "change_24h_pct", "observed_at")
hostile_records = st.fixed_dictionaries({}, optional={name: anything for name in FIELDS})

# Mostly plausible, sometimes hostile: so that validation accepts many of them, some at the edges
# (NUL characters and lone surrogates included: validation must refuse what PostgreSQL cannot store).
any_text = st.text(max_size=30) | st.sampled_from(["a\x00b", "\ud800x", "\x00", "x\udfff"])
edgy_number = (money.map(str) | st.integers(0, 10**40) | st.floats(min_value=0, allow_nan=False)
               | st.sampled_from(HOSTILE) | st.decimals(allow_nan=False, allow_infinity=False).map(str))
edgy_time = (instants.map(lambda d: d.isoformat()) | st.datetimes(timezones=st.just(timezone.utc)).map(str)
             | st.datetimes(timezones=st.sampled_from([timezone(timedelta(hours=h)) for h in (-12, -5, 5, 14)]))
             .map(lambda d: d.isoformat()) | st.integers(-2**40, 2**45) | st.sampled_from(HOSTILE))
edgy_text = any_text.filter(lambda s: s.strip())
edgy_records = st.fixed_dictionaries(
    {"external_id": edgy_text, "price_usd": edgy_number, "observed_at": edgy_time},
    optional={**{name: st.none() | edgy_number for name in AMOUNTS}, "change_24h_pct": st.none() | edgy_number,
              "market_cap_rank": st.none() | edgy_number, "symbol": st.none() | edgy_text,
              "name": st.none() | edgy_text})
json_scalar = st.none() | st.booleans() | st.integers() | st.floats() | any_text
gecko_records = st.fixed_dictionaries(
    {"id": edgy_text, "current_price": edgy_number, "last_updated": edgy_time},
    optional={k: json_scalar | edgy_number for k in (
        "symbol", "name", "market_cap", "total_volume", "high_24h", "low_24h", "circulating_supply",
        "total_supply", "max_supply", "market_cap_rank", "price_change_percentage_24h")})
paprika_records = st.fixed_dictionaries(
    {"id": edgy_text, "last_updated": edgy_time,
     "quotes": st.fixed_dictionaries({"USD": st.fixed_dictionaries({"price": edgy_number}, optional={
         "market_cap": edgy_number, "volume_24h": edgy_number, "percent_change_24h": edgy_number})})},
    optional={k: json_scalar | edgy_number for k in (
        "symbol", "name", "rank", "circulating_supply", "total_supply", "max_supply")})


# -- the round trip through PostgreSQL -------------------------------------------------------------------

class Store:
    """Validated records through the real resolver and loader into the test database, and back."""

    def __init__(self, dsn: str):
        self.conn = psycopg2.connect(dsn)
        self.identity = psycopg2.connect(dsn)
        self.identity.autocommit = True
        self.run_id = str(uuid.uuid4())
        with self.conn.cursor() as cur:
            cur.execute("INSERT INTO etl_runs (id, source, trigger, status) VALUES (%s, 'coingecko', 'cli', 'running')",
                        (self.run_id,))
        self.conn.commit()
        self.resolver = IdentityResolver(self.identity, "coingecko", {"identifiers": {}, "symbols": {}})
        self.loaded = 0

    def round_trip(self, clean: dict) -> tuple[dict, tuple]:
        clean = dict(clean)
        clean["asset_id"] = self.resolver.resolve(clean)
        load_batch(self.conn, LoadBatch(run_id=self.run_id, source="coingecko", rows=[clean], content_hash="h",
                                        locator={"test": True}, fetched_at=datetime.now(timezone.utc),
                                        raw_body=None, record_count=1))
        self.loaded += 1
        with self.conn.cursor() as cur:
            cur.execute(f"SELECT {', '.join(QUOTE_VALUE_COLUMNS)}, observed_at FROM quotes "
                        "WHERE asset_id = %s AND source = 'coingecko' AND observed_at = %s",
                        (clean["asset_id"], clean["observed_at"]))
            row = cur.fetchone()
            cur.execute("SELECT symbol, name FROM asset_identifiers WHERE source = 'coingecko' AND external_id = %s",
                        (clean["external_id"],))
            identity = cur.fetchone()
        self.conn.commit()
        return dict(zip((*QUOTE_VALUE_COLUMNS, "observed_at"), row)), identity

    def close(self):
        self.conn.close()
        self.identity.close()


@pytest.fixture
def store(test_env):
    s = Store(test_env["DATABASE_URL"])
    yield s
    s.close()


def test_any_valid_record_round_trips_to_the_same_stored_values(store, report):
    @settings(max_examples=250, **SETTINGS)
    @given(valid_records())
    def check(case):
        record, expected = case
        # a new coin each time (identity is by source id: a known id keeps the name it was first seen with)
        record["external_id"] = record["slug_hint"] = expected["external_id"] = f"{expected['external_id']}-{store.loaded}"
        clean, errors = validate_record(record)
        assert errors is None, (record, errors)
        for name in ("price_usd", *AMOUNTS, "change_24h_pct", "market_cap_rank", "observed_at"):
            assert clean[name] == expected[name], (name, record[name], clean[name], expected[name])
        stored, identity = store.round_trip(clean)
        for name in (*QUOTE_VALUE_COLUMNS, "observed_at"):
            assert stored[name] == expected[name], (name, record[name], stored[name], expected[name])
        assert identity[0] == expected["symbol"] and identity[1] == expected["name"]
    check()
    report("records round-tripped through PostgreSQL", store.loaded)


@settings(max_examples=600, **SETTINGS)
@given(hostile_records)
def test_no_input_makes_validation_raise_only_clean_rejections(record):
    clean, errors = validate_record(record)
    assert (clean is None) != (errors is None)
    if errors is not None:
        assert isinstance(errors, dict) and errors
        assert all(isinstance(v, (list, dict)) for v in errors.values()), errors


def _accepted_is_storable(store, record):
    clean, errors = validate_record(record)
    if errors is not None:
        return
    stored, _ = store.round_trip(clean)
    for name in (*QUOTE_VALUE_COLUMNS, "observed_at"):
        assert stored[name] == clean[name], (name, record, stored[name], clean[name])


def test_whatever_validation_accepts_postgres_stores_and_reads_back(store, report):
    gecko, paprika = CoinGeckoSource(None), CoinPaprikaSource(None)

    @settings(max_examples=300, **SETTINGS)
    @given(st.one_of(edgy_records.map(lambda r: ("normalized", r)),
                     gecko_records.map(lambda r: ("coingecko", r)),
                     paprika_records.map(lambda r: ("coinpaprika", r))))
    def check(case):
        kind, raw = case
        record = raw if kind == "normalized" else (gecko if kind == "coingecko" else paprika).normalize(raw)
        _accepted_is_storable(store, record)
    check()
    report("accepted hostile records stored", store.loaded)


@pytest.mark.parametrize("field, value", [
    ("price_usd", "1e200000"),                     # finite for Decimal, beyond PostgreSQL's NUMERIC
    ("market_cap_usd", "1e-20000"),
    ("observed_at", "0001-01-01T00:00:00+05:00"),  # year 0 in UTC: PostgreSQL takes it, Python cannot read it
    ("observed_at", "9999-12-31T23:59:59-05:00"),
])
def test_values_postgres_cannot_hold_are_rejected_not_stored(field, value):
    record = {"external_id": "x", "price_usd": "1", "observed_at": "2024-01-01T00:00:00Z", field: value}
    clean, errors = validate_record(record)
    assert clean is None and field in errors, (clean, errors)
