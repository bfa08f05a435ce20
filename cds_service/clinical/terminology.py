"""Code lists (FHIR ValueSets) in ``fhir/terminology/`` and how medications map to ingredients.

Layout of ``fhir/terminology/``:

- ``drug-classes/*.json``: ValueSets of *ingredients* (RxNorm ingredient concepts). Each concept's
  ``display`` and ``designation[].value`` (synonyms, brand names) are the names by which an ingredient
  is recognised in a medication's text when its code is unknown to us. A medication belongs to a class
  when one of its ingredients does.
- ``note-findings/*.json``: ValueSets (extension ``.../note-finding`` = true) of conditions the note
  reader looks for in clinical notes: each concept's display and designations are the phrases matched.
- ``maps/*.json``: ConceptMaps from RxNorm clinical and branded drug codes to their ingredients, so a
  medication coded without any display still resolves to its ingredients.
- any other ``**/*.json``: ValueSets of codes (RxNorm clinical drugs, LOINC, SNOMED CT, ICD-10-CM ...),
  matched on (system, code). ICD-10-CM entries match their descendants (``C25`` matches ``C25.1``) and
  ranges written ``C00-C14``.

ValueSets are read from ``compose.include[].concept[]`` and ``expansion.contains[]``. The ValueSet ``id``
is what rules refer to. Everything is loaded and indexed once at start-up.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..content import relative_name
from ..errors import ContentError

RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"
LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"

_SYSTEM_ALIASES = {
    "urn:oid:2.16.840.1.113883.6.88": RXNORM,
    "http://hl7.org/fhir/sid/icd-10": ICD10CM,
    "urn:oid:2.16.840.1.113883.6.90": ICD10CM,
    "urn:oid:2.16.840.1.113883.6.1": LOINC,
    "urn:oid:2.16.840.1.113883.6.96": SNOMED,
}


def normalise_system(system: str | None) -> str:
    return _SYSTEM_ALIASES.get(system or "", system or "")


def normalise_name(text: str) -> str:
    return re.sub(r"\s+", " ", text.strip().lower())


@dataclass(frozen=True)
class Concept:
    system: str
    code: str
    display: str


@dataclass
class ValueSet:
    id: str
    url: str
    title: str
    source: str
    codes: set[tuple[str, str]] = field(default_factory=set)
    concepts: list[Concept] = field(default_factory=list)
    ranges: list[tuple[str, str, str]] = field(default_factory=list)  # (system, low, high) for ICD-10-CM
    is_drug_class: bool = False
    note_finding: bool = False  # its concepts' displays and designations are looked for in clinical notes
    class_names: set[str] = field(default_factory=set)  # names of the class itself ("nsaids")
    designations: dict[tuple[str, str], set[str]] = field(default_factory=dict)  # synonyms, brand names

    def has_code(self, system: str, code: str) -> bool:
        system = normalise_system(system)
        if (system, code) in self.codes:
            return True
        if system == ICD10CM:
            base = code.upper()
            while "." in base or len(base) > 3:
                base = base[:-1].rstrip(".")
                if (system, base) in self.codes:
                    return True
            category = code.upper()[:3]
            return any(low <= category <= high for s, low, high in self.ranges if s == system)
        return False


class Terminology:
    """All value sets plus the ingredient-name index."""

    def __init__(
        self, valuesets: dict[str, ValueSet], products: dict[tuple[str, str], set[str]] | None = None
    ):
        self.valuesets = valuesets
        # (value set ids, drug) -> member or not: filled by the rules engine (engine.Evaluation.med_in)
        self.membership: dict[tuple, bool] = {}
        self.products = (
            products or {}
        )  # RxNorm clinical/branded drug -> ingredient names (fhir/terminology/maps)
        # canonical ingredient name -> drug-class value set ids; name/synonym -> canonical name
        self.classes_of: dict[str, set[str]] = {}
        self._name_to_ingredient: dict[str, str] = {}
        self._code_to_ingredient: dict[tuple[str, str], str] = {}
        self._class_name_to_vs: dict[str, str] = {}
        for vs in valuesets.values():
            if not vs.is_drug_class:
                continue
            for name in vs.class_names:
                self._class_name_to_vs.setdefault(name, vs.id)
        for vs in valuesets.values():
            if vs.is_drug_class:
                for concept, names in _drug_class_entries(vs):
                    canonical = normalise_name(concept.display)
                    self.classes_of.setdefault(canonical, set()).add(vs.id)
                    self._code_to_ingredient[(concept.system, concept.code)] = canonical
                    for name in names:
                        self._name_to_ingredient.setdefault(name, canonical)
        names = sorted(self._name_to_ingredient, key=len, reverse=True)
        self._name_pattern = (
            re.compile(r"(?<![a-z0-9])(" + "|".join(re.escape(n) for n in names) + r")(?![a-z0-9])")
            if names
            else None
        )
        # note-finding phrase -> (value set id, (system, code), display): what the note reader looks for
        self.finding_names: dict[str, tuple[str, tuple[str, str], str]] = {}
        for vs in valuesets.values():
            if vs.note_finding:
                for concept in vs.concepts:
                    names = {normalise_name(concept.display)} | vs.designations.get(
                        (concept.system, concept.code), set()
                    )
                    for name in names:
                        self.finding_names.setdefault(
                            name, (vs.id, (concept.system, concept.code), concept.display)
                        )
        self.ingredient_codes: dict[str, tuple[str, str]] = {}
        for key, name in self._code_to_ingredient.items():
            self.ingredient_codes.setdefault(name, key)
        class_names = sorted(self._class_name_to_vs, key=len, reverse=True)
        self._class_pattern = (
            re.compile(r"(?<![a-z0-9])(" + "|".join(re.escape(n) for n in class_names) + r")(?![a-z0-9])")
            if class_names
            else None
        )

    @property
    def ingredient_names(self) -> dict[str, str]:
        """Every name, synonym and brand name of an ingredient -> its canonical name."""
        return self._name_to_ingredient

    @property
    def class_names(self) -> dict[str, str]:
        """Names of drug classes ("penicillins", "sulfa drugs") -> their value set id."""
        return self._class_name_to_vs

    def __contains__(self, vs_id: str) -> bool:
        return vs_id in self.valuesets

    def ingredients(self, codings: list[tuple[str, str]], texts: list[str]) -> frozenset[str]:
        """Canonical ingredient names from RxNorm ingredient codes or, failing that, from names in the
        texts (coding displays, CodeableConcept.text, Medication.code.text)."""
        found = {
            self._code_to_ingredient[(normalise_system(s), c)]
            for s, c in codings
            if (normalise_system(s), c) in self._code_to_ingredient
        }
        for s, c in codings:
            found |= self.products.get((normalise_system(s), c), set())
        if self._name_pattern is not None:
            for text in texts:
                if text:
                    for match in self._name_pattern.finditer(text.lower()):
                        found.add(self._name_to_ingredient[match.group(1)])
        return frozenset(found)

    def named_classes(self, texts: list[str]) -> frozenset[str]:
        """Drug-class value set ids named in free text (e.g. an allergy to "Penicillins")."""
        out = set()
        if self._class_pattern is not None:
            for text in texts:
                if text:
                    for match in self._class_pattern.finditer(text.lower()):
                        out.add(self._class_name_to_vs[match.group(1)])
        return frozenset(out)

    def drug_classes(self, ingredients: frozenset[str]) -> frozenset[str]:
        out: set[str] = set()
        for ingredient in ingredients:
            out |= self.classes_of.get(ingredient, set())
        return frozenset(out)

    def codes_match(self, vs_id: str, codings: list[tuple[str, str]]) -> bool:
        vs = self.valuesets[vs_id]
        return any(vs.has_code(s, c) for s, c in codings)


def _drug_class_entries(vs: ValueSet):
    for concept in vs.concepts:
        names = {normalise_name(concept.display)}
        names |= vs.designations.get((concept.system, concept.code), set())
        yield concept, names


def _concepts_of(resource: dict):
    for include in (resource.get("compose") or {}).get("include") or []:
        system = normalise_system(include.get("system"))
        for concept in include.get("concept") or []:
            yield system, concept
    stack = list((resource.get("expansion") or {}).get("contains") or [])
    while stack:
        item = stack.pop()
        stack.extend(item.get("contains") or [])
        if item.get("code"):
            yield normalise_system(item.get("system")), item


def load_valueset(path: Path, root: Path) -> ValueSet:
    rel = relative_name(path, root)
    try:
        resource = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ContentError(rel, "", f"not readable JSON: {exc}") from exc
    if resource.get("resourceType") != "ValueSet":
        raise ContentError(rel, "resourceType", "must be ValueSet")
    vs_id = resource.get("id")
    if not isinstance(vs_id, str) or not re.match(r"^[A-Za-z0-9\-.]{1,64}$", vs_id):
        raise ContentError(rel, "id", "a ValueSet needs a FHIR id; rules refer to value sets by id")
    vs = ValueSet(
        id=vs_id,
        url=resource.get("url", ""),
        title=resource.get("title") or resource.get("name") or vs_id,
        source=rel,
        is_drug_class="drug-classes" in path.parts,
    )
    for i, (system, concept) in enumerate(_concepts_of(resource)):
        code = concept.get("code")
        if not isinstance(code, str) or not code:
            raise ContentError(rel, f"concept[{i}].code", "missing code")
        display = concept.get("display") or ""
        if vs.is_drug_class and not display:
            raise ContentError(
                rel, f"concept[{i}].display", "drug-class concepts need a display (the ingredient name)"
            )
        vs.codes.add((system, code))
        vs.concepts.append(Concept(system, code, display))
        if system == ICD10CM and re.match(r"^[A-Z0-9]{3}-[A-Z0-9]{3}$", code):
            low, high = code.split("-")
            vs.ranges.append((system, low, high))
        names = {normalise_name(d["value"]) for d in concept.get("designation") or [] if d.get("value")}
        if names:
            vs.designations[(system, code)] = names
    vs.note_finding = any(
        e.get("url", "").endswith("/note-finding") and e.get("valueBoolean") is True
        for e in resource.get("extension") or []
    )
    if vs.is_drug_class:
        vs.class_names = {normalise_name(vs.title)} | {
            normalise_name(e.get("valueString", ""))
            for e in resource.get("extension") or []
            if e.get("url", "").endswith("/class-synonym") and e.get("valueString")
        }
    return vs


def load_product_map(path: Path, root: Path) -> dict[tuple[str, str], set[str]]:
    """A ConceptMap from RxNorm clinical/branded drugs (SCD/SBD) to their ingredients (IN)."""
    rel = relative_name(path, root)
    resource = json.loads(path.read_text(encoding="utf-8"))
    out: dict[tuple[str, str], set[str]] = {}
    for g, group in enumerate(resource.get("group") or []):
        source = normalise_system(group.get("source"))
        for e, element in enumerate(group.get("element") or []):
            targets = [normalise_name(t["display"]) for t in element.get("target") or [] if t.get("display")]
            if not element.get("code") or not targets:
                raise ContentError(rel, f"group[{g}].element[{e}]", "needs a code and targets with a display")
            out.setdefault((source, element["code"]), set()).update(targets)
    return out


def load_terminology(terminology_dir: Path) -> Terminology:
    valuesets: dict[str, ValueSet] = {}
    products: dict[tuple[str, str], set[str]] = {}
    if terminology_dir.is_dir():
        for path in sorted(terminology_dir.rglob("*.json")):
            if path.parent.name == "maps":
                for key, names in load_product_map(path, terminology_dir).items():
                    products.setdefault(key, set()).update(names)
                continue
            vs = load_valueset(path, terminology_dir)
            if vs.id in valuesets:
                raise ContentError(
                    vs.source, "id", f"duplicate ValueSet id {vs.id!r} (also in {valuesets[vs.id].source})"
                )
            valuesets[vs.id] = vs
    return Terminology(valuesets, products)
