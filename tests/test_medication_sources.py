"""What the patient takes, from every FHIR resource that says so: orders, statements, fills and
administrations (each with its source and what "current" means for it), medications named by reference
(contained, in the Bundle, read from the FHIR server, or said to be unidentified), the route, the eGFR
chosen whatever the Bundle order, and the medication review when the chart opens."""

from __future__ import annotations

import copy
from datetime import UTC, date, datetime, timedelta

import builders
import pytest
from fhir_fake import Reply, searchset
from shared import bundled_content

from cds_service.clinical.renal import latest_egfr
from cds_service.clinical.rule_cases import PATIENT_ID, CaseBuilder

TODAY = date(2026, 6, 15)
AUTH = {
    "access_token": "tok-med-refs-never-logged",
    "token_type": "Bearer",
    "expires_in": 300,
    "scope": "user/*.read",
    "subject": "cds",
}


@pytest.fixture(scope="module")
def facts_of():
    builder = bundled_content().facts_builder

    def build(case: dict, *, resources=(), hook: str = "order-sign", today: date = TODAY):
        made, drafts = CaseBuilder(today).build(case)
        return builder.build(
            made + list(resources), patient_id=PATIENT_ID, draft_orders=drafts, today=today, hook=hook
        )

    return build


def _med(facts, text: str):
    return next(m for m in facts.medications if text.lower() in m.name.lower())


# -- sources and what "current" means per resource -------------------------------------------------


def test_each_resource_has_its_source_and_its_own_currency(facts_of):
    facts = facts_of(
        {
            "medications": [
                "Warfarin Sodium 5 MG Oral Tablet",
                {"resourceType": "MedicationStatement", "text": "Naproxen 500 MG Oral Tablet"},
                {
                    "resourceType": "MedicationStatement",
                    "text": "Ibuprofen 400 MG Oral Tablet",
                    "status": "stopped",
                },
                {
                    "resourceType": "MedicationDispense",
                    "text": "Lisinopril 10 MG Oral Tablet",
                    "authoredDaysAgo": 20,
                },
                {
                    "resourceType": "MedicationDispense",
                    "text": "Simvastatin 40 MG Oral Tablet",
                    "authoredDaysAgo": 45,
                    "supplyDays": 30,
                },
                {
                    "resourceType": "MedicationAdministration",
                    "text": "Ondansetron 4 MG Oral Tablet",
                    "authoredDaysAgo": 0.2,
                },
                {
                    "resourceType": "MedicationAdministration",
                    "text": "Metformin hydrochloride 500 MG Oral Tablet",
                    "authoredDaysAgo": 3,
                },
            ]
        }
    )
    sources = {m.name.split()[0].lower(): (m.source, m.is_active) for m in facts.medications}
    assert sources == {
        "warfarin": ("prescribed", True),
        "naproxen": ("reported", True),  # an active statement
        "ibuprofen": ("reported", False),  # stopped
        "lisinopril": ("dispensed", True),  # 30 days from 20 days ago: covers today
        "simvastatin": ("dispensed", False),  # 30 days from 45 days ago: ran out
        "ondansetron": ("administered", True),  # given this morning
        "metformin": ("administered", False),  # given 3 days ago
    }


def test_a_statement_whose_period_ended_is_not_current(facts_of):
    made, _ = CaseBuilder(TODAY).build(
        {"medications": [{"resourceType": "MedicationStatement", "text": "Naproxen 500 MG Oral Tablet"}]}
    )
    statement = made[1]
    statement["effectivePeriod"]["end"] = (datetime(2026, 6, 1, tzinfo=UTC)).isoformat()
    facts = facts_of({}, resources=[statement])
    assert [(m.source, m.is_active) for m in facts.medications] == [("reported", False)]


def test_a_dispense_without_days_supply_lasts_its_units_over_doses_a_day(facts_of):
    made, _ = CaseBuilder(TODAY).build(
        {
            "medications": [
                {
                    "resourceType": "MedicationDispense",
                    "text": "Naproxen 500 MG Oral Tablet",
                    "authoredDaysAgo": 20,
                }
            ]
        }
    )
    dispense = made[1]
    del dispense["daysSupply"]
    short, long_ = copy.deepcopy(dispense), copy.deepcopy(dispense)
    for r, units in ((short, 20), (long_, 60)):  # 2 a day: 10 days, 30 days
        r["id"] = f"fill-{units}"
        r["quantity"] = {"value": units, "unit": "tablet"}
        r["dosageInstruction"] = [{"timing": {"repeat": {"frequency": 2, "period": 1, "periodUnit": "d"}}}]
    facts = facts_of({}, resources=[short, long_])
    assert {m.id: m.is_active for m in facts.medications} == {"fill-20": False, "fill-60": True}


