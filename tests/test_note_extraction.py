"""Notes as evidence: mentions from the terminology, facts with provenance `note`, rules that may use them,
cards that quote them, and the hook call end to end."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest
from builders import order_sign, patient_view

from cds_service.clinical.engine import evaluate_rule
from cds_service.clinical.facts import CODED, NOTE
from cds_service.clinical.mentions import (
    ALLERGY,
    CONDITION,
    HISTORICAL,
    MEDICATION,
    NEGATED,
    PRESENT,
    SOMEONE_ELSE,
)
from cds_service.clinical.rule_cases import PATIENT_ID, CaseBuilder
from cds_service.ehr.documents import DocumentText
from cds_service.protocol.cards import cards_for, validate_card

TODAY = date(2026, 11, 30)


@pytest.fixture(scope="module")
def reader(content):
    return content.note_reader


def doc(text: str, days_ago: int = 1, ref: str = "DocumentReference/n1") -> DocumentText:
    when = datetime(2026, 11, 30 - days_ago, 9, tzinfo=UTC)
    return DocumentText(
        ref, ref.split("/")[0], "Progress note", when, text, "content[0].attachment", "text/plain"
    )


def only(mentions, **want):
    found = [m for m in mentions if all(getattr(m, k) == v for k, v in want.items())]
    assert len(found) == 1, (want, mentions)
    return found[0]


# -- the reader -----------------------------------------------------------------------------------


def test_brand_names_resolve_to_ingredients_with_offsets_into_the_document(reader):
    text = "HPI: knee pain.\nTakes Aleve 220 mg twice daily from the pharmacy."
    m = only(reader.read(doc(text)), kind=MEDICATION)
    assert (m.concept, m.display, m.status) == ("ingredient:naproxen", "naproxen", PRESENT)
    assert text[m.start : m.end] == "Aleve" and m.label == "Aleve"
    assert text[m.sentence_start :].startswith(m.sentence) and "Aleve" in m.sentence
    assert m.codes and m.codes[0][1] == "7258"  # RxNorm naproxen, from the terminology


def test_a_drug_in_an_allergy_context_is_an_allergy_with_its_reaction(reader):
    text = "ALLERGIES:\nPenicillin - anaphylaxis\n\nMEDICATIONS:\nLisinopril 10 mg daily"
    mentions = reader.read(doc(text))
    allergy = only(mentions, kind=ALLERGY)
    assert allergy.concept == "class:penicillins" and allergy.reaction == "anaphylaxis"
    medication = only(mentions, kind=MEDICATION)  # the next section is not an allergy context
    assert medication.concept == "ingredient:lisinopril" and medication.status == PRESENT


def test_findings_come_from_the_note_finding_value_sets_with_their_codes(reader):
    m = only(reader.read(doc("She is 9 weeks pregnant by LMP.")), kind=CONDITION)
    assert m.concept == "pregnancy" and ("http://snomed.info/sct", "77386006") in m.codes
    ulcer = only(reader.read(doc("History of bleeding peptic ulcer in 2019.")), kind=CONDITION)
    assert ulcer.concept == "peptic-ulcer-gi-bleed" and ulcer.status == HISTORICAL


def test_family_history_sections_are_about_someone_else(reader):
    m = only(reader.read(doc("Family history:\nFather: GI bleed at 70.")), kind=CONDITION)
    assert m.status == SOMEONE_ELSE


def test_negated_mentions_keep_their_trigger(reader):
    m = only(reader.read(doc("Denies NSAID use.")), kind=MEDICATION)
    assert m.status == NEGATED and m.triggers


def test_unrelated_words_are_not_mentions(reader):
    assert reader.read(doc("Patient walked to the clinic; pupils equal and reactive.")) == ()


# -- facts ------------------------------------------------------------------------------------------


def facts_for(content, reader, case: dict, notes: list[DocumentText]):
    resources, drafts = CaseBuilder(TODAY).build(case)
    mentions = [m for d in notes for m in reader.read(d)]
    return content.facts_builder.build(
        resources, patient_id=PATIENT_ID, draft_orders=drafts, today=TODAY, mentions=mentions
    )


def test_note_facts_carry_provenance_and_evidence_and_coded_only_drops_them(content, reader):
    facts = facts_for(content, reader, {}, [doc("Takes ibuprofen 400 mg daily.")])
    (med,) = facts.medications
    assert med.provenance == NOTE and med.is_active and med.evidence.label == "ibuprofen"
    assert med.ref == "DocumentReference/n1#char=6,15"
    assert facts.coded_only.medications == ()
    assert [use for _, use, _ in facts.note_uses] == ["used"]


def test_coded_data_is_never_overridden(content, reader):
    stopped_later = {
        "medications": [{"text": "Ibuprofen 400 MG Oral Tablet", "status": "stopped", "authoredDaysAgo": 0}]
    }
    facts = facts_for(content, reader, stopped_later, [doc("Takes ibuprofen daily.", days_ago=5)])
    assert all(m.provenance == CODED for m in facts.medications)
    ((_, use, why),) = facts.note_uses
    assert use == "not used" and "stopped" in why

    inactive_allergy = {"allergies": [{"text": "Amoxicillin", "clinicalStatus": "inactive"}]}
    facts = facts_for(content, reader, inactive_allergy, [doc("Allergic to amoxicillin (rash).")])
    assert [a.provenance for a in facts.allergies] == [CODED]
    assert "inactive or refuted" in facts.note_uses[0][2]


def test_a_medication_stopped_before_the_note_does_not_hide_what_the_note_says(content, reader):
    stopped_earlier = {
        "medications": [{"text": "Ibuprofen 400 MG Oral Tablet", "status": "stopped", "authoredDaysAgo": 300}]
    }
    facts = facts_for(content, reader, stopped_earlier, [doc("Restarted ibuprofen on his own last week.")])
    assert [m.provenance for m in facts.active_medications] == [NOTE]


def test_historical_conditions_are_inactive_and_unasserted_mentions_are_recorded(content, reader):
    facts = facts_for(
        content, reader, {}, [doc("History of GI bleed. Denies melena. Mother had a peptic ulcer.")]
    )
    (bleed,) = facts.conditions
    assert bleed.provenance == NOTE and not bleed.active
    fates = {m.label.lower(): (use, why) for m, use, why in facts.note_uses}
    assert fates["melena"] == ("not used", "not asserted of the patient (negated)")
    assert fates["peptic ulcer"][0] == "not used" and SOMEONE_ELSE in fates["peptic ulcer"][1]


# -- rules and cards ----------------------------------------------------------------------------------


def test_only_rules_that_allow_note_evidence_see_note_facts(content, reader):
    case = {"draftOrders": ["Ibuprofen 400 MG Oral Tablet"]}
    facts = facts_for(content, reader, case, [doc("Takes Advil 200 mg every day for back pain.")])
    duplicate = content.rulebook.by_id("duplicate-ingredient")
    assert not duplicate.note_evidence
    assert evaluate_rule(duplicate, facts, content.terminology).outcome == "not-fired"
    coded = facts_for(content, reader, {**case, "medications": ["Ibuprofen 200 MG Oral Tablet"]}, [])
    assert evaluate_rule(duplicate, coded, content.terminology).outcome == "fired"  # the same rule, coded


def test_a_card_fired_by_a_note_quotes_it_and_offers_to_record_the_coded_fact(content, reader):
    case = {"draftOrders": ["Warfarin Sodium 5 MG Oral Tablet"]}
    note = doc("Knee pain, takes Aleve twice a day from the pharmacy.", days_ago=3)
    facts = facts_for(content, reader, case, [note])
    result = evaluate_rule(content.rulebook.by_id("ddi-warfarin-nsaid"), facts, content.terminology)
    (issued,), rejected = cards_for(list(result.findings), facts)
    card = issued.card
    assert not rejected and validate_card(card) is None
    assert "> Knee pain, takes Aleve twice a day from the pharmacy." in card["detail"]
    assert "*Progress note*, 2026-11-27 (`DocumentReference/n1`)" in card["detail"]
    assert "rule-based note reader" in card["detail"] and "AI-assisted" not in card["detail"]
    record = card["suggestions"][-1]
    assert record["label"].startswith("Record Aleve as a medication the patient takes")
    (action,) = record["actions"]
    statement = action["resource"]
    assert action["type"] == "create" and statement["resourceType"] == "MedicationStatement"
    assert statement["derivedFrom"] == [{"reference": "DocumentReference/n1"}]
    assert statement["medicationCodeableConcept"]["coding"][0]["code"] == "7258"
    assert card["selectionBehavior"] == "any"
    (evidence,) = card["extension"]["org.cds-service.note-evidence"]
    assert evidence["document"] == "DocumentReference/n1" and evidence["decidedBy"] == "baseline"


def test_a_note_allergy_suggests_an_unconfirmed_allergy_intolerance(content, reader):
    case = {"draftOrders": ["Amoxicillin 500 MG Oral Tablet"]}
    facts = facts_for(content, reader, case, [doc("Allergic to amoxicillin: hives and lip swelling.")])
    result = evaluate_rule(content.rulebook.by_id("allergy-same-ingredient"), facts, content.terminology)
    (issued,), _ = cards_for(list(result.findings), facts)
    resource = issued.card["suggestions"][-1]["actions"][0]["resource"]
    assert resource["resourceType"] == "AllergyIntolerance"
    assert resource["verificationStatus"]["coding"][0]["code"] == "unconfirmed"
    assert resource["reaction"] == [{"manifestation": [{"text": "hives"}]}]
    assert resource["patient"] == {"reference": f"Patient/{PATIENT_ID}"}


# -- the hook call ------------------------------------------------------------------------------------


def test_order_sign_reads_notes_from_the_prefetch_and_records_every_mention(client, app):
    body = order_sign(
        {
            "draftOrders": ["Warfarin Sodium 5 MG Oral Tablet"],
            "notes": [
                "HPI: takes Aleve 220 mg twice a day for knee pain. Denies aspirin use.",
                {"text": "<p>Plan: <b>avoid</b> ibuprofen.</p>", "contentType": "text/html"},
            ],
        }
    )
    response = client.post("/cds-services/medication-order-check", json=body)
    assert response.status_code == 200
    cards = response.get_json()["cards"]
    (card,) = [c for c in cards if c["extension"]["org.cds-service.rule"]["id"] == "ddi-warfarin-nsaid"]
    assert card["indicator"] == "critical" and "Aleve" in card["summary"]
    record = app.extensions["cds_runtime"].storage.decision_log.get(response.headers["X-Decision-Id"])
    notes = record["notes"]
    assert notes["documentsRead"] == 2 and notes["assertionComponent"] == "baseline"
    fates = {m["label"].lower(): m for m in notes["mentions"]}
    assert fates["aleve"]["use"] == "used" and fates["aleve"]["status"] == PRESENT
    assert fates["aspirin"]["use"] == "not used" and fates["aspirin"]["status"] == NEGATED
    assert fates["ibuprofen"]["status"] != PRESENT and fates["ibuprofen"]["use"] == "not used"
    assert "notes" in response.headers["Server-Timing"]


def test_unread_attachments_are_recorded(client, app):
    pdf = {
        "resourceType": "DocumentReference",
        "id": "scan",
        "status": "current",
        "subject": {"reference": f"Patient/{PATIENT_ID}"},
        "content": [{"attachment": {"contentType": "application/pdf", "data": "JVBERi0xLjQK"}}],
    }
    body = order_sign({"draftOrders": ["Warfarin Sodium 5 MG Oral Tablet"], "resources": [pdf]})
    response = client.post("/cds-services/medication-order-check", json=body)
    assert response.status_code == 200
    record = app.extensions["cds_runtime"].storage.decision_log.get(response.headers["X-Decision-Id"])
    (unread,) = record["notes"]["unread"]
    assert unread["document"] == "DocumentReference/scan" and "application/pdf" in unread["why"]


def test_patient_view_summary_is_composed_deterministically_without_free_text(client, app):
    case = {
        "conditions": ["Essential hypertension"],
        "medications": ["Warfarin Sodium 5 MG Oral Tablet"],
        "observations": [
            {"text": "INR", "code": "loinc|6301-6", "value": 4.2, "interpretation": "H", "daysAgo": 2}
        ],
        "notes": ["She takes St Joseph aspirin 81 mg daily."],
    }
    response = client.post("/cds-services/patient-chart-review", json=patient_view(case))
    (card,) = [
        c
        for c in response.get_json()["cards"]
        if c["extension"]["org.cds-service.rule"]["id"] == "chart-summary"
    ]
    detail = card["detail"]
    assert card["indicator"] == "info"
    assert "- Essential hypertension" in detail and "- Warfarin Sodium 5 MG Oral Tablet" in detail
    assert "INR: 4.2 (high) on " in detail
    assert "takes aspirin: “She takes St Joseph aspirin 81 mg daily.”" in detail
    assert "not by a language model (no language model configured)" in detail
    record = app.extensions["cds_runtime"].storage.decision_log.get(response.headers["X-Decision-Id"])
    assert record["chartSummary"]["card"] == card["uuid"]


def test_one_fact_per_concept_with_the_most_telling_mention_as_evidence(content, reader):
    notes = [
        doc("History of GI bleed in 2019.", days_ago=20, ref="DocumentReference/old"),
        doc("Melena since Tuesday. Takes Aleve. Aleve again today.", days_ago=2, ref="DocumentReference/new"),
    ]
    facts = facts_for(content, reader, {}, notes)
    (bleed,) = facts.conditions  # GI bleed and melena are one finding (value set peptic-ulcer-gi-bleed)
    assert bleed.active and bleed.evidence.label == "Melena"  # present beats historical
    (aleve,) = facts.medications
    assert aleve.evidence.start == notes[1].text.index("Aleve")
    repeats = [why for m, use, why in facts.note_uses if use == "not used"]
    assert len(repeats) == 2 and all(why.startswith("the same ") for why in repeats)


def test_a_class_allergy_is_said_more_precisely_by_the_ingredient_in_the_same_note(content, reader):
    note = doc("Penicillin allergy: anaphylaxis after amoxicillin in 2015.")
    facts = facts_for(content, reader, {}, [note])
    (allergy,) = facts.allergies
    assert allergy.ingredients == {"amoxicillin"} and "penicillins" in allergy.classes


@pytest.mark.parametrize(
    ("text", "kind", "concept", "status"),
    [
        ("She was on warfarin until 2019.", MEDICATION, "ingredient:warfarin", HISTORICAL),
        ("Pt allergic to sulfa - rash.", ALLERGY, "class:sulfonamide-antibiotics", PRESENT),
        ("Supplements: St John's wort 300 mg tid.", MEDICATION, "ingredient:st. john's wort", PRESENT),
        ("Negative for melena.", CONDITION, "peptic-ulcer-gi-bleed", NEGATED),
        ("Prolonged QTc 520 ms on ECG today.", CONDITION, "qt-prolongation", PRESENT),
    ],
)
def test_general_phrasing(reader, text, kind, concept, status):
    m = only(reader.read(doc(text)), kind=kind)
    assert (m.concept, m.status) == (concept, status)


def test_each_allergy_in_a_list_gets_its_own_reaction(reader):
    mentions = reader.read(doc("Allergies: PCN (hives), sulfa (rash), codeine (nausea)."))
    reactions = {m.concept: m.reaction for m in mentions if m.kind == ALLERGY}
    assert reactions == {
        "class:penicillins": "hives",
        "class:sulfonamide-antibiotics": "rash",
        "ingredient:codeine": "nausea",
    }
    assert only(reader.read(doc("Anaphylaxis to penicillin.")), kind=ALLERGY).reaction == "Anaphylaxis"


# -- the LLM deciding assertions, where its gate is open ------------------------------------------


class Chooser:
    """A backend whose constrained answer is fixed: what the pipeline does with it is under test."""

    model_id = "fake-chooser@1"

    def __init__(self, answer: str):
        self.answer, self.calls = answer, 0

    def choose(self, messages, options, max_new_tokens=8):
        from cds_service.reasoning.backends import Generation

        assert self.answer in options
        self.calls += 1
        return Generation(self.answer, 10, 2, 0.001)

    def generate(self, messages, max_new_tokens):
        from cds_service.reasoning.backends import LlmError

        raise LlmError("no free text from this backend")


def _gated(app, answer: str, component: str):
    from cds_service.reasoning.cache import LlmStore
    from cds_service.reasoning.capabilities import Capabilities
    from cds_service.reasoning.grounding import GroundingGuard
    from cds_service.reasoning.reasoner import Reasoner

    rt = app.extensions["cds_runtime"]
    rt.reasoner = Reasoner(
        Chooser(answer),
        LlmStore(rt.storage.engine),
        GroundingGuard(rt.content.terminology),
        budget_ms=3000,
        capabilities=Capabilities(assertion_component=component, assertion_reason="measured better (test)"),
    )
    rt.registry.pipeline.reasoner = rt.reasoner
    return rt


def _settle(reasoner, seconds: float = 10) -> None:
    import time

    deadline = time.time() + seconds
    while reasoner._inflight and time.time() < deadline:
        time.sleep(0.02)


WARFARIN_WITH_NOTE = {
    "draftOrders": ["Warfarin Sodium 5 MG Oral Tablet"],
    "notes": ["Takes Aleve most days."],
}


def test_order_sign_uses_only_cached_llm_answers_and_the_next_call_finds_them(make_app):
    app = make_app()
    rt = _gated(app, "absent", "llm")
    client = app.test_client()
    first = client.post("/cds-services/medication-order-check", json=order_sign(WARFARIN_WITH_NOTE))
    ids = [c["extension"]["org.cds-service.rule"]["id"] for c in first.get_json()["cards"]]
    assert "ddi-warfarin-nsaid" in ids  # not ready: the baseline decided ("present") and the card shows
    notes = rt.storage.decision_log.get(first.headers["X-Decision-Id"])["notes"]
    assert notes["assertionComponent"] == "llm"
    assert [i["status"] for i in notes["llm"]["items"]] == ["pending"]
    assert notes["mentions"][0]["decidedBy"] == "baseline"
    _settle(rt.reasoner)
    second = client.post("/cds-services/medication-order-check", json=order_sign(WARFARIN_WITH_NOTE))
    ids = [c["extension"]["org.cds-service.rule"]["id"] for c in second.get_json()["cards"]]
    assert "ddi-warfarin-nsaid" not in ids  # the model, allowed to decide, says the note negates it
    (mention,) = rt.storage.decision_log.get(second.headers["X-Decision-Id"])["notes"]["mentions"]
    assert (mention["status"], mention["decidedBy"], mention["modelId"]) == (NEGATED, "llm", "fake-chooser@1")
    assert rt.reasoner.backend.calls == 1  # asked once, shared through the cache
    rt.reasoner.close()


def test_patient_view_waits_for_the_llm_within_the_budget_and_labels_ai_assisted_evidence(make_app):
    app = make_app()
    rt = _gated(app, "present", "llm")
    client = app.test_client()
    view = client.post("/cds-services/patient-chart-review", json=patient_view({"notes": ["Aleve daily."]}))
    notes = rt.storage.decision_log.get(view.headers["X-Decision-Id"])["notes"]
    assert [i["status"] for i in notes["llm"]["items"]] == ["generated"]
    response = client.post(
        "/cds-services/medication-order-check",
        json=order_sign({"draftOrders": ["Warfarin Sodium 5 MG Oral Tablet"], "notes": ["Aleve daily."]}),
    )
    (card,) = [c for c in response.get_json()["cards"] if "org.cds-service.note-evidence" in c["extension"]]
    assert "AI-assisted" in card["detail"] and "fake-chooser@1" in card["detail"]
    assert card["extension"]["org.cds-service.note-evidence"][0]["decidedBy"] == "llm"
    rt.reasoner.close()


def test_in_combination_a_baseline_trigger_wins_over_the_llm(make_app):
    app = make_app()
    rt = _gated(app, "present", "combination")
    client = app.test_client()
    body = patient_view({"notes": ["Denies Aleve use. Takes Motrin."]})
    view = client.post("/cds-services/patient-chart-review", json=body)
    mentions = rt.storage.decision_log.get(view.headers["X-Decision-Id"])["notes"]["mentions"]
    decided = {m["label"]: (m["status"], m["decidedBy"]) for m in mentions}
    assert decided == {"Aleve": (NEGATED, "baseline"), "Motrin": (PRESENT, "llm")}
    rt.reasoner.close()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # an allergy cue reaches only its own clause, an inline header governs what follows it
        (
            "Allergic to penicillin; takes aspirin daily.",
            {("allergy", "class:penicillins"), ("medication", "ingredient:aspirin")},
        ),
        (
            "Allergies: penicillin. Meds: aspirin 81 mg daily.",
            {("allergy", "class:penicillins"), ("medication", "ingredient:aspirin")},
        ),
        # the same finding with two statuses in one sentence is two mentions
        ("No melena but had a GI bleed in 2019.", {("condition", "peptic-ulcer-gi-bleed")}),
    ],
)
def test_clauses_and_inline_headers(reader, text, expected):
    assert {(m.kind, m.concept) for m in reader.read(doc(text))} == expected


def test_a_negated_and_a_historical_mention_of_one_finding_are_both_kept(reader, content):
    mentions = reader.read(doc("No melena but had a GI bleed in 2019."))
    assert sorted(m.status for m in mentions) == [HISTORICAL, NEGATED]
    facts = facts_for(content, reader, {}, [doc("No melena but had a GI bleed in 2019.")])
    (bleed,) = facts.conditions  # the history is not lost behind the denial
    assert bleed.evidence.status == HISTORICAL


@pytest.mark.parametrize(
    ("text", "label", "status"),
    [
        ("Hold citalopram given QT prolongation.", "QT prolongation", PRESENT),  # "given" ends "hold"
        ("Aspirin discontinued given GI bleed.", "GI bleed", PRESENT),
        ("Pt does not deny alcohol abuse.", "alcohol abuse", PRESENT),  # a double negation
        ("Labs in AM. Father has CKD.", "CKD", SOMEONE_ELSE),  # "AM." ends a sentence
        ("Hematochezia for two days.", "Hematochezia", PRESENT),
        ("Takes Excedrin for headaches.", "Excedrin", PRESENT),
    ],
)
def test_scope_and_names_found_on_held_out_notes(reader, text, label, status):
    m = only(reader.read(doc(text)), label=label)
    assert m.status == status


@pytest.mark.parametrize(
    ("text", "status"),
    [
        ("Plan: start lisinopril 10 mg daily.", "hypothetical"),  # an intention, not yet taken
        ("She asks whether lisinopril is safe.", "hypothetical"),
        ("Started lisinopril last month.", "present"),
        ("Since the start of lisinopril, dry cough.", "present"),
    ],
)
def test_plans_to_start_are_hypothetical_and_a_start_that_happened_is_not(reader, text, status):
    assert only(reader.read(doc(text)), kind=MEDICATION).status == status


def test_an_undated_note_still_fires_its_card(client):
    """Cards carry no nulls: an undated note once made the card fail its checks and vanish."""
    note = {
        "resourceType": "DocumentReference",
        "id": "undated",
        "status": "current",
        "subject": {"reference": f"Patient/{PATIENT_ID}"},
        "content": [{"attachment": {"contentType": "text/plain", "data": "VGFrZXMgQWxldmUgZGFpbHku"}}],
    }  # "Takes Aleve daily."
    body = order_sign({"draftOrders": ["Warfarin Sodium 5 MG Oral Tablet"], "resources": [note]})
    cards = client.post("/cds-services/medication-order-check", json=body).get_json()["cards"]
    (card,) = cards
    assert "Aleve" in card["summary"] and "undated" in card["detail"]
    assert "documentDate" not in card["extension"]["org.cds-service.note-evidence"][0]


def test_a_card_that_fails_its_checks_is_said_on_the_data_quality_card(content, reader):
    from cds_service.protocol.cards import RejectedCard, data_quality_card

    facts = facts_for(
        content, reader, {"draftOrders": ["Warfarin Sodium 5 MG Oral Tablet"]}, [doc("Takes Aleve.")]
    )
    rule = content.rulebook.by_id("ddi-warfarin-nsaid")
    result = evaluate_rule(rule, facts, content.terminology)
    rejected = [RejectedCard(result.findings[0], "null or empty values at: summary")]
    card = data_quality_card([result], None, [], rejected)
    assert card["extension"]["org.cds-service.data-quality"]["checks"] == [
        f"ddi-warfarin-nsaid@{rule.version}"
    ]
    assert "its card failed the card checks" in card["detail"]
    assert data_quality_card([result], None, [], []) is None  # fired and shown: nothing to say
