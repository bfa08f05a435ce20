"""The decision record: one hook call as the decision log keeps it.

`DecisionRecord.from_call` builds it once, at the end of the call, from the `HookCall`; the decision
log chains its canonical JSON and derives every index row from it (the `decisions` columns, the card
index, the rule outcomes), so the record is the single source the indexes come from, and `audit
verify` can re-derive and compare them. Patient data are referenced (resource references,
versionId/lastUpdated, content hash), never copied; the access token is never part of a record.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any

from ..canonical import canonical_bytes
from ..ehr.data_quality import record_of as data_quality_record
from ..ehr.data_quality import reference_of
from ..errors import clip
from ..indicators import highest

if TYPE_CHECKING:  # the pipeline builds records; the record only reads the call
    from ..protocol.pipeline import HookCall

LLM_SUMMARY_RULE = "llm-summary"  # how a card the LLM added (not a rule) is indexed for feedback
DATA_QUALITY_RULE = "data-quality"  # the info card saying checks ran on part of the data
DATA_QUALITY_VERSION = "1"
CHART_SUMMARY_RULE = (
    "chart-summary"  # the deterministic patient-view summary card (clinical/chart_summary.py)
)
CHART_SUMMARY_VERSION = "1"


class DecisionRecord:
    def __init__(self, data: dict[str, Any]):
        self.data = data
        self._rule_set: tuple[str | None, list[tuple[str, str, str]]] | None = None

    @property
    def id(self) -> str:
        return self.data["id"]

    # -- building ---------------------------------------------------------------------------------
    @classmethod
    def from_call(cls, call: "HookCall") -> "DecisionRecord":
        body = call.body if isinstance(call.body, dict) else {}
        request, service = call.request, call.service
        data: dict[str, Any] = {
            "id": call.decision_id,
            "recordedAt": call.recorded_at,
            "service": (
                {"id": service.id, "hook": service.hook, "definition": service.path}
                if service
                else {"id": call.service_id}
            ),
            "hook": request.hook if request else str(body.get("hook") or ""),
            "hookInstance": request.hook_instance if request else str(body.get("hookInstance") or ""),
            "client": call.client.as_record(),
            "data": _data_used(call),
            "rules": _rules(call) if call.error is None else [],
            "llm": call.llm,
        }
        if call.request_id:  # the HTTP request's X-Request-Id: finds the call's log lines
            data["requestId"] = call.request_id
        if request is not None:
            data["patient"] = f"Patient/{request.patient_id}"
            data["user"] = request.user_id
            if request.encounter_id:
                data["encounter"] = f"Encounter/{request.encounter_id}"
            if request.selections:  # order-select: the draft orders the rules were about
                data["selections"] = list(request.selections)
            if request.fhir_server:
                data["fhirServer"] = request.fhir_server
            if request.fhir_authorization:
                data["fhirAuthorization"] = request.granted_access()
        if call.rejected:
            data["rejectedCards"] = [
                {"rule": f"{x.finding.rule.id}@{x.finding.rule.version}", "problem": x.problem}
                for x in call.rejected
            ]
        if call.data_issues:
            data["dataQuality"] = data_quality_record(call.data_issues)
            if call.data_quality_card:
                data["dataQuality"]["card"] = call.data_quality_card
        if call.notes is not None:
            data["notes"] = call.notes
        if call.medication_reads is not None:
            data["medicationReferences"] = call.medication_reads.as_record()
        if call.summary_card:
            data["chartSummary"] = {"card": call.summary_card}
        if call.error is not None:
            data["error"] = call.error.to_operation_outcome()
        data["response"] = {"status": call.status, **({"cards": call.cards} if call.error is None else {})}
        data["timingsMs"] = dict(call.watch.stages, total=call.watch.total())
        return cls(data)

    # -- index rows, derived ------------------------------------------------------------------------
    def columns(self) -> dict:
        """The `decisions` table's indexed columns."""
        d = self.data
        return {
            "id": d["id"],
            "recorded_at": d["recordedAt"],
            "service_id": d["service"]["id"],
            "hook": d["hook"],
            "hook_instance": d["hookInstance"],
            "status": d["response"]["status"],
            "patient_ref": d.get("patient"),
            "user_ref": d.get("user"),
            "client_id": (d.get("client") or {}).get("id"),
            "max_indicator": highest(c.get("indicator") for c in d["response"].get("cards") or []),
            "request_id": d.get("requestId"),
            "rule_set": self.rule_set()[0],
        }

    def card_rows(self) -> list[dict]:
        """One row per card answered: which rule (or the LLM) issued it, with its indicator."""
        d = self.data
        indicator = {c["uuid"]: c["indicator"] for c in d["response"].get("cards") or []}
        base = {"decision_id": d["id"], "service_id": d["service"]["id"], "issued_at": d["recordedAt"]}
        rows = [
            {
                **base,
                "card_uuid": uuid,
                "rule_id": r["id"],
                "rule_version": r["version"],
                "indicator": indicator[uuid],
            }
            for r in d.get("rules") or []
            for uuid in r.get("cards") or []
            if uuid in indicator
        ]
        llm = d.get("llm") or {}
        rows += [
            {
                **base,
                "card_uuid": item["addedCard"],
                "rule_id": LLM_SUMMARY_RULE,
                "rule_version": llm["modelId"],
                "indicator": indicator[item["addedCard"]],
            }
            for item in llm.get("items") or []
            if item.get("addedCard") in indicator
        ]
        for section, rule_id, version in (
            ("dataQuality", DATA_QUALITY_RULE, DATA_QUALITY_VERSION),
            ("chartSummary", CHART_SUMMARY_RULE, CHART_SUMMARY_VERSION),
        ):
            card = (d.get(section) or {}).get("card")
            if card in indicator:
                rows.append(
                    {
                        **base,
                        "card_uuid": card,
                        "rule_id": rule_id,
                        "rule_version": version,
                        "indicator": indicator[card],
                    }
                )
        return rows

    def rule_set(self) -> tuple[str | None, list[tuple[str, str, str]]]:
        """(id, members): every rule the call evaluated, as (rule id, version, status), sorted, and the id
        of that set (`rule_set_id`). The PDCA report counts a rule's evaluations from it: one `rule_sets`
        row per rule per distinct set, instead of a `rule_outcomes` row per rule per call. (None, []) when
        no rule was evaluated (a refused call)."""
        if self._rule_set is None:  # asked for the column and for the members: derived once
            members = sorted({(r["id"], r["version"], r["status"]) for r in self.data.get("rules") or []})
            self._rule_set = (rule_set_id(members) if members else None), members
        return self._rule_set

    def outcome_rows(self, *, include_not_fired: bool = False) -> list[dict]:
        """One row per rule evaluated with an outcome other than ``not-fired`` (shadow included): what the
        PDCA report counts besides evaluations (a call evaluates ~40 rules and few fire, so the log
        writes ~2 rows a call, not ~40; how many times each rule was evaluated is `rule_set`'s).
        `include_not_fired`: every rule, as the layout before migration 0003 kept them."""
        d = self.data
        return [
            {
                "decision_id": d["id"],
                "recorded_at": d["recordedAt"],
                "rule_id": r["id"],
                "rule_version": r["version"],
                "rule_status": r["status"],
                "outcome": r["outcome"],
                "cards_shown": len(r.get("cards") or []),
            }
            for r in d.get("rules") or []
            if include_not_fired or r["outcome"] != NOT_FIRED
        ]


