"""Canonical JSON and the hashes built on it: what the decision log chains and cites.

Sorted keys, no spaces, UTF-8 as is. The form must never change: every stored record's hash was
computed over it. The form is the standard library's (`json.dumps(sort_keys=True, separators=(",",
":"), ensure_ascii=False)`); orjson writes the same bytes ~10 x faster for JSON data, so it is tried
first, and the standard library writes whatever orjson would write differently:
- values that are not JSON data (orjson raises: non-str keys, ints beyond 64 bits, sets, datetimes,
  dataclasses, subclasses of dict/list, which the standard library writes its own way; a str or int
  subclass such as an enum.StrEnum member is handed over as its value, as the standard library writes it);
- floats below 1e-4 in magnitude, which the standard library writes as ``1e-05`` and orjson as
  ``0.00001`` or ``1e-5``: any number token of that shape sends the whole value to the standard library
  (a string that merely looks like one costs only the slower path).
NaN and Infinity are not JSON: orjson writes null, the standard library a bare NaN that no JSON reader
takes; no record holds one (parse_json refuses them in input), and a record written either way verifies.
tests/test_canonical.py compares the two on data built to hit their differences; `audit verify` re-derives
every stored record with the standard library, so a record the fast path wrote differently fails it.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime

import orjson

_ORJSON_OPTIONS = (
    orjson.OPT_SORT_KEYS
    | orjson.OPT_PASSTHROUGH_DATACLASS
    | orjson.OPT_PASSTHROUGH_DATETIME
    | orjson.OPT_PASSTHROUGH_SUBCLASS
)
_NUMBER_BEFORE = frozenset(b":,[")  # what precedes a number token in orjson's compact output
_MANTISSA = frozenset(b"0123456789.")


def _token_start(out: bytes, j: int) -> bool:
    """Does a number token end its leading part at out[j] (an optional '-', then ':', ',', '[' or the
    start before it)?"""
    if j >= 0 and out[j] == 45:  # '-'
        j -= 1
    return j < 0 or out[j] in _NUMBER_BEFORE


def _divergent(out: bytes) -> bool:
    """A number orjson writes unlike the standard library: below 1e-4 in magnitude, as 0.0000… or with
    an unpadded exponent (1e-5 for 1e-05). Found by literal search (C speed) and checked by context; a
    string that only looks like one sends the value to the slower path, never a wrong text."""
    i = out.find(b"e-")
    while i != -1:
        j = i - 1
        while j >= 0 and out[j] in _MANTISSA:
            j -= 1
        if j < i - 1 and _token_start(out, j):
            return True
        i = out.find(b"e-", i + 2)
    i = out.find(b"0.0000")
    while i != -1:
        if _token_start(out, i - 1):
            return True
        i = out.find(b"0.0000", i + 1)
    return False


def _as_standard_library(value):
    """orjson's `default`: a str or int subclass (an enum.StrEnum member) as the standard library writes
    it, its underlying value; anything else goes to the standard library."""
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return int.__int__(value)
    raise TypeError(type(value).__name__)


def standard_json(obj) -> str:
    """The canonical form as the standard library writes it (what `audit verify` re-derives with)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def canonical_bytes(obj) -> bytes:
    """The canonical JSON, UTF-8 encoded."""
    try:
        out = orjson.dumps(obj, default=_as_standard_library, option=_ORJSON_OPTIONS)
    except TypeError:  # orjson.JSONEncodeError included
        return standard_json(obj).encode("utf-8")
    if _divergent(out):
        return standard_json(obj).encode("utf-8")
    return out


def canonical_json(obj) -> str:
    return canonical_bytes(obj).decode("utf-8")


def sha256_hex(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def content_hash(resource: dict) -> str:
    """sha256 of a FHIR resource's canonical JSON: how the decision log cites the data it used."""
    return hashlib.sha256(canonical_bytes(resource)).hexdigest()


TIMESTAMP_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"  # ISO 8601 UTC with microseconds: sortable as text


def utc_now() -> str:
    """The decision log's clock."""
    return datetime.now(UTC).strftime(TIMESTAMP_FORMAT)
