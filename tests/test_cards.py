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
