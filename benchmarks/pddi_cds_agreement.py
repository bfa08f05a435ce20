"""Agreement with the HL7 PDDI CDS implementation guide on its own example requests.

    .venv/bin/python benchmarks/pddi_cds_agreement.py --pddi-src /work/.mirror/HL7+PDDI-CDS/repo [-v]

--pddi-src is a clone or a bare mirror of github.com/HL7/PDDI-CDS (files are read with `git show`, at the
commit recorded in benchmarks/pddi-cds/expected.json unless --commit says otherwise); nothing of the guide is
copied here but its value sets (fhir/terminology/pddi/).

Each example request of the guide's test-data page (input/images/requests/*.json: the warfarin + NSAIDs and
digoxin + cyclosporine scenarios, the order-select / order-sign requests with and without coordination, and
the multiple-draft-order requests) is made into a valid CDS Hooks call: order-select requests to the
medication-order-select service (with the guide's selections), the others as order-sign calls of the
medication-order-check service, posted through the Flask test client. The cards of this service's rules
for the two interactions (ddi-warfarin-nsaid, ddi-warfarin-topical-diclofenac; ddi-digoxin-cyclosporine) are
compared with what the guide's logic answers (benchmarks/pddi-cds/expected.json, with the reason per
request): card / no card, and the indicator (the guide's several cards per interaction -> their highest
indicator, which is also its logic table's recommendation: critical = "use only if benefit outweighs risk").

Making the requests valid is printed per request (-v lists every step). The guide's requests are of several
generations and need:
- the old scenario requests (hook `medication-prescribe`, `context.medications`, data under
  `context.prefetch` or loose under `context.itemN`, bundle entries without `resource`): the context
  medications become draftOrders (status draft, an id where missing) and every resource found in the
  request becomes prefetch data of its type;
- dates written as CQL expressions (extension cqif-cqlExpression: `Today() - 90 days`, `FHIR.Period {...}`)
  are evaluated on today's date; requests with fixed dates (2020) are rolled so that today is 35 days after
  their latest date (benchmarks/cdc-opioid/roll_dates.py), which reproduces the guide's recorded responses;
- DSTU3 shapes the R4 models reject: a Condition's clinicalStatus / verificationStatus as a plain code, and
  `assertedDate` (R4: the condition-assertedDate extension; also recordedDate);
- one patient: resources name the patient inconsistently (`Patient/warfarin-nsaid-over65-prefetch` for
  context patient `patient-warfarin-nsaid-over65-prefetch`, an under-65 Patient resource with another id in
  the scenarios meant for an under-65 patient): all are made the context patient's; a request without a
  Patient gets the guide's own (input/examples/<id>.xml, input/tests/*/<id>/Patient-<id>.json, or the
  Patient of that id in another example request).
The service keeps no state between order-select and order-sign, so the guide's coordination settings have no
effect: each call is answered on its own.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import logging
import re
import subprocess
import sys
import tempfile
import uuid
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks" / "pddi-cds"
sys.path.insert(0, str(ROOT))

from cds_service.indicators import RANK  # noqa: E402
from cds_service.protocol.app import create_app  # noqa: E402

_spec = importlib.util.spec_from_file_location(
    "cdc_opioid_roll_dates", ROOT / "benchmarks" / "cdc-opioid" / "roll_dates.py"
)
roll_dates = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(roll_dates)

# The guide's order-select requests go to the order-select twin of the order-sign service.
SERVICES = {"order-sign": "medication-order-check", "order-select": "medication-order-select"}
REPO_URL = "https://github.com/HL7/PDDI-CDS"
REQUESTS = "input/images/requests"
INTERACTIONS = {  # the guide's interaction -> this service's rules for it
    "warfarin-nsaids": {"ddi-warfarin-nsaid", "ddi-warfarin-topical-diclofenac"},
    "digoxin-cyclosporine": {"ddi-digoxin-cyclosporine"},
}
CQL_EXPRESSION = "http://hl7.org/fhir/StructureDefinition/cqif-cqlExpression"
ASSERTED_DATE = "http://hl7.org/fhir/StructureDefinition/condition-assertedDate"
DAYS_AFTER_LATEST = 35  # fixed-date requests: "today" is this long after their latest date (see docstring)
FHIR_NS = "{http://hl7.org/fhir}"
DATE = re.compile(r"^\d{4}-\d{2}-\d{2}")


class Guide:
    """The guide's files at one commit, from a clone or a bare mirror."""

    def __init__(self, path: Path, commit: str):
        self.path = path
        self.commit = self._git("rev-parse", commit).decode().strip()

    def _git(self, *args: str) -> bytes:
        return subprocess.run(["git", "-C", str(self.path), *args], capture_output=True, check=True).stdout

    def read(self, rel: str) -> bytes:
        return self._git("show", f"{self.commit}:{rel}")

    def json(self, rel: str):
        return json.loads(self.read(rel).decode("utf-8-sig"))

    def exists(self, rel: str) -> bool:
        try:
            self.read(rel)
        except subprocess.CalledProcessError:
            return False
        return True

    def list(self, folder: str) -> list[str]:
        return self._git("ls-tree", "-r", "--name-only", self.commit, folder).decode().split()


