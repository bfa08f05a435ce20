"""The mock EHR's own backend (``/sandbox``): the page, its assets, and the JSON it needs that a browser
cannot do alone — sample patients, chart summaries, the RxNorm picker, prefetch resolved as an EHR would,
the sandbox client's JWTs, card checks against the CDS Hooks rules, and the PDCA view.

Everything here is the sandbox's, never the CDS service's: the page calls the service's own endpoints
(discovery, hooks, feedback, auditor API) over HTTP like any EHR.
"""

from __future__ import annotations

import re
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from urllib.parse import parse_qsl

from flask import Blueprint, current_app, jsonify, request, send_from_directory
from marshmallow import ValidationError

from ..ehr.prefetch import OnUnavailable, PrefetchTemplate, token_root
from ..errors import FieldErrors, HttpError, InvalidRequest, NotFound, UnsupportedMediaType
from ..json_input import parse_json
from ..protocol.hooks_api import service_base_url
from ..protocol.schemas import CdsResponseSchema
from ..protocol.security_headers import relaxed_headers
from .chart import chart_summary, demographics
from .fhir_api import fhir_base, searchset
from .search import PARAMETERS

sandbox_api = Blueprint("sandbox_api", __name__, url_prefix="/sandbox")
STATIC = Path(__file__).parent / "static"
PAGE_CSP = (
    "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; connect-src *; "
    "frame-src 'self'; frame-ancestors 'self'; base-uri 'none'; form-action 'none'"
)
SANDBOX_USER = "Practitioner/sandbox-clinician"
_RELATIVE_URL = re.compile(r"^(?P<type>[A-Z][A-Za-z]{1,63})(?:/(?P<id>[A-Za-z0-9\-.]{1,64}))?$")
MAX_MEDICATIONS = 50
_response_schema = CdsResponseSchema()


def _sandbox():
    return current_app.extensions["cds_sandbox"]


def _today():
    return datetime.now().astimezone().date()


@sandbox_api.before_request
def _only_at_its_own_address() -> None:
    """The page's backend answers only under the names the sandbox was set up with (and loopback): a web
    page elsewhere that rebinds its own host name to this address must not read the auditor token or have
    JWTs signed (DNS rebinding)."""
    allowed = _sandbox().client.hosts
    if request.host.lower() not in allowed:
        raise HttpError(
            403,
            f"the sandbox answers only at {', '.join(sorted(allowed))}; "
            "to reach it by another name, set CDS_PUBLIC_BASE_URL",
            expression="Host",
        )


def _body() -> dict:
    if request.mimetype != "application/json":
        raise UnsupportedMediaType("send JSON (Content-Type: application/json)", expression="Content-Type")
    body = parse_json(request.get_data(cache=False))
    if not isinstance(body, dict):
        raise InvalidRequest("the request body must be a JSON object", expression="body")
    return body


# ---- the page ------------------------------------------------------------------------------------


@sandbox_api.get("/")
@relaxed_headers(Content_Security_Policy=PAGE_CSP, X_Frame_Options="SAMEORIGIN", Cache_Control="no-cache")
def page():
    return send_from_directory(STATIC, "index.html", mimetype="text/html")


@sandbox_api.get("/static/<path:name>")
@relaxed_headers(Content_Security_Policy=PAGE_CSP, Cache_Control="no-cache")
def asset(name: str):
    return send_from_directory(STATIC, name)


@sandbox_api.get("/pdca")
@relaxed_headers(
    Content_Security_Policy=(
        "default-src 'none'; img-src data:; style-src 'unsafe-inline'; frame-ancestors 'self'"
    ),
    X_Frame_Options="SAMEORIGIN",
)
def pdca():
    """The rules' PDCA report (the same HTML as `cds-service pdca report --format html`, chart included)."""
    from ..audit.pdca import collect, render_html, review

    rt = current_app.extensions["cds_runtime"]
    stats = collect(rt.storage.engine, None, rt.content.rulebook if rt.content else None)
    html = render_html(stats, review(stats), "CDS rule review (sandbox)")
    return current_app.response_class(html, mimetype="text/html")


@sandbox_api.get("/.well-known/jwks.json")
def jwks():
    response = jsonify(_sandbox().client.jwks())
    response.headers["Cache-Control"] = "max-age=300"
    return response


# ---- JSON for the page ---------------------------------------------------------------------------


@sandbox_api.get("/api/config")
def config():
    client = _sandbox().client
    base = service_base_url()
    return jsonify(
        {
            "fhirServer": client.fhir_server,
            "discoveryUrl": f"{base}/cds-services",
            "issuer": client.issuer,
            "jwksUrl": client.jwks_url,
            "auditToken": client.auditor_token,
            "auditBase": f"{base}/audit",
            "pdcaUrl": f"{base}/sandbox/pdca",
            "openapiUrl": f"{base}/openapi.json",
            "userId": SANDBOX_USER,
            "cdsClients": client.clients_config(),
        }
    )


