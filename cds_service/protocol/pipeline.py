"""One hook call end to end, as stages over a typed `HookCall`:

    parse ─▶ check drafts ─▶ gather (prefetch, fetch) ─▶ screen data ─▶ notes ─▶ facts ─▶ rules ─▶ cards
          ─▶ reasoning (LLM) or chart summary ─▶ data-quality card ─▶ DecisionRecord.from_call
          ─▶ decision log ─▶ answer

Strict with the request, lenient with the data: the envelope, context and draft orders are the EHR's
own request and answer 400 naming every bad field (after normalising deviations whose meaning is
unambiguous, which are recorded); prefetched and fetched data are screened per resource
(ehr/data_quality.py): used, normalised or set aside, each recorded, and when a check could not run
on all of the data the clinician is told on an info card.

Each stage is a function of the call with a small surface: it reads what earlier stages left on the
call and adds its own result. Knows nothing about Flask: the HTTP layer hands over the parsed JSON
body and the client identity and renders the `HookAnswer`, or the `CdsError` raised. Every call to an
existing service is recorded in the decision log before the answer leaves, 4xx included (the record
says why); an unexpected defect is logged here, once, and answered 500.
"""

from __future__ import annotations

import logging
import time
import uuid
from concurrent.futures import Executor
from dataclasses import dataclass, field, replace
from datetime import date
from typing import Any

from ..audit.decision_log import DecisionLog
from ..audit.record import DecisionRecord
from ..canonical import utc_now
from ..clinical.engine import RuleResult, evaluate
from ..clinical.facts import ELEMENTS_READ, Facts, FactsBuilder
from ..clinical.mentions import BASELINE, COMBINATION, LLM, Mention
from ..clinical.note_extraction import NoteReader
from ..clinical.terminology import Terminology
from ..ehr.data_quality import Action, DataIssue, reference_of, screen
from ..ehr.documents import DOCUMENT_TYPES, read_documents
from ..ehr.fhir_client import FhirAccess, FhirClient
from ..ehr.medication_refs import MedicationReads, read_medications
from ..ehr.prefetch import PrefetchResult, resolve
from ..ehr.validation import ResourceValidator, patient_scope_problem, raise_invalid
from ..errors import CdsError, InvalidRequest, Issue, PrefetchUnavailable, clip
from ..reasoning.reasoner import Reasoner
from ..telemetry import metrics
from ..telemetry.logs import current_request_id
from .cards import IssuedCard, RejectedCard, cards_for, chart_summary_card, data_quality_card, validate_card
from .client_auth import ClientIdentity
from .registry import ServiceDefinition
from .schemas import CONTEXT_SCHEMAS, HookRequestSchema, load_or_400

log = logging.getLogger(__name__)
_envelope_schema = HookRequestSchema()
_context_schemas = {hook: schema() for hook, schema in CONTEXT_SCHEMAS.items()}


class Stopwatch:
    """Stage times of one call. `arrived` (time.monotonic()) is when the request arrived, before the
    pipeline started: the time since is the first stage, "receive" (waiting for a thread, reading and
    parsing the body, authenticating the client), and the response budget and FHIR deadline count from
    it (`start_monotonic`)."""

    def __init__(self, arrived: float | None = None):
        self.start = self.last = time.perf_counter()
        now = time.monotonic()
        self.start_monotonic = min(arrived, now) if arrived is not None else now
        self.stages: dict[str, float] = {}
        self._before = now - self.start_monotonic  # seconds before the pipeline started
        if arrived is not None:
            self.stages["receive"] = round(self._before * 1000, 2)

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        self.stages[stage] = round((now - self.last) * 1000, 2)
        self.last = now

    def total(self) -> float:
        return round((time.perf_counter() - self.start + self._before) * 1000, 2)


