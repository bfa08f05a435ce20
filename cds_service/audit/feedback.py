"""Clinician feedback on cards (CDS Hooks §Feedback): stored durably and idempotently.

The same report sent twice is one record: its dedupe key hashes (service, card, outcome, timestamp,
accepted suggestions, override reason). Each record is linked to the decision and to the rule id and
version that produced the card (through the card index), which is what the PDCA review reads.
Feedback cannot be re-derived from the decision log, so it is a hash chain of its own (audit/chain.py),
appended under the same database-wide write lock as decisions and checked by `audit verify`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.engine import Engine

from ..canonical import canonical_json, sha256_hex, utc_now
from ..errors import InvalidRequest, Issue
from .chain import FEEDBACK_CHAIN, append_row
from .storage import cards, feedback, write_transaction


@dataclass(frozen=True)
class FeedbackResult:
    received: int
    recorded: int


def _timestamp(value) -> str:
    return value.isoformat().replace("+00:00", "Z")


def dedupe_key(service_id: str, entry: dict) -> str:
    material = {
        "service": service_id,
        "card": entry["card"],
        "outcome": entry["outcome"],
        "at": _timestamp(entry["outcomeTimestamp"]),
        "accepted": sorted(s["id"] for s in entry.get("acceptedSuggestions") or []),
        "override": entry.get("overrideReason") or {},
    }
    return sha256_hex(canonical_json(material))


class FeedbackStore:
    def __init__(self, engine: Engine):
        self.engine = engine

    def record(self, service_id: str, entries: list[dict]) -> FeedbackResult:
        """Store validated entries (FeedbackEntrySchema). A card issued by another service is refused
        (400 naming the entry); a card we have no record of is stored unlinked, never dropped."""
        received_at = utc_now()
        # The write lock serialises the chain and makes the dedupe check race-free across processes.
        with write_transaction(self.engine) as conn:
            uuids = [e["card"] for e in entries]
            known = {
                row.card_uuid: row for row in conn.execute(select(cards).where(cards.c.card_uuid.in_(uuids)))
            }
            issues = [
                Issue(
                    f"feedback[{i}].card: card {e['card']} was issued by service "
                    f"'{known[e['card']].service_id}', not '{service_id}'",
                    (f"feedback[{i}].card",),
                )
                for i, e in enumerate(entries)
                if e["card"] in known and known[e["card"]].service_id != service_id
            ]
            if issues:
                raise InvalidRequest(issues[0].diagnostics, issues=issues)
            recorded = 0
            for entry in entries:
                key = dedupe_key(service_id, entry)
                if conn.execute(select(feedback.c.id).where(feedback.c.dedupe_key == key)).first():
                    continue
                card = known.get(entry["card"])
                reason = (entry.get("overrideReason") or {}).get("reason") or {}
                append_row(
                    conn,
                    FEEDBACK_CHAIN,
                    {
                        "dedupe_key": key,
                        "service_id": service_id,
                        "card_uuid": entry["card"],
                        "outcome": entry["outcome"],
                        "accepted_suggestions": json.dumps(
                            [s["id"] for s in entry.get("acceptedSuggestions") or []]
                        ),
                        "override_system": reason.get("system"),
                        "override_code": reason.get("code"),
                        "override_display": reason.get("display"),
                        "user_comment": (entry.get("overrideReason") or {}).get("userComment"),
                        "outcome_timestamp": _timestamp(entry["outcomeTimestamp"]),
                        "received_at": received_at,
                        "decision_id": card.decision_id if card else None,
                        "rule_id": card.rule_id if card else None,
                        "rule_version": card.rule_version if card else None,
                    },
                )
                recorded += 1
        return FeedbackResult(len(entries), recorded)
