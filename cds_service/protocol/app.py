"""Flask app factory: settings, the runtime (built once per process), CORS, one error shape, blueprints.

Every error, ours or werkzeug's, leaves as one shape: an OperationOutcome with the matching status.
Errors of the `CdsError` family are expected answers and are not logged as failures here; anything
else is a defect, logged once by `_unexpected`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from flask import Flask, Response, current_app, jsonify, request
from flask_cors import CORS
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from .. import sandbox
from ..audit.api import audit_api
from ..errors import (
    CdsError,
    HttpError,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    UnsupportedMediaType,
    clip,
)
from ..runtime import Content, Runtime
from ..settings import Settings
from ..telemetry import logs
from . import rate_limit, security_headers
from .hooks_api import BODY_UNREADABLE, hooks_api
from .json_provider import OrjsonProvider

log = logging.getLogger(__name__)

_STATUS_ERRORS = {404: NotFound, 405: MethodNotAllowed, 413: PayloadTooLarge, 415: UnsupportedMediaType}


def create_app(
    config: Mapping[str, Any] | None = None,
    *,
    strict: bool = False,
    runtime: Runtime | None = None,
    migrate: bool = True,
    content: Content | None = None,
) -> Flask:
    """Build the app. `config` overrides CDS_* settings by the same names (tests pass a mapping);
    `runtime` reuses one already built (tests share one per session); `migrate=False`: the database
    schema must already be current (gunicorn workers, after `serve` upgraded it in the master)."""
    settings = runtime.settings if runtime is not None else Settings.load(config)
    logs.configure(settings.log_format, settings.log_level)
    app = Flask("cds_service")
    app.json = OrjsonProvider(app)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_request_bytes
    app.extensions["cds_runtime"] = (
        runtime
        if runtime is not None
        else Runtime.load(settings, strict=strict, migrate=migrate, content=content)
    )
    CORS(
        app,
        # Everything but the sandbox page's own backend (its JSON API mints trusted JWTs and hands out the
        # sandbox auditor token: same origin only). The sandbox FHIR server and JWKS stay open to browsers.
        resources={r"^/(?!sandbox(?:/api/|/pdca|/static/|/?$)).*": {}},
        origins=list(settings.cors_origins),
        allow_headers=["Authorization", "Content-Type", "Prefer", "X-Request-Id"],
        methods=["GET", "POST", "OPTIONS"],
        # Browser clients read the timings, the decision and request ids (CDS clients, the sandbox page).
        expose_headers=["Server-Timing", "X-Decision-Id", "X-Request-Id", "Link", "Retry-After"],
        max_age=600,
    )
    logs.init_app(app)  # first: the request hooks below log with the request id
    _register_errors(app)
    app.after_request(_drain_unread_body)
    security_headers.init_app(
        app, hsts_max_age=settings.hsts_max_age, public_base_url=settings.public_base_url
    )
    rate_limit.init_app(app)
    app.register_blueprint(hooks_api)
    app.register_blueprint(audit_api)
    sandbox.init_app(app, app.extensions["cds_runtime"])
    return app


def _drain_unread_body(response: Response) -> Response:
    """Read what is left of a body the answer did not need (a 415, 401 or 404 decided before reading
    it), within CDS_MAX_REQUEST_BYTES: gunicorn answers keep-alive, then drops a connection whose body
    is left unread, and the client's next request on it fails."""
    length = request.content_length
    if request.environ.get(BODY_UNREADABLE):  # it stalled or broke off once: no second wait for it
        return response
    if length and length <= current_app.config["MAX_CONTENT_LENGTH"]:
        try:
            request.get_data(cache=False)  # at once when the body was already read
        except Exception:
            pass
    return response


def outcome_response(error: CdsError) -> Response:
    response = jsonify(error.to_operation_outcome())
    response.status_code = error.status
    response.mimetype = "application/fhir+json"
    for key, value in error.headers.items():
        response.headers[key] = value
    return response


def _register_errors(app: Flask) -> None:
    @app.errorhandler(CdsError)
    def _cds_error(error: CdsError):
        if error.status < 500:  # why, for operators: the first issue (our messages quote no patient data)
            first = error.issues[0]
            log.info(
                "%s %s -> %d (%d issue(s)%s): %s",
                request.method,
                request.path,
                error.status,
                len(error.issues),
                f", decision {error.headers['X-Decision-Id']}" if "X-Decision-Id" in error.headers else "",
                clip(first.diagnostics, 200),
            )
        return outcome_response(error)

    @app.errorhandler(RequestEntityTooLarge)
    def _too_large(_error):
        return outcome_response(PayloadTooLarge.over(current_app.config["MAX_CONTENT_LENGTH"]))

    @app.errorhandler(HTTPException)
    def _http_error(error: HTTPException):
        passed = {k: v for k, v in error.get_headers() if k.lower() == "allow"} or None
        description = error.description or error.name
        cls = _STATUS_ERRORS.get(error.code)
        if cls is not None:
            return outcome_response(cls(description, headers=passed))
        return outcome_response(HttpError(error.code or 500, description, headers=passed))

    @app.errorhandler(Exception)
    def _unexpected(error: Exception):
        log.exception("unhandled error")
        return outcome_response(CdsError("internal error; the event was logged"))
