"""Warm-up: each service answers a synthetic patient once when a worker starts, before it takes calls.

The first real call would otherwise pay for what is built lazily on first use: FHIR resource validators,
marshmallow schemas, Jinja template rendering, the database connection. Measured on a cold worker: the
first order-sign call took ~280 ms against ~2 ms warm. Warm-up calls are not recorded in the decision
log, fetch nothing, and skip the LLM (its text would be cached against a made-up patient).
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from datetime import date
from pathlib import Path

from sqlalchemy.engine import Engine

from ..clinical.rule_cases import CaseBuilder
from .client_auth import ClientIdentity
from .registry import ServiceRegistry

log = logging.getLogger(__name__)

WARM_UP_CLIENT = ClientIdentity(id="warm-up", tenant=None, authenticated=False)

# Drugs whose rules fire in most packs (an interaction, an opioid) and one resource of every type a
# service reads, so each type's validator is built and the card, note and observation paths run once.
CASE = {
    "patient": {"age": 70},
    "medications": [
        {"text": "Warfarin Sodium 5 MG Oral Tablet", "code": "rxnorm|855332"},
        {"text": "oxycodone hydrochloride 5 MG Oral Tablet", "code": "rxnorm|1049621", "supplyDays": 30},
        {"resourceType": "MedicationStatement", "text": "Naproxen 500 MG Oral Tablet"},
        {"resourceType": "MedicationDispense", "text": "Omeprazole 20 MG Delayed Release Oral Capsule"},
        {"resourceType": "MedicationAdministration", "text": "Acetaminophen 500 MG Oral Tablet"},
        {"text": "Lisinopril 10 MG Oral Tablet", "code": "rxnorm|314076", "byReference": True},
    ],
    "conditions": [
        {"code": "snomed|49436004", "text": "Atrial fibrillation", "category": "problem-list-item"}
    ],
    "allergies": [{"text": "Penicillin V", "criticality": "high"}],
    "observations": [{"code": "loinc|33914-3", "value": 25, "unit": "mL/min/{1.73_m2}", "daysAgo": 10}],
    "notes": ["Patient reports taking ibuprofen daily for knee pain. Denies alcohol use."],
    "reports": [{"text": "Duodenal ulcer with a visible vessel.", "title": "Upper endoscopy", "daysAgo": 20}],
    "draftOrders": [
        {"text": "Ibuprofen 400 MG Oral Tablet", "code": "rxnorm|197806"},
        {"text": "diazepam 5 MG Oral Tablet", "code": "rxnorm|197591"},
    ],
}


def _searchset(resources: list[dict]) -> dict:
    return {"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": r} for r in resources]}


def synthetic_request(service, today: date) -> dict:
    """A complete request for `service`: every prefetch key filled from the synthetic patient."""
    builder = CaseBuilder(
        today, patient_id="warm-up-patient", user="Practitioner/warm-up", id_prefix="warm-up-"
    )
    resources, drafts = builder.build(CASE)
    by_type: dict[str, list[dict]] = {}
    for resource in [*resources, *builder.referenced]:
        by_type.setdefault(resource["resourceType"], []).append(resource)
    prefetch = {}
    for key, resource_type in service.resource_types.items():
        if resource_type == "Patient":
            prefetch[key] = by_type["Patient"][0]
        else:
            prefetch[key] = _searchset(by_type.get(resource_type, []))
    context: dict = {"userId": "Practitioner/warm-up", "patientId": "warm-up-patient"}
    if service.hook in ("order-sign", "order-select"):
        context["draftOrders"] = {
            "resourceType": "Bundle",
            "type": "collection",
            "entry": [{"resource": d} for d in drafts],
        }
    if service.hook == "order-select":
        context["selections"] = [f"{d['resourceType']}/{d['id']}" for d in drafts[:1]]
    return {"hook": service.hook, "hookInstance": str(uuid.uuid4()), "context": context, "prefetch": prefetch}


def validation_samples(folder: Path, types: set[str], per_type: int = 5, max_files: int = 8) -> list[dict]:
    """A few resources of each type from the bundled Synthea charts: the FHIR models build their
    validators for each nested datatype on first use (a first chart cost 0.93 ms per resource to
    validate, the next ones 0.26-0.34), which the synthetic patient alone does not reach."""
    found: dict[str, list[dict]] = {t: [] for t in types}
    for path in sorted(folder.glob("*.json"))[:max_files]:
        try:
            bundle = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        for entry in bundle.get("entry") or []:
            resource = entry.get("resource") or {}
            bucket = found.get(resource.get("resourceType"))
            if bucket is not None and len(bucket) < per_type:
                bucket.append(resource)
        if all(len(b) >= per_type for b in found.values()):
            break
    return [r for bucket in found.values() for r in bucket]


def warm_up(
    registry: ServiceRegistry,
    engine: Engine | None = None,
    today: date | None = None,
    samples: Path | None = None,
) -> dict[str, float]:
    """Run every service once, unrecorded, validate sample resources of every type the services read
    (`samples`: a folder of Synthea bundles) and open a database connection; returns ms per step.
    A failure is logged, never raised: warm-up only saves time, it must not stop a worker serving."""
    today = today or date.today()
    spent: dict[str, float] = {}
    if samples is not None and samples.is_dir():
        started = time.perf_counter()
        types = {t for s in registry.services for t in s.resource_types.values()} | {"Medication"}
        try:
            for resource in validation_samples(samples, types):
                registry.pipeline.validator.examine(resource, "warm-up")
        except Exception:
            log.warning("warm-up validation of sample resources failed", exc_info=True)
        spent["validation"] = round((time.perf_counter() - started) * 1000, 1)
    if engine is not None:
        try:
            with engine.connect() as conn:  # the pool's first connection (and SQLite's WAL set-up)
                conn.exec_driver_sql("SELECT 1")
        except Exception:
            log.warning("warm-up could not reach the database", exc_info=True)
    for service in registry.services:
        started = time.perf_counter()
        try:
            registry.pipeline.warm(
                service.id, registry.by_hook(service.id), synthetic_request(service, today)
            )
        except Exception:
            log.warning("warm-up of %s (%s) failed", service.id, service.hook, exc_info=True)
        spent[f"{service.id}/{service.hook}"] = round((time.perf_counter() - started) * 1000, 1)
    log.info("warm-up: %d services in %.0f ms", len(registry.services), sum(spent.values()))
    return spent
