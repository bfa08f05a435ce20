"""The rule-condition vocabulary, defined once: each predicate's evaluation, the JSON Schema of its
arguments and the FHIR resource types it reads are declared together here.

The rule JSON Schema's ``condition`` is assembled from this table (`condition_properties`), and a
rule's `reads` (what makes it "unevaluable" when that data could not be had) is derived from it
(`Predicate.reads`), so the three can never drift apart. A predicate fails (yields nothing) or succeeds with
the bindings it adds (``as: other``), which later predicates and card templates use. Unknown values
(no age, no dose) make a comparison false. ``no_<name>`` holds when ``<name>`` finds nothing.

Predicates receive the `Evaluation` (engine.py) as ``ev`` for medication matching and memoisation;
they do no I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

from .facts import NOT_TRUE, Medication, Observation, within_days
from .renal import latest_egfr

Bindings = dict[str, Any]
COMPARISONS = ("gt", "gte", "lt", "lte", "eq")


@dataclass(frozen=True)
class Predicate:
    name: str
    evaluate: Callable[..., Iterator[Bindings]]
    schema: dict  # JSON Schema of the arguments (may $ref rule.schema.json $defs)
    reads: Callable[[Any], frozenset[str]]  # resource types read, given the arguments
    negatable: bool = False  # a `no_<name>` form exists
    needs_draft: bool = False  # only under `foreach: draft_medication`


VOCABULARY: dict[str, Predicate] = {}


def predicate(name: str, schema: dict, *, reads=(), negatable: bool = False, needs_draft: bool = False):
    """Register the decorated function as predicate `name`. `reads`: resource types, or a function of
    the arguments returning them."""
    reads_fn = reads if callable(reads) else (lambda _args, fixed=frozenset(reads): fixed)

    def register(fn):
        VOCABULARY[name] = Predicate(name, fn, schema, reads_fn, negatable, needs_draft)
        return fn

    return register


def lookup(name: str) -> tuple[Predicate, bool]:
    """(predicate, negated) for a condition key such as ``medication`` or ``no_medication``."""
    if name.startswith("no_") and name[3:] in VOCABULARY and VOCABULARY[name[3:]].negatable:
        return VOCABULARY[name[3:]], True
    return VOCABULARY[name], False


def condition_properties() -> dict[str, dict]:
    """The predicate part of the rule schema's ``condition``: one property per (negated) predicate."""
    out: dict[str, dict] = {}
    for p in VOCABULARY.values():
        out[p.name] = p.schema
        if p.negatable:
            out[f"no_{p.name}"] = p.schema
    return out


# -- shared helpers ---------------------------------------------------------------------------------


def compare(value: float | None, spec: Mapping[str, float]) -> bool:
    if value is None:
        return False
    for op, bound in spec.items():
        if (
            op == "gt"
            and not value > bound
            or op == "gte"
            and not value >= bound
            or op == "lt"
            and not value < bound
            or op == "lte"
            and not value <= bound
            or op == "eq"
            and not value == bound
        ):
            return False
    return True


def listify(value) -> list[str]:
    return [value] if isinstance(value, str) else list(value or [])


def same_ingredient(a: Medication, b: Medication) -> bool:
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


def _ref(name: str) -> dict:
    return {"$ref": f"#/$defs/{name}"}


_NUMBER = {"type": "number"}
_MEDICATIONS = frozenset({"MedicationRequest"})

# -- patient ----------------------------------------------------------------------------------------


@predicate("age", _ref("comparison"), reads={"Patient"})
def _age(ev, args, b):
    return _one(b if compare(ev.facts.age, args) else None)


@predicate("sex", {"enum": ["female", "male", "other", "unknown"]}, reads={"Patient"})
def _sex(ev, args, b):
    return _one(b if ev.facts.sex == args else None)


# -- medications ------------------------------------------------------------------------------------


@predicate("draft", {"allOf": [_ref("medFilter")], "unevaluatedProperties": False}, needs_draft=True)
def _draft(ev, args, b):
    draft = b.get("draft")
    return _one(b if draft is not None and ev.med_matches(args, draft, b) else None)


