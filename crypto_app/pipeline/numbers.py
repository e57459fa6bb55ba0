"""Numbers written by people and spreadsheets: parsed from the evidence in their file, never guessed.

A written number's meaning can depend on the convention of its file: "1.234" is 1.234 where "." marks
decimals and 1234 where "." groups thousands. So each numeric column of a CSV chunk gets a decimal MARK,
decided once from the evidence in the column (else in the whole chunk):

- evidence for "." decimals: a value that can only be read one way with a "." decimal ("0.5", "144.54",
  "28348.123", "1,234.56"); for "," decimals: "1,5", "12,50", "1.234,56", "1 234,5";
- not evidence: whole numbers, scientific notation, and values with several "." or several "," — a
  spreadsheet that groups with "." turns 144.539993286133 into "1.445.399.932.861.330", so several dots
  prove nothing by themselves.

Marks: "." (commas and spaces group), "," (dots and spaces group), None (no evidence), MIXED (the
column or chunk contradicts itself: "." decimals and "," decimals, or "." decimals and several dots).
A value whose reading depends on the mark ("1.234", "1,234", several dots, several commas) is read
with it or raises AmbiguousNumber:
  "1.234"/"1,234"   need a mark;  several dots need a "," mark;  several commas need "." or no mark
  (commas grouping whole numbers, "820,947,000" or Indian "9,92,65,40,000", is how CSV files write them).
Everything else reads the same under any mark: "1.5", "12,50", "1,234.56", "1.234,56", "6.32696E+11".
API sources (JSON) use MACHINE: "." decimals.
"""
from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

MACHINE = "."
MIXED = "mixed"

_SPACES = str.maketrans({"\u00a0": " ", "\u202f": " ", "\u2009": " "})
_SIGN = r"[+-]?\$?"
# grouped whole numbers: western (1,234,567) with >= 1 group, Indian (12,34,567) with >= 1 group of two
_G = r"(?:[1-9]\d{0,2}(?:S\d{3})+|[1-9]\d?(?:S\d{2})+S\d{3})"
_GC, _GD, _GS = _G.replace("S", ","), _G.replace("S", r"\."), _G.replace("S", "[ _]")
_GD_MULTI = r"(?:[1-9]\d{0,2}(?:\.\d{3}){2,}|[1-9]\d?(?:\.\d{2})+\.\d{3})"
_GC_MULTI = _GD_MULTI.replace(r"\.", ",")

# the shapes of a written number (after the sign and a "$"); the first that matches wins
DOT_DEC = rf"(?:(?:0\d{{0,2}}|\d{{4,}})?\.\d+|[1-9]\d{{0,2}}\.(?:\d{{1,2}}|\d{{4,}})|(?:{_GC}|{_GS})\.\d+)"
COMMA_DEC = rf"(?:(?:0\d{{0,2}}|\d{{4,}})?,\d+|[1-9]\d{{0,2}},(?:\d{{1,2}}|\d{{4,}})|(?:{_GD}|{_GS}),\d+)"
_SHAPES = (
    ("plain", re.compile(r"\d+")),
    ("spaced", re.compile(_GS)),
    ("sci", re.compile(r"(?:\d+(?:[.,]\d*)?|[.,]\d+)[eE][+-]?\d+")),
    ("dot_ambiguous", re.compile(r"[1-9]\d{0,2}\.\d{3}")),
    ("comma_ambiguous", re.compile(r"[1-9]\d{0,2},\d{3}")),
    ("dot_dec", re.compile(DOT_DEC)),
    ("comma_dec", re.compile(COMMA_DEC)),
    ("multi_dot", re.compile(_GD_MULTI)),
    ("multi_comma", re.compile(_GC_MULTI)),
)
_LINE = r"(?m)^[ \t]*" + _SIGN + "(?:{})[ \t]*$"
_EVIDENCE = {
    "dot_dec": re.compile(_LINE.format(DOT_DEC)),
    "comma_dec": re.compile(_LINE.format(COMMA_DEC)),
    "multi_dot": re.compile(_LINE.format(_GD_MULTI)),
    "multi_comma": re.compile(_LINE.format(_GC_MULTI)),
}
_NO_EVIDENCE = {"dot_dec": False, "comma_dec": False, "multi_dot": False, "multi_comma": False}


class AmbiguousNumber(ValueError):
    """The text is a number under some convention, but which one its file uses is not known."""

    def __init__(self, text: str, why: str):
        super().__init__(f"ambiguous number {text!r}: {why}")
        self.text, self.why = text, why


# -- evidence -------------------------------------------------------------------------------------

def evidence(texts) -> dict:
    """Which kinds of evidence the texts hold: {"dot_dec", "comma_dec", "multi_dot", "multi_comma"}."""
    blob = "\n".join(texts).translate(_SPACES)
    if not blob or ("," not in blob and "." not in blob):
        return dict(_NO_EVIDENCE)
    return {kind: pattern.search(blob) is not None for kind, pattern in _EVIDENCE.items()}


