"""Implausible and ambiguous input through the real pipeline: each bad row quarantined with a reason naming the
rule (or column) and the value, good rows stored exactly, counts on the run and in /metrics."""
from __future__ import annotations

import shutil
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import pytest

from crypto_app import create_app
from crypto_app.config import ConfigError, load_settings
from crypto_app.pipeline.plausibility import market_cap_consistency, ohlc_order, price_jump
from pipeline_helpers import run_inline, settings_for, table

DATA = Path(__file__).parent.parent.parent / "data"
HEADER = "Date,Symbol,Name,Open,High,Low,Close,Market Cap\n"


def _data_dir(tmp_path) -> Path:
    data = tmp_path / "data"
    data.mkdir()
    shutil.copy(DATA / "asset_overrides.json", data / "asset_overrides.json")
    return data


def _stored(db_conn, slug: str) -> dict:
    rows = table(db_conn, "SELECT q.observed_at, q.open_usd, q.high_usd, q.low_usd, q.price_usd, q.market_cap_usd "
                          "FROM quotes q JOIN assets a ON a.id = q.asset_id WHERE a.slug = %s", (slug,))
    return {observed.date().isoformat(): tuple(values) for observed, *values in rows}


def _reasons(db_conn, run_id: str, file: str) -> dict:
    rows = table(db_conn, "SELECT (record->>'_line')::int, reason FROM rejected_records WHERE run_id = %s "
                          "AND record->>'_file' = %s", (run_id, file))
    return dict(rows)


def _quality(db_conn, run_id: str) -> dict:
    return table(db_conn, "SELECT stats->'quality' FROM etl_runs WHERE id = %s", (run_id,))[0][0] or {}


def D(*values):
    return tuple(None if v is None else Decimal(v) for v in values)


def test_bad_input_each_has_a_clear_outcome_and_nothing_is_stored_wrong(test_env, db_conn, tmp_path, client, report):
    data = _data_dir(tmp_path)
    future = (datetime.now(timezone.utc) + timedelta(days=3)).date().isoformat()
    # OHLC with high < low on the second day; a close above its high on the third
    (data / "ohlc.csv").write_text(HEADER + "2024-01-01,OHL,Ohlcoin,10,12,9,11,1000\n"
                                   "2024-01-02,OHL,Ohlcoin,11,9,12,10,1000\n"
                                   "2024-01-03,OHL,Ohlcoin,11,12,10,13,1000\n")
    # a price 10^9 x its neighbours (soft: stored, flagged), a date in the future, a $679T market cap
    (data / "spike.csv").write_text(HEADER + "2024-02-01,SPK,Spikecoin,1.5,2.5,1.25,2.25,10\n"
                                    "2024-02-02,SPK,Spikecoin,2.25,2500000000,2,2250000000,10\n"
                                    "2024-02-03,SPK,Spikecoin,2.5,2.75,2.25,2.5,10\n"
                                    f"{future},SPK,Spikecoin,2.5,2.75,2.25,2.5,10\n"
                                    "2024-02-04,SPK,Spikecoin,2.5,2.75,2.25,2.5,679000000000000000\n")
    # multi-dot numbers in every column, no decimal comma anywhere: all ambiguous; a whole-number row loads
    (data / "mangled.csv").write_text(HEADER + "2024-03-01,MNG,Mangledcoin,1.234.567,1.334.567,1.134.567,"
                                      "1.300.000,12.345.678.901\n2024-03-02,MNG,Mangledcoin,13,14,12,13,1300\n")
    # one column mixing 1.234 and 1,234, with "." decimals elsewhere in the column: mixed conventions
    (data / "mixed.csv").write_text(HEADER + '2024-04-01,MIX,Mixcoin,1,2,0.5,1.234,1\n'
                                    '2024-04-02,MIX,Mixcoin,1,2,0.5,"1,234",1\n'
                                    '2024-04-03,MIX,Mixcoin,1,2,0.5,1.5,1\n'
                                    '2024-04-04,MIX,Mixcoin,1,2,0.5,"1.234.567",1\n')
    # a file that names no coin anywhere: refused as a whole, once
    (data / "prices.csv").write_text("Date,Close\n" + "".join(f"2024-05-{d:02d},{d}.5\n" for d in range(1, 29)))

    settings = settings_for(test_env, CSV_DATA_DIR=data, REJECT_SHARE_PARTIAL=1)
    run_id, outcome = run_inline(settings, "csv")
    assert outcome.fetched == outcome.loaded + outcome.rejected

    assert _stored(db_conn, "ohlcoin") == {"2024-01-01": D("10", "12", "9", "11", "1000")}
    assert _reasons(db_conn, run_id, "ohlc.csv") == {
        3: "implausible: ohlc_order: high_usd 9 is below low_usd 12",
        4: "implausible: ohlc_order: price_usd 13 is above high_usd 12"}

    spike = _stored(db_conn, "spikecoin")
    assert spike == {"2024-02-01": D("1.5", "2.5", "1.25", "2.25", "10"),
                     "2024-02-02": D("2.25", "2500000000", "2", "2250000000", "10"),
                     "2024-02-03": D("2.5", "2.75", "2.25", "2.5", "10")}
    spike_reasons = _reasons(db_conn, run_id, "spike.csv")
    assert set(spike_reasons) == {5, 6}
    assert spike_reasons[5].startswith(f"implausible: future_time: observed_at {future}T00:00:00+00:00 is in the future")
    assert spike_reasons[6] == ("implausible: market_cap_ceiling: market_cap_usd 679000000000000000 is above the "
                                "ceiling 1E+13")

    assert _stored(db_conn, "mangledcoin") == {"2024-03-02": D("13", "14", "12", "13", "1300")}
    mangled = _reasons(db_conn, run_id, "mangled.csv")[2]
    for column, value in (("Open", "1.234.567"), ("High", "1.334.567"), ("Low", "1.134.567"), ("Close", "1.300.000"),
                          ("Market Cap", "12.345.678.901")):
        assert f"{column} '{value}'" in mangled, mangled
    assert mangled.startswith("ambiguous number: ")

    assert {day: v[3] for day, v in _stored(db_conn, "mixcoin").items()} == {"2024-04-03": Decimal("1.5")}
    mixed = _reasons(db_conn, run_id, "mixed.csv")
    assert mixed == {2: "ambiguous number: Close '1.234': its column mixes number conventions",
                     3: "ambiguous number: Close '1,234': its column mixes number conventions",
                     5: "ambiguous number: Close '1.234.567': its column mixes number conventions"}

    refused = table(db_conn, "SELECT reason FROM rejected_records WHERE run_id = %s AND locator->>'file' = "
                             "'prices.csv'", (run_id,))
    assert len(refused) == 1 and refused[0][0].startswith("prices.csv: the file names no coin")

    quality = _quality(db_conn, run_id)
    assert quality == {"hard:ohlc_order": 2, "hard:future_time": 1, "hard:market_cap_ceiling": 1,
                       "soft:price_jump": 2, "ambiguous_numbers": 4}, quality
    metrics = client.get("/metrics").get_data(as_text=True)
    assert 'cryptoflow_plausibility_flags_total{rule="price_jump",severity="soft",source="csv"} 2.0' in metrics
    assert 'cryptoflow_plausibility_flags_total{rule="ohlc_order",severity="hard",source="csv"} 2.0' in metrics
    assert 'cryptoflow_ambiguous_numbers_total{source="csv"} 4.0' in metrics
    report("quarantined / loaded", (outcome.rejected, outcome.loaded))


