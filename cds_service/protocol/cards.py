"""Findings -> spec-valid CDS Hooks cards, checked against `CardSchema` on the way out.

Pure: templates are rendered from the finding's bindings; every card and suggestion gets a fresh
uuid (the key feedback and the decision log use). A card that fails validation is dropped and
reported to the caller (decision log), never sent and never turned into a 5xx.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from typing import Any

from ..audit.record import CHART_SUMMARY_RULE, CHART_SUMMARY_VERSION, DATA_QUALITY_RULE, DATA_QUALITY_VERSION
from ..clinical.chart_summary import summary_lines, summary_markdown
from ..clinical.engine import Finding, RuleResult
from ..ehr.data_quality import Action, DataIssue
from ..ehr.prefetch import Origin, PrefetchResult
from .card_check import surely_valid
from .note_evidence import evidence_in, evidence_markdown, record_suggestions
from .schemas import CardSchema

log = logging.getLogger(__name__)

SUMMARY_MAX = 139
NON_ADHERENCE = "http://terminology.hl7.org/CodeSystem/non-adherence-reason-codes"
# Displays from HL7 CodeSystem non-adherence-reason-codes (CDS Hooks 3.0 §Reasons for rejecting a card).
OVERRIDE_REASON_DISPLAY = {
    "patient-ineligible": "Patient does not meet eligibility for recommended action",
    "indication-order-exists": "Patient has indication/order for intended action",
    "action-completed": "Recommended action was already completed",
    "action-performed-no-adverse-effect": "Intended action was performed previously without adverse effect",
    "action-not-priority": "Recommended action is not relevant or a priority in current state of health",
    "need-more-info": "Could not address recommended action due to need for more information/pending results/"
    "pending consult",
    "does-not-align-latest-evidence": "Recommended action does not align with the latest evidence",
    "risk-benefit-ratio": "Recipient assessment of risk/benefit ratio",
    "mitigate-risk-negative-outcome": "Action taken to mitigate risk of negative outcome",
    "patient-contraindication": "Patient has contraindication to recommended action",
    "prefers-alternative": "Patient prefers an alternative approach or treatment",
    "patient-refuses": "Patient refuses/declines (no context given)",
    "cds-not-applicable": "PC CDS does not apply to patient",
}
DEFAULT_OVERRIDE_REASONS = (
    "risk-benefit-ratio",
    "mitigate-risk-negative-outcome",
    "action-performed-no-adverse-effect",
    "cds-not-applicable",
)
_card_schema = CardSchema()


@dataclass(frozen=True)
class IssuedCard:
    card: dict
    finding: Finding


@dataclass(frozen=True)
class RejectedCard:
    finding: Finding
    problem: str


def template_context(finding: Finding, facts) -> dict[str, Any]:
    ctx: dict[str, Any] = dict(finding.bindings)
    ctx["patient"] = {"id": facts.patient_id, "age": facts.age, "sex": facts.sex}
    ctx["rule"] = {"id": finding.rule.id, "version": finding.rule.version, "title": finding.rule.title}
    ctx["today"] = facts.today.isoformat()
    return ctx


def _render(rule, text: str, ctx: dict) -> str:
    if "{" not in text:  # no Jinja markup: most leaves of a suggestion's FHIR resource are plain text
        return text.strip()
    return rule.template(text).render(ctx).strip()


def _render_tree(rule, node, ctx):
    if isinstance(node, str):
        return _render(rule, node, ctx)
    if isinstance(node, dict):
        return {k: _render_tree(rule, v, ctx) for k, v in node.items()}
    if isinstance(node, list):
        return [_render_tree(rule, v, ctx) for v in node]
    return node


def _override_reasons(spec) -> list[dict]:
    out = []
    for item in spec if spec is not None else DEFAULT_OVERRIDE_REASONS:
        if isinstance(item, str):
            out.append({"system": NON_ADHERENCE, "code": item, "display": OVERRIDE_REASON_DISPLAY[item]})
        else:
            out.append({k: v for k, v in item.items() if v})
    return out


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _shorten(text: str) -> str:
    """A summary within the spec's limit (< 140 characters); the only card field the spec bounds."""
    text = _one_line(text)
    return text if len(text) <= SUMMARY_MAX else text[: SUMMARY_MAX - 1].rstrip() + "…"


