"""The fast JSON paths write and read exactly what the standard library would.

canonical.py writes the decision log's canonical JSON with orjson and falls back to the standard
library where orjson would write differently; json_input.py parses with orjson and falls back where
orjson refuses or might not read a number exactly. Every stored hash depends on the first; every 400's
wording on the second. These tests compare the two paths on data built to hit their differences.
"""

from __future__ import annotations

import enum
import hashlib
import json
import random
import struct
from datetime import date

import pytest

from cds_service.canonical import canonical_json, content_hash, standard_json
from cds_service.json_input import JsonInputError, parse_json


def _random_floats(n: int, seed: int) -> list[float]:
    """Every magnitude a double has: random bit patterns, and decimals at each power of ten."""
    rng = random.Random(seed)
    out = []
    while len(out) < n:
        value = struct.unpack("d", rng.getrandbits(64).to_bytes(8, "little"))[0]
        if value == value and abs(value) != float("inf"):
            out.append(value)
    for exponent in range(-325, 309):
        for _ in range(3):
            text = f"{rng.uniform(1, 10):.{rng.randint(0, 6)}f}e{exponent}"
            value = float(text) if exponent < 308 else 1.5e308
            out += [value, -value]
    return out


def test_floats_of_every_magnitude_are_written_as_the_standard_library_writes_them():
    floats = _random_floats(40_000, seed=13)
    differing = [
        v
        for v in floats
        for shape in (v, [v], {"a": v, "b": [1, v, "x"]}, {"text": "ratio:1e-5", "v": v})
        if canonical_json(shape) != standard_json(shape)
    ]
    assert differing == []
    # the shapes that differ in orjson's own output are there, so the fallback was exercised
    assert any(abs(v) < 1e-4 for v in floats) and any(abs(v) >= 1e16 for v in floats)


def test_text_is_written_as_the_standard_library_writes_it():
    rng = random.Random(5)
    alphabet = [chr(c) for c in range(0, 0x250)] + ["\u2028", "\u2029", "\ufeff", "漢", "😀", "\U0010fffd"]
    for _ in range(2000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12)))
        value = {text: text, "k" + text[:3]: [text, 1, None, True, False]}
        assert canonical_json(value) == standard_json(value)


class Colour(enum.StrEnum):
    RED = "red"


class Level(enum.IntEnum):
    HIGH = 3


@pytest.mark.parametrize(
    "value",
    [
        {1: "int key", 2: "b"},
        2**70,
        [-(2**63) - 1],
        {"when": date(2026, 1, 2)},
        {"set": {1}},
        ("tuple", 1.5e-7),
        {"enum": Colour.RED, Colour.RED: Level.HIGH},
        {"nested": {"z": 1, "a": {"y": 0.00001, "b": 1e22}}},
        0.00001,
        -2.5e-7,
    ],
)
def test_values_orjson_cannot_write_alike_go_to_the_standard_library(value):
    assert canonical_json(value) == standard_json(value)


