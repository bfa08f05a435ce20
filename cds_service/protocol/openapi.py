"""The OpenAPI 3 document, generated from the same marshmallow schemas that validate requests."""

from __future__ import annotations

from functools import lru_cache

from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin

from .. import __version__
from .schemas import (
    CdsResponseSchema,
    DiscoveryResponseSchema,
    FeedbackRequestSchema,
    FeedbackResponseSchema,
    HookRequestSchema,
    OperationOutcomeSchema,
    OrderSelectContextSchema,
    OrderSignContextSchema,
    PatientViewContextSchema,
)

ERRORS = {
    "400": "Invalid request; the OperationOutcome names each bad field in issue.expression",
    "401": "Missing or invalid client JWT (when CDS_CLIENTS is set)",
    "404": "Unknown service",
    "412": "Required FHIR data could not be had from prefetch or the FHIR server",
    "413": "Request body too large",
    "415": "Body is not JSON",
}


def _errors(codes):
    return {
        code: {
            "description": ERRORS[code],
            "content": {"application/fhir+json": {"schema": "OperationOutcome"}},
        }
        for code in codes
    }


@lru_cache(maxsize=1)
def openapi_document() -> dict:
    spec = APISpec(
        title="CDS Hooks service",
        version=__version__,
        openapi_version="3.0.3",
        plugins=[MarshmallowPlugin()],
        info={
            "description": "CDS Hooks 2.0.1 (3.0 tolerant). JSON keys as the CDS Hooks spec spells "
            "them. Errors are FHIR OperationOutcome resources."
        },
    )
    for name, schema in [
        ("HookRequest", HookRequestSchema),
        ("PatientViewContext", PatientViewContextSchema),
        ("OrderSignContext", OrderSignContextSchema),
        ("OrderSelectContext", OrderSelectContextSchema),
        ("CdsResponse", CdsResponseSchema),
        ("Discovery", DiscoveryResponseSchema),
        ("FeedbackRequest", FeedbackRequestSchema),
        ("FeedbackResponse", FeedbackResponseSchema),
        ("OperationOutcome", OperationOutcomeSchema),
    ]:
        spec.components.schema(name, schema=schema)
    json_body = lambda name: {"content": {"application/json": {"schema": name}}}  # noqa: E731
    service_id = {"name": "service_id", "in": "path", "required": True, "schema": {"type": "string"}}
    spec.path(
        path="/cds-services",
        operations={
            "get": {
                "summary": "Discovery",
                "responses": {
                    "200": {"description": "Services", **json_body("Discovery")},
                    **_errors(["401"]),
                },
            }
        },
    )
    spec.path(
        path="/cds-services/{service_id}",
        operations={
            "post": {
                "summary": "Call a CDS Service (context per hook: see PatientViewContext, "
                "OrderSelectContext, OrderSignContext)",
                "parameters": [service_id],
                "requestBody": {"required": True, **json_body("HookRequest")},
                "responses": {
                    "200": {
                        "description": 'Cards ({"cards": []} when there is no guidance)',
                        **json_body("CdsResponse"),
                    },
                    **_errors(["400", "401", "404", "412", "413", "415"]),
                },
            }
        },
    )
    spec.path(
        path="/cds-services/{service_id}/feedback",
        operations={
            "post": {
                "summary": "Feedback on cards (accepted / overridden); repeats are recorded once",
                "parameters": [service_id],
                "requestBody": {"required": True, **json_body("FeedbackRequest")},
                "responses": {
                    "200": {"description": "Stored", **json_body("FeedbackResponse")},
                    **_errors(["400", "401", "404", "413", "415"]),
                },
            }
        },
    )
    spec.path(
        path="/healthz",
        operations={"get": {"summary": "Liveness", "responses": {"200": {"description": "alive"}}}},
    )
    spec.path(
        path="/metrics",
        operations={
            "get": {
                "summary": "Prometheus metrics (text format), for the monitoring network only",
                "responses": {"200": {"description": "metrics", "content": {"text/plain": {}}}},
            }
        },
    )
    spec.path(
        path="/readyz",
        operations={
            "get": {
                "summary": "Readiness (content and storage loaded)",
                "responses": {
                    "200": {"description": "ready"},
                    "503": {"description": "not ready; says what"},
                },
            }
        },
    )
    return spec.to_dict()
