"""Screening the patient data a call brings: use what can be read, set aside what cannot, say so.

Real EHR data is imperfect (an Encounter without its required ``class``, a date-only ``lastUpdated``,
a search result holding another patient's resource). One such resource must not cost the clinician
every safety check, so prefetched and fetched data are judged per resource:

- **used**: valid, or its problems lie only in elements the facts never read, or an element is
  missing (the facts read absence as absence), or a value is off-format but readable (a date-only
  ``meta.lastUpdated`` where R4 wants an instant);
- **normalised**: a lone object where R4 wants a list, wrapped (validation.py), then judged as above;
- **set aside**: not a resource, of an unknown type, about someone other than context.patientId (a
  reference to another Patient, a Group, a Practitioner), or malformed in an element the facts read
  (a status that is a list, a date that is not a date). A patient reference that cannot be parsed
  (a bare id of something else) proves nothing either way: the resource is used and the doubt recorded.

Every problem becomes a `DataIssue` in the decision record (location, reference, fields, what was
done). The resource types with something set aside are handed to the rules engine: a rule that reads
one and does not fire is recorded as ``unevaluable`` rather than silently negative, and the clinician
gets an info card saying which checks ran on part of the data. The EHR's own request (envelope,
context, draft orders) is not screened here: problems there stay a 400 naming the field.
"""

from __future__ import annotations

import enum
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass

from ..errors import Issue, clip
from .validation import ResourceValidator, known_type, patient_scope_problem

MAX_RECORDED = 100  # issues listed one by one in a decision record; the rest are counted


class Action(enum.StrEnum):
    USED = "used"  # used as it is; the problems are in elements no rule reads, or elements missing
    NORMALISED = "normalised"  # a lone object wrapped into the list R4 wants
    SET_ASIDE = "set-aside"  # not used: rules reading its type are told


@dataclass(frozen=True)
class DataIssue:
    location: str  # where the resource sat: prefetch.medications.entry[3].resource
    action: Action
    problem: str
    fields: tuple[str, ...] = ()
    reference: str | None = None  # ResourceType/id, when it has them
    resource_type: str | None = None

    def as_record(self) -> dict:
        out = {"location": self.location, "action": self.action.value, "problem": self.problem}
        if self.reference:
            out["reference"] = self.reference
        if self.fields:
            out["fields"] = list(self.fields)
        return out


def reference_of(resource) -> str | None:
    if not isinstance(resource, dict):
        return None
    rtype, rid = resource.get("resourceType"), resource.get("id")
    if isinstance(rtype, str) and isinstance(rid, str) and known_type(rtype):
        return f"{rtype}/{clip(rid, 64)}"
    return None


def _top_element(expression: str, where: str) -> str:
    rest = expression[len(where) + 1 :] if expression.startswith(where + ".") else ""
    return rest.split(".", 1)[0].split("[", 1)[0]


@dataclass
class Screened:
    usable: list[tuple[str, dict]]  # (location, resource), normalised where needed
    issues: list[DataIssue]
    digests: dict[int, str]  # id(resource) -> content hash of the resource as received


def screen(
    located: list[tuple[str, object]],
    patient_id: str,
    validator: ResourceValidator,
    elements_read: Mapping[str, frozenset[str]],
) -> Screened:
    """Judge each (location, resource); see the module docstring."""
    usable: list[tuple[str, dict]] = []
    issues: list[DataIssue] = []
    digests: dict[int, str] = {}
    for where, resource in located:
        if not isinstance(resource, dict):
            issues.append(DataIssue(where, Action.SET_ASIDE, "not a FHIR resource (JSON object)"))
            continue
        rtype = resource.get("resourceType")
        if not known_type(rtype):
            issues.append(
                DataIssue(where, Action.SET_ASIDE, "no known R4 resourceType", (f"{where}.resourceType",))
            )
            continue
        ref = reference_of(resource)
        scope = patient_scope_problem(resource, patient_id)
        if scope is not None and scope.certain:
            issues.append(
                DataIssue(where, Action.SET_ASIDE, scope.why, (f"{where}.{scope.element}",), ref, rtype)
            )
            continue
        if scope is not None:  # e.g. a reference without its type: used, and said
            issues.append(DataIssue(where, Action.USED, scope.why, (f"{where}.{scope.element}",), ref, rtype))
        checked = validator.examine(resource, where)
        digests[id(checked.resource)] = checked.digest
        if checked.normalised:
            issues.append(
                DataIssue(
                    where,
                    Action.NORMALISED,
                    "a single object where FHIR R4 wants a list: read as a one-item list",
                    tuple(checked.normalised),
                    ref,
                    rtype,
                )
            )
        read = elements_read.get(rtype, frozenset())
        unreadable = [
            i
            for i in checked.issues
            if i.severity == "error" and i.code != "required" and _read_by_rules(i, where, read)
        ]

        if unreadable:
            issues.append(_issue(where, Action.SET_ASIDE, unreadable, ref, rtype))
            continue
        if checked.issues:
            issues.append(_issue(where, Action.USED, checked.issues, ref, rtype))
        usable.append((where, checked.resource))
    return Screened(usable, issues, digests)


def _read_by_rules(issue: Issue, where: str, read: frozenset[str]) -> bool:
    elements = {_top_element(e, where) for e in issue.expression} or {""}
    return bool(elements & read) or "" in elements  # "" : the resource as a whole


def _issue(where: str, action: Action, problems: list[Issue], ref, rtype) -> DataIssue:
    fields = tuple(e for p in problems for e in p.expression)
    text = problems[0].diagnostics
    if len(problems) > 1:
        text += f" (and {len(problems) - 1} more)"
    return DataIssue(where, action, text, fields[:20], ref, rtype)


def record_of(issues: list[DataIssue]) -> dict:
    """The decision record's `dataQuality`: counts by action and type, the first issues in full."""
    counts = Counter(f"{i.action.value}:{i.resource_type or 'unknown'}" for i in issues)
    out: dict = {
        "counts": dict(sorted(counts.items())),
        "issues": [i.as_record() for i in issues[:MAX_RECORDED]],
    }
    if len(issues) > MAX_RECORDED:
        out["notListed"] = len(issues) - MAX_RECORDED
    return out