def build_card(finding: Finding, facts) -> dict:
    rule, spec = finding.rule, finding.rule.card
    ctx = template_context(finding, facts)
    summary_text = finding.summary or spec["summary"]
    card: dict[str, Any] = {
        "uuid": str(uuid.uuid4()),
        "summary": _shorten(_render(rule, summary_text, ctx)),
        "indicator": finding.indicator,
    }
    detail = _render(rule, spec["detail"], ctx) if spec.get("detail") else ""
    refs = "\n".join(
        f"- [{r.title}]({r.url})" + (f" — {r.citation}" if r.citation else "") for r in rule.references
    )
    evidence = evidence_in(finding.bindings)
    if evidence:  # a fact from a note fired it: quote the sentence, name the document, say who read it
        detail = (detail + "\n\n" if detail else "") + evidence_markdown(evidence)
    if finding.unknown:  # a refinement could not use all the data: say so, never imply "none recorded"
        detail = (detail + "\n\n" if detail else "") + (
            f"_Not known for this card: {', '.join(finding.unknown)} data could not be had in full, so the "
            "patient factors and indicator changes that depend on it were not applied._"
        )
    card["detail"] = (detail + "\n\n" if detail else "") + "**Sources**\n" + refs
    if spec.get("source"):
        card["source"] = {
            k: (_render(rule, v, ctx) if isinstance(v, str) else v) for k, v in spec["source"].items() if v
        }
    else:  # the first reference is the primary source of guidance, cited by its whole title
        card["source"] = {"label": _one_line(rule.references[0].title), "url": rule.references[0].url}
    suggestions = []
    drafts = {d.ref for d in facts.draft_orders}
    for i, suggestion in enumerate(spec.get("suggestions") or []):
        if i not in finding.suggestion_indices:
            continue
        actions = [_render_tree(rule, a, ctx) for a in suggestion["actions"]]
        if any(_changes_signed_record(a, drafts) for a in actions):
            continue  # chart review: a card proposes changes to draft orders only, never to signed records
        rendered = {
            "label": _render(rule, suggestion["label"], ctx),
            "uuid": str(uuid.uuid4()),
            "actions": actions,
        }
        if suggestion.get("isRecommended"):
            rendered["isRecommended"] = True
        suggestions.append(rendered)
    recording = record_suggestions(evidence, facts.patient_id) if evidence else []
    if suggestions or recording:
        card["suggestions"] = suggestions + recording
        # recording the coded fact goes with any other choice
        card["selectionBehavior"] = "any" if recording else spec.get("selectionBehavior", "at-most-one")
    card["overrideReasons"] = _override_reasons(spec.get("overrideReasons"))
    links = [
        {
            "label": _render(rule, link["label"], ctx),
            "url": _render(rule, link["url"], ctx),
            "type": link.get("type", "absolute"),
        }
        for link in spec.get("links") or []
    ]
    if links:
        card["links"] = links
    card["extension"] = {"org.cds-service.rule": {"id": rule.id, "version": rule.version}}
    if evidence:
        card["extension"]["org.cds-service.note-evidence"] = [m.as_record() for m in evidence]
    return card


def _changes_signed_record(action: dict, drafts: set[str]) -> bool:
    """A delete or update of something that is not one of this call's draft orders (on patient-view the
    medication under review is a signed order or a fill: stopping it is the clinician's act in the EHR)."""
    if action.get("type") == "delete":
        return action.get("resourceId") not in drafts
    if action.get("type") == "update":
        resource = action.get("resource") or {}
        return f"{resource.get('resourceType')}/{resource.get('id')}" not in drafts
    return False


def validate_card(card: dict) -> str | None:
    if surely_valid(card):  # the schema would accept it (card_check.py); else the schema says why
        return None
    errors = _card_schema.validate(card)
    return None if not errors else str(errors)


