"""Schemas at the edges: CDS Hooks requests, responses (cards), discovery and feedback.

JSON keys stay exactly as the CDS Hooks spec spells them. Unknown fields and `extension` objects in
requests are tolerated (kept where they may matter, ignored otherwise). Cards we produce are checked
against `CardSchema` on the way out, including the spec invariants cds-resp-1..7.
"""

from __future__ import annotations

import re
import uuid as uuidlib

from marshmallow import (
    EXCLUDE,
    INCLUDE,
    Schema,
    ValidationError,
    fields,
    pre_load,
    validate,
    validates_schema,
)

from ..errors import FieldErrors, InvalidRequest, clip
from ..indicators import INDICATORS

# Bounds on what one call may carry (each answered 400 naming the field): every evaluation stays
# bounded within them (rules pair each draft with the other drafts and the patient's medications).
MAX_DRAFT_ORDERS = 100
MAX_PREFETCH_ENTRIES = 20_000  # Bundle entries across all prefetch keys

FHIR_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
USER_REFERENCE = re.compile(r"^(Practitioner|PractitionerRole|Patient|RelatedPerson)/[A-Za-z0-9\-.]{1,64}$")


def load_or_400(schema: Schema, data, *, prefix: str = "") -> dict:
    """Load with a schema; on failure raise InvalidRequest with one issue per bad field (path-named)."""
    try:
        return schema.load(data)
    except ValidationError as exc:
        issues = FieldErrors(prefix=prefix).add_messages(exc.messages).issues
        raise InvalidRequest(issues[0].diagnostics, issues=issues) from exc


_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")


def parse_uuid(value: str) -> str:
    """Accept a UUID (8-4-4-4-12 hex) with or without the ``urn:uuid:`` prefix the spec allows; return
    it bare and lower-case."""
    text = value[9:] if value.lower().startswith("urn:uuid:") else value
    if not _UUID.match(text):
        raise ValueError("not a UUID")
    return str(uuidlib.UUID(text))


class UuidString(fields.String):
    """A UUID, as the OpenAPI document says (format uuid; a ``urn:uuid:`` prefix is also accepted)."""

    default_error_messages = {"invalid_uuid": "Not a valid UUID."}

    def __init__(self, **kw):
        kw.setdefault("metadata", {}).setdefault("format", "uuid")
        super().__init__(**kw)

    def _deserialize(self, value, attr, data, **kwargs):
        text = super()._deserialize(value, attr, data, **kwargs)
        try:
            return parse_uuid(text)
        except ValueError as exc:
            raise self.make_error("invalid_uuid") from exc


class FhirId(fields.String):
    """A FHIR logical id. ``Patient/123`` is normalised to ``123`` when `strip_type` names the type."""

    default_error_messages = {"invalid_id": "Not a FHIR id (1-64 of A-Z a-z 0-9 - .)."}

    def __init__(self, strip_type: str | None = None, **kw):
        super().__init__(**kw)
        self.strip_type = strip_type

    def _deserialize(self, value, attr, data, **kwargs):
        text = super()._deserialize(value, attr, data, **kwargs)
        if self.strip_type and text.startswith(self.strip_type + "/"):
            text = text[len(self.strip_type) + 1 :]  # documented normalisation: reference -> id
        if not FHIR_ID.match(text):
            raise self.make_error("invalid_id")
        return text


class JsonObject(fields.Dict):
    """A JSON object whose content is checked elsewhere (FHIR resources, extensions)."""

    def __init__(self, **kw):
        super().__init__(keys=fields.String(), **kw)


# ---------------------------------------------------------------------------------------------
# Requests
# ---------------------------------------------------------------------------------------------


class FhirAuthorizationSchema(Schema):
    class Meta:
        unknown = EXCLUDE

    access_token = fields.String(required=True, validate=validate.Length(min=1))
    token_type = fields.String(required=True, validate=validate.OneOf(["Bearer", "bearer"]))
    expires_in = fields.Integer(required=True, strict=True, validate=validate.Range(min=0))
    scope = fields.String(required=True)
    subject = fields.String(required=True)
    patient = FhirId(strip_type="Patient")


