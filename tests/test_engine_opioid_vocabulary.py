"""The engine vocabulary added for the CDC opioid rule packs: one test (or a few) per addition.

Medication filters supply_days / validity_days / supply_or_validity_days / authored_within_days_before;
total_mme
restricted by a medication filter; observation `result`; condition `active: any`; event `diagnosis_in` and
`touched_within_days`; the `coverage` predicate (with covered_days and minus_months); rule-level `max_cards`;
and the facts behind them (Condition.encounter / verification, Event.updated / diagnoses).
"""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest
import yaml

from cds_service.clinical.engine import Evaluation, evaluate_rule
from cds_service.clinical.predicates import covered_days, minus_months, qualitative_result
from cds_service.clinical.rule_cases import PATIENT_ID, USER, CaseBuilder
from cds_service.clinical.rule_model import load_rule
from cds_service.runtime import Runtime
from cds_service.settings import Settings

TODAY = date(2026, 6, 1)
OXY = {"text": "oxycodone hydrochloride 5 MG Oral Tablet", "code": "rxnorm|1049621", "category": "community"}
OPIOIDS = "opioid-analgesics-with-ambulatory-misuse-potential"
SUBJECT = {"reference": f"Patient/{PATIENT_ID}"}


@pytest.fixture(scope="module")
def rt(tmp_path_factory):
    runtime = Runtime.load(
        Settings.load({"data_dir": str(tmp_path_factory.mktemp("data")), "llm": "off"}), strict=True
    )
    yield runtime
    runtime.close()


def _facts(rt, case: dict):
    resources, drafts = CaseBuilder(TODAY).build(case)
    return rt.content.facts_builder.build(
        resources, patient_id=PATIENT_ID, draft_orders=drafts, today=TODAY, user_id=USER
    )


def holds(rt, case: dict, condition: dict, bindings: dict | None = None) -> bool:
    facts = _facts(rt, case)
    b = dict(bindings or {})
    if "draft" in b:
        b["draft"] = facts.draft_orders[b["draft"]]
    return Evaluation(facts, rt.content.terminology).test(condition, b) is not None


# -- medication filters ----------------------------------------------------------------------------


def test_supply_days_reads_only_the_expected_supply(rt):
    only_validity = {"draftOrders": [{**OXY, "validityDays": 90}]}
    assert not holds(rt, only_validity, {"draft": {"supply_days": {"gte": 28}}}, {"draft": 0})
    assert holds(
        rt, only_validity, {"draft": {"days_supplied": {"gte": 28}}}, {"draft": 0}
    )  # unchanged meaning
    assert holds(
        rt, {"draftOrders": [{**OXY, "supplyDays": 27}]}, {"draft": {"supply_days": {"lt": 28}}}, {"draft": 0}
    )


def test_validity_days_reads_only_the_validity_period(rt):
    both = {"draftOrders": [{**OXY, "supplyDays": 10, "validityDays": 92}]}
    assert holds(rt, both, {"draft": {"validity_days": {"gte": 28}}}, {"draft": 0})
    assert not holds(
        rt,
        {"draftOrders": [{**OXY, "supplyDays": 30}]},
        {"draft": {"validity_days": {"gte": 1}}},
        {"draft": 0},
    )


def test_supply_or_validity_days_takes_the_longer_known_one(rt):
    cond = {"draft": {"supply_or_validity_days": {"gte": 28}}}
    assert holds(rt, {"draftOrders": [{**OXY, "supplyDays": 10, "validityDays": 92}]}, cond, {"draft": 0})
    assert holds(rt, {"draftOrders": [{**OXY, "supplyDays": 30}]}, cond, {"draft": 0})
    assert not holds(rt, {"draftOrders": [{**OXY, "supplyDays": 10, "validityDays": 20}]}, cond, {"draft": 0})
    assert not holds(rt, {"draftOrders": [dict(OXY)]}, cond, {"draft": 0})  # unknown: false


def test_authored_within_days_before_a_binding(rt):
    case = {
        "medications": [{**OXY, "status": "completed", "authoredDaysAgo": 70}],
        "observations": [{"code": "loinc|11246-6", "valueCode": "snomed|260385009", "daysAgo": 60}],
    }
    cond = {
        "all": [
            {"observation": {"code_in": "http://loinc.org|11246-6", "as": "screen"}},
            {
                "medication": {
                    "among": "history",
                    "authored_within_days_before": {"binding": "screen", "days": 31},
                }
            },
        ]
    }
    assert holds(rt, case, cond)  # ordered 10 days before the test
    case["medications"][0]["authoredDaysAgo"] = 95  # 35 days before: outside
    assert not holds(rt, case, cond)
    case["medications"][0]["authoredDaysAgo"] = 60  # the same day: not *before*
    assert not holds(rt, case, cond)