def test_importing_a_file_that_names_no_coin_fails_with_one_error(test_env, db_conn, tmp_path):
    data = _data_dir(tmp_path)
    (data / "prices.csv").write_text("Date,Close\n" + "".join(f"2024-05-{d:02d},{d}.5\n" for d in range(1, 29)))
    app = create_app({"TESTING": True}, settings=settings_for(test_env, CSV_DATA_DIR=data))
    result = app.test_cli_runner().invoke(args=["etl", "import", str(data / "prices.csv")])
    assert result.exit_code != 0
    assert result.stdout == ""
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(error_lines) == 1 and "prices.csv: the file names no coin" in error_lines[0], result.stderr
    status, error, rejected = table(db_conn, "SELECT status, error, rejected FROM etl_runs")[0]
    assert status == "failed" and error.startswith("prices.csv: the file names no coin") and rejected == 0


def test_a_file_named_after_its_coin_needs_no_symbol_column(test_env, db_conn, tmp_path):
    data = _data_dir(tmp_path)
    (data / "bitcoin_price.csv").write_text('Date,Open,High,Low,Close,Volume,Market Cap\n'
                                            '"Feb 20, 2018",11231.8,11958.5,11231.8,11403.7,"9,926,540,000",'
                                            '"189,536,000,000"\n')
    run_id, outcome = run_inline(settings_for(test_env, CSV_DATA_DIR=data), "csv")
    assert (outcome.loaded, outcome.rejected) == (1, 0)
    assert _stored(db_conn, "bitcoin") == {"2018-02-20": D("11231.8", "11958.5", "11231.8", "11403.7", "189536000000")}


def test_severities_are_configurable_per_source_and_bad_settings_name_the_variable(test_env, db_conn, tmp_path):
    data = _data_dir(tmp_path)
    (data / "ohlc.csv").write_text(HEADER + "2024-01-02,OHL,Ohlcoin,11,9,12,10,1000\n")
    settings = settings_for(test_env, CSV_DATA_DIR=data, PLAUSIBILITY_CSV="ohlc_order:soft,price_jump:off")
    run_id, outcome = run_inline(settings, "csv")
    assert (outcome.loaded, outcome.rejected) == (1, 0)
    assert _quality(db_conn, run_id) == {"soft:ohlc_order": 1}
    with pytest.raises(ConfigError, match="PLAUSIBILITY_CSV"):
        load_settings({"PLAUSIBILITY_CSV": "ohlc_order:maybe"})
    with pytest.raises(ConfigError, match="PLAUSIBILITY_PRICE_JUMP_FACTOR"):
        load_settings({"PLAUSIBILITY_PRICE_JUMP_FACTOR": "1"})


def test_the_rules_are_pure_functions():
    assert ohlc_order(Decimal(1), Decimal(2), Decimal("0.5"), Decimal("1.5")) is None
    assert ohlc_order(None, Decimal(2), Decimal(3), None) == "high_usd 2 is below low_usd 3"
    assert price_jump(Decimal(100), Decimal(5), Decimal(20)) is not None
    assert price_jump(Decimal(5), Decimal(100), Decimal(20)) is not None
    assert price_jump(Decimal(99), Decimal(5), Decimal(20)) is None and price_jump(Decimal(5), None, Decimal(20)) is None
    assert market_cap_consistency(Decimal(100), Decimal(2), Decimal(50), Decimal("0.1")) is None
    assert market_cap_consistency(Decimal(679e12), Decimal(2), Decimal(50), Decimal("0.1")) is not None
