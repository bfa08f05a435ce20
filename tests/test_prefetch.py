"""Prefetch: templates, what the client sent (complete / partial / null / OperationOutcome / absent)."""

from __future__ import annotations

import builders
import pytest
from fhir_fake import Reply, searchset

from cds_service.ehr.fhir_client import FhirClient, ServerAllowlist, new_session
from cds_service.ehr.prefetch import OnUnavailable, Origin, PrefetchTemplate, resolve
from cds_service.errors import PrefetchUnavailable

CONTEXT = {
    "userId": "PractitionerRole/r1",
    "patientId": "p1",
    "encounterId": "e1",
    "draftOrders": {
        "resourceType": "Bundle",
        "entry": [
            {"resource": {"resourceType": "MedicationRequest", "id": "d1"}},
            {"resource": {"resourceType": "ServiceRequest", "id": "s1"}},
            {"resource": {"resourceType": "MedicationRequest", "id": "d2"}},
        ],
    },
}


def template(key, text, policy="fail"):
    return PrefetchTemplate.compile(key, text, OnUnavailable(policy))


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Patient/{{context.patientId}}", "Patient/p1"),
        ("Encounter/{{context.encounterId}}", "Encounter/e1"),
        ("PractitionerRole/{{userPractitionerRoleId}}", "PractitionerRole/r1"),
        (
            "MedicationRequest?_id={{context.draftOrders.entry.resource.ofType(MedicationRequest).id}}",
            "MedicationRequest?_id=d1,d2",
        ),
        (
            "Observation?subject=Patient/{{ context.patientId }}&code=4548-4",
            "Observation?subject=Patient/p1&code=4548-4",
        ),
    ],
)
def test_tokens_render_from_context(text, expected):
    from cds_service.ehr.prefetch import token_root

    assert template("k", text).render(token_root(CONTEXT), {}) == expected


def test_missing_context_or_user_token_means_not_applicable():
    from cds_service.ehr.prefetch import token_root

    context = {"userId": "Practitioner/u", "patientId": "p1"}
    assert template("k", "Encounter/{{context.encounterId}}").render(token_root(context), {}) is None
    assert (
        template("k", "PractitionerRole/{{userPractitionerRoleId}}").render(token_root(context), {}) is None
    )


def test_today_arithmetic_renders_a_date():
    from cds_service.ehr.prefetch import token_root

    out = template("k", "Observation?date=gt{{today() - 90 days}}").render(token_root(CONTEXT), {})
    assert out.startswith("Observation?date=gt20") and len(out) == len("Observation?date=gt") + 10


def test_invalid_fhirpath_is_rejected_at_load():
    with pytest.raises(ValueError):
        template("k", "Patient/{{context.patientId.nosuchfunction()}}")


def test_complete_prefetch_needs_no_server():
    templates = [
        template("patient", "Patient/{{context.patientId}}"),
        template("meds", "MedicationRequest?subject=Patient/{{context.patientId}}"),
    ]
    provided = {
        "patient": {"resourceType": "Patient", "id": "p1"},
        "meds": searchset([{"resourceType": "MedicationRequest", "id": "m1"}]),
    }
    result = resolve(templates, CONTEXT, provided, client=None)
    assert result.items["patient"].origin is Origin.PREFETCH
    assert [r["id"] for r in result.items["meds"].resources] == ["m1"]


def test_null_means_no_data_not_a_fetch():
    templates = [template("meds", "MedicationRequest?subject=Patient/{{context.patientId}}")]
    result = resolve(templates, CONTEXT, {"meds": None}, client=None)
    assert result.items["meds"].origin is Origin.PREFETCH_NULL and result.items["meds"].resources == []


def test_absent_key_without_server_is_412_naming_the_key():
    templates = [
        template("patient", "Patient/{{context.patientId}}"),
        template("meds", "MedicationRequest?subject=Patient/{{context.patientId}}"),
    ]
    with pytest.raises(PrefetchUnavailable) as info:
        resolve(templates, CONTEXT, {"patient": {"resourceType": "Patient", "id": "p1"}}, client=None)
    assert [i.expression for i in info.value.issues] == [("prefetch.meds",)]


def test_absent_optional_key_is_skipped_and_recorded():
    templates = [template("labs", "Observation?subject=Patient/{{context.patientId}}", "skip")]
    result = resolve(templates, CONTEXT, {}, client=None)
    assert result.items["labs"].origin is Origin.UNAVAILABLE and result.unavailable == {"labs"}


def _client(fake, allowed=True, token="secret-token"):
    allow = ServerAllowlist([fake.base_url] if allowed else [])
    return FhirClient(new_session(), fake.base_url, access_token=token, allowlist=allow)