# -- total_mme with a medication filter ---------------------------------------------------------------


def test_total_mme_counts_only_orders_matching_the_filter(rt):
    case = {
        "medications": [
            {
                **OXY,
                "authoredDaysAgo": 2,
                "supplyDays": 7,
                "dose": {"value": 2, "unit": "tablet"},
                "perDay": 4,
            }
        ],  # 60 MME/day, acute
        "draftOrders": [{**OXY, "supplyDays": 30, "dose": {"value": 1, "unit": "tablet"}, "perDay": 4}],
    }  # 30
    assert holds(rt, case, {"total_mme": {"gte": 90}})  # unchanged meaning: every active and draft order
    assert not holds(
        rt, case, {"total_mme": {"gte": 50, "in": OPIOIDS, "supply_or_validity_days": {"gte": 28}}}
    )
    assert holds(
        rt, case, {"total_mme": {"gte": 30, "lt": 31, "in": OPIOIDS, "supply_or_validity_days": {"gte": 28}}}
    )


# -- observation result -------------------------------------------------------------------------------


def _obs(**fields):
    from cds_service.clinical.facts import Observation

    base = dict(
        id="o",
        name="test",
        codes=(),
        value=None,
        unit=None,
        value_codes=(),
        value_text=None,
        interpretation=(),
        when=None,
        status="final",
        categories=frozenset(),
    )
    return Observation(**{**base, **fields})


def test_qualitative_result_from_string_code_or_interpretation():
    assert qualitative_result(_obs(value_text="POS")) == "positive"
    assert qualitative_result(_obs(value_text="Negative")) == "negative"
    assert qualitative_result(_obs(value_text="see note")) is None
    assert qualitative_result(_obs(value_codes=(("http://snomed.info/sct", "10828004"),))) == "positive"
    assert qualitative_result(_obs(value_codes=(("http://snomed.info/sct", "260385009"),))) == "negative"
    interp = (("http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation", "POS"),)
    assert qualitative_result(_obs(interpretation=interp)) == "positive"
    assert qualitative_result(_obs(value=150.0, interpretation=interp)) is None  # a value wins: not read


def test_observation_result_filter(rt):
    case = {"observations": [{"code": "loinc|70146-6", "valueCode": "snomed|10828004", "daysAgo": 30}]}
    assert holds(
        rt, case, {"observation": {"code_in": "cocaine-urine-drug-screening-tests", "result": "positive"}}
    )
    assert not holds(
        rt, case, {"observation": {"code_in": "cocaine-urine-drug-screening-tests", "result": "negative"}}
    )


# -- conditions ---------------------------------------------------------------------------------------


def test_condition_active_any_ignores_clinical_status_but_not_refuted(rt):
    sickle = {"code": "snomed|127040003", "text": "Sickle cell anemia"}
    inactive = {"conditions": [{**sickle, "clinicalStatus": "inactive"}]}
    assert not holds(rt, inactive, {"condition": {"in": "sickle-cell-diseases"}})  # unchanged default
    assert holds(rt, inactive, {"condition": {"in": "sickle-cell-diseases", "active": "any"}})
    refuted = {
        "resources": [
            {
                "resourceType": "Condition",
                "id": "c1",
                "subject": SUBJECT,
                "code": {"coding": [{"system": "http://snomed.info/sct", "code": "127040003"}]},
                "verificationStatus": {
                    "coding": [
                        {
                            "system": "http://terminology.hl7.org/CodeSystem/condition-ver-status",
                            "code": "refuted",
                        }
                    ]
                },
            }
        ]
    }
    assert not holds(rt, refuted, {"condition": {"in": "sickle-cell-diseases", "active": "any"}})
    facts = _facts(rt, refuted)
    assert facts.conditions[0].verification == frozenset({"refuted"})


# -- events ---------------------------------------------------------------------------------------------


def _encounter(eid: str, start: str, diagnoses=()):
    r = {
        "resourceType": "Encounter",
        "id": eid,
        "status": "finished",
        "subject": SUBJECT,
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
        "period": {"start": start, "end": start},
    }
    if diagnoses:
        r["diagnosis"] = [{"condition": {"reference": ref}} for ref in diagnoses]
    return r


