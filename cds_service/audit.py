"""Auditor access to the decision log: queries, FHIR AuditEvent export, retention, auditor credentials.

- Query by patient, user, service, rule (decisions where it fired), time range and highest card
  indicator.
- Export as a FHIR R4 Bundle of AuditEvent resources (one per decision: who called, for which patient,
  which data by reference and hash, which rules, which cards, the chain hash), plus a Provenance for
  each LLM text the decision showed (agent = the model id, source = the prompt hash).
- Auditor credentials are separate from CDS clients: random bearer tokens whose SHA-256 hashes are
  listed in ``CDS_AUDIT_TOKENS`` (a file of ``name:sha256hex`` lines, written by
  ``cds-service audit token create``). Only hashes are stored.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

from sqlalchemy import delete, select
from sqlalchemy.engine import Engine

from . import __version__
from .database import decisions, llm_outputs, rule_outcomes
from .decision_log import DecisionLog

INDICATORS = ("info", "warning", "critical")


@dataclass(frozen=True)
class DecisionFilter:
    patient: str | None = None      # "123" or "Patient/123"
    user: str | None = None         # "Practitioner/abc"
    service: str | None = None
    rule: str | None = None         # decisions in which this rule fired
    since: str | None = None        # ISO date or datetime, inclusive
    until: str | None = None        # exclusive
    indicator: str | None = None    # highest indicator among the cards shown
    limit: int = 100
    offset: int = 0

    def validate(self) -> "DecisionFilter":
        for name in ("since", "until"):
            value = getattr(self, name)
            if value:
                try:
                    datetime.fromisoformat(value.replace("Z", "+00:00"))
                except ValueError as exc:
                    raise ValueError(f"{name}: not an ISO 8601 date/time: {value!r}") from exc
        if self.indicator and self.indicator not in INDICATORS:
            raise ValueError(f"indicator: one of {', '.join(INDICATORS)}")
        if not 1 <= self.limit <= 10_000 or self.offset < 0:
            raise ValueError("limit: 1..10000, offset >= 0")
        return self


def _statement(f: DecisionFilter):
    stmt = select(decisions).order_by(decisions.c.seq)
    if f.patient:
        stmt = stmt.where(decisions.c.patient_ref == (f.patient if "/" in f.patient else f"Patient/{f.patient}"))
    if f.user:
        stmt = stmt.where(decisions.c.user_ref == f.user)
    if f.service:
        stmt = stmt.where(decisions.c.service_id == f.service)
    if f.since:
        stmt = stmt.where(decisions.c.recorded_at >= f.since)
    if f.until:
        stmt = stmt.where(decisions.c.recorded_at < f.until)
    if f.indicator:
        stmt = stmt.where(decisions.c.max_indicator == f.indicator)
    if f.rule:
        fired = select(rule_outcomes.c.decision_id).where(rule_outcomes.c.rule_id == f.rule,
                                                          rule_outcomes.c.outcome == "fired")
        stmt = stmt.where(decisions.c.id.in_(fired))
    return stmt.limit(f.limit).offset(f.offset)


def query(engine: Engine, f: DecisionFilter) -> list[dict]:
    """Full decision records (as stored, hash-chain fields included)."""
    with engine.connect() as conn:
        rows = conn.execute(_statement(f.validate())).mappings().all()
    return [dict(json.loads(r["record"]), hash=r["hash"]) for r in rows]


def summary_row(record: dict) -> dict:
    cards = record.get("response", {}).get("cards") or []
    return {"id": record["id"], "seq": record["seq"], "recordedAt": record["recordedAt"],
            "service": record["service"]["id"], "hook": record["hook"], "status": record["response"]["status"],
            "patient": record.get("patient"), "user": record.get("user"), "cards": len(cards),
            "indicators": sorted({c["indicator"] for c in cards}),
            "rulesFired": sorted(r["id"] for r in record.get("rules", []) if r["outcome"] == "fired")}


# -- FHIR export --------------------------------------------------------------------------------------

def _detail(kind: str, value: str) -> dict:
    return {"type": kind, "valueString": value}


def audit_event(record: dict) -> dict:
    status = record["response"]["status"]
    outcome = "0" if status < 400 else ("4" if status < 500 else "8")
    event: dict = {
        "resourceType": "AuditEvent", "id": record["id"],
        "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-event-type", "code": "rest",
                 "display": "RESTful Operation"},
        "subtype": [{"system": "http://hl7.org/fhir/restful-interaction", "code": "operation", "display": "operation"},
                    {"system": "https://cds-hooks.hl7.org/hooks", "code": record["hook"] or "unknown",
                     "display": f"CDS Hooks call to service {record['service']['id']}"}],
        "action": "E", "recorded": record["recordedAt"], "outcome": outcome,
        "agent": [], "source": {"observer": {"display": f"cds-service {__version__}"},
                                "type": [{"system": "http://terminology.hl7.org/CodeSystem/security-source-type",
                                          "code": "4", "display": "Application Server"}]},
        "entity": [],
    }
    if record.get("error"):
        event["outcomeDesc"] = "; ".join(i.get("diagnostics", "") for i in record["error"].get("issue", []))[:1000]
    if record.get("user"):
        event["agent"].append({"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/extra-security-role-type",
                                                     "code": "humanuser", "display": "human user"}]},
                               "who": {"reference": record["user"]}, "requestor": True})
    client = record.get("client") or {}
    event["agent"].append({"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/extra-security-role-type",
                                                 "code": "dataprocessor", "display": "data processor"}]},
                           "who": {"display": client.get("id") or "unauthenticated CDS client"},
                           "requestor": not record.get("user"),
                           **({"altId": client["tenant"]} if client.get("tenant") else {})})
    if record.get("patient"):
        event["entity"].append({"what": {"reference": record["patient"]},
                                "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-entity-type",
                                         "code": "1", "display": "Person"},
                                "role": {"system": "http://terminology.hl7.org/CodeSystem/object-role", "code": "1",
                                         "display": "Patient"}})
    for source in record.get("data") or []:
        for resource in source.get("resources") or []:
            detail = [_detail("origin", source["origin"]), _detail("prefetchKey", source["key"])]
            if resource.get("hash"):
                detail.append(_detail("sha256", resource["hash"]))
            for key in ("versionId", "lastUpdated"):
                if resource.get(key):
                    detail.append(_detail(key, resource[key]))
            event["entity"].append({"what": {"reference": resource["reference"]},
                                    "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-entity-type",
                                             "code": "2", "display": "System Object"},
                                    "role": {"system": "http://terminology.hl7.org/CodeSystem/object-role",
                                             "code": "4", "display": "Domain Resource"},
                                    "detail": detail})
    for rule in record.get("rules") or []:
        event["entity"].append({"what": {"display": f"rule {rule['id']}@{rule['version']}"},
                                "description": rule["outcome"],
                                "detail": [_detail("status", rule["status"]), _detail("outcome", rule["outcome"])]})
    cards = record.get("response", {}).get("cards")
    event["entity"].append({"what": {"display": "CDS Hooks response and chain position"},
                            "detail": [_detail("httpStatus", str(status)), _detail("seq", str(record["seq"])),
                                       _detail("prevHash", record["prevHash"]),
                                       *([_detail("hash", record["hash"])] if record.get("hash") else []),
                                       *([{"type": "cards", "valueBase64Binary": base64.b64encode(
                                           json.dumps(cards, sort_keys=True).encode()).decode()}] if cards else [])]})
    return event


def provenances(record: dict) -> list[dict]:
    """One Provenance per LLM text shown: what made it (model id) and from what (prompt hash)."""
    llm = record.get("llm") or {}
    out = []
    for i, item in enumerate(llm.get("items") or []):
        if not (item.get("guard") or {}).get("accepted"):
            continue
        out.append({
            "resourceType": "Provenance", "id": f"{record['id']}-llm-{i}",
            "target": [{"reference": f"AuditEvent/{record['id']}"}], "recorded": record["recordedAt"],
            "activity": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-DataOperation",
                                     "code": "CREATE", "display": "create"}],
                         "text": f"AI-generated {item['task']} ({item['status']})"},
            "agent": [{"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/provenance-participant-type",
                                            "code": "assembler", "display": "Assembler"}]},
                       "who": {"display": f"on-premises LLM {llm['modelId']}"}}],
            "entity": [{"role": "source", "what": {"display": f"prompt sha256:{item['promptHash']}"}}],
        })
    return out


def export_bundle(records: list[dict]) -> dict:
    entries = []
    for record in records:
        entries.append({"fullUrl": f"urn:uuid:{record['id']}", "resource": audit_event(record)})
        entries += [{"resource": prov} for prov in provenances(record)]
    return {"resourceType": "Bundle", "type": "collection", "timestamp": datetime.now(timezone.utc).isoformat(),
            "entry": entries}


# -- retention ---------------------------------------------------------------------------------------------

def purge(log: DecisionLog, older_than_days: int) -> int:
    """Delete decisions (and cached LLM text) older than the retention; the chain stays verifiable."""
    cutoff = (datetime.now(timezone.utc) - timedelta(days=older_than_days)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    removed = log.purge_before(cutoff)
    with log.engine.begin() as conn:
        conn.execute(delete(llm_outputs).where(llm_outputs.c.created_at < cutoff))
    return removed


# -- auditor credentials ---------------------------------------------------------------------------------

def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create_token(path: Path, name: str) -> str:
    if not name or ":" in name or "\n" in name:
        raise ValueError("token name: non-empty, without ':'")
    token = secrets.token_urlsafe(32)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(f"{name}:{token_hash(token)}\n")
    path.chmod(0o600)
    return token


class AuditorTokens:
    def __init__(self, path: str):
        self.hashes: dict[str, str] = {}
        if path:
            for line in Path(path).read_text(encoding="utf-8").splitlines():
                line = line.strip()
                if line and not line.startswith("#"):
                    name, _, digest = line.partition(":")
                    self.hashes[digest.strip()] = name.strip()

    @property
    def enabled(self) -> bool:
        return bool(self.hashes)

    def auditor(self, authorization: str | None) -> str | None:
        if not authorization or not authorization.lower().startswith("bearer "):
            return None
        digest = token_hash(authorization.split(None, 1)[1].strip())
        for known, name in self.hashes.items():
            if hmac.compare_digest(known, digest):
                return name
        return None
