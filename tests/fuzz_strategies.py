"""Hostile CDS Hooks requests for fuzzing (tests/test_fuzz.py, benchmarks/fuzz.py).

Valid requests first (every rule case of every service, built the way an EHR sends them), then a few
edits each: wrong JSON types at any level, huge strings, deep nesting, NaN/Infinity, 400-digit integers,
lone surrogates, bad dates, foreign references, unexpected resource types, junk Bundle entries, many
entries. Starting from valid requests keeps most edits deep in the pipeline instead of all being
refused by the envelope check.

One edit vocabulary, two drivers, through `Chooser`: hypothesis draws (the tests: reproducible with
``derandomize``) and a seeded `random.Random` (the benchmark: 10,000+ requests without hypothesis's
per-example machinery). An edit is data (`Mutation`), so a failing request prints as its base plus a
short list of edits, and can be replayed or minimised edit by edit.
"""

from __future__ import annotations

import copy
import json
import random
import re
import secrets
import traceback
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from hypothesis import strategies as st

from cds_service.clinical.rule_cases import PATIENT_ID, USER, CaseBuilder
from cds_service.errors import field_path

Path = tuple[str | int, ...]


# -- JSON the standard encoder cannot write ---------------------------------------------------------


@dataclass(frozen=True)
class Raw:
    """A JSON fragment sent as written: 1,000-deep nesting (json.dumps would recurse out of stack),
    ``1e309`` as the client wrote it."""

    text: str

    def __repr__(self) -> str:
        return f"Raw({_short(self.text)})"


def deep_array(depth: int) -> Raw:
    return Raw("[" * depth + "]" * depth)


def deep_object(depth: int) -> Raw:
    return Raw('{"a":' * depth + "1" + "}" * depth)


def encode(doc: Any) -> bytes:
    """JSON text of `doc`, with `Raw` fragments spliced in. Python's encoder writes NaN, Infinity and
    any integer, and escapes lone surrogates (``"\\ud800"``): all of it reaches the server as sent."""
    nonce = secrets.token_hex(8)
    fragments: list[str] = []

    def placeholder(obj):
        if isinstance(obj, Raw):
            fragments.append(obj.text)
            return f"@raw-{nonce}-{len(fragments) - 1}@"
        raise TypeError(f"not JSON: {type(obj).__name__}")

    text = json.dumps(doc, default=placeholder)
    for i, fragment in enumerate(fragments):
        text = text.replace(f'"@raw-{nonce}-{i}@"', fragment, 1)
    return text.encode("utf-8")


def _short(value: Any, limit: int = 60) -> str:
    if isinstance(value, Raw):
        text = value.text
        return f"<{len(text)} chars: {text[:24]}…>" if len(text) > limit else text
    if isinstance(value, str) and len(value) > limit:
        return f"<str of {len(value)} chars: {value[:12]!r}…>"
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > 10**30:
        return f"<{len(str(abs(value)))}-digit integer>"
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


# -- how choices are made ------------------------------------------------------------------------------


class Chooser:
    """Where the randomness comes from. Everything below asks only for `below(n)`."""

    def below(self, n: int) -> int:  # 0 <= result < n
        raise NotImplementedError

    def pick(self, options: Sequence):
        return options[self.below(len(options))]

    def percent(self, p: int) -> bool:
        return self.below(100) >= 100 - p  # 0, hypothesis's simplest draw, means "no": the rare branch


class RandomChooser(Chooser):
    def __init__(self, rng: random.Random):
        self.rng = rng

    def below(self, n: int) -> int:
        return self.rng.randrange(n) if n > 1 else 0


class DrawChooser(Chooser):
    """Hypothesis draws: shrinkable and reproducible with ``derandomize=True``."""

    def __init__(self, draw: Callable):
        self.draw = draw

    def below(self, n: int) -> int:
        return self.draw(st.integers(0, n - 1)) if n > 1 else 0


