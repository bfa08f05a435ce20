"""What tests may share across the session because no test changes it: the bundled content."""

from __future__ import annotations

import contextlib
import uuid
from functools import lru_cache

import pytest

from cds_service.audit.storage import make_engine
from cds_service.runtime import Content
from cds_service.settings import Settings


@lru_cache(maxsize=1)
def bundled_content() -> Content:
    """hooks/, rules/, fhir/ as shipped, loaded once (rules, terminology and services are read-only)."""
    return Content.load(Settings.load({"llm": "off"}))


@contextlib.contextmanager
def fresh_postgres_schema(prefix: str = "cds_test"):
    """A fresh schema in the machine's PostgreSQL (127.0.0.1:5432, database test), dropped afterwards;
    skips the test when PostgreSQL cannot be reached."""
    from sqlalchemy import text

    schema = f"{prefix}_{uuid.uuid4().hex[:10]}"
    admin = make_engine("postgresql://postgres@127.0.0.1:5432/test")
    try:
        with admin.begin() as conn:
            conn.execute(text(f"CREATE SCHEMA {schema}"))
    except Exception as exc:
        pytest.skip(f"PostgreSQL on 127.0.0.1:5432 not reachable: {type(exc).__name__}")
    try:
        yield f"postgresql://postgres@127.0.0.1:5432/test?options=-csearch_path%3D{schema}"
    finally:
        with admin.begin() as conn:
            conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()