def test_a_fill_of_an_active_order_is_not_a_second_medication(facts_of):
    made, _ = CaseBuilder(TODAY).build({"medications": ["Warfarin Sodium 5 MG Oral Tablet"]})
    order = made[1]
    linked, _ = CaseBuilder(TODAY, id_prefix="x").build(
        {
            "medications": [
                {
                    "resourceType": "MedicationDispense",
                    "text": "Warfarin Sodium 5 MG Oral Tablet",
                    "authoredDaysAgo": 5,
                },
                {"resourceType": "MedicationStatement", "text": "Warfarin Sodium 2 MG Oral Tablet"},
            ]
        }
    )
    dispense, statement = linked[1], linked[2]
    dispense["authorizingPrescription"] = [{"reference": f"MedicationRequest/{order['id']}"}]
    facts = facts_of({}, resources=[order, dispense, statement])
    assert [m.ref for m in facts.active_medications] == [f"MedicationRequest/{order['id']}"]
    assert {m.resource_type: m.same_as for m in facts.medications} == {
        "MedicationRequest": None,
        "MedicationDispense": f"MedicationRequest/{order['id']}",  # linked
        "MedicationStatement": f"MedicationRequest/{order['id']}",  # same ingredient
    }


def test_two_active_orders_of_one_drug_stay_two_duplicate_therapy_is_for_the_rules(facts_of):
    facts = facts_of(
        {"medications": ["Warfarin Sodium 5 MG Oral Tablet", "Warfarin Sodium 2 MG Oral Tablet"]}
    )
    assert len(facts.active_medications) == 2


# -- routes --------------------------------------------------------------------------------------


def test_route_from_dosage_then_from_the_products_dose_form(facts_of):
    facts = facts_of(
        {
            "medications": [
                "diclofenac sodium 10 MG/ML Topical Gel",
                {"text": "Naproxen 500 MG Oral Tablet", "route": "rectal"},
                "fluticasone propionate 0.044 MG/ACTUAT Metered Dose Inhaler",
                "Ibuprofen 400 MG Oral Tablet",
                {"text": "some unnamed product", "code": "rxnorm|999999999"},
            ]
        }
    )
    routes = {m.name.split()[0].lower(): (m.route, m.systemic) for m in facts.medications}
    assert routes == {
        "diclofenac": ("topical", False),
        "naproxen": ("rectal", True),  # the order's route beats the product name
        "fluticasone": ("inhaled", False),
        "ibuprofen": ("oral", True),
        "some": (None, True),  # unknown: the safe side
    }


# -- medications named by reference --------------------------------------------------------------


def _by_reference(order: dict, medication_id: str, *, display: str | None = None) -> dict:
    order = copy.deepcopy(order)
    concept = order.pop("medicationCodeableConcept")
    order["medicationReference"] = {"reference": f"Medication/{medication_id}"}
    if display:
        order["medicationReference"]["display"] = display
    order["_concept"] = concept  # kept aside for the test to build the Medication from
    return order


def _medication(medication_id: str, concept: dict) -> dict:
    return {"resourceType": "Medication", "id": medication_id, "code": concept}


def _chart_by_reference():
    """Warfarin and oxycodone, each a MedicationRequest naming a Medication by reference."""
    made, drafts = CaseBuilder(date.today()).build(
        {
            "medications": ["Warfarin Sodium 5 MG Oral Tablet", "oxycodone hydrochloride 5 MG Oral Tablet"],
            "draftOrders": ["Ibuprofen 400 MG Oral Tablet"],
        }
    )
    orders, medications = [], []
    for i, order in enumerate(r for r in made if r["resourceType"] == "MedicationRequest"):
        ref = _by_reference(order, f"med-{i}")
        medications.append(_medication(f"med-{i}", ref.pop("_concept")))
        orders.append(ref)
    return made[0], orders, medications, drafts