@dataclass(frozen=True)
class HookRequest:
    """The EHR's request, parsed and checked (envelope, then the hook's context)."""

    hook: str
    hook_instance: str
    context: dict
    fhir_server: str | None = None
    fhir_authorization: dict | None = None
    prefetch: dict | None = None

    @property
    def patient_id(self) -> str:
        return self.context["patientId"]

    @property
    def user_id(self) -> str:
        return self.context["userId"]

    @property
    def encounter_id(self) -> str | None:
        return self.context.get("encounterId")

    @property
    def selections(self) -> tuple[str, ...]:
        """order-select: the draft orders the user selected (``Type/id``, each checked to be a draft)."""
        return tuple(self.context.get("selections") or ())

    @property
    def access_token(self) -> str | None:
        return (self.fhir_authorization or {}).get("access_token")

    def granted_access(self) -> dict:
        """What the EHR granted, for the record; never the token itself."""
        auth = self.fhir_authorization or {}
        return {
            "scope": auth.get("scope"),
            "subject": auth.get("subject"),
            "expires_in": auth.get("expires_in"),
        }


@dataclass
class HookCall:
    """One call as it moves through the stages; `DecisionRecord.from_call` reads it at the end."""

    service_id: str
    candidates: dict[str, ServiceDefinition]  # the service's definitions per hook
    body: Any  # the JSON body as received
    client: ClientIdentity
    decision_id: str
    recorded_at: str
    watch: Stopwatch
    today: date | None = None
    service: ServiceDefinition | None = None
    request: HookRequest | None = None
    drafts: list[dict] = field(default_factory=list)
    prefetch: PrefetchResult | None = None
    fhir_client: FhirClient | None = None  # the EHR's FHIR server for this call (also reads note Binaries)
    mentions: tuple[Mention, ...] = ()  # what the notes say, with assertion status (notes stage)
    notes: dict | None = None  # the record of the notes stage: documents read, unread, mentions, who decided
    summary_card: str | None = None  # uuid of the deterministic chart summary card
    hashes: dict[int, str] = field(default_factory=dict)  # id(resource) -> content hash, for the record
    facts: Facts | None = None
    results: list[RuleResult] = field(default_factory=list)
    issued: list[IssuedCard] = field(default_factory=list)
    rejected: list[RejectedCard] = field(default_factory=list)
    cards: list[dict] = field(default_factory=list)  # the answer's cards
    llm: dict | None = None
    usable: list[tuple[str, dict]] = field(default_factory=list)  # (where, resource) the screen kept
    data_issues: list[DataIssue] = field(default_factory=list)  # normalised / set aside / used with problems
    data_quality_card: str | None = None  # uuid of the info card saying checks ran on part of the data
    medication_reads: MedicationReads | None = None  # Medications read by reference, and those unidentified
    request_id: str | None = field(default_factory=current_request_id)  # the HTTP request's (X-Request-Id)
    error: CdsError | None = None
    status: int = 200

    @classmethod
    def start(
        cls,
        service_id: str,
        candidates: dict[str, ServiceDefinition],
        body: Any,
        client: ClientIdentity,
        today: date | None = None,
        arrived: float | None = None,
    ) -> "HookCall":
        return cls(
            service_id,
            candidates,
            body,
            client,
            decision_id=str(uuid.uuid4()),
            recorded_at=utc_now(),
            watch=Stopwatch(arrived),
            today=today,
        )


@dataclass(frozen=True)
class HookAnswer:
    body: dict
    watch: Stopwatch  # the route adds its rendering of the body as a last stage
    decision_id: str

    def server_timing(self) -> str:
        """Every stage of the call, the decision-log append and the response rendering included."""
        stages = dict(self.watch.stages, total=self.watch.total())
        return ", ".join(f"{k};dur={v}" for k, v in stages.items())


# -- stages ------------------------------------------------------------------------------------------


