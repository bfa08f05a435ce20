"""FHIR R4 search over the sandbox's in-memory resources: the parameters CDS prefetch templates use.

Each parameter is declared as in the R4 specification (its type and its FHIRPath expression, compiled once
with fhirpathpy and the R4 model, so choice elements such as ``Observation.effective`` resolve). Matching
follows FHIR R4 §Search: token (``system|code``, ``|code``, ``code``, ``system|``), reference
(``Patient/1``, ``1``, or an absolute URL ending so), date with prefixes (eq ne gt lt ge le sa eb) and
implicit ranges from the value's precision, string (case-insensitive starts-with); a comma means OR and a
repeated parameter means AND. Unknown parameters are ignored and said in an OperationOutcome entry (R4:
servers SHOULD ignore them), or refused with ``Prefer: handling=strict``; unsupported modifiers are refused.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, timezone

import fhirpathpy
from fhirpathpy.models import models as fhirpath_models

from ..errors import InvalidRequest

_R4 = fhirpath_models["r4"]

# type -> parameter -> (search type, FHIRPath expression); from the R4 SearchParameter registry, with
# ``resolve() is Patient`` written as a reference-type check (no resolution in memory).
_COMMON = {
    "_id": ("token", "{T}.id"),
    "_lastUpdated": ("date", "{T}.meta.lastUpdated"),
}
_CLINICAL = {"subject": ("reference", "{T}.subject"), "patient": ("patient", "{T}.subject")}
PARAMETERS: dict[str, dict[str, tuple[str, str]]] = {
    "Patient": {
        "gender": ("token", "Patient.gender"),
        "birthdate": ("date", "Patient.birthDate"),
        "identifier": ("token", "Patient.identifier"),
        "name": ("string", "Patient.name"),
        "family": ("string", "Patient.name.family"),
        "given": ("string", "Patient.name.given"),
    },
    "Observation": {
        **_CLINICAL,
        "code": ("token", "Observation.code"),
        "category": ("token", "Observation.category"),
        "status": ("token", "Observation.status"),
        "date": ("date", "Observation.effective"),
        "encounter": ("reference", "Observation.encounter"),
    },
    "Condition": {
        **_CLINICAL,
        "code": ("token", "Condition.code"),
        "category": ("token", "Condition.category"),
        "clinical-status": ("token", "Condition.clinicalStatus"),
        "verification-status": ("token", "Condition.verificationStatus"),
        "onset-date": ("date", "Condition.onset"),
        "recorded-date": ("date", "Condition.recordedDate"),
        "encounter": ("reference", "Condition.encounter"),
    },
    "AllergyIntolerance": {
        "patient": ("patient", "AllergyIntolerance.patient"),
        "code": ("token", "AllergyIntolerance.code"),
        "clinical-status": ("token", "AllergyIntolerance.clinicalStatus"),
        "verification-status": ("token", "AllergyIntolerance.verificationStatus"),
        "category": ("token", "AllergyIntolerance.category"),
        "criticality": ("token", "AllergyIntolerance.criticality"),
        "date": ("date", "AllergyIntolerance.recordedDate"),
    },
    "MedicationRequest": {
        **_CLINICAL,
        "status": ("token", "MedicationRequest.status"),
        "intent": ("token", "MedicationRequest.intent"),
        "category": ("token", "MedicationRequest.category"),
        "code": ("token", "MedicationRequest.medication.as(CodeableConcept)"),
        "medication": ("reference", "MedicationRequest.medication.as(Reference)"),
        "authoredon": ("date", "MedicationRequest.authoredOn"),
        "encounter": ("reference", "MedicationRequest.encounter"),
        "requester": ("reference", "MedicationRequest.requester"),
    },
    "MedicationDispense": {
        **_CLINICAL,
        "status": ("token", "MedicationDispense.status"),
        "code": ("token", "MedicationDispense.medication.as(CodeableConcept)"),
        "medication": ("reference", "MedicationDispense.medication.as(Reference)"),
        "whenhandedover": ("date", "MedicationDispense.whenHandedOver"),
        "whenprepared": ("date", "MedicationDispense.whenPrepared"),
    },
    "MedicationStatement": {
        **_CLINICAL,
        "status": ("token", "MedicationStatement.status"),
        "category": ("token", "MedicationStatement.category"),
        "code": ("token", "MedicationStatement.medication.as(CodeableConcept)"),
        "medication": ("reference", "MedicationStatement.medication.as(Reference)"),
        "effective": ("date", "MedicationStatement.effective"),
    },
    "MedicationAdministration": {
        **_CLINICAL,
        "status": ("token", "MedicationAdministration.status"),
        "code": ("token", "MedicationAdministration.medication.as(CodeableConcept)"),
        "medication": ("reference", "MedicationAdministration.medication.as(Reference)"),
        "effective-time": ("date", "MedicationAdministration.effective"),
    },
    "Medication": {"code": ("token", "Medication.code")},
    "Encounter": {
        **_CLINICAL,
        "status": ("token", "Encounter.status"),
        "class": ("token", "Encounter.class"),
        "type": ("token", "Encounter.type"),
        "date": ("date", "Encounter.period"),
    },
    "Procedure": {
        **_CLINICAL,
        "code": ("token", "Procedure.code"),
        "status": ("token", "Procedure.status"),
        "category": ("token", "Procedure.category"),
        "date": ("date", "Procedure.performed"),
        "encounter": ("reference", "Procedure.encounter"),
    },
    "DocumentReference": {
        **_CLINICAL,
        "status": ("token", "DocumentReference.status"),
        "type": ("token", "DocumentReference.type"),
        "category": ("token", "DocumentReference.category"),
        "date": ("date", "DocumentReference.date"),
    },
    "DiagnosticReport": {
        **_CLINICAL,
        "code": ("token", "DiagnosticReport.code"),
        "status": ("token", "DiagnosticReport.status"),
        "category": ("token", "DiagnosticReport.category"),
        "date": ("date", "DiagnosticReport.effective"),
        "encounter": ("reference", "DiagnosticReport.encounter"),
    },
    "CarePlan": {
        **_CLINICAL,
        "status": ("token", "CarePlan.status"),
        "category": ("token", "CarePlan.category"),
        "intent": ("token", "CarePlan.intent"),
        "date": ("date", "CarePlan.period"),
    },
    "ServiceRequest": {
        **_CLINICAL,
        "status": ("token", "ServiceRequest.status"),
        "intent": ("token", "ServiceRequest.intent"),
        "code": ("token", "ServiceRequest.code"),
        "category": ("token", "ServiceRequest.category"),
        "authored": ("date", "ServiceRequest.authoredOn"),
    },
    "Immunization": {
        "patient": ("patient", "Immunization.patient"),
        "status": ("token", "Immunization.status"),
        "vaccine-code": ("token", "Immunization.vaccineCode"),
        "date": ("date", "Immunization.occurrence"),
    },
    "Practitioner": {
        "identifier": ("token", "Practitioner.identifier"),
        "name": ("string", "Practitioner.name"),
    },
    "Organization": {
        "identifier": ("token", "Organization.identifier"),
        "name": ("string", "Organization.name"),
    },
    "Claim": {"patient": ("patient", "Claim.patient")},
    "ExplanationOfBenefit": {"patient": ("patient", "ExplanationOfBenefit.patient")},
}
# Result parameters this endpoint applies; other values of _summary and _format, and other result
# parameters (_elements, _revinclude, _include:iterate ...), are ignored and said like unknown parameters.
RESULT_PARAMETERS = {"_count", "_getpagesoffset", "_sort", "_include", "_total"}
APPLIED_VALUES = {
    "_summary": {"count", "false"},
    "_format": {"json", "application/json", "application/fhir+json"},
}
# Modifiers per parameter type (R4: a server SHALL reject a modifier it does not support).
SUPPORTED_MODIFIERS = {"string": {"", "exact", "missing"}}
DEFAULT_MODIFIERS = {"", "missing"}
DEFAULT_COUNT = 50
MAX_COUNT = 1000


@dataclass(frozen=True)
class Parameter:
    name: str
    kind: str  # token | reference | patient | date | string
    evaluate: Callable[[dict], list]


_compiled: dict[tuple[str, str], Parameter] = {}


def parameter(resource_type: str, name: str) -> Parameter | None:
    """The declared parameter, compiled once."""
    key = (resource_type, name)
    if key not in _compiled:
        spec = PARAMETERS.get(resource_type, {}).get(name) or _COMMON.get(name)
        if spec is None:
            return None
        kind, expression = spec
        compiled = fhirpathpy.compile(expression.replace("{T}", resource_type), _R4)
        _compiled[key] = Parameter(name, kind, lambda resource, f=compiled: f(resource))
    return _compiled[key]


def supported_types() -> list[str]:
    return sorted(PARAMETERS)


def search_parameters(resource_type: str) -> dict[str, str]:
    """name -> type, as the CapabilityStatement lists them."""
    out = {name: kind for name, (kind, _) in _COMMON.items()}
    for name, (kind, _) in PARAMETERS.get(resource_type, {}).items():
        out[name] = "reference" if kind == "patient" else kind
    return out


# ---- matching ----------------------------------------------------------------------------------------------


def _values(param: Parameter, resource: dict) -> list:
    try:
        return [v for v in param.evaluate(resource) if v is not None]
    except Exception:  # data the expression cannot walk (a string where an object belongs): no match
        return []


def _token_match(value, wanted: str) -> bool:
    system, sep, code = wanted.partition("|")
    if not sep:
        system, code = None, wanted
    if isinstance(value, bool):
        value = "true" if value else "false"
    if isinstance(value, str):  # a code, a status, an id
        return system in (None, "") and value == code
    if not isinstance(value, dict):
        return False
    codings = value.get("coding") if isinstance(value.get("coding"), list) else None
    if codings is not None:
        return any(_token_match(c, wanted) for c in codings if isinstance(c, dict))
    # a Coding, or an Identifier (system + value)
    own_code = value.get("code") if "code" in value else value.get("value")
    own_system = value.get("system")
    if system is None:
        return own_code == code
    if system == "":
        return own_code == code and not own_system
    if code == "":
        return own_system == system
    return own_system == system and own_code == code


def _reference_match(value, wanted: str, *, patient_only: bool = False) -> bool:
    ref = value.get("reference") if isinstance(value, dict) else None
    if not isinstance(ref, str):
        return False
    if patient_only and not ref.startswith("Patient/") and "/Patient/" not in ref:
        return False
    wanted = wanted.rstrip("/")
    if "/" not in wanted:  # a bare id: any type (or Patient for the patient parameter)
        return ref.rsplit("/", 1)[-1] == wanted
    return ref == wanted or ref.endswith("/" + "/".join(wanted.split("/")[-2:])) or wanted.endswith("/" + ref)


def _string_parts(value) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):  # HumanName (or Address): any of its parts
        parts = [value.get("text"), value.get("family"), *(value.get("given") or [])]
        return [p for p in parts if isinstance(p, str)]
    return []


def _string_match(value, wanted: str, *, exact: bool = False) -> bool:
    """R4 string search: starts with, ignoring case; `:exact`: equal, case and accents included."""
    if exact:
        return wanted in _string_parts(value)
    return any(p.lower().startswith(wanted.lower()) for p in _string_parts(value))


_PREFIXES = ("eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap")
_DATE_VALUE = re.compile(
    r"^(\d{4})(?:-(\d{2})(?:-(\d{2})(?:T(\d{2}):(\d{2})(?::(\d{2})(?:\.(\d+))?)?(Z|[+-]\d{2}:\d{2})?)?)?)?$"
)
_EARLIEST = datetime.min.replace(tzinfo=UTC)
_LATEST = datetime.max.replace(tzinfo=UTC)


def date_range(text: str) -> tuple[datetime, datetime] | None:
    """The instant range [start, end) a FHIR date, dateTime or instant stands for, by its precision (UTC;
    a value without a zone is read as UTC). Ranges reaching past year 9999 or before year 1 are clamped."""
    match = _DATE_VALUE.match(text.strip())
    if not match:
        return None
    year, month, day, hour, minute, second, fraction, zone = match.groups()
    y = int(year)
    try:
        if month is None:
            start, end = datetime(y, 1, 1, tzinfo=UTC), _day_after(datetime(y, 12, 31, tzinfo=UTC))
            return start, end
        m = int(month)
        if day is None:
            start = datetime(y, m, 1, tzinfo=UTC)
            return start, _LATEST if (y, m) == (9999, 12) else datetime(
                y + (m == 12), m % 12 + 1, 1, tzinfo=UTC
            )
        if hour is None:
            start = datetime(y, m, int(day), tzinfo=UTC)
            return start, _day_after(start)
        tz = UTC
        if zone and zone != "Z":
            sign = 1 if zone[0] == "+" else -1
            tz = timezone(sign * timedelta(hours=int(zone[1:3]), minutes=int(zone[4:6])))
        digits = (fraction or "")[:6]
        micro = int(digits.ljust(6, "0")) if digits else 0
        start = datetime(y, m, int(day), int(hour), int(minute), int(second or 0), micro, tzinfo=tz)
        if digits:  # .123 stands for that millisecond, not the whole second
            step = timedelta(microseconds=10 ** (6 - len(digits)))
        else:
            step = timedelta(seconds=1) if second is not None else timedelta(minutes=1)
        low = _utc(start)
        try:
            return low, _utc(start + step)
        except OverflowError:
            return low, _LATEST
    except ValueError:
        return None


def _utc(moment: datetime) -> datetime:
    """In UTC; a moment whose UTC time falls before year 1 or after 9999 becomes that end of the calendar."""
    try:
        return moment.astimezone(UTC)
    except OverflowError:
        return _EARLIEST if moment.year == 1 else _LATEST


def _day_after(day: datetime) -> datetime:
    try:
        return day + timedelta(days=1)
    except OverflowError:  # 9999-12-31
        return _LATEST


def _target_range(value) -> tuple[datetime, datetime] | None:
    if isinstance(value, dict):  # a Period: open ends reach out forever
        start = date_range(str(value["start"])) if value.get("start") else None
        end = date_range(str(value["end"])) if value.get("end") else None
        if start is None and end is None:
            return None
        low = start[0] if start else _EARLIEST
        high = end[1] if end else _LATEST
        return low, high
    if isinstance(value, str | date) or value is not None:
        return date_range(str(value))
    return None


def _date_match(value, prefix: str, wanted: tuple[datetime, datetime]) -> bool:
    target = _target_range(value)
    if target is None:
        return False
    (lo, hi), (t_lo, t_hi) = wanted, target
    inside = lo <= t_lo and t_hi <= hi
    if prefix == "eq":
        return inside
    if prefix == "ne":
        return not inside
    if prefix == "gt":
        return t_hi > hi
    if prefix == "lt":
        return t_lo < lo
    if prefix == "ge":
        return t_hi > hi or inside
    if prefix == "le":
        return t_lo < lo or inside
    if prefix == "sa":
        return t_lo >= hi
    if prefix == "eb":
        return t_hi <= lo
    return t_lo < hi and t_hi > lo  # ap: overlaps


@dataclass(frozen=True)
class Criterion:
    """One parameter occurrence: any of its comma-separated values may match (OR)."""

    param: Parameter
    modifier: str
    values: tuple

    def matches(self, resource: dict) -> bool:
        found = _values(self.param, resource)
        if self.modifier == "missing":
            return (not found) == (self.values[0] == "true")
        for wanted in self.values:
            if any(self._one(v, wanted) for v in found):
                return True
        return False

    def _one(self, value, wanted) -> bool:
        kind = self.param.kind
        if kind == "token":
            return _token_match(value, wanted)
        if kind == "reference":
            return _reference_match(value, wanted)
        if kind == "patient":
            return _reference_match(
                value, wanted if "/" in wanted else f"Patient/{wanted}", patient_only=True
            )
        if kind == "date":
            return _date_match(value, *wanted)
        if kind == "string":
            return _string_match(value, wanted, exact=self.modifier == "exact")
        return False


def parse_criteria(
    resource_type: str, params: Iterable[tuple[str, str]], *, strict: bool, base: str | None = None
) -> tuple[list[Criterion], list[str]]:
    """The criteria of a search, and the parameters ignored (unknown ones, when not strict). `base` is this
    server's base URL: an absolute reference elsewhere matches nothing here."""
    criteria, ignored = [], []
    for raw_name, raw_value in params:
        name, _, modifier = raw_name.partition(":")
        if raw_name in RESULT_PARAMETERS:
            continue
        if name in APPLIED_VALUES and raw_name == name and raw_value in APPLIED_VALUES[name]:
            continue
        param = parameter(resource_type, name) if not name.startswith("_") or name in _COMMON else None
        if param is None:
            if strict:
                raise InvalidRequest(
                    f"{resource_type} has no search parameter {name!r} here", expression=raw_name
                )
            ignored.append(raw_name)
            continue
        if modifier not in SUPPORTED_MODIFIERS.get(param.kind, DEFAULT_MODIFIERS):
            raise InvalidRequest(
                f"search modifier :{modifier} is not supported on {param.kind} parameters",
                expression=raw_name,
            )
        values = [v for v in raw_value.split(",") if v != ""]
        if not values:
            raise InvalidRequest(f"search parameter {name} has no value", expression=raw_name)
        if modifier == "missing":
            if values[0] not in ("true", "false"):
                raise InvalidRequest(f"{raw_name} must be true or false", expression=raw_name)
        elif param.kind == "date":
            values = [_date_criterion(raw_name, v) for v in values]
        elif param.kind in ("reference", "patient"):
            values = [_local_reference(v, base) for v in values]
        criteria.append(Criterion(param, modifier, tuple(values)))
    return criteria, ignored


