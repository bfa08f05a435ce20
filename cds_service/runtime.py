"""What one process builds once and every request or command shares: the content (terminology, rules,
services), the storage (decision log, feedback, LLM cache), the FHIR access, client trust and the LLM.

The app factory and the CLI both build from here, so the wiring exists once.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import requests
from sqlalchemy.engine import Engine

from .audit import log_writer
from .audit.auditors import AuditorTokens
from .audit.decision_log import DecisionLog
from .audit.feedback import FeedbackStore
from .audit.storage import open_engine
from .clinical.facts import FactsBuilder
from .clinical.mme import MmeCalculator
from .clinical.note_extraction import NoteReader
from .clinical.rule_model import Rulebook, load_rulebook
from .clinical.terminology import Terminology, load_terminology
from .ehr.fhir_client import FetchLimits, FhirAccess, ServerAllowlist, new_session
from .ehr.validation import ResourceValidator
from .errors import ContentError
from .protocol.client_auth import ClientAuthenticator, load_clients
from .protocol.pipeline import HookPipeline
from .protocol.rate_limit import RateLimiter
from .protocol.registry import ServiceDefinition, ServiceRegistry, load_services
from .protocol.replay import open_replay_cache
from .reasoning.reasoner import Reasoner
from .settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Content:
    """hooks/, rules/ and fhir/ loaded and checked; ContentError names the bad file and field."""

    terminology: Terminology
    rulebook: Rulebook
    services: list[ServiceDefinition]
    facts_builder: FactsBuilder
    note_reader: NoteReader  # its matcher is compiled once from the terminology

    @classmethod
    def load(cls, settings: Settings) -> "Content":
        terminology = load_terminology(settings.fhir_dir / "terminology")
        rulebook = load_rulebook(settings.rules_dir, terminology)
        services = load_services(settings.hooks_dir, rulebook)
        facts_builder = FactsBuilder(
            terminology, MmeCalculator.load(settings.fhir_dir), cache_size=settings.resource_cache_size
        )
        return cls(terminology, rulebook, services, facts_builder, NoteReader(terminology))


@dataclass(frozen=True)
class Storage:
    """The service's database: decision log, feedback, LLM text cache (SQLite or PostgreSQL)."""

    engine: Engine
    decision_log: DecisionLog
    feedback: FeedbackStore

    @classmethod
    def open(cls, settings: Settings, *, migrate: bool = True) -> "Storage":
        engine = open_engine(settings.decision_log_url, migrate=migrate)
        # Under `serve`, the master's decision-log writer (audit/log_writer.py); else None: this process.
        return cls(engine, DecisionLog(engine, writer=log_writer.worker_client()), FeedbackStore(engine))

    def close(self) -> None:
        self.engine.dispose()


