"""Benchmark: facts building + evaluation of every active rule for a patient with ~1,000 FHIR resources.

Prints the median (and p90) over repeated runs, pinned to one CPU core. Target: median under 100 ms.
The patient is built from the bundled Synthea records (fhir/samples/synthea-r4): the clinical
resources of the largest records, re-pointed to one patient, until about 1,000 resources; plus a
handful of draft orders so order-sign rules have something to check.

    .venv/bin/python benchmarks/rules_speed.py [--runs 50] [--resources 1000] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cds_service.clinical.engine import evaluate  # noqa: E402
from cds_service.clinical.rule_cases import CaseBuilder  # noqa: E402
from cds_service.ehr.validation import ResourceValidator  # noqa: E402
from cds_service.runtime import Content  # noqa: E402
from cds_service.settings import Settings  # noqa: E402

CLINICAL = {
    "Observation",
    "Condition",
    "MedicationRequest",
    "Encounter",
    "Procedure",
    "AllergyIntolerance",
    "CarePlan",
    "DiagnosticReport",
    "Immunization",
}
PATIENT_ID = "bench-patient"


def build_patient(target: int) -> tuple[list[dict], list[dict]]:
    samples = sorted(
        (ROOT / "fhir" / "samples" / "synthea-r4").glob("*.json"), key=lambda p: -p.stat().st_size
    )
    resources: list[dict] = []
    patient = None
    for path in samples:
        bundle = json.loads(path.read_text())
        for entry in bundle["entry"]:
            r = entry["resource"]
            if r["resourceType"] == "Patient" and patient is None:
                patient = dict(r, id=PATIENT_ID)
            elif r["resourceType"] in CLINICAL and len(resources) < target - 1:
                r = dict(r)
                for key in ("subject", "patient"):
                    if key in r:
                        r[key] = {"reference": f"Patient/{PATIENT_ID}"}
                resources.append(r)
        if len(resources) >= target - 1:
            break
    _, drafts = CaseBuilder(date.today()).build(
        {
            "draftOrders": [
                "Ibuprofen 400 MG Oral Tablet",
                "Simvastatin 40 MG Oral Tablet",
                "Metformin 500 MG Oral Tablet",
                {
                    "text": "Oxycodone Hydrochloride 5 MG Oral Tablet",
                    "code": "rxnorm|1049621",
                    "supplyDays": 30,
                    "category": "community",
                    "dose": {"value": 1, "unit": "tablet"},
                    "perDay": 4,
                },
            ]
        }
    )
    for d in drafts:
        d["subject"] = {"reference": f"Patient/{PATIENT_ID}"}
    return [patient] + resources, drafts


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--resources", type=int, default=1000)
    parser.add_argument("--json", action="store_true", help="print the figures as JSON too")
    parser.add_argument("--no-pin", action="store_true", help="do not pin the process to one core")
    args = parser.parse_args(argv)
    if hasattr(os, "sched_setaffinity") and not args.no_pin:
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})  # one core

    content = Content.load(Settings.load({"llm": "off"}))
    validator = ResourceValidator()
    resources, drafts = build_patient(args.resources)
    rules = [r for r in content.rulebook.rules if r.status == "active"]

    t0 = time.perf_counter()
    validator.check([(f"r[{i}]", r) for i, r in enumerate(resources + drafts)])
    validate_first = (time.perf_counter() - t0) * 1000
    t0 = time.perf_counter()
    validator.check([(f"r[{i}]", r) for i, r in enumerate(resources + drafts)])
    validate_cached = (time.perf_counter() - t0) * 1000

    timings, fired = [], 0
    for _ in range(args.runs):
        t0 = time.perf_counter()
        facts = content.facts_builder.build(
            resources, patient_id=PATIENT_ID, draft_orders=drafts, user_id="Practitioner/bench"
        )
        results = evaluate(rules, facts, content.terminology)
        timings.append((time.perf_counter() - t0) * 1000)
        fired = sum(1 for r in results if r.outcome == "fired")

    # The chart review on patient-view: every medication the patient takes is the subject of the
    # foreach rules, against all the others (no drafts).
    review_rules = [r for r in rules if "patient-view" in r.hooks]
    review, review_fired, active = [], 0, 0
    for _ in range(args.runs):
        t0 = time.perf_counter()
        facts = content.facts_builder.build(
            resources, patient_id=PATIENT_ID, user_id="Practitioner/bench", hook="patient-view"
        )
        results = evaluate(review_rules, facts, content.terminology)
        review.append((time.perf_counter() - t0) * 1000)
        review_fired = sum(1 for r in results if r.outcome == "fired")
        active = len(facts.active_medications)
    review.sort()

    timings.sort()
    figures = {
        "resources": len(resources),
        "draft_orders": len(drafts),
        "active_rules": len(rules),
        "rules_fired": fired,
        "runs": args.runs,
        "facts_plus_rules_ms_median": round(statistics.median(timings), 2),
        "facts_plus_rules_ms_p90": round(timings[int(0.9 * (len(timings) - 1))], 2),
        "review_rules": len(review_rules),
        "review_active_medications": active,
        "review_rules_fired": review_fired,
        "review_ms_median": round(statistics.median(review), 2),
        "review_ms_p90": round(review[int(0.9 * (len(review) - 1))], 2),
        "validation_ms_first": round(validate_first, 1),
        "validation_ms_cached": round(validate_cached, 1),
        "target_ms": 100,
    }
    print(
        f"patient: {figures['resources']} FHIR resources + {figures['draft_orders']} draft orders; "
        f"{figures['active_rules']} active rules ({figures['rules_fired']} fired)"
    )
    print(
        f"facts + all active rules, one core: median {figures['facts_plus_rules_ms_median']} ms, "
        f"p90 {figures['facts_plus_rules_ms_p90']} ms over {args.runs} runs (target < 100 ms)"
    )
    print(
        f"patient-view chart review ({figures['review_rules']} rules over {active} active medications, "
        f"{review_fired} fired): median {figures['review_ms_median']} ms, p90 {figures['review_ms_p90']} ms"
    )
    print(
        f"FHIR validation of the same resources: {figures['validation_ms_first']} ms first time, "
        f"{figures['validation_ms_cached']} ms when cached by content hash"
    )
    if args.json:
        print(json.dumps(figures))
    return figures


if __name__ == "__main__":
    main()