class BundleSchema(Schema):
    """Only the shape here; each resource inside is validated with fhir.resources later."""

    class Meta:
        unknown = INCLUDE

    resourceType = fields.String(required=True, validate=validate.Equal("Bundle"))
    entry = fields.List(
        JsonObject(),
        validate=validate.Length(max=MAX_DRAFT_ORDERS, error="At most {max} draft orders per call."),
    )

    @validates_schema
    def _entries_hold_resources(self, data, **kwargs):
        errors = {}
        for i, entry in enumerate(data.get("entry") or []):
            resource = entry.get("resource")
            if not isinstance(resource, dict) or not isinstance(resource.get("resourceType"), str):
                errors[i] = {"resource": ["Each entry needs a resource with a resourceType."]}
        if errors:
            raise ValidationError({"entry": errors})


class PatientViewContextSchema(Schema):
    class Meta:
        unknown = INCLUDE  # later hook versions may add fields; prefetch tokens may read them

    userId = fields.String(
        required=True,
        validate=validate.Regexp(
            USER_REFERENCE,
            error="Must be a reference like Practitioner/123 (Practitioner, PractitionerRole, "
            "Patient or RelatedPerson).",
        ),
    )
    patientId = FhirId(required=True, strip_type="Patient")
    encounterId = FhirId(strip_type="Encounter")


class OrderSignContextSchema(PatientViewContextSchema):
    draftOrders = fields.Nested(BundleSchema, required=True)


def draft_refs(bundle: dict) -> set[str]:
    """The ``Type/id`` of each draft order of a draftOrders Bundle: what a selection names."""
    return {
        f"{e['resource']['resourceType']}/{e['resource']['id']}"
        for e in bundle.get("entry") or []
        if isinstance(e, dict)
        and isinstance(e.get("resource"), dict)
        and isinstance(e["resource"].get("id"), str)
    }


class OrderSelectContextSchema(OrderSignContextSchema):
    """order-select 1.0 (CDS Hooks 2.0): the orders being written (`draftOrders`) and the ones the user
    just selected (`selections`, each naming a resource of `draftOrders`, e.g. ``MedicationRequest/103``)."""

    selections = fields.List(
        fields.String(validate=validate.Length(min=1)),
        required=True,
        validate=validate.Length(
            min=1, max=MAX_DRAFT_ORDERS, error="Between {min} and {max} selected draft orders."
        ),
    )

    @validates_schema
    def _selections_name_drafts(self, data, **kwargs):
        if "draftOrders" not in data or "selections" not in data:
            return  # already reported as missing or malformed
        known = draft_refs(data["draftOrders"])
        errors = {}
        for i, selection in enumerate(data["selections"]):
            if selection not in known:
                errors[i] = [
                    f"{clip(selection)} names no resource in context.draftOrders "
                    "(a selection is the Type/id of one of the draft orders)."
                ]
        if errors:
            raise ValidationError({"selections": errors})


CONTEXT_SCHEMAS: dict[str, type[Schema]] = {
    "patient-view": PatientViewContextSchema,
    "order-sign": OrderSignContextSchema,
    "order-select": OrderSelectContextSchema,
}