def _local_reference(value: str, base: str | None) -> str:
    """`http://this-server/fhir/Patient/1` -> `Patient/1`; an absolute URL of another server can match no
    local resource (R4 §References), so it becomes a reference that nothing holds."""
    if not value.startswith(("http://", "https://")):
        return value
    if base and value.startswith(base.rstrip("/") + "/"):
        return value[len(base.rstrip("/")) + 1 :]
    return "\x00elsewhere/\x00"


def _date_criterion(name: str, value: str) -> tuple[str, tuple[datetime, datetime]]:
    prefix = value[:2] if value[:2] in _PREFIXES else "eq"
    text = value[2:] if value[:2] in _PREFIXES else value
    window = date_range(text)
    if window is None:
        raise InvalidRequest(f"{name}: {value!r} is not a FHIR date, dateTime or instant", expression=name)
    return prefix, window


def _sort_text(value) -> str:
    """What a value sorts by: a name by family then given names, a concept by its first code (then text),
    a reference by itself; never Python's text of a dict."""
    if isinstance(value, dict):
        if "family" in value or "given" in value:
            return " ".join([str(value.get("family") or ""), *map(str, value.get("given") or [])]).lower()
        codings = value.get("coding") if isinstance(value.get("coding"), list) else [value]
        for coding in codings:
            if isinstance(coding, dict) and (coding.get("code") or coding.get("value")):
                return str(coding.get("code") or coding.get("value"))
        return str(value.get("text") or value.get("reference") or value.get("display") or "")
    return str(value).lower() if isinstance(value, str) else str(value)


def sort_key(resource_type: str, spec: str) -> tuple[Callable[[dict], tuple], bool]:
    """A key function for `_sort` (one date or token parameter, `-` for descending); resources lacking the
    value sort last either way."""
    descending = spec.startswith("-")
    name = spec.lstrip("-")
    param = parameter(resource_type, name)
    if param is None:
        raise InvalidRequest(f"cannot sort {resource_type} by {name!r}", expression="_sort")

    def key(resource: dict) -> tuple:
        found = _values(param, resource)
        if not found:
            return (1, "")
        if param.kind == "date":
            window = _target_range(found[0])
            return (0, window[0].isoformat() if window else "")
        return (0, _sort_text(found[0]))

    return key, descending
