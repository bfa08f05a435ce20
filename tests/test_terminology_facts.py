"""Terminology and facts: ingredients from codes or names, ICD-10-CM hierarchy, MME, eGFR."""

from __future__ import annotations

from datetime import date

import pytest

from cds_service.canonical import content_hash
from cds_service.clinical.facts import FactsBuilder
from cds_service.clinical.mme import MmeCalculator
from cds_service.clinical.renal import ckd_epi_2021, creatinine_mg_dl, latest_egfr
from cds_service.clinical.rule_cases import PATIENT_ID, CaseBuilder
from cds_service.clinical.terminology import ICD10CM, RXNORM, load_terminology
from cds_service.settings import Settings

SETTINGS = Settings.load({"llm": "off"})


@pytest.fixture(scope="module")
def terminology():
    return load_terminology(SETTINGS.fhir_dir / "terminology")


@pytest.fixture(scope="module")
def builder(terminology):
    return FactsBuilder(terminology, MmeCalculator.load(SETTINGS.fhir_dir))


@pytest.mark.parametrize(
    "codings, text, expected",
    [
        ([(RXNORM, "11289")], "", {"warfarin"}),  # ingredient code
        ([(RXNORM, "1049621")], "", {"oxycodone"}),  # clinical drug code only (map)
        ([(RXNORM, "855332")], "", {"warfarin"}),  # Synthea SCD code only (map)
        (
            [],
            "Acetaminophen 325 MG / HYDROcodone Bitartrate 5 MG",
            {"acetaminophen", "hydrocodone"},
        ),  # tall-man
        ([], "Lasix 40mg", {"furosemide"}),  # brand name
        ([], "Xyz unknown product", set()),
    ],
)
def test_ingredients_from_codes_names_and_brands(terminology, codings, text, expected):
    assert set(terminology.ingredients(codings, [text])) == expected


def test_icd10cm_parents_and_ranges_match_descendants(terminology):
    cancer = "cdc-malignant-cancer-conditions"
    assert terminology.codes_match(cancer, [(ICD10CM, "C18.9")])  # in range C15-C26 / parent C18
    assert terminology.codes_match(cancer, [("http://hl7.org/fhir/sid/icd-10", "C50.911")])  # alias system
    assert not terminology.codes_match(cancer, [(ICD10CM, "E11.9")])


def _facts(builder, case, today=date(2026, 11, 26)):
    resources, drafts = CaseBuilder(today).build(case)
    return builder.build(resources, patient_id=PATIENT_ID, draft_orders=drafts, today=today)


@pytest.mark.parametrize(
    "order, expected_mme",
    [
        # CDC factors as coded in the reference CDS: oxycodone 1.5; fentanyl patch 2.4 per mcg/h; methadone
        # 21-40 mg/day band factor 8; hydrocodone 1.
        (
            {
                "text": "oxycodone hydrochloride 5 MG Oral Tablet",
                "code": "rxnorm|1049621",
                "dose": {"value": 1, "unit": "tablet"},
                "perDay": 4,
            },
            30.0,
        ),
        (
            {
                "text": "72 HR fentanyl 0.025 MG/HR Transdermal System",
                "code": "rxnorm|245134",
                "dose": {"value": 1, "unit": "patch"},
                "perDay": 0.3333,
            },
            60.0,
        ),
        (
            {
                "text": "methadone hydrochloride 10 MG Oral Tablet",
                "code": "rxnorm|864706",
                "dose": {"value": 1, "unit": "tablet"},
                "perDay": 3,
            },
            240.0,
        ),
        (
            {
                "text": "Acetaminophen 325 MG / Hydrocodone Bitartrate 7.5 MG Oral Tablet",
                "code": "rxnorm|857005",
                "dose": {"value": 1, "unit": "tablet"},
                "perDay": 4,
            },
            30.0,
        ),
    ],
)
def test_mme_per_day(builder, order, expected_mme):
    facts = _facts(builder, {"medications": [order]})
    assert facts.medications[0].mme_per_day == expected_mme


def test_unknown_dose_gives_no_mme(builder):
    facts = _facts(
        builder,
        {"medications": [{"text": "oxycodone hydrochloride 5 MG Oral Tablet", "code": "rxnorm|1049621"}]},
    )
    assert facts.medications[0].mme_per_day is None


def test_ckd_epi_2021_matches_the_published_equation():
    # Inker 2021, female 50 y, Scr 1.0 mg/dL: 142 * (1.0/0.7)^-1.2 * 0.9938^50 * 1.012 = 68.6
    assert ckd_epi_2021(1.0, 50, "female") == pytest.approx(68.6, abs=0.1)
    # male 60 y, Scr 0.8: 142 * (0.8/0.9)^-0.302 * 0.9938^60 = 142 * 1.0362 * 0.6886 = 101.3
    assert ckd_epi_2021(0.8, 60, "male") == pytest.approx(101.3, abs=0.1)
    assert creatinine_mg_dl(88.42, "umol/L") == pytest.approx(1.0)
    with pytest.raises(ValueError):
        ckd_epi_2021(1.0, 15, "female")