# -- dates --------------------------------------------------------------------------------------------------


def cql_date(expression: str, today: date) -> str:
    """`Today()`, `Today() - 90 days`, `Today() + 3 months` -> an ISO date."""
    m = re.fullmatch(r"\s*Today\(\)\s*(?:([+-])\s*(\d+)\s*(day|days|month|months))?\s*", expression)
    if not m:
        raise ValueError(f"unsupported CQL date expression: {expression!r}")
    if not m.group(1):
        return today.isoformat()
    n = int(m.group(2)) * (1 if m.group(1) == "+" else -1)
    if m.group(3).startswith("day"):
        return (today + timedelta(days=n)).isoformat()
    return roll_dates_months(today, n).isoformat()


def roll_dates_months(day: date, months: int) -> date:
    index = day.year * 12 + day.month - 1 + months
    year, month = divmod(index, 12)
    for d in (day.day, 30, 29, 28):
        try:
            return date(year, month + 1, d)
        except ValueError:
            continue
    raise ValueError(day)


def cql_value(expression: str, today: date):
    period = re.fullmatch(
        r"\s*FHIR\.Period\s*\{\s*start:\s*FHIR\.dateTime\s*\{\s*value:\s*(.+?)\s*\}\s*,\s*"
        r"end:\s*FHIR\.dateTime\s*\{\s*value:\s*(.+?)\s*\}\s*\}\s*",
        expression,
    )
    if period:
        return {"start": cql_date(period.group(1), today), "end": cql_date(period.group(2), today)}
    return cql_date(expression, today)


def _cql_of(value) -> str | None:
    if isinstance(value, dict) and set(value) <= {"extension"}:
        for ext in value.get("extension") or []:
            if ext.get("url") == CQL_EXPRESSION:
                return ext.get("valueString")
    return None


def resolve_cql_dates(node, today: date) -> int:
    """Replace every element given as a CQL expression (`_authoredOn: {extension: [...]}`, a Period holding
    only the extension) by its value on `today`; returns how many were replaced."""
    count = 0
    if isinstance(node, list):
        return sum(resolve_cql_dates(v, today) for v in node)
    if not isinstance(node, dict):
        return 0
    for key in list(node):
        expression = _cql_of(node[key])
        if expression is not None:
            del node[key]
            node[key.lstrip("_")] = cql_value(expression, today)
            count += 1
        else:
            count += resolve_cql_dates(node[key], today)
    return count


def clinical_dates(resource) -> list[date]:
    """Full dates in a resource except birth dates and bookkeeping (meta)."""
    found: list[date] = []

    def walk(node, key=""):
        if isinstance(node, dict):
            for k, v in node.items():
                if k not in ("birthDate", "meta"):
                    walk(v, k)
        elif isinstance(node, list):
            for v in node:
                walk(v, key)
        elif isinstance(node, str) and DATE.match(node) and key not in roll_dates.SKIP_KEYS:
            found.append(date.fromisoformat(node[:10]))

    walk(resource)
    return found


# -- the request as this service takes it --------------------------------------------------------------------


def _resources_in(node) -> list[dict]:
    """Every resource (not Bundle) under a node, not descending into resources."""
    out: list[dict] = []
    if isinstance(node, list):
        for v in node:
            out += _resources_in(v)
    elif isinstance(node, dict):
        rtype = node.get("resourceType")
        if isinstance(rtype, str) and rtype != "Bundle":
            return [node]
        for v in node.values():
            out += _resources_in(v)
    return out


