"""Convert the value sets of the HL7 PDDI CDS implementation guide (github.com/HL7/PDDI-CDS, CC0) into
this service's terminology: RxNorm / SNOMED CT / LOINC code lists under fhir/terminology/pddi/, ingredient
classes under fhir/terminology/pddi/drug-classes/, and a product -> ingredient map for the guide's RxNorm
codes that the shared map does not list (fhir/terminology/maps/pddi-products-to-ingredients.json).

    .venv/bin/python benchmarks/pddi-cds/convert_valuesets.py --pddi-src /work/.mirror/HL7+PDDI-CDS/repo

--pddi-src is a clone (or a bare mirror: files are then read with `git show <commit>:<path>`). What is taken
from where (fhir/terminology/pddi/README.md says the same for readers of the data):

- Element value sets (one ingredient each, every RxNorm concept of it) come from input/vocabulary/ at the
  commit.
- Composite value sets (NSAIDs, systemic corticosteroids, aldosterone antagonists, PPIs, loop diuretics) are
  flattened as the guide's terminology page prescribes: the union of the element value sets that the
  composite example (valueset-<NAME>-example.xml) includes, minus each element's "-exclude" set (topical,
  otic, ophthalmic formulations) where the guide has one.
- The warfarin, digoxin, cyclosporine and topical-diclofenac value sets were replaced in input/vocabulary/ by
  pointers to VSAC (commit fc3ed54, FHIR-40037); their enumerations are taken from the value-set bundles the
  guide still ships with its artifacts at the same commit (input/images/artifacts/*/valueset-bundle.xml).
  Cyclosporine's ophthalmic products are removed with valueset-cyclosporine-exclude.
- Displays lose the zero-width spaces of the upstream files; codes are stripped of stray blanks.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from cds_service.clinical.terminology import (  # noqa: E402
    LOINC,
    RXNORM,
    SNOMED,
    load_product_map,
    load_terminology,
)

FHIR = "{http://hl7.org/fhir}"
GUIDE = "http://hl7.org/fhir/uv/pddi"
REPO_URL = "https://github.com/HL7/PDDI-CDS"
OUT = ROOT / "fhir" / "terminology" / "pddi"
MAP_OUT = ROOT / "fhir" / "terminology" / "maps" / "pddi-products-to-ingredients.json"
SHARED_MAP = ROOT / "fhir" / "terminology" / "maps" / "rxnorm-products-to-ingredients.json"
WN_BUNDLE = "input/images/artifacts/warfarin-nsaids/valueset-bundle.xml"
DC_BUNDLE = "input/images/artifacts/digoxin-cyclosporine/valueset-bundle.xml"

# Element value set -> (RxNorm ingredient code, canonical ingredient name as this service's drug classes
# spell it, other names it is written under). The codes are checked against the element value set.
INGREDIENTS = {
    "aspirin": ("1191", "aspirin", []),
    "bromfenac": ("19737", "bromfenac", []),
    "celecoxib": ("140587", "celecoxib", []),
    "diclofenac": ("3355", "diclofenac", []),
    "diflunisal": ("3393", "diflunisal", []),
    "etodolac": ("24605", "etodolac", []),
    "fenoprofen": ("4331", "fenoprofen", []),
    "flurbiprofen": ("4502", "flurbiprofen", []),
    "ibuprofen": ("5640", "ibuprofen", []),
    "indomethacin": ("5781", "indomethacin", []),
    "ketoprofen": ("6142", "ketoprofen", []),
    "ketorolac": ("35827", "ketorolac", []),
    "mefenamate": ("6693", "mefenamic acid", ["mefenamate"]),
    "meloxicam": ("41493", "meloxicam", []),
    "nabumetone": ("31448", "nabumetone", []),
    "naproxen": ("7258", "naproxen", []),
    "nepafenac": ("298665", "nepafenac", []),
    "oxaprozin": ("32613", "oxaprozin", []),
    "piroxicam": ("8356", "piroxicam", []),
    "sulindac": ("10237", "sulindac", []),
    "tolmetin": ("10636", "tolmetin", []),
    "aldosterone": ("1312358", "aldosterone", []),
    "betamethasone": ("1514", "betamethasone", []),
    "cloprednol": ("21285", "cloprednol", []),
    "cortisone": ("2878", "cortisone", []),
    "cortivazol": ("21660", "cortivazol", []),
    "deflazacort": ("22396", "deflazacort", []),
    "desoxycorticosterone": ("3256", "desoxycorticosterone", []),
    "dexamethasone": ("3264", "dexamethasone", []),
    "fludrocortisone": ("4452", "fludrocortisone", []),
    "fluocortolone": ("4463", "fluocortolone", []),
    "hydrocortisone": ("5492", "hydrocortisone", []),
    "meprednisone": ("29523", "meprednisone", []),
    "methylprednisolone": ("6902", "methylprednisolone", []),
    "paramethasone": ("7910", "paramethasone", []),
    "prednisolone": ("8638", "prednisolone", []),
    "prednisone": ("8640", "prednisone", []),
    "prednylidene": ("12473", "prednylidene", []),
    "rimexolone": ("55681", "rimexolone", []),
    "triamcinolone": ("10759", "triamcinolone", []),
    "trilostane": ("38668", "trilostane", []),
    "eplerenone": ("298869", "eplerenone", []),
    "spironolactone": ("9997", "spironolactone", []),
    "dexlansoprazole": ("816346", "dexlansoprazole", []),
    "esomeprazole": ("283742", "esomeprazole", []),
    "lansoprazole": ("17128", "lansoprazole", []),
    "omeprazole": ("7646", "omeprazole", []),
    "pantoprazole": ("40790", "pantoprazole", []),
    "rabeprazole": ("114979", "rabeprazole", []),
    "misoprostol": ("42331", "misoprostol", []),
    "bumetanide": ("1808", "bumetanide", []),
    "ethacrynate": ("4109", "ethacrynic acid", ["ethacrynate"]),
    "furosemide": ("4603", "furosemide", []),
    "torsemide": ("38413", "torsemide", []),
    "warfarin": ("11289", "warfarin", []),
    "digoxin": ("3407", "digoxin", []),
    "cyclosporine": ("3008", "cyclosporine", ["ciclosporin"]),
}


NOT_AN_INGREDIENT_NAME = {"aldosterone"}
PUBLISHER = "cds-service contributors, converted from the HL7 PDDI CDS implementation guide (CC0)"


class Source:
    """Files of the guide at one commit, from a clone or a bare mirror."""

    def __init__(self, path: Path, commit: str):
        self.path = path
        git_dir = ["-C", str(path)]
        self.commit = subprocess.run(
            ["git", *git_dir, "rev-parse", commit], capture_output=True, text=True, check=True
        ).stdout.strip()
        self._git = git_dir

    def read(self, rel: str) -> bytes:
        return subprocess.run(
            ["git", *self._git, "show", f"{self.commit}:{rel}"], capture_output=True, check=True
        ).stdout

    def url(self, rel: str) -> str:
        return f"{REPO_URL}/blob/{self.commit}/{rel}"


def _clean(text: str) -> str:
    return " ".join(text.replace("\u200b", "").split())


def concepts_of(vs: ET.Element) -> list[tuple[str, str, str]]:
    """(system, code, display) of a ValueSet's compose.include concepts, in file order."""
    out = []
    for include in vs.findall(f"{FHIR}compose/{FHIR}include"):
        system = include.find(f"{FHIR}system")
        system = system.get("value") if system is not None else ""
        for concept in include.findall(f"{FHIR}concept"):
            display = concept.find(f"{FHIR}display")
            out.append(
                (
                    system,
                    concept.find(f"{FHIR}code").get("value").strip(),
                    _clean(display.get("value")) if display is not None else "",
                )
            )
    return out