def test_contained_and_bundled_and_absolute_references_resolve(facts_of):
    patient, orders, medications, _ = _chart_by_reference()
    contained = copy.deepcopy(orders[0])
    contained["contained"] = [{**medications[0], "id": "m"}]
    contained["medicationReference"] = {"reference": "#m"}
    absolute = copy.deepcopy(orders[1])
    absolute["medicationReference"]["reference"] = "https://ehr.example/fhir/Medication/med-1"
    facts = facts_of({}, resources=[patient, contained, absolute, medications[1]])
    assert sorted(i for m in facts.medications for i in m.ingredients) == ["oxycodone", "warfarin"]


def _post_order_sign(app, body):
    response = app.test_client().post(f"/cds-services/{builders.ORDER_SIGN_SERVICE}", json=body)
    record = app.extensions["cds_runtime"].storage.decision_log.get(response.headers["X-Decision-Id"])
    return response, record


def test_medications_by_reference_in_the_prefetch_bundle_fire(make_app):
    patient, orders, medications, drafts = _chart_by_reference()
    body = builders.order_sign({"draftOrders": []})
    body["context"]["draftOrders"]["entry"] = [{"resource": d} for d in drafts]
    body["prefetch"]["patient"] = patient
    body["prefetch"]["medications"] = searchset(orders + medications)  # as an _include brings them
    response, record = _post_order_sign(make_app(), body)
    assert response.status_code == 200, response.get_json()
    assert [c["indicator"] for c in response.get_json()["cards"]] == ["critical"]  # warfarin + ibuprofen
    assert "medicationReferences" not in record  # nothing to read


def test_missing_medications_are_read_from_the_fhir_server(make_app, fake_fhir):
    patient, orders, medications, drafts = _chart_by_reference()
    for m in medications:
        fake_fhir.routes[f"Medication/{m['id']}"] = Reply(200, m)
    body = builders.order_sign({"draftOrders": []}, fhirServer=fake_fhir.base_url, fhirAuthorization=AUTH)
    body["context"]["draftOrders"]["entry"] = [{"resource": d} for d in drafts]
    body["prefetch"]["patient"] = patient
    body["prefetch"]["medications"] = searchset(orders)  # the server ignored _include
    response, record = _post_order_sign(make_app(CDS_FHIR_ALLOWED_SERVERS=fake_fhir.base_url), body)
    assert response.status_code == 200, response.get_json()
    assert [c["indicator"] for c in response.get_json()["cards"]] == ["critical"]
    assert sorted(s.path for s in fake_fhir.seen) == ["/fhir/Medication/med-0", "/fhir/Medication/med-1"]
    assert record["medicationReferences"]["read"] == 2
    assert record["medicationReferences"]["unidentified"] == []


def test_a_medication_that_stays_unidentified_is_said_not_dropped(make_app, fake_fhir):
    patient, orders, medications, drafts = _chart_by_reference()
    fake_fhir.routes["Medication/med-1"] = Reply(200, medications[1])  # med-0 (warfarin): 404
    body = builders.order_sign({"draftOrders": []}, fhirServer=fake_fhir.base_url, fhirAuthorization=AUTH)
    body["context"]["draftOrders"]["entry"] = [{"resource": d} for d in drafts]
    body["prefetch"]["patient"] = patient
    body["prefetch"]["medications"] = searchset(orders)
    response, record = _post_order_sign(make_app(CDS_FHIR_ALLOWED_SERVERS=fake_fhir.base_url), body)
    assert response.status_code == 200, response.get_json()
    cards = response.get_json()["cards"]
    assert [c["indicator"] for c in cards] == ["info"]  # no interaction card could be proven: said
    detail = cards[0]["detail"]
    assert "Medication/med-0" in detail and "could not be identified" in detail
    checks = cards[0]["extension"]["org.cds-service.data-quality"]["checks"]
    assert any(c.startswith("ddi-warfarin-nsaid@") for c in checks)
    unidentified = record["medicationReferences"]["unidentified"]
    assert [u["medicationReference"] for u in unidentified] == ["Medication/med-0"]
    assert "tok-med-refs-never-logged" not in str(record)


def test_a_reference_with_a_display_is_identified_by_name_without_a_read(make_app):
    patient, orders, _, drafts = _chart_by_reference()
    orders[0]["medicationReference"]["display"] = "Warfarin Sodium 5 MG Oral Tablet"
    body = builders.order_sign({"draftOrders": []})
    body["context"]["draftOrders"]["entry"] = [{"resource": d} for d in drafts]
    body["prefetch"]["patient"] = patient
    body["prefetch"]["medications"] = searchset(orders[:1])
    response, record = _post_order_sign(make_app(), body)
    assert [c["indicator"] for c in response.get_json()["cards"]] == ["critical"]
    assert record["medicationReferences"]["unidentified"] == []
    assert record["medicationReferences"]["lookups"][0]["outcome"] == "not read"  # no fhirServer


