"""Cards are validated on the way out (CDS Hooks card rules and invariants cds-resp-1..7)."""

from __future__ import annotations

import copy
import uuid

import pytest

from cds_service.protocol.cards import validate_card

GOOD = {
    "uuid": str(uuid.uuid4()),
    "summary": "Warfarin with ibuprofen: bleeding risk",
    "indicator": "critical",
    "source": {"label": "FDA label", "url": "https://example.org/label"},
    "suggestions": [
        {
            "label": "Remove ibuprofen",
            "uuid": str(uuid.uuid4()),
            "isRecommended": True,
            "actions": [
                {
                    "type": "delete",
                    "description": "Remove the draft order",
                    "resourceId": "MedicationRequest/1",
                }
            ],
        }
    ],
    "selectionBehavior": "at-most-one",
    "overrideReasons": [
        {
            "system": "http://terminology.hl7.org/CodeSystem/non-adherence-reason-codes",
            "code": "risk-benefit-ratio",
            "display": "Recipient assessment of risk/benefit ratio",
        }
    ],
    "links": [{"label": "Guideline", "url": "https://example.org/g", "type": "absolute"}],
}


def test_good_card_passes():
    assert validate_card(GOOD) is None


@pytest.mark.parametrize(
    "mutate",
    [
        lambda c: c.__setitem__("summary", "x" * 140),
        lambda c: c.__setitem__("indicator", "hard-stop"),
        lambda c: c.pop("source"),
        lambda c: c["source"].pop("label"),
        lambda c: c.pop("uuid"),
        lambda c: c["suggestions"][0].pop("uuid"),
        lambda c: c.pop("selectionBehavior"),
        lambda c: c["overrideReasons"][0].pop("display"),
        lambda c: c["links"][0].__setitem__("type", "relative"),
        lambda c: c["links"][0].__setitem__("appContext", "x"),
        lambda c: c.__setitem__("detail", ""),
        lambda c: c.__setitem__("detail", None),
        lambda c: c.__setitem__("links", []),
        lambda c: c["suggestions"][0]["actions"][0].pop("description"),
        lambda c: c["suggestions"][0]["actions"][0].__setitem__("type", "create"),
        lambda c: c["suggestions"].append({**copy.deepcopy(c["suggestions"][0]), "uuid": str(uuid.uuid4())}),
    ],
)
def test_invalid_cards_are_caught(mutate):
    card = copy.deepcopy(GOOD)
    mutate(card)
    assert validate_card(card) is not None


def test_cards_from_the_service_are_valid(client):
    import builders

    body = builders.order_sign(
        {
            "medications": ["Acetaminophen 325 MG Oral Tablet"],
            "draftOrders": ["Acetaminophen 500 MG Oral Tablet"],
        }
    )
    cards = client.post("/cds-services/medication-order-check", json=body).get_json()["cards"]
    assert len(cards) == 1
    assert all(validate_card(c) is None for c in cards)
    assert (
        cards[0]["suggestions"][0]["actions"][0]["resourceId"]
        == f"MedicationRequest/{body['context']['draftOrders']['entry'][0]['resource']['id']}"
    )


def test_source_label_keeps_the_whole_reference_title(client, content):
    # CDS Hooks limits only the summary (< 140 characters); source.label carries the whole title.
    import builders

    body = builders.order_sign(
        {"medications": ["Warfarin Sodium 5 MG Oral Tablet"], "draftOrders": ["Ibuprofen 400 MG Oral Tablet"]}
    )
    cards = client.post("/cds-services/medication-order-check", json=body).get_json()["cards"]
    card = next(c for c in cards if c["extension"]["org.cds-service.rule"]["id"] == "ddi-warfarin-nsaid")
    title = next(r for r in content.rulebook.rules if r.id == "ddi-warfarin-nsaid").references[0].title
    assert len(title) > 139 and card["source"]["label"] == title
    assert validate_card(card) is None


# -- the fast check (card_check.py) against the schema ------------------------------------------------


@pytest.fixture(scope="module")
def issued_cards():
    """Every card the bundled rules' fire cases issue."""
    from shared import bundled_content

    from cds_service.clinical import rule_cases

    content = bundled_content()
    cards: list[dict] = []
    real = rule_cases.cards_for

    def keep(findings, facts):
        issued, rejected = real(findings, facts)
        cards.extend(i.card for i in issued)
        return issued, rejected

    rule_cases.cards_for = keep
    try:
        rule_cases.run_rule_cases(content.rulebook, content.facts_builder, content.terminology)
    finally:
        rule_cases.cards_for = real
    return cards


def test_every_card_the_rules_issue_passes_the_fast_check(issued_cards):
    from cds_service.protocol.card_check import surely_valid
    from cds_service.protocol.schemas import CardSchema

    assert len(issued_cards) > 40
    assert any(c.get("suggestions") for c in issued_cards) and any(c.get("links") for c in issued_cards)
    assert [c["summary"] for c in issued_cards if not surely_valid(c)] == []
    assert [c["summary"] for c in issued_cards if CardSchema().validate(c)] == []


_ODD_VALUES = [None, "", [], {}, 0, 1, True, "yes", "not a url", "x" * 200, b"bytes", ("tuple",), 1.5]


def _mutations(card: dict):
    """The card with one thing changed: each element removed, given an odd value, or joined by an
    unknown sibling; each list emptied or given an odd item."""

    def walk(node, path):
        if isinstance(node, dict):
            yield path, node
            for key, child in node.items():
                yield from walk(child, (*path, key))
        elif isinstance(node, list):
            yield path, node
            for i, child in enumerate(node):
                yield from walk(child, (*path, i))

    def at(root, path):
        for step in path:
            root = root[step]
        return root

    for path, node in list(walk(card, ())):
        if isinstance(node, dict):
            for key in node:
                for change in ["drop", *_ODD_VALUES]:
                    mutated = copy.deepcopy(card)
                    target = at(mutated, path)
                    if change == "drop":
                        del target[key]
                    else:
                        target[key] = change
                    yield mutated
            mutated = copy.deepcopy(card)
            at(mutated, path)["unknownElement"] = "x"
            yield mutated
        else:
            for change in ("empty", *_ODD_VALUES):
                mutated = copy.deepcopy(card)
                target = at(mutated, path)
                if change == "empty":
                    target.clear()
                else:
                    target.append(change)
                yield mutated


def test_the_fast_check_never_accepts_a_card_the_schema_refuses(issued_cards):
    from cds_service.protocol.card_check import surely_valid
    from cds_service.protocol.schemas import CardSchema

    schema = CardSchema()
    samples = [GOOD] + [c for c in issued_cards if c.get("suggestions") or c.get("links")][:6]
    refused = accepted_by_both = 0
    for card in samples:
        for mutated in _mutations(card):
            if schema.validate(mutated):
                refused += 1
                assert not surely_valid(mutated), mutated
            elif surely_valid(mutated):
                accepted_by_both += 1
    assert refused > 1000 and accepted_by_both > 10  # the mutations reach both answers