def parse(call: HookCall) -> None:
    """Envelope, then the service for its hook, then the hook's context; InvalidRequest names each bad
    field."""
    if not isinstance(call.body, dict):
        raise InvalidRequest("the request body must be a JSON object", expression="body")
    envelope = load_or_400(_envelope_schema, call.body)
    hook = envelope["hook"]
    call.service = call.candidates.get(hook)
    if call.service is None:
        raise InvalidRequest(
            f"service '{call.service_id}' answers {', '.join(sorted(call.candidates))}, not {clip(hook)!r}",
            expression="hook",
        )
    # service definitions only name hooks that have a context schema (service.schema.json)
    context = load_or_400(_context_schemas[hook], envelope["context"], prefix="context")
    call.request = HookRequest(
        hook,
        envelope["hookInstance"],
        context,
        envelope.get("fhirServer"),
        envelope.get("fhirAuthorization"),
        envelope.get("prefetch"),
    )
    if hook in DRAFT_HOOKS:
        call.drafts = [e["resource"] for e in context["draftOrders"].get("entry") or []]


# The hooks whose context carries draftOrders (order-select: the ones being written, of which `selections`
# were just chosen; order-sign: the ones about to be signed)
DRAFT_HOOKS = frozenset({"order-select", "order-sign"})
# Their draftOrders (CDS Hooks order-select / order-sign 1.0, R4), and the Medication resources these
# may reference
DRAFT_TYPES = frozenset(
    {"DeviceRequest", "MedicationRequest", "NutritionOrder", "ServiceRequest", "VisionPrescription"}
)
_DRAFT_SUPPORT = frozenset({"Medication"})


def _located_drafts(call: HookCall) -> list[tuple[str, dict]]:
    return [(f"context.draftOrders.entry[{i}].resource", r) for i, r in enumerate(call.drafts)]


def check_drafts(call: HookCall, validator: ResourceValidator) -> None:
    """The orders being signed are the EHR's own request: checked before any data is fetched for them,
    every problem named at once. A lone object where R4 wants a list is read as a list (recorded)."""
    issues: list[Issue] = []
    checked_drafts = []
    for where, draft in _located_drafts(call):
        rtype = draft.get("resourceType")
        if rtype not in DRAFT_TYPES | _DRAFT_SUPPORT:
            issues.append(
                Issue(
                    f"{where}.resourceType: {clip(rtype, 40)} is not an order {call.request.hook} carries "
                    f"({', '.join(sorted(DRAFT_TYPES))})",
                    (f"{where}.resourceType",),
                )
            )
            continue
        checked = validator.examine(draft, where)
        call.hashes[id(checked.resource)] = checked.digest
        issues.extend(checked.issues)
        if rtype in DRAFT_TYPES:
            scope = patient_scope_problem(checked.resource, call.request.patient_id)
            path = f"{where}.{scope.element}" if scope else ""
            if scope is not None and scope.certain:  # an order for someone else: never checked as ours
                issues.append(Issue(f"{path}: {scope.why}", (path,)))
            elif scope is not None:  # the context names the patient; the doubt is recorded
                call.data_issues.append(
                    DataIssue(where, Action.USED, scope.why, (path,), reference_of(draft), rtype)
                )
        if checked.normalised:
            call.data_issues.append(
                DataIssue(
                    where,
                    Action.NORMALISED,
                    "a single object where FHIR R4 wants a list: read as a one-item list",
                    tuple(checked.normalised),
                    reference_of(draft),
                    rtype,
                )
            )
        checked_drafts.append(checked.resource)
    for i, selection in enumerate(call.request.selections):  # order-select: the schema checked each names
        if selection.partition("/")[0] not in DRAFT_TYPES:  # a draft; a Medication is no order
            where = f"context.selections[{i}]"
            why = f"{clip(selection)} is not an order ({', '.join(sorted(DRAFT_TYPES))})"
            issues.append(Issue(f"{where}: {why}", (where,)))
    if issues:
        raise_invalid(issues)
    call.drafts = checked_drafts


def gather(call: HookCall, fhir: FhirAccess, executor: Executor | None) -> None:
    """The prefetch as sent, the rest fetched from the EHR's FHIR server (prefetch.py)."""
    request = call.request
    # the FHIR deadline counts from the request's arrival, like the response budget
    client = call.fhir_client = fhir.client(
        request.fhir_server, request.access_token, started=call.watch.start_monotonic
    )
    try:
        call.prefetch = resolve(
            call.service.templates,
            request.context,
            request.prefetch,
            client,
            executor,
            service_id=call.service.id,
        )
    except PrefetchUnavailable as exc:  # a 412's record still lists every key: had, skipped, missing
        call.prefetch = exc.partial
        raise