def _r4_repairs(resource: dict, notes: list[str]) -> None:
    where = f"{resource.get('resourceType')}/{resource.get('id')}"
    if resource.get("resourceType") != "Condition":
        return
    for element, system in (
        ("clinicalStatus", "http://terminology.hl7.org/CodeSystem/condition-clinical"),
        ("verificationStatus", "http://terminology.hl7.org/CodeSystem/condition-ver-status"),
    ):
        if isinstance(resource.get(element), str):
            resource[element] = {"coding": [{"system": system, "code": resource[element]}]}
            notes.append(f"{where}: {element} made a CodeableConcept (DSTU3 code)")
    if isinstance(resource.get("assertedDate"), str):
        asserted = resource.pop("assertedDate")
        resource.setdefault("extension", []).append({"url": ASSERTED_DATE, "valueDateTime": asserted})
        resource.setdefault("recordedDate", asserted)
        notes.append(f"{where}: assertedDate (DSTU3) made the R4 extension and recordedDate")


def guide_patient(guide: Guide, patient_id: str, requests: dict[str, dict]) -> tuple[dict | None, str]:
    """The guide's own Patient of this id: an example resource, a test resource, or one in another request."""
    rel = f"input/examples/{patient_id}.xml"
    if guide.exists(rel):
        root = ET.fromstring(guide.read(rel))
        patient = {"resourceType": "Patient", "id": patient_id}
        for element in ("gender", "birthDate"):
            found = root.find(f"{FHIR_NS}{element}")
            if found is not None:
                patient[element] = found.get("value")
        return patient, rel
    for path in guide.list("input/tests"):
        if path.endswith(f"/{patient_id}/Patient-{patient_id}.json"):
            return guide.json(path), path
    for name, request in requests.items():
        for resource in _resources_in(request):
            if resource.get("resourceType") == "Patient" and resource.get("id") == patient_id:
                return copy.deepcopy(resource), f"{REQUESTS}/{name}"
    return None, ""


