"""Property: a decimal written in any supported or spreadsheet-corrupted format is read back exactly, or its row is
quarantined — never read as a different value. The pure parser on many files, the real pipeline on a sample."""
from __future__ import annotations

import itertools
import shutil
from decimal import Decimal
from pathlib import Path

from hypothesis import HealthCheck, given, settings, strategies as st

from crypto_app.pipeline.numbers import column_marks, parse_text
from pipeline_helpers import run_inline, settings_for, table

DATA = Path(__file__).parent.parent.parent / "data"
CONVENTIONS = ("plain", "en", "de", "fr", "space_dot", "indian", "spreadsheet_mangled")


def _indian(integer: str) -> str:
    head, tail = integer[:-3], integer[-3:]
    groups = []
    while len(head) > 2:
        groups.insert(0, head[-2:])
        head = head[:-2]
    return ",".join(([head] if head else []) + groups + [tail])


def render(value: Decimal, convention: str, sci: bool) -> str:
    """`value` as a file of this convention writes it (sci: the writer chose scientific notation)."""
    plain = format(value, "f")
    if sci and convention != "spreadsheet_mangled":
        text = format(value, "E")                      # exact: every digit kept
        return text.replace(".", ",") if convention in ("de", "fr") else text
    if convention == "plain":
        return plain
    if convention == "spreadsheet_mangled":            # a "."-decimal file re-saved by a "."-grouping spreadsheet
        if value == value.to_integral_value():
            return str(int(value))
        digits = format(value, ".15E").split("E")[0].replace(".", "")
        return f"{int(digits):,}".replace(",", ".")
    en = format(value, ",f")
    if convention == "en":
        return en
    if convention == "de":
        return en.translate(str.maketrans({",": ".", ".": ","}))
    if convention == "fr":
        return en.translate(str.maketrans({",": " ", ".": ","}))
    if convention == "space_dot":
        return en.replace(",", " ")
    integer, _, fraction = plain.partition(".")
    return _indian(integer) + ("." + fraction if fraction else "")


decimals = st.decimals(min_value=0, max_value=Decimal("9e12"), places=6, allow_nan=False, allow_infinity=False) | \
    st.integers(0, 10**12).map(Decimal) | st.sampled_from([Decimal("144.539993286133"), Decimal("1.234"),
                                                           Decimal("1234"), Decimal("0.5"), Decimal("1234.5")])
files = st.tuples(st.sampled_from(CONVENTIONS),
                  st.lists(st.tuples(decimals, st.booleans(), decimals, st.booleans()), min_size=1, max_size=8))


def _file_columns(convention, rows):
    prices = [render(p, convention, sci and p > 0) for p, sci, _, _ in rows]
    caps = [render(c, convention, sci and c > 0) for _, _, c, sci in rows]
    return prices, caps


@settings(max_examples=3000, deadline=None)
@given(files)
def test_the_parser_reads_every_rendered_decimal_exactly_or_refuses_it(case):
    convention, rows = case
    prices, caps = _file_columns(convention, rows)
    marks = column_marks({"price_usd": prices, "market_cap_usd": caps})
    for (price, _, cap, _), texts in zip(rows, zip(prices, caps)):
        for true, text, field in ((price, texts[0], "price_usd"), (cap, texts[1], "market_cap_usd")):
            try:
                read = parse_text(text, marks[field])
            except ValueError:
                continue                                          # quarantined: allowed
            assert read == true, (convention, text, marks[field], read, true)


_counter = itertools.count()


@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@given(files)
def _pipeline_check(data_dir, test_env, db_conn, case):
    convention, rows = case
    n = next(_counter)
    name, symbol = f"Propcoin {n}", f"PROP{n}"
    prices, caps = _file_columns(convention, rows)
    lines = ["Date,Symbol,Name,Close,Market Cap"]
    for i, (price, cap) in enumerate(zip(prices, caps)):
        lines.append(f'2020-01-{i + 1:02d},{symbol},{name},"{price}","{cap}"')
    file = f"prop_{n}.csv"
    (data_dir / file).write_text("\n".join(lines) + "\n")
    settings_ = settings_for(test_env, CSV_DATA_DIR=data_dir, REJECT_SHARE_PARTIAL=1,
                             PLAUSIBILITY_CSV="price_jump:off,market_cap_ceiling:off")
    run_id, outcome = run_inline(settings_, "csv", {"files": [file]})
    stored = {observed.day: (price, cap) for observed, price, cap in table(
        db_conn, "SELECT q.observed_at, q.price_usd, q.market_cap_usd FROM quotes q JOIN assets a ON a.id = q.asset_id "
                 "WHERE a.name = %s", (name,))}
    for i, (price, _, cap, _) in enumerate(rows):
        if i + 1 in stored:
            got = stored[i + 1]
            assert got[0] == price and (got[1] == cap or (cap == 0 and got[1] == 0)), (convention, lines[i + 1], got)
    assert outcome.loaded == len(stored) and outcome.loaded + outcome.rejected == len(rows)


def test_the_pipeline_stores_every_rendered_decimal_exactly_or_quarantines_it(test_env, db_conn, tmp_path, report):
    data = tmp_path / "data"
    data.mkdir()
    shutil.copy(DATA / "asset_overrides.json", data / "asset_overrides.json")
    _pipeline_check(data, test_env, db_conn)
    report("files through the pipeline", next(_counter))


def test_files_with_evidence_are_read_completely_and_a_mangled_file_only_where_it_is_whole():
    values = [Decimal("1234567.891"), Decimal("0.5"), Decimal("1234"), Decimal("12.345"), Decimal("820947000")]
    for convention in ("plain", "en", "de", "fr", "space_dot", "indian"):
        texts = [render(v, convention, sci=False) for v in values]
        mark = column_marks({"price_usd": texts})["price_usd"]
        assert [parse_text(t, mark) for t in texts] == values, (convention, texts, mark)
    texts = [render(v, "spreadsheet_mangled", sci=False) for v in values]
    mark = column_marks({"price_usd": texts})["price_usd"]
    read = {}
    for text, value in zip(texts, values):
        try:
            read[text] = parse_text(text, mark)
        except ValueError:
            pass
    assert read == {"1234": Decimal(1234), "820947000": Decimal(820947000)}, (texts, mark)