def check_data(call: HookCall, validator: ResourceValidator) -> None:
    """Screen the data per resource (ehr/data_quality.py); what cannot be read is set aside, recorded."""
    for item in call.prefetch.items.values():
        for problem in item.entry_problems:
            action = Action.NORMALISED if problem.normalised else Action.SET_ASIDE
            call.data_issues.append(DataIssue(f"prefetch.{item.key}.{problem.path}", action, problem.why))
    screened = screen(call.prefetch.located(), call.request.patient_id, validator, ELEMENTS_READ)
    call.hashes.update(screened.digests)
    call.data_issues.extend(screened.issues)
    call.usable = screened.usable


def resolve_medications(call: HookCall, validator: ResourceValidator, executor: Executor | None) -> None:
    """Medications named only by reference: read the Medications the call did not bring from the FHIR
    server (ehr/medication_refs.py); one that stays unidentified is set aside and said, never dropped."""
    reads = read_medications(call.usable + _located_drafts(call), call.fhir_client, executor)
    if not reads.outcomes and not reads.unidentified:
        return
    call.medication_reads = reads
    if reads.read:
        screened = screen(reads.read, call.request.patient_id, validator, ELEMENTS_READ)
        call.hashes.update(screened.digests)
        call.data_issues.extend(screened.issues)
        call.usable += screened.usable
    set_aside = set()
    for where, resource, why in reads.unidentified:
        fields = (f"{where}.medicationReference",)
        rtype = resource.get("resourceType")
        call.data_issues.append(
            DataIssue(where, Action.SET_ASIDE, why, fields, reference_of(resource), rtype)
        )
        if not where.startswith("context."):  # a draft stays: it is what is being signed
            set_aside.add(id(resource))
    if set_aside:
        call.usable = [(w, r) for w, r in call.usable if id(r) not in set_aside]


def read_notes(call: HookCall, reader: NoteReader, reasoner: Reasoner | None) -> None:
    """The text of the notes and reports (ehr/documents.py), the mentions in it (clinical/note_extraction.py)
    and their assertion status: the ConText baseline's, or the LLM's where its measured figures earn it
    (reasoning/capabilities.py). The LLM never holds up the rules: on order-sign and order-select only
    answers already cached are used (patient-view asked for them when the chart opened); on patient-view
    it is waited for within the response budget. Whatever is not ready is recorded as pending and the
    baseline decides."""
    documents = [r for _, r in call.usable if r.get("resourceType") in DOCUMENT_TYPES]
    if not documents and not any(t in DOCUMENT_TYPES for t in call.service.resource_types.values()):
        return
    read = read_documents(documents, call.fhir_client)
    mentions = [m for text in read.texts for m in reader.read(text)]
    component = reasoner.capabilities.assertion_component if reasoner is not None else BASELINE
    llm_items: list[dict] = []
    if component != BASELINE and mentions:
        if call.request.hook == "patient-view":
            deadline = call.watch.start_monotonic + reasoner.budget_ms / 1000.0
        else:
            deadline = time.monotonic()  # cached answers only
        answers = reasoner.decide_assertions(
            [(m.sentence, m.start - m.sentence_start, m.end - m.sentence_start) for m in mentions], deadline
        )
        decided = []
        for m, (label, item) in zip(mentions, answers, strict=True):
            item["mention"] = [m.document, m.start, m.end]
            llm_items.append(item)
            if label is None or (component == COMBINATION and m.triggers):
                decided.append(m)  # pending, or the baseline found a trigger: the baseline decides
            else:
                decided.append(replace(m, status=label, decided_by=LLM, model_id=reasoner.model_id))
        mentions = decided
    call.mentions = tuple(mentions)
    call.notes = {
        "documentsRead": len({t.ref for t in read.texts}),
        "parts": [{"document": t.ref, "part": t.part, "characters": len(t.text)} for t in read.texts][:100],
        "unread": [
            {"document": u.ref, "part": u.part, "contentType": u.content_type, "why": u.why}
            for u in read.unread
        ][:100],
        "assertionComponent": component,
        **({"llm": {"modelId": reasoner.model_id, "items": llm_items[:200]}} if llm_items else {}),
    }