def test_latest_egfr_prefers_the_newest_result_measured_or_computed(builder):
    facts = _facts(
        builder,
        {
            "patient": {"age": 50, "gender": "female"},
            "observations": [
                {"code": "loinc|33914-3", "value": 40, "daysAgo": 30},
                {"code": "loinc|2160-0", "value": 1.0, "unit": "mg/dL", "daysAgo": 2},
            ],
        },
    )
    egfr = latest_egfr(facts)
    assert egfr.source.startswith("computed") and egfr.value == pytest.approx(68.6, abs=0.1)


def test_conditions_allergies_and_statuses(builder):
    facts = _facts(
        builder,
        {
            "conditions": [
                {"text": "Hypertension", "code": "snomed|38341003"},
                {"text": "Old fracture", "clinicalStatus": "resolved"},
            ],
            "allergies": ["Penicillins", {"text": "Codeine", "clinicalStatus": "inactive"}],
        },
    )
    assert [c.active for c in facts.conditions] == [True, False]
    assert facts.allergies[0].named_classes == {"penicillins"} and not facts.allergies[1].active


def test_a_concept_recorded_by_code_alone_is_named_by_its_ingredients_and_code(builder):
    """No text and no display: the card must still say what was ordered, not "unnamed"."""
    draft = {
        "resourceType": "MedicationRequest",
        "id": "coded-only",
        "status": "draft",
        "intent": "order",
        "subject": {"reference": f"Patient/{PATIENT_ID}"},
        "medicationCodeableConcept": {"coding": [{"system": RXNORM, "code": "855332"}]},
    }
    condition = {
        "resourceType": "Condition",
        "id": "coded-condition",
        "subject": {"reference": f"Patient/{PATIENT_ID}"},
        "code": {"coding": [{"system": "http://snomed.info/sct", "code": "49436004"}]},
    }
    unknown = {**draft, "id": "unknown-code", "medicationCodeableConcept": {"coding": [{"code": "X1"}]}}
    facts = builder.build(
        [condition], patient_id=PATIENT_ID, draft_orders=[draft, unknown], today=date(2026, 11, 26)
    )
    assert [m.name for m in facts.draft_orders] == ["warfarin (RxNorm 855332)", "code X1"]
    assert [c.name for c in facts.conditions] == ["SNOMED CT 49436004"]


def _condition(status: str) -> dict:
    return {
        "resourceType": "Condition",
        "id": "ckd",
        "subject": {"reference": f"Patient/{PATIENT_ID}"},
        "clinicalStatus": {
            "coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": status}]
        },
        "code": {"coding": [{"system": "http://snomed.info/sct", "code": "431855005"}], "text": "CKD 1"},
    }


def test_facts_read_from_the_same_content_are_reused_and_changed_content_is_read_anew(terminology):
    """The per-resource facts cache is keyed by content, never by id: a Condition resolved since the last
    call (same id) is read again; the same content, as a new object, gives the very facts read before."""
    builder = FactsBuilder(terminology, cache_size=10)
    plain = FactsBuilder(terminology, cache_size=0)

    def build(b, resource):
        return b.build([resource], patient_id=PATIENT_ID, digests={id(resource): content_hash(resource)})

    first = build(builder, _condition("active"))
    assert [c.active for c in first.conditions] == [True]
    again = build(builder, _condition("active"))
    assert again.conditions[0] is first.conditions[0]  # reused
    resolved = build(builder, _condition("resolved"))
    assert [c.active for c in resolved.conditions] == [False]
    for status in ("active", "resolved"):
        assert build(builder, _condition(status)).conditions == build(plain, _condition(status)).conditions
    # Without a content hash nothing is reused (a resource nobody screened)
    unscreened = _condition("active")
    assert builder.build([unscreened], patient_id=PATIENT_ID).conditions[0] is not first.conditions[0]


def test_value_set_membership_kept_per_process_depends_on_the_drug(builder, terminology):
    """The engine keeps med_in answers for the process, keyed by the value sets and the drug: two drugs
    asked about the same value sets get their own answers, in either order."""
    from cds_service.clinical.engine import Evaluation

    def med(code: str, text: str) -> dict:
        return {
            "resourceType": "MedicationRequest",
            "id": code,
            "status": "active",
            "intent": "order",
            "subject": {"reference": f"Patient/{PATIENT_ID}"},
            "medicationCodeableConcept": {"coding": [{"system": RXNORM, "code": code}], "text": text},
        }

    facts = builder.build(
        [med("197806", "Ibuprofen 400 MG Oral Tablet"), med("855332", "Warfarin Sodium 5 MG Oral Tablet")],
        patient_id=PATIENT_ID,
    )
    ibuprofen, warfarin = sorted(facts.medications, key=lambda m: m.name)
    assert "ibuprofen" in ibuprofen.ingredients and "warfarin" in warfarin.ingredients
    for order in ((ibuprofen, warfarin), (warfarin, ibuprofen)):
        terminology.membership.clear()
        answers = {m.name: Evaluation(facts, terminology).med_in(["nsaids"], m) for m in order}
        assert answers == {ibuprofen.name: True, warfarin.name: False}
        assert Evaluation(facts, terminology).med_in("anticoagulants", warfarin) is True
        assert Evaluation(facts, terminology).med_in("anticoagulants", ibuprofen) is False