def build_request(
    guide: Guide, name: str, raw: dict, requests: dict[str, dict], today: date, definition
) -> tuple[dict, list[str]]:
    """A valid order-sign call of the service from one of the guide's example requests; the steps taken."""
    raw = copy.deepcopy(raw)
    notes: list[str] = []
    context = raw.get("context") or {}
    patient_id = str(context.get("patientId") or raw.get("patient") or "").split("/")[-1]
    hook = raw.get("hook")
    if hook not in ("order-sign", "order-select"):
        notes.append(f"hook {hook} sent as order-sign")
    if "draftOrders" in context:
        drafts = _resources_in(context["draftOrders"])
        data = [r for k, v in context.items() if k != "draftOrders" for r in _resources_in(v)]
    else:  # the old medication-prescribe requests
        drafts = _resources_in(context.get("medications"))
        data = [r for k, v in context.items() if k != "medications" for r in _resources_in(v)]
        loose = [k for k in context if re.fullmatch(r"item\d+", k)]
        notes.append(
            "context.medications made draftOrders; data read from context.prefetch"
            + (f" and loose context.{', context.'.join(loose)}" if loose else "")
        )
    data += _resources_in(raw.get("prefetch"))
    # The scenario requests date their orders relative to the day of the call; the others have fixed dates.
    relative = resolve_cql_dates(copy.deepcopy(drafts), today) > 0
    patients = [r for r in data if r.get("resourceType") == "Patient"]
    data = [r for r in data if r.get("resourceType") != "Patient"]
    if patients:
        patient = patients[0]
        if patient.get("id") != patient_id:
            notes.append(f"Patient/{patient.get('id')} taken as the context patient {patient_id}")
    else:
        patient, origin = guide_patient(guide, patient_id, requests)
        if patient is None:
            raise SystemExit(f"{name}: no Patient {patient_id} in the guide")
        notes.append(f"Patient {patient_id} from {origin}")
    patient = {**patient, "id": patient_id}
    if not relative:
        latest = max(d for r in drafts + data for d in clinical_dates(r))
        shift = (today - (latest + timedelta(days=DAYS_AFTER_LATEST))).days
        drafts, data = (
            [roll_dates.roll_node(r, today, shift, False) for r in group] for group in (drafts, data)
        )
        patient = roll_dates.roll_node(patient, today, shift, False)
        notes.append(f"fixed dates rolled {shift:+d} days (latest {latest.isoformat()} -> today - 35 days)")
    evaluated = resolve_cql_dates(drafts, today) + resolve_cql_dates(data, today)
    if evaluated:
        notes.append(f"{evaluated} CQL date expressions evaluated on {today.isoformat()}")
    renamed = 0
    for resource in drafts + data:
        if "subject" not in resource and "patient" not in resource:
            resource["subject"] = {"reference": f"Patient/{patient_id}"}
            notes.append(f"{resource['resourceType']}/{resource.get('id')}: subject added (R4 requires it)")
        for element in ("subject", "patient"):
            ref = resource.get(element)
            if isinstance(ref, dict) and str(ref.get("reference", "")) != f"Patient/{patient_id}":
                resource[element] = {"reference": f"Patient/{patient_id}"}
                renamed += 1
        if resource.get("resourceType") == "MedicationRequest" and "intent" not in resource:
            resource["intent"] = "order"
            notes.append(f"MedicationRequest/{resource.get('id')}: intent order added (R4 requires it)")
        _r4_repairs(resource, notes)
    if renamed:
        notes.append(f"{renamed} subject references made Patient/{patient_id}")
    for i, draft in enumerate(drafts):
        if draft.get("status") != "draft":
            notes.append(f"draft {draft.get('id') or i}: status {draft.get('status')} -> draft")
            draft["status"] = "draft"
        if not draft.get("id"):
            draft["id"] = f"draft-{i + 1}"
            notes.append(f"draft {i + 1}: id added")
    prefetch: dict = {}
    for template in definition.templates:
        rtype = definition.resource_types[template.key]
        if rtype == "Patient":
            prefetch[template.key] = patient
            continue
        found = [r for r in data if r.get("resourceType") == rtype]
        data = [r for r in data if r.get("resourceType") != rtype]
        prefetch[template.key] = (
            {"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": r} for r in found]}
            if found
            else None
        )
    if data:
        notes.append(f"not sent (no prefetch item of its type): {[r['resourceType'] for r in data]}")
    selections = None
    if hook == "order-select":  # the guide's selections, when they name a draft; else every draft
        refs = [f"{d['resourceType']}/{d['id']}" for d in drafts]
        wanted = [str(x) for x in context.get("selections") or []]
        selections = [x for x in wanted if x in refs] or refs
        if selections != wanted:
            notes.append(f"selections {wanted} -> {selections}")
    request = {
        "hook": "order-select" if selections is not None else "order-sign",
        "hookInstance": str(uuid.uuid5(uuid.NAMESPACE_URL, f"{REPO_URL}/{REQUESTS}/{name}")),
        "context": {
            "userId": "Practitioner/example",
            "patientId": patient_id,
            "draftOrders": {
                "resourceType": "Bundle",
                "type": "collection",
                "entry": [{"resource": d} for d in drafts],
            },
        },
        "prefetch": prefetch,
    }
    if selections is not None:
        request["context"]["selections"] = selections
    return request, notes


# -- comparison ---------------------------------------------------------------------------------------------


@dataclass
class Result:
    request: str
    interaction: str
    expect: str  # card | no-card | uncertain
    expected_indicator: str | None
    why: str
    got: str = "error"  # card | no-card | error
    indicator: str | None = None
    summaries: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    others: list[str] = field(default_factory=list)  # other rules' cards in the same answer

    @property
    def counted(self) -> bool:
        return self.expect in ("card", "no-card")

    @property
    def card_agrees(self) -> bool:
        return self.got == self.expect

    @property
    def agrees(self) -> bool:
        return self.card_agrees and (self.expect == "no-card" or self.indicator == self.expected_indicator)