def test_partial_prefetch_fetches_only_the_missing_keys(fake_fhir):
    fake_fhir.routes["MedicationRequest?subject=Patient/p1"] = Reply(
        200, searchset([{"resourceType": "MedicationRequest", "id": "m9"}])
    )
    templates = [
        template("patient", "Patient/{{context.patientId}}"),
        template("meds", "MedicationRequest?subject=Patient/{{context.patientId}}"),
    ]
    result = resolve(
        templates, CONTEXT, {"patient": {"resourceType": "Patient", "id": "p1"}}, _client(fake_fhir)
    )
    assert [s.path for s in fake_fhir.seen] == ["/fhir/MedicationRequest?subject=Patient/p1"]
    assert result.items["meds"].origin is Origin.FETCHED and result.items["meds"].resources[0]["id"] == "m9"


def test_operation_outcome_in_prefetch_means_fetch_it(fake_fhir):
    fake_fhir.routes["Patient/p1"] = Reply(200, {"resourceType": "Patient", "id": "p1"})
    outcome = {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "timeout"}]}
    result = resolve(
        [template("patient", "Patient/{{context.patientId}}")],
        CONTEXT,
        {"patient": outcome},
        _client(fake_fhir),
    )
    assert result.items["patient"].origin is Origin.FETCHED
    assert fake_fhir.seen[0].headers["Authorization"] == "Bearer secret-token"


def test_client_paginated_bundle_is_completed(fake_fhir):
    fake_fhir.routes["MedicationRequest?page=2"] = Reply(
        200, searchset([{"resourceType": "MedicationRequest", "id": "m2"}])
    )
    first = searchset(
        [{"resourceType": "MedicationRequest", "id": "m1"}],
        next_url=fake_fhir.base_url + "/MedicationRequest?page=2",
    )
    result = resolve(
        [template("meds", "MedicationRequest?subject=Patient/{{context.patientId}}")],
        CONTEXT,
        {"meds": first},
        _client(fake_fhir),
    )
    assert [r["id"] for r in result.items["meds"].resources] == ["m1", "m2"]


def test_dependent_template_uses_prior_prefetch_variable(fake_fhir):
    fake_fhir.routes["Encounter/e1"] = Reply(
        200,
        {
            "resourceType": "Encounter",
            "id": "e1",
            "status": "finished",
            "class": {"code": "AMB"},
            "participant": [{"individual": {"reference": "Practitioner/x9"}}],
        },
    )
    fake_fhir.routes["Practitioner?_id=x9"] = Reply(
        200, searchset([{"resourceType": "Practitioner", "id": "x9"}])
    )
    templates = [
        template("encounter", "Encounter/{{context.encounterId}}"),
        template(
            "docs",
            "Practitioner?_id={{%encounter.participant.individual.reference.replace('Practitioner/', '')}}",
        ),
    ]
    result = resolve(templates, CONTEXT, {}, _client(fake_fhir))
    assert result.items["docs"].resources[0]["id"] == "x9"


def test_wrapped_bundle_entry_is_unwrapped_and_noted():
    wrapped = {"response": {"status": "200 OK"}, "resource": {"resourceType": "Patient", "id": "p1"}}
    result = resolve(
        [template("patient", "Patient/{{context.patientId}}")], CONTEXT, {"patient": wrapped}, None
    )
    assert result.items["patient"].resources[0]["id"] == "p1" and "unwrapped" in result.items["patient"].note


def test_partial_prefetch_through_the_app_gets_412_without_a_server(client):
    body = builders.order_sign(
        {"draftOrders": ["Ibuprofen 200 MG Oral Tablet"]}, prefetch_keys=("patient", "conditions", "labs")
    )
    response = client.post("/cds-services/medication-order-check", json=body)
    assert response.status_code == 412
    expressions = {e for i in response.get_json()["issue"] for e in i["expression"]}
    assert expressions == {"prefetch.medications", "prefetch.allergies"}


def test_skipped_key_skips_the_rules_that_read_it(app):
    """conditions/labs are `skip` for medication-order-check: no 412, and the decision records it."""
    body = builders.order_sign(
        {"draftOrders": ["Ibuprofen 200 MG Oral Tablet"]},
        prefetch_keys=("patient", "medications", "allergies"),
    )
    response = app.test_client().post("/cds-services/medication-order-check", json=body)
    assert response.status_code == 200
    record = app.extensions["cds_runtime"].storage.decision_log.get(response.headers["X-Decision-Id"])
    origins = {d["key"]: d["origin"] for d in record["data"]}
    assert origins["conditions"] == "unavailable" and origins["labs"] == "unavailable"
