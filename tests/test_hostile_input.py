"""Hostile and imperfect input (issue 9): limits answered 4xx, deviations normalised, data screened per
resource, and never a 200 that hides a check that could not run."""

from __future__ import annotations

import copy
import json

import builders
import pytest

from cds_service.json_input import MAX_DEPTH
from cds_service.protocol.schemas import MAX_DRAFT_ORDERS, MAX_PREFETCH_ENTRIES

SERVICE = "/cds-services/medication-order-check"
BLEEDING = {
    "medications": ["Warfarin Sodium 5 MG Oral Tablet"],
    "draftOrders": ["Ibuprofen 200 MG Oral Tablet"],
}


def rules_of(response) -> list[str]:
    return [c["extension"]["org.cds-service.rule"]["id"] for c in response.get_json()["cards"]]


def record_of(app, response) -> dict:
    return app.extensions["cds_runtime"].storage.decision_log.get(response.headers["X-Decision-Id"])


def outcome(response, status: int) -> dict:
    assert response.status_code == status, response.data[:400]
    body = response.get_json()
    assert body["resourceType"] == "OperationOutcome" and body["issue"]
    return body


def post_raw(client, raw: bytes):
    return client.post(SERVICE, data=raw, content_type="application/json")


# -- JSON itself ------------------------------------------------------------------------------------


def test_deep_nesting_is_400_not_a_recursion_error(client):
    for depth in (MAX_DEPTH + 5, 1_000, 100_000):
        out = outcome(post_raw(client, b"[" * depth + b"]" * depth), 400)
        assert "nested more than" in out["issue"][0]["diagnostics"]


def test_nested_within_the_limit_but_deep_inside_a_resource_is_named(client):
    body = builders.order_sign(BLEEDING)
    deep: dict = {}
    node = deep
    for _ in range(MAX_DEPTH):
        node["x"] = {}
        node = node["x"]
    body["context"]["extension"] = deep
    out = outcome(client.post(SERVICE, json=body), 400)
    assert out["issue"][0]["expression"][0].startswith("context.extension.x.x")


@pytest.mark.parametrize("literal", [b"NaN", b"Infinity", b"-Infinity", b"1e309"])
def test_non_finite_numbers_are_400(client, literal):
    raw = json.dumps(builders.order_sign(BLEEDING)).encode()
    raw = raw.replace(b'"hook"', b'"n": ' + literal + b', "hook"', 1)
    outcome(post_raw(client, raw), 400)


@pytest.mark.parametrize("where", ["hookInstance", "userId", "medication-text"])
def test_lone_surrogate_is_400_naming_the_field(client, where):
    body = builders.order_sign(BLEEDING)
    marker = "LONE-SURROGATE"
    if where == "medication-text":
        body["context"]["draftOrders"]["entry"][0]["resource"]["medicationCodeableConcept"]["text"] = marker
    elif where == "userId":
        body["context"]["userId"] = marker
    else:
        body[where] = marker
    raw = json.dumps(body).replace(marker, "\\ud800").encode()
    out = outcome(post_raw(client, raw), 400)
    assert "surrogate" in out["issue"][0]["diagnostics"]


def test_a_valid_surrogate_pair_is_text(client):
    body = builders.order_sign(BLEEDING)
    body["context"]["draftOrders"]["entry"][0]["resource"]["note"] = [{"text": "\U0001f600"}]
    response = post_raw(client, json.dumps(body, ensure_ascii=True).encode())
    assert response.status_code == 200 and "ddi-warfarin-nsaid" in rules_of(response)


def test_echoed_values_are_clipped(client):
    body = builders.order_sign(BLEEDING)
    body["hook"] = "x" * 1_000_000
    response = client.post(SERVICE, json=body)
    outcome(response, 400)
    assert len(response.data) < 2_000


# -- limits -------------------------------------------------------------------------------------


