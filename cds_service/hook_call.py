"""One hook call end to end: validate -> prefetch -> facts -> rules -> cards -> decision log.

Knows nothing about Flask: it takes the parsed JSON body and the client identity and returns the
response body, or raises a CdsError. Every call to an existing service is recorded in the decision
log before the answer leaves, including calls that end in a 4xx (the record says why).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from .auth import ClientIdentity
from .cards import cards_for, validate_card
from .decision_log import CardIndex, RuleOutcome, utc_now
from .engine import evaluate
from .errors import CdsError, InvalidRequest
from .prefetch import PrefetchResult, resolve
from .resource_validation import check_patient_consistency
from .runtime import Runtime
from .schemas import CONTEXT_SCHEMAS, HookRequestSchema, load_or_400
from .services import ServiceDefinition

log = logging.getLogger(__name__)
_envelope_schema = HookRequestSchema()
_context_schemas = {hook: schema() for hook, schema in CONTEXT_SCHEMAS.items()}


@dataclass
class HookAnswer:
    body: dict
    status: int
    timings_ms: dict[str, float]
    decision_id: str


class Stopwatch:
    def __init__(self):
        self.start = self.last = time.perf_counter()
        self.start_monotonic = time.monotonic()
        self.stages: dict[str, float] = {}

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        self.stages[stage] = round((now - self.last) * 1000, 2)
        self.last = now

    def total(self) -> float:
        return round((time.perf_counter() - self.start) * 1000, 2)


def parse_request(body) -> tuple[dict, dict]:
    """Envelope then context. Raises InvalidRequest naming every bad field."""
    if not isinstance(body, dict):
        raise InvalidRequest("the request body must be a JSON object", expression="body")
    envelope = load_or_400(_envelope_schema, body)
    schema = _context_schemas.get(envelope["hook"])
    if schema is None:
        raise InvalidRequest(f"hook {envelope['hook']!r} is not supported here", expression="hook")
    return envelope, load_or_400(schema, envelope["context"], prefix="context")


def _data_record(prefetch: PrefetchResult | None, drafts: list[dict], hashes: dict[int, str]) -> list[dict]:
    """What data the decision used: references, versions, content hashes; never the content."""
    out = []

    def ref_of(resource: dict) -> dict:
        meta = resource.get("meta") or {}
        item = {"reference": f"{resource.get('resourceType')}/{resource.get('id', '?')}",
                "hash": hashes.get(id(resource))}
        if meta.get("versionId"):
            item["versionId"] = meta["versionId"]
        if meta.get("lastUpdated"):
            item["lastUpdated"] = meta["lastUpdated"]
        return item

    if prefetch is not None:
        for key, item in prefetch.items.items():
            entry = {"key": key, "origin": item.origin.value, "resources": [ref_of(r) for r in item.resources]}
            if item.pages:
                entry["pages"] = item.pages
            if item.note:
                entry["note"] = item.note
            if item.problem:
                entry["problem"] = item.problem
            out.append(entry)
    if drafts:
        out.append({"key": "context.draftOrders", "origin": "context", "resources": [ref_of(r) for r in drafts]})
    return out


def handle_hook_call(rt: Runtime, service_id: str, body, client: ClientIdentity, *, today=None) -> HookAnswer:
    watch = Stopwatch()
    decision_id = rt.decision_log.new_record_id()
    hook = body.get("hook") if isinstance(body, dict) else None
    service: ServiceDefinition | None = None
    record: dict = {
        "id": decision_id, "recordedAt": utc_now(), "service": {"id": service_id}, "hook": str(hook or ""),
        "hookInstance": str(body.get("hookInstance") or "") if isinstance(body, dict) else "",
        "client": client.as_record(), "data": [], "rules": [], "llm": None,
    }
    prefetch: PrefetchResult | None = None
    drafts: list[dict] = []
    hashes: dict[int, str] = {}
    status, response = 200, None
    try:
        if not isinstance(body, dict):
            raise InvalidRequest("the request body must be a JSON object", expression="body")
        service = rt.registry.find(service_id, hook if isinstance(hook, str) else None)
        record["service"] = {"id": service.id, "hook": service.hook, "definition": service.path}
        envelope, context = parse_request(body)
        record["hookInstance"] = envelope["hookInstance"]
        record["patient"] = f"Patient/{context['patientId']}"
        record["user"] = context["userId"]
        if context.get("encounterId"):
            record["encounter"] = f"Encounter/{context['encounterId']}"
        if envelope.get("fhirServer"):
            record["fhirServer"] = envelope["fhirServer"]
        auth = envelope.get("fhirAuthorization") or {}
        if auth:  # what was granted, never the token itself
            record["fhirAuthorization"] = {"scope": auth.get("scope"), "subject": auth.get("subject"),
                                           "expires_in": auth.get("expires_in")}
        watch.lap("parse")

        if service.hook == "order-sign":  # the orders are checked before any data is fetched for them
            drafts = [e["resource"] for e in context["draftOrders"].get("entry") or []]
            located_drafts = [(f"context.draftOrders.entry[{i}].resource", r) for i, r in enumerate(drafts)]
            hashes.update(rt.validator.check(located_drafts))
        else:
            located_drafts = []

        client_fhir = rt.fhir_client(envelope.get("fhirServer"), auth.get("access_token"))
        prefetch = resolve(list(service.templates), context, envelope.get("prefetch"), client_fhir, rt.executor)
        watch.lap("prefetch")

        located = [(f"prefetch.{key}", r) for key, r in prefetch.resources()]
        hashes.update(rt.validator.check(located))
        wrong_patient = check_patient_consistency(located + located_drafts, context["patientId"])
        if wrong_patient:
            raise InvalidRequest(wrong_patient[0].diagnostics, issues=wrong_patient)
        watch.lap("validate")

        unavailable = frozenset(service.resource_type_of(k) for k in prefetch.unavailable)
        facts = rt.facts_builder.build([r for _, r in prefetch.resources()], patient_id=context["patientId"],
                                       draft_orders=drafts, user_id=context["userId"], unavailable=unavailable,
                                       today=today)
        watch.lap("facts")

        rules = rt.rulebook.for_packs(service.rule_packs, service.hook)
        results = evaluate(rules, facts, rt.terminology)
        watch.lap("rules")

        shown = [f for r in results if r.shows_cards for f in r.findings]
        issued, rejected = cards_for(shown, facts)
        watch.lap("cards")

        final_cards = [c.card for c in issued]
        if rt.reasoner is not None and service.llm_task != "none":
            enriched, record["llm"] = rt.reasoner.enrich(service.llm_task, facts, final_cards, watch.start_monotonic)
            problems = [p for p in map(validate_card, enriched) if p is not None]
            if problems:  # never let LLM text break a card: keep the rule cards as they were
                record["llm"]["dropped"] = problems
            else:
                final_cards = enriched
            watch.lap("llm")

        response = {"cards": final_cards}
        record["rules"] = [{"id": r.rule.id, "version": r.rule.version, "status": r.rule.status,
                            "outcome": r.outcome, "findings": len(r.findings),
                            **({"reason": r.reason} if r.reason else {}),
                            **({"refs": sorted({ref for f in r.findings for ref in f.refs})} if r.findings else {})}
                           for r in results]
        if rejected:
            record["rejectedCards"] = [{"rule": f"{x.finding.rule.id}@{x.finding.rule.version}",
                                        "problem": x.problem} for x in rejected]
        card_index = [CardIndex(c["uuid"], c["extension"]["org.cds-service.rule"]["id"],
                                c["extension"]["org.cds-service.rule"]["version"], c["indicator"]) for c in final_cards]
        shown_by_rule: dict[str, int] = {}
        for c in issued:
            shown_by_rule[c.finding.rule.key] = shown_by_rule.get(c.finding.rule.key, 0) + 1
        outcomes = [RuleOutcome(r.rule.id, r.rule.version, r.rule.status, r.outcome,
                                shown_by_rule.get(r.rule.key, 0)) for r in results]
    except CdsError as exc:
        status, error = exc.status, exc
        record["error"] = exc.to_operation_outcome()
    except Exception as exc:  # a defect: still recorded, then answered 500 by the app's handler
        status, error = 500, exc
        record["error"] = {"resourceType": "OperationOutcome", "issue": [
            {"severity": "fatal", "code": "exception", "diagnostics": type(exc).__name__}]}
        log.exception("hook call failed unexpectedly (decision %s)", decision_id)
    else:
        error = None
    if error is not None:
        response, card_index, outcomes = None, [], []
    record["data"] = _data_record(prefetch, drafts, hashes)
    record["response"] = {"status": status, **({"cards": response["cards"]} if response else {})}
    record["timingsMs"] = dict(watch.stages, total=watch.total())
    appended = rt.decision_log.append(record, card_index, outcomes)
    log.info("decision %s service=%s status=%s cards=%d total_ms=%.1f", appended.id, service_id, status,
                 len(response["cards"]) if response else 0, record["timingsMs"]["total"])
    if error is not None:
        raise error
    return HookAnswer(response, status, record["timingsMs"], decision_id)

