"""Read-only HTTP API for auditors, behind an auditor credential separate from CDS clients.

    GET /audit/decisions?patient=&user=&service=&rule=&requestId=&since=&until=&indicator=&limit=&after=
        one page (limit 1..1000, default 100) in chain order; "more" says whether more match and "next"
        (also a Link header) is the URL of the following page (after = the last seq of this page)
    GET /audit/decisions/<id>
    GET /audit/verify[?expectHead=chain:seq:hash ...]
    GET /audit/export?<same filters>
        FHIR R4 Bundle of AuditEvent + Provenance, streamed: every match unless limit is given; when a
        limit cuts it, the Bundle has a "next" link

Disabled (404) unless ``CDS_AUDIT_TOKENS`` lists at least one auditor token.
"""

from __future__ import annotations

from dataclasses import asdict
from urllib.parse import urlencode

from flask import Blueprint, Response, current_app, jsonify, request, stream_with_context, url_for

from ..errors import InvalidRequest, NotFound, Unauthorized
from .auditors import AuditorTokens
from .chain import ExpectedHead
from .export import bundle_chunks
from .query import DecisionFilter, FilterError, Stream, page, summary_row

audit_api = Blueprint("audit_api", __name__, url_prefix="/audit")

PAGE_MAX = 1000


@audit_api.before_request
def _auditor() -> None:
    if request.method == "OPTIONS":  # a CORS preflight carries no credentials; flask-cors answers it
        return
    tokens: AuditorTokens = current_app.extensions["cds_runtime"].auditors
    if not tokens.enabled:
        raise NotFound("the audit API is not enabled (set CDS_AUDIT_TOKENS)")
    if tokens.auditor(request.headers.get("Authorization")) is None:
        raise Unauthorized(
            "an auditor token is required: Authorization: Bearer <auditor token>", expression="Authorization"
        )


def _int_arg(name: str) -> int | None:
    value = request.args.get(name)
    if value is None:
        return None
    try:
        return int(value)
    except ValueError as exc:
        raise InvalidRequest(f"bad query parameter: {name}: not an integer", expression=name) from exc


def _filter(max_limit: int | None = None) -> DecisionFilter:
    args = request.args
    try:
        return DecisionFilter(
            patient=args.get("patient"),
            user=args.get("user"),
            service=args.get("service"),
            rule=args.get("rule"),
            request_id=args.get("requestId"),
            since=args.get("since"),
            until=args.get("until"),
            indicator=args.get("indicator"),
            limit=_int_arg("limit"),
            after=_int_arg("after"),
        ).validate(max_limit)
    except FilterError as exc:
        raise InvalidRequest(f"bad query parameter: {exc}", expression=exc.field) from exc


def _continuation(endpoint: str, after: int) -> str:
    """This request's URL with `after` moved on: the explicit continuation of a cut result."""
    args = {k: v for k, v in request.args.items() if k != "after"}
    return url_for(endpoint, _external=True) + "?" + urlencode({**args, "after": after})


def _log():
    return current_app.extensions["cds_runtime"].storage.decision_log


@audit_api.get("/decisions")
def decisions():
    result = page(_log().engine, _filter(PAGE_MAX), PAGE_MAX)
    body = {"decisions": [summary_row(r) for r in result.records], "count": len(result.records)}
    body["more"] = result.more
    if result.more:
        body["next"] = _continuation(".decisions", result.next_after)
    response = jsonify(body)
    if result.more:
        response.headers["Link"] = f'<{body["next"]}>; rel="next"'
    return response


@audit_api.get("/decisions/<decision_id>")
def decision(decision_id: str):
    record = _log().get(decision_id)
    if record is None:
        raise NotFound(f"no decision {decision_id}", expression="id")
    return jsonify(record)


@audit_api.get("/verify")
def verify():
    try:
        expect = [ExpectedHead.parse(v) for v in request.args.getlist("expectHead")]
    except ValueError as exc:
        raise InvalidRequest(f"bad query parameter: expectHead: {exc}", expression="expectHead") from exc
    return jsonify(asdict(_log().verify(expect=expect)))


@audit_api.get("/export")
def export():
    f = _filter()
    stream = Stream(_log().engine, f)

    def links() -> list[dict]:  # runs after the last entry, still inside this request (stream_with_context)
        if f.limit is not None and stream.written == f.limit and stream.remaining():
            return [{"relation": "next", "url": _continuation(".export", stream.last_seq)}]
        return []

    return Response(stream_with_context(bundle_chunks(stream, links)), mimetype="application/fhir+json")
