"""Settings: environment variables prefixed ``CDS_`` (each documented in the README table).

`Settings.load(overrides)` reads ``os.environ`` and lets a mapping (tests, the CLI) override it,
using the same variable names. Everything has an embedded default that needs no other server.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

from .content import default_content_dir


def _user_dir(env: str, fallback: str) -> Path:
    base = os.environ.get(env)
    return Path(base) if base else Path.home() / fallback


def _split(value: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in value.split(",") if v.strip())


def _bool(value: str) -> bool:
    if value.strip().lower() in {"1", "true", "yes", "on"}:
        return True
    if value.strip().lower() in {"0", "false", "no", "off", ""}:
        return False
    raise ValueError(f"not a boolean: {value!r}")


@dataclass(frozen=True)
class Settings:
    # Where hooks/, rules/ and fhir/ live (packaged copy by default, the checkout when editable).
    content_dir: Path = field(default_factory=default_content_dir)
    # Writable state: decision log (SQLite), caches.
    data_dir: Path = field(default_factory=lambda: _user_dir("XDG_DATA_HOME", ".local/share") / "cds-service")
    # SQLAlchemy URL; unset means SQLite (WAL) at data_dir/decision-log.sqlite3.
    decision_log: str = ""
    # Comma-separated base-URL prefixes of FHIR servers the service may call. Empty: none.
    fhir_allowed_servers: tuple[str, ...] = ()
    fhir_connect_timeout: float = 2.0
    fhir_read_timeout: float = 5.0
    fhir_max_pages: int = 10
    fhir_max_response_bytes: int = 20_000_000
    # Largest accepted request body (HTTP 413 above it).
    max_request_bytes: int = 5_000_000
    # Comma-separated CORS origins, "*" for any (browser CDS clients send no cookies, only JWTs).
    cors_origins: tuple[str, ...] = ("*",)
    # Path to a JSON file listing trusted CDS clients (iss + jwks or jwks_url). Empty: no client
    # authentication (local sandbox only; a warning is logged at start-up).
    clients: str = ""
    # Public base URL the service is reached at (for JWT `aud`); default: the request's own URL.
    public_base_url: str = ""
    # File of auditor tokens (name:sha256 lines, `cds-service audit token create`); empty: audit API off.
    audit_tokens: str = ""
    # Days decision records are kept; `cds-service audit purge` deletes older ones (0: keep forever).
    retention_days: int = 0
    # LLM: off | embedded | http(s) URL of an OpenAI-compatible server.
    llm: str = "embedded"
    # Prepared OpenVINO model folder for CDS_LLM=embedded (default: the cache folder `model prepare` fills).
    model_dir: str = ""
    # Model name sent to a remote OpenAI-compatible server.
    llm_model: str = ""
    # The whole hook response aims to finish within this many ms; LLM text not ready by then comes later.
    response_budget_ms: int = 450
    llm_max_new_tokens: int = 64
    log_level: str = "INFO"

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
    def load(cls, overrides: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None) -> "Settings":
        """Build from CDS_* variables; `overrides` uses the same names (``CDS_LLM``) or field names."""
        environ = os.environ if environ is None else environ
        merged: dict[str, Any] = {}
        for f in fields(cls):
            env_name = "CDS_" + f.name.upper()
            if env_name in environ:
                merged[f.name] = environ[env_name]
        for key, value in (overrides or {}).items():
            name = key[4:].lower() if key.upper().startswith("CDS_") else key
            merged[name] = value
        known = {f.name: f for f in fields(cls)}
        unknown = set(merged) - set(known)
        if unknown:
            raise ValueError(f"unknown settings: {', '.join(sorted(unknown))}")
        kwargs = {}
        for name, raw in merged.items():
            kwargs[name] = _coerce(known[name], raw)
        return cls(**kwargs)


def _coerce(f, raw):
    if not isinstance(raw, str):
        if f.name in {"content_dir", "data_dir"}:
            return Path(raw)
        return tuple(raw) if isinstance(raw, list) else raw
    default = f.default
    if f.name in {"content_dir", "data_dir"}:
        return Path(raw).expanduser()
    if isinstance(default, bool):
        return _bool(raw)
    if isinstance(default, int):
        return int(raw)
    if isinstance(default, float):
        return float(raw)
    if isinstance(default, tuple) or f.name in {"cors_origins"}:
        return _split(raw)
    return raw