@predicate("medication", _ref("medQuery"), reads=_MEDICATIONS, negatable=True)
def _medication(ev, args, b):
    pool = ev.med_pool(args.get("among", "active"), b, args.get("in"))
    other = b.get(args["same_ingredient_as"]) if "same_ingredient_as" in args else None
    if other is not None:
        pool = ev.sharing_ingredient(pool, other)
    if "as" not in args and "count" not in args:  # existence: stop at the first match
        return _one(b if any(ev.med_matches(args, m, b) for m in pool) else None)
    return _bind(b, args, [m for m in pool if ev.med_matches(args, m, b)])


@predicate(
    "pair",
    {
        "type": "object",
        "additionalProperties": False,
        "required": ["a", "b"],
        "description": "The bound draft is in value set(s) a and another active or draft medication in b, "
        "or the other way round.",
        "properties": {
            "a": _ref("vsRef"),
            "b": _ref("vsRef"),
            "a_filter": {
                "allOf": [_ref("medFilter")],
                "unevaluatedProperties": False,
                "description": "Only medications of side a that also match this filter (e.g. route).",
            },
            "b_filter": {
                "allOf": [_ref("medFilter")],
                "unevaluatedProperties": False,
                "description": "Only medications of side b that also match this filter (systemic: true).",
            },
            "as": _ref("binding"),
        },
    },
    reads=_MEDICATIONS,
    needs_draft=True,
)
def _pair(ev, args, b):
    """The bound draft is in one class and another medication (active, or another draft) in the other;
    either way round. Binds the other medication as `as` (default `other`). `a_filter` / `b_filter`
    narrow each side (a topical NSAID is not an oral one)."""
    draft = b.get("draft")
    if draft is None:
        return
    name = args.get("as", "other")
    sides = ((args["a"], args.get("a_filter")), (args["b"], args.get("b_filter")))
    for (mine, my_filter), (theirs, their_filter) in (sides, sides[::-1]):
        if not ev.med_in(mine, draft) or (my_filter and not ev.med_matches(my_filter, draft, b)):
            continue
        pool = ev.med_pool("active_or_other_drafts", b, theirs)
        matches = [
            m
            for m in pool
            if not same_ingredient(m, draft) and (not their_filter or ev.med_matches(their_filter, m, b))
        ]
        yield from _bind(b, {"as": name}, matches)


@predicate(
    "total_mme",
    {
        "allOf": [_ref("medFilter")],
        "properties": {
            "among": {"enum": ["active", "active_and_drafts", "drafts"]},
            **{op: _NUMBER for op in COMPARISONS},
        },
        "unevaluatedProperties": False,
        "description": "Summed MME/day of active and/or draft orders; medication-filter keys restrict which "
        "orders count.",
    },
    reads=_MEDICATIONS,
)
def _total_mme(ev, args, b):
    among = args.get("among", "active_and_drafts")
    pool = ev.facts.active_medications if among in ("active", "active_and_drafts") else ()
    if among in ("drafts", "active_and_drafts"):
        pool = pool + ev.facts.draft_orders
    medication_filter = {k: v for k, v in args.items() if k not in ("among",) + COMPARISONS}
    if medication_filter:  # only the orders that match (e.g. opioid analgesics for chronic pain)
        pool = tuple(m for m in pool if ev.med_matches(medication_filter, m, b))
    total = round(sum(m.mme_per_day for m in pool if m.mme_per_day), 1)
    spec = {k: v for k, v in args.items() if k in COMPARISONS}
    if not compare(total, spec):
        return _one(None)
    return _one({**b, "total_mme": total})


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


@predicate(
    "coverage",
    {
        "allOf": [_ref("medFilter")],
        "required": ["days"],
        "oneOf": [{"required": ["within_days"]}, {"required": ["each_month_of_last"]}],
        "properties": {
            "among": {"enum": ["active", "drafts", "other_drafts", "active_or_other_drafts", "history"]},
            "within_days": {
                "type": "integer",
                "minimum": 1,
                "description": "Window: the last N days up to today.",
            },
            "each_month_of_last": {
                "type": "integer",
                "minimum": 1,
                "description": "Windows: each of the last N calendar months (every one must satisfy `days`).",
            },
            "days": _ref("comparison"),
            "as": _ref("binding"),
        },
        "unevaluatedProperties": False,
        "description": "Days covered by matching medication orders (authored date + expected supply, "
        "merged) in the window(s).",
    },
    reads=_MEDICATIONS,
)
def _coverage(ev, args, b):
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