NOT_FIRED = "not-fired"


def rule_set_id(members: list[tuple[str, str, str]]) -> str:
    """sha256 of the canonical JSON of the sorted [rule id, version, status] triples. Stored in
    `decisions.rule_set` and re-derived by `audit verify`: the form must never change."""
    return hashlib.sha256(canonical_bytes([list(m) for m in sorted(members)])).hexdigest()


def _rules(call: "HookCall") -> list[dict]:
    shown: dict[str, list[str]] = {}  # the LLM may edit a card's text, never its uuid
    for issued in call.issued:
        shown.setdefault(issued.finding.rule.key, []).append(issued.card["uuid"])
    out = []
    for r in call.results:
        entry: dict[str, Any] = {
            "id": r.rule.id,
            "version": r.rule.version,
            "status": r.rule.status,
            "outcome": r.outcome,
            "findings": len(r.findings),
        }
        if r.reason:
            entry["reason"] = r.reason
        if r.findings:
            entry["refs"] = sorted({ref for f in r.findings for ref in f.refs})
        if shown.get(r.rule.key):
            entry["cards"] = shown[r.rule.key]
        out.append(entry)
    return out


def _data_used(call: "HookCall") -> list[dict]:
    """What data the decision used: references, versions, content hashes; never the content."""
    hashes = call.hashes

    def ref_of(resource: dict) -> dict:
        # Whatever the data holds, the record quotes only short strings from it (data_quality.py has
        # already said what was wrong with it).
        meta = resource.get("meta") if isinstance(resource.get("meta"), dict) else {}
        item = {
            "reference": reference_of(resource) or f"{clip(resource.get('resourceType'), 40)}/?",
            "hash": hashes.get(id(resource)),
        }
        for key in ("versionId", "lastUpdated"):
            if isinstance(meta.get(key), str) and meta[key]:
                item[key] = clip(meta[key], 64)
        return item

    out = []
    if call.prefetch is not None:
        for key, item in call.prefetch.items.items():
            entry = {
                "key": key,
                "origin": item.origin.value,
                "resources": [ref_of(r) for r in item.resources],
            }
            if item.pages:
                entry["pages"] = item.pages
            if item.note:
                entry["note"] = item.note
            if item.problem:
                entry["problem"] = item.problem
            out.append(entry)
    if call.drafts:
        out.append(
            {"key": "context.draftOrders", "origin": "context", "resources": [ref_of(r) for r in call.drafts]}
        )
    return out