def test_a_resource_hash_is_the_sha256_of_the_standard_librarys_canonical_text():
    resource = {
        "resourceType": "Observation",
        "id": "tiny",
        "valueQuantity": {"value": 0.00001, "unit": "mg/L"},
        "note": [{"text": "Seed: -2867263278251041867 e-5 0.0000"}],
    }
    expected = hashlib.sha256(
        json.dumps(resource, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    ).hexdigest()
    assert content_hash(resource) == expected


def _stdlib_error(text: bytes, monkeypatch) -> str | None:
    """The message of the standard library path alone (parse_json with orjson made to refuse)."""
    import cds_service.json_input as json_input

    def refuse(_):
        raise json_input.orjson.JSONDecodeError("refused", "", 0)

    with monkeypatch.context() as patched:
        patched.setattr(json_input.orjson, "loads", refuse)
        try:
            parse_json(text)
        except JsonInputError as exc:
            return str(exc)
    return None


@pytest.mark.parametrize(
    "text",
    [
        b'{"a": NaN}',
        b'{"a": [Infinity]}',
        b'{"a": 1e400}',
        b'{"a": "\\ud800"}',
        b'{"a": {"b": "x\\udc00"}}',
        b'{"a": "\xff"}',
        b"[" * 65 + b"]" * 65,
        b'{"a": ' + b"[" * 64 + b"]" * 64 + b"}",
        b'{"a": 1,}',
        b"",
    ],
)
def test_refusals_say_what_the_standard_library_path_says(text, monkeypatch):
    with pytest.raises(JsonInputError) as refused:
        parse_json(text)
    assert str(refused.value) == _stdlib_error(text, monkeypatch)


def test_what_is_accepted_is_what_the_standard_library_reads():
    rng = random.Random(7)
    floats = _random_floats(2000, seed=21)
    for i in range(300):
        value = {
            "n": rng.choice(
                [0, -0, 2**63 - 1, -(2**63), 2**64 + 1, -(2**70), rng.randint(-(10**20), 10**20)]
            ),
            "f": rng.choice(floats),
            "s": "Seed: -2867263278251041867 \u00e9😀",
            "list": [rng.choice(floats) for _ in range(5)],
        }
        text = json.dumps(value, ensure_ascii=bool(i % 2)).encode()
        parsed = parse_json(text)
        assert parsed == json.loads(text)
        assert [type(v) for v in parsed.values()] == [type(v) for v in json.loads(text).values()]
    assert parse_json(b"\xef\xbb\xbf" + b'{"bom": 1}') == {"bom": 1}  # a BOM is ignored, as before
    assert parse_json('{"str": 1}') == {"str": 1}


def test_long_decimals_read_as_the_standard_library_reads_them():
    rng = random.Random(11)
    for _ in range(3000):
        digits = rng.choice("123456789") + "".join(
            rng.choice("0123456789") for _ in range(rng.randint(16, 40))
        )
        point = rng.randint(1, len(digits) - 1)
        text = f"{digits[:point]}.{digits[point:]}e{rng.randint(-30, 30)}"
        body = f'{{"v": {text}, "w": [-{text}]}}'.encode()
        assert parse_json(body) == json.loads(body), text


def test_a_chart_whose_text_holds_long_numbers_takes_the_fast_path(monkeypatch):
    """Synthea's narrative says "Person seed: -2867263278251041867": text, not a number; the standard
    library (three times slower on a hook request) must not be needed for it."""
    import cds_service.json_input as json_input

    def not_expected(*args, **kwargs):
        raise AssertionError("the standard library path was taken")

    monkeypatch.setattr(json_input.json, "loads", not_expected)
    body = {
        "text": {"div": "<div>Person seed: -2867263278251041867  Population seed: 1559319163074</div>"},
        "valueQuantity": {"value": 98.68741623329865},
        "ids": [2**63 - 1, -(2**63)],
    }
    assert parse_json(json.dumps(body).encode()) == body


@pytest.mark.parametrize("shape", ["[{}]", '{{"a": {}}}'])
def test_the_depth_limit_is_the_same_on_both_paths(shape, monkeypatch):
    """MAX_DEPTH nested containers are read, one more is refused, whichever parser read the text."""
    from cds_service.json_input import MAX_DEPTH

    def nested(levels: int) -> bytes:
        text = "1"
        for _ in range(levels):
            text = shape.format(text)
        return text.encode()

    assert parse_json(nested(MAX_DEPTH)) == json.loads(nested(MAX_DEPTH))
    with pytest.raises(JsonInputError, match="nested more than"):
        parse_json(nested(MAX_DEPTH + 1))
    import orjson

    def refuse(raw):  # as orjson does text it cannot read: the standard library path decides
        raise orjson.JSONDecodeError("refused", "", 0)

    monkeypatch.setattr("cds_service.json_input.orjson.loads", refuse)
    assert parse_json(nested(MAX_DEPTH)) == json.loads(nested(MAX_DEPTH))
    with pytest.raises(JsonInputError, match="nested more than"):
        parse_json(nested(MAX_DEPTH + 1))