@dataclass
class Runtime:
    settings: Settings
    storage: Storage
    content: Content | None = None
    registry: ServiceRegistry | None = None
    authenticator: ClientAuthenticator = field(default_factory=lambda: ClientAuthenticator({}))
    rate_limiter: RateLimiter = field(default_factory=lambda: RateLimiter(0))
    auditors: AuditorTokens = field(default_factory=lambda: AuditorTokens(""))
    reasoner: Reasoner | None = None
    llm_status: str = "off"
    problems: list[str] = field(default_factory=list)
    session: requests.Session | None = None  # pooled connections to FHIR servers
    executor: ThreadPoolExecutor | None = None  # parallel prefetch fetches

    @classmethod
    def load(
        cls, settings: Settings, *, strict: bool = False, content: Content | None = None, migrate: bool = True
    ) -> "Runtime":
        """Build everything `settings` names; `content` reuses content already loaded (it is read-only);
        `migrate=False` requires the database schema to be current instead of upgrading it."""
        rt = cls(settings, Storage.open(settings, migrate=migrate))
        try:
            rt.content = content if content is not None else Content.load(settings)
        except ContentError as exc:
            if strict:
                raise
            rt.problems.append(f"content: {exc}")
            log.error("content not loaded: %s", exc)
        if settings.clients:
            replay = open_replay_cache(settings.redis_url, rt.storage.engine)
            rt.authenticator = ClientAuthenticator(load_clients(settings.clients), replay)
        rt.rate_limiter = RateLimiter(settings.rate_limit_per_minute, settings.redis_url)
        if not rt.authenticator.enabled:
            log.warning(
                "CDS_CLIENTS is not set: CDS clients are NOT authenticated (fine for a local sandbox, "
                "not for production)"
            )
        rt.auditors = AuditorTokens(settings.audit_tokens)
        if rt.content is not None:
            rt.reasoner, rt.llm_status = _build_reasoner(settings, rt.storage.engine, rt.content.terminology)
            rt.session = session = new_session()
            rt.executor = executor = ThreadPoolExecutor(max_workers=8, thread_name_prefix="cds-fetch")
            fhir = FhirAccess(
                session,
                ServerAllowlist(settings.fhir_allowed_servers),
                FetchLimits(
                    settings.fhir_connect_timeout,
                    settings.fhir_read_timeout,
                    settings.fhir_max_pages,
                    settings.fhir_max_response_bytes,
                    deadline=settings.fhir_deadline_ms / 1000,
                ),
            )
            pipeline = HookPipeline(
                ResourceValidator(settings.resource_cache_size),
                fhir,
                executor,
                rt.content.facts_builder,
                rt.content.terminology,
                rt.storage.decision_log,
                rt.content.note_reader,
                rt.reasoner,
            )
            rt.registry = ServiceRegistry(rt.content.services, pipeline)
        return rt

    def readiness(self) -> dict:
        checks = {
            "content": "ok" if self.content is not None else "not loaded",
            "rules": f"{len(self.content.rulebook.rules)} loaded" if self.content else "not loaded",
            "services": f"{len(self.content.services)} loaded" if self.content else "not loaded",
            "decisionLog": "ok",
            "llm": self.llm_status,  # informative: rule cards never depend on it
        }
        return {
            "ready": not self.problems and self.registry is not None,
            "checks": checks,
            "problems": list(self.problems),
        }

    def close(self) -> None:
        if self.reasoner is not None:
            self.reasoner.close()
        if self.executor is not None:
            self.executor.shutdown(wait=False, cancel_futures=True)
        if self.session is not None:
            self.session.close()
        self.storage.close()


def _build_reasoner(
    settings: Settings, engine: Engine, terminology: Terminology
) -> tuple[Reasoner | None, str]:
    """One model object per process. A missing model disables LLM text; it never stops the service."""
    choice = settings.llm.strip()
    if choice.lower() in ("", "off", "none"):
        return None, "off"
    from .reasoning.backends import GenAiBackend, LlmError, RemoteBackend
    from .reasoning.cache import LlmStore
    from .reasoning.capabilities import load_capabilities
    from .reasoning.grounding import GroundingGuard
    from .reasoning.model_cache import default_model_dir

    try:
        if choice.lower() == "embedded":
            backend = GenAiBackend(
                Path(settings.model_dir) if settings.model_dir else default_model_dir("int8")
            )
        elif choice.startswith(("http://", "https://")):
            backend = RemoteBackend(choice, settings.llm_model)
        else:
            return None, f"unavailable: CDS_LLM={choice!r} is not off, embedded or a URL"
    except (LlmError, RuntimeError, OSError) as exc:
        log.warning("LLM disabled: %s", exc)
        return None, f"unavailable: {exc}"
    reasoner = Reasoner(
        backend,
        LlmStore(engine),
        GroundingGuard(terminology),
        budget_ms=settings.response_budget_ms,
        max_new_tokens=settings.llm_max_new_tokens,
        capabilities=load_capabilities(backend, settings.data_dir),  # measured gates; none: baseline, no text
    )
    caps = reasoner.capabilities
    log.info(
        "LLM %s: assertion %s; free text %s",
        backend.model_id,
        caps.assertion_component,
        "on" if caps.free_text_enabled else f"off ({caps.free_text_reason})",
    )
    return reasoner, backend.model_id