@sandbox_api.get("/api/patients")
def patients():
    sandbox, today = _sandbox(), _today()
    out = []
    for chart in sandbox.store.charts.values():
        patient = sandbox.store.read("Patient", chart.patient_id) or {"id": chart.patient_id}
        out.append(
            {
                **demographics(patient, today),
                "origin": chart.origin,
                "description": chart.description,
                "tags": chart.tags,
                "tryOrders": chart.try_orders,
            }
        )
    out.sort(key=lambda p: (p["origin"] != "hand-made", p["name"] or ""))
    return jsonify({"patients": out})


@sandbox_api.get("/api/patients/<patient_id>/chart")
def chart(patient_id: str):
    summary = chart_summary(_sandbox().store, patient_id, _today())
    if summary is None:
        raise NotFound(f"no sample patient {patient_id}", expression="patientId")
    return jsonify(summary)


@sandbox_api.get("/api/medications")
def medications():
    """The medication picker: RxNorm products of the bundled terminology whose name holds every word typed."""
    words = [w for w in request.args.get("q", "").lower().split() if w]
    try:
        limit = max(1, min(MAX_MEDICATIONS, int(request.args.get("limit", 20))))
    except ValueError as exc:
        raise InvalidRequest("limit must be an integer", expression="limit") from exc
    found = [m for m in _sandbox().products if all(w in m["display"].lower() for w in words)] if words else []
    found.sort(
        key=lambda m: (not m["display"].lower().startswith(words[0]), len(m["display"])) if words else 0
    )
    return jsonify({"medications": found[:limit]})


@lru_cache(maxsize=512)
def _template(text: str) -> PrefetchTemplate:
    """Compiled once per text: the page asks for every discovered service's templates on each call."""
    return PrefetchTemplate.compile("sandbox", text, OnUnavailable.SKIP)


@sandbox_api.post("/api/prefetch")
def prefetch():
    """Each template rendered from the context and run against the sandbox FHIR data, as an EHR prefetches."""
    body = _body()
    templates, context = body.get("prefetch"), body.get("context")
    if not isinstance(templates, dict) or not all(isinstance(v, str) for v in templates.values()):
        raise InvalidRequest("prefetch must map keys to template strings", expression="prefetch")
    if not isinstance(context, dict):
        raise InvalidRequest("context must be an object", expression="context")
    store, base, root = _sandbox().store, fhir_base(), token_root(context)
    out = {}
    for key, text in templates.items():
        entry: dict = {"template": text, "url": None, "value": None}
        try:
            template = _template(text)
        except ValueError as exc:
            out[key] = {**entry, "problem": str(exc)}
            continue
        url = template.render(root, {})
        entry["url"] = url
        if url is None:
            out[key] = {**entry, "problem": "a token of the template resolves to nothing in this context"}
            continue
        path, _, query = url.partition("?")
        match = _RELATIVE_URL.match(path)
        try:
            if match is None or match["type"] not in PARAMETERS:
                entry["problem"] = f"{path!r} is not a read or a search of a type this sandbox serves"
            elif match["id"] is not None and not query:
                entry["value"] = store.read(match["type"], match["id"])
                if entry["value"] is None:
                    entry["problem"] = f"{path} is not in the sandbox"
            elif match["id"] is None:
                params = parse_qsl(query, keep_blank_values=True)
                result = store.search(match["type"], params, base=base)
                entry["value"] = searchset(result, params, base)
            else:
                entry["problem"] = "a read takes no parameters"
        except InvalidRequest as exc:
            entry["problem"] = exc.diagnostics
        out[key] = entry
    return jsonify({"prefetch": out})


@sandbox_api.post("/api/token")
def token():
    aud = _body().get("aud")
    if not isinstance(aud, str) or not aud.startswith(("http://", "https://")):
        raise InvalidRequest("aud must be the http(s) URL of the endpoint to call", expression="aud")
    jwt_text, header, claims = _sandbox().client.token(aud)
    return jsonify({"token": jwt_text, "header": header, "claims": claims})


@sandbox_api.post("/api/check-cards")
def check_cards():
    """Problems in a CDS service's response against the CDS Hooks 2.0.1 response rules (the same schema this
    service checks its own cards with), each named by its path."""
    response = _body().get("response")
    if not isinstance(response, dict):
        return jsonify({"problems": [{"path": "", "message": "the response is not a JSON object"}]})
    try:
        _response_schema.load(response)
        problems = []
    except ValidationError as exc:
        problems = [
            {"path": issue.expression[0] if issue.expression else "", "message": issue.diagnostics}
            for issue in FieldErrors().add_messages(exc.messages).issues
        ]
    return jsonify({"problems": problems})
