"""The registry of CDS Services, defined as data in ``hooks/*.yaml`` and checked at start-up.

Discovery and hook calls go through it. A service definition carries everything a call needs that
can be computed at load time: compiled prefetch templates (FHIRPath tokens), the rules of its packs
for its hook, and the resource type each prefetch key fetches. A call is one lookup, then the hook
pipeline (pipeline.py) over a typed `HookCall`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import date
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jsonschema

from ..clinical.rule_model import Rule, Rulebook
from ..content import bundled_schema, check_schema, read_yaml, relative_name
from ..ehr.prefetch import OnUnavailable, PrefetchTemplate
from ..errors import ContentError, NotFound

if TYPE_CHECKING:
    from ..errors import CdsError
    from .client_auth import ClientIdentity
    from .pipeline import HookAnswer, HookPipeline

SPEC_VERSION = "2.0.1"  # CDS Hooks version implemented (requests and answers of 3.0 are accepted too)


@dataclass(frozen=True)
class ServiceDefinition:
    id: str
    hook: str
    title: str
    description: str
    usage_requirements: str | None
    templates: tuple[PrefetchTemplate, ...]
    rule_packs: tuple[str, ...]
    llm_task: str
    path: str
    rules: tuple[Rule, ...] = ()  # its packs' rules for its hook
    resource_types: Mapping[str, str] = field(default_factory=dict)  # prefetch key -> resource type

    def discovery(self) -> dict:
        out = {
            "hook": self.hook,
            "id": self.id,
            "title": self.title,
            "description": self.description,
            "prefetch": {t.key: t.text for t in self.templates},
            "version": SPEC_VERSION,
        }
        if self.usage_requirements:
            out["usageRequirements"] = self.usage_requirements
        return out


@lru_cache(maxsize=1)
def _service_validator() -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(bundled_schema("service.schema.json"))


def _resource_type(template_text: str) -> str:
    return template_text.split("?", 1)[0].split("/", 1)[0].strip()


def load_service(path: Path, root: Path) -> ServiceDefinition:
    rel = relative_name(path, root)
    data = read_yaml(path, rel)
    check_schema(_service_validator(), data, rel)
    policies = data.get("onPrefetchUnavailable") or {}
    for key in policies:
        if key not in data["prefetch"]:
            raise ContentError(rel, f"onPrefetchUnavailable.{key}", "no prefetch template has this key")
    templates = []
    for key, text in data["prefetch"].items():
        try:
            templates.append(PrefetchTemplate.compile(key, text, OnUnavailable(policies.get(key, "fail"))))
        except ValueError as exc:
            raise ContentError(rel, f"prefetch.{key}", str(exc)) from exc
    keys = [t.key for t in templates]
    for i, template in enumerate(templates):
        for dep in template.depends_on:
            if dep not in keys[:i]:
                raise ContentError(
                    rel, f"prefetch.{template.key}", f"%{dep} must name a prefetch key listed before this one"
                )
    return ServiceDefinition(
        id=data["id"],
        hook=data["hook"],
        title=data["title"],
        description=data["description"].strip(),
        usage_requirements=(data.get("usageRequirements") or "").strip() or None,
        templates=tuple(templates),
        rule_packs=tuple(data["rulePacks"]),
        llm_task=data.get("llm", "none"),
        path=rel,
        resource_types={t.key: _resource_type(t.text) for t in templates},
    )


def load_services(hooks_dir: Path, rulebook: Rulebook) -> list[ServiceDefinition]:
    """Every service under `hooks_dir`, bound to its rules; ContentError names file and field."""
    if not hooks_dir.is_dir():
        raise ContentError(str(hooks_dir), "", "hooks folder not found")
    services = [load_service(p, hooks_dir) for p in sorted(hooks_dir.glob("*.yaml"))]
    packs = set(rulebook.packs)
    seen: set[tuple[str, str]] = set()
    bound = []
    for service in services:
        if (service.id, service.hook) in seen:
            raise ContentError(
                service.path, "id", f"service {service.id!r} is defined twice for {service.hook}"
            )
        seen.add((service.id, service.hook))
        for i, pack in enumerate(service.rule_packs):
            if pack not in packs:
                raise ContentError(service.path, f"rulePacks[{i}]", f"no rule pack {pack!r} under rules/")
        rules = tuple(rulebook.for_packs(service.rule_packs, service.hook))
        # A rule must never read "no data" where the data were simply not asked for: every resource type
        # a rule reads needs a prefetch template in each service that runs it.
        fetched = set(service.resource_types.values())
        for rule in rules:
            missing = rule.reads - fetched
            if missing:
                raise ContentError(
                    service.path,
                    "prefetch",
                    f"rule {rule.id} ({rule.path}) reads {', '.join(sorted(missing))}, which no "
                    "prefetch template of this service fetches",
                )
        bound.append(replace(service, rules=rules))
    return bound


class ServiceRegistry:
    """The services by id (and hook), and the pipeline that runs a call to one of them."""

    def __init__(self, services: list[ServiceDefinition], pipeline: "HookPipeline | None" = None):
        self.services = services
        self.pipeline = pipeline
        self._by_id: dict[str, dict[str, ServiceDefinition]] = {}
        for service in services:
            self._by_id.setdefault(service.id, {})[service.hook] = service

    def discovery(self) -> dict:
        return {"services": [s.discovery() for s in self.services]}

    def __contains__(self, service_id: str) -> bool:
        return service_id in self._by_id

    def by_hook(self, service_id: str) -> dict[str, ServiceDefinition]:
        """The definitions of `service_id` per hook it answers; 404 when there is no such service."""
        hooks = self._by_id.get(service_id)
        if not hooks:
            raise NotFound(f"no CDS Service with id '{service_id}'", expression="id")
        return hooks

    def call(
        self,
        service_id: str,
        body: Any,
        client: "ClientIdentity",
        *,
        today: date | None = None,
        arrived: float | None = None,
    ) -> "HookAnswer":
        """One lookup, then the pipeline. Every call to an existing service is recorded, 4xx included.
        `arrived`: when the request arrived (time.monotonic()); the budgets count from it."""
        return self.pipeline.call(service_id, self.by_hook(service_id), body, client, today, arrived)

    def refuse(
        self, service_id: str, error: "CdsError", client: "ClientIdentity", *, arrived: float | None = None
    ) -> "HookAnswer":
        """A call to `service_id` whose body could not be taken: recorded, then `error` raised."""
        return self.pipeline.refuse(service_id, self.by_hook(service_id), error, client, arrived)
