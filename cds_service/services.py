"""The registry of CDS Services, defined as data in ``hooks/*.yaml`` and checked at start-up.

Routes delegate to this registry: it answers discovery and finds the definition for a call. Prefetch
templates are compiled (FHIRPath tokens) once here, never per request.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources as importlib_resources
from pathlib import Path

import jsonschema
import yaml

from .errors import ContentError, InvalidRequest, UnknownService
from .prefetch import OnUnavailable, PrefetchTemplate
from .rule_model import Rulebook

SPEC_VERSION = "2.0.1"  # CDS Hooks version implemented (requests and answers of 3.0 are accepted too)


@lru_cache(maxsize=None)
def service_schema() -> dict:
    return json.loads(importlib_resources.files("cds_service").joinpath("content_schema/service.schema.json")
                      .read_text())


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

    def discovery(self) -> dict:
        out = {"hook": self.hook, "id": self.id, "title": self.title, "description": self.description,
               "prefetch": {t.key: t.text for t in self.templates}, "version": SPEC_VERSION}
        if self.usage_requirements:
            out["usageRequirements"] = self.usage_requirements
        return out

    def resource_type_of(self, key: str) -> str:
        template = next(t for t in self.templates if t.key == key)
        return template.text.split("?", 1)[0].split("/", 1)[0].strip()


def load_service(path: Path, root: Path) -> ServiceDefinition:
    rel = str(path.relative_to(root.parent)) if root.parent in path.parents else str(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ContentError(rel, "", f"not readable YAML: {exc}") from exc
    errors = list(jsonschema.Draft202012Validator(service_schema()).iter_errors(data))
    if errors:
        best = jsonschema.exceptions.best_match(errors)
        where = ".".join(str(p) for p in best.absolute_path)
        raise ContentError(rel, where, best.message)
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
                raise ContentError(rel, f"prefetch.{template.key}",
                                   f"%{dep} must name a prefetch key listed before this one")
    return ServiceDefinition(id=data["id"], hook=data["hook"], title=data["title"],
                             description=data["description"].strip(),
                             usage_requirements=(data.get("usageRequirements") or "").strip() or None,
                             templates=tuple(templates), rule_packs=tuple(data["rulePacks"]),
                             llm_task=data.get("llm", "none"), path=rel)


class ServiceRegistry:
    def __init__(self, services: list[ServiceDefinition]):
        self.services = services
        self._by_id: dict[str, dict[str, ServiceDefinition]] = {}
        for service in services:
            hooks = self._by_id.setdefault(service.id, {})
            if service.hook in hooks:
                raise ContentError(service.path, "id", f"service {service.id!r} is defined twice for {service.hook}")
            hooks[service.hook] = service

    def discovery(self) -> dict:
        return {"services": [s.discovery() for s in self.services]}

    def find(self, service_id: str, hook: str | None) -> ServiceDefinition:
        hooks = self._by_id.get(service_id)
        if not hooks:
            raise UnknownService(f"no CDS Service with id '{service_id}'", expression="id")
        if hook in hooks:
            return hooks[hook]
        raise InvalidRequest(f"service '{service_id}' answers {', '.join(sorted(hooks))}, not {hook!r}",
                             expression="hook")

    def exists(self, service_id: str) -> bool:
        return service_id in self._by_id


def load_registry(hooks_dir: Path, rulebook: Rulebook) -> ServiceRegistry:
    if not hooks_dir.is_dir():
        raise ContentError(str(hooks_dir), "", "hooks folder not found")
    services = [load_service(p, hooks_dir) for p in sorted(hooks_dir.glob("*.yaml"))]
    packs = set(rulebook.packs)
    for service in services:
        for i, pack in enumerate(service.rule_packs):
            if pack not in packs:
                raise ContentError(service.path, f"rulePacks[{i}]", f"no rule pack {pack!r} under rules/")
        # A rule must never read "no data" where the data were simply not asked for: every resource type
        # a rule reads needs a prefetch template in each service that runs it.
        fetched = {service.resource_type_of(t.key) for t in service.templates}
        for rule in rulebook.for_packs(service.rule_packs, service.hook):
            missing = rule.reads - fetched
            if missing:
                raise ContentError(service.path, "prefetch",
                                   f"rule {rule.id} ({rule.path}) reads {', '.join(sorted(missing))}, which no "
                                   "prefetch template of this service fetches")
    return ServiceRegistry(services)