# -- medications known only from a fill, a statement or an administration -------------------------


@pytest.mark.parametrize("rtype", ["MedicationDispense", "MedicationStatement", "MedicationAdministration"])
def test_warfarin_known_only_from_another_resource_still_interacts(client, rtype):
    case = {
        "medications": [
            {"resourceType": rtype, "text": "Warfarin Sodium 5 MG Oral Tablet", "authoredDaysAgo": 0.1}
        ],
        "draftOrders": ["Ibuprofen 400 MG Oral Tablet"],
    }
    response = client.post(f"/cds-services/{builders.ORDER_SIGN_SERVICE}", json=builders.order_sign(case))
    cards = response.get_json()["cards"]
    assert [c["indicator"] for c in cards] == ["critical"], cards
    assert "Warfarin" in cards[0]["summary"]


def test_the_fetch_path_asks_for_every_medication_resource(make_app, fake_fhir):
    made, _ = CaseBuilder(date.today()).build(
        {"medications": [{"resourceType": "MedicationDispense", "text": "Warfarin Sodium 5 MG Oral Tablet"}]}
    )
    fake_fhir.routes[f"Patient/{PATIENT_ID}"] = Reply(200, made[0])
    dispenses = searchset([made[1]])

    def route(relative: str) -> Reply:
        if relative.startswith("MedicationDispense?"):
            return Reply(200, dispenses)
        return Reply(200, searchset([]))

    fake_fhir.default = route
    app = make_app(CDS_FHIR_ALLOWED_SERVERS=fake_fhir.base_url)
    body = builders.order_sign(
        {"draftOrders": ["Ibuprofen 400 MG Oral Tablet"]},
        prefetch_keys=(),
        fhirServer=fake_fhir.base_url,
        fhirAuthorization=AUTH,
    )
    body["prefetch"] = {"patient": made[0]}
    response = app.test_client().post(f"/cds-services/{builders.ORDER_SIGN_SERVICE}", json=body)
    assert [c["indicator"] for c in response.get_json()["cards"]] == ["critical"]
    asked = {s.path.split("?")[0].rsplit("/", 1)[-1] for s in fake_fhir.seen}
    assert {
        "MedicationRequest",
        "MedicationStatement",
        "MedicationDispense",
        "MedicationAdministration",
    } <= asked
    dispense_query = next(s.path for s in fake_fhir.seen if "MedicationDispense?" in s.path)
    assert (
        "whenhandedover=ge" in dispense_query and "_include=MedicationDispense:medication" in dispense_query
    )


# -- eGFR: never the Bundle's order ------------------------------------------------------------------


@pytest.mark.parametrize("reverse", [False, True])
def test_a_reported_egfr_beats_a_creatinine_of_the_same_time_in_either_order(facts_of, reverse):
    observations = [
        {"code": "loinc|98979-8", "value": 24, "unit": "mL/min/{1.73_m2}", "daysAgo": 3},
        {"code": "loinc|2160-0", "value": 0.51, "unit": "mg/dL", "daysAgo": 3},
    ]
    facts = facts_of(
        {"patient": {"age": 70, "gender": "female"}, "observations": observations[:: -1 if reverse else 1]}
    )
    egfr = latest_egfr(facts)
    assert (egfr.source, egfr.value) == ("measured", 24)


@pytest.mark.parametrize("reverse", [False, True])
def test_two_reported_egfrs_at_the_same_time_the_lower_counts(facts_of, reverse):
    observations = [
        {"code": "loinc|98979-8", "value": 24, "daysAgo": 3},
        {"code": "loinc|33914-3", "value": 35, "daysAgo": 3},
    ]
    facts = facts_of({"patient": {"age": 70}, "observations": observations[:: -1 if reverse else 1]})
    assert latest_egfr(facts).value == 24


def test_a_newer_creatinine_beats_an_older_reported_egfr(facts_of):
    facts = facts_of(
        {
            "patient": {"age": 70, "gender": "male"},
            "observations": [
                {"code": "loinc|98979-8", "value": 24, "daysAgo": 10},
                {"code": "loinc|2160-0", "value": 0.9, "unit": "mg/dL", "daysAgo": 2},
            ],
        }
    )
    assert latest_egfr(facts).source.startswith("computed")


