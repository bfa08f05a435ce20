"""One normalised view of the patient, built once per hook call from the FHIR resources it brought.

Rules read facts, never raw FHIR: age and sex; medications (active orders and statements, the draft
orders of this call, and past orders) with their ingredients and drug classes resolved through
``fhir/terminology``; allergies; conditions; observations (labs, scores) with values and dates;
encounters, procedures, care plans, service requests. Everything here is a pure function of
(resources, draft orders, today, terminology).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from functools import cached_property

from cachetools import LRUCache

from .mentions import ALLERGY, CONDITION, MEDICATION, PRESENT, Mention
from .routes import is_systemic, route_of, route_of_sentence
from .terminology import ICD10CM, LOINC, RXNORM, SNOMED, Terminology, normalise_system

ACTIVE_CONDITION = {"active", "recurrence", "relapse"}
NOT_TRUE = {"refuted", "entered-in-error"}
CODED, NOTE = "coded", "note"  # provenance of a fact: a coded FHIR resource, or a sentence of a note
# Where a medication fact comes from: prescribed (an order), dispensed (a pharmacy fill), administered
# (given, e.g. on a ward) or reported (a statement by the patient or a clinician, or a note).
PRESCRIBED, DISPENSED, ADMINISTERED, REPORTED = "prescribed", "dispensed", "administered", "reported"
SOURCES = {
    "MedicationRequest": PRESCRIBED,
    "MedicationDispense": DISPENSED,
    "MedicationAdministration": ADMINISTERED,
    "MedicationStatement": REPORTED,
}
MEDICATION_TYPES = tuple(SOURCES)
# How long a dispense is taken to last when it says nothing of its supply (daysSupply, or quantity
# over doses per day): a common community fill. An administration counts as current for a day.
DEFAULT_DISPENSE_DAYS = 30
ADMINISTRATION_CURRENT_DAYS = 1
ACTIVE_ORDER_INTENTS = {"order", "original-order", "reflex-order", "filler-order", "instance-order", "plan"}
UNUSABLE_OBSERVATION = {"cancelled", "entered-in-error", "registered"}

Codings = tuple[tuple[str, str], ...]


# ----------------------------------------------------------------------------------------------
# Small parsers
# ----------------------------------------------------------------------------------------------


def parse_datetime(value) -> datetime | None:
    """FHIR date / dateTime / instant -> aware datetime (UTC when no offset; partial dates -> first day)."""
    if not isinstance(value, str) or not value:
        return None
    text = value.strip()
    try:
        if len(text) == 4:
            return datetime(int(text), 1, 1, tzinfo=UTC)
        if len(text) == 7:
            return datetime(int(text[:4]), int(text[5:7]), 1, tzinfo=UTC)
        if len(text) == 10:
            return datetime.fromisoformat(text).replace(tzinfo=UTC)
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    except ValueError:
        return None


def codings_of(concept) -> Codings:
    if not isinstance(concept, dict):
        return ()
    return tuple(
        (normalise_system(c.get("system")), str(c.get("code")))
        for c in concept.get("coding") or []
        if isinstance(c, dict) and c.get("code")
    )


def texts_of(concept) -> list[str]:
    if not isinstance(concept, dict):
        return []
    out = [concept.get("text")] + [
        c.get("display") for c in concept.get("coding") or [] if isinstance(c, dict)
    ]
    return [t for t in out if isinstance(t, str) and t]


def age_in_years(birth: date, today: date) -> int:
    """Completed years of life on `today`."""
    return today.year - birth.year - ((today.month, today.day) < (birth.month, birth.day))


def name_of(concept, fallback: str | None = None) -> str:
    """The concept's first text or display; else `fallback`, else a name made from its code."""
    texts = texts_of(concept)
    return texts[0] if texts else (fallback or coded_name(codings_of(concept)) or "unnamed")


_SYSTEM_LABELS = {RXNORM: "RxNorm", SNOMED: "SNOMED CT", LOINC: "LOINC", ICD10CM: "ICD-10-CM"}


def coded_name(codes: Codings, ingredients: Iterable[str] = ()) -> str | None:
    """A name for a concept recorded by code alone (no text, no display): its ingredients where the
    terminology knows them, and the code itself, so a card names what was ordered rather than
    "unnamed" and the clinician can check the code."""
    if not codes:
        return None
    system, code = codes[0]
    label = f"{_SYSTEM_LABELS.get(system, system or 'code')} {code}"
    names = sorted(ingredients)
    return f"{' / '.join(names)} ({label})" if names else label


def _duration_days(quantity) -> float | None:
    if not isinstance(quantity, dict) or quantity.get("value") is None:
        return None
    unit = (quantity.get("code") or quantity.get("unit") or "d").lower()
    factor = {
        "d": 1,
        "day": 1,
        "days": 1,
        "wk": 7,
        "week": 7,
        "weeks": 7,
        "mo": 30,
        "month": 30,
        "months": 30,
        "a": 365,
        "year": 365,
        "years": 365,
        "h": 1 / 24,
        "hour": 1 / 24,
        "hours": 1 / 24,
    }.get(unit)
    value = _num(quantity["value"])
    return value * factor if factor is not None and value is not None else None


_PERIOD_DAYS = {"s": 1 / 86400, "min": 1 / 1440, "h": 1 / 24, "d": 1, "wk": 7, "mo": 30, "a": 365}


def doses_per_day(dosage: dict) -> float | None:
    repeat = (dosage.get("timing") or {}).get("repeat") or {}
    frequency = repeat.get("frequencyMax") or repeat.get("frequency")
    period, unit = repeat.get("period"), repeat.get("periodUnit")
    frequency, period = _num(frequency), _num(period)
    if frequency and period and unit in _PERIOD_DAYS:
        return frequency / (period * _PERIOD_DAYS[unit])
    if repeat.get("timeOfDay"):
        return float(len(repeat["timeOfDay"]))
    return None


