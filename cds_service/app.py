"""Flask app factory and the thin HTTP layer (auth, parse, delegate, render errors).

Routes know nothing clinical: they delegate to the service registry and `hook_call`. Every error,
ours or werkzeug's, leaves as one shape: an OperationOutcome with the matching status.
"""

from __future__ import annotations

import logging
from typing import Any, Mapping

from flask import Flask, Response, current_app, json, jsonify, request
from flask_cors import CORS
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from . import __version__
from .audit import AuditorTokens
from .audit_api import audit_api
from .config import Settings
from .errors import CdsError, InvalidRequest, MethodNotAllowed, NotFound, PayloadTooLarge, UnsupportedMediaType
from .hook_call import handle_hook_call
from .runtime import Runtime
from .schemas import FeedbackRequestSchema, load_or_400

log = logging.getLogger(__name__)
_feedback_schema = FeedbackRequestSchema()

_STATUS_ERRORS = {404: NotFound, 405: MethodNotAllowed, 413: PayloadTooLarge, 415: UnsupportedMediaType}


def runtime() -> Runtime:
    return current_app.extensions["cds_runtime"]


def create_app(config: Mapping[str, Any] | None = None, *, strict: bool = False) -> Flask:
    """Build the app. `config` overrides CDS_* settings by the same names (tests pass a mapping)."""
    settings = Settings.load(config)
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_request_bytes
    app.json.sort_keys = False
    app.json.compact = True
    rt = Runtime.load(settings, strict=strict)
    app.extensions["cds_runtime"] = rt
    CORS(app, origins=list(settings.cors_origins), allow_headers=["Authorization", "Content-Type"],
         methods=["GET", "POST", "OPTIONS"], max_age=600)
    app.extensions["cds_auditors"] = AuditorTokens(settings.audit_tokens)
    _register_errors(app)
    _register_routes(app)
    app.register_blueprint(audit_api)
    return app


def _outcome_response(error: CdsError) -> Response:
    response = jsonify(error.to_operation_outcome())
    response.status_code = error.status
    response.mimetype = "application/fhir+json"
    for key, value in error.headers.items():
        response.headers[key] = value
    return response


def _register_errors(app: Flask) -> None:
    @app.errorhandler(CdsError)
    def _cds_error(error: CdsError):
        return _outcome_response(error)

    @app.errorhandler(RequestEntityTooLarge)
    def _too_large(_error):
        limit = current_app.config["MAX_CONTENT_LENGTH"]
        return _outcome_response(PayloadTooLarge(f"request body larger than {limit} bytes (CDS_MAX_REQUEST_BYTES)"))

    @app.errorhandler(HTTPException)
    def _http_error(error: HTTPException):
        cls = _STATUS_ERRORS.get(error.code)
        if cls is None:
            cls = type("HttpError", (CdsError,), {"status": error.code or 500, "code": "processing"})
        passed = {k: v for k, v in error.get_headers() if k.lower() == "allow"}
        return _outcome_response(cls(error.description or error.name, headers=passed or None))

    @app.errorhandler(Exception)
    def _unexpected(error: Exception):
        log.exception("unhandled error")
        return _outcome_response(CdsError("internal error; the event was logged"))


def _json_body():
    if request.mimetype not in ("application/json", "application/fhir+json") and not request.mimetype.endswith("+json"):
        raise UnsupportedMediaType(f"send JSON (Content-Type: application/json), not {request.mimetype or 'nothing'}",
                                   expression="Content-Type")
    raw = request.get_data(cache=False)  # raises RequestEntityTooLarge over the limit
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise InvalidRequest(f"the body is not valid JSON: {exc}", expression="body") from exc


def _client(rt: Runtime, audience: str):
    return rt.authenticator.authenticate(request.headers.get("Authorization"), audience)


def _audience(path: str) -> str:
    base = runtime().settings.public_base_url.rstrip("/") or request.url_root.rstrip("/")
    return base + path


def _register_routes(app: Flask) -> None:
    @app.get("/healthz")
    def healthz():
        return jsonify({"status": "alive", "version": __version__})

    @app.get("/readyz")
    def readyz():
        report = runtime().readiness()
        return jsonify(report), (200 if report["ready"] else 503)

    @app.get("/cds-services")
    def discovery():
        rt = runtime()
        _client(rt, _audience("/cds-services"))
        if rt.registry is None:
            return jsonify({"services": []})
        return jsonify(rt.registry.discovery())

    @app.post("/cds-services/<service_id>")
    def call_service(service_id: str):
        rt = runtime()
        if rt.registry is None:
            raise CdsError("service content is not loaded; see /readyz")
        client = _client(rt, _audience(f"/cds-services/{service_id}"))
        if not rt.registry.exists(service_id):
            raise NotFound(f"no CDS Service with id '{service_id}'", expression="id")
        body = _json_body()
        answer = handle_hook_call(rt, service_id, body, client)
        response = jsonify(answer.body)
        response.headers["Server-Timing"] = ", ".join(f"{k};dur={v}" for k, v in answer.timings_ms.items())
        response.headers["X-Decision-Id"] = answer.decision_id
        return response

    @app.post("/cds-services/<service_id>/feedback")
    def feedback(service_id: str):
        rt = runtime()
        if rt.registry is None:
            raise CdsError("service content is not loaded; see /readyz")
        _client(rt, _audience(f"/cds-services/{service_id}/feedback"))
        if not rt.registry.exists(service_id):
            raise NotFound(f"no CDS Service with id '{service_id}'", expression="id")
        body = _json_body()
        if not isinstance(body, dict):
            raise InvalidRequest("the request body must be a JSON object", expression="body")
        data = load_or_400(_feedback_schema, body)
        result = rt.feedback.record(service_id, data["feedback"])
        return jsonify({"received": result.received, "recorded": result.recorded})

    @app.get("/openapi.json")
    def openapi():
        from .openapi import openapi_document
        return jsonify(openapi_document())