@pytest.mark.parametrize("reverse", [False, True])
def test_metformin_card_does_not_depend_on_bundle_order(client, reverse):
    observations = [
        {"code": "loinc|98979-8", "value": 24, "daysAgo": 3},
        {"code": "loinc|2160-0", "value": 0.51, "unit": "mg/dL", "daysAgo": 3},
    ]
    case = {
        "patient": {"age": 70, "gender": "female"},
        "observations": observations[:: -1 if reverse else 1],
        "draftOrders": ["Metformin hydrochloride 500 MG Oral Tablet"],
    }
    response = client.post(f"/cds-services/{builders.ORDER_SIGN_SERVICE}", json=builders.order_sign(case))
    assert [c["indicator"] for c in response.get_json()["cards"]] == ["critical"]


# -- the medication review when the chart opens ----------------------------------------------------


def _chart_review(client, case: dict) -> list[dict]:
    response = client.post(f"/cds-services/{builders.PATIENT_VIEW_SERVICE}", json=builders.patient_view(case))
    assert response.status_code == 200, response.get_json()
    return [c for c in response.get_json()["cards"] if "org.cds-service.rule" in c.get("extension", {})]


def _rule_cards(cards: list[dict]) -> dict[str, str]:
    return {
        c["extension"]["org.cds-service.rule"]["id"]: c["indicator"]
        for c in cards
        if c["extension"]["org.cds-service.rule"]["id"] not in ("chart-summary", "data-quality")
    }


def test_chart_open_flags_warfarin_with_naproxen_once_and_proposes_no_change_to_signed_orders(client):
    cards = _chart_review(
        client,
        {
            "medications": [
                {"text": "Warfarin Sodium 5 MG Oral Tablet", "authoredDaysAgo": 200},
                {"text": "Naproxen 500 MG Oral Tablet", "authoredDaysAgo": 90},
            ]
        },
    )
    interaction = [c for c in cards if c["extension"]["org.cds-service.rule"]["id"] == "ddi-warfarin-nsaid"]
    assert len(interaction) == 1  # one card for the pair, not one per side
    assert interaction[0]["indicator"] == "info"  # taken together for 90 days: to review, not an alarm
    assert "being ordered" not in interaction[0]["detail"]
    for card in cards:
        for s in card.get("suggestions") or []:
            assert all(a["type"] == "create" for a in s["actions"]), s  # never delete a signed order


def test_chart_open_flags_metformin_with_an_egfr_of_13(client):
    cards = _chart_review(
        client,
        {
            "patient": {"age": 70, "gender": "female"},
            "medications": [{"text": "Metformin hydrochloride 500 MG Oral Tablet", "authoredDaysAgo": 400}],
            "observations": [{"code": "loinc|98979-8", "value": 13, "daysAgo": 5}],
        },
    )
    assert _rule_cards(cards).get("metformin-egfr-below-30") == "critical"  # critical stays critical


def test_an_old_combination_is_information_and_a_new_one_keeps_its_indicator(client):
    def chart(days: float) -> dict:
        return {
            "medications": [
                {"text": "clopidogrel 75 MG Oral Tablet", "authoredDaysAgo": 300},
                {"text": "omeprazole 20 MG Delayed Release Oral Capsule", "authoredDaysAgo": days},
            ]
        }

    old = _rule_cards(_chart_review(client, chart(200)))
    new = _rule_cards(_chart_review(client, chart(5)))
    assert old["ddi-clopidogrel-cyp2c19-ppi"] == "info"
    assert new["ddi-clopidogrel-cyp2c19-ppi"] == "warning"


def test_chart_open_with_nothing_to_flag_gives_no_review_card(client):
    cards = _chart_review(
        client, {"medications": ["Lisinopril 10 MG Oral Tablet", "Atorvastatin 20 MG Oral Tablet"]}
    )
    assert _rule_cards(cards) == {}


def test_order_sign_indicators_are_not_softened(client):
    case = {
        "medications": [{"text": "clopidogrel 75 MG Oral Tablet", "authoredDaysAgo": 300}],
        "draftOrders": ["omeprazole 20 MG Delayed Release Oral Capsule"],
    }
    response = client.post(f"/cds-services/{builders.ORDER_SIGN_SERVICE}", json=builders.order_sign(case))
    assert _rule_cards(response.get_json()["cards"])["ddi-clopidogrel-cyp2c19-ppi"] == "warning"


