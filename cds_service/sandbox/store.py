"""The sandbox FHIR server's data: every sample chart in memory, indexed by type, id and patient.

Read-only: the sandbox serves the same charts on every start (integration engineers compare runs); a
real server to write to is `cds-service fhir load` away.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

from ..errors import InvalidRequest
from .samples import SampleChart
from .search import (
    DEFAULT_COUNT,
    MAX_COUNT,
    PARAMETERS,
    parameter,
    parse_criteria,
    sort_key,
)


@dataclass
class SearchResult:
    resource_type: str
    matches: list[dict]  # this page
    total: int
    offset: int
    count: int
    included: list[dict] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)

    @property
    def next_offset(self) -> int | None:
        return self.offset + self.count if self.offset + self.count < self.total and self.count else None


class SandboxStore:
    def __init__(self, charts: Iterable[SampleChart]):
        self.charts: dict[str, SampleChart] = {}
        self._by_key: dict[tuple[str, str], dict] = {}
        self._by_type: dict[str, list[dict]] = defaultdict(list)
        self._by_patient: dict[tuple[str, str], list[dict]] = defaultdict(list)  # (type, patient id)
        for chart in charts:
            self.charts[chart.patient_id] = chart
            for resource in chart.resources:
                self._add(resource)

    def _add(self, resource: dict) -> None:
        rtype, rid = resource.get("resourceType"), resource.get("id")
        if not isinstance(rtype, str) or not isinstance(rid, str) or (rtype, rid) in self._by_key:
            return  # the same Practitioner or Organization in several charts: served once
        self._by_key[(rtype, rid)] = resource
        self._by_type[rtype].append(resource)
        patient_param = parameter(rtype, "patient") if "patient" in PARAMETERS.get(rtype, {}) else None
        if patient_param is not None:
            for ref in patient_param.evaluate(resource):
                value = ref.get("reference") if isinstance(ref, dict) else None
                if isinstance(value, str) and value.startswith("Patient/"):
                    self._by_patient[(rtype, value.split("/", 1)[1])].append(resource)

    @property
    def resource_types(self) -> list[str]:
        return sorted(self._by_type)

    def read(self, resource_type: str, resource_id: str) -> dict | None:
        return self._by_key.get((resource_type, resource_id))

    def patient_resources(self, patient_id: str, resource_type: str) -> list[dict]:
        return list(self._by_patient.get((resource_type, patient_id), ()))

    def search(
        self,
        resource_type: str,
        params: list[tuple[str, str]],
        *,
        strict: bool = False,
        base: str | None = None,
    ) -> SearchResult:
        criteria, ignored = parse_criteria(resource_type, params, strict=strict, base=base)
        options = dict(p for p in params if p[0] in ("_count", "_getpagesoffset", "_sort", "_summary"))
        count = _int_param(options, "_count", DEFAULT_COUNT, 0, MAX_COUNT)
        offset = _int_param(options, "_getpagesoffset", 0, 0, 10**9)
        pool = self._candidates(resource_type, params)
        matches = [r for r in pool if all(c.matches(r) for c in criteria)]
        if options.get("_sort"):
            for spec in reversed(options["_sort"].split(",")):  # the first key decides: sort by it last
                key, descending = sort_key(resource_type, spec)
                present = [r for r in matches if key(r)[0] == 0]
                absent = [r for r in matches if key(r)[0] != 0]
                matches = sorted(present, key=key, reverse=descending) + absent
        total = len(matches)
        if options.get("_summary") == "count":
            count = 0
        page = matches[offset : offset + count]
        included = self._includes(page, [v for k, v in params if k == "_include"])
        return SearchResult(resource_type, page, total, offset, count, included, ignored)

    def _candidates(self, resource_type: str, params: list[tuple[str, str]]) -> list[dict]:
        """Start from one patient's resources when the search names one patient (the usual prefetch)."""
        for name, value in params:
            if name in ("subject", "patient") and "," not in value and "://" not in value:
                pid = value.rsplit("/", 1)[-1]
                if "/" not in value or value.split("/")[-2] == "Patient":
                    return self.patient_resources(pid, resource_type)
        return list(self._by_type.get(resource_type, ()))

    def _includes(self, page: list[dict], includes: list[str]) -> list[dict]:
        out, seen = [], set()
        for spec in includes:
            source, _, rest = spec.partition(":")
            name, _, target = rest.partition(":")
            param = parameter(source, name)
            if param is None or param.kind not in ("reference", "patient"):
                raise InvalidRequest(
                    f"_include={spec}: not a reference parameter here", expression="_include"
                )
            for resource in page:
                if resource.get("resourceType") != source:
                    continue
                for ref in param.evaluate(resource):
                    value = ref.get("reference") if isinstance(ref, dict) else None
                    if not isinstance(value, str) or value.count("/") != 1:
                        continue
                    rtype, rid = value.split("/")
                    found = self.read(rtype, rid)
                    if found is not None and (not target or rtype == target) and value not in seen:
                        seen.add(value)
                        out.append(found)
        return out


def _int_param(options: dict, name: str, default: int, low: int, high: int) -> int:
    if name not in options:
        return default
    try:
        value = int(options[name])
    except ValueError as exc:
        raise InvalidRequest(f"{name} must be an integer", expression=name) from exc
    return max(low, min(high, value))
