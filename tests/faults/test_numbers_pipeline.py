"""Numbers are parsed, never guessed: spreadsheet-mangled files through the real pipeline, PostgreSQL and HTTP."""
from __future__ import annotations

import shutil
from decimal import Decimal
from pathlib import Path

from mangled import BITCOIN_2013, BITCOIN_2021, mangled_kaggle_file, true_rows
from pipeline_helpers import run_inline, settings_for, table

DATA = Path(__file__).parent.parent.parent / "data"
COLUMNS = {"High": "high_usd", "Low": "low_usd", "Open": "open_usd", "Close": "price_usd", "Volume": "volume_usd",
           "Marketcap": "market_cap_usd"}
# a row whose values are all whole numbers survives the spreadsheet unchanged (synthetic, for a good row)
WHOLE = {"2013-05-04 23:59:59": ("115", "92", "98", "112", "0", "1250000000")}


def _data_dir(tmp_path) -> Path:
    data = tmp_path / "data"
    data.mkdir()
    shutil.copy(DATA / "asset_overrides.json", data / "asset_overrides.json")
    return data


def test_a_spreadsheet_mangled_kaggle_file_stores_no_guessed_number(test_env, db_conn, tmp_path, client, report):
    data = _data_dir(tmp_path)
    rows = {**BITCOIN_2013, **BITCOIN_2021, **WHOLE}
    (data / "coin_Bitcoin.csv").write_text(mangled_kaggle_file(rows))
    settings = settings_for(test_env, CSV_DATA_DIR=data, REJECT_SHARE_PARTIAL=1)
    run_id, outcome = run_inline(settings, "csv", {"files": ["coin_Bitcoin.csv"]})

    stored = {observed.date().isoformat(): values for observed, *values in table(
        db_conn, "SELECT q.observed_at, " + ", ".join(f"q.{c}" for c in COLUMNS.values()) +
        " FROM quotes q JOIN assets a ON a.id = q.asset_id WHERE a.slug = 'bitcoin'")}
    truth = true_rows(rows)
    for day, values in stored.items():   # whatever is stored is exactly what the source meant
        assert dict(zip(COLUMNS, values)) == truth[day], day
    assert set(stored) == {"2013-05-04"}
    reasons = dict(table(db_conn, "SELECT record->>'Date', reason FROM rejected_records WHERE run_id = %s", (run_id,)))
    assert len(reasons) == len(rows) - 1 and outcome.rejected == len(rows) - 1 and outcome.loaded == 1
    assert all(r.startswith("ambiguous number") for r in reasons.values()), reasons
    assert "Close '1.445.399.932.861.328'" in reasons["2013-04-29 23:59:59"]
    quality = table(db_conn, "SELECT stats->'quality' FROM etl_runs WHERE id = %s", (run_id,))[0][0]
    assert quality["ambiguous_numbers"] == len(rows) - 1

    body = client.get("/api/v1/assets/bitcoin/history?since=2013-01-01T00:00:00Z&until=2022-01-01T00:00:00Z")
    assert [p["price_usd"] for p in body.get_json()["points"]] == ["112"]
    report("mangled rows quarantined / stored", (outcome.rejected, outcome.loaded))
