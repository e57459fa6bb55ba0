"""CSV files through the pipeline: identity across all three sources, resume and skip by content hash."""
import json
import shutil
from pathlib import Path

from pipeline_helpers import run_inline, settings_for, table

FIXTURES = Path(__file__).parent / "fixtures"
DATA = Path(__file__).parent.parent / "data"


def _data_dir(tmp_path, *files) -> Path:
    for f in files:
        shutil.copy(f, tmp_path / Path(f).name)
    shutil.copy(DATA / "asset_overrides.json", tmp_path / "asset_overrides.json")
    return tmp_path


def test_the_same_coin_from_coingecko_coinpaprika_and_csv_is_one_asset(test_env, fake_upstream, db_conn, tmp_path):
    gecko = json.loads((FIXTURES / "coingecko_markets_single_2024.json").read_text())
    paprika = json.loads((FIXTURES / "coinpaprika_ticker_btc-bitcoin.json").read_text())
    fake_upstream.script("/api/v3/coins/markets", [fake_upstream.json_response(200, gecko)])
    fake_upstream.script("/v1/tickers", [fake_upstream.json_response(200, [paprika])])
    data_dir = _data_dir(tmp_path, DATA / "sample_markets.csv", FIXTURES / "csv_kaggle_coin_Tether.csv")
    settings = settings_for(test_env, CSV_DATA_DIR=data_dir, **fake_upstream.env(
        COINGECKO_RATE_PER_MINUTE=6000, COINPAPRIKA_RATE_PER_MINUTE=6000))
    for source in ("csv", "coingecko", "coinpaprika"):
        _, outcome = run_inline(settings, source)
        assert outcome.status == "succeeded", source

    bitcoin = table(db_conn, "SELECT a.slug, array_agg(DISTINCT q.source ORDER BY q.source) FROM assets a "
                             "JOIN quotes q ON q.asset_id = a.id WHERE a.symbol = 'BTC' GROUP BY a.slug")
    assert bitcoin == [("bitcoin", ["coingecko", "coinpaprika", "csv"])]
    uni = table(db_conn, "SELECT slug, name FROM assets WHERE symbol = 'UNI' ORDER BY slug")
    assert len(uni) == 2 and uni[0][1] != uni[1][1]          # two coins share UNI: two assets
    tether = table(db_conn, "SELECT count(*) FROM quotes q JOIN assets a ON a.id = q.asset_id "
                            "WHERE a.slug = 'tether' AND q.source = 'csv'")[0][0]
    assert tether > 1000                                     # the Kaggle history joined the sample's Tether


def test_a_csv_row_naming_only_an_ambiguous_symbol_is_rejected_not_guessed(test_env, db_conn, tmp_path):
    data_dir = _data_dir(tmp_path, DATA / "sample_markets.csv")
    settings = settings_for(test_env, CSV_DATA_DIR=data_dir)
    run_inline(settings, "csv")
    (data_dir / "symbols_only.csv").write_text("symbol,price,date\nUNI,7.5,2024-11-23\nETH,3400,2024-11-23\n")
    run_id, outcome = run_inline(settings, "csv")
    assert (outcome.loaded, outcome.rejected) == (1, 1)
    reason = table(db_conn, "SELECT reason FROM rejected_records WHERE run_id = %s", (run_id,))[0][0]
    assert reason.startswith("ambiguous symbol 'UNI'")
    eth = table(db_conn, "SELECT a.slug FROM quotes q JOIN assets a ON a.id = q.asset_id "
                         "WHERE q.run_id = %s", (run_id,))
    assert eth == [("ethereum",)]


def test_an_unchanged_file_is_not_read_again_and_a_grown_file_resumes(test_env, db_conn, tmp_path):
    data_dir = _data_dir(tmp_path)
    path = data_dir / "history.csv"
    lines = ["Date,Symbol,Name,Close,Volume"] + [f"2024-01-{d:02d},BTC,Bitcoin,{40000 + d},{d * 1000}" for d in range(1, 21)]
    path.write_text("\n".join(lines) + "\n")
    settings = settings_for(test_env, CSV_DATA_DIR=data_dir, CSV_CHUNK_ROWS=7)
    _, first = run_inline(settings, "csv")
    assert (first.fetched, first.loaded, first.pages) == (20, 20, 3)

    _, again = run_inline(settings, "csv")
    assert (again.fetched, again.pages) == (0, 0)             # same content hash: nothing read

    with path.open("a") as f:
        f.write("".join(f"2024-02-{d:02d},BTC,Bitcoin,{50000 + d},1\n" for d in range(1, 6)))
    _, grown = run_inline(settings, "csv")
    assert (grown.fetched, grown.loaded) == (5, 5)            # only the appended rows
    assert table(db_conn, "SELECT count(*), count(DISTINCT observed_at) FROM quotes")[0] == (25, 25)