def dose_of(dosage: dict) -> tuple[float | None, str | None]:
    for dr in dosage.get("doseAndRate") or []:
        type_text = ((dr.get("type") or {}).get("text") or "ordered").lower()
        if type_text != "ordered" and len(dosage.get("doseAndRate")) > 1:
            continue
        quantity = dr.get("doseQuantity") or (dr.get("doseRange") or {}).get("high")
        if isinstance(quantity, dict) and _num(quantity.get("value")) is not None:
            return _num(quantity["value"]), (quantity.get("code") or quantity.get("unit"))
    return None, None


# ----------------------------------------------------------------------------------------------
# Fact types
# ----------------------------------------------------------------------------------------------


def _evidence_rank(m: Mention) -> tuple:
    oldest = datetime.min.replace(tzinfo=UTC)
    return (m.status == PRESENT, m.document_date or oldest, -m.start)


def note_ref(mention: Mention) -> str:
    """Where a note-derived fact comes from: the document and the character span (RFC 5147 style)."""
    return f"{mention.document}#char={mention.start},{mention.end}"


@dataclass(frozen=True)
class Medication:
    """A medication order or statement (active, draft or past), normalised."""

    resource_type: str
    id: str
    name: str
    codes: Codings
    ingredients: frozenset[str]
    classes: frozenset[str]
    status: str
    intent: str | None
    categories: frozenset[str]
    authored: datetime | None
    is_draft: bool
    supply_days: float | None = None  # dispenseRequest.expectedSupplyDuration
    validity_days: float | None = None  # dispenseRequest.validityPeriod length
    doses_per_day: float | None = None
    dose_value: float | None = None
    dose_unit: str | None = None
    requester: str | None = None
    mme_per_day: float | None = None  # filled for opioids (see mme.py)
    provenance: str = CODED
    evidence: Mention | None = None  # the note sentence a NOTE fact comes from
    source: str = PRESCRIBED  # prescribed | dispensed | administered | reported (SOURCES)
    route: str | None = None  # route group (routes.py); None: not said
    ended: datetime | None = None  # statement's effective end; dispense's supply end; administration's end
    current: bool | None = None  # taken now (dispenses, administrations, statements: decided at build time)
    same_as: str | None = None  # the current record this one repeats (a fill of an active order ...)
    based_on: tuple[str, ...] = ()  # orders it fills or follows (authorizingPrescription, basedOn, request)

    @cached_property
    def ref(self) -> str:
        return note_ref(self.evidence) if self.evidence else f"{self.resource_type}/{self.id}"

    @cached_property
    def drug(self) -> tuple:
        """What value-set membership depends on (codes, ingredients, classes): a key for the engine."""
        return (self.codes, self.ingredients, self.classes)

    @property
    def is_active(self) -> bool:
        """Taken now, per resource: an active order; a statement active or intended and not ended; a
        dispense whose supply covers today; an administration in progress or in the last day; a note
        saying so. A record repeating another current one (`same_as`) is not counted twice."""
        if self.is_draft or self.same_as is not None:
            return False
        if self.provenance == NOTE:  # a note saying the patient takes it now
            return True
        if self.current is not None:
            return self.current
        return self.status == "active" and (self.intent or "order") in ACTIVE_ORDER_INTENTS

    @property
    def systemic(self) -> bool:
        return is_systemic(self.route)

    @property
    def days_supplied(self) -> float | None:
        return self.supply_days if self.supply_days is not None else self.validity_days


@dataclass(frozen=True)
class Observation:
    id: str
    name: str
    codes: Codings
    value: float | None
    unit: str | None
    value_codes: Codings
    value_text: str | None
    interpretation: Codings
    when: datetime | None
    status: str
    categories: frozenset[str]
    component_of: str | None = None  # parent Observation id when flattened from a component

    @property
    def ref(self) -> str:
        return f"Observation/{self.component_of or self.id}"


@dataclass(frozen=True)
class Condition:
    id: str
    name: str
    codes: Codings
    active: bool
    categories: frozenset[str]
    onset: datetime | None
    recorded: datetime | None
    abated: datetime | None
    encounter: str | None = None  # Condition.encounter reference (encounter diagnoses)
    verification: frozenset[str] = frozenset()  # verificationStatus codes (refuted, entered-in-error ...)
    provenance: str = CODED
    evidence: Mention | None = None

    @property
    def ref(self) -> str:
        return note_ref(self.evidence) if self.evidence else f"Condition/{self.id}"

    @property
    def when(self) -> datetime | None:
        return self.recorded or self.onset


@dataclass(frozen=True)
class Allergy:
    id: str
    name: str
    codes: Codings
    ingredients: frozenset[str]
    classes: frozenset[str]  # drug classes named by the allergy ("Penicillins") or its ingredients'
    named_classes: frozenset[str]  # only the classes named by the allergy text itself
    active: bool
    criticality: str | None
    categories: frozenset[str]
    provenance: str = CODED
    evidence: Mention | None = None

    @property
    def ref(self) -> str:
        return note_ref(self.evidence) if self.evidence else f"AllergyIntolerance/{self.id}"


@dataclass(frozen=True)
class Event:
    """Encounter, Procedure, CarePlan, ServiceRequest, DiagnosticReport ...: a coded, dated event."""

    resource_type: str
    id: str
    name: str
    codes: Codings
    status: str | None
    when: datetime | None
    end: datetime | None
    categories: Codings
    people: frozenset[str]  # practitioner references (performer, author, requester, participant)
    extra_codes: Codings  # Encounter: discharge disposition, class; CarePlan: none
    updated: datetime | None = None  # meta.lastUpdated (a care plan edited or reviewed)
    diagnoses: frozenset[str] = frozenset()  # Encounter.diagnosis[].condition references

    @property
    def ref(self) -> str:
        return f"{self.resource_type}/{self.id}"


