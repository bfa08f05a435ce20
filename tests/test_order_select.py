"""The order-select hook (CDS Hooks 2.0, order-select 1.0): strict context (selections name draft orders),
rules about the selected drafts only (the others are context), and its services in discovery."""

from __future__ import annotations

import copy
import uuid
from datetime import date

import pytest
from builders import _by_type, draft_bundle, searchset

from cds_service.clinical.rule_cases import PATIENT_ID, USER

REC11_SELECT = "/cds-services/opioidcds-11-order-select"
REC11_SIGN = "/cds-services/opioidcds-11-order-sign"
CAUTION = "Use Particular Caution When Prescribing Opioid Pain Medication and Benzodiazepines"

# An adult with an active community oxycodone order; two benzodiazepines are being written (each one interacts
# with the oxycodone), and the user has just selected the diazepam.
CASE = {
    "patient": {"age": 45},
    "medications": [
        {
            "id": "oxycodone-active",
            "text": "12 HR oxycodone hydrochloride 10 MG Extended Release Oral Tablet",
            "code": "rxnorm|1049502",
            "category": "community",
            "authoredDaysAgo": 15,
            "supplyDays": 30,
        }
    ],
    "draftOrders": [
        {
            "id": "diazepam-draft",
            "text": "diazepam 5 MG Oral Tablet",
            "code": "rxnorm|197591",
            "category": "community",
            "supplyDays": 30,
        },
        {
            "id": "alprazolam-draft",
            "text": "alprazolam 0.5 MG Oral Tablet",
            "code": "rxnorm|308048",
            "category": "community",
            "supplyDays": 30,
        },
    ],
}


def order_select(case: dict, selections: list[str], *, hook: str = "order-select") -> dict:
    """A request to the REC11 services (both number their items as the reference's requests do)."""
    by_type, drafts = _by_type(case, date.today())
    orders = searchset(by_type.get("MedicationRequest", []))
    context = {
        "userId": USER,
        "patientId": PATIENT_ID,
        "draftOrders": draft_bundle(drafts),
    }
    if hook == "order-select":
        context["selections"] = selections
    prefetch = {"item1": by_type["Patient"][0], "item2": None, "item3": None, "item4": orders}
    if hook == "order-select":
        prefetch["item9"] = orders
    return {"hook": hook, "hookInstance": str(uuid.uuid4()), "context": context, "prefetch": prefetch}


def _expressions(response) -> list[str]:
    body = response.get_json()
    assert body["resourceType"] == "OperationOutcome", body
    return [e for issue in body["issue"] for e in issue.get("expression") or []]


def _rule_cards(response) -> list[dict]:
    return [c for c in response.get_json()["cards"] if c["summary"].startswith(CAUTION)]


def test_discovery_lists_the_order_select_services(client):
    services = {(s["id"], s["hook"]): s for s in client.get("/cds-services").get_json()["services"]}
    rec11 = services[("opioidcds-11-order-select", "order-select")]
    rec10 = services[("opioidcds-10-order-select", "order-select")]
    rec03 = services[("opioidcds-03-patient-view", "patient-view")]
    # prefetch keys as the reference's requests number them
    assert {"item1", "item4", "item9"} <= set(rec11["prefetch"])
    assert rec11["prefetch"]["item4"].startswith("MedicationRequest?")
    assert rec11["prefetch"]["item9"].startswith("MedicationRequest?")
    assert {"item1", "item2", "item5", "item7", "item10"} == set(rec10["prefetch"])
    assert rec10["prefetch"]["item2"].startswith("Observation?")
    assert rec03["prefetch"]["item2"].startswith("MedicationRequest?")
    assert all(s["prefetch"]["item1"] == "Patient/{{context.patientId}}" for s in (rec11, rec10, rec03))


def test_selections_are_required(client):
    body = order_select(CASE, ["MedicationRequest/diazepam-draft"])
    del body["context"]["selections"]
    response = client.post(REC11_SELECT, json=body)
    assert response.status_code == 400
    assert _expressions(response) == ["context.selections"]


@pytest.mark.parametrize(
    "selections, expression",
    [
        ([], "context.selections"),  # nothing selected
        ("MedicationRequest/diazepam-draft", "context.selections"),  # not an array
        ([7], "context.selections[0]"),  # not a string
    ],
)
def test_selections_must_be_a_non_empty_array_of_strings(client, selections, expression):
    body = order_select(CASE, [])
    body["context"]["selections"] = selections
    response = client.post(REC11_SELECT, json=body)
    assert response.status_code == 400
    assert _expressions(response) == [expression]


