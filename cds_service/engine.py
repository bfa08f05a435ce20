"""The rules engine: a pure function (rules, facts) -> results, each naming rule id and version.

No I/O. A condition is a tree of `all` / `any` / `not` over predicates (see rules/README.md); a
predicate either fails (None) or succeeds with the bindings it adds (``as: other``), which later
predicates and the card templates can use. Unknown values (no age, no dose) make a comparison false.

Status semantics: `active` rules fire cards; `shadow` rules are evaluated and recorded but show no
card; `retired` rules are never evaluated; `draft` rules run only in rule tests.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping

from .facts import Facts, Medication, within_days
from .renal import latest_egfr
from .rule_model import Rule
from .terminology import Terminology

INDICATOR_ORDER = {"info": 0, "warning": 1, "critical": 2}
MAX_FINDINGS_PER_RULE = 5  # one rule never floods the clinician with cards
Bindings = dict[str, Any]


@dataclass(frozen=True)
class Finding:
    rule: Rule
    indicator: str
    bindings: Mapping[str, Any]
    refs: tuple[str, ...]            # the resources that made the rule fire (draft, bound matches)
    summary: str | None = None       # escalation may replace the summary template
    suggestion_indices: tuple[int, ...] = ()  # card suggestions whose `when` holds (all when none has one)


@dataclass(frozen=True)
class RuleResult:
    rule: Rule
    outcome: str                     # fired | not-fired | skipped | error
    findings: tuple[Finding, ...] = ()
    reason: str | None = None

    @property
    def shows_cards(self) -> bool:
        return self.outcome == "fired" and self.rule.status == "active"


def compare(value: float | None, spec: Mapping[str, float]) -> bool:
    if value is None:
        return False
    for op, bound in spec.items():
        if op == "gt" and not value > bound or op == "gte" and not value >= bound \
                or op == "lt" and not value < bound or op == "lte" and not value <= bound \
                or op == "eq" and not value == bound:
            return False
    return True


def _listify(value) -> list[str]:
    return [value] if isinstance(value, str) else list(value or [])


class Evaluation:
    """Evaluates conditions for one rule against one Facts (and one draft order, when bound)."""

    def __init__(self, facts: Facts, terminology: Terminology):
        self.facts = facts
        self.terminology = terminology
        self._memo: dict = facts.derived.setdefault("memo", {})

    # -- value-set membership ---------------------------------------------------------------
    def codes_in(self, refs, codings) -> bool:
        for ref in _listify(refs):
            if "|" in ref:
                system, _, code = ref.partition("|")
                if any(c == code and (not system or s == system) for s, c in codings):
                    return True
            elif self.terminology.codes_match(ref, codings):
                return True
        return False

    def med_in(self, refs, med: Medication) -> bool:
        key = ("med_in", tuple(_listify(refs)), med.ref, med.is_draft)
        if key not in self._memo:
            hit = False
            for ref in _listify(refs):
                vs = self.terminology.valuesets.get(ref) if "|" not in ref else None
                if vs is not None and vs.is_drug_class and ref in med.classes:
                    hit = True
                elif self.codes_in(ref, med.codes):
                    hit = True
                if hit:
                    break
            self._memo[key] = hit
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
            if other is None or other is med or not _same_ingredient(med, other):
                return False
        if "same_class_as" in spec:
            other = b.get(spec["same_class_as"]["binding"])
            classes = set(_listify(spec["same_class_as"]["classes"]))
            if other is None or other is med or _same_ingredient(med, other) \
                    or not (med.classes & other.classes & classes):
                return False
        if "category" in spec and not (med.categories & set(spec["category"])):
            return False
        if "not_category" in spec and med.categories & set(spec["not_category"]):
            return False
        if "status" in spec and med.status not in spec["status"]:
            return False
        if "days_supplied" in spec and not compare(med.days_supplied, spec["days_supplied"]):
            return False
        if "authored_days_ago" in spec and not compare(f.days_ago(med.authored), spec["authored_days_ago"]):
            return False
        if "mme_per_day" in spec and not compare(med.mme_per_day, spec["mme_per_day"]):
            return False
        return True

    def med_pool(self, among: str, b: Bindings) -> tuple[Medication, ...]:
        f = self.facts
        draft = b.get("draft")
        others = tuple(d for d in f.draft_orders if d is not draft)
        if among == "active":
            return f.active_medications
        if among == "drafts":
            return f.draft_orders
        if among == "other_drafts":
            return others
        if among == "active_or_other_drafts":
            return f.active_medications + others
        if among == "history":
            return f.medications
        raise ValueError(among)

    # -- predicates -------------------------------------------------------------------------------
    def solutions(self, node: Mapping, b: Bindings) -> Iterator[Bindings]:
        """Every way the condition holds, as bindings (backtracking over `as:` alternatives)."""
        (name, args), = node.items()
        if name == "all":
            yield from self._all(args, 0, b)
        elif name == "any":
            for child in args:
                yield from self.solutions(child, b)
        elif name == "not":
            if self.test(args, b) is None:
                yield b
        elif name.startswith("no_"):
            if next(PREDICATES[name[3:]](self, args, b), None) is None:
                yield b
        else:
            yield from PREDICATES[name](self, args, b)

    def _all(self, children, i: int, b: Bindings) -> Iterator[Bindings]:
        if i == len(children):
            yield b
            return
        for found in self.solutions(children[i], b):
            yield from self._all(children, i + 1, found)

    def test(self, node: Mapping, b: Bindings) -> Bindings | None:
        return next(self.solutions(node, b), None)


def _same_ingredient(a: Medication, b: Medication) -> bool:
    if a.ingredients and b.ingredients:
        return bool(a.ingredients & b.ingredients)
    return bool(set(a.codes) & set(b.codes))  # unknown ingredients: same product code


def _bind(b: Bindings, args: Mapping, matches: list) -> Iterator[Bindings]:
    """Exists (or `count`); with `as`, one alternative per match so later predicates can backtrack."""
    count = args.get("count")
    if count is not None:
        if compare(len(matches), count):
            yield _with(b, args, matches[0], matches) if "as" in args and matches else b
        return
    if "as" not in args:
        if matches:
            yield b
        return
    for match in matches:
        yield _with(b, args, match, matches)


def _with(b: Bindings, args: Mapping, match, matches: list) -> Bindings:
    b = dict(b)
    b[args["as"]] = match
    b[args["as"] + "_all"] = matches
    return b


def _one(b: Bindings | None) -> Iterator[Bindings]:
    if b is not None:
        yield b


def _age(ev: Evaluation, args, b):
    return _one(b if compare(ev.facts.age, args) else None)


def _sex(ev: Evaluation, args, b):
    return _one(b if ev.facts.sex == args else None)


def _draft(ev: Evaluation, args, b):
    draft = b.get("draft")
    return _one(b if draft is not None and ev.med_matches(args, draft, b) else None)


def _medication(ev: Evaluation, args, b):
    pool = ev.med_pool(args.get("among", "active"), b)
    return _bind(b, args, [m for m in pool if ev.med_matches(args, m, b)])


def _total_mme(ev: Evaluation, args, b):
    among = args.get("among", "active_and_drafts")
    pool = ev.facts.active_medications if among in ("active", "active_and_drafts") else ()
    if among in ("drafts", "active_and_drafts"):
        pool = pool + ev.facts.draft_orders
    total = round(sum(m.mme_per_day for m in pool if m.mme_per_day), 1)
    spec = {k: v for k, v in args.items() if k != "among"}
    if not compare(total, spec):
        return _one(None)
    return _one({**b, "total_mme": total})


def _observation(ev: Evaluation, args, b):
    f = ev.facts
    after = b.get(args["after"]) if "after" in args else None
    candidates = [o for o in f.observations if ev.codes_in(args["code_in"], o.codes)
                  and ("within_days" not in args or within_days(f, o.when, args["within_days"]))
                  and (after is None or (o.when is not None and after.when is not None and o.when > after.when))]
    if args.get("latest"):
        candidates = candidates[:1]
    matches = []
    for o in candidates:
        if "value" in args and not compare(o.value, args["value"]):
            continue
        if "value_code_in" in args and not ev.codes_in(args["value_code_in"], o.value_codes):
            continue
        if "interpretation" in args and not ({c for _, c in o.interpretation} & set(args["interpretation"])):
            continue
        matches.append(o)
    return _bind(b, args, matches)


def _condition(ev: Evaluation, args, b):
    f = ev.facts
    want_active = args.get("active", True)
    matches = [c for c in f.conditions
               if c.active == want_active and ev.codes_in(args["in"], c.codes)
               and ("category" not in args or c.categories & set(args["category"]))
               and ("within_days" not in args or within_days(f, c.when, args["within_days"]))]
    return _bind(b, args, matches)


def _allergy(ev: Evaluation, args, b):
    med = b.get(args.get("of", "draft"))
    if med is None:
        return _one(None)
    classes = set(_listify(args.get("classes"))) or None
    matches = []
    for a in ev.facts.allergies:
        if not a.active:
            continue
        if args["to"] == "same_ingredient":
            if a.ingredients & med.ingredients:
                matches.append(a)
        else:
            shared = a.classes & med.classes
            if classes is not None:
                shared &= classes
            if shared and not (a.ingredients & med.ingredients):
                matches.append(a)
    return _bind(b, args, matches)


def _event(ev: Evaluation, args, b):
    f = ev.facts
    after = b.get(args["after"]) if "after" in args else None
    matches = [e for e in f.events
               if e.resource_type == args["type"]
               and ("in" not in args or ev.codes_in(args["in"], e.codes))
               and ("category_in" not in args or ev.codes_in(args["category_in"], e.categories))
               and ("extra_in" not in args or ev.codes_in(args["extra_in"], e.extra_codes))
               and ("status" not in args or e.status in args["status"])
               and ("within_days" not in args or within_days(f, e.when, args["within_days"]))
               and (after is None or (e.when is not None and after.when is not None and e.when >= after.when))
               and (not args.get("by_user") or (f.user_id is not None and f.user_id in e.people))]
    return _bind(b, args, matches)


def _egfr(ev: Evaluation, args, b):
    key = ("egfr", args.get("within_days"))
    memo = ev.facts.derived.setdefault("memo", {})
    if key not in memo:
        memo[key] = latest_egfr(ev.facts, args.get("within_days"))
    egfr = memo[key]
    spec = {k: v for k, v in args.items() if k in ("gt", "gte", "lt", "lte")}
    if egfr is None or not compare(egfr.value, spec):
        return _one(None)
    return _one({**b, args.get("as", "egfr"): egfr})


PREDICATES: dict[str, Callable] = {
    "age": _age, "sex": _sex, "draft": _draft, "medication": _medication, "total_mme": _total_mme,
    "observation": _observation, "condition": _condition, "allergy": _allergy, "event": _event, "egfr": _egfr,
}


def _refs(bindings: Mapping[str, Any]) -> tuple[str, ...]:
    refs = []
    for key, value in bindings.items():
        if key.endswith("_all"):
            continue
        ref = getattr(value, "ref", None)
        if isinstance(ref, str):
            refs.append(ref)
    return tuple(sorted(set(refs)))


def evaluate_rule(rule: Rule, facts: Facts, terminology: Terminology) -> RuleResult:
    missing = rule.reads & facts.unavailable
    if missing:
        return RuleResult(rule, "skipped", reason=f"data unavailable: {', '.join(sorted(missing))}")
    ev = Evaluation(facts, terminology)
    try:
        starts: list[Bindings] = [{"draft": d} for d in facts.draft_orders] if rule.foreach == "draft_medication" \
            else [{}]
        findings: list[Finding] = []
        seen: set[tuple[str, ...]] = set()
        for start in starts:
            for bound in ev.solutions(rule.when, start):
                refs = _refs(bound)
                if refs in seen:
                    continue  # the same resources seen again (e.g. a pair from the other draft's side)
                seen.add(refs)
                indicator, summary = rule.indicator, None
                for esc in rule.escalate:
                    if ev.test(esc["when"], bound) is not None \
                            and INDICATOR_ORDER[esc["indicator"]] > INDICATOR_ORDER[indicator]:
                        indicator, summary = esc["indicator"], esc.get("summary")
                chosen = tuple(i for i, s in enumerate(rule.card.get("suggestions") or [])
                               if "when" not in s or ev.test(s["when"], bound) is not None)
                findings.append(Finding(rule, indicator, bound, refs, summary, chosen))
                if len(findings) >= MAX_FINDINGS_PER_RULE:
                    break
    except Exception as exc:  # a rule bug must not break the hook call; it is recorded
        return RuleResult(rule, "error", reason=f"{type(exc).__name__}: {exc}")
    return RuleResult(rule, "fired" if findings else "not-fired", tuple(findings))


def evaluate(rules: list[Rule], facts: Facts, terminology: Terminology,
             statuses: tuple[str, ...] = ("active", "shadow")) -> list[RuleResult]:
    """Evaluate every rule whose status is in `statuses` (retired rules never run)."""
    return [evaluate_rule(rule, facts, terminology) for rule in rules
            if rule.status in statuses and rule.status != "retired"]