@dataclass(frozen=True)
class Facts:
    today: date
    now: datetime
    patient_id: str
    user_id: str | None
    birth_date: date | None
    sex: str | None
    medications: tuple[Medication, ...]  # all non-draft medication orders/statements
    draft_orders: tuple[Medication, ...]  # this call's draft medication orders
    other_draft_orders: tuple[Event, ...]  # draft non-medication orders (ServiceRequest ...)
    allergies: tuple[Allergy, ...]
    conditions: tuple[Condition, ...]
    observations: tuple[Observation, ...]  # newest first
    events: tuple[Event, ...]
    unavailable: frozenset[str] = frozenset()  # resource types that could not be had (policy: skip)
    incomplete: frozenset[str] = frozenset()  # resource types of which some resources were set aside
    # (input list, position, error) of resources the builder could not read (set aside, recorded)
    unreadable: tuple[tuple[str, int, str], ...] = ()
    # Every mention found in the notes, and what became of it: (mention, "used" | "not used", why)
    note_uses: tuple[tuple[Mention, str, str], ...] = ()
    derived: dict = field(default_factory=dict, compare=False)  # lazily computed (eGFR, MME totals)
    hook: str | None = None  # the CDS hook of the call (order-sign, order-select, patient-view ...)
    selections: frozenset[str] = frozenset()  # order-select: the refs of the selected draft orders

    @cached_property
    def coded_only(self) -> Facts:
        """These facts without the note-derived ones: what a rule sees unless it allows note evidence."""
        if not any(use == "used" for _, use, _ in self.note_uses):
            return self
        return replace(
            self,
            medications=tuple(m for m in self.medications if m.provenance == CODED),
            allergies=tuple(a for a in self.allergies if a.provenance == CODED),
            conditions=tuple(c for c in self.conditions if c.provenance == CODED),
            note_uses=(),
            derived={},
        )

    @property
    def age(self) -> int | None:
        return age_in_years(self.birth_date, self.today) if self.birth_date is not None else None

    @cached_property  # read by most rules, once per draft order: computed once per call
    def active_medications(self) -> tuple[Medication, ...]:
        return tuple(m for m in self.medications if m.is_active)

    def days_ago(self, when: datetime | None) -> float | None:
        if when is None:
            return None
        return (self.now - when).total_seconds() / 86400.0


# ----------------------------------------------------------------------------------------------
# Builder
# ----------------------------------------------------------------------------------------------


def _num(value) -> float | None:
    """A finite number, or None (a 400-digit integer or a Decimal beyond float range is no dose)."""
    if isinstance(value, (int, float, Decimal)) and not isinstance(value, bool):
        try:
            number = float(value)
        except (OverflowError, ValueError):
            return None
        return number if math.isfinite(number) else None
    if isinstance(value, str):  # FHIR decimals arrive as strings from some servers
        try:
            return _num(Decimal(value))
        except ArithmeticError:
            return None
    return None


_MEDICATION_ELEMENTS = frozenset(
    {
        "status",
        "intent",
        "medicationCodeableConcept",
        "medicationReference",
        "contained",
        "dosageInstruction",
        "dosage",
        "dispenseRequest",
        "daysSupply",
        "quantity",
        "authoredOn",
        "dateAsserted",
        "whenHandedOver",
        "whenPrepared",
        "effectivePeriod",
        "effectiveDateTime",
        "category",
        "requester",
        "recorder",
        "informationSource",
        "basedOn",
        "authorizingPrescription",
        "request",
    }
)
# Coded, dated events (facts.Event); each read by _event below.
EVENT_TYPES = (
    "Encounter",
    "Procedure",
    "CarePlan",
    "ServiceRequest",
    "DiagnosticReport",
    "Immunization",
    "Communication",
)
_EVENT_ELEMENTS = frozenset(
    {
        "status",
        "code",
        "type",
        "category",
        "activity",
        "period",
        "performedPeriod",
        "occurrencePeriod",
        "performedDateTime",
        "occurrenceDateTime",
        "authoredOn",
        "created",
        "effectiveDateTime",
        "sent",
        "performer",
        "author",
        "requester",
        "recorder",
        "asserter",
        "participant",
        "hospitalization",
        "class",
        "meta",
        "diagnosis",
    }
)
# The top-level elements the builder reads, per resource type. A resource malformed in one of these
# cannot be read safely and is set aside (ehr/data_quality.py); problems elsewhere are only recorded.
# Keep in step with the builder below.
ELEMENTS_READ: dict[str, frozenset[str]] = {
    "Patient": frozenset({"birthDate", "gender"}),
    "MedicationRequest": _MEDICATION_ELEMENTS,
    "MedicationStatement": _MEDICATION_ELEMENTS,
    "MedicationDispense": _MEDICATION_ELEMENTS,
    "MedicationAdministration": _MEDICATION_ELEMENTS,
    "Medication": frozenset({"code", "form", "ingredient"}),
    "AllergyIntolerance": frozenset(
        {"code", "reaction", "clinicalStatus", "verificationStatus", "criticality", "category"}
    ),
    "Condition": frozenset(
        {
            "clinicalStatus",
            "verificationStatus",
            "abatementDateTime",
            "abatementPeriod",
            "category",
            "code",
            "onsetDateTime",
            "onsetPeriod",
            "recordedDate",
            "encounter",
        }
    ),
    "Observation": frozenset(
        {
            "status",
            "effectiveDateTime",
            "effectiveInstant",
            "effectivePeriod",
            "issued",
            "category",
            "component",
            "code",
            "valueQuantity",
            "valueInteger",
            "valueDecimal",
            "valueCodeableConcept",
            "valueString",
            "interpretation",
        }
    ),
    **{t: _EVENT_ELEMENTS for t in EVENT_TYPES},
    # Notes and reports are read for their text (ehr/documents.py; clinical/note_extraction.py).
    "DocumentReference": frozenset(
        {"status", "docStatus", "type", "category", "date", "description", "content", "context"}
    ),
    "DiagnosticReport": _EVENT_ELEMENTS | {"conclusion", "presentedForm", "issued", "effectivePeriod"},
}


