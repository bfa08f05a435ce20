"""The LLM text cache, shared by every worker and instance through the service's database: text
finished after one call's deadline shows on the next call with the same prompt, from any worker.

Cached text goes into cards, so the table is a hash chain (audit/chain.py) checked by `audit verify`,
and each row's hash over its key and content is re-checked before the text is served: a row that fails
is not served (the text is generated again) and is logged at WARNING.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.engine import Engine

from ..audit.chain import LLM_CHAIN, append_row
from ..audit.storage import llm_outputs, write_transaction
from ..canonical import utc_now

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Stored:
    output: str | None
    accepted: bool
    reasons: list[str]
    generation_ms: int | None


class LlmStore:
    def __init__(self, engine: Engine):
        self.engine = engine

    def get(self, key: str) -> Stored | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(llm_outputs).where(llm_outputs.c.key == key)).mappings().first()
        if row is None:
            return None
        if row["seq"] is None or row["prev_hash"] is None or LLM_CHAIN.digest(row) != row["hash"]:
            # The key is a hash of the prompt, not patient data: safe to log.
            log.warning(
                "cached LLM text not served: row seq %s key %s fails its hash check (edited or inserted "
                "outside the service); run `cds-service audit verify`",
                row["seq"],
                key,
            )
            return None
        return Stored(
            row["output"], bool(row["accepted"]), json.loads(row["reasons"] or "[]"), row["generation_ms"]
        )

    def put(self, key: str, model_id: str, task: str, stored: Stored) -> None:
        """Append under the decision log's write lock (generation is slow; appends are rare and short)."""
        with write_transaction(self.engine) as conn:
            if conn.execute(select(llm_outputs.c.seq).where(llm_outputs.c.key == key)).first():
                return  # another worker finished the same prompt first; a row that fails stays reported
            append_row(
                conn,
                LLM_CHAIN,
                {
                    "key": key,
                    "model_id": model_id,
                    "task": task,
                    "created_at": utc_now(),
                    "output": stored.output,
                    "accepted": int(stored.accepted),
                    "reasons": json.dumps(stored.reasons),
                    "generation_ms": stored.generation_ms,
                },
            )
