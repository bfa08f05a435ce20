"""Security headers on every response, errors included (protocol/security_headers.py)."""

from __future__ import annotations

import pytest

from cds_service.protocol.security_headers import API_HEADERS, relaxed_headers

SERVICE = "/cds-services/medication-order-check"


def _boom():
    raise RuntimeError("a defect")


@pytest.fixture
def answers(make_app):
    app = make_app()
    app.add_url_rule("/boom", "boom", _boom)
    client = app.test_client()
    return {
        200: client.get("/cds-services"),
        400: client.post(SERVICE, data="{not json", content_type="application/json"),
        404: client.get("/no-such-path"),
        405: client.delete(SERVICE),
        415: client.post(SERVICE, data="x", content_type="text/plain"),
        500: client.get("/boom"),
    }


@pytest.mark.parametrize("status", [200, 400, 404, 405, 415, 500])
def test_every_answer_carries_the_api_headers(answers, status):
    response = answers[status]
    assert response.status_code == status
    for name, value in API_HEADERS.items():
        assert response.headers.get(name) == value, name
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Cache-Control"] == "no-store"
    assert "frame-ancestors 'none'" in response.headers["Content-Security-Policy"]
    assert "Strict-Transport-Security" not in response.headers  # plain HTTP, no https base URL


def test_hsts_on_https_requests_or_an_https_public_url_and_never_when_off(make_app):
    plain = make_app().test_client()
    assert "Strict-Transport-Security" not in plain.get("/healthz").headers
    secure = plain.get("/no-such-path", base_url="https://localhost")
    assert secure.status_code == 404 and secure.headers["Strict-Transport-Security"] == "max-age=31536000"
    behind_proxy = make_app(CDS_PUBLIC_BASE_URL="https://cds.example.org").test_client()
    assert behind_proxy.get("/healthz").headers["Strict-Transport-Security"] == "max-age=31536000"
    off = make_app(CDS_HSTS_MAX_AGE=0, CDS_PUBLIC_BASE_URL="https://cds.example.org").test_client()
    assert "Strict-Transport-Security" not in off.get("/healthz", base_url="https://localhost").headers


def test_a_route_relaxes_only_what_it_names(make_app):
    app = make_app()

    @relaxed_headers(Content_Security_Policy="default-src 'self'", X_Frame_Options="SAMEORIGIN")
    def page():
        return "<html></html>"

    app.add_url_rule("/page", "page", page)
    client = app.test_client()
    relaxed = client.get("/page")
    assert relaxed.headers["Content-Security-Policy"] == "default-src 'self'"
    assert relaxed.headers["X-Frame-Options"] == "SAMEORIGIN"
    assert relaxed.headers["X-Content-Type-Options"] == "nosniff"
    assert client.get("/healthz").headers["X-Frame-Options"] == "DENY"


def test_relaxing_an_unknown_header_is_a_mistake():
    with pytest.raises(ValueError, match="X-Powered-By"):
        relaxed_headers(X_Powered_By="me")