def element_refs(vs: ET.Element) -> list[str]:
    return [
        ref.get("value").rsplit("/", 1)[-1].removeprefix("valueset-")
        for include in vs.findall(f"{FHIR}compose/{FHIR}include")
        for ref in include.findall(f"{FHIR}valueSet")
    ]


class Guide:
    def __init__(self, src: Source):
        self.src = src
        self.bundled: dict[str, ET.Element] = {}
        for rel in (WN_BUNDLE, DC_BUNDLE):
            for vs in ET.fromstring(src.read(rel)).iter(f"{FHIR}ValueSet"):
                self.bundled.setdefault(vs.find(f"{FHIR}id").get("value"), vs)

    def vocabulary(self, name: str) -> ET.Element:
        return ET.fromstring(self.src.read(f"input/vocabulary/valueset-{name}.xml"))

    def has_exclude(self, name: str) -> bool:
        try:
            self.vocabulary(f"{name}-exclude")
        except subprocess.CalledProcessError:
            return False
        return True

    def element(self, name: str) -> list[tuple[str, str, str]]:
        concepts = concepts_of(self.vocabulary(name))
        if not concepts:  # replaced by a VSAC pointer upstream: the bundled enumeration
            concepts = concepts_of(self.bundled[f"valueset-{name}"])
        if not concepts:
            raise SystemExit(f"valueset-{name}: no enumerated concepts at {self.src.commit}")
        return concepts


