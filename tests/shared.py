"""What tests may share across the session because no test changes it: the bundled content."""

from __future__ import annotations

from functools import lru_cache

from cds_service.runtime import Content
from cds_service.settings import Settings


@lru_cache(maxsize=1)
def bundled_content() -> Content:
    """hooks/, rules/, fhir/ as shipped, loaded once (rules, terminology and services are read-only)."""
    return Content.load(Settings.load({"llm": "off"}))
