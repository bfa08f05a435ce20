"""Retention: decisions (and cached LLM text) older than the retention period are deleted; the hash of
the last deleted record becomes the anchor the remaining chain is verified from.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import delete

from ..canonical import TIMESTAMP_FORMAT
from .decision_log import DecisionLog
from .storage import llm_outputs


def purge(log: DecisionLog, older_than_days: int) -> int:
    """Delete decisions (and cached LLM text) older than the retention; the chain stays verifiable."""
    cutoff = (datetime.now(UTC) - timedelta(days=older_than_days)).strftime(TIMESTAMP_FORMAT)
    removed = log.purge_before(cutoff)
    with log.engine.begin() as conn:
        conn.execute(delete(llm_outputs).where(llm_outputs.c.created_at < cutoff))
    return removed