class HookRequestSchema(Schema):
    """The hook call envelope. `context` is checked by the hook's own schema afterwards."""

    class Meta:
        unknown = EXCLUDE

    hook = fields.String(required=True, validate=validate.Length(min=1))
    hookInstance = UuidString(required=True)
    fhirServer = fields.Url(require_tld=False, schemes={"http", "https"})
    fhirAuthorization = fields.Nested(FhirAuthorizationSchema)
    context = JsonObject(required=True)
    prefetch = fields.Dict(keys=fields.String(), values=fields.Raw(allow_none=True))
    extension = JsonObject()

    @pre_load
    def _strip_trailing_slash(self, data, **kwargs):
        if isinstance(data, dict) and isinstance(data.get("fhirServer"), str):
            data = dict(data)
            data["fhirServer"] = data["fhirServer"].rstrip("/")
        return data

    @validates_schema
    def _envelope_rules(self, data, **kwargs):
        if data.get("fhirAuthorization") and not data.get("fhirServer"):
            raise ValidationError(
                "fhirServer is required when fhirAuthorization is given (cds-r-1).", "fhirServer"
            )
        errors = {}
        entries = 0
        for key, value in (data.get("prefetch") or {}).items():
            if value is not None and not isinstance(value, dict):
                errors[key] = ["A prefetch value must be a FHIR resource (JSON object) or null."]
            elif isinstance(value, dict) and isinstance(value.get("entry"), list):
                entries += len(value["entry"])
                if entries > MAX_PREFETCH_ENTRIES:
                    errors[key] = {
                        "entry": [f"More than {MAX_PREFETCH_ENTRIES} Bundle entries across the prefetch."]
                    }
                    break
        if errors:
            raise ValidationError({"prefetch": errors})


# ---------------------------------------------------------------------------------------------
# Responses: cards
# ---------------------------------------------------------------------------------------------


def _no_empty_values(value, path: str, problems: list[str]) -> None:
    """The spec's JSON rules: no nulls, empty strings, empty arrays or empty objects."""
    if value is None or value == "" or value == [] or value == {}:
        problems.append(path or "card")
    elif isinstance(value, dict):
        for key, child in value.items():
            _no_empty_values(child, f"{path}.{key}" if path else key, problems)
    elif isinstance(value, list):
        for i, child in enumerate(value):
            _no_empty_values(child, f"{path}[{i}]", problems)


class CodingSchema(Schema):
    system = fields.String()
    code = fields.String(required=True)
    display = fields.String()


class OverrideReasonCodingSchema(CodingSchema):
    display = fields.String(required=True)  # cds-resp-4


class SourceSchema(Schema):
    label = fields.String(required=True, validate=validate.Length(min=1))
    url = fields.Url()
    icon = fields.Url()
    topic = fields.Nested(CodingSchema)


class ActionSchema(Schema):
    type = fields.String(required=True, validate=validate.OneOf(["create", "update", "delete"]))
    description = fields.String(required=True, validate=validate.Length(min=1))  # cds-resp-5
    resource = JsonObject()
    resourceId = fields.String()

    @validates_schema
    def _resource_matches_type(self, data, **kwargs):
        if data["type"] in ("create", "update") and not data.get("resource"):
            raise ValidationError("create/update actions carry the resource.", "resource")
        if data["type"] == "delete" and (not data.get("resourceId") or data.get("resource")):
            raise ValidationError(
                "delete actions name the resource in resourceId only (cds-resp-2).", "resourceId"
            )


class SuggestionSchema(Schema):
    label = fields.String(required=True, validate=validate.Length(min=1))
    uuid = UuidString(required=True)
    isRecommended = fields.Boolean()
    actions = fields.List(fields.Nested(ActionSchema))
    actionSelectionBehavior = fields.String(validate=validate.OneOf(["all", "any", "at-most-one"]))


class LinkSchema(Schema):
    label = fields.String(required=True, validate=validate.Length(min=1))
    url = fields.Url(required=True, require_tld=False)
    type = fields.String(required=True, validate=validate.OneOf(["absolute", "smart"]))
    appContext = fields.String()
    autolaunchable = fields.Boolean()

    @validates_schema
    def _app_context_only_for_smart(self, data, **kwargs):
        if data.get("appContext") and data["type"] != "smart":
            raise ValidationError("appContext is only for smart links (cds-resp-3).", "appContext")