def build_facts(call: HookCall, builder: FactsBuilder) -> None:
    unavailable = frozenset(call.service.resource_types[k] for k in call.prefetch.unavailable)
    # Types with something set aside; an entry that held no resource counts as its key's type.
    incomplete = frozenset(
        i.resource_type or call.service.resource_types.get(i.location.split(".")[1], "unknown")
        for i in call.data_issues
        if i.action is Action.SET_ASIDE and i.location.startswith(("prefetch.", "context.draftOrders"))
    )
    call.facts = builder.build(
        [r for _, r in call.usable],
        patient_id=call.request.patient_id,
        draft_orders=call.drafts,
        user_id=call.request.user_id,
        unavailable=unavailable,
        incomplete=incomplete,
        today=call.today,
        mentions=call.mentions,
        hook=call.request.hook,
        selections=call.request.selections,  # order-select: only these drafts are the rules' subjects
        digests=call.hashes,  # facts read before from the same content are reused
    )
    if call.notes is not None:  # every mention and what became of it (used, or why not)
        call.notes["mentions"] = [
            {**m.as_record(), "use": use, **({"why": why} if why else {})}
            for m, use, why in call.facts.note_uses[:200]
        ]
    bad_drafts = []
    for source, position, error in call.facts.unreadable:
        if source == "draft_orders":
            where = f"context.draftOrders.entry[{position}].resource"
            bad_drafts.append(Issue(f"{where}: could not be read ({error})", (where,)))
        else:
            where, resource = call.usable[position]
            call.data_issues.append(
                DataIssue(
                    where,
                    Action.SET_ASIDE,
                    f"could not be read ({error})",
                    (where,),
                    reference_of(resource),
                    resource.get("resourceType"),
                )
            )
    if bad_drafts:
        raise_invalid(bad_drafts)


def run_rules(call: HookCall, terminology: Terminology) -> None:
    call.results = evaluate(call.service.rules, call.facts, terminology)


def build_cards(call: HookCall) -> None:
    shown = [f for r in call.results if r.shows_cards for f in r.findings]
    call.issued, call.rejected = cards_for(shown, call.facts)
    call.cards = [c.card for c in call.issued]


def reason(call: HookCall, reasoner: Reasoner) -> None:
    """LLM text under the response budget; never blocks or breaks the rule cards."""
    enriched, call.llm = reasoner.enrich(
        call.service.llm_task, call.facts, call.cards, call.watch.start_monotonic
    )
    problems = [p for p in map(validate_card, enriched) if p is not None]
    if problems:  # keep the rule cards as they were
        call.llm["dropped"] = problems
    else:
        call.cards = enriched


def summarise_chart(call: HookCall, reasoner: Reasoner | None) -> None:
    """Patient-view services that ask for a summary get the deterministic one unless the model has
    earned free text (its figures are in the decision record's `llm.freeText`)."""
    if call.service.llm_task != "summary":
        return
    if reasoner is None:
        why = "no language model configured"
    elif reasoner.capabilities.free_text_enabled:
        return
    else:
        why = f"free text is off for {reasoner.model_id}: {reasoner.capabilities.free_text_reason}"
    card = chart_summary_card(call.facts, why)
    if card is None:  # nothing on the chart to summarise: no card (an empty chart gets no noise)
        return
    call.cards.append(card)
    call.summary_card = card["uuid"]


def report_data_quality(call: HookCall) -> None:
    """Never "no cards" when a check could not run: an info card names the checks and why."""
    card = data_quality_card(call.results, call.prefetch, call.data_issues, call.rejected)
    if card is not None:
        call.cards.append(card)
        call.data_quality_card = card["uuid"]


# -- the pipeline --------------------------------------------------------------------------------------


