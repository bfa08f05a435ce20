"""Rules as data: loading, schema-checking and compiling the YAML files under ``rules/<pack>/``.

A bad rule file stops start-up (and fails ``cds-service rules lint``) with the file and the field
named. Card texts are Jinja templates (sandboxed, strict: an unknown name is an error, caught per
rule at evaluation so one broken rule never breaks a hook call). See rules/README.md for the format.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
from jinja2 import StrictUndefined, TemplateSyntaxError
from jinja2.sandbox import SandboxedEnvironment

from ..content import bundled_schema, check_schema, read_yaml, relative_name
from ..errors import ContentError
from ..indicators import INDICATORS
from .predicates import VOCABULARY, condition_properties, lookup
from .terminology import Terminology

TEMPLATES = SandboxedEnvironment(
    undefined=StrictUndefined, autoescape=False, trim_blocks=True, lstrip_blocks=True
)
TEMPLATES.filters["round1"] = lambda v: f"{float(v):.1f}".rstrip("0").rstrip(".") if v is not None else "?"
TEMPLATES.filters["intersect"] = lambda a, b: sorted(set(a or ()) & set(b or ()))
TEMPLATES.filters["isodate"] = lambda v: (
    v.date().isoformat() if hasattr(v, "date") else (str(v) if v else "unknown date")
)


@cache
def rule_schema() -> dict:
    """content_schema/rule.schema.json completed with the predicate vocabulary and the indicator scale."""
    schema = copy.deepcopy(bundled_schema("rule.schema.json"))
    schema["$defs"]["condition"]["properties"].update(condition_properties())
    schema["$defs"]["indicator"]["enum"] = list(INDICATORS)
    return schema


@cache
def _rule_validator() -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(rule_schema())


def _refers_to_valuesets(node) -> bool:
    return isinstance(node, dict) and node.get("$ref") == "#/$defs/vsRef"


@cache
def valueset_keys() -> frozenset[str]:
    """Argument names whose values are value-set references, read off the schema (`$ref: vsRef`)."""
    schema = rule_schema()
    keys: set[str] = set()
    nodes = list(schema["$defs"].values()) + [p.schema for p in VOCABULARY.values()]
    while nodes:
        node = nodes.pop()
        if isinstance(node, dict):
            for name, child in (node.get("properties") or {}).items():
                if _refers_to_valuesets(child):
                    keys.add(name)
            nodes.extend(v for k, v in node.items() if k != "properties")
            nodes.extend((node.get("properties") or {}).values())
        elif isinstance(node, list):
            nodes.extend(node)
    return frozenset(keys)


@dataclass(frozen=True)
class Reference:
    title: str
    url: str
    citation: str | None = None


@dataclass(eq=False)
class Rule:
    id: str
    version: str
    title: str
    status: str
    hooks: tuple[str, ...]
    indicator: str
    when: dict
    card: dict
    references: tuple[Reference, ...]
    cases: dict
    pack: str
    path: str
    foreach: str | None = None
    description: str = ""
    escalate: tuple[dict, ...] = ()
    max_cards: int | None = None  # at most this many cards per hook call (default: engine's cap)
    note_evidence: bool = False  # facts read from clinical notes may fire it (`noteEvidence: allowed`)
    reads: frozenset[str] = frozenset()  # what `when` reads: without it the rule cannot run (skipped)
    optional: tuple[dict, ...] = ()  # conditions that add bindings when they hold (patient factors)
    context_reads: frozenset[str] = frozenset()  # read only by optional / escalate / suggestion conditions
    compiled: dict[str, Any] = field(default_factory=dict)  # template text -> jinja Template

    @property
    def key(self) -> str:
        return f"{self.id}@{self.version}"

    def template(self, text: str):
        return self.compiled[text]


def _walk_conditions(node: Any, path: str):
    """Yield (path, predicate name, arguments) for every predicate in a condition tree."""
    if not isinstance(node, dict):
        return
    for key, value in node.items():
        here = f"{path}.{key}"
        if key in ("all", "any"):
            for i, child in enumerate(value):
                yield from _walk_conditions(child, f"{here}[{i}]")
        elif key == "not":
            yield from _walk_conditions(value, here)
        else:
            yield here, key, value


def _templates_in(node: Any, path: str):
    """Yield (path, text) for every string inside a card (all strings are templates)."""
    if isinstance(node, str):
        yield path, node
    elif isinstance(node, dict):
        for key, value in node.items():
            if key == "when":
                continue
            yield from _templates_in(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _templates_in(value, f"{path}[{i}]")


def load_rule(path: Path, root: Path, terminology: Terminology) -> Rule:
    rel = relative_name(path, root)
    data = read_yaml(path, rel)
    if not isinstance(data, dict):
        raise ContentError(rel, "", "a rule file holds one mapping")
    check_schema(_rule_validator(), data, rel)
    if path.stem != data["id"]:
        raise ContentError(rel, "id", f"the file must be named after the rule id ({data['id']}.yaml)")

    # What `when` reads decides whether the rule can run at all; what the optional conditions, the
    # escalations and the suggestions' conditions read only refines a card (context_reads).
    reads: set[str] = set()
    context_reads: set[str] = set()
    condition_trees = [("when", data["when"])]
    condition_trees += [(f"optional[{i}]", c) for i, c in enumerate(data.get("optional") or [])]
    condition_trees += [(f"escalate[{i}].when", e["when"]) for i, e in enumerate(data.get("escalate") or [])]
    condition_trees += [
        (f"card.suggestions[{i}].when", s["when"])
        for i, s in enumerate(data["card"].get("suggestions") or [])
        if "when" in s
    ]
    vs_keys = valueset_keys()
    for base, tree in condition_trees:
        for where, name, args in _walk_conditions(tree, base):
            found, _ = lookup(name)
            if found.needs_draft and data.get("foreach") != "draft_medication":
                raise ContentError(rel, where, f"'{name}' needs `foreach: draft_medication`")
            (reads if base == "when" else context_reads).update(found.reads(args))
            for key, value in args.items() if isinstance(args, dict) else []:
                if key in vs_keys or (key == "same_class_as" and isinstance(value, dict)):
                    refs = value.get("classes") if key == "same_class_as" else value
                    for ref in [refs] if isinstance(refs, str) else refs:
                        if ref.startswith("ingredient:"):
                            if ref[len("ingredient:") :] not in terminology.classes_of:
                                raise ContentError(
                                    rel,
                                    f"{where}.{key}",
                                    f"unknown ingredient {ref!r} "
                                    "(not named in fhir/terminology/drug-classes)",
                                )
                        elif "|" not in ref and ref not in terminology:
                            raise ContentError(
                                rel, f"{where}.{key}", f"unknown value set {ref!r} (not in fhir/terminology)"
                            )
    compiled = {}
    for where, text in _templates_in(data["card"], "card"):
        try:
            compiled[text] = TEMPLATES.from_string(text)
        except TemplateSyntaxError as exc:
            raise ContentError(rel, where, f"template error: {exc.message}") from exc
    for e in data.get("escalate") or []:
        if e.get("summary"):
            compiled[e["summary"]] = TEMPLATES.from_string(e["summary"])
    return Rule(
        id=data["id"],
        version=data["version"],
        title=data["title"],
        status=data["status"],
        hooks=tuple(data["hooks"]),
        indicator=data["indicator"],
        when=data["when"],
        card=data["card"],
        references=tuple(Reference(r["title"], r["url"], r.get("citation")) for r in data["references"]),
        cases=data["cases"],
        pack=path.parent.name,
        path=rel,
        foreach=data.get("foreach"),
        description=data.get("description", ""),
        escalate=tuple(data.get("escalate") or ()),
        optional=tuple(data.get("optional") or ()),
        reads=frozenset(reads),
        context_reads=frozenset(context_reads - reads),
        compiled=compiled,
        max_cards=data.get("max_cards"),
        note_evidence=data.get("noteEvidence") == "allowed",
    )


@dataclass
class Rulebook:
    rules: list[Rule]

    def by_id(self, rule_id: str) -> Rule:
        for rule in self.rules:
            if rule.id == rule_id:
                return rule
        raise KeyError(rule_id)

    def for_packs(self, packs: tuple[str, ...], hook: str) -> list[Rule]:
        return [r for r in self.rules if r.pack in packs and hook in r.hooks]

    @property
    def packs(self) -> list[str]:
        return sorted({r.pack for r in self.rules})


def load_rulebook(rules_dir: Path, terminology: Terminology) -> Rulebook:
    rules: list[Rule] = []
    seen: dict[str, str] = {}
    if not rules_dir.is_dir():
        raise ContentError(str(rules_dir), "", "rules folder not found")
    for path in sorted(rules_dir.glob("*/*.yaml")):
        rule = load_rule(path, rules_dir, terminology)
        if rule.id in seen:
            raise ContentError(rule.path, "id", f"duplicate rule id (also {seen[rule.id]})")
        seen[rule.id] = rule.path
        rules.append(rule)
    return Rulebook(rules)