@dataclass(frozen=True)
class Limits:
    """How large the hostile values get. Tests keep them small; the benchmark goes to the size limits."""

    max_string: int = 50_000
    max_repeat: int = 200
    max_depth: int = 1_000
    max_grow: int = 300_000  # bytes one `repeat` edit may add


CI_LIMITS = Limits()
BENCHMARK_LIMITS = Limits(max_string=1_000_000, max_repeat=2_000, max_grow=4_500_000)


# -- the hostile vocabulary ----------------------------------------------------------------------------

NAN, INF = float("nan"), float("inf")
HUGE_INT = 10**399 + 7  # 400 digits: float() overflows
SPECIAL_NUMBERS = (
    NAN,
    INF,
    -INF,
    Raw("1e309"),
    Raw("-1e309"),
    Raw("1" + "0" * 399),
    HUGE_INT,
    -HUGE_INT,
    2**63,
    2**64,
    -1,
    0,
    1e-320,
    Raw("-0"),
    Raw("1E400"),
    0.1,
)
LONE_SURROGATES = ("\ud800", "a\udfffb", "\udbff\udbff", "Warfarin \ud83d", "\udc00")
BAD_DATES = (
    "2026-02-30",
    "2026-13-01",
    "0000-00-00",
    "10000-01-01",
    "2026-1-1",
    "yesterday",
    "2026-01-01T25:61:00Z",
    "2026-01-01T00:00:00+25:00",
    "-0001-01-01",
    "2026-01-01T00:00:00",  # a dateTime with a time but no zone: invalid in FHIR
    "",
)
FOREIGN_REFERENCES = (
    "Patient/other",
    "Group/1",
    "Practitioner/x",
    f"Patient/{PATIENT_ID}/../other",
    "Patient/",
    f"Patient/{PATIENT_ID}/_history/1",
    f"http://other.example/fhir/Patient/{PATIENT_ID}",
    "urn:uuid:8f6b3a1e-1111-4b1e-9c1e-000000000000",
    "#contained",
    f"patient/{PATIENT_ID}",
    f"Patient/{PATIENT_ID}?_id=other",
)
RESOURCE_TYPES = (
    "Foo",
    "DomainResource",
    "Resource",
    "Bundle",
    "OperationOutcome",
    "Patient",
    "MedicationRequest",
    "Parameters",
    "Binary",
    "medicationrequest",
    "",
)
URLS = (
    "http://[::1",
    "http://127.0.0.1:9/fhir",
    "http://127.0.0.1:9/fhir/MedicationRequest?page=2",
    "javascript:alert(1)",
    "//evil.example/fhir",
    "file:///etc/passwd",
    "http://evil.example/fhir",
    "http://127.0.0.1:9/fhir/../../admin",
    "",
)
ODD_STRINGS = (
    "\x00",
    "\u202eevil",
    "😀",
    "'\"<>&",
    "{{ 7*7 }}",
    "{% for x in range(10**9) %}{% endfor %}",
    "%s%n%x",
    "../../etc/passwd",
    " ",
    "\n",
    "null",
    "ACTIVE",
)
UUID_LIKE = (
    "not-a-uuid",
    "urn:uuid:",
    "{3f1d6a52-0d38-4f38-9b43-8e2b0c0c8d11}",
    "3F1D6A52-0D38-4F38-9B43-8E2B0C0C8D11",
    "3f1d6a520d384f389b438e2b0c0c8d11",
    "00000000-0000-0000-0000-000000000000",
)
# Keys whose values the pipeline reads closely: edits there reach validation, facts and rules.
HOT_KEYS = {
    "entry",
    "resource",
    "resourceType",
    "reference",
    "subject",
    "patient",
    "status",
    "intent",
    "gender",
    "code",
    "coding",
    "system",
    "value",
    "valueQuantity",
    "doseQuantity",
    "period",
    "frequency",
    "expectedSupplyDuration",
    "medicationCodeableConcept",
    "clinicalStatus",
    "verificationStatus",
    "birthDate",
    "authoredOn",
    "effectiveDateTime",
    "link",
    "url",
    "draftOrders",
    "patientId",
    "userId",
    "hookInstance",
    "hook",
    "fhirServer",
    "prefetch",
    "card",
    "outcome",
}
_DATE_KEYS = re.compile(r"(?i)(date|datetime|authoredOn|start|end|issued|created|timestamp|lastUpdated)$")
_DATE_VALUE = re.compile(r"^\d{4}-\d\d")


