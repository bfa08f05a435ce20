"""The rules engine: a pure function (rules, facts) -> results, each naming rule id and version.

No I/O. A condition is a tree of `all` / `any` / `not` over the predicates of predicates.py (see
rules/README.md); `Evaluation.solutions` backtracks over the alternatives each predicate binds.

Outcomes: ``fired``; ``not-fired``; ``unevaluable`` (silent, but part of the data it reads was set aside
as unreadable, so silence proves nothing); ``skipped`` (data it reads could not be had at all); ``error``.

Status semantics: `active` rules fire cards; `shadow` rules are evaluated and recorded but show no
card; `retired` rules are never evaluated; `draft` rules run only in rule tests.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..indicators import RANK
from .facts import Facts, Medication
from .predicates import Bindings, compare, listify, lookup, same_ingredient
from .rule_model import Rule
from .terminology import Terminology

MAX_FINDINGS_PER_RULE = 5  # one rule never floods the clinician with cards


@dataclass(frozen=True)
class Finding:
    rule: Rule
    indicator: str
    bindings: Mapping[str, Any]
    refs: tuple[str, ...]  # the resources that made the rule fire (draft, bound matches)
    summary: str | None = None  # escalation may replace the summary template
    suggestion_indices: tuple[int, ...] = ()  # card suggestions whose `when` holds (all when none has one)
    unknown: tuple[str, ...] = ()  # resource types the card's refinements read but could not have


@dataclass(frozen=True)
class RuleResult:
    rule: Rule
    outcome: str  # fired | not-fired | unevaluable | skipped | error
    findings: tuple[Finding, ...] = ()
    reason: str | None = None

    @property
    def shows_cards(self) -> bool:
        return self.outcome == "fired" and self.rule.status == "active"


MEMBERSHIP_MEMO_MAX = 100_000  # (value sets, drug) answers kept per process


class Evaluation:
    """Evaluates conditions for one rule against one Facts (and one draft order, when bound)."""

    def __init__(self, facts: Facts, terminology: Terminology):
        self.facts = facts
        self.terminology = terminology
        self._memo: dict = facts.derived.setdefault("memo", {})

    # -- value-set membership ---------------------------------------------------------------
    def codes_in(self, refs, codings) -> bool:
        for ref in listify(refs):
            if "|" in ref:
                system, _, code = ref.partition("|")
                if any(c == code and (not system or s == system) for s, c in codings):
                    return True
            elif self.terminology.codes_match(ref, codings):
                return True
        return False

    def med_in(self, refs, med: Medication) -> bool:
        """Is the medication in value set(s) `refs`? A pure function of the value sets and the drug
        (codes, ingredients, classes), so it is kept for the process (on the terminology, bounded): a
        call asks ~150 times, nearly all about drugs an earlier call asked about."""
        key = (refs if type(refs) is str else tuple(refs or ()), med.drug)
        memo = self.terminology.membership
        hit = memo.get(key)
        if hit is None:
            hit = self._med_in(refs, med)
            if len(memo) >= MEMBERSHIP_MEMO_MAX:
                memo.clear()  # rare: a fresh start beats bookkeeping on every lookup
            memo[key] = hit
        return hit

    def _med_in(self, refs, med: Medication) -> bool:
        for ref in listify(refs):
            if ref.startswith("ingredient:"):
                if ref[len("ingredient:") :] in med.ingredients:
                    return True
                continue
            vs = self.terminology.valuesets.get(ref) if "|" not in ref else None
            if vs is not None and vs.is_drug_class and ref in med.classes:
                return True
            if self.codes_in(ref, med.codes):
                return True
        return False

    def observations_in(self, refs) -> tuple:
        """The observations (newest first) with a code in value set(s) `refs`, found once per call: rules
        asking again per draft order or per drug class then scan only those."""
        key = ("observations_in", tuple(listify(refs)))
        if key not in self._memo:
            # a chart repeats few distinct codes across many results: test each distinct coding once
            distinct = self._memo.setdefault("observation_codes", {o.codes for o in self.facts.observations})
            hits = {codes for codes in distinct if self.codes_in(refs, codes)}
            self._memo[key] = tuple(o for o in self.facts.observations if o.codes in hits)
        return self._memo[key]

    # -- medications ----------------------------------------------------------------------------
    def med_matches(self, spec: Mapping, med: Medication, b: Bindings) -> bool:
        f = self.facts
        if "in" in spec and not self.med_in(spec["in"], med):
            return False
        if "not_in" in spec and self.med_in(spec["not_in"], med):
            return False
        if "same_ingredient_as" in spec:
            other = b.get(spec["same_ingredient_as"])
            if other is None or other is med or not same_ingredient(med, other):
                return False
        if "same_class_as" in spec:
            other = b.get(spec["same_class_as"]["binding"])
            classes = set(listify(spec["same_class_as"]["classes"]))
            if (
                other is None
                or other is med
                or same_ingredient(med, other)
                or not (med.classes & other.classes & classes)
            ):
                return False
        if "category" in spec and not (med.categories & set(spec["category"])):
            return False
        if "not_category" in spec and med.categories & set(spec["not_category"]):
            return False
        if "status" in spec and med.status not in spec["status"]:
            return False
        if "source" in spec and med.source not in spec["source"]:
            return False
        if "route" in spec and med.route not in spec["route"]:
            return False
        if "not_route" in spec and med.route in spec["not_route"]:
            return False
        if "systemic" in spec and med.systemic != spec["systemic"]:
            return False
        if "days_supplied" in spec and not compare(med.days_supplied, spec["days_supplied"]):
            return False
        if "authored_days_ago" in spec and not compare(f.days_ago(med.authored), spec["authored_days_ago"]):
            return False
        if "mme_per_day" in spec and not compare(med.mme_per_day, spec["mme_per_day"]):
            return False
        if "authored_after" in spec:
            anchor = b.get(spec["authored_after"])
            when = getattr(anchor, "when", None)
            if when is None or med.authored is None or med.authored < when:
                return False
        if "supply_days" in spec and not compare(med.supply_days, spec["supply_days"]):
            return False
        if "validity_days" in spec and not compare(med.validity_days, spec["validity_days"]):
            return False
        if "supply_or_validity_days" in spec:
            known = [d for d in (med.supply_days, med.validity_days) if d is not None]
            if not compare(max(known) if known else None, spec["supply_or_validity_days"]):
                return False
        if "authored_within_days_before" in spec:
            window = spec["authored_within_days_before"]
            bound = b.get(window["binding"])  # an observation, event or condition; a medication: authored
            anchor = getattr(bound, "when", None) or getattr(bound, "authored", None)
            if anchor is None or med.authored is None:
                return False
            days_before = (anchor.date() - med.authored.date()).days
            if not 1 <= days_before <= window["days"]:
                return False
        return True

    def members(self, refs, among: str) -> tuple[Medication, ...]:
        """The medications of a fixed pool (active, drafts, history) in value set(s) `refs`, computed
        once per call: rules pairing each draft with every other medication then scan only the
        members, so a call stays linear in drafts x members, not drafts x medications per rule."""
        key = ("members", among, tuple(listify(refs)))
        if key not in self._memo:
            pool = {"active": self.facts.active_medications, "drafts": self.facts.draft_orders}.get(among)
            pool = self.facts.medications if pool is None else pool
            self._memo[key] = tuple(m for m in pool if self.med_in(refs, m))
        return self._memo[key]

    def sharing_ingredient(self, pool: tuple[Medication, ...], med: Medication) -> list[Medication]:
        """The members of `pool` that share an ingredient (or, unresolved, a product code) with `med`,
        through an index built once per call instead of a scan per draft order."""
        index = self._memo.get("by_ingredient")
        if index is None:
            index = {}
            f = self.facts
            for m in f.medications + f.draft_orders:
                for key in m.ingredients or {f"code:{s}|{c}" for s, c in m.codes}:
                    index.setdefault(key, set()).add(id(m))
            self._memo["by_ingredient"] = index
        keys = med.ingredients or {f"code:{s}|{c}" for s, c in med.codes}
        candidates = set().union(*(index.get(k, set()) for k in keys)) if keys else set()
        return [m for m in pool if id(m) in candidates] if len(candidates) < len(pool) else list(pool)

    def med_pool(self, among: str, b: Bindings, refs=None) -> tuple[Medication, ...]:
        """The pool a predicate scans; with `refs`, only its members in those value sets."""
        f = self.facts
        draft = b.get("draft")
        if refs is not None:
            active, drafts, history = (self.members(refs, p) for p in ("active", "drafts", "history"))
        else:
            active, drafts, history = f.active_medications, f.draft_orders, f.medications
        others = tuple(d for d in drafts if d is not draft)
        if among == "active":
            return active
        if among == "drafts":
            return drafts
        if among == "other_drafts":
            return others
        if among == "active_or_other_drafts":
            return active + others
        if among == "history":
            return history
        raise ValueError(among)

    # -- predicates -------------------------------------------------------------------------------
    def solutions(self, node: Mapping, b: Bindings) -> Iterator[Bindings]:
        """Every way the condition holds, as bindings (backtracking over `as:` alternatives)."""
        ((name, args),) = node.items()
        if name == "all":
            yield from self._all(args, 0, b)
        elif name == "any":
            for child in args:
                yield from self.solutions(child, b)
        elif name == "not":
            if self.test(args, b) is None:
                yield b
        else:
            found, negated = lookup(name)
            if not negated:
                yield from found.evaluate(self, args, b)
            elif next(found.evaluate(self, args, b), None) is None:
                yield b

    def _all(self, children, i: int, b: Bindings) -> Iterator[Bindings]:
        if i == len(children):
            yield b
            return
        for found in self.solutions(children[i], b):
            yield from self._all(children, i + 1, found)

    def test(self, node: Mapping, b: Bindings) -> Bindings | None:
        return next(self.solutions(node, b), None)


def _refs(bindings: Mapping[str, Any]) -> tuple[str, ...]:
    refs = []
    for key, value in bindings.items():
        if key.endswith("_all"):
            continue
        ref = getattr(value, "ref", None)
        if isinstance(ref, str):
            refs.append(ref)
    return tuple(sorted(set(refs)))


# Medication review when the chart opens: how recent a start must be for a combination already on the
# chart to keep its full indicator (see review_indicator).
NEWLY_STARTED_DAYS = 14


def _starts(rule: Rule, facts: Facts) -> list[Bindings]:
    """Where a `foreach: draft_medication` rule starts: each draft order being signed; on order-select
    only the selected drafts (the others are context); on patient-view, each medication the patient
    takes now (a review of the chart as it stands)."""
    if rule.foreach != "draft_medication":
        return [{}]
    if facts.selections:
        return [{"draft": d} for d in facts.draft_orders if d.ref in facts.selections]
    if facts.hook == "patient-view":
        return [{"draft": m} for m in facts.active_medications]
    return [{"draft": d} for d in facts.draft_orders]


def review_indicator(indicator: str, bindings: Mapping[str, Any], facts: Facts) -> str:
    """The indicator policy for what is already on the chart (patient-view medication review), chosen
    to avoid alert fatigue: a combination the patient has been taking for a while is `info` (it was
    accepted when ordered, and is shown so it can be reviewed); it keeps the rule's own indicator when it
    is `critical` (contraindicated, whatever its age) or when one of its medications was started in the
    last NEWLY_STARTED_DAYS days (possibly never checked together, e.g. a fill from another prescriber).
    Cards about orders being signed or selected are never changed."""
    subject = bindings.get("draft")
    if not isinstance(subject, Medication) or subject.is_draft or indicator == "critical":
        return indicator
    meds = [v for k, v in bindings.items() if isinstance(v, Medication) and not k.endswith("_all")]
    if any(m.is_draft for m in meds):
        return indicator
    ages = [facts.days_ago(m.authored) for m in meds]
    if any(age is not None and age <= NEWLY_STARTED_DAYS for age in ages):
        return indicator
    return "info"


def evaluate_rule(rule: Rule, facts: Facts, terminology: Terminology) -> RuleResult:
    missing = rule.reads & facts.unavailable
    if missing:
        return RuleResult(rule, "skipped", reason=f"data unavailable: {', '.join(sorted(missing))}")
    if not rule.note_evidence:  # facts from notes fire only the rules that allow them
        facts = facts.coded_only
    ev = Evaluation(facts, terminology)
    try:
        starts = _starts(rule, facts)
        findings: list[Finding] = []
        seen: set[tuple[str, ...]] = set()
        limit = min(rule.max_cards or MAX_FINDINGS_PER_RULE, MAX_FINDINGS_PER_RULE)
        # Refinements (optional factors, escalations) that read data the call could not have, or had only
        # in part: the card keeps what `when` proved and says what was not known.
        unknown = tuple(sorted(rule.context_reads & (facts.unavailable | facts.incomplete)))
        for start in starts:
            if len(findings) >= limit:
                break  # the cap holds across draft orders too
            for bound in ev.solutions(rule.when, start):
                for condition in rule.optional:  # patient factors: bound when they hold, never required
                    bound = ev.test(condition, bound) or bound
                refs = _refs(bound)
                if refs in seen:
                    continue  # the same resources seen again (e.g. a pair from the other draft's side)
                seen.add(refs)
                indicator, summary = rule.indicator, None
                for esc in rule.escalate:
                    if ev.test(esc["when"], bound) is not None and RANK[esc["indicator"]] > RANK[indicator]:
                        indicator, summary = esc["indicator"], esc.get("summary")
                indicator = review_indicator(indicator, bound, facts)
                chosen = tuple(
                    i
                    for i, s in enumerate(rule.card.get("suggestions") or [])
                    if "when" not in s or ev.test(s["when"], bound) is not None
                )
                findings.append(Finding(rule, indicator, bound, refs, summary, chosen, unknown))
                if len(findings) >= limit:
                    break
    except Exception as exc:  # a rule bug must not break the hook call; it is recorded
        return RuleResult(rule, "error", reason=f"{type(exc).__name__}: {exc}")
    if not findings and rule.reads & facts.incomplete:
        # Silence is not "nothing found" when part of what the rule reads was set aside.
        partial = ", ".join(sorted(rule.reads & facts.incomplete))
        return RuleResult(rule, "unevaluable", reason=f"some {partial} data could not be read")
    return RuleResult(rule, "fired" if findings else "not-fired", tuple(findings))


def evaluate(
    rules: Sequence[Rule],
    facts: Facts,
    terminology: Terminology,
    statuses: tuple[str, ...] = ("active", "shadow"),
) -> list[RuleResult]:
    """Evaluate every rule whose status is in `statuses` (retired rules never run)."""
    return [
        evaluate_rule(rule, facts, terminology)
        for rule in rules
        if rule.status in statuses and rule.status != "retired"
    ]
