"""Read-only HTTP API for auditors, behind an auditor credential separate from CDS clients.

    GET /audit/decisions?patient=&user=&service=&rule=&since=&until=&indicator=&limit=&offset=
    GET /audit/decisions/<id>
    GET /audit/verify
    GET /audit/export?<same filters>          (FHIR R4 Bundle of AuditEvent + Provenance)

Disabled (404) unless ``CDS_AUDIT_TOKENS`` lists at least one auditor token.
"""

from __future__ import annotations

from dataclasses import asdict

from flask import Blueprint, current_app, jsonify, request

from ..errors import InvalidRequest, NotFound, Unauthorized
from .auditors import AuditorTokens
from .export import export_bundle
from .query import DecisionFilter, FilterError, query, summary_row

audit_api = Blueprint("audit_api", __name__, url_prefix="/audit")


@audit_api.before_request
def _auditor() -> None:
    tokens: AuditorTokens = current_app.extensions["cds_runtime"].auditors
    if not tokens.enabled:
        raise NotFound("the audit API is not enabled (set CDS_AUDIT_TOKENS)")
    if tokens.auditor(request.headers.get("Authorization")) is None:
        raise Unauthorized(
            "an auditor token is required: Authorization: Bearer <auditor token>", expression="Authorization"
        )


def _int_arg(name: str, default: int) -> int:
    try:
        return int(request.args.get(name, default))
    except ValueError as exc:
        raise InvalidRequest(f"bad query parameter: {name}: not an integer", expression=name) from exc


def _filter() -> DecisionFilter:
    args = request.args
    try:
        return DecisionFilter(
            patient=args.get("patient"),
            user=args.get("user"),
            service=args.get("service"),
            rule=args.get("rule"),
            since=args.get("since"),
            until=args.get("until"),
            indicator=args.get("indicator"),
            limit=_int_arg("limit", 100),
            offset=_int_arg("offset", 0),
        ).validate()
    except FilterError as exc:
        raise InvalidRequest(f"bad query parameter: {exc}", expression=exc.field) from exc


def _log():
    return current_app.extensions["cds_runtime"].storage.decision_log


@audit_api.get("/decisions")
def decisions():
    records = query(_log().engine, _filter())
    return jsonify({"decisions": [summary_row(r) for r in records], "count": len(records)})


@audit_api.get("/decisions/<decision_id>")
def decision(decision_id: str):
    record = _log().get(decision_id)
    if record is None:
        raise NotFound(f"no decision {decision_id}", expression="id")
    return jsonify(record)


@audit_api.get("/verify")
def verify():
    return jsonify(asdict(_log().verify()))


@audit_api.get("/export")
def export():
    response = jsonify(export_bundle(query(_log().engine, _filter())))
    response.mimetype = "application/fhir+json"
    return response
