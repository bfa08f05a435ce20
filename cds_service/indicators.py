"""The CDS Hooks card indicator scale (info < warning < critical), defined once.

Rules, cards, the LLM (which never raises an indicator), the decision log's index and the audit
filters all read it from here; the rule JSON Schema is given the same list at load time.
"""

from __future__ import annotations

from collections.abc import Iterable

INDICATORS: tuple[str, ...] = ("info", "warning", "critical")  # least to most urgent
RANK: dict[str, int] = {name: i for i, name in enumerate(INDICATORS)}


def highest(indicators: Iterable[str]) -> str | None:
    known = [i for i in indicators if i in RANK]
    return max(known, key=RANK.__getitem__) if known else None