def test_a_selection_naming_no_draft_order_is_a_400_naming_it(client):
    body = order_select(CASE, ["MedicationRequest/diazepam-draft", "MedicationRequest/oxycodone-active"])
    response = client.post(REC11_SELECT, json=body)  # the second names an active order, not a draft
    assert response.status_code == 400
    assert _expressions(response) == ["context.selections[1]"]
    assert "oxycodone-active" in response.get_json()["issue"][0]["diagnostics"]
    # a bare id is not a reference to a draft either
    body = order_select(CASE, ["diazepam-draft"])
    assert _expressions(client.post(REC11_SELECT, json=body)) == ["context.selections[0]"]


def test_draft_orders_are_required_and_a_selection_must_be_an_order(client):
    body = order_select(CASE, ["MedicationRequest/diazepam-draft"])
    del body["context"]["draftOrders"]
    response = client.post(REC11_SELECT, json=body)
    assert response.status_code == 400 and "context.draftOrders" in _expressions(response)

    body = order_select(CASE, ["Medication/med-1"])
    body["context"]["draftOrders"]["entry"].append(
        {"resource": {"resourceType": "Medication", "id": "med-1", "code": {"text": "diazepam"}}}
    )
    response = client.post(REC11_SELECT, json=body)
    assert response.status_code == 400
    assert _expressions(response) == ["context.selections[0]"]


def test_an_order_select_call_to_an_order_sign_service_is_refused(client):
    response = client.post(REC11_SIGN, json=order_select(CASE, ["MedicationRequest/diazepam-draft"]))
    assert response.status_code == 400 and _expressions(response) == ["hook"]


def test_only_the_selected_draft_is_carded(app):
    client = app.test_client()
    # control: signing both benzodiazepines, each is carded against the active oxycodone
    signed = client.post(REC11_SIGN, json=order_select(CASE, [], hook="order-sign"))
    assert signed.status_code == 200
    assert len(_rule_cards(signed)) == 2

    response = client.post(REC11_SELECT, json=order_select(CASE, ["MedicationRequest/diazepam-draft"]))
    assert response.status_code == 200
    cards = _rule_cards(response)
    assert len(cards) == 1  # the alprazolam draft interacts too, but it is not selected
    card = cards[0]
    assert "diazepam" in card["detail"] and "alprazolam" not in card["detail"]
    actions = [a for s in card["suggestions"] for a in s["actions"]]
    assert actions == [
        {
            "type": "delete",
            "description": actions[0]["description"],
            "resourceId": "MedicationRequest/diazepam-draft",
        }
    ]
    record = app.extensions["cds_runtime"].storage.decision_log.get(response.headers["X-Decision-Id"])
    assert record["hook"] == "order-select"
    assert record["selections"] == ["MedicationRequest/diazepam-draft"]
    drafts = {d["key"]: d for d in record["data"]}["context.draftOrders"]["resources"]
    assert {d["reference"] for d in drafts} == {
        "MedicationRequest/diazepam-draft",
        "MedicationRequest/alprazolam-draft",
    }


def test_the_drafts_not_selected_are_still_seen_as_other_drafts(client):
    case = copy.deepcopy(CASE)
    case["medications"] = []  # no active opioid: the selected opioid meets the benzodiazepine draft
    case["draftOrders"][1] = {
        "id": "oxycodone-draft",
        "text": "oxycodone hydrochloride 5 MG Oral Tablet",
        "code": "rxnorm|1049621",
        "category": "community",
        "supplyDays": 5,
    }
    response = client.post(REC11_SELECT, json=order_select(case, ["MedicationRequest/oxycodone-draft"]))
    assert response.status_code == 200
    cards = _rule_cards(response)
    assert len(cards) == 1
    assert "also being ordered" in cards[0]["detail"]
    assert cards[0]["suggestions"][0]["actions"][0]["resourceId"] == "MedicationRequest/oxycodone-draft"

    # selecting an order outside the rule's classes: nothing about the two other drafts
    case["draftOrders"].append(
        {"id": "amoxicillin-draft", "text": "amoxicillin 500 MG Oral Capsule", "code": "rxnorm|308191"}
    )
    response = client.post(REC11_SELECT, json=order_select(case, ["MedicationRequest/amoxicillin-draft"]))
    assert response.status_code == 200 and _rule_cards(response) == []


def test_openapi_documents_the_order_select_context(client):
    schemas = client.get("/openapi.json").get_json()["components"]["schemas"]
    assert {"selections", "draftOrders", "patientId"} <= set(schemas["OrderSelectContext"]["properties"])
    assert {"selections", "draftOrders"} <= set(schemas["OrderSelectContext"]["required"])