@dataclass
class HookPipeline:
    """The stages in order, with what they need from start-up (built once per process)."""

    validator: ResourceValidator
    fhir: FhirAccess
    executor: Executor | None
    facts_builder: FactsBuilder
    terminology: Terminology
    decision_log: DecisionLog
    note_reader: NoteReader
    reasoner: Reasoner | None = None

    def call(
        self,
        service_id: str,
        candidates: dict[str, ServiceDefinition],
        body: Any,
        client: ClientIdentity,
        today: date | None = None,
        arrived: float | None = None,
    ) -> HookAnswer:
        return self.run(HookCall.start(service_id, candidates, body, client, today, arrived))

    def warm(self, service_id: str, candidates: dict[str, ServiceDefinition], body: Any) -> list[dict]:
        """Every stage but the LLM and the decision log, on a synthetic request (protocol/warm_up.py);
        returns the cards it would have answered."""
        from .warm_up import WARM_UP_CLIENT

        call = HookCall.start(service_id, candidates, body, WARM_UP_CLIENT)
        self._stages(call, llm=False)
        if call.error is not None:
            raise call.error
        DecisionRecord.from_call(call)  # built, never appended
        return call.cards

    def refuse(
        self,
        service_id: str,
        candidates: dict[str, ServiceDefinition],
        error: CdsError,
        client: ClientIdentity,
        arrived: float | None = None,
    ) -> HookAnswer:
        """A call whose body could not be taken (not JSON, too large, sent too slowly, not a JSON media
        type): recorded like every other refusal, then raised with its decision id."""
        call = HookCall.start(service_id, candidates, None, client, arrived=arrived)
        call.error, call.status = error, error.status
        return self._conclude(call)

    def run(self, call: HookCall) -> HookAnswer:
        self._stages(call, llm=True)
        call.watch.lap("summary")
        return self._conclude(call)

    def _conclude(self, call: HookCall) -> HookAnswer:
        """Record the call, append it to the decision log, then answer (or raise its error)."""
        lap = call.watch.lap  # Server-Timing names
        record = DecisionRecord.from_call(call)  # its timingsMs end here
        lap("record")
        self.decision_log.append(record)
        lap("log")
        metrics.observe_call(call, record, append_seconds=call.watch.stages["log"] / 1000)
        return self._answer(call, record)

    def _stages(self, call: HookCall, *, llm: bool) -> None:
        lap = call.watch.lap
        try:
            parse(call)
            check_drafts(call, self.validator)
            lap("parse")
            gather(call, self.fhir, self.executor)
            lap("prefetch")
            check_data(call, self.validator)
            resolve_medications(call, self.validator, self.executor)
            lap("validate")
            read_notes(call, self.note_reader, self.reasoner if llm else None)
            lap("notes")
            build_facts(call, self.facts_builder)
            lap("facts")
            run_rules(call, self.terminology)
            lap("rules")
            build_cards(call)
            lap("cards")
            if llm and self.reasoner is not None and call.service.llm_task != "none":
                reason(call, self.reasoner)
                lap("llm")
            summarise_chart(call, self.reasoner)
            report_data_quality(call)
        except CdsError as exc:
            call.error, call.status = exc, exc.status
        except Exception as exc:  # a defect: logged once, here; recorded and answered 500
            log.exception("hook call failed unexpectedly (decision %s)", call.decision_id)
            call.error = CdsError(f"internal error ({type(exc).__name__}); the event was logged")
            call.status = call.error.status

    def _answer(self, call: HookCall, record: DecisionRecord) -> HookAnswer:
        timings = record.data["timingsMs"]
        log.info(
            "decision %s service=%s status=%s cards=%d total_ms=%.1f",
            call.decision_id,
            call.service_id,
            call.status,
            len(call.cards) if call.error is None else 0,
            timings["total"],
        )
        if call.error is not None:
            # the record of a refusal, too; the app's error handler logs why
            call.error.headers["X-Decision-Id"] = call.decision_id
            raise call.error
        return HookAnswer({"cards": call.cards}, call.watch, call.decision_id)