class FactsBuilder:
    """Builds Facts. Holds start-up state (terminology, MME calculator) and, thread-safe, the facts read
    from each allergy, condition, observation and event by the resource's content hash: they depend on
    the content alone (and the terminology, fixed for the builder's life), and an EHR sends the same
    chart on every call of an encounter. Medications are read every time: they depend on the call's
    Medication resources and its clock."""

    def __init__(self, terminology: Terminology, mme_calculator=None, cache_size: int = 50_000):
        self.terminology = terminology
        self.mme = mme_calculator
        self._read: LRUCache | None = LRUCache(maxsize=cache_size) if cache_size else None
        self._lock = threading.Lock()

    def _read_once(self, read, r: dict, digest: str | None):
        """read(r), or what it returned for the same content before (frozen facts, shared safely)."""
        if digest is None or self._read is None:
            return read(r)
        key = (read.__name__, digest)
        with self._lock:
            found = self._read.get(key)
        if found is None:
            found = read(r)
            with self._lock:
                self._read[key] = found
        return found

    def build(
        self,
        resources: Iterable[dict],
        *,
        patient_id: str,
        draft_orders: Iterable[dict] = (),
        today: date | None = None,
        now: datetime | None = None,
        user_id: str | None = None,
        unavailable: frozenset[str] = frozenset(),
        incomplete: frozenset[str] = frozenset(),
        mentions: Iterable[Mention] = (),
        hook: str | None = None,
        selections: Iterable[str] = (),
        digests: Mapping[int, str] | None = None,
    ) -> Facts:
        """`digests`: id(resource) -> its content hash, where known (the screen's): facts already read
        from the same content are reused."""
        now = now or datetime.now(UTC)
        digests = digests or {}
        today = today or now.date()
        if now.date() != today:  # a fixed "today" (rule tests, replays): noon keeps day arithmetic whole
            now = datetime(today.year, today.month, today.day, 12, tzinfo=UTC)
        resources = [r for r in resources if isinstance(r, dict)]
        drafts = [r for r in draft_orders if isinstance(r, dict)]
        medication_index = {
            f"Medication/{r.get('id')}": r
            for r in resources + drafts
            if r.get("resourceType") == "Medication" and r.get("id")
        }
        draft_ids = {(r.get("resourceType"), r.get("id")) for r in drafts}

        birth, sex = None, None
        meds: dict[str, Medication] = {}
        allergies, conditions, observations, events = [], [], [], []
        unreadable: list[tuple[str, int, str]] = []
        incomplete = set(incomplete)
        for position, r in enumerate(resources):
            try:
                rtype = r.get("resourceType")
                if rtype == "Patient":
                    if r.get("id") in (None, patient_id):
                        born = parse_datetime(r.get("birthDate"))
                        birth = born.date() if born else None
                        sex = r.get("gender")
                elif rtype in MEDICATION_TYPES:
                    if (rtype, r.get("id")) in draft_ids:
                        continue  # the EHR may already list the draft among the patient's orders
                    med = self._medication(r, medication_index, is_draft=False, now=now)
                    meds.setdefault(med.ref, med)
                elif rtype == "AllergyIntolerance":
                    allergies.append(self._read_once(self._allergy, r, digests.get(id(r))))
                elif rtype == "Condition":
                    conditions.append(self._read_once(self._condition, r, digests.get(id(r))))
                elif rtype == "Observation":
                    observations.extend(self._read_once(self._observations, r, digests.get(id(r))))
                elif rtype in EVENT_TYPES:
                    events.append(self._read_once(self._event, r, digests.get(id(r))))
            except Exception as exc:  # screened data the builder still cannot read: set aside, said
                unreadable.append(("resources", position, type(exc).__name__))
                incomplete.add(str(r.get("resourceType")))
        draft_meds, draft_other = [], []
        for position, r in enumerate(drafts):
            try:
                if r.get("resourceType") in ("MedicationRequest", "MedicationStatement"):
                    draft_meds.append(self._medication(r, medication_index, is_draft=True, now=now))
                elif r.get("resourceType") not in ("Medication",):
                    draft_other.append(self._event(r))
            except Exception as exc:  # the caller turns this into a 400 naming the draft
                unreadable.append(("draft_orders", position, type(exc).__name__))
        if incomplete & {*MEDICATION_TYPES, "Medication"}:
            # Rules declare medication reads as MedicationRequest; a statement, fill, administration or
            # Medication set aside leaves what the patient takes just as incomplete.
            incomplete.add("MedicationRequest")
        observations.sort(key=observation_order)
        meds = _collapse_repeats(list(meds.values()))
        note_meds, note_allergies, note_conditions, note_uses = self._note_facts(
            tuple(mentions), meds, allergies, conditions
        )
        return Facts(
            today=today,
            now=now,
            patient_id=patient_id,
            user_id=user_id,
            birth_date=birth,
            sex=sex,
            medications=tuple(meds) + note_meds,
            draft_orders=tuple(draft_meds),
            other_draft_orders=tuple(draft_other),
            allergies=tuple(allergies) + note_allergies,
            conditions=tuple(conditions) + note_conditions,
            observations=tuple(observations),
            events=tuple(events),
            unavailable=unavailable,
            incomplete=frozenset(incomplete),
            unreadable=tuple(unreadable),
            note_uses=note_uses,
            hook=hook,
            selections=frozenset(selections),
        )

    # -- note-derived facts ----------------------------------------------------------------------
    def _note_facts(self, mentions, meds, allergies, conditions):
        """Facts from the mentions a note asserts of the patient, each with its sentence as evidence.

        Coded data is never overridden: a mention whose concept the chart already codes is not used (an
        active record says it already; an inactive, resolved or refuted one is the clinician's later word,
        unless the note is newer than that record); every mention's fate is kept for the decision record.
        """
        out_meds, out_allergies, out_conditions, uses = [], [], [], []
        # One fact per concept: the same drug or finding written in several sentences or notes is one
        # fact, whose evidence is the most telling mention (present before historical, then the newest).
        chosen: dict[tuple[str, str], Mention] = {}
        for m in mentions:
            if m.asserted:
                best = chosen.get((m.kind, m.concept))
                if best is None or _evidence_rank(m) > _evidence_rank(best):
                    chosen[(m.kind, m.concept)] = m
        for m in mentions:
            if not m.asserted:
                uses.append((m, "not used", f"not asserted of the patient ({m.status})"))
                continue
            best = chosen[(m.kind, m.concept)]
            if best is not m:
                uses.append((m, "not used", f"the same {m.kind} as {note_ref(best)}"))
                continue
            narrower = self._narrower(m, chosen.values())
            if narrower is not None:  # "penicillin allergy (amoxicillin)": the ingredient says it better
                uses.append((m, "not used", f"said more precisely by {note_ref(narrower)}"))
                continue
            if m.kind == MEDICATION:
                why = self._coded_medication(m, meds)
                if why is None:
                    out_meds.append(self._note_medication(m))
            elif m.kind == ALLERGY:
                why = self._coded_allergy(m, allergies)
                if why is None:
                    out_allergies.append(self._note_allergy(m))
            elif m.kind == CONDITION:
                why = self._coded_condition(m, conditions)
                if why is None:
                    out_conditions.append(self._note_condition(m))
            else:
                why = f"unknown kind {m.kind}"
            uses.append((m, "used", "") if why is None else (m, "not used", why))
        return tuple(out_meds), tuple(out_allergies), tuple(out_conditions), tuple(uses)

    def _narrower(self, m: Mention, chosen) -> Mention | None:
        """An ingredient mention of the same kind, in the same document, within this class mention's class."""
        if not m.concept.startswith("class:"):
            return None
        drug_class = m.concept.split(":", 1)[1]
        for other in chosen:
            if (
                other.kind == m.kind
                and other.document == m.document
                and other.concept.startswith("ingredient:")
                and drug_class in self._mention_drug(other)[1]
            ):
                return other
        return None

    def _mention_drug(self, m: Mention) -> tuple[frozenset[str], frozenset[str]]:
        """(ingredients, classes) a drug mention names."""
        if m.concept.startswith("ingredient:"):
            ingredients = frozenset({m.concept.split(":", 1)[1]})
            return ingredients, self.terminology.drug_classes(ingredients)
        return frozenset(), frozenset({m.concept.split(":", 1)[1]})

    @staticmethod
    def _newer(record_when: datetime | None, m: Mention) -> bool:
        """The coded record is at least as recent as the note (unknown dates: the record wins)."""
        return record_when is None or m.document_date is None or record_when >= m.document_date

    def _coded_medication(self, m: Mention, meds: list[Medication]) -> str | None:
        ingredients, classes = self._mention_drug(m)
        for med in meds:
            same = bool(ingredients & med.ingredients) if ingredients else bool(classes & med.classes)
            if not same:
                continue
            if med.is_active:
                return f"already coded ({med.ref})"
            if self._newer(med.authored, m):
                return f"a coded record at least as recent says {med.status} ({med.ref})"
        return None

    def _coded_allergy(self, m: Mention, allergies: list[Allergy]) -> str | None:
        ingredients, classes = self._mention_drug(m)
        for a in allergies:
            same = bool(ingredients & a.ingredients) if ingredients else bool(classes & a.named_classes)
            if same:
                return (
                    f"already coded ({a.ref})"
                    if a.active
                    else f"the coded record says inactive or refuted ({a.ref})"
                )
        return None

    def _coded_condition(self, m: Mention, conditions: list[Condition]) -> str | None:
        vs = self.terminology.valuesets.get(m.concept)
        for c in conditions:
            if vs is None or not any(vs.has_code(s, code) for s, code in c.codes):
                continue
            if c.active:
                return f"already coded ({c.ref})"
            if c.verification & NOT_TRUE:
                return f"the coded record says {', '.join(sorted(c.verification & NOT_TRUE))} ({c.ref})"
            if self._newer(c.abated or c.recorded, m):
                return f"a coded record at least as recent says it is not active ({c.ref})"
        return None

    def _note_medication(self, m: Mention) -> Medication:
        ingredients, classes = self._mention_drug(m)
        name = m.label if m.label.lower() == m.display.lower() else f"{m.label} ({m.display})"
        return Medication(
            resource_type=m.document.split("/", 1)[0],
            id=m.document.split("/", 1)[-1],
            name=name,
            codes=m.codes,
            ingredients=ingredients,
            classes=classes,
            status="active",
            intent=None,
            categories=frozenset({"patient-reported"}),
            authored=m.document_date,
            is_draft=False,
            provenance=NOTE,
            evidence=m,
            source=REPORTED,
            route=route_of_sentence(m.sentence),
        )

    def _note_allergy(self, m: Mention) -> Allergy:
        ingredients, classes = self._mention_drug(m)
        named = classes if not ingredients else frozenset()
        return Allergy(
            id=m.document.split("/", 1)[-1],
            name=m.label if m.label.lower() == m.display.lower() else f"{m.label} ({m.display})",
            codes=m.codes,
            ingredients=ingredients,
            classes=classes,
            named_classes=named,
            active=True,
            criticality=None,  # a note seldom grades it; the card quotes the reaction instead
            categories=frozenset({"medication"}),
            provenance=NOTE,
            evidence=m,
        )

    @staticmethod
    def _note_condition(m: Mention) -> Condition:
        return Condition(
            id=m.document.split("/", 1)[-1],
            name=m.label if m.label.lower() == m.display.lower() else f"{m.label} ({m.display})",
            codes=m.codes,
            active=m.status == PRESENT,
            categories=frozenset(),
            onset=None,
            recorded=m.document_date,
            abated=None,
            provenance=NOTE,
            evidence=m,
        )

    # -- medications ---------------------------------------------------------------------------
    def _medication(self, r: dict, medication_index: dict, *, is_draft: bool, now: datetime) -> Medication:
        concept = r.get("medicationCodeableConcept")
        reference = r.get("medicationReference") if isinstance(r.get("medicationReference"), dict) else {}
        ref = reference.get("reference")
        form = None
        if concept is None and isinstance(ref, str):
            target = resolve_medication(ref, r, medication_index)
            if target is not None:
                concept = target.get("code") or _ingredient_concept(target)
                form = target.get("form")
            if concept is None and reference.get("display"):
                concept = {"text": reference["display"]}
        codes = codings_of(concept)
        texts = texts_of(concept)
        ingredients = self.terminology.ingredients(list(codes), texts)
        dosage = r.get("dosageInstruction") or r.get("dosage") or [{}]
        if isinstance(dosage, dict):  # MedicationAdministration.dosage is one object
            dosage = [dosage]
        dosage = dosage[0] if dosage and isinstance(dosage[0], dict) else {}
        dispense = r.get("dispenseRequest") or {}
        validity = dispense.get("validityPeriod") or {}
        v_start, v_end = parse_datetime(validity.get("start")), parse_datetime(validity.get("end"))
        validity_days = (v_end - v_start).total_seconds() / 86400 if v_start and v_end else None
        supply = _duration_days(dispense.get("expectedSupplyDuration")) or _duration_days(r.get("daysSupply"))
        dose_value, dose_unit = dose_of(dosage)
        effective = r.get("effectivePeriod") if isinstance(r.get("effectivePeriod"), dict) else {}
        authored = parse_datetime(
            r.get("authoredOn")
            or r.get("whenHandedOver")
            or effective.get("start")
            or r.get("effectiveDateTime")
            or r.get("dateAsserted")
            or r.get("whenPrepared")
        )
        categories = frozenset(
            c
            for cat in (
                r.get("category")
                if isinstance(r.get("category"), list)
                else [r.get("category")]
                if r.get("category")
                else []
            )
            for _, c in codings_of(cat)
        )
        rtype = r.get("resourceType")
        who = r.get("requester") or r.get("recorder") or r.get("informationSource") or {}
        requester = who.get("reference") if isinstance(who, dict) else None
        status = r.get("status") or "unknown"
        if rtype == "MedicationDispense":
            status = "dispensed" if status == "completed" else status
        route = route_of(
            codings_of(dosage.get("route")),
            texts_of(dosage.get("route")),
            texts + texts_of(form),
        )
        per_day = doses_per_day(dosage)
        ended, current = None, None
        if not is_draft and rtype != "MedicationRequest":
            ended, current = _currency(r, rtype, status, authored, supply, per_day, now)
        med = Medication(
            resource_type=rtype,
            id=str(r.get("id") or "unidentified"),
            name=name_of(concept, coded_name(codes, ingredients)),
            codes=codes,
            ingredients=ingredients,
            classes=self.terminology.drug_classes(ingredients),
            status=status,
            intent=r.get("intent"),
            categories=categories,
            authored=authored,
            is_draft=is_draft,
            supply_days=supply,
            validity_days=validity_days,
            doses_per_day=per_day,
            dose_value=dose_value,
            dose_unit=dose_unit,
            requester=requester,
            source=SOURCES.get(rtype, PRESCRIBED),
            route=route,
            ended=ended,
            current=current,
            based_on=_order_links(r),
        )
        if self.mme is not None:
            mme = self.mme.daily_mme(med)
            if mme is not None:
                med = replace(med, mme_per_day=mme)
        return med

    # -- allergies, conditions -----------------------------------------------------------------
    def _allergy(self, r: dict) -> Allergy:
        concept = r.get("code") or {}
        texts = texts_of(concept) + [
            t for reaction in r.get("reaction") or [] for t in texts_of(reaction.get("substance"))
        ]
        codes = codings_of(concept)
        ingredients = self.terminology.ingredients(list(codes), texts)
        named = self.terminology.named_classes(texts)
        clinical = {c for _, c in codings_of(r.get("clinicalStatus"))}
        verification = {c for _, c in codings_of(r.get("verificationStatus"))}
        active = (not clinical or "active" in clinical) and not (verification & NOT_TRUE)
        return Allergy(
            id=str(r.get("id") or "unidentified"),
            name=name_of(concept),
            codes=codes,
            ingredients=ingredients,
            classes=named | self.terminology.drug_classes(ingredients),
            named_classes=named,
            active=active,
            criticality=r.get("criticality"),
            categories=frozenset(r.get("category") or []),
        )

    def _condition(self, r: dict) -> Condition:
        clinical = {c for _, c in codings_of(r.get("clinicalStatus"))}
        verification = {c for _, c in codings_of(r.get("verificationStatus"))}
        abated = parse_datetime(r.get("abatementDateTime") or (r.get("abatementPeriod") or {}).get("end"))
        if clinical:
            active = bool(clinical & ACTIVE_CONDITION)
        else:
            active = abated is None
        active = active and not (verification & NOT_TRUE)
        categories = frozenset(c for cat in r.get("category") or [] for _, c in codings_of(cat))
        return Condition(
            id=str(r.get("id") or "unidentified"),
            name=name_of(r.get("code")),
            codes=codings_of(r.get("code")),
            active=active,
            categories=categories,
            onset=parse_datetime(r.get("onsetDateTime") or (r.get("onsetPeriod") or {}).get("start")),
            recorded=parse_datetime(r.get("recordedDate")),
            abated=abated,
            encounter=(r.get("encounter") or {}).get("reference")
            if isinstance(r.get("encounter"), dict)
            else None,
            verification=frozenset(verification),
        )

    # -- observations --------------------------------------------------------------------------
    def _observations(self, r: dict) -> tuple[Observation, ...]:
        status = r.get("status") or "unknown"
        if status in UNUSABLE_OBSERVATION:
            return ()
        when = parse_datetime(
            r.get("effectiveDateTime")
            or r.get("effectiveInstant")
            or (r.get("effectivePeriod") or {}).get("end")
            or (r.get("effectivePeriod") or {}).get("start")
            or r.get("issued")
        )
        categories = frozenset(c for cat in r.get("category") or [] for _, c in codings_of(cat))
        rid = str(r.get("id") or "unidentified")
        out = [self._observation(r, rid, when, status, categories, None)]
        for i, component in enumerate(r.get("component") or []):
            out.append(self._observation(component, f"{rid}#{i}", when, status, categories, rid))
        return tuple(out)

    @staticmethod
    def _observation(r: dict, rid: str, when, status, categories, parent) -> Observation:
        quantity = r.get("valueQuantity") or {}
        value = _num(quantity.get("value"))
        if value is None:
            value = _num(r.get("valueInteger"))
        if value is None:
            value = _num(r.get("valueDecimal"))
        interpretation = tuple(c for concept in r.get("interpretation") or [] for c in codings_of(concept))
        return Observation(
            id=rid,
            name=name_of(r.get("code")),
            codes=codings_of(r.get("code")),
            value=value,
            unit=quantity.get("code") or quantity.get("unit"),
            value_codes=codings_of(r.get("valueCodeableConcept")),
            value_text=r.get("valueString") if isinstance(r.get("valueString"), str) else None,
            interpretation=interpretation,
            when=when,
            status=status,
            categories=categories,
            component_of=parent,
        )

    # -- events --------------------------------------------------------------------------------
    @staticmethod
    def _event(r: dict) -> Event:
        rtype = r.get("resourceType")
        concept = r.get("code")
        codes = codings_of(concept)
        if rtype == "Encounter":
            concept = (r.get("type") or [None])[0]
            codes = tuple(c for t in r.get("type") or [] for c in codings_of(t))
        elif rtype == "CarePlan":  # no CarePlan.code: what the plan is about lives in its activities
            concept = (r.get("category") or [None])[0]
            codes = tuple(
                c
                for a in r.get("activity") or []
                for c in codings_of(((a or {}).get("detail") or {}).get("code"))
            )
        categories = (
            tuple(c for cat in (r.get("category") or []) for c in codings_of(cat))
            if isinstance(r.get("category"), list)
            else codings_of(r.get("category"))
        )
        period = r.get("period") or r.get("performedPeriod") or r.get("occurrencePeriod") or {}
        when = parse_datetime(
            r.get("performedDateTime")
            or r.get("occurrenceDateTime")
            or r.get("authoredOn")
            or r.get("created")
            or r.get("effectiveDateTime")
            or r.get("sent")
            or period.get("start")
        )
        end = parse_datetime(period.get("end"))
        people = set()
        for key in ("performer", "author", "requester", "recorder", "asserter"):
            value = r.get(key)
            for item in value if isinstance(value, list) else [value]:
                if isinstance(item, dict):
                    ref = item.get("reference") or (item.get("actor") or {}).get("reference")
                    if ref:
                        people.add(ref)
        for participant in r.get("participant") or []:
            ref = (participant.get("individual") or {}).get("reference")
            if ref:
                people.add(ref)
        extra: tuple = ()
        if rtype == "Encounter":
            extra = codings_of((r.get("hospitalization") or {}).get("dischargeDisposition"))
            cls = r.get("class")
            if isinstance(cls, dict) and cls.get("code"):
                extra += ((normalise_system(cls.get("system")), cls["code"]),)
        return Event(
            resource_type=rtype,
            id=str(r.get("id") or "unidentified"),
            name=name_of(concept, rtype),
            codes=codes,
            status=r.get("status"),
            when=when,
            end=end,
            categories=categories,
            people=frozenset(people),
            extra_codes=extra,
            updated=parse_datetime((r.get("meta") or {}).get("lastUpdated")),
            diagnoses=frozenset(
                d["condition"]["reference"]
                for d in r.get("diagnosis") or []
                if isinstance(d, dict)
                and isinstance(d.get("condition"), dict)
                and isinstance(d["condition"].get("reference"), str)
            ),
        )


