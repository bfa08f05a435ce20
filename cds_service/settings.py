"""Settings: environment variables prefixed ``CDS_`` (each documented in the README table).

pydantic-settings reads ``os.environ``; `Settings.load(overrides)` lets a mapping (tests, the CLI)
override it with the same names (``CDS_LLM``) or the field names (``llm``). Every setting has an
embedded default that needs no other server.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from .content import default_content_dir


def _user_dir(env: str, fallback: str) -> Path:
    base = os.environ.get(env)
    return Path(base) if base else Path.home() / fallback


CommaList = Annotated[tuple[str, ...], NoDecode]  # "a, b" in the environment, not JSON


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CDS_", frozen=True, extra="forbid", case_sensitive=False)

    # Where hooks/, rules/ and fhir/ live (packaged copy by default, the checkout when editable).
    content_dir: Path = Field(default_factory=default_content_dir)
    # Writable state: decision log (SQLite), caches.
    data_dir: Path = Field(default_factory=lambda: _user_dir("XDG_DATA_HOME", ".local/share") / "cds-service")
    # SQLAlchemy URL; unset means SQLite (WAL) at data_dir/decision-log.sqlite3.
    decision_log: str = ""
    # Comma-separated base-URL prefixes of FHIR servers the service may call. Empty: none.
    fhir_allowed_servers: CommaList = ()
    fhir_connect_timeout: float = 2.0
    fhir_read_timeout: float = 5.0
    fhir_max_pages: int = 10
    fhir_max_response_bytes: int = 20_000_000
    # All of one call's FHIR access (every key, page and parallel fetch) ends within this; each request's
    # timeouts are cut to what is left. Da Vinci CRD allows 5 s at p90 for a whole response: 3 s for data
    # leaves room for the rest, and a server answering a search in < 500 ms needs far less.
    fhir_deadline_ms: int = Field(3000, gt=0)
    # Largest accepted request body (HTTP 413 above it).
    max_request_bytes: int = 5_000_000
    # Seconds a client may take to send its request once it started (gunicorn): 408 beyond.
    request_read_timeout: float = 10.0
    # Comma-separated CORS origins, "*" for any (browser CDS clients send no cookies, only JWTs).
    cors_origins: CommaList = ("*",)
    # Path to a JSON file listing trusted CDS clients (iss + jwks or jwks_url). Empty: no client
    # authentication (local sandbox only; a warning is logged at start-up).
    clients: str = ""
    # Public base URL the service is reached at (for JWT `aud`); default: the request's own URL.
    public_base_url: str = ""
    # Redis URL (redis://host:6379/0). Set: the JWT replay cache and rate-limit counters live there, shared by
    # every worker and instance. Empty: replay cache in the decision-log database, counters per worker.
    redis_url: str = ""
    # Requests per minute per CDS client (JWT iss), else per remote address; 0: no limit.
    rate_limit_per_minute: int = Field(default=600, ge=0)
    # Strict-Transport-Security max-age, sent on HTTPS requests or if CDS_PUBLIC_BASE_URL is https; 0: never.
    hsts_max_age: int = Field(default=31_536_000, ge=0)
    # File of auditor tokens (name:sha256 lines, `cds-service audit token create`); empty: audit API off.
    audit_tokens: str = ""
    # Who writes the decision log under `serve`: "process", one writer process per instance that batches
    # every worker's records in shared transactions; "worker", each worker writes its own (the lock is
    # then shared among workers).
    decision_log_writer: Literal["process", "worker"] = "process"
    # Days decision records are kept; `cds-service audit purge` deletes older ones (0: keep forever).
    retention_days: int = 0
    # LLM: off | embedded | http(s) URL of an OpenAI-compatible server.
    llm: str = "embedded"
    # Prepared OpenVINO model folder for CDS_LLM=embedded (default: the cache folder `model prepare` fills).
    model_dir: str = ""
    # Model name sent to a remote OpenAI-compatible server.
    llm_model: str = ""
    # Per-resource results kept by content hash (validation verdicts, facts read from a resource): an EHR
    # sends the same chart again on every hook call of an encounter. 0: nothing kept (each call does all).
    resource_cache_size: int = Field(default=50_000, ge=0)
    # The whole hook response aims to finish within this many ms; LLM text not ready by then comes later.
    response_budget_ms: int = 450
    llm_max_new_tokens: int = 64
    log_level: str = "INFO"
    # json: one JSON object per line with the request id (what log shippers parse); text: for a terminal.
    log_format: Literal["json", "text"] = "json"
    # Serve the sandbox (mock-EHR page and sample-patient FHIR endpoint under /sandbox/). Set by
    # `cds-service serve --sandbox`, which also writes the sandbox's trust files; never on in production.
    sandbox: bool = False

    @field_validator("fhir_allowed_servers", "cors_origins", mode="before")
    @classmethod
    def _comma_list(cls, value: Any):
        if isinstance(value, str):
            return tuple(v.strip() for v in value.split(",") if v.strip())
        return value

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, value: str) -> str:
        if value and not value.startswith(("redis://", "rediss://")):
            raise ValueError("must be a redis:// or rediss:// URL, or empty")
        return value

    @field_validator("content_dir", "data_dir", mode="after")
    @classmethod
    def _expand_user(cls, value: Path) -> Path:
        return value.expanduser()

    @property
    def hooks_dir(self) -> Path:
        return self.content_dir / "hooks"

    @property
    def rules_dir(self) -> Path:
        return self.content_dir / "rules"

    @property
    def fhir_dir(self) -> Path:
        return self.content_dir / "fhir"

    @property
    def decision_log_url(self) -> str:
        return self.decision_log or f"sqlite:///{self.data_dir / 'decision-log.sqlite3'}"

    @classmethod
    def load(cls, overrides: Mapping[str, Any] | None = None) -> "Settings":
        """The environment, overridden by `overrides` (``CDS_LLM`` or ``llm``); unknown names are an error."""
        kwargs = {}
        for key, value in (overrides or {}).items():
            kwargs[key[4:].lower() if key.upper().startswith("CDS_") else key] = value
        return cls(**kwargs)