class CardSchema(Schema):
    uuid = UuidString(required=True)
    summary = fields.String(required=True, validate=validate.Length(min=1, max=139))
    detail = fields.String()
    indicator = fields.String(required=True, validate=validate.OneOf(INDICATORS))
    source = fields.Nested(SourceSchema, required=True)
    suggestions = fields.List(fields.Nested(SuggestionSchema))
    selectionBehavior = fields.String(validate=validate.OneOf(["at-most-one", "any"]))
    overrideReasons = fields.List(fields.Nested(OverrideReasonCodingSchema))
    links = fields.List(fields.Nested(LinkSchema))
    extension = JsonObject()

    @validates_schema(pass_original=True)
    def _card_rules(self, data, original, **kwargs):
        if data.get("suggestions") and not data.get("selectionBehavior"):
            raise ValidationError(
                "selectionBehavior is required when suggestions exist (cds-resp-6).", "selectionBehavior"
            )
        if data.get("selectionBehavior") == "at-most-one":
            if sum(1 for s in data.get("suggestions", []) if s.get("isRecommended")) > 1:
                raise ValidationError(
                    "at most one suggestion may be recommended (cds-resp-1).", "suggestions"
                )
        problems: list[str] = []
        _no_empty_values(original, "", problems)
        if problems:
            raise ValidationError(f"null or empty values at: {', '.join(problems)}", "_schema")


class CdsResponseSchema(Schema):
    cards = fields.List(fields.Nested(CardSchema), required=True)
    systemActions = fields.List(fields.Nested(ActionSchema))


# ---------------------------------------------------------------------------------------------
# Discovery
# ---------------------------------------------------------------------------------------------


class ServiceSchema(Schema):
    hook = fields.String(required=True)
    id = fields.String(required=True)
    title = fields.String()
    description = fields.String(required=True)
    prefetch = fields.Dict(keys=fields.String(), values=fields.String())
    usageRequirements = fields.String()
    version = fields.String(metadata={"description": "CDS Hooks specification version implemented (3.0)."})


class DiscoveryResponseSchema(Schema):
    services = fields.List(fields.Nested(ServiceSchema), required=True)


# ---------------------------------------------------------------------------------------------
# Feedback
# ---------------------------------------------------------------------------------------------


class AcceptedSuggestionSchema(Schema):
    class Meta:
        unknown = EXCLUDE

    id = UuidString(required=True)


class OverrideReasonSchema(Schema):
    class Meta:
        unknown = EXCLUDE

    reason = fields.Nested(CodingSchema)
    userComment = fields.String()

    @validates_schema
    def _reason_or_comment(self, data, **kwargs):
        if not data.get("reason") and not data.get("userComment"):
            raise ValidationError("overrideReason needs a reason, a userComment, or both (cds-fb-3).")


class FeedbackEntrySchema(Schema):
    class Meta:
        unknown = EXCLUDE

    card = UuidString(required=True)
    outcome = fields.String(required=True, validate=validate.OneOf(["accepted", "overridden"]))
    acceptedSuggestions = fields.List(fields.Nested(AcceptedSuggestionSchema))
    overrideReason = fields.Nested(OverrideReasonSchema)
    outcomeTimestamp = fields.AwareDateTime(required=True, default_timezone=None)

    @validates_schema
    def _accepted_needs_suggestions(self, data, **kwargs):
        if data.get("outcome") == "accepted" and not data.get("acceptedSuggestions"):
            raise ValidationError(
                "acceptedSuggestions is required when outcome is accepted (cds-fb-2).", "acceptedSuggestions"
            )


class FeedbackRequestSchema(Schema):
    class Meta:
        unknown = EXCLUDE

    feedback = fields.List(
        fields.Nested(FeedbackEntrySchema), required=True, validate=validate.Length(min=1, max=1000)
    )


class FeedbackResponseSchema(Schema):
    received = fields.Integer(required=True)
    recorded = fields.Integer(required=True, metadata={"description": "New records (repeats are ignored)."})


class OperationOutcomeIssueSchema(Schema):
    severity = fields.String(required=True)
    code = fields.String(required=True)
    diagnostics = fields.String()
    expression = fields.List(fields.String())


class OperationOutcomeSchema(Schema):
    resourceType = fields.String(required=True, validate=validate.Equal("OperationOutcome"))
    issue = fields.List(fields.Nested(OperationOutcomeIssueSchema), required=True)