def test_a_dispense_newer_than_today_minus_supply_counts_at_the_boundary(facts_of):
    """A 30-day fill handed over 30 days ago still covers today (the day-long tolerance of date-only data)."""
    facts = facts_of(
        {
            "medications": [
                {
                    "resourceType": "MedicationDispense",
                    "text": "Naproxen 500 MG Oral Tablet",
                    "authoredDaysAgo": 30,
                }
            ]
        }
    )
    assert facts.medications[0].is_active
    later = facts_of(
        {
            "medications": [
                {
                    "resourceType": "MedicationDispense",
                    "text": "Naproxen 500 MG Oral Tablet",
                    "authoredDaysAgo": 32,
                }
            ]
        }
    )
    assert not later.medications[0].is_active
    assert later.medications[0].ended < datetime(2026, 6, 15, tzinfo=UTC) - timedelta(days=1)


# -- what a rule needs vs what only refines its card ----------------------------------------------


def test_a_card_keeps_coming_when_only_its_refinements_data_is_missing(client):
    """ddi-warfarin-nsaid needs medications; the guide's patient factors (GI-bleed history) only refine it.
    With conditions unavailable the card still comes and says what was not known."""
    case = {
        "medications": ["Warfarin Sodium 5 MG Oral Tablet"],
        "draftOrders": ["Ibuprofen 400 MG Oral Tablet"],
    }
    keys = ("patient", "medications", "statements", "dispenses", "administrations", "allergies", "labs")
    body = builders.order_sign(case, prefetch_keys=keys)  # no conditions, no fhirServer: unavailable
    response = client.post(f"/cds-services/{builders.ORDER_SIGN_SERVICE}", json=body)
    cards = {c["extension"]["org.cds-service.rule"]["id"]: c for c in response.get_json()["cards"]}
    interaction = cards["ddi-warfarin-nsaid"]
    assert interaction["indicator"] == "critical"  # no PPI: the medication-only escalation still applies
    assert "Not known for this card: Condition" in interaction["detail"]
    # a rule whose `when` reads conditions is skipped, and said on the data-quality card
    checks = cards["data-quality"]["extension"]["org.cds-service.data-quality"]["checks"]
    assert any(c.startswith("nsaid-peptic-ulcer-gi-bleed@") for c in checks)
    assert not any(c.startswith("ddi-warfarin-nsaid@") for c in checks)

    full = client.post(f"/cds-services/{builders.ORDER_SIGN_SERVICE}", json=builders.order_sign(case))
    detail = next(c for c in full.get_json()["cards"] if "Warfarin" in c["summary"])["detail"]
    assert "Not known for this card" not in detail


def test_an_undated_fill_counts_as_current_the_safe_side(facts_of):
    made, _ = CaseBuilder(TODAY).build(
        {"medications": [{"resourceType": "MedicationDispense", "text": "Warfarin Sodium 5 MG Oral Tablet"}]}
    )
    del made[1]["whenHandedOver"]
    facts = facts_of({}, resources=[made[1]])
    assert [(m.source, m.is_active) for m in facts.medications] == [("dispensed", True)]


def test_a_read_answered_with_another_medication_is_not_taken_for_it(make_app, fake_fhir):
    patient, orders, medications, drafts = _chart_by_reference()
    fake_fhir.routes["Medication/med-0"] = Reply(200, medications[1])  # asked for warfarin, got oxycodone
    fake_fhir.routes["Medication/med-1"] = Reply(200, medications[1])
    body = builders.order_sign({"draftOrders": []}, fhirServer=fake_fhir.base_url, fhirAuthorization=AUTH)
    body["context"]["draftOrders"]["entry"] = [{"resource": d} for d in drafts]
    body["prefetch"]["patient"] = patient
    body["prefetch"]["medications"] = searchset(orders)
    response, record = _post_order_sign(make_app(CDS_FHIR_ALLOWED_SERVERS=fake_fhir.base_url), body)
    lookups = {x["reference"]: x for x in record["medicationReferences"]["lookups"]}
    assert lookups["Medication/med-0"]["why"] == "the server answered Medication/med-1"
    assert [u["medicationReference"] for u in record["medicationReferences"]["unidentified"]] == [
        "Medication/med-0"
    ]
    assert [c["indicator"] for c in response.get_json()["cards"]] == ["info"]  # said, not silently unnamed
