"""The sandbox FHIR R4 endpoint (``/sandbox/fhir``): read and search over the sample charts.

What a CDS client or the official CDS Hooks Sandbox needs from a FHIR server: an R4 CapabilityStatement at
``/metadata``, ``GET [type]/[id]``, ``GET [type]?...`` and form-encoded ``POST [type]/_search``, searchset
Bundles with ``total``, ``self``/``next`` links and ``fullUrl``, CORS (the app's), errors as
OperationOutcomes. It accepts any bearer token: the data is synthetic, and the service's own fetch path
sends one as it would to a real EHR.
"""

from __future__ import annotations

from urllib.parse import urlencode

from flask import Blueprint, Response, current_app, json, request

from .. import __version__
from ..errors import InvalidRequest, NotFound
from ..protocol.hooks_api import service_base_url
from .search import PARAMETERS, search_parameters, supported_types
from .store import SandboxStore, SearchResult

sandbox_fhir = Blueprint("sandbox_fhir", __name__, url_prefix="/sandbox/fhir")
FHIR_JSON = "application/fhir+json"


def _store() -> SandboxStore:
    return current_app.extensions["cds_sandbox"].store


def fhir_base() -> str:
    return service_base_url() + "/sandbox/fhir"


def _answer(body: dict, status: int = 200) -> Response:
    return Response(json.dumps(body), status=status, mimetype=FHIR_JSON)


def _known_type(resource_type: str) -> None:
    if resource_type not in PARAMETERS:
        raise NotFound(
            f"this sandbox serves no {resource_type} resources (it serves {', '.join(supported_types())})",
            expression="type",
        )


@sandbox_fhir.get("/metadata")
def metadata():
    resources = []
    for rtype in supported_types():
        params = search_parameters(rtype)
        entry = {
            "type": rtype,
            "interaction": [{"code": "read"}, {"code": "search-type"}],
            "searchParam": [{"name": name, "type": kind} for name, kind in sorted(params.items())],
        }
        includes = [f"{rtype}:{n}" for n, k in params.items() if k == "reference"]
        if includes:
            entry["searchInclude"] = includes
        resources.append(entry)
    return _answer(
        {
            "resourceType": "CapabilityStatement",
            "status": "active",
            "date": "2026-12-01",
            "kind": "instance",
            "software": {"name": "cds-service sandbox FHIR endpoint", "version": __version__},
            "implementation": {
                "description": "Sample patients for trying the CDS service",
                "url": fhir_base(),
            },
            "fhirVersion": "4.0.1",
            "format": ["application/fhir+json", "json"],
            "rest": [
                {
                    "mode": "server",
                    "documentation": "Read-only. Unknown search parameters are ignored (said in an "
                    "OperationOutcome entry) unless the request sends Prefer: handling=strict.",
                    "resource": resources,
                    "searchParam": [
                        {"name": "_count", "type": "number"},
                        {"name": "_sort", "type": "string"},
                        {"name": "_include", "type": "string"},
                    ],
                }
            ],
        }
    )


@sandbox_fhir.get("/<resource_type>/<resource_id>")
def read(resource_type: str, resource_id: str):
    _known_type(resource_type)
    resource = _store().read(resource_type, resource_id)
    if resource is None:
        raise NotFound(f"{resource_type}/{resource_id} is not in the sandbox", expression="id")
    return _answer(resource)


@sandbox_fhir.get("/<resource_type>")
def search_get(resource_type: str):
    return _search(resource_type, list(request.args.items(multi=True)))


@sandbox_fhir.post("/<resource_type>/_search")
def search_post(resource_type: str):
    if request.mimetype != "application/x-www-form-urlencoded" and request.content_length:
        raise InvalidRequest(
            "POST _search takes application/x-www-form-urlencoded parameters", expression="Content-Type"
        )
    params = list(request.args.items(multi=True)) + list(request.form.items(multi=True))
    return _search(resource_type, params)


def _search(resource_type: str, params: list[tuple[str, str]]):
    _known_type(resource_type)
    strict = "handling=strict" in request.headers.get("Prefer", "").replace(" ", "")
    base = fhir_base()
    result = _store().search(resource_type, params, strict=strict, base=base)
    return _answer(searchset(result, params, base))


def searchset(result: SearchResult, params: list[tuple[str, str]], base: str) -> dict:
    """The searchset Bundle of one page: matches, then included resources, then what was ignored."""
    kept = [(k, v) for k, v in params if k != "_getpagesoffset" and k not in result.ignored]
    link = [{"relation": "self", "url": _url(base, result.resource_type, kept + _offset(result.offset))}]
    if result.next_offset is not None:
        link.append(
            {
                "relation": "next",
                "url": _url(base, result.resource_type, kept + _offset(result.next_offset)),
            }
        )
    entry = [_entry(base, r, "match") for r in result.matches]
    entry += [_entry(base, r, "include") for r in result.included]
    if result.ignored:
        entry.append(
            {
                "resource": {
                    "resourceType": "OperationOutcome",
                    "issue": [
                        {
                            "severity": "warning",
                            "code": "not-supported",
                            "diagnostics": f"search parameter ignored: {name}",
                            "expression": [name],
                        }
                        for name in result.ignored
                    ],
                },
                "search": {"mode": "outcome"},
            }
        )
    bundle = {"resourceType": "Bundle", "type": "searchset", "total": result.total, "link": link}
    if entry:  # FHIR JSON has no empty arrays
        bundle["entry"] = entry
    return bundle


def _offset(offset: int) -> list[tuple[str, str]]:
    return [("_getpagesoffset", str(offset))] if offset else []


def _url(base: str, resource_type: str, params: list[tuple[str, str]]) -> str:
    query = urlencode(params)
    return f"{base}/{resource_type}" + (f"?{query}" if query else "")


def _entry(base: str, resource: dict, mode: str) -> dict:
    return {
        "fullUrl": f"{base}/{resource['resourceType']}/{resource['id']}",
        "resource": resource,
        "search": {"mode": mode},
    }