def test_too_many_draft_orders_is_400(client):
    body = builders.order_sign({"draftOrders": ["Ibuprofen 200 MG Oral Tablet"] * (MAX_DRAFT_ORDERS + 1)})
    out = outcome(client.post(SERVICE, json=body), 400)
    assert out["issue"][0]["expression"] == ["context.draftOrders.entry"]


def test_a_hundred_thousand_empty_drafts_get_a_small_answer_and_record(app):
    body = builders.order_sign(BLEEDING)
    body["context"]["draftOrders"]["entry"] = [{}] * 100_000
    response = app.test_client().post(SERVICE, json=body)
    outcome(response, 400)
    assert len(response.data) < 5_000
    record = record_of(app, response)  # refusals are recorded too: bounded like the answer
    assert record["response"]["status"] == 400 and len(json.dumps(record)) < 20_000


def test_too_many_prefetch_entries_is_400(client):
    body = builders.order_sign(BLEEDING)
    body["prefetch"]["labs"]["entry"] = [{"resource": {"resourceType": "Basic"}}] * (MAX_PREFETCH_ENTRIES + 1)
    out = outcome(client.post(SERVICE, json=body), 400)
    assert out["issue"][0]["expression"] == ["prefetch.labs.entry"]


def test_an_outcome_lists_at_most_fifty_issues_and_says_how_many_more(client):
    body = builders.order_sign({"draftOrders": ["Ibuprofen 200 MG Oral Tablet"] * 80})
    for entry in body["context"]["draftOrders"]["entry"]:
        entry["resource"]["status"] = ["active"]
    out = outcome(client.post(SERVICE, json=body), 400)
    assert len(out["issue"]) == 51 and "30 more" in out["issue"][-1]["diagnostics"]


# -- the request (draft orders): strict, every problem named, unambiguous deviations normalised ----------


