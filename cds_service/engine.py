"""The rules engine: a pure function (rules, facts) -> results, each naming rule id and version.

No I/O. A condition is a tree of `all` / `any` / `not` over predicates (see rules/README.md); a
predicate either fails (None) or succeeds with the bindings it adds (``as: other``), which later
predicates and the card templates can use. Unknown values (no age, no dose) make a comparison false.

Status semantics: `active` rules fire cards; `shadow` rules are evaluated and recorded but show no
card; `retired` rules are never evaluated; `draft` rules run only in rule tests.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any, Callable, Iterator, Mapping

from .facts import NOT_TRUE, Facts, Medication, Observation, within_days
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


_COMPARISONS = ("gt", "gte", "lt", "lte", "eq")


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
                if ref.startswith("ingredient:"):
                    hit = ref[len("ingredient:"):] in med.ingredients
                    if hit:
                        break
                    continue
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
            anchor = getattr(b.get(window["binding"]), "when", None)
            if anchor is None or med.authored is None:
                return False
            days_before = (anchor.date() - med.authored.date()).days
            if not 1 <= days_before <= window["days"]:
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


def _pair(ev: Evaluation, args, b):
    """The bound draft is in one class and another medication (active, or another draft) in the other;
    either way round. Binds the other medication as `as` (default `other`)."""
    draft = b.get("draft")
    if draft is None:
        return
    pool = ev.med_pool("active_or_other_drafts", b)
    name = args.get("as", "other")
    for mine, theirs in ((args["a"], args["b"]), (args["b"], args["a"])):
        if ev.med_in(mine, draft):
            matches = [m for m in pool if ev.med_in(theirs, m) and not _same_ingredient(m, draft)]
            yield from _bind(b, {"as": name}, matches)


def _total_mme(ev: Evaluation, args, b):
    among = args.get("among", "active_and_drafts")
    pool = ev.facts.active_medications if among in ("active", "active_and_drafts") else ()
    if among in ("drafts", "active_and_drafts"):
        pool = pool + ev.facts.draft_orders
    medication_filter = {k: v for k, v in args.items() if k not in ("among",) + _COMPARISONS}
    if medication_filter:  # only the orders that match (e.g. opioid analgesics for chronic pain)
        pool = tuple(m for m in pool if ev.med_matches(medication_filter, m, b))
    total = round(sum(m.mme_per_day for m in pool if m.mme_per_day), 1)
    spec = {k: v for k, v in args.items() if k in _COMPARISONS}
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
        if "result" in args and qualitative_result(o) != args["result"]:
            continue
        matches.append(o)
    return _bind(b, args, matches)


def _condition(ev: Evaluation, args, b):
    f = ev.facts
    want_active = args.get("active", True)
    matches = [c for c in f.conditions
               if (c.active == want_active if want_active != "any" else not (c.verification & NOT_TRUE))
               and ev.codes_in(args["in"], c.codes)
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
               and (not args.get("by_user") or (f.user_id is not None and f.user_id in e.people))
               and ("touched_within_days" not in args or within_days(f, e.when, args["touched_within_days"])
                    or within_days(f, e.updated, args["touched_within_days"]))
               and ("diagnosis_in" not in args or _has_diagnosis(ev, e, args["diagnosis_in"]))]
    return _bind(b, args, matches)


def _has_diagnosis(ev: Evaluation, encounter, refs) -> bool:
    """The encounter has a diagnosis in `refs`: a Condition whose `encounter` points to it, or one listed in
    Encounter.diagnosis. Any clinical status (a diagnosis made at a visit stays that visit's diagnosis);
    refuted and entered-in-error conditions never count."""
    for c in ev.facts.conditions:
        if c.verification & NOT_TRUE or not ev.codes_in(refs, c.codes):
            continue
        pointed = c.encounter is not None and _same_resource(c.encounter, "Encounter", encounter.id)
        listed = any(_same_resource(ref, "Condition", c.id) for ref in encounter.diagnoses)
        if pointed or listed:
            return True
    return False


def _same_resource(reference: str, rtype: str, rid: str) -> bool:
    """`Encounter/123`, `http://server/fhir/Encounter/123` or `Encounter/123/_history/2` name Encounter 123."""
    parts = reference.split("/_history/")[0].rstrip("/").split("/")
    return parts[-1] == rid and (len(parts) == 1 or parts[-2] == rtype)


_POSITIVE = {"10828004", "POS", "DET"}     # SNOMED Positive; v3 ObservationInterpretation POS, DET (detected)
_NEGATIVE = {"260385009", "NEG", "ND"}     # SNOMED Negative; v3 NEG, ND (not detected)


def qualitative_result(o: Observation) -> str | None:
    """`positive`, `negative` or None for a qualitative test (e.g. a urine drug screen): from a valueString
    starting "pos"/"neg" (how the CDC opioid reference CDS reads screens), or a coded value (SNOMED Positive /
    Negative); only when the observation has no value at all, from its interpretation (POS/NEG, DET/ND)."""
    if o.value_text:
        text = o.value_text.strip().lower()
        return "positive" if text.startswith("pos") else "negative" if text.startswith("neg") else None
    codes = {c.upper() for _, c in o.value_codes}
    if codes:
        return "positive" if codes & _POSITIVE else "negative" if codes & _NEGATIVE else None
    if o.value is None:
        codes = {c.upper() for _, c in o.interpretation}
        return "positive" if codes & _POSITIVE else "negative" if codes & _NEGATIVE else None
    return None


def minus_months(day: date, months: int) -> date:
    """Calendar arithmetic as in CQL: the same day `months` earlier, or that month's last day."""
    index = day.year * 12 + day.month - 1 - months
    year, month = divmod(index, 12)
    month += 1
    last = (date(year + month // 12, month % 12 + 1, 1) - timedelta(days=1)).day
    return date(year, month, min(day.day, last))


def covered_days(periods: list[tuple[date, date]], start: date, end: date) -> int:
    """Days of [start, end] covered by the periods (closed date intervals): each is cut to the window,
    overlapping or adjoining pieces are merged, and each piece counts end - start days (CQL `collapse` and
    `days between`, as the CDC opioid reference CDS counts days on opioids)."""
    pieces = sorted((max(s, start), min(e, end)) for s, e in periods if s <= end and e >= start)
    merged: list[list[date]] = []
    for s, e in pieces:
        if merged and s <= merged[-1][1] + timedelta(days=1):
            merged[-1][1] = max(merged[-1][1], e)
        else:
            merged.append([s, e])
    return sum((e - s).days for s, e in merged)


def _coverage(ev: Evaluation, args, b):
    """Days covered by medication orders (authored date + expected supply) in the last `within_days` days,
    or in each of the last `each_month_of_last` calendar months; `days` compares each window's count."""
    f = ev.facts
    pool = ev.med_pool(args.get("among", "history"), b)
    periods = []
    for m in pool:
        if m.authored is None or m.supply_days is None or not ev.med_matches(args, m, b):
            continue
        first = m.authored.date()
        periods.append((first, first + timedelta(days=int(m.supply_days))))
    today = f.today
    if "each_month_of_last" in args:
        n = args["each_month_of_last"]
        windows = [(minus_months(today, k + 1), minus_months(today, k)) for k in reversed(range(n))]
    else:
        windows = [(today - timedelta(days=args["within_days"]), today)]
    counts = [covered_days(periods, s, e) for s, e in windows]
    if not all(compare(c, args["days"]) for c in counts):
        return _one(None)
    return _one({**b, args["as"]: counts} if "as" in args else b)


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
    "age": _age, "sex": _sex, "draft": _draft, "medication": _medication, "pair": _pair, "total_mme": _total_mme,
    "observation": _observation, "condition": _condition, "allergy": _allergy, "event": _event, "egfr": _egfr,
    "coverage": _coverage,
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
        limit = min(rule.max_cards or MAX_FINDINGS_PER_RULE, MAX_FINDINGS_PER_RULE)
        for start in starts:
            if len(findings) >= limit:
                break  # the cap holds across draft orders too
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
                if len(findings) >= limit:
                    break
    except Exception as exc:  # a rule bug must not break the hook call; it is recorded
        return RuleResult(rule, "error", reason=f"{type(exc).__name__}: {exc}")
    return RuleResult(rule, "fired" if findings else "not-fired", tuple(findings))


def evaluate(rules: list[Rule], facts: Facts, terminology: Terminology,
             statuses: tuple[str, ...] = ("active", "shadow")) -> list[RuleResult]:
    """Evaluate every rule whose status is in `statuses` (retired rules never run)."""
    return [evaluate_rule(rule, facts, terminology) for rule in rules
            if rule.status in statuses and rule.status != "retired"]
