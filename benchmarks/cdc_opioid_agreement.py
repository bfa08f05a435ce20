"""Agreement with the CDC opioid guideline reference CDS (cqframework/opioid-cds-r4) on its own test requests.

Every request in benchmarks/cdc-opioid/requests/ is rolled to today (roll_dates.py), posted through the
Flask test client to the service expected.json names (or, where it names none because the reference no
longer ships one, the service here that SERVICES names), and the answer (a card or no card) compared with the
reference outcome. Agreement = cases where card / no card matches `expect`, over the cases with `expect` card
or no-card.
`uncertain` cases (the sources disagree, or the reference logic changed since the outcome was recorded) are
listed apart. Every case has a service here; a missing one is an error.

Two adjustments, both printed per case:
- repairs of upstream data defects that would make this service answer 400 (invalid FHIR R4): an Encounter
  without the required `class` gets class AMB; a date-only `meta.lastUpdated` becomes midnight UTC; a resource
  about another patient than context.patientId is dropped;
- prefetch items this service declares but the request does not send are sent as null ("no such data"): the
  expected outcomes assume the request carries all the patient's data (benchmarks/cdc-opioid/README.md),
  while the reference server read anything else from its own store. Without a FHIR server to fetch from, an
  absent item would leave the rules that read it unevaluated.

Two modes, both printed by default:
- ``fhir-server`` (the headline figure): each request is sent as an EHR would send it, unrepaired, with
  its own prefetch; items it omits are fetched by the service from a FHIR server on 127.0.0.1 that holds
  that request's own data (every resource of its prefetch, searchable by patient). Defects in the data
  are the service's to handle (set aside and said, data_quality.py), as with a real EHR.
- ``repaired``: the data defects below are repaired and omitted items sent as null, no FHIR server.

    .venv/bin/python benchmarks/cdc_opioid_agreement.py [-v] [--mode fhir-server|repaired|both]

The service evaluates on today's clock, so the requests are always rolled to today.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import logging
import sys
import tempfile
import threading
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks" / "cdc-opioid"
sys.path.insert(0, str(ROOT))

from cds_service.protocol.app import create_app  # noqa: E402

_spec = importlib.util.spec_from_file_location("cdc_opioid_roll_dates", BENCH / "roll_dates.py")
roll_dates = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(roll_dates)

# Cases whose `service` is null in expected.json (the reference's HEAD has no such service; its test requests
# remain): (recommendation, hook) -> the service here that answers them.
SERVICES = {
    ("REC03", "patient-view"): "opioidcds-03-patient-view",  # OpioidCDSREC03PatientView, IG 2022.1.0
    ("REC10", "order-select"): "opioidcds-10-order-select",  # opioidcds-10 (OpioidCDSREC10), IG 2022.1.0
}

# Why our answer is what it is where the recorded outcome is uncertain or differs, per request
# (checked against the rules and the reference CQL at HEAD).
WHY = {
    "rec-06-out-extended-release-27-days": (
        "acute supply of 27 days is more than 7: HEAD REC06 fires (thunder agrees; the response file "
        "predates the logic)"
    ),
    "rec-08-mme-greater-than-fifty": (
        "the draft order is Pepto-Bismol, not an opioid; the fentanyl order is only in prefetch (and shares "
        "the draft's id)"
    ),
    "rec-08-mme-less-than-fifty": (
        "HEAD REC08 fires for any adult subacute/chronic opioid order (no MME threshold)"
    ),
    "rec-08-order-sign-mme-less-than-fifty": "HEAD REC08 fires for any adult subacute/chronic opioid order",
    "rec-08-on-naloxone": (
        "HEAD REC08 dropped the naloxone exclusion (the naloxone order shares the draft's id, so it is read "
        "as the draft itself and naloxone is still offered)"
    ),
    "rec-08-order-sign-on-naloxone": (
        "HEAD REC08 dropped the naloxone exclusion (the naloxone order shares the draft's id, so it is read "
        "as the draft itself and naloxone is still offered)"
    ),
    "rec-09-out-PDMP-review-90-days": (
        "its Procedure code 461651000124104 is the PDMP-finding code, not the PDMP-review procedure code "
        "461621000124108: no review is recognised"
    ),
    "rec-10-patient-view-illicit-drugs": (
        "only a THC screen (no value, cannabinoids not checked); it still counts as a test in the past year"
    ),
    "rec-12-patient-view-in-criteria-met": (
        "diagnosis 191865004 is not in the shipped opioid-misuse-disorders value set"
    ),
}


@dataclass
class CaseResult:
    case: dict
    name: str
    recommendation: str
    service: str | None
    expect: str  # card | no-card | uncertain
    ran: bool = False
    status: int | None = None
    got: str | None = None  # card | no-card | error
    summaries: list[str] = field(default_factory=list)
    repairs: list[str] = field(default_factory=list)
    nulled: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)  # items with data that the service does not declare
    body: dict | None = None
    notices: list[dict] = field(
        default_factory=list
    )  # data-quality cards (checks that ran on part of the data)

    @property
    def counted(self) -> bool:
        return self.ran and self.expect in ("card", "no-card")

    @property
    def agreed(self) -> bool:
        return self.counted and self.got == self.expect


@dataclass
class Report:
    today: date
    results: list[CaseResult]
    mode: str = "repaired"

    @property
    def counted(self) -> list[CaseResult]:
        return [r for r in self.results if r.counted]

    @property
    def agreed(self) -> int:
        return sum(r.agreed for r in self.results)

    @property
    def answers(self) -> list[CaseResult]:
        return [r for r in self.results if r.ran]


def _resources(request: dict):
    """(container, key, resource) for the draft orders and every prefetch resource (bare, bundled,
    wrapped)."""
    for entry in ((request.get("context") or {}).get("draftOrders") or {}).get("entry") or []:
        yield entry, "resource", entry.get("resource")
    for key, value in (request.get("prefetch") or {}).items():
        if not isinstance(value, dict):
            continue
        holder, slot = request["prefetch"], key
        if "resourceType" not in value and isinstance(value.get("resource"), dict):
            holder, slot, value = value, "resource", value["resource"]
        if value.get("resourceType") == "Bundle":
            for entry in value.get("entry") or []:
                yield entry, "resource", entry.get("resource")
        else:
            yield holder, slot, value


def repair(request: dict) -> tuple[dict, list[str]]:
    """Fix the upstream defects that make a request invalid FHIR R4 or mix patients; say what was done."""
    request = copy.deepcopy(request)
    notes: list[str] = []
    patient = str((request.get("context") or {}).get("patientId") or "").split("/")[-1]
    for holder, _slot, resource in list(_resources(request)):
        if not isinstance(resource, dict):
            continue
        where = f"{resource.get('resourceType')}/{resource.get('id')}"
        if resource.get("resourceType") == "Encounter" and "class" not in resource:
            resource["class"] = {
                "system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
                "code": "AMB",
                "display": "ambulatory",
            }
            notes.append(f"{where}: added the required Encounter.class (AMB)")
        updated = (resource.get("meta") or {}).get("lastUpdated")
        if isinstance(updated, str) and len(updated) == 10:
            resource["meta"]["lastUpdated"] = updated + "T00:00:00Z"
            notes.append(f"{where}: date-only meta.lastUpdated made an instant")
        subject = (
            (resource.get("subject") or resource.get("patient") or {}).get("reference")
            if isinstance(resource.get("subject") or resource.get("patient"), dict)
            else None
        )
        if isinstance(subject, str) and subject.startswith("Patient/") and subject.split("/")[1] != patient:
            if isinstance(holder, dict) and holder.get("resource") is resource:
                holder.pop("resource")
                for value in (request.get("prefetch") or {}).values():  # drop the emptied Bundle entry
                    if isinstance(value, dict):
                        bundle = value.get("resource") if "resourceType" not in value else value
                        if isinstance(bundle, dict) and bundle.get("resourceType") == "Bundle":
                            bundle["entry"] = [e for e in bundle.get("entry") or [] if "resource" in e]
                notes.append(f"{where}: dropped (about {subject}, not the context patient)")
    return request, notes


def fill_absent_items(request: dict, keys: list[str]) -> tuple[dict, list[str]]:
    prefetch = dict(request.get("prefetch") or {})
    absent = [k for k in keys if k not in prefetch]
    for key in absent:
        prefetch[key] = None
    return {**request, "prefetch": prefetch}, absent


def _post(client, registry, service_id: str, hook: str, request: dict, result: CaseResult, fhir=None) -> None:
    definition = registry.by_hook(service_id)[hook]
    if fhir is None:
        request, result.repairs = repair(request)
    declared = {t.key for t in definition.templates}
    result.ignored = [
        k for k, v in (request.get("prefetch") or {}).items() if v is not None and k not in declared
    ]
    if fhir is None:
        request, result.nulled = fill_absent_items(request, [t.key for t in definition.templates])
    else:  # as an EHR: what the request omits, the service fetches from the server holding its data
        fhir.hold([r for _h, _s, r in _resources({"prefetch": request.get("prefetch") or {}})])
        request = {
            **request,
            "fhirServer": fhir.base,
            "fhirAuthorization": {
                "access_token": "benchmark-token",
                "token_type": "Bearer",
                "expires_in": 300,
                "scope": "patient/*.read",
                "subject": "cds-service",
            },
        }
    response = client.post(f"/cds-services/{service_id}", json=request)
    result.ran, result.status = True, response.status_code
    result.body = response.get_json(silent=True)
    if response.status_code != 200 or not isinstance(result.body, dict):
        result.got = "error"
        return
    cards = [c for c in result.body.get("cards") or [] if not _is_data_notice(c)]
    result.got = "card" if cards else "no-card"
    result.summaries = [c.get("summary", "") for c in cards]
    result.notices = [c for c in result.body.get("cards") or [] if _is_data_notice(c)]


def _is_data_notice(card: dict) -> bool:
    """The info card saying checks ran on part of the data: about the data, not a recommendation."""
    return (card.get("extension") or {}).get("org.cds-service.rule", {}).get("id") == "data-quality"


class CaseFhirServer:
    """A FHIR server on 127.0.0.1 holding one request's data at a time: reads by id, searches by type
    and patient (`subject=Patient/<id>`, `patient=<id>`; other parameters are not applied, so a search
    may answer more than it asked for, which the rules must cope with anyway)."""

    def __init__(self):
        self.resources: list[dict] = []
        holder = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                parts = urlsplit(self.path)
                path = parts.path.removeprefix("/fhir/")
                rtype, _, rid = path.partition("/")
                if rid:
                    found = [
                        r for r in holder.resources if r.get("resourceType") == rtype and r.get("id") == rid
                    ]
                    body = found[0] if found else None
                else:
                    query = dict(parse_qsl(parts.query))
                    patient = (query.get("subject") or query.get("patient") or "").split("/")[-1]
                    body = {
                        "resourceType": "Bundle",
                        "type": "searchset",
                        "entry": [
                            {"resource": r}
                            for r in holder.resources
                            if r.get("resourceType") == rtype and (not patient or _about(r, patient))
                        ],
                    }
                data = json.dumps(body or {"resourceType": "OperationOutcome", "issue": []}).encode()
                self.send_response(200 if body else 404)
                self.send_header("Content-Type", "application/fhir+json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}/fhir"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def hold(self, resources: list) -> None:
        self.resources = [r for r in resources if isinstance(r, dict)]

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _about(resource: dict, patient: str) -> bool:
    for element in ("subject", "patient"):
        ref = resource.get(element)
        if isinstance(ref, dict) and isinstance(ref.get("reference"), str):
            return ref["reference"].split("/")[-1] == patient
    return False


def run(mode: str = "repaired") -> Report:
    """Roll to today, post and compare every case of expected.json, each to its service.
    `mode`: ``repaired`` or ``fhir-server`` (see the module docstring)."""
    today = datetime.now(UTC).date()  # the day the service evaluates on (UTC, as facts.py)
    expected = json.loads((BENCH / "expected.json").read_text(encoding="utf-8"))
    results: list[CaseResult] = []
    fhir = CaseFhirServer() if mode == "fhir-server" else None
    with tempfile.TemporaryDirectory(prefix="cdc-opioid-bench-") as data_dir:
        settings = {"CDS_DATA_DIR": data_dir, "CDS_LLM": "off"}
        if fhir is not None:
            settings["CDS_FHIR_ALLOWED_SERVERS"] = fhir.base
        app = create_app(settings)
        app.testing = True
        rt = app.extensions["cds_runtime"]
        try:
            client = app.test_client()
            for case in expected:
                request = json.loads((BENCH / case["request"]).read_text(encoding="utf-8"))
                rolled = roll_dates.roll_request(request, today)
                name = Path(case["request"]).stem.replace("request-example-", "")
                service = case["service"] or SERVICES.get((case["recommendation"], case["hook"]))
                if service not in rt.registry or case["hook"] not in rt.registry.by_hook(service):
                    raise SystemExit(f"{name}: no {case['hook']} service {service!r} here")
                result = CaseResult(case, name, case["recommendation"], service, case["expect"])
                _post(client, rt.registry, service, case["hook"], rolled, result, fhir)
                results.append(result)
        finally:
            rt.close()
            if fhir is not None:
                fhir.close()
    return Report(today, results, mode)


def render(report: Report, verbose: bool = False) -> str:
    how = (
        "unrepaired, omitted items fetched from a FHIR server holding each request's data"
        if report.mode == "fhir-server"
        else "data defects repaired, omitted items sent as null"
    )
    lines = [f"CDC opioid reference CDS agreement ({how}), dates rolled to {report.today.isoformat()}", ""]
    by_rec: dict[str, list[CaseResult]] = defaultdict(list)
    for r in report.results:
        by_rec[r.recommendation].append(r)
    lines.append(f"{'recommendation':<15}{'counted':>8}{'agreed':>8}{'disagreed':>10}{'uncertain':>10}")
    for rec in sorted(by_rec):
        rs = by_rec[rec]
        counted = [r for r in rs if r.counted]
        agreed = sum(r.agreed for r in rs)
        uncertain = sum(r.ran and r.expect == "uncertain" for r in rs)
        lines.append(f"{rec:<15}{len(counted):>8}{agreed:>8}{len(counted) - agreed:>10}{uncertain:>10}")
    counted = report.counted
    pct = 100.0 * report.agreed / len(counted) if counted else 0.0
    lines += [
        "",
        f"OVERALL agreement: {report.agreed}/{len(counted)} ({pct:.1f}%) of the cases with an expected "
        "card / no card",
        "",
    ]

    def describe(r: CaseResult) -> str:
        got = r.got if r.status == 200 else f"HTTP {r.status}"
        text = f"  {r.recommendation:<9}{r.service:<28}{r.name}: expected {r.expect}, got {got}"
        if r.summaries:
            text += f" ({'; '.join(sorted(set(r.summaries)))})"
        return text

    disagreements = [r for r in counted if not r.agreed]
    lines.append(f"Disagreements ({len(disagreements)}):")
    for r in disagreements:
        lines.append(describe(r))
        lines.append(f"      why: {WHY.get(r.name, 'no explanation recorded')}")
    uncertain = [r for r in report.results if r.ran and r.expect == "uncertain"]
    lines += ["", f"Uncertain cases, not counted ({len(uncertain)}):"]
    for r in uncertain:
        lines.append(describe(r))
        lines.append(
            f"      recorded: {r.case.get('expected_summary') or 'no card'}; why: "
            f"{WHY.get(r.name, 'no explanation recorded')}"
        )
    noticed = [r for r in report.answers if r.notices]
    lines += ["", f"Answers with a data-quality card (checks ran on part of the data): {len(noticed)}"]
    for r in noticed:
        checks = [x for c in r.notices for x in c["extension"]["org.cds-service.data-quality"]["checks"]]
        lines.append(f"  {r.name} -> {r.service}: {', '.join(checks)}")
    repaired = [r for r in report.answers if r.repairs]
    nulled = [r for r in report.answers if r.nulled]
    ignored = [r for r in report.answers if r.ignored]
    lines += [
        "",
        f"Requests repaired (upstream data defects): {len(repaired)}; requests with prefetch items sent as "
        f"null because the request omits them: {len(nulled)}; requests with data in items the service "
        f"does not declare (not read): {len(ignored)} (of {len(report.answers)} run)",
    ]
    for r in report.answers:
        if verbose and (r.repairs or r.nulled) or r.ignored:
            lines.append(
                f"  {r.name} -> {r.service}: "
                + "; ".join(
                    r.repairs
                    + ([f"null: {', '.join(r.nulled)}"] if r.nulled else [])
                    + ([f"NOT READ: {', '.join(r.ignored)}"] if r.ignored else [])
                )
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="list every repair and null-filled item")
    parser.add_argument("--mode", choices=["fhir-server", "repaired", "both"], default="both")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    logging.getLogger("cds_service").setLevel(logging.ERROR)  # one INFO line per hook call otherwise
    modes = ["fhir-server", "repaired"] if args.mode == "both" else [args.mode]
    reports = [run(mode) for mode in modes]
    print("\n\n".join(render(r, args.verbose) for r in reports))
    if len(reports) == 2:
        a, b = reports
        print(
            f"\nSide by side: unrepaired against a FHIR server {a.agreed}/{len(a.counted)}, "
            f"repaired {b.agreed}/{len(b.counted)}"
        )


if __name__ == "__main__":
    main()
