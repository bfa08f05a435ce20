"""The CDS Hooks HTTP surface: discovery, hook calls, feedback, OpenAPI, health and readiness.

Routes only authenticate the client, read the body and render the answer; the registry and its
pipeline do the rest. Nothing clinical here.
"""

from __future__ import annotations

from flask import Blueprint, current_app, jsonify, request
from werkzeug.exceptions import ClientDisconnected, RequestEntityTooLarge

from .. import __version__
from ..errors import CdsError, HttpError, InvalidRequest, PayloadTooLarge, UnsupportedMediaType
from ..json_input import parse_json
from ..runtime import Runtime
from ..telemetry import metrics as telemetry_metrics
from . import arrival
from .client_auth import ClientIdentity
from .registry import ServiceRegistry
from .schemas import FeedbackRequestSchema, load_or_400

hooks_api = Blueprint("hooks_api", __name__)
BODY_UNREADABLE = "cds.body_unreadable"  # environ key: reading the request body failed once
_feedback_schema = FeedbackRequestSchema()


def _runtime() -> Runtime:
    return current_app.extensions["cds_runtime"]


def _registry(rt: Runtime) -> ServiceRegistry:
    if rt.registry is None:
        raise CdsError("service content is not loaded; see /readyz")
    return rt.registry


def service_base_url() -> str:
    """The service's base URL as its clients see it: CDS_PUBLIC_BASE_URL, else this request's own root."""
    return _runtime().settings.public_base_url.rstrip("/") or request.url_root.rstrip("/")


def _authenticate(rt: Runtime, path: str) -> ClientIdentity:
    """The client's JWT, checked against `aud` = the URL of this endpoint as the client sees it."""
    return rt.authenticator.authenticate(request.headers.get("Authorization"), service_base_url() + path)


def _json_body():
    mimetype = request.mimetype
    if mimetype not in ("application/json", "application/fhir+json") and not mimetype.endswith("+json"):
        raise UnsupportedMediaType(
            f"send JSON (Content-Type: application/json), not {mimetype or 'nothing'}",
            expression="Content-Type",
        )
    try:
        raw = request.get_data(cache=False)  # raises RequestEntityTooLarge over the limit
    except RequestEntityTooLarge:
        raise
    except Exception as exc:
        request.environ[BODY_UNREADABLE] = True
        # werkzeug reports a failed read of the body as ClientDisconnected, raised while handling
        # the server's error: a stall past wsgi_server's read timeout is a TimeoutError there.
        cause = exc.__context__ if isinstance(exc, ClientDisconnected) else exc
        if isinstance(cause, TimeoutError):
            raise HttpError(408, "the request body was not sent in time", expression="body") from exc
        why = "it ended before its Content-Length" if cause is None else type(cause).__name__
        raise InvalidRequest(f"the request body could not be read ({why})", expression="body") from exc
    return parse_json(raw)


@hooks_api.get("/healthz")
def healthz():
    return jsonify({"status": "alive", "version": __version__})


@hooks_api.get("/readyz")
def readyz():
    report = _runtime().readiness()
    return jsonify(report), (200 if report["ready"] else 503)


@hooks_api.get("/metrics")
def metrics():
    """Prometheus text format. No client JWT, like /healthz: the reverse proxy keeps it off the public
    side (deploy/nginx.conf)."""
    body, content_type = telemetry_metrics.exposition(request.headers.get("Accept"))
    return body, 200, {"Content-Type": content_type}


@hooks_api.get("/cds-services")
def discovery():
    rt = _runtime()
    _authenticate(rt, "/cds-services")
    if rt.registry is None:
        return jsonify({"services": []})
    return jsonify(rt.registry.discovery())


@hooks_api.post("/cds-services/<service_id>")
def call_service(service_id: str):
    arrived = arrival.take()  # the budget counts from here: waiting for a thread, reading, parsing
    rt = _runtime()
    registry = _registry(rt)
    client = _authenticate(rt, f"/cds-services/{service_id}")
    registry.by_hook(service_id)  # 404 for an unknown service, before its body is read
    try:
        body = _json_body()
    except RequestEntityTooLarge:
        error = PayloadTooLarge.over(current_app.config["MAX_CONTENT_LENGTH"])
        registry.refuse(service_id, error, client, arrived=arrived)  # raises it, recorded
    except CdsError as error:  # not JSON, not sent in time, not a JSON media type: recorded too
        registry.refuse(service_id, error, client, arrived=arrived)
    answer = registry.call(service_id, body, client, arrived=arrived)
    response = jsonify(answer.body)
    answer.watch.lap("render")
    response.headers["Server-Timing"] = answer.server_timing()
    response.headers["X-Decision-Id"] = answer.decision_id
    return response


@hooks_api.post("/cds-services/<service_id>/feedback")
def feedback(service_id: str):
    rt = _runtime()
    registry = _registry(rt)
    _authenticate(rt, f"/cds-services/{service_id}/feedback")
    registry.by_hook(service_id)  # 404 for an unknown service
    body = _json_body()
    if not isinstance(body, dict):
        raise InvalidRequest("the request body must be a JSON object", expression="body")
    data = load_or_400(_feedback_schema, body)
    result = rt.storage.feedback.record(service_id, data["feedback"])
    return jsonify({"received": result.received, "recorded": result.recorded})


@hooks_api.get("/openapi.json")
def openapi():
    from .openapi import openapi_document

    return jsonify(openapi_document())
