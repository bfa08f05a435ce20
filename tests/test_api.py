"""Discovery, health, readiness, CORS and the OpenAPI document."""

from __future__ import annotations

from cds_service.protocol.schemas import DiscoveryResponseSchema


def test_discovery_lists_services_from_hooks_folder(client):
    body = client.get("/cds-services").get_json()
    assert DiscoveryResponseSchema().validate(body) == {}
    by_id = {s["id"]: s for s in body["services"]}
    assert by_id["medication-order-check"]["hook"] == "order-sign"
    assert by_id["patient-chart-review"]["hook"] == "patient-view"
    for service in body["services"]:
        assert service["version"] and service["title"] and service["description"]
        # every service reads the Patient (key `patient`, or `item1`.. as the CDC opioid reference names them)
        assert "Patient/{{context.patientId}}" in service["prefetch"].values(), service["id"]


def test_health_and_readiness(client):
    assert client.get("/healthz").get_json()["status"] == "alive"
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.get_json()["ready"] is True


def test_readiness_says_what_is_not_ready(make_app, tmp_path):
    (tmp_path / "content" / "hooks").mkdir(parents=True)
    (tmp_path / "content" / "rules").mkdir()
    (tmp_path / "content" / "hooks" / "broken.yaml").write_text("id: x\nhook: order-sign\n")
    client = make_app(CDS_CONTENT_DIR=str(tmp_path / "content")).test_client()
    response = client.get("/readyz")
    assert response.status_code == 503
    assert "broken.yaml" in response.get_json()["problems"][0]


def test_cors_preflight_and_origin_configuration(make_app):
    client = make_app(CDS_CORS_ORIGINS="https://ehr.example.test").test_client()
    pre = client.options(
        "/cds-services/medication-order-check",
        headers={
            "Origin": "https://ehr.example.test",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        },
    )
    assert pre.headers["Access-Control-Allow-Origin"] == "https://ehr.example.test"
    other = client.get("/cds-services", headers={"Origin": "https://evil.test"})
    assert "Access-Control-Allow-Origin" not in other.headers


def test_openapi_is_generated_from_the_schemas(client):
    doc = client.get("/openapi.json").get_json()
    assert doc["openapi"].startswith("3.")
    assert {"/cds-services", "/cds-services/{service_id}", "/cds-services/{service_id}/feedback"} <= set(
        doc["paths"]
    )
    schemas = doc["components"]["schemas"]
    assert "hookInstance" in schemas["HookRequest"]["properties"]
    assert "draftOrders" in schemas["OrderSignContext"]["properties"]
    assert set(doc["paths"]["/cds-services/{service_id}"]["post"]["responses"]) >= {"200", "400", "412"}
