"""Canonical JSON and the hashes built on it: what the decision log chains and cites.

Sorted keys, no spaces, UTF-8 as is. The form must never change: every stored record's hash was
computed over it.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime


def canonical_json(obj) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def sha256_hex(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def content_hash(resource: dict) -> str:
    """sha256 of a FHIR resource's canonical JSON: how the decision log cites the data it used."""
    return sha256_hex(canonical_json(resource))


TIMESTAMP_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"  # ISO 8601 UTC with microseconds: sortable as text


def utc_now() -> str:
    """The decision log's clock."""
    return datetime.now(UTC).strftime(TIMESTAMP_FORMAT)
