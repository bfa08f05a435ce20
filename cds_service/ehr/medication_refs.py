"""Medications named by reference: find the `Medication` each one refers to, or say it stayed unknown.

A `MedicationRequest` (or statement, dispense, administration) may name its drug only through
``medicationReference``. The facts builder resolves a reference to a contained resource or to a
`Medication` the call brought (a prefetch entry, an ``_include``d one: the service templates ask for
``_include=...:medication``, which many servers ignore). What is still missing is read here from the
EHR's FHIR server, ``GET Medication/<id>``, in parallel under the call's FHIR deadline and at most
`MAX_READS` per call. A medication that stays unidentified (no code, no text, no display) is never
dropped silently: the resource is set aside with the reason, so the rules that read medications are
recorded as not evaluable on all the data and the clinician's data-quality card names it.
"""

from __future__ import annotations

import logging
from concurrent.futures import Executor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field

from ..clinical.facts import MEDICATION_TYPES, missing_medication_ref, resolve_medication
from .fhir_client import FhirAccessError, FhirClient

log = logging.getLogger(__name__)

MAX_READS = 50  # Medication reads per call: beyond that the rest are unidentified (and said)


@dataclass
class MedicationReads:
    """What the call did about medications named by reference, for the decision record."""

    read: list[tuple[str, dict]] = field(default_factory=list)  # (where, Medication resource)
    outcomes: list[dict] = field(default_factory=list)  # one per reference looked up on the server
    unidentified: list[tuple[str, dict, str]] = field(default_factory=list)  # (where, resource, why)

    def as_record(self) -> dict:
        return {
            "read": sum(1 for o in self.outcomes if o["outcome"] == "read"),
            "lookups": self.outcomes[:100],
            "unidentified": [
                {"location": where, "medicationReference": _reference(r), "why": why}
                for where, r, why in self.unidentified[:100]
            ],
        }


def _reference(resource: dict) -> str | None:
    reference = resource.get("medicationReference")
    return reference.get("reference") if isinstance(reference, dict) else None


def _index(located: list[tuple[str, dict]]) -> dict[str, dict]:
    return {
        f"Medication/{r.get('id')}": r
        for _, r in located
        if r.get("resourceType") == "Medication" and isinstance(r.get("id"), str)
    }


def _identified_without_target(resource: dict) -> bool:
    reference = resource.get("medicationReference")
    display = reference.get("display") if isinstance(reference, dict) else None
    return isinstance(display, str) and bool(display.strip())


def read_medications(
    located: list[tuple[str, dict]],
    client: FhirClient | None,
    executor: Executor | None,
) -> MedicationReads:
    """Read the referenced Medications the call did not bring; list those that stay unidentified.
    `located` holds (where, resource) of the usable data and of the draft orders."""
    index = _index(located)
    wanted: dict[str, list[tuple[str, dict]]] = {}
    out = MedicationReads()
    for where, r in located:
        if r.get("resourceType") not in MEDICATION_TYPES:
            continue
        target = missing_medication_ref(r, index)
        if target is not None:
            wanted.setdefault(target, []).append((where, r))
        elif _unresolvable(r, index):
            out.unidentified.append((where, r, "its medicationReference names nothing that can be read"))
    if not wanted:
        return out
    targets = list(wanted)
    readable = client is not None and client.allowed
    to_read = targets[:MAX_READS] if readable else []
    found = _read_all(to_read, client, executor, out) if to_read else {}
    for target in targets:
        if target in found:
            continue
        if not readable:
            why = "the request has no fhirServer" if client is None else "fhirServer is not allowed"
            out.outcomes.append({"reference": target, "outcome": "not read", "why": why})
        elif target not in to_read:
            out.outcomes.append(
                {"reference": target, "outcome": "not read", "why": f"over {MAX_READS} reads per call"}
            )
        for where, r in wanted[target]:
            if not _identified_without_target(r):
                problem = next((o["why"] for o in out.outcomes if o["reference"] == target), "not read")
                why = f"the medication could not be identified: {target} {problem}"
                out.unidentified.append((where, r, why))
    return out


def _unresolvable(resource: dict, index: dict) -> bool:
    """A reference that is neither readable nor resolved (a contained id that is absent, a urn:uuid) and
    no display to name the drug by."""
    if resource.get("medicationCodeableConcept") is not None:
        return False
    ref = _reference(resource)
    if ref is None:
        return not _identified_without_target(resource) and "medicationReference" in resource
    if resolve_medication(ref, resource, index) is not None:
        return False
    return not _identified_without_target(resource)


def _read_all(targets: list[str], client: FhirClient, executor: Executor | None, out: MedicationReads):
    def read(target: str) -> dict:
        resources, _, _ = client.get(target)
        return resources[0]

    futures = {t: executor.submit(read, t) for t in targets} if executor is not None else {}
    found: dict[str, dict] = {}
    for target in targets:
        try:
            if executor is None:
                resource = read(target)
            else:
                resource = futures[target].result(timeout=max(client.remaining(), 0.0))
        except FhirAccessError as exc:
            out.outcomes.append({"reference": target, "outcome": "not read", "why": exc.diagnostics})
            continue
        except FutureTimeout:
            futures[target].cancel()
            out.outcomes.append(
                {"reference": target, "outcome": "not read", "why": "the call's FHIR deadline was reached"}
            )
            continue
        except Exception as exc:  # a hostile answer must not become a 500: the medication stays unknown
            log.error("Medication read failed unexpectedly: %s", type(exc).__name__)
            why = f"unexpected answer ({type(exc).__name__})"
            out.outcomes.append({"reference": target, "outcome": "not read", "why": why})
            continue
        if f"Medication/{resource.get('id')}" != target:  # another resource than the one asked for
            why = f"the server answered Medication/{resource.get('id')}"
            out.outcomes.append({"reference": target, "outcome": "not read", "why": why})
            continue
        found[target] = resource
        out.outcomes.append({"reference": target, "outcome": "read"})
        out.read.append((f"fetched.{target}", resource))
    return found