def cards_for(findings: list[Finding], facts) -> tuple[list[IssuedCard], list[RejectedCard]]:
    issued, rejected = [], []
    for finding in findings:
        try:
            card = build_card(finding, facts)
        except Exception as exc:  # a template bug in one rule: drop that card, keep the others
            rejected.append(RejectedCard(finding, f"render failed: {type(exc).__name__}: {exc}"))
            continue
        problem = validate_card(card)
        if problem:
            log.error(
                "card from rule %s@%s failed validation: %s", finding.rule.id, finding.rule.version, problem
            )
            rejected.append(RejectedCard(finding, problem))
        else:
            issued.append(IssuedCard(card, finding))
    return issued, rejected


MAX_LISTED = 10  # lines per list on the data-quality card; the decision record has them all


def data_quality_card(
    results: list[RuleResult],
    prefetch: PrefetchResult | None,
    issues: list[DataIssue],
    rejected: list[RejectedCard] = (),
) -> dict | None:
    """An info card when active checks could not run on all of the data (skipped for data that could
    not be had, unevaluable for data set aside as unreadable) or found something whose card could not be
    shown (it failed the card checks: a defect, logged); None when every check ran and showed its cards."""
    affected = [
        (r.rule, r.reason)
        for r in results
        if r.rule.status == "active" and r.outcome in ("skipped", "unevaluable")
    ]
    for x in rejected:
        if all(rule is not x.finding.rule for rule, _ in affected):
            affected.append((x.finding.rule, "it found something, but its card failed the card checks"))
    if not affected:
        return None
    lines = [
        "**Checks that could not run on all of this patient's data** (no card from them does not mean "
        "nothing was found):"
    ]
    lines += [f"- {rule.title} (`{rule.id}`): {reason}" for rule, reason in affected[:MAX_LISTED]]
    if len(affected) > MAX_LISTED:
        lines.append(f"- and {len(affected) - MAX_LISTED} more")
    why = []
    for item in prefetch.items.values() if prefetch is not None else []:
        if item.origin is Origin.UNAVAILABLE:
            why.append(f"- `{item.key}` could not be retrieved: {item.problem}")
    set_aside = [i for i in issues if i.action is Action.SET_ASIDE]
    why += [
        f"- `{i.location}`"
        + (f" ({i.resource_type})" if i.resource_type else "")
        + f" set aside: {i.problem}"
        for i in set_aside[:MAX_LISTED]
    ]
    if len(set_aside) > MAX_LISTED:
        why.append(f"- and {len(set_aside) - MAX_LISTED} more resources set aside")
    if why:
        lines += ["", "**Why**", *why]
    lines += ["", "Review these points in the chart directly. The decision record lists every data problem."]
    unavailable = sorted(
        k for k, item in (prefetch.items.items() if prefetch else []) if item.origin is Origin.UNAVAILABLE
    )
    summary = {"checks": [f"{rule.id}@{rule.version}" for rule, _ in affected], "setAside": len(set_aside)}
    if unavailable:
        summary["unavailable"] = unavailable
    return {
        "uuid": str(uuid.uuid4()),
        "summary": "Some checks could not run on all of this patient's data",
        "indicator": "info",
        "detail": "\n".join(lines),
        "source": {"label": "CDS service data checks"},
        "extension": {
            "org.cds-service.rule": {"id": DATA_QUALITY_RULE, "version": DATA_QUALITY_VERSION},
            "org.cds-service.data-quality": summary,
        },
    }


def chart_summary_card(facts, why: str) -> dict | None:
    """The deterministic patient-view summary (clinical/chart_summary.py): facts with dates and sources;
    None when every section is empty."""
    sections = summary_lines(facts)
    if not any(sections.values()):
        return None
    return {
        "uuid": str(uuid.uuid4()),
        "summary": "Chart summary: problems, high-alert medicines, abnormal labs, allergies, notes",
        "indicator": "info",
        "detail": summary_markdown(sections, why),
        "source": {"label": "CDS service chart summary (composed from the record, no language model)"},
        "extension": {"org.cds-service.rule": {"id": CHART_SUMMARY_RULE, "version": CHART_SUMMARY_VERSION}},
    }