def _cancer_dx(cid: str, encounter: str | None = None, code: str = "C34.90"):
    r = {
        "resourceType": "Condition",
        "id": cid,
        "subject": SUBJECT,
        "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10-cm", "code": code}]},
        "clinicalStatus": {
            "coding": [
                {"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "resolved"}
            ]
        },
    }
    if encounter:
        r["encounter"] = {"reference": encounter}
    return r


def test_event_diagnosis_in_links_conditions_and_encounters(rt):
    case = {
        "resources": [
            _encounter("e1", "2026-02-01"),
            _encounter("e2", "2026-04-01", ["Condition/dx2"]),
            _encounter("e3", "2026-05-01"),
            _cancer_dx("dx1", "Encounter/e1"),
            _cancer_dx("dx2"),
            _cancer_dx("dx3", "Encounter/e3", code="J45.909"),
        ]
    }  # asthma: not cancer
    facts = _facts(rt, case)
    assert {c.id: c.encounter for c in facts.conditions}["dx1"] == "Encounter/e1"
    assert {e.id: e.diagnoses for e in facts.events}["e2"] == frozenset({"Condition/dx2"})
    two = {
        "event": {
            "type": "Encounter",
            "diagnosis_in": "cdc-malignant-cancer-conditions",
            "within_days": 365,
            "count": {"gte": 2},
        }
    }
    assert holds(rt, case, two)  # e1 (Condition.encounter) and e2 (Encounter.diagnosis), any clinical status
    assert not holds(rt, case, {"event": {**two["event"], "count": {"gte": 3}}})
    assert not holds(rt, case, {"event": {**two["event"], "within_days": 90, "count": {"gte": 2}}})


def test_diagnosis_in_makes_the_rule_read_conditions(rt, tmp_path):
    rule = {
        "id": "probe-rule",
        "version": "1.0.0",
        "title": "probe",
        "status": "draft",
        "hooks": ["patient-view"],
        "indicator": "info",
        "when": {"event": {"type": "Encounter", "diagnosis_in": "cdc-malignant-cancer-conditions"}},
        "card": {"summary": "probe"},
        "references": [{"title": "probe", "url": "https://example.org"}],
        "cases": {"fire": [{"name": "a"}, {"name": "b"}], "silent": [{"name": "c"}, {"name": "d"}]},
    }
    path = tmp_path / "rules" / "probe" / "probe-rule.yaml"
    path.parent.mkdir(parents=True)
    path.write_text(yaml.safe_dump(rule))
    loaded = load_rule(path, tmp_path / "rules", rt.content.terminology)
    assert loaded.reads == frozenset({"Encounter", "Condition"})


def test_event_touched_within_days_counts_meta_last_updated(rt):
    plan = {
        "resourceType": "CarePlan",
        "id": "cp1",
        "status": "active",
        "intent": "plan",
        "subject": SUBJECT,
        "created": "2025-12-01",
        "meta": {"lastUpdated": "2026-05-20T10:00:00Z"},
        "category": [{"coding": [{"system": "http://loinc.org", "code": "80764-4"}]}],
    }
    case = {"resources": [plan]}
    assert _facts(rt, case).events[0].updated is not None
    assert not holds(rt, case, {"event": {"type": "CarePlan", "within_days": 90}})  # unchanged meaning
    assert holds(rt, case, {"event": {"type": "CarePlan", "touched_within_days": 90}})
    plan["meta"]["lastUpdated"] = "2026-01-02T10:00:00Z"
    assert not holds(rt, case, {"event": {"type": "CarePlan", "touched_within_days": 90}})


# -- coverage -------------------------------------------------------------------------------------------


def test_minus_months_is_calendar_arithmetic():
    assert minus_months(date(2026, 6, 1), 1) == date(2026, 5, 1)
    assert minus_months(date(2026, 3, 31), 1) == date(2026, 2, 28)
    assert minus_months(date(2026, 1, 15), 2) == date(2025, 11, 15)
    assert minus_months(date(2024, 5, 31), 3) == date(2024, 2, 29)