@pytest.mark.parametrize(
    "resource",
    [
        {"resourceType": "Foo"},
        {"resourceType": "DomainResource"},
        {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": {"resourceType": "Foo"}}]},
        {"resourceType": "Patient", "id": "p1"},
    ],
)
def test_a_draft_that_is_not_an_order_is_400_naming_its_type(client, resource):
    body = builders.order_sign(BLEEDING)
    body["context"]["draftOrders"]["entry"].append({"resource": resource})
    out = outcome(client.post(SERVICE, json=body), 400)
    assert out["issue"][0]["expression"] == ["context.draftOrders.entry[1].resource.resourceType"]


@pytest.mark.parametrize(
    "element,value",
    [("status", ["active"]), ("status", {}), ("intent", 3), ("medicationCodeableConcept", {"coding": 1})],
)
def test_malformed_draft_elements_are_400_naming_them(client, element, value):
    body = builders.order_sign(BLEEDING)
    body["context"]["draftOrders"]["entry"][0]["resource"][element] = value
    out = outcome(client.post(SERVICE, json=body), 400)
    named = {e for i in out["issue"] for e in i.get("expression", [])}
    assert any(e.startswith(f"context.draftOrders.entry[0].resource.{element}") for e in named), named


def test_a_400_names_every_missing_element(client):
    body = builders.order_sign(BLEEDING)
    draft = body["context"]["draftOrders"]["entry"][0]["resource"]
    del draft["intent"], draft["medicationCodeableConcept"]
    out = outcome(client.post(SERVICE, json=body), 400)
    named = {e for i in out["issue"] for e in i.get("expression", [])}
    where = "context.draftOrders.entry[0].resource"
    assert {f"{where}.intent", f"{where}.medication[x]"} <= named


def test_category_sent_as_one_object_is_read_as_a_list_and_recorded(app):
    """The CDS Hooks Sandbox sends MedicationRequest.category as one object: the check still runs."""
    body = builders.order_sign(BLEEDING)
    draft = body["context"]["draftOrders"]["entry"][0]["resource"]
    draft["category"] = {"coding": [{"code": "outpatient"}]}
    response = app.test_client().post(SERVICE, json=body)
    assert response.status_code == 200 and "ddi-warfarin-nsaid" in rules_of(response)
    issues = record_of(app, response)["dataQuality"]["issues"]
    assert issues == [
        {
            "location": "context.draftOrders.entry[0].resource",
            "action": "normalised",
            "problem": "a single object where FHIR R4 wants a list: read as a one-item list",
            "reference": f"MedicationRequest/{draft['id']}",
            "fields": ["context.draftOrders.entry[0].resource.category"],
        }
    ]


def test_draft_subject_path_tricks_are_400(client):
    body = builders.order_sign(BLEEDING)
    body["context"]["draftOrders"]["entry"][0]["resource"]["subject"]["reference"] = "Patient/p/../other"
    outcome(client.post(SERVICE, json=body), 400)


# -- the data (prefetch): lenient per resource, never a silent loss --------------------------------------


@pytest.mark.parametrize("entry", [1, True, "x", 0, None])
def test_a_medications_bundle_without_readable_entries_is_said(app, entry):
    body = builders.order_sign(BLEEDING)
    body["prefetch"]["medications"]["entry"] = entry
    response = app.test_client().post(SERVICE, json=body)
    assert response.status_code == 200, response.data[:300]
    if entry is None:  # JSON null: no entries, nothing lost
        return
    rules = rules_of(response)
    assert "data-quality" in rules, "warfarin could not be read: the clinician must be told"
    record = record_of(app, response)
    assert record["dataQuality"]["issues"][0]["location"] == "prefetch.medications.entry"


def test_one_entry_object_instead_of_a_list_still_gives_the_card(app):
    body = builders.order_sign(BLEEDING)
    body["prefetch"]["medications"]["entry"] = body["prefetch"]["medications"]["entry"][0]
    response = app.test_client().post(SERVICE, json=body)
    assert response.status_code == 200 and "ddi-warfarin-nsaid" in rules_of(response)
    assert "data-quality" not in rules_of(response)  # nothing was lost


def test_junk_entries_are_set_aside_and_the_rest_checked(app):
    body = builders.order_sign(BLEEDING)
    body["prefetch"]["medications"]["entry"] += [1, "x", {"resource": 2}, {"resource": {"resourceType": 7}}]
    response = app.test_client().post(SERVICE, json=body)
    rules = rules_of(response)
    assert "ddi-warfarin-nsaid" in rules and "data-quality" in rules
    locations = [i["location"] for i in record_of(app, response)["dataQuality"]["issues"]]
    assert locations == [
        "prefetch.medications.entry[1]",
        "prefetch.medications.entry[2]",
        "prefetch.medications.entry[3]",
        "prefetch.medications.entry[4].resource",
    ]


@pytest.mark.parametrize("gender", [{}, ["female"], 7])
def test_an_unreadable_patient_is_set_aside_and_said(app, gender):
    body = builders.order_sign(BLEEDING)
    body["prefetch"]["patient"]["gender"] = gender
    response = app.test_client().post(SERVICE, json=body)
    assert response.status_code == 200
    assert "ddi-warfarin-nsaid" in rules_of(response)  # reads no Patient data: still fires
    (issue,) = record_of(app, response)["dataQuality"]["issues"]
    assert issue["action"] == "set-aside" and issue["fields"] == ["prefetch.patient.gender"]


def test_a_problem_in_an_element_no_rule_reads_keeps_the_resource(app):
    body = builders.order_sign(BLEEDING)
    warfarin = body["prefetch"]["medications"]["entry"][0]["resource"]
    warfarin["note"] = [{"text": 5}]  # Annotation.text must be a string; rules never read notes
    warfarin["meta"] = {"lastUpdated": "2026-11-01"}  # date-only where R4 wants an instant
    response = app.test_client().post(SERVICE, json=body)
    assert "ddi-warfarin-nsaid" in rules_of(response) and "data-quality" not in rules_of(response)
    (issue,) = record_of(app, response)["dataQuality"]["issues"]
    assert (
        issue["action"] == "used" and "prefetch.medications.entry[0].resource.note[0].text" in issue["fields"]
    )


def test_huge_decimals_are_no_number_not_a_500(app):
    """FHIR decimals have no bound: 400-digit dose, period and supply pass validation, overflow a float
    and are read as absent; the interaction check still runs on the drug."""
    body = builders.order_sign(BLEEDING)
    draft = body["context"]["draftOrders"]["entry"][0]["resource"]
    draft["dosageInstruction"] = [
        {
            "timing": {"repeat": {"frequency": 2, "period": 10**400, "periodUnit": "d"}},
            "doseAndRate": [{"doseQuantity": {"value": 10**400, "unit": "mg"}}],
        }
    ]
    draft["dispenseRequest"] = {"expectedSupplyDuration": {"value": 10**400, "unit": "days", "code": "d"}}
    response = app.test_client().post(SERVICE, json=body)
    assert response.status_code == 200, response.data[:300]
    assert "ddi-warfarin-nsaid" in rules_of(response)


def test_a_huge_integer_where_r4_bounds_it_is_400_naming_it(client):
    body = builders.order_sign(BLEEDING)
    draft = body["context"]["draftOrders"]["entry"][0]["resource"]
    draft["dosageInstruction"] = [
        {"timing": {"repeat": {"frequency": 10**400, "period": 1, "periodUnit": "d"}}}
    ]
    out = outcome(client.post(SERVICE, json=body), 400)
    assert out["issue"][0]["expression"] == [
        "context.draftOrders.entry[0].resource.dosageInstruction[0].timing.repeat.frequency"
    ]


def test_unrelated_junk_never_makes_a_5xx(client):
    """A sweep of odd values at every top-level element of a prefetched resource and of a draft."""
    base = builders.order_sign(BLEEDING)
    # (an object of unknown elements only, e.g. {"a": 1} as the medication, is tolerated and names no drug:
    # unidentified medications are recorded and said under issue 12)
    odd = [None, 0, -1, 1.5, True, "", "x", [], {}, [None], [{}], [1], 10**400]
    for target in ("prefetch", "draft"):
        for element in (
            "status",
            "intent",
            "subject",
            "medicationCodeableConcept",
            "dosageInstruction",
            "dispenseRequest",
            "authoredOn",
            "category",
            "meta",
            "contained",
            "id",
        ):
            for value in odd:
                body = copy.deepcopy(base)
                resource = (
                    body["prefetch"]["medications"]["entry"][0]["resource"]
                    if target == "prefetch"
                    else body["context"]["draftOrders"]["entry"][0]["resource"]
                )
                resource[element] = value
                response = client.post(SERVICE, json=body)
                assert response.status_code < 500, (target, element, value, response.data[:300])
                if target == "prefetch" and response.status_code == 200:
                    rules = rules_of(response)
                    assert "ddi-warfarin-nsaid" in rules or "data-quality" in rules, (element, value)


def test_a_cached_verdict_names_each_place_the_resource_sits():
    """Verdicts are cached by content, not by location: the same imperfect resource, met again elsewhere,
    is named where it is now, normalised again, and judged the same."""
    from cds_service.ehr.validation import ResourceValidator

    validator = ResourceValidator()
    encounter = {"resourceType": "Encounter", "status": "finished", "type": {"text": "visit"}}
    first = validator.examine(encounter, "prefetch.a.entry[0].resource")
    second = validator.examine(encounter, "prefetch.b")
    assert [i.expression for i in first.issues] == [("prefetch.a.entry[0].resource.class",)]
    assert [i.expression for i in second.issues] == [("prefetch.b.class",)]
    assert second.issues[0].diagnostics.startswith("prefetch.b.class:")
    assert second.normalised == ["prefetch.b.type"] and second.resource["type"] == [{"text": "visit"}]
    assert encounter["type"] == {"text": "visit"}  # the sender's resource is left as it came