_SOURCE_RANK = {PRESCRIBED: 0, DISPENSED: 1, ADMINISTERED: 2, REPORTED: 3}


def _collapse_repeats(meds: list[Medication]) -> list[Medication]:
    """One current entry per therapy. A current fill, administration or statement of what an active order
    already covers (linked to it, or with the same ingredients) repeats that order; among such records
    without an order, the prescribed-most and newest stands for the others. Two active *orders* of the
    same drug are kept: that is duplicate therapy, for the rules to see. Repeats stay in the history."""
    orders = [m for m in meds if m.resource_type == "MedicationRequest" and m.is_active]
    by_ref = {m.ref: m for m in orders}
    by_ingredients: dict[frozenset[str], Medication] = {}
    for m in orders:
        if m.ingredients:
            by_ingredients.setdefault(m.ingredients, m)
    others = [m for m in meds if m.resource_type != "MedicationRequest" and m.is_active]
    oldest = datetime.min.replace(tzinfo=UTC)
    others.sort(key=lambda m: (_SOURCE_RANK.get(m.source, 9), -(m.authored or oldest).timestamp(), m.ref))
    same_as: dict[str, str] = {}
    for m in others:
        linked = next((by_ref[r].ref for r in m.based_on if r in by_ref), None)
        same = linked or (by_ingredients[m.ingredients].ref if m.ingredients in by_ingredients else None)
        if same is not None:
            same_as[m.ref] = same
        elif m.ingredients:
            by_ingredients[m.ingredients] = m  # stands for later records of the same ingredients
    return [replace(m, same_as=same_as[m.ref]) if m.ref in same_as else m for m in meds]


