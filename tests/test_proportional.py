"""Proportional re-ingest: a file with 1% of its rows changed is re-read, only what changed (and the rows
whose outcome depends on it) is validated and written, and what PostgreSQL holds afterwards is exactly what
a full load of the changed file gives."""
from __future__ import annotations

import shutil
from pathlib import Path

from pipeline_helpers import run_inline, settings_for, table

from tests.benchmarks.generate import generate

DATA = Path(__file__).parent.parent / "data"
STORED = ("SELECT a.slug, q.observed_at, q.price_usd::text, q.open_usd::text, q.high_usd::text, q.low_usd::text, "
          "q.volume_24h_usd::text, q.volume_usd::text, q.market_cap_usd::text, q.flags FROM quotes q JOIN assets a ON a.id = q.asset_id "
          "ORDER BY 1, 2")


def _truncate(db_conn) -> None:
    with db_conn.cursor() as cur:
        cur.execute("TRUNCATE rejected_records, raw_payloads, quotes, latest_quotes, dataset_assets, datasets, "
                    "asset_identifiers, assets, checkpoints, etl_runs, csv_row_hashes RESTART IDENTITY CASCADE")
    db_conn.commit()


def _group_volume(path: Path) -> None:
    """Line 100's Volume written grouped and quoted ("1,234,567.50"): read column-wise, validated by the row path."""
    lines = path.read_bytes().split(b"\n")
    cells = lines[100].split(b",")
    cells[7] = b'"1,234,567.50"'
    lines[100] = b",".join(cells)
    path.write_bytes(b"\n".join(lines))


def test_one_percent_changed_is_written_alone_and_stores_what_a_full_load_stores(test_env, db_conn, tmp_path):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    shutil.copy(DATA / "asset_overrides.json", data_dir / "asset_overrides.json")
    path = data_dir / "history.csv"
    generate(path, 6000, seed=7)
    _group_volume(path)                                         # a row the row path validates, in both versions
    settings = settings_for(test_env, CSV_DATA_DIR=data_dir, CSV_CHUNK_ROWS=1000, CSV_SEGMENT_BYTES=0,
                            PLAUSIBILITY_CSV="market_cap_ceiling:soft")
    _, first = run_inline(settings, "csv")
    assert first.status == "succeeded" and first.loaded == 6000

    generate(path, 6000, seed=7, changed_every=100)            # 1% of the rows, spread over every chunk
    _group_volume(path)
    lines = path.read_bytes().split(b"\n")
    cells = lines[500].split(b",")
    for i in (3, 4, 5, 6):                                      # OHLC x100: a price jump, up and back down
        cells[i] = cells[i].replace(b".", b"00.", 1)
    lines[500] = b",".join(cells)
    path.write_bytes(b"\n".join(lines))
    _, second = run_inline(settings, "csv")
    assert second.status == "succeeded"
    skipped = second.stats.get("quality", {}).get("unchanged_rows_skipped") or table(
        db_conn, "SELECT (stats->'quality'->>'unchanged_rows_skipped')::int FROM etl_runs ORDER BY created_at DESC "
                 "LIMIT 1")[0][0]
    assert skipped >= 6000 * 0.95 and second.loaded <= 6000 - skipped
    proportional = table(db_conn, STORED)

    _truncate(db_conn)
    _, full = run_inline(settings, "csv")
    assert full.loaded == 6000 and not table(db_conn, "SELECT 1 FROM etl_runs WHERE stats->'quality' ? "
                                                      "'unchanged_rows_skipped'")
    assert proportional == table(db_conn, STORED)
    assert any(row[-1] for row in proportional)                  # the jump was flagged on both sides
    assert any(row[7] == "1234567.50" for row in proportional)                # volume_usd (the day's volume)


def test_new_plausibility_settings_re_read_every_record(test_env, db_conn, tmp_path):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    shutil.copy(DATA / "asset_overrides.json", data_dir / "asset_overrides.json")
    path = data_dir / "history.csv"
    generate(path, 2000, seed=3)
    base = {"CSV_DATA_DIR": data_dir, "CSV_CHUNK_ROWS": 500, "CSV_SEGMENT_BYTES": 0}
    run_inline(settings_for(test_env, **base, PLAUSIBILITY_CSV="market_cap_ceiling:soft"), "csv")
    generate(path, 2000, seed=3, changed_every=100)
    _, again = run_inline(settings_for(test_env, **base, PLAUSIBILITY_CSV="market_cap_ceiling:off"), "csv")
    quality = table(db_conn, "SELECT stats->'quality' FROM etl_runs ORDER BY created_at DESC LIMIT 1")[0][0] or {}
    assert again.status == "succeeded" and again.loaded + again.rejected == 2000 and again.loaded > 1900
    assert "unchanged_rows_skipped" not in quality


def test_a_forced_import_rewrites_every_record_even_those_stored_before(test_env, db_conn, tmp_path):
    """`flask etl import --force` is how an operator repairs stored rows (after an upgrade that changes what a
    record holds, or a row changed behind the pipeline's back): no record may be skipped as already stored."""
    from crypto_app import create_app

    shutil.copy(DATA / "asset_overrides.json", tmp_path / "asset_overrides.json")
    path = tmp_path / "history.csv"
    generate(path, 3000, seed=5)
    app = create_app({"TESTING": True}, settings=settings_for(
        test_env, CSV_DATA_DIR=tmp_path, CSV_CHUNK_ROWS=1000, CSV_SEGMENT_BYTES=0,
        PLAUSIBILITY_CSV="market_cap_ceiling:soft"))
    first = app.test_cli_runner().invoke(args=["etl", "import", str(path)])
    assert first.exit_code == 0 and "loaded 3,000" in first.output, first.output
    stored = table(db_conn, STORED)
    with db_conn.cursor() as cur:           # a stored value that no longer says what the file says
        cur.execute("UPDATE quotes SET price_usd = 1 WHERE (asset_id, observed_at) IN "
                    "(SELECT asset_id, observed_at FROM quotes ORDER BY observed_at LIMIT 5)")
    db_conn.commit()

    forced = app.test_cli_runner().invoke(args=["etl", "import", "--force", str(path)])
    assert forced.exit_code == 0 and "loaded 3,000" in forced.output, forced.output
    assert table(db_conn, STORED) == stored
