"""The LLM text cache, shared by every worker and instance through the service's database: text
finished after one call's deadline shows on the next call with the same prompt, from any worker.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.engine import Engine

from ..audit.storage import dialect_insert, llm_outputs
from ..canonical import utc_now


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
        return Stored(
            row["output"], bool(row["accepted"]), json.loads(row["reasons"] or "[]"), row["generation_ms"]
        )

    def put(self, key: str, model_id: str, task: str, stored: Stored) -> None:
        with self.engine.begin() as conn:
            insert = dialect_insert(conn)
            conn.execute(
                insert(llm_outputs)
                .values(
                    key=key,
                    model_id=model_id,
                    task=task,
                    created_at=utc_now(),
                    output=stored.output,
                    accepted=int(stored.accepted),
                    reasons=json.dumps(stored.reasons),
                    generation_ms=stored.generation_ms,
                )
                .on_conflict_do_nothing(index_elements=["key"])
            )