def run(guide: Guide, today: date) -> list[Result]:
    expected = json.loads((BENCH / "expected.json").read_text(encoding="utf-8"))
    names = [Path(p).name for p in guide.list(REQUESTS) if p.endswith(".json")]
    requests = {n: guide.json(f"{REQUESTS}/{n}") for n in names}
    listed = {c["request"] for c in expected["cases"]}
    if listed != set(names):
        raise SystemExit(f"expected.json and {REQUESTS} differ: {sorted(listed ^ set(names))}")
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="pddi-bench-") as data_dir:
        app = create_app({"CDS_DATA_DIR": data_dir, "CDS_LLM": "off"})
        app.testing = True
        rt = app.extensions["cds_runtime"]
        try:
            client = app.test_client()
            for case in expected["cases"]:
                name = case["request"]
                hook = "order-select" if requests[name].get("hook") == "order-select" else "order-sign"
                service = SERVICES[hook]
                definition = rt.registry.by_hook(service)[hook]
                request, notes = build_request(guide, name, requests[name], requests, today, definition)
                response = client.post(f"/cds-services/{service}", json=request)
                body = response.get_json(silent=True) or {}
                cards = (body.get("cards") or []) if response.status_code == 200 else None
                if cards is None:
                    notes.append(f"HTTP {response.status_code}: {json.dumps(body)[:300]}")
                for interaction, spec in case["expect"].items():
                    r = Result(
                        name, interaction, spec["outcome"], spec.get("indicator"), case["why"], notes=notes
                    )
                    if cards is not None:
                        rules = INTERACTIONS[interaction]
                        mine = [c for c in cards if _rule_of(c) in rules]
                        r.got = "card" if mine else "no-card"
                        r.indicator = max((c["indicator"] for c in mine), key=RANK.get, default=None)
                        r.summaries = [c["summary"] for c in mine]
                        r.others = sorted({_rule_of(c) for c in cards if _rule_of(c) not in rules})
                    results.append(r)
        finally:
            rt.close()
    return results


def _rule_of(card: dict) -> str:
    return (card.get("extension") or {}).get("org.cds-service.rule", {}).get("id", "")


def render(results: list[Result], guide: Guide, today: date, verbose: bool) -> str:
    lines = [
        f"HL7 PDDI CDS guide example requests (HL7/PDDI-CDS {guide.commit[:12]}), "
        f"evaluated {today.isoformat()}",
        "",
        f"{'request':<52}{'interaction':<22}{'guide':<18}{'here':<18}agree",
    ]

    def show(outcome: str, indicator: str | None) -> str:
        return f"{outcome} {indicator}" if outcome == "card" and indicator else outcome

    for r in results:
        guide_says = show(r.expect if r.expect != "uncertain" else "uncertain", r.expected_indicator)
        mark = "yes" if r.agrees else ("(not counted)" if not r.counted else "NO")
        lines.append(
            f"{r.request:<52}{r.interaction:<22}{guide_says:<18}{show(r.got, r.indicator):<18}{mark}"
        )
        if verbose or (r.counted and not r.agrees) or not r.counted:
            lines.append(f"    guide: {r.why}")
            for s in r.summaries:
                lines.append(f"    card: {s}")
            if verbose:
                lines.append(f"    made valid: {'; '.join(r.notes)}")
                if r.others:
                    lines.append(f"    other cards: {', '.join(r.others)}")
    counted = [r for r in results if r.counted]
    cards = [r for r in counted if r.expect == "card" and r.got == "card"]
    lines += [
        "",
        f"card / no card agrees: {sum(r.card_agrees for r in counted)}/{len(counted)}",
        "indicator agrees (both give a card): "
        f"{sum(r.indicator == r.expected_indicator for r in cards)}/{len(cards)}",
        f"AGREEMENT (card / no card and indicator): {sum(r.agrees for r in counted)}/{len(counted)} "
        f"({100.0 * sum(r.agrees for r in counted) / len(counted):.1f}%); "
        f"{len(results) - len(counted)} uncertain, not counted",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pddi-src", type=Path, required=True, help="clone or mirror of HL7/PDDI-CDS")
    parser.add_argument("--commit", help="default: the commit benchmarks/pddi-cds/expected.json was made at")
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="every request's repairs and other cards"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    logging.getLogger("cds_service").setLevel(logging.ERROR)
    commit = args.commit or json.loads((BENCH / "expected.json").read_text(encoding="utf-8"))["commit"]
    guide = Guide(args.pddi_src, commit)
    today = datetime.now(UTC).date()  # the day the service evaluates on
    print(render(run(guide, today), guide, today, args.verbose))


if __name__ == "__main__":
    main()