def observation_order(o: Observation) -> tuple:
    """Newest first; undated last; then by id, so equal times never depend on the Bundle's order."""
    return (o.when is None, -(o.when.timestamp()) if o.when else 0.0, o.id)


def resolve_medication(ref: str, resource: dict, index: Mapping[str, dict]) -> dict | None:
    """The Medication a medicationReference names: contained (``#id``), else one the call brought (a
    prefetch entry, an ``_include``, or one read from the FHIR server), by relative or absolute URL."""
    if ref.startswith("#"):
        return next(
            (
                c
                for c in resource.get("contained") or []
                if isinstance(c, dict) and c.get("id") == ref[1:] and c.get("resourceType") == "Medication"
            ),
            None,
        )
    return index.get(ref) or index.get("Medication/" + ref.rstrip("/").rsplit("/", 1)[-1])


def missing_medication_ref(resource: dict, index: Mapping[str, dict]) -> str | None:
    """The `Medication/<id>` a medication resource refers to but the call did not bring, else None."""
    reference = resource.get("medicationReference")
    if resource.get("medicationCodeableConcept") is not None or not isinstance(reference, dict):
        return None
    ref = reference.get("reference")
    if not isinstance(ref, str) or ref.startswith("#"):
        return None
    if resolve_medication(ref, resource, index) is not None:
        return None
    parts = ref.rstrip("/").rsplit("/", 2)
    if len(parts) < 2 or parts[-2] != "Medication" or not parts[-1]:
        return None  # not a Medication reference (urn:uuid:..., a logical identifier): nothing to read
    return f"Medication/{parts[-1]}"


