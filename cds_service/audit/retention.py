"""Retention: decisions (and cached LLM text) older than the retention period are deleted; the hash of
the last deleted row of each chain becomes the anchor the rest of that chain is verified from.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from ..canonical import TIMESTAMP_FORMAT
from .chain import LLM_CHAIN, purge_prefix
from .decision_log import DecisionLog
from .storage import write_transaction


def purge(log: DecisionLog, older_than_days: int) -> int:
    """Delete decisions (and cached LLM text) older than the retention; the chains stay verifiable."""
    cutoff = (datetime.now(UTC) - timedelta(days=older_than_days)).strftime(TIMESTAMP_FORMAT)
    removed = log.purge_before(cutoff)
    with write_transaction(log.engine) as conn:
        purge_prefix(conn, LLM_CHAIN, "created_at", cutoff)
    return removed
