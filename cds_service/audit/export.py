"""Export of the decision log as FHIR R4: a Bundle of AuditEvent resources (one per decision: who
called, for which patient, which data by reference and hash, which rules, which cards, the chain hash),
plus a Provenance for each LLM text the decision showed (agent = the model id, source = the prompt hash).

The Bundle and the JSON lines are written as a stream of text chunks, one entry at a time, so an export
of any size runs in constant memory (records come from query.Stream in batches).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime

from .. import __version__


def _detail(kind: str, value: str) -> dict:
    return {"type": kind, "valueString": value}


def audit_event(record: dict) -> dict:
    status = record["response"]["status"]
    outcome = "0" if status < 400 else ("4" if status < 500 else "8")
    event: dict = {
        "resourceType": "AuditEvent",
        "id": record["id"],
        "type": {
            "system": "http://terminology.hl7.org/CodeSystem/audit-event-type",
            "code": "rest",
            "display": "RESTful Operation",
        },
        "subtype": [
            {
                "system": "http://hl7.org/fhir/restful-interaction",
                "code": "operation",
                "display": "operation",
            },
            {
                "system": "https://cds-hooks.hl7.org/hooks",
                "code": record["hook"] or "unknown",
                "display": f"CDS Hooks call to service {record['service']['id']}",
            },
        ],
        "action": "E",
        "recorded": record["recordedAt"],
        "outcome": outcome,
        "agent": [],
        "source": {
            "observer": {"display": f"cds-service {__version__}"},
            "type": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/security-source-type",
                    "code": "4",
                    "display": "Application Server",
                }
            ],
        },
        "entity": [],
    }
    if record.get("error"):
        event["outcomeDesc"] = "; ".join(i.get("diagnostics", "") for i in record["error"].get("issue", []))[
            :1000
        ]
    if record.get("user"):
        event["agent"].append(
            {
                "type": {
                    "coding": [
                        {
                            "system": "http://terminology.hl7.org/CodeSystem/extra-security-role-type",
                            "code": "humanuser",
                            "display": "human user",
                        }
                    ]
                },
                "who": {"reference": record["user"]},
                "requestor": True,
            }
        )
    client = record.get("client") or {}
    event["agent"].append(
        {
            "type": {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/extra-security-role-type",
                        "code": "dataprocessor",
                        "display": "data processor",
                    }
                ]
            },
            "who": {"display": client.get("id") or "unauthenticated CDS client"},
            "requestor": not record.get("user"),
            **({"altId": client["tenant"]} if client.get("tenant") else {}),
        }
    )
    if record.get("patient"):
        event["entity"].append(
            {
                "what": {"reference": record["patient"]},
                "type": {
                    "system": "http://terminology.hl7.org/CodeSystem/audit-entity-type",
                    "code": "1",
                    "display": "Person",
                },
                "role": {
                    "system": "http://terminology.hl7.org/CodeSystem/object-role",
                    "code": "1",
                    "display": "Patient",
                },
            }
        )
    for source in record.get("data") or []:
        for resource in source.get("resources") or []:
            detail = [_detail("origin", source["origin"]), _detail("prefetchKey", source["key"])]
            if resource.get("hash"):
                detail.append(_detail("sha256", resource["hash"]))
            for key in ("versionId", "lastUpdated"):
                if resource.get(key):
                    detail.append(_detail(key, resource[key]))
            event["entity"].append(
                {
                    "what": {"reference": resource["reference"]},
                    "type": {
                        "system": "http://terminology.hl7.org/CodeSystem/audit-entity-type",
                        "code": "2",
                        "display": "System Object",
                    },
                    "role": {
                        "system": "http://terminology.hl7.org/CodeSystem/object-role",
                        "code": "4",
                        "display": "Domain Resource",
                    },
                    "detail": detail,
                }
            )
    for rule in record.get("rules") or []:
        event["entity"].append(
            {
                "what": {"display": f"rule {rule['id']}@{rule['version']}"},
                "description": rule["outcome"],
                "detail": [_detail("status", rule["status"]), _detail("outcome", rule["outcome"])],
            }
        )
    cards = record.get("response", {}).get("cards")
    event["entity"].append(
        {
            "what": {"display": "CDS Hooks response and chain position"},
            "detail": [
                _detail("httpStatus", str(status)),
                _detail("seq", str(record["seq"])),
                _detail("prevHash", record["prevHash"]),
                *([_detail("hash", record["hash"])] if record.get("hash") else []),
                *(
                    [
                        {
                            "type": "cards",
                            "valueBase64Binary": base64.b64encode(
                                json.dumps(cards, sort_keys=True).encode()
                            ).decode(),
                        }
                    ]
                    if cards
                    else []
                ),
            ],
        }
    )
    return event


def provenances(record: dict) -> list[dict]:
    """One Provenance per LLM text shown: what made it (model id) and from what (prompt hash)."""
    llm = record.get("llm") or {}
    out = []
    for i, item in enumerate(llm.get("items") or []):
        if not (item.get("guard") or {}).get("accepted"):
            continue
        out.append(
            {
                "resourceType": "Provenance",
                "id": f"{record['id']}-llm-{i}",
                "target": [{"reference": f"AuditEvent/{record['id']}"}],
                "recorded": record["recordedAt"],
                "activity": {
                    "coding": [
                        {
                            "system": "http://terminology.hl7.org/CodeSystem/v3-DataOperation",
                            "code": "CREATE",
                            "display": "create",
                        }
                    ],
                    "text": f"AI-generated {item['task']} ({item['status']})",
                },
                "agent": [
                    {
                        "type": {
                            "coding": [
                                {
                                    "system": "http://terminology.hl7.org/CodeSystem/provenance-participant-type",
                                    "code": "assembler",
                                    "display": "Assembler",
                                }
                            ]
                        },
                        "who": {"display": f"on-premises LLM {llm['modelId']}"},
                    }
                ],
                "entity": [{"role": "source", "what": {"display": f"prompt sha256:{item['promptHash']}"}}],
            }
        )
    return out


def bundle_entries(record: dict) -> list[dict]:
    return [{"fullUrl": f"urn:uuid:{record['id']}", "resource": audit_event(record)}] + [
        {"resource": prov} for prov in provenances(record)
    ]


def export_bundle(records: Iterable[dict]) -> dict:
    return {
        "resourceType": "Bundle",
        "type": "collection",
        "timestamp": datetime.now(UTC).isoformat(),
        "entry": [entry for record in records for entry in bundle_entries(record)],
    }


def bundle_chunks(records: Iterable[dict], links: Callable[[], list[dict]] | None = None) -> Iterator[str]:
    """The same Bundle as `export_bundle`, as text, one entry per line. `links` is called after the last
    record (a `next` link when a limit cut the export)."""
    yield (
        '{"resourceType":"Bundle","type":"collection","timestamp":'
        + json.dumps(datetime.now(UTC).isoformat())
    )
    separator = ',"entry":[\n'  # FHIR JSON has no empty arrays: "entry" appears with the first entry
    for record in records:
        for entry in bundle_entries(record):
            yield separator + json.dumps(entry, separators=(",", ":"))
            separator = ",\n"
    if separator == ",\n":
        yield "\n]"
    extra = links() if links else []
    if extra:
        yield ',"link":' + json.dumps(extra)
    yield "}\n"


def jsonl_chunks(records: Iterable[dict]) -> Iterator[str]:
    for record in records:
        yield json.dumps(record, sort_keys=True) + "\n"
