"""fastjson.dumps_compact writes what Flask's provider writes, or declines (then the json module writes it):
odd values, and random payloads of the shapes the read endpoints serve."""
from __future__ import annotations

import json
import random
import uuid
from dataclasses import dataclass
from datetime import date, datetime, timezone
from decimal import Decimal

import pytest
from flask import Flask

from crypto_app.api.fastjson import dumps_compact, dumps_value

PROVIDER = Flask(__name__).json


def flask_text(payload) -> str:
    return PROVIDER.dumps(payload, separators=(",", ":"))


@dataclass
class Point:
    x: int
    y: str


ODD = [
    {"price_usd": "87440.12345678", "market_cap_usd": "0.00000001", "n": None, "ok": True},
    {"name": "Café ☕ 𝔘", "z": 1}, {"del": "a\x7fb"}, {"nul": "\x00cryptoflow:request_id\x00"},
    {"tiny": 1e-05}, {"tiny": 3.2e-06}, {"tiny": -0.00001234}, {"small": 0.0001}, {"big": 1e16}, {"big": 1.5e22},
    {"float": 87440.12345678}, {"float": 1.7e12}, {"zero": -0.0}, {"int": 2**63 - 1}, {"huge": 2**70},
    {"dec": Decimal("87440.123456789012345678")}, {"dec": Decimal("1E-10")}, {"when": datetime(2024, 1, 2, 3, 4, 5, tzinfo=timezone.utc)},
    {"day": date(2024, 1, 2)}, {"id": uuid.UUID("12345678-1234-5678-1234-56781234567e")}, {"p": Point(1, "é")},
    {3: "int key"}, {"b": [1, {"d": 2, "c": [3]}], "a": ""}, {"s": "3e-5,"}, {"s": "x 0.00001"}, {"tab": "a\tb\n\"q\"\\"},
]


@pytest.mark.parametrize("payload", ODD, ids=range(len(ODD)))
def test_the_text_is_flasks_or_none(payload):
    text = dumps_compact(payload, PROVIDER.default)
    if text is not None:
        assert text == flask_text(payload)


def test_declines_only_where_the_texts_differ():
    assert dumps_compact({"name": "Café"}, PROVIDER.default) is None
    assert dumps_compact({"tiny": 1e-05}, PROVIDER.default) is None
    assert dumps_compact({"huge": 2**70}, PROVIDER.default) is None
    assert dumps_compact({"price_usd": "0.00000001", "run": "1234567e-89ab-cdef"}, PROVIDER.default) is not None


def test_random_payloads_agree():
    rng = random.Random(14)
    alphabet = "abcXYZ09 -._:/\"\\\t\u00e9\u20ac\x7f"

    def value(depth=0):
        kind = rng.randrange(9 if depth < 3 else 6)
        if kind == 0:
            return "".join(rng.choice(alphabet) for _ in range(rng.randrange(12)))
        if kind == 1:
            return rng.choice([None, True, False])
        if kind == 2:
            return rng.randrange(-10**12, 10**12)
        if kind == 3:
            return rng.uniform(-1, 1) * 10 ** rng.randrange(-12, 24)
        if kind == 4:
            return str(Decimal(rng.randrange(10**12)).scaleb(-rng.randrange(12)))
        if kind == 5:
            return Decimal(rng.randrange(10**12)).scaleb(-rng.randrange(12))
        if kind == 6:
            return [value(depth + 1) for _ in range(rng.randrange(4))]
        return {"".join(rng.choice("abcdef_") for _ in range(rng.randrange(1, 6))): value(depth + 1)
                for _ in range(rng.randrange(5))}

    fast = 0
    for _ in range(3000):
        payload = {"data": [value() for _ in range(3)], "metadata": value()}
        text = dumps_compact(payload, PROVIDER.default)
        if text is not None:
            fast += 1
            assert text == flask_text(payload)
    assert fast > 300  # it is used, not only declining


@pytest.mark.parametrize("value", [None, "abc-123", "0f3a" * 8, 0.0, 0.4, 12.34, 1234.5, 100000.01])
def test_per_request_values(value):
    assert dumps_value(value) == json.dumps(value).encode()
