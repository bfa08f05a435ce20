"""JSON from outside (a client's request body, a FHIR server's answer), read within limits.

RFC 8259 JSON only: ``NaN``/``Infinity`` (which Python's parser accepts) and numbers that overflow a
float are refused, since they cannot be stored (PostgreSQL JSON) or compared. Nesting is bounded
well below Python's recursion limit, so nothing downstream (validation, hashing, canonical JSON)
can recurse out of stack; FHIR resources nest about 10 deep, a request carrying a Bundle about 20.
A string holding a lone UTF-16 surrogate (``"\\ud800"``) is valid JSON text but not Unicode: it is
refused here rather than failing later when the record is hashed. Bytes must be UTF-8 (RFC 8259 §8.1;
a BOM is ignored): Python's parser would otherwise guess UTF-16/32 and let surrogates through.

orjson parses first (a 60 kB hook request in a third of the standard library's time): it takes only
RFC 8259 JSON in UTF-8 and refuses lone surrogates, NaN and numbers that overflow a float, so what it
accepts needs only the depth check. Whatever it refuses goes to the standard library path below, which
accepts or refuses it as before and names the problem. So does text with a number of 2**63 or more:
orjson reads an integer beyond 64 bits as a float, the standard library exactly.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

import orjson

from .errors import InvalidRequest, clip, field_path

MAX_DEPTH = 64  # nesting of objects and arrays
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")  # in UTF-8 text only escapes carry a surrogate
# orjson reads an integer beyond 64 bits as a float: any float this large sends the text to the standard
# library, which reads integers exactly (a true float this large only costs the slower path)
_BEYOND_INT64 = float(2**63)


class JsonInputError(InvalidRequest):
    """Not JSON this service can take; `expression` names where, when known."""


def _constant(name: str):
    raise ValueError(f"{name} is not a JSON number (RFC 8259)")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"the number {clip(text, 40)} is out of range")
    return value


def parse_json(raw: bytes | str, *, where: str = "body") -> Any:
    """Parse and check; raises JsonInputError (400) naming the problem and, when known, the field."""
    try:
        value = orjson.loads(raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else raw)
    except orjson.JSONDecodeError:
        pass  # the standard library says what is wrong, as it always has
    else:
        verdict = _screen_parsed(value)
        if verdict is _READ:
            return value
        if verdict is _TOO_DEEP:
            _locate_problem(value, where, strings=False)
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise JsonInputError(
                f"{where} is not UTF-8 text (byte {exc.start}): JSON between systems is UTF-8",
                expression=where,
            ) from None
    try:
        value = json.loads(raw, parse_constant=_constant, parse_float=_finite_float)
    except RecursionError:
        raise JsonInputError(f"{where}: JSON nested more than {MAX_DEPTH} levels", expression=where) from None
    except ValueError as exc:  # JSONDecodeError, bad constants, int digits beyond Python's limit
        raise JsonInputError(f"{where} is not valid JSON: {clip(str(exc), 200)}", expression=where) from exc
    check_structure(value, where, strings=bool(_SURROGATE_ESCAPE.search(raw)))
    return value


def check_structure(value: Any, where: str = "body", *, strings: bool = True) -> None:
    """Depth limit and (when `strings`) lone surrogates, walked without recursion. The walk that keeps
    each node's path (to name the field) runs only once a problem is known to be there: on a 60 kB
    request it cost ~1 ms, the walk without paths a fraction of that."""
    if _acceptable(value, strings):
        return
    _locate_problem(value, where, strings)


def _acceptable(value: Any, strings: bool) -> bool:
    if not isinstance(value, (dict, list)):
        return not (strings and isinstance(value, str) and not _is_unicode(value))
    stack: list[tuple[Any, int]] = [(value, 0)]
    pop, push = stack.pop, stack.append
    while stack:
        node, depth = pop()
        if depth >= MAX_DEPTH:
            return False
        children = node.values() if isinstance(node, dict) else node
        if strings and isinstance(node, dict) and not all(_is_unicode(key) for key in node):
            return False
        for child in children:
            if isinstance(child, (dict, list)):
                push((child, depth + 1))
            elif strings and isinstance(child, str) and not _is_unicode(child):
                return False
    return True


_READ, _TOO_DEEP, _LARGE_NUMBER = "read", "too deep", "large number"


def _screen_parsed(value: Any) -> str:
    """What orjson returned (exact dicts and lists), in one walk: the depth limit, and a float of 2**63
    or more that may have been an integer. Recursive, which is safe here (at most MAX_DEPTH frames) and
    2.5 x faster than an explicit stack: this walk runs on every hook request."""
    try:
        if type(value) is dict or type(value) is list:
            _walk(value, 0)
        elif type(value) is float and not -_BEYOND_INT64 < value < _BEYOND_INT64:
            return _LARGE_NUMBER
    except _Found as found:
        return found.verdict
    return _READ


class _Found(Exception):
    def __init__(self, verdict: str):
        self.verdict = verdict


def _walk(node: dict | list, depth: int) -> None:
    if depth >= MAX_DEPTH:
        raise _Found(_TOO_DEEP)
    for child in node.values() if type(node) is dict else node:
        kind = type(child)
        if kind is str:  # most leaves
            continue
        if kind is dict or kind is list:
            _walk(child, depth + 1)
        elif kind is float and not -_BEYOND_INT64 < child < _BEYOND_INT64:
            raise _Found(_LARGE_NUMBER)


def _locate_problem(value: Any, where: str, strings: bool) -> None:
    stack: list[tuple[Any, tuple, int]] = [(value, (), 0)]
    while stack:
        node, path, depth = stack.pop()
        if isinstance(node, dict):
            if depth >= MAX_DEPTH:
                _too_deep(where, path)
            for key, child in node.items():
                if strings and not _is_unicode(key):
                    _bad_string(where, path)
                if isinstance(child, (dict, list)) or (strings and isinstance(child, str)):
                    stack.append((child, (*path, key), depth + 1))
        elif isinstance(node, list):
            if depth >= MAX_DEPTH:
                _too_deep(where, path)
            for i, child in enumerate(node):
                if isinstance(child, (dict, list)) or (strings and isinstance(child, str)):
                    stack.append((child, (*path, i), depth + 1))
        elif isinstance(node, str) and not _is_unicode(node):
            _bad_string(where, path)


def _is_unicode(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _location(where: str, path: tuple) -> str:
    inner = field_path(p if isinstance(p, int) else clip(p, 40) for p in path)
    return f"{where}.{inner}" if inner and where != "body" else (inner or where)


def _too_deep(where: str, path: tuple) -> None:
    location = _location(where, path[:8])
    raise JsonInputError(f"{location}: JSON nested more than {MAX_DEPTH} levels", expression=location)


def _bad_string(where: str, path: tuple) -> None:
    location = _location(where, path)
    raise JsonInputError(
        f"{location}: a string holds a lone UTF-16 surrogate (not Unicode text)", expression=location
    )