# -- observations, kidney function --------------------------------------------------------------------

_POSITIVE = {"10828004", "POS", "DET"}  # SNOMED Positive; v3 ObservationInterpretation POS, DET (detected)
_NEGATIVE = {"260385009", "NEG", "ND"}  # SNOMED Negative; v3 NEG, ND (not detected)


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


@predicate("observation", _ref("obsQuery"), reads={"Observation"}, negatable=True)
def _observation(ev, args, b):
    f = ev.facts
    after = b.get(args["after"]) if "after" in args else None
    candidates = [
        o
        for o in ev.observations_in(args["code_in"])
        if ("within_days" not in args or within_days(f, o.when, args["within_days"]))
        and (after is None or (o.when is not None and after.when is not None and o.when > after.when))
    ]
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


@predicate(
    "egfr",
    {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "within_days": _NUMBER,
            **{op: _NUMBER for op in ("gt", "gte", "lt", "lte")},
            "as": _ref("binding"),
        },
    },
    reads={"Observation", "Patient"},
)
def _egfr(ev, args, b):
    key = ("egfr", args.get("within_days"))
    memo = ev.facts.derived.setdefault("memo", {})
    if key not in memo:
        memo[key] = latest_egfr(ev.facts, args.get("within_days"))
    egfr = memo[key]
    spec = {k: v for k, v in args.items() if k in ("gt", "gte", "lt", "lte")}
    if egfr is None or not compare(egfr.value, spec):
        return _one(None)
    return _one({**b, args.get("as", "egfr"): egfr})


# -- conditions, allergies, events ---------------------------------------------------------------------


@predicate("condition", _ref("condQuery"), reads={"Condition"}, negatable=True)
def _condition(ev, args, b):
    f = ev.facts
    want_active = args.get("active", True)
    matches = [
        c
        for c in f.conditions
        if (c.active == want_active if want_active != "any" else not (c.verification & NOT_TRUE))
        and ev.codes_in(args["in"], c.codes)
        and ("category" not in args or c.categories & set(args["category"]))
        and ("within_days" not in args or within_days(f, c.when, args["within_days"]))
    ]
    return _bind(b, args, matches)


@predicate("allergy", _ref("allergyQuery"), reads={"AllergyIntolerance"})
def _allergy(ev, args, b):
    med = b.get(args.get("of", "draft"))
    if med is None:
        return _one(None)
    classes = set(listify(args.get("classes"))) or None
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


def _event_reads(args) -> frozenset[str]:
    # encounter diagnoses are Conditions
    return frozenset({args["type"]} | ({"Condition"} if "diagnosis_in" in args else set()))


@predicate("event", _ref("eventQuery"), reads=_event_reads, negatable=True)
def _event(ev, args, b):
    f = ev.facts
    after = b.get(args["after"]) if "after" in args else None
    matches = [
        e
        for e in f.events
        if e.resource_type == args["type"]
        and ("in" not in args or ev.codes_in(args["in"], e.codes))
        and ("category_in" not in args or ev.codes_in(args["category_in"], e.categories))
        and ("extra_in" not in args or ev.codes_in(args["extra_in"], e.extra_codes))
        and ("status" not in args or e.status in args["status"])
        and ("within_days" not in args or within_days(f, e.when, args["within_days"]))
        and (after is None or (e.when is not None and after.when is not None and e.when >= after.when))
        and (not args.get("by_user") or (f.user_id is not None and f.user_id in e.people))
        and (
            "touched_within_days" not in args
            or within_days(f, e.when, args["touched_within_days"])
            or within_days(f, e.updated, args["touched_within_days"])
        )
        and ("diagnosis_in" not in args or _has_diagnosis(ev, e, args["diagnosis_in"]))
    ]
    return _bind(b, args, matches)


def _has_diagnosis(ev, encounter, refs) -> bool:
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
    """`Encounter/123`, `http://server/fhir/Encounter/123` or `Encounter/123/_history/2` name Encounter
    123."""
    parts = reference.split("/_history/")[0].rstrip("/").split("/")
    return parts[-1] == rid and (len(parts) == 1 or parts[-2] == rtype)