def _wrong_types(current: Any) -> tuple:
    """A value of another JSON type than `current`: object where a list is expected and vice versa."""
    return (None, True, False, 0, 1, -1, 1.5, "", "x", [], {}, [current], {"value": current}, [[]], [{}])


def _huge_string(ch: Chooser, limits: Limits) -> str:
    size = ch.pick((limits.max_string // 10, limits.max_string))  # bytes on the wire
    char = ch.pick(("A", "é", "\u2028"))
    return char * (size if char == "A" else size // 6)  # json.dumps sends "\u00e9": 6 bytes


def _aware(ch: Chooser, key: str | int | None, current: Any) -> Any:
    """A value hostile for this particular key (what that field's reader is most likely to trip on)."""
    if key == "entry":
        return ch.pick(
            (1, True, NAN, Raw("1e309"), 0, "x", {}, {"resource": {"resourceType": "Foo"}}, [7, "x", None])
        )
    if key == "resourceType":
        return ch.pick(RESOURCE_TYPES + (["Patient"], 5, None))
    if key in ("reference", "userId") or (isinstance(current, str) and "/" in current and key != "url"):
        return ch.pick(FOREIGN_REFERENCES)
    if key in ("patientId", "encounterId", "id"):
        return ch.pick(FOREIGN_REFERENCES + ("x" * 65, "a b", "", "\ud800"))
    if key in ("status", "gender", "intent", "outcome", "criticality", "type", "code", "hook"):
        return ch.pick(({}, [current], 5, "ACTIVE", "", None, ["active"], {"code": current}))
    if key == "coding":
        return ch.pick((5, {}, {"code": "x"}, "x", [5], [[]], [{"code": ["active"]}], [{"system": 5}]))
    if key in ("value", "frequency", "period", "count", "duration", "expires_in", "periodMax"):
        return ch.pick(SPECIAL_NUMBERS)
    if key in ("url", "fhirServer", "system"):
        return ch.pick(URLS)
    if key in ("hookInstance", "card"):
        return ch.pick(UUID_LIKE + LONE_SURROGATES[:1] + (0,))
    if (isinstance(key, str) and _DATE_KEYS.search(key)) or (
        isinstance(current, str) and _DATE_VALUE.match(current)
    ):
        return ch.pick(BAD_DATES)
    return ch.pick(_wrong_types(current))


def hostile_value(ch: Chooser, key: str | int | None = None, current: Any = None, limits: Limits = CI_LIMITS):
    kind = ch.pick(
        (
            "aware",
            "aware",
            "aware",
            "type",
            "number",
            "surrogate",
            "huge",
            "date",
            "reference",
            "resourceType",
            "deep",
            "odd",
            "url",
        )
    )
    if kind == "aware":
        return _aware(ch, key, current)
    if kind == "type":
        return ch.pick(_wrong_types(current))
    if kind == "number":
        return ch.pick(SPECIAL_NUMBERS)
    if kind == "surrogate":
        return ch.pick(LONE_SURROGATES)
    if kind == "huge":
        return _huge_string(ch, limits)
    if kind == "date":
        return ch.pick(BAD_DATES)
    if kind == "reference":
        return ch.pick(FOREIGN_REFERENCES)
    if kind == "resourceType":
        return ch.pick(RESOURCE_TYPES)
    if kind == "deep":
        depth = ch.pick((64, 500, 999, limits.max_depth))
        return deep_array(depth) if ch.percent(50) else deep_object(depth)
    if kind == "url":
        return ch.pick(URLS)
    return ch.pick(ODD_STRINGS)


# -- edits ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Mutation:
    """One edit at `path` (keys and list indexes from the body's root)."""

    path: Path
    op: str  # set | delete | insert | wrap | unwrap | repeat | bundle
    value: Any = None  # set: the new value; insert: (key or index, value); repeat: how many

    def describe(self) -> str:
        where = field_path(self.path) or "body"
        if self.op == "set":
            return f"{where} = {_short(self.value)}"
        if self.op == "insert":
            return f"{where}[{self.value[0]!r}] += {_short(self.value[1])}"
        if self.op == "repeat":
            return f"{where} repeated to {self.value} items"
        return f"{where}: {self.op}"


def _get(doc: Any, path: Path) -> Any:
    for part in path:
        doc = doc[part]
    return doc


def apply(doc: Any, m: Mutation) -> Any:
    """Apply one edit in place (the root may be replaced: use the return value). Raises LookupError or
    TypeError when the path no longer exists (an edit replayed without the edits it followed)."""
    if m.op == "set":  # the key may be new: only its parent must exist
        new = copy.deepcopy(m.value)
        if not m.path:
            return new
        _get(doc, m.path[:-1])[m.path[-1]] = new
        return doc
    target = _get(doc, m.path)
    if m.op == "insert":
        key, value = m.value
        if isinstance(target, dict):
            target[key] = copy.deepcopy(value)
        elif isinstance(target, list):
            target.insert(min(int(key), len(target)), copy.deepcopy(value))
        else:
            raise TypeError("insert into a scalar")
        return doc
    if m.op == "delete":
        if not m.path:
            raise TypeError("cannot delete the root")
        parent = _get(doc, m.path[:-1])
        del parent[m.path[-1]]
        return doc
    elif m.op == "wrap":
        new = [target]
    elif m.op == "unwrap":
        if isinstance(target, list):
            new = target[0] if target else {}
        elif isinstance(target, dict):
            new = list(target.values())
        else:
            raise TypeError("unwrap a scalar")
    elif m.op == "repeat":
        if not isinstance(target, list) or not target:
            raise TypeError("repeat needs a non-empty list")
        new = [copy.deepcopy(target[i % len(target)]) for i in range(m.value)]
    elif m.op == "bundle":
        new = {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": target}]}
    else:
        raise ValueError(f"unknown edit {m.op}")
    if not m.path:
        return new
    _get(doc, m.path[:-1])[m.path[-1]] = new
    return doc


def nodes(doc: Any, under: Path = (), max_depth: int | None = None, per_list: int = 12) -> list[Path]:
    """Paths of the nodes in the subtree at `under` (itself included), walked without recursion.
    Long lists contribute their first `per_list` items: enough to reach every kind of element."""
    try:
        root = _get(doc, under)
    except (LookupError, TypeError):
        return [()]
    out: list[Path] = []
    stack: list[tuple[Path, Any]] = [(under, root)]
    while stack:
        path, node = stack.pop()
        out.append(path)
        if max_depth is not None and len(path) - len(under) >= max_depth:
            continue
        if isinstance(node, dict):
            stack.extend(((*path, k), v) for k, v in node.items())
        elif isinstance(node, list):
            stack.extend(((*path, i), v) for i, v in enumerate(node[:per_list]))
    return out


_INSERT_KEYS = (
    "resourceType",
    "entry",
    "extension",
    "modifierExtension",
    "contained",
    "subject",
    "fhirServer",
    "fhirAuthorization",
    "encounterId",
    "link",
    "\ud800",
    "",
)


def choose_mutation(ch: Chooser, doc: Any, under: Path, limits: Limits, max_depth: int | None = None):
    paths = nodes(doc, under, max_depth)
    if len(paths) > 1 and not ch.percent(5):
        paths = paths[1:]  # the subtree's root itself, rarely: replacing it all stops at the first check
    hot = [p for p in paths if p and p[-1] in HOT_KEYS]
    path = ch.pick(hot) if hot and ch.percent(50) else ch.pick(paths)
    target = _get(doc, path)
    key = path[-1] if path else None
    ops = ["set"] * 6 + ["delete", "wrap", "insert"]
    if isinstance(target, list) and target:
        ops += ["repeat", "repeat", "unwrap"]
    if isinstance(target, dict):
        ops += ["unwrap"]
        if "resourceType" in target:
            ops += ["bundle", "bundle"]
    op = ch.pick(ops)
    if op == "delete" and not path:
        op = "set"
    if op == "set":
        return Mutation(path, "set", hostile_value(ch, key, target, limits))
    if op == "insert":
        if isinstance(target, list):
            return Mutation(
                path, "insert", (ch.below(len(target) + 1), hostile_value(ch, None, None, limits))
            )
        if isinstance(target, dict):
            name = ch.pick(_INSERT_KEYS)
            return Mutation(path, "insert", (name, hostile_value(ch, name, None, limits)))
        return Mutation(path, "set", hostile_value(ch, key, target, limits))
    if op == "repeat":
        item = max(len(encode(x)) for x in target[:3]) + 1
        if 2 * item <= limits.max_grow:
            count = min(ch.pick((2, 50, limits.max_repeat)), limits.max_grow // item)
            return Mutation(path, "repeat", max(2, count))
        op = "wrap"  # already large: repeating it again would only test the 413
    return Mutation(path, op)


# -- base requests: valid, as an EHR sends them --------------------------------------------------------


@dataclass(frozen=True)
class Base:
    name: str
    url: str  # path on the service, e.g. /cds-services/medication-order-check
    body: Any
    kind: str = "hook"  # hook | feedback: what a 200 must look like


def searchset(resources: list[dict]) -> dict:
    return {"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": r} for r in resources]}


def hook_body(service, case: dict, name: str) -> dict | None:
    """The request an EHR would send to `service` for a rule case: full prefetch, one key per template."""
    today = case.get("today")
    today = date.fromisoformat(today) if isinstance(today, str) else today or date.today()
    resources, drafts = CaseBuilder(today).build(case)
    if drafts and service.hook not in ("order-select", "order-sign"):
        return None
    by_type: dict[str, list[dict]] = {}
    for r in resources:
        by_type.setdefault(r["resourceType"], []).append(r)
    prefetch = {}
    for template in service.templates:
        found = by_type.get(service.resource_types[template.key], [])
        if template.is_read:
            prefetch[template.key] = found[0] if found and "patientId" in template.text else None
        else:
            prefetch[template.key] = searchset(found)
    context: dict[str, Any] = {"userId": USER, "patientId": PATIENT_ID}
    if service.hook in ("order-select", "order-sign"):
        context["draftOrders"] = {
            "resourceType": "Bundle",
            "type": "collection",
            "entry": [{"resource": d} for d in drafts],
        }
    if service.hook == "order-select":  # the case's selections, else every draft (as the rule cases)
        context["selections"] = case.get("selections") or [f"{d['resourceType']}/{d['id']}" for d in drafts]
    return {
        "hook": service.hook,
        "hookInstance": str(uuid.uuid5(uuid.NAMESPACE_URL, name)),  # stable: reproducible bodies
        "context": context,
        "prefetch": prefetch,
    }


WARFARIN_IBUPROFEN = {
    "name": "warfarin then ibuprofen",
    "medications": ["Warfarin Sodium 5 MG Oral Tablet"],
    "draftOrders": ["Ibuprofen 400 MG Oral Tablet"],
}


def feedback_bases() -> list[Base]:
    card, suggestion = "3f1d6a52-0d38-4f38-9b43-8e2b0c0c8d11", "9a6c8e0e-5b7e-4d1f-8d1a-2f0f6c1e7a10"
    overridden = {
        "card": card,
        "outcome": "overridden",
        "overrideReason": {
            "reason": {
                "system": "http://terminology.cds-hooks.org/CodeSystem/OverrideReasons",
                "code": "risk-benefit-ratio",
                "display": "Benefit outweighs the risk",
            },
            "userComment": "discussed with the patient",
        },
        "outcomeTimestamp": "2026-01-01T10:00:00Z",
    }
    accepted = {
        "card": suggestion.replace("9a", "7b", 1),
        "outcome": "accepted",
        "acceptedSuggestions": [{"id": suggestion}],
        "outcomeTimestamp": "2026-01-01T10:00:00+01:00",
    }
    url = "/cds-services/medication-order-check/feedback"
    return [
        Base("feedback/overridden", url, {"feedback": [overridden]}, "feedback"),
        Base("feedback/both", url, {"feedback": [overridden, accepted]}, "feedback"),
    ]


def hook_bases(services) -> list[Base]:
    """The warfarin + ibuprofen call first (its critical card is the canary), then every rule case of
    every service, each sent to that service."""
    by_id = {s.id: s for s in services}
    order = by_id["medication-order-check"]
    first = Base(
        "medication-order-check/warfarin-ibuprofen",
        "/cds-services/medication-order-check",
        hook_body(order, WARFARIN_IBUPROFEN, "warfarin-ibuprofen"),
    )
    out, seen = [first], {first.name}
    for service in services:
        for rule in service.rules:
            for expected in ("fire", "silent"):
                for i, case in enumerate(rule.cases.get(expected) or []):
                    if (case.get("hook") or rule.hooks[0]) != service.hook:
                        continue
                    name = f"{service.id}/{rule.id}/{expected}[{i}]"
                    body = hook_body(service, case, name)
                    if body is not None and name not in seen:
                        seen.add(name)
                        out.append(Base(name, f"/cds-services/{service.id}", body))
    return out


# -- fuzzed requests -----------------------------------------------------------------------------------

# Edits of the body as text, after encoding: what no JSON value can express.
TEXT_EDITS: dict[str, Callable[[bytes], bytes]] = {
    "truncated": lambda b: b[: max(1, len(b) // 2)],
    "invalid UTF-8": lambda b: b[:-1] + b"\xff\xfe" + b[-1:],
    "UTF-8 BOM": lambda b: b"\xef\xbb\xbf" + b,
    "UTF-16": lambda b: b.decode("utf-8").encode("utf-16"),
    "empty": lambda b: b"",
    "trailing garbage": lambda b: b + b"}{",
    "NUL bytes": lambda b: b.replace(b":", b":\x00", 1),
    "duplicate keys": lambda b: b'{"hook": 5, ' + b[1:] if b.startswith(b"{") else b,
    # a lone surrogate as raw bytes (CESU-8): Python's json decodes bytes with "surrogatepass"
    "raw surrogate bytes": lambda b: b.replace(b'": "', b'": "\xed\xa0\x80', 1),
    "UTF-32": lambda b: b.decode("utf-8").encode("utf-32"),
}
CONTENT_TYPES = (
    "application/json",
    "application/fhir+json",
    "application/json; charset=latin-1",
    "application/json; charset=utf-16",
    "text/plain",
    "application/x-www-form-urlencoded",
    "application/vnd.evil+json",
    "",
)


@dataclass(frozen=True)
class FuzzRequest:
    base: Base
    mutations: tuple[Mutation, ...] = ()
    text_edit: str | None = None
    content_type: str = "application/json"
    _cache: dict = field(default_factory=dict, compare=False, repr=False)

    def body(self) -> Any:
        doc = copy.deepcopy(self.base.body)
        for m in self.mutations:
            doc = apply(doc, m)
        return doc

    def encoded(self) -> bytes:
        if "bytes" not in self._cache:
            data = encode(self.body())
            if self.text_edit:
                data = TEXT_EDITS[self.text_edit](data)
            self._cache["bytes"] = data
        return self._cache["bytes"]

    def describe(self) -> str:
        edits = [m.describe() for m in self.mutations]
        if self.text_edit:
            edits.append(f"body text: {self.text_edit}")
        if self.content_type != "application/json":
            edits.append(f"Content-Type: {self.content_type!r}")
        return f"{self.base.name}: " + ("; ".join(edits) or "unchanged")

    def without(self, keep: Sequence[int]) -> "FuzzRequest":
        """The same request with only the edits at indexes `keep` (for minimising a failure)."""
        return FuzzRequest(
            self.base, tuple(self.mutations[i] for i in keep), self.text_edit, self.content_type
        )

    def applies(self) -> bool:
        try:
            self.body()
        except (LookupError, TypeError, ValueError):
            return False
        return True


AREAS: dict[str, tuple[Path, int | None]] = {
    # area: (subtree edited, how deep below it)
    "envelope": ((), 1),
    "context": (("context",), 1),
    "prefetch": (("prefetch",), None),
    "draftOrders": (("context", "draftOrders"), None),
    "anywhere": ((), None),
}


def generate(
    ch: Chooser,
    bases: Sequence[Base],
    *,
    area: str = "anywhere",
    max_edits: int = 3,
    limits: Limits = CI_LIMITS,
    text_edit_percent: int = 0,
    content_type_percent: int = 0,
) -> FuzzRequest:
    """One fuzzed request: a base, then 1..max_edits edits in `area` (each chosen on the body as the
    previous edits left it)."""
    base = ch.pick(bases)
    under, depth = AREAS[area]
    doc = copy.deepcopy(base.body)
    mutations = []
    for _ in range(1 + ch.below(max_edits)):
        m = choose_mutation(ch, doc, under, limits, depth)
        doc = apply(doc, m)
        mutations.append(m)
    text_edit = ch.pick(sorted(TEXT_EDITS)) if ch.percent(text_edit_percent) else None
    content_type = ch.pick(CONTENT_TYPES) if ch.percent(content_type_percent) else "application/json"
    return FuzzRequest(base, tuple(mutations), text_edit, content_type)


def fuzz_requests(bases: Sequence[Base], **kw) -> st.SearchStrategy[FuzzRequest]:
    """Hypothesis strategy over `generate` (same keywords)."""
    return st.composite(lambda draw: generate(DrawChooser(draw), bases, **kw))()


def hostile_values(key: str | None = None, limits: Limits = CI_LIMITS) -> st.SearchStrategy:
    """Hypothesis strategy: one hostile JSON value (for a field named `key`, when given)."""
    return st.composite(lambda draw: hostile_value(DrawChooser(draw), key, None, limits))()


# Strategies per part of a CDS Hooks call, as the issue names them.
def envelopes(bases):
    return fuzz_requests([b for b in bases if b.kind == "hook"], area="envelope", text_edit_percent=10)


def contexts(bases, hook: str | None = None):
    chosen = [b for b in bases if b.kind == "hook" and (hook is None or b.body.get("hook") == hook)]
    return fuzz_requests(chosen, area="context")


def prefetch_values(bases):
    return fuzz_requests([b for b in bases if b.kind == "hook"], area="prefetch")


def draft_orders(bases):
    chosen = [b for b in bases if b.body.get("hook") in ("order-select", "order-sign")]
    return fuzz_requests(chosen, area="draftOrders")


def feedback_requests():
    return fuzz_requests(feedback_bases(), area="anywhere")


# -- what an answer must look like ---------------------------------------------------------------------


def answer_problems(kind: str, status: int, content_type: str, data: bytes) -> list[str]:
    """Why an answer breaks the service's promise (empty: it keeps it). Never a 5xx; every 4xx an
    OperationOutcome with at least one issue; a hook call's 200 is {"cards": [...]}."""
    if status >= 500:
        return [f"{status}"]
    try:
        body = json.loads(data) if data else None
    except ValueError:
        body = None
    if 400 <= status < 500:
        if "json" not in (content_type or ""):
            return [f"{status} answered as {content_type or 'no content type'}, not an OperationOutcome"]
        if not isinstance(body, dict) or body.get("resourceType") != "OperationOutcome":
            return [f"{status} body is not an OperationOutcome"]
        issues = body.get("issue")
        if not isinstance(issues, list) or not issues:
            return [f"{status} OperationOutcome without issues"]
        if not all(isinstance(i, dict) and i.get("severity") and i.get("code") for i in issues):
            return [f"{status} OperationOutcome issue without severity or code"]
        return []
    if status == 200 and kind == "hook":
        if not isinstance(body, dict) or not isinstance(body.get("cards"), list):
            return ['200 body is not {"cards": [...]}']
        if not all(isinstance(c, dict) and c.get("summary") and c.get("indicator") for c in body["cards"]):
            return ["200 card without summary or indicator"]
        return []
    if status == 200 and kind == "feedback":
        if not isinstance(body, dict) or not {"received", "recorded"} <= set(body):
            return ["feedback 200 body lacks received/recorded"]
        return []
    if 200 <= status < 300:
        return []
    return [f"unexpected status {status}"]


# -- naming a 5xx by its cause -------------------------------------------------------------------------

_FRAME = re.compile(r'^\s*File "(?P<file>[^"]+)", line (?P<line>\d+), in (?P<func>.+)$')


def cause(exc_type: str, frames: Sequence[tuple[str, int, str]]) -> str:
    """``TypeError in cds_service/ehr/validation.py:205 problems (via fhir_core/...:12 f)``: the innermost
    frame of ours, and the innermost frame overall when it is a library's."""

    def short(frame):
        path, line, func = frame
        path = path.replace("\\", "/")
        if "/cds_service/" in path:
            path = "cds_service/" + path.rsplit("/cds_service/", 1)[1]
        else:  # a library's (site-packages) or the standard library's
            path = re.sub(r"^.*/(site-packages|lib/python3\.\d+)/", "", path)
        return f"{path}:{line} {func}"

    ours = [f for f in frames if "/cds_service/" in f[0].replace("\\", "/")]
    text = exc_type
    if ours:
        text += f" in {short(ours[-1])}"
    if frames and (not ours or frames[-1] != ours[-1]):
        text += f" (via {short(frames[-1])})"
    return text


def cause_of_exception(exc: BaseException) -> str:
    frames = [(f.filename, f.lineno, f.name) for f in traceback.extract_tb(exc.__traceback__)]
    return cause(type(exc).__name__, frames)


def causes_in_log(text: str) -> list[str]:
    """The cause of every traceback in a server log (the last exception of each chain)."""
    out = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        if not lines[i].startswith("Traceback (most recent call last):"):
            i += 1
            continue
        frames = []
        i += 1
        while i < len(lines) and (lines[i].startswith(" ") or lines[i].startswith("\t")):
            m = _FRAME.match(lines[i])
            if m:
                frames.append((m["file"], int(m["line"]), m["func"]))
            i += 1
        exc_line = lines[i] if i < len(lines) else "?"
        exc_type = exc_line.split(":", 1)[0].strip().rsplit(".", 1)[-1] or "?"
        # a chained exception follows ("During handling ..." / "The above exception ..."): keep the last
        j = i + 1
        while j < len(lines) and not lines[j].strip():
            j += 1
        if j < len(lines) and lines[j].startswith(("During handling", "The above exception")):
            i = j
            continue
        out.append(cause(exc_type, frames))
        i += 1
    return out