def test_covered_days_cuts_merges_and_counts_end_minus_start():
    d = date
    assert covered_days([(d(2026, 5, 24), d(2026, 5, 31))], d(2026, 5, 22), d(2026, 6, 1)) == 7
    assert (
        covered_days(
            [(d(2026, 5, 1), d(2026, 5, 5)), (d(2026, 5, 6), d(2026, 5, 10))], d(2026, 5, 1), d(2026, 5, 31)
        )
        == 9
    )  # adjoining pieces merge
    assert (
        covered_days(
            [(d(2026, 5, 1), d(2026, 5, 10)), (d(2026, 5, 5), d(2026, 5, 12))], d(2026, 5, 1), d(2026, 5, 31)
        )
        == 11
    )  # overlaps count once
    assert covered_days([(d(2026, 1, 1), d(2026, 1, 10))], d(2026, 5, 1), d(2026, 5, 31)) == 0


def test_coverage_in_the_last_days(rt):
    case = {"medications": [{**OXY, "authoredDaysAgo": 8, "supplyDays": 7}]}
    assert holds(rt, case, {"coverage": {"in": OPIOIDS, "within_days": 10, "days": {"gte": 7}}})
    case["medications"][0]["supplyDays"] = 6
    assert not holds(rt, case, {"coverage": {"in": OPIOIDS, "within_days": 10, "days": {"gte": 7}}})


def test_coverage_in_each_of_the_last_months(rt):
    cond = {"coverage": {"in": OPIOIDS, "each_month_of_last": 3, "days": {"gte": 21}, "as": "days_on"}}
    case = {"medications": [{**OXY, "authoredDaysAgo": 92, "supplyDays": 90}]}  # 2026-03-01 .. 2026-05-30
    facts = _facts(rt, case)
    bound = Evaluation(facts, rt.content.terminology).test(cond, {})
    assert bound is not None and bound["days_on"] == [31, 30, 29]
    case["medications"][0]["supplyDays"] = 62  # ends 2026-05-02: 1 day of the last month
    assert not holds(rt, case, cond)


def test_coverage_leaves_out_drafts_and_filters_status(rt):
    cond = {
        "coverage": {"in": OPIOIDS, "status": ["active", "completed"], "within_days": 10, "days": {"gte": 7}}
    }
    assert not holds(rt, {"draftOrders": [{**OXY, "authoredDaysAgo": 8, "supplyDays": 30}]}, cond)
    assert not holds(
        rt,
        {"medications": [{**OXY, "status": "entered-in-error", "authoredDaysAgo": 8, "supplyDays": 7}]},
        cond,
    )


# -- max_cards ------------------------------------------------------------------------------------------


def test_max_cards_caps_findings_across_draft_orders(rt, tmp_path):
    rule = {
        "id": "probe-cap",
        "version": "1.0.0",
        "title": "probe",
        "status": "active",
        "hooks": ["order-sign"],
        "indicator": "info",
        "foreach": "draft_medication",
        "when": {"draft": {"in": OPIOIDS}},
        "card": {"summary": "probe {{ draft.name }}"},
        "references": [{"title": "probe", "url": "https://example.org"}],
        "cases": {"fire": [{"name": "a"}, {"name": "b"}], "silent": [{"name": "c"}, {"name": "d"}]},
    }
    folder = tmp_path / "rules" / "probe"
    folder.mkdir(parents=True)
    facts = _facts(rt, {"draftOrders": [{**OXY, "supplyDays": 5}, {**OXY, "supplyDays": 6}]})
    (folder / "probe-cap.yaml").write_text(yaml.safe_dump(rule))
    assert (
        len(
            evaluate_rule(
                load_rule(folder / "probe-cap.yaml", tmp_path / "rules", rt.content.terminology),
                facts,
                rt.content.terminology,
            ).findings
        )
        == 2
    )
    (folder / "probe-cap.yaml").write_text(yaml.safe_dump({**rule, "max_cards": 1}))
    capped = load_rule(folder / "probe-cap.yaml", tmp_path / "rules", rt.content.terminology)
    assert capped.max_cards == 1
    assert len(evaluate_rule(capped, facts, rt.content.terminology).findings) == 1


def test_the_additions_are_documented_in_rules_readme():
    readme = (Path(__file__).resolve().parents[1] / "rules" / "README.md").read_text()
    for word in (
        "supply_days",
        "validity_days",
        "supply_or_validity_days",
        "authored_within_days_before",
        "coverage",
        "diagnosis_in",
        "touched_within_days",
        "result",
        "max_cards",
        "active: any",
    ):
        assert word in readme, word