def merge(*found: dict) -> dict:
    return {kind: any(f.get(kind) for f in found) for kind in _NO_EVIDENCE}


def decide(found: dict, fallback: str | None = None) -> str | None:
    """The decimal mark of a column from its evidence; `fallback` (the chunk's mark) if it has none."""
    dot, comma = found["dot_dec"], found["comma_dec"]
    if dot and comma:
        return MIXED
    mark = "." if dot else "," if comma else fallback
    if mark == "." and found["multi_dot"] or mark == "," and found["multi_comma"]:
        return MIXED
    if mark is None and found["multi_dot"] and found["multi_comma"]:
        return MIXED
    return mark


def column_marks(columns: dict) -> dict:
    """{field: [texts]} of one chunk -> {field: mark}."""
    return marks_from_evidence({name: evidence(texts) for name, texts in columns.items()})


# The evidence patterns for one value at a time (no (?m)): what crypto_app.pipeline.columnar matches
# against whole ASCII columns (there RE2's \d, ASCII only, is Python's \d).
VALUE_EVIDENCE = {kind: "^[ \t]*" + _SIGN + "(?:" + shape + ")[ \t]*$" for kind, shape in
                  (("dot_dec", DOT_DEC), ("comma_dec", COMMA_DEC), ("multi_dot", _GD_MULTI),
                   ("multi_comma", _GC_MULTI))}


def marks_from_evidence(found: dict) -> dict:
    """{field: evidence(...)} of one chunk -> {field: mark}."""
    chunk = decide(merge(*found.values())) if found else None
    fallback = None if chunk == MIXED else chunk
    return {name: decide(f, fallback) for name, f in found.items()}


# -- reading one number -----------------------------------------------------------------------------

def parse_text(text: str, mark: str | None = MACHINE) -> Decimal:
    """The Decimal a written number means under `mark`; ValueError if it is not one, AmbiguousNumber
    if its meaning depends on a convention `mark` does not settle. May return NaN or infinity
    (the caller decides)."""
    try:
        number = Decimal(text)
    except InvalidOperation:
        return _slow(text, mark)
    if "_" in text:
        return _slow(text, mark)
    dot = text.find(".")
    if dot >= 0 and number.is_finite() and "e" not in text and "E" not in text:
        body = text.strip()
        sign = body[0] if body[0] in "+-" else ""                # "-1.818": the sign must stay ("" never: body is a number)
        body = body[len(sign):]
        dot = body.find(".")
        if len(body) - dot == 4 and 1 <= dot <= 3 and body[0] != "0":
            return _read("dot_ambiguous", body, text, mark, sign)  # "1.234"
    return number


def _slow(text: str, mark: str | None) -> Decimal:
    body = text.translate(_SPACES).strip()
    sign = ""
    if body.startswith(("+", "-")):         # not `body[:1] in "+-"`: "" is in every string ("$" crashed)
        sign, body = body[0], body[1:]
    if body.startswith("$"):
        body = body[1:]
        if not sign and body.startswith(("+", "-")):
            sign, body = body[0], body[1:]
    for shape, pattern in _SHAPES:
        if pattern.fullmatch(body):
            return _read(shape, body, text, mark, sign)
    raise ValueError(f"not a number: {text!r}")


def _read(shape: str, body: str, text: str, mark: str | None, sign: str = "") -> Decimal:
    if mark == MIXED and shape in ("dot_ambiguous", "comma_ambiguous", "multi_dot", "multi_comma"):
        raise AmbiguousNumber(text, "its column mixes number conventions")
    if shape in ("plain", "spaced"):
        plain = body.replace(" ", "").replace("_", "")
    elif shape == "sci":
        plain = body.replace(",", ".")
    elif shape == "dot_dec":
        plain = body.replace(",", "").replace(" ", "").replace("_", "")
    elif shape == "comma_dec":
        plain = body.replace(".", "").replace(" ", "").replace("_", "").replace(",", ".")
    elif shape == "dot_ambiguous":
        if mark is None:
            raise AmbiguousNumber(text, "could be a decimal or a thousands group; no decimal mark is known for "
                                        "its column or file")
        plain = body if mark == "." else body.replace(".", "")
    elif shape == "comma_ambiguous":
        if mark is None:
            raise AmbiguousNumber(text, "could be a decimal comma or a thousands group; no decimal mark is known "
                                        "for its column or file")
        plain = body.replace(",", "") if mark == "." else body.replace(",", ".")
    elif shape == "multi_dot":
        if mark != ",":
            raise AmbiguousNumber(text, "several dots in a column whose decimals use '.'" if mark == "." else
                                  "several dots and no decimal comma in its column or file (a spreadsheet that "
                                  "groups with '.' writes 144.54 as 1.445.400.000.000.000)")
        plain = body.replace(".", "")
    else:  # multi_comma
        if mark == ",":
            raise AmbiguousNumber(text, "several commas in a column whose decimals use ','")
        plain = body.replace(",", "")
    return Decimal(sign + plain)