def _ingredient_concept(medication: dict) -> dict | None:
    """A Medication without `code` (a compound) is named by its ingredients' codes."""
    codings, texts = [], []
    for item in medication.get("ingredient") or []:
        concept = (item or {}).get("itemCodeableConcept") if isinstance(item, dict) else None
        if isinstance(concept, dict):
            codings += [c for c in concept.get("coding") or [] if isinstance(c, dict)]
            texts += texts_of(concept)
    if not codings and not texts:
        return None
    return {"coding": codings, **({"text": " / ".join(texts)} if texts else {})}


def _order_links(r: dict) -> tuple[str, ...]:
    out = []
    for key in ("authorizingPrescription", "basedOn"):
        for item in r.get(key) or [] if isinstance(r.get(key), list) else []:
            if isinstance(item, dict) and isinstance(item.get("reference"), str):
                out.append(item["reference"])
    request = r.get("request")
    if isinstance(request, dict) and isinstance(request.get("reference"), str):
        out.append(request["reference"])
    tails = (x.rstrip("/").rsplit("/", 1)[-1] for x in out if "MedicationRequest" in x)
    return tuple(f"MedicationRequest/{tail}" for tail in tails)


def _currency(r, rtype, status, authored, supply, per_day, now) -> tuple[datetime | None, bool]:
    """(end, taken now) of a statement, a dispense or an administration (see Medication.is_active)."""
    effective = r.get("effectivePeriod") if isinstance(r.get("effectivePeriod"), dict) else {}
    end = parse_datetime(effective.get("end"))
    if rtype == "MedicationStatement":
        return end, status in ("active", "intended") and (end is None or end >= now - timedelta(days=1))
    if rtype == "MedicationDispense":
        if status != "dispensed":
            return None, False
        if authored is None:  # a fill with no date cannot be shown to have run out: the safe side
            return None, True
        days = supply
        if days is None:  # units dispensed over doses a day (one unit a dose), when both are known
            quantity = r.get("quantity") if isinstance(r.get("quantity"), dict) else {}
            units = _num(quantity.get("value"))
            days = units / per_day if units and per_day else DEFAULT_DISPENSE_DAYS
        end = authored + timedelta(days=days)
        return end, end >= now - timedelta(days=1)
    # MedicationAdministration
    end = end or parse_datetime(r.get("effectiveDateTime")) or authored
    if status == "in-progress":
        return end, True
    recent = end is not None and end >= now - timedelta(days=ADMINISTRATION_CURRENT_DAYS)
    return end, status == "completed" and recent


def within_days(facts: Facts, when: datetime | None, days: float) -> bool:
    """`when` lies in the last `days` days (a date-only value up to a day ahead counts as today)."""
    if when is None:
        return False
    age = facts.now - when
    return timedelta(days=-1) <= age <= timedelta(days=days)