def valueset(vs_id: str, title: str, description: str, source_url: str, concepts) -> dict:
    by_system: dict[str, list[dict]] = {}
    seen = set()
    for system, code, display in concepts:
        if (system, code) in seen:
            continue
        seen.add((system, code))
        by_system.setdefault(system, []).append({"code": code, **({"display": display} if display else {})})
    return {
        "resourceType": "ValueSet",
        "id": vs_id,
        "meta": {"source": source_url},
        "url": f"urn:cds-service:ValueSet/{vs_id}",
        "name": "".join(part.capitalize() for part in vs_id.split("-")),
        "title": title,
        "status": "active",
        "publisher": PUBLISHER,
        "description": description,
        "compose": {"include": [{"system": s, "concept": c} for s, c in by_system.items()]},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pddi-src", type=Path, required=True, help="clone or mirror of HL7/PDDI-CDS")
    parser.add_argument("--commit", default="HEAD")
    args = parser.parse_args()
    src = Source(args.pddi_src, args.commit)
    guide = Guide(src)
    at = f"HL7/PDDI-CDS commit {src.commit}"
    licence = (
        "CC0 1.0 for the guide's content; RxNorm, SNOMED CT and LOINC codes and displays remain under "
        "their owners' terms."
    )
    written: list[dict] = []
    members: dict[str, set[str]] = {}  # RxNorm code -> element value sets (ingredients) that hold it
    displays: dict[str, str] = {}

    def element_concepts(name: str, exclude: bool = True):
        concepts = guide.element(name)
        for system, code, display in concepts:
            if system == RXNORM:
                members.setdefault(code, set()).add(name)
                displays[code] = displays.get(code) or display
        removed = set()
        if exclude and guide.has_exclude(name):
            removed = {(s, c) for s, c, _ in concepts_of(guide.vocabulary(f"{name}-exclude"))}
        return [c for c in concepts if (c[0], c[1]) not in removed], sorted(removed)

    composites = [
        ("pddi-nsaids", "NSAIDS", "NSAIDs (HL7 PDDI CDS)", "nsaid"),
        ("pddi-systemic-corticosteroids", "SCS", "Systemic corticosteroids (HL7 PDDI CDS)", "corticosteroid"),
        ("pddi-aldosterone-antagonists", "AAS", "Aldosterone antagonists (HL7 PDDI CDS)", "aldosterone"),
        ("pddi-ppis", "PPIS", "Proton pump inhibitors (HL7 PDDI CDS)", "ppi"),
        ("pddi-loop-diuretics", "LOOPDIURETIC", "Loop diuretics (HL7 PDDI CDS)", "loop"),
    ]
    classes: dict[str, tuple[str, list[str]]] = {}
    for vs_id, name, title, _ in composites:
        rel = f"input/vocabulary/valueset-{name}-example.xml"
        elements = element_refs(ET.fromstring(src.read(rel)))
        concepts, excluded_from = [], []
        for element in elements:
            kept, removed = element_concepts(element)
            concepts += kept
            if removed:
                excluded_from.append(f"{element} ({len(removed)})")
        classes[vs_id] = (title, elements)
        description = (
            f"{title}: RxNorm concepts of the guide's composite value set {GUIDE}/ValueSet/valueset-{name} "
            f"(composed as in {rel}: the element value sets {', '.join(elements)}"
            + (f", minus their -exclude sets {', '.join(excluded_from)}" if excluded_from else "")
            + f"), flattened at {at}. {licence}"
        )
        written.append(valueset(vs_id, title, description, src.url(rel), concepts))

    singles = [
        ("pddi-warfarin", "warfarin", "Warfarin products (HL7 PDDI CDS)", False),
        ("pddi-topical-diclofenac", "topicaldiclofenac", "Topical diclofenac (HL7 PDDI CDS)", False),
        ("pddi-misoprostol", "misoprostol", "Misoprostol products (HL7 PDDI CDS)", False),
        ("pddi-digoxin", "digoxin", "Digoxin products (HL7 PDDI CDS)", False),
        ("pddi-cyclosporine", "cyclosporine", "Cyclosporine products, not ophthalmic (HL7 PDDI CDS)", True),
    ]
    for vs_id, name, title, exclude in singles:
        concepts, removed = element_concepts(name, exclude)
        bundled = not concepts_of(guide.vocabulary(name))
        rel = (DC_BUNDLE if name in ("digoxin", "cyclosporine") else WN_BUNDLE) if bundled else None
        rel = rel or f"input/vocabulary/valueset-{name}.xml"
        description = (
            f"{title}: RxNorm concepts of the guide's value set {GUIDE}/ValueSet/valueset-{name}"
            + (
                f", as enumerated in the value-set bundle {rel} (input/vocabulary/ now points to VSAC)"
                if bundled
                else f" ({rel})"
            )
            + (f", minus valueset-{name}-exclude ({len(removed)} ophthalmic products)" if removed else "")
            + f", at {at}. {licence}"
        )
        written.append(valueset(vs_id, title, description, src.url(rel), concepts))

    others = [
        ("pddi-hx-ugib", "Hx-UGIB-snomed", "History of upper GI bleeding or peptic ulcer (HL7 PDDI CDS)"),
        ("pddi-digoxin-level", "digoxin-LOINC", "Serum digoxin concentration (HL7 PDDI CDS)"),
        ("pddi-serum-potassium", "potassium-LOINC", "Potassium (HL7 PDDI CDS)"),
        ("pddi-serum-magnesium", "magnesium-LOINC", "Magnesium (HL7 PDDI CDS)"),
        ("pddi-serum-calcium", "calcium-LOINC", "Calcium (HL7 PDDI CDS)"),
        ("pddi-renal-function", "renal-LOINC", "Serum creatinine and eGFR (HL7 PDDI CDS)"),
    ]
    for vs_id, name, title in others:
        rel = f"input/vocabulary/valueset-{name}.xml"
        concepts = concepts_of(guide.vocabulary(name))
        system = {c[0] for c in concepts}
        assert system <= {SNOMED, LOINC}, (name, system)
        description = (
            f"{title}: the concepts of the guide's value set {GUIDE}/ValueSet/valueset-{name} ({rel}), "
            f"at {at}. {licence}"
        )
        written.append(valueset(vs_id, title, description, src.url(rel), concepts))

    # Ingredient classes: the ingredients of each composite, plus one class per single drug, so that the
    # rules match a medication by ingredient (any product, a text-only order, a note) and by route.
    class_specs = [(vs_id, title, elements) for vs_id, (title, elements) in classes.items()]
    class_specs = [
        (vs_id, "Proton pump inhibitors and misoprostol (HL7 PDDI CDS)", elements + ["misoprostol"])
        if vs_id == "pddi-ppis"
        else (vs_id, title, elements)
        for vs_id, title, elements in class_specs
    ]
    class_specs += [
        ("pddi-warfarin", "Warfarin (HL7 PDDI CDS)", ["warfarin"]),
        ("pddi-digoxin", "Digoxin (HL7 PDDI CDS)", ["digoxin"]),
        ("pddi-cyclosporine", "Cyclosporine (HL7 PDDI CDS)", ["cyclosporine"]),
    ]
    drug_classes = []
    for vs_id, title, elements in class_specs:
        concepts = []
        # Aldosterone itself (the hormone, one RxNorm concept in the guide's SCS list) is no ingredient name
        # to look for in text: "aldosterone" in a note is a lab test. It stays in the code list.
        elements = [e for e in elements if e not in NOT_AN_INGREDIENT_NAME]
        for element in elements:
            code, canonical, synonyms = INGREDIENTS[element]
            if element not in members.get(code, set()):
                print(f"note: ingredient code {code} ({canonical}) is not listed in valueset-{element}")
            concept = {"code": code, "display": canonical}
            if synonyms:
                concept["designation"] = [{"value": s} for s in synonyms]
            concepts.append(concept)
        class_id = vs_id.replace("pddi-ppis", "pddi-ppi-and-misoprostol") + "-ingredients"
        drug_classes.append(
            {
                "resourceType": "ValueSet",
                "id": class_id,
                "meta": {"source": src.url("input/vocabulary")},
                "url": f"urn:cds-service:ValueSet/{class_id}",
                "status": "active",
                "title": title.replace(" (HL7 PDDI CDS)", " - ingredients (HL7 PDDI CDS)"),
                "publisher": PUBLISHER,
                "description": (
                    "Drug-class value set of RxNorm ingredients: one per element value set of the guide "
                    f"({', '.join('valueset-' + e for e in elements)}), at {at}. The route (topical, "
                    f"ophthalmic ...) is not part of the class: rules filter it. {licence}"
                ),
                "compose": {"include": [{"system": RXNORM, "concept": concepts}]},
            }
        )

    # Product -> ingredient map for the guide's RxNorm codes the shared map does not list.
    shared = load_product_map(SHARED_MAP, SHARED_MAP.parent.parent)
    terminology = load_terminology(ROOT / "fhir" / "terminology")
    ingredient_codes = {code for code, _, _ in INGREDIENTS.values()}
    elements_out = []  # excluded (topical, ophthalmic) products map too: rules filter them by route
    by_name = {v[1]: v[0] for v in INGREDIENTS.values()}
    for code in sorted(members, key=int):
        if (RXNORM, code) in shared or code in ingredient_codes:
            continue
        names = {INGREDIENTS[e][1] for e in members[code] if e in INGREDIENTS}
        display = displays.get(code, "")
        for found in terminology.ingredients([], [display]):  # other ingredients named in the display
            names.add(found)
        targets = []
        for name in sorted(names):
            ingredient_code = by_name.get(name) or (terminology.ingredient_codes.get(name) or ("", ""))[1]
            targets.append(
                {
                    **({"code": ingredient_code} if ingredient_code else {}),
                    "display": name,
                    "equivalence": "wider",
                }
            )
        elements_out.append({"code": code, **({"display": display} if display else {}), "target": targets})
    concept_map = {
        "resourceType": "ConceptMap",
        "id": "pddi-products-to-ingredients",
        "meta": {"source": src.url("input/vocabulary")},
        "url": "urn:cds-service:ConceptMap/pddi-products-to-ingredients",
        "status": "active",
        "title": "RxNorm concepts of the HL7 PDDI CDS value sets to their ingredients",
        "description": (
            "Every RxNorm concept (clinical and branded drugs, dose forms, brand names) of the guide's drug "
            "value sets that rxnorm-products-to-ingredients.json does not list, mapped to the ingredient of "
            "each element value set that holds it (a combination product is held by each of its ingredients' "
            f"sets) and to any other ingredient this service knows that its display names. {at}. {licence}"
        ),
        "group": [{"source": RXNORM, "target": RXNORM, "element": elements_out}],
    }

    (OUT / "drug-classes").mkdir(parents=True, exist_ok=True)
    for vs in written:
        (OUT / f"{vs['id']}.json").write_text(json.dumps(vs, indent=1, ensure_ascii=False) + "\n", "utf-8")
    for vs in drug_classes:
        path = OUT / "drug-classes" / f"{vs['id']}.json"
        path.write_text(json.dumps(vs, indent=1, ensure_ascii=False) + "\n", "utf-8")
    MAP_OUT.write_text(json.dumps(concept_map, indent=1, ensure_ascii=False) + "\n", "utf-8")
    for vs in written + drug_classes:
        n = sum(len(i["concept"]) for i in vs["compose"]["include"])
        print(f"{vs['id']:<45}{n:>6} concepts")
    print(f"{MAP_OUT.name:<45}{len(elements_out):>6} products mapped (commit {src.commit})")


if __name__ == "__main__":
    main()
