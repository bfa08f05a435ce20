"""Everything built once per process at start-up: content, HTTP session, storage, authenticator.

Nothing here is rebuilt per request. `Runtime.load` never raises for bad content: it records what is
not ready (``/readyz`` says it) so that a broken rule file shows up in monitoring, while
``cds-service serve`` refuses to start on it (``strict=True``).
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import requests

from .auth import ClientAuthenticator, load_clients
from .config import Settings
from .database import init_schema, make_engine
from .decision_log import DecisionLog
from .errors import ContentError
from .facts import FactsBuilder
from .feedback import FeedbackStore
from .fhir_client import FetchLimits, FhirClient, ServerAllowlist, new_session
from .mme import MmeCalculator
from .reasoning.service import LlmStore, Reasoner
from .resource_validation import ResourceValidator
from .rule_model import Rulebook, load_rulebook
from .services import ServiceRegistry, load_registry
from .terminology import Terminology, load_terminology

log = logging.getLogger(__name__)


@dataclass
class Runtime:
    settings: Settings
    terminology: Terminology | None = None
    rulebook: Rulebook | None = None
    registry: ServiceRegistry | None = None
    facts_builder: FactsBuilder | None = None
    validator: ResourceValidator = field(default_factory=ResourceValidator)
    session: requests.Session | None = None
    allowlist: ServerAllowlist | None = None
    limits: FetchLimits = field(default_factory=FetchLimits)
    executor: ThreadPoolExecutor | None = None
    decision_log: DecisionLog | None = None
    feedback: FeedbackStore | None = None
    authenticator: ClientAuthenticator | None = None
    reasoner: Reasoner | None = None
    llm_status: str = "off"
    problems: list[str] = field(default_factory=list)

    @classmethod
    def load(cls, settings: Settings, *, strict: bool = False) -> "Runtime":
        rt = cls(settings)
        try:
            rt.terminology = load_terminology(settings.fhir_dir / "terminology")
            mme = MmeCalculator.load(settings.fhir_dir)
            rt.facts_builder = FactsBuilder(rt.terminology, mme)
            rt.rulebook = load_rulebook(settings.rules_dir, rt.terminology)
            rt.registry = load_registry(settings.hooks_dir, rt.rulebook)
        except ContentError as exc:
            if strict:
                raise
            rt.problems.append(f"content: {exc}")
            log.error("content not loaded: %s", exc)
        rt.allowlist = ServerAllowlist(settings.fhir_allowed_servers)
        rt.limits = FetchLimits(settings.fhir_connect_timeout, settings.fhir_read_timeout, settings.fhir_max_pages,
                                settings.fhir_max_response_bytes)
        rt.session = new_session()
        rt.executor = ThreadPoolExecutor(max_workers=8, thread_name_prefix="cds-fetch")
        engine = make_engine(settings.decision_log_url)
        init_schema(engine)
        rt.decision_log = DecisionLog(engine)
        rt.feedback = FeedbackStore(engine)
        rt.authenticator = ClientAuthenticator(load_clients(settings.clients) if settings.clients else {})
        rt.reasoner, rt.llm_status = _build_reasoner(settings, engine, rt.terminology)
        if not rt.authenticator.enabled:
            log.warning("CDS_CLIENTS is not set: CDS clients are NOT authenticated (fine for a local sandbox, "
                        "not for production)")
        return rt

    def fhir_client(self, fhir_server: str | None, access_token: str | None) -> FhirClient | None:
        if not fhir_server:
            return None
        return FhirClient(self.session, fhir_server, access_token=access_token, allowlist=self.allowlist,
                          limits=self.limits)

    def readiness(self) -> dict:
        checks = {
            "content": "ok" if self.registry is not None else "not loaded",
            "rules": f"{len(self.rulebook.rules)} loaded" if self.rulebook else "not loaded",
            "services": f"{len(self.registry.services)} loaded" if self.registry else "not loaded",
            "decisionLog": "ok" if self.decision_log is not None else "not open",
            "llm": self.llm_status,  # informative: rule cards never depend on it
        }
        return {"ready": not self.problems and self.registry is not None, "checks": checks,
                "problems": list(self.problems)}

    def close(self) -> None:
        if self.reasoner is not None:
            self.reasoner.close()
        if self.executor is not None:
            self.executor.shutdown(wait=False, cancel_futures=True)
        if self.session is not None:
            self.session.close()
        if self.decision_log is not None:
            self.decision_log.engine.dispose()


def _build_reasoner(settings: Settings, engine, terminology) -> tuple[Reasoner | None, str]:
    """One model object per process. A missing model disables LLM text; it never stops the service."""
    choice = settings.llm.strip()
    if choice.lower() in ("", "off", "none") or terminology is None:
        return None, "off"
    from .reasoning.backends import GenAiBackend, LlmError, RemoteBackend
    from .reasoning.grounding import GroundingGuard
    from .reasoning.prepare import default_model_dir

    try:
        if choice.lower() == "embedded":
            backend = GenAiBackend(Path(settings.model_dir) if settings.model_dir else default_model_dir("int8"))
        elif choice.startswith(("http://", "https://")):
            backend = RemoteBackend(choice, settings.llm_model)
        else:
            return None, f"unavailable: CDS_LLM={choice!r} is not off, embedded or a URL"
    except (LlmError, RuntimeError, OSError) as exc:
        log.warning("LLM disabled: %s", exc)
        return None, f"unavailable: {exc}"
    reasoner = Reasoner(backend, LlmStore(engine), GroundingGuard(terminology),
                        budget_ms=settings.response_budget_ms, max_new_tokens=settings.llm_max_new_tokens)
    return reasoner, backend.model_id
