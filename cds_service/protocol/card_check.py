"""A fast first look at an outgoing card: True only for a card `CardSchema` accepts.

Every card is checked against `CardSchema` (schemas.py) on its way out; marshmallow takes ~0.5 ms for a
card with suggestions, the largest single cost of a hook call after the rules. This check walks the
same rules in plain Python (~20 x faster) and is sound one way only: when it says True the schema
would have accepted the card; when it says False, or meets anything it does not know, `CardSchema`
decides and writes the message. So it may be stricter than the schema, never laxer: it takes only
`str` where marshmallow also takes bytes, and only `bool` where marshmallow also takes "yes" or 1.
The URL checks are the schema's own validators. tests/test_cards.py holds the two to agreement on
every card the rule cases issue and on mutations of them.
"""

from __future__ import annotations

from typing import Any

import orjson

from ..indicators import INDICATORS
from .schemas import LinkSchema, SourceSchema, parse_uuid

_CARD_KEYS = frozenset(
    {
        "uuid",
        "summary",
        "detail",
        "indicator",
        "source",
        "suggestions",
        "selectionBehavior",
        "overrideReasons",
        "links",
        "extension",
    }
)
_SOURCE_KEYS = frozenset({"label", "url", "icon", "topic"})
_CODING_KEYS = frozenset({"system", "code", "display"})
_SUGGESTION_KEYS = frozenset({"label", "uuid", "isRecommended", "actions", "actionSelectionBehavior"})
_ACTION_KEYS = frozenset({"type", "description", "resource", "resourceId"})
_LINK_KEYS = frozenset({"label", "url", "type", "appContext", "autolaunchable"})
_INDICATORS = frozenset(INDICATORS)
_SOURCE_URL = tuple(SourceSchema().fields["url"].validators)
_SOURCE_ICON = tuple(SourceSchema().fields["icon"].validators)
_LINK_URL = tuple(LinkSchema().fields["url"].validators)


class _Unsure(Exception):
    """Not shown to be valid: the schema decides."""


def _require(condition: bool) -> None:
    if not condition:
        raise _Unsure


def _text(value: Any, *, min_length: int = 0, max_length: int | None = None) -> None:
    _require(type(value) is str and len(value) >= min_length)
    _require(max_length is None or len(value) <= max_length)


def _url(value: Any, validators: tuple) -> None:
    _text(value)
    for validator in validators:
        try:
            validator(value)
        except Exception as exc:
            raise _Unsure from exc


def _uuid(value: Any) -> None:
    _text(value)
    try:
        parse_uuid(value)
    except ValueError as exc:
        raise _Unsure from exc


def _object(value: Any, keys: frozenset) -> dict:
    _require(type(value) is dict and value.keys() <= keys)
    return value


def _list(value: Any) -> list:
    _require(type(value) is list)
    return value


def _json_object(value: Any) -> None:  # schemas.JsonObject: a dict with string keys
    _require(type(value) is dict and all(type(k) is str for k in value))


def _coding(value: Any, *, display_required: bool = False) -> None:
    coding = _object(value, _CODING_KEYS)
    _text(coding.get("code"))
    for key in ("system", "display"):
        if key in coding:
            _text(coding[key])
    _require(not display_required or "display" in coding)


def _action(value: Any) -> None:
    action = _object(value, _ACTION_KEYS)
    _require(action.get("type") in ("create", "update", "delete"))
    _text(action.get("description"), min_length=1)
    if "resource" in action:
        _json_object(action["resource"])
    if "resourceId" in action:
        _text(action["resourceId"])
    if action["type"] == "delete":
        _require(bool(action.get("resourceId")) and not action.get("resource"))
    else:
        _require(bool(action.get("resource")))


def _suggestion(value: Any) -> None:
    suggestion = _object(value, _SUGGESTION_KEYS)
    _text(suggestion.get("label"), min_length=1)
    _uuid(suggestion.get("uuid"))
    if "isRecommended" in suggestion:
        _require(type(suggestion["isRecommended"]) is bool)
    for action in _list(suggestion.get("actions", [])):
        _action(action)
    if "actionSelectionBehavior" in suggestion:
        _require(suggestion["actionSelectionBehavior"] in ("all", "any", "at-most-one"))


def _link(value: Any) -> None:
    link = _object(value, _LINK_KEYS)
    _text(link.get("label"), min_length=1)
    _url(link.get("url"), _LINK_URL)
    _require(link.get("type") in ("absolute", "smart"))
    if "appContext" in link:
        _text(link["appContext"])
        _require(not link["appContext"] or link["type"] == "smart")
    if "autolaunchable" in link:
        _require(type(link["autolaunchable"]) is bool)


# In compact JSON, an empty string, array or object or a null value is one of these tokens (inside a
# string only as escaped or unlikely text, which costs the schema's slower look, never a wrong answer).
_EMPTY_TOKENS = (b'""', b"[]", b"{}", b":null", b"[null", b",null")


def _no_empty_values(value: Any) -> None:
    """The spec's JSON rules: no nulls, empty strings, empty arrays or empty objects."""
    try:
        text = orjson.dumps(value)
    except TypeError as exc:  # not JSON data: the schema decides
        raise _Unsure from exc
    _require(not any(token in text for token in _EMPTY_TOKENS))


def _card(card: Any) -> None:
    _object(card, _CARD_KEYS)
    _uuid(card.get("uuid"))
    _text(card.get("summary"), min_length=1, max_length=139)
    if "detail" in card:
        _text(card["detail"])
    _require(type(card.get("indicator")) is str and card["indicator"] in _INDICATORS)
    source = _object(card.get("source"), _SOURCE_KEYS)
    _text(source.get("label"), min_length=1)
    if "url" in source:
        _url(source["url"], _SOURCE_URL)
    if "icon" in source:
        _url(source["icon"], _SOURCE_ICON)
    if "topic" in source:
        _coding(source["topic"])
    suggestions = _list(card.get("suggestions", []))
    for suggestion in suggestions:
        _suggestion(suggestion)
    behaviour = card.get("selectionBehavior")
    _require(behaviour in (None, "at-most-one", "any") and (behaviour is not None or not suggestions))
    if behaviour == "at-most-one":
        _require(sum(1 for s in suggestions if s.get("isRecommended")) <= 1)
    for reason in _list(card.get("overrideReasons", [])):
        _coding(reason, display_required=True)
    for link in _list(card.get("links", [])):
        _link(link)
    if "extension" in card:
        _json_object(card["extension"])
    _no_empty_values(card)


def surely_valid(card: Any) -> bool:
    """True only when `CardSchema` accepts the card (see the module's docstring)."""
    try:
        _card(card)
    except _Unsure:
        return False
    return True
