"""The sandbox's sample patients as FHIR resources: the bundled Synthea charts and the hand-made ones.

Synthea's charts end years ago (about 2021), and most rules look back a year or less, so the sandbox moves
each chart forward in time, whole days at once, until its newest clinical date is yesterday: intervals,
ages at each event and the order of events stay as recorded. The hand-made patients are written in days
before today, so they need no shift. Transaction bundles' ``urn:uuid:`` references are rewritten to
``Type/id``, as a FHIR server does when it processes the transaction.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

# FHIR date, dateTime and instant with at least a day (a bare year or year-month is left alone: shifting it by
# days is meaningless, and ids or codes could look like one).
_DATE = re.compile(r"^(\d{4})-(\d{2})-(\d{2})(T\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:Z|[+-]\d{2}:\d{2})?)?$")
# Elements never holding a date, even when their value looks like one (an id "2020-01-01", a code).
_NEVER_DATES = {
    "id",
    "reference",
    "code",
    "system",
    "value",
    "display",
    "text",
    "url",
    "fullUrl",
    "versionId",
}
# Dates that do not say when care happened: they do not decide how far a chart is moved.
_NOT_CLINICAL = {"birthDate", "lastUpdated", "deceasedDateTime"}
# Resource types that describe no clinical event of this patient (billing, directory entries).
_NOT_CLINICAL_TYPES = {
    "Claim",
    "ExplanationOfBenefit",
    "Organization",
    "Practitioner",
    "PractitionerRole",
    "Location",
}


def _shift_value(value: str, days: int) -> str:
    match = _DATE.match(value)
    if not match:
        return value
    try:
        day = date(int(match[1]), int(match[2]), int(match[3])) + timedelta(days=days)
    except ValueError:  # 2021-02-30: not a date, leave it as it is
        return value
    return day.isoformat() + (match[4] or "")


def shift_dates(node: Any, days: int) -> Any:
    """Move every FHIR date, dateTime and instant in `node` (a resource, a Bundle, a list) by `days`, in
    place; returns `node`. Strings that are not dates (ids, codes, text) are untouched."""
    if days == 0:
        return node
    if isinstance(node, dict):
        for key, value in node.items():
            if isinstance(value, str):
                if key not in _NEVER_DATES:
                    node[key] = _shift_value(value, days)
            else:
                shift_dates(value, days)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            if isinstance(value, str):
                node[i] = _shift_value(value, days)
            else:
                shift_dates(value, days)
    return node


def _dates(node: Any, key: str = "") -> Iterator[date]:
    if isinstance(node, dict):
        for k, v in node.items():
            if k not in _NOT_CLINICAL and k not in _NEVER_DATES:
                yield from _dates(v, k)
    elif isinstance(node, list):
        for v in node:
            yield from _dates(v, key)
    elif isinstance(node, str):
        match = _DATE.match(node)
        if match:
            try:
                yield date(int(match[1]), int(match[2]), int(match[3]))
            except ValueError:
                pass


def newest_clinical_date(resources: Iterable[dict]) -> date | None:
    """The latest date of care in a chart (birth dates, record metadata and billing resources excluded)."""
    newest = None
    for resource in resources:
        if resource.get("resourceType") in _NOT_CLINICAL_TYPES or resource.get("resourceType") == "Patient":
            continue
        for day in _dates(resource):
            if newest is None or day > newest:
                newest = day
    return newest


def days_to_yesterday(resources: list[dict], today: date) -> int:
    """How many days to move a chart so its newest clinical date is yesterday (0 for an empty chart)."""
    newest = newest_clinical_date(resources)
    return (today - timedelta(days=1) - newest).days if newest else 0


def bundle_resources(bundle: dict) -> list[dict]:
    """The resources of a Bundle (any type), with ``urn:uuid:`` references rewritten to ``Type/id``."""
    entries = [
        e for e in bundle.get("entry") or [] if isinstance(e, dict) and isinstance(e.get("resource"), dict)
    ]
    local = {}
    for entry in entries:
        resource = entry["resource"]
        if entry.get("fullUrl") and resource.get("id"):
            local[entry["fullUrl"]] = f"{resource['resourceType']}/{resource['id']}"
    resources = [json.loads(json.dumps(e["resource"])) for e in entries]  # a private copy
    if local:
        for resource in resources:
            _rewrite_references(resource, local)
    return resources


def _rewrite_references(node: Any, local: dict[str, str]) -> None:
    if isinstance(node, dict):
        ref = node.get("reference")
        if isinstance(ref, str) and ref in local:
            node["reference"] = local[ref]
        for value in node.values():
            if isinstance(value, dict | list):
                _rewrite_references(value, local)
    elif isinstance(node, list):
        for value in node:
            _rewrite_references(value, local)


@dataclass
class SampleChart:
    """One sample patient: who, where from, what it shows, and every resource of the chart."""

    patient_id: str
    origin: str  # synthea | hand-made
    resources: list[dict]
    description: str = ""
    tags: list[str] = field(default_factory=list)
    try_orders: list[dict] = field(default_factory=list)  # [{"code", "display"}]
    demonstrations: list = field(default_factory=list)
    shifted_days: int = 0
    source: str = ""  # file it came from


def synthea_charts(folder: Path, today: date) -> list[SampleChart]:
    charts = []
    for path in sorted(folder.glob("*.json")):
        bundle = json.loads(path.read_text(encoding="utf-8"))
        if bundle.get("resourceType") != "Bundle":
            continue
        resources = bundle_resources(bundle)
        patients = [r for r in resources if r.get("resourceType") == "Patient"]
        if len(patients) != 1:
            continue
        days = days_to_yesterday(resources, today)
        shift_dates(resources, days)
        charts.append(
            SampleChart(
                patients[0]["id"],
                "synthea",
                resources,
                description=_synthea_description(resources),
                shifted_days=days,
                source=path.name,
            )
        )
    return charts


def _synthea_description(resources: list[dict]) -> str:
    """What a Synthea chart holds, in a line: its active medications (that is what the rules read first)."""
    meds = sorted(
        {
            (r.get("medicationCodeableConcept") or {}).get("text") or "a medication"
            for r in resources
            if r.get("resourceType") == "MedicationRequest" and r.get("status") == "active"
        }
    )
    if not meds:
        return "Synthea chart with no active medication orders"
    shown = ", ".join(meds[:4]) + (f" and {len(meds) - 4} more" if len(meds) > 4 else "")
    return f"Synthea chart; active: {shown}"


def sample_charts(fhir_dir: Path, today: date | None = None) -> list[SampleChart]:
    """Every sample chart the sandbox serves: Synthea (shifted) then the hand-made patients."""
    today = today or datetime.now().astimezone().date()
    charts = synthea_charts(fhir_dir / "samples" / "synthea-r4", today)
    handmade = fhir_dir / "samples" / "sandbox" / "patients.yaml"
    if handmade.is_file():
        from .patients import load_patients

        for patient in load_patients(handmade, today):
            charts.append(
                SampleChart(
                    patient.id,
                    "hand-made",
                    patient.resources,
                    description=patient.description,
                    tags=list(patient.tags),
                    try_orders=list(getattr(patient, "try_orders", []) or []),
                    demonstrations=list(patient.demonstrations),
                    source=handmade.name,
                )
            )
    return charts


def sample_bundles(fhir_dir: Path, today: date | None = None) -> list[tuple[str, dict]]:
    """The sample charts as collection Bundles, named by their source: what `cds-service fhir load` turns
    into transactions so another FHIR server serves the same charts as the sandbox."""
    out = []
    for chart in sample_charts(fhir_dir, today):
        name = chart.source if chart.origin == "synthea" else f"{chart.source}#{chart.patient_id}"
        entries = [{"resource": r} for r in chart.resources]
        out.append((name, {"resourceType": "Bundle", "type": "collection", "entry": entries}))
    return out
