"""CDS client authentication with signed JWTs (CDS Hooks §Trusting CDS Clients)."""

from __future__ import annotations

import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import jwt
import pytest
from jwt_client import ISS, client_keys, signing_key, token, write_clients


@pytest.fixture
def keys(tmp_path):
    return client_keys(tmp_path)


def test_valid_token_is_accepted_and_replay_refused(make_app, keys):
    private, path = keys
    client = make_app(CDS_CLIENTS=path).test_client()
    t = token(private, "http://localhost/cds-services")
    assert client.get("/cds-services", headers={"Authorization": f"Bearer {t}"}).status_code == 200
    replay = client.get("/cds-services", headers={"Authorization": f"Bearer {t}"})
    assert replay.status_code == 401 and "replay" in replay.get_json()["issue"][0]["diagnostics"]


@pytest.mark.parametrize(
    "changes, header",
    [
        ({"aud": "http://localhost/cds-services/other"}, None),
        ({"iss": "https://stranger.test"}, None),
        ({"exp": int(time.time()) - 120}, None),
        ({"jti": None}, None),
        ({}, "none"),
        ({}, "hs256"),
        ({}, "jku"),
    ],
)
def test_bad_tokens_are_refused(make_app, keys, changes, header):
    private, path = keys
    client = make_app(CDS_CLIENTS=path).test_client()
    if header == "none":
        t = jwt.encode(
            {
                "iss": ISS,
                "aud": "http://localhost/cds-services",
                "iat": int(time.time()),
                "exp": int(time.time()) + 60,
                "jti": "x",
            },
            None,
            algorithm="none",
            headers={"kid": "k1"},
        )
    elif header == "hs256":
        t = jwt.encode(
            {
                "iss": ISS,
                "aud": "http://localhost/cds-services",
                "iat": int(time.time()),
                "exp": int(time.time()) + 60,
                "jti": "y",
            },
            "shared-secret-shared-secret-32byt",
            algorithm="HS256",
            headers={"kid": "k1"},
        )
    elif header == "jku":
        now = int(time.time())
        t = jwt.encode(
            {"iss": ISS, "aud": "http://localhost/cds-services", "iat": now, "exp": now + 60, "jti": "z"},
            private,
            algorithm="ES384",
            headers={"kid": "k1", "jku": "https://attacker.test/jwks"},
        )
    else:
        t = token(private, changes.pop("aud", "http://localhost/cds-services"), **changes)
    response = client.get("/cds-services", headers={"Authorization": f"Bearer {t}"})
    assert response.status_code == 401
    assert response.get_json()["resourceType"] == "OperationOutcome"


def test_client_identity_is_recorded(make_app, keys):
    import builders

    private, path = keys
    app = make_app(CDS_CLIENTS=path)
    body = builders.order_sign({"draftOrders": ["Ibuprofen 200 MG Oral Tablet"]})
    t = token(private, "http://localhost/cds-services/medication-order-check", tenant="ward-7")
    response = app.test_client().post(
        "/cds-services/medication-order-check", json=body, headers={"Authorization": f"Bearer {t}"}
    )
    assert response.status_code == 200
    record = app.extensions["cds_runtime"].storage.decision_log.get(response.headers["X-Decision-Id"])
    assert record["client"] == {"id": ISS, "authenticated": True, "tenant": "ward-7"}


# --- The official CDS Hooks Sandbox as a client: its key set pinned here, its `jku` accepted by name ---

SANDBOX_ISS = "https://sandbox.cds-hooks.org"
SANDBOX_JKU = "https://sandbox.cds-hooks.org/.well-known/jwks.json"
SANDBOX_KID = "44823f3d-0b01-4a6c-a80e-b9d3e8a7226f"
SERVICE = "/cds-services/medication-order-check"


@pytest.fixture
def sandbox(tmp_path, monkeypatch):
    """A clients file trusting the sandbox's issuer with a pinned key set; any key fetch fails the test."""
    private, jwk = signing_key(SANDBOX_KID)
    path = write_clients(tmp_path, [{"iss": SANDBOX_ISS, "jku": [SANDBOX_JKU], "jwks": {"keys": [jwk]}}])

    def no_fetch(*args, **kwargs):
        raise AssertionError("a key set was fetched")

    monkeypatch.setattr("urllib.request.OpenerDirector.open", no_fetch)
    return private, path


def sandbox_token(private, aud, jku=SANDBOX_JKU):
    """Shaped like the sandbox's own (its jwt-generator): ES384, typ, kid, jku; exp = iat + 300; jti."""
    now = int(time.time())
    claims = {"iss": SANDBOX_ISS, "aud": aud, "exp": now + 300, "iat": now, "jti": str(uuid.uuid4())}
    headers = {"alg": "ES384", "typ": "JWT", "kid": SANDBOX_KID, "jku": jku}
    return jwt.encode(claims, private, algorithm="ES384", headers=headers)


def test_sandbox_token_with_pinned_keys_calls_a_hook_and_sends_feedback(make_app, sandbox):
    import builders

    private, path = sandbox
    client = make_app(CDS_CLIENTS=path).test_client()
    body = builders.order_sign(
        {"medications": ["Warfarin Sodium 5 MG Oral Tablet"], "draftOrders": ["Ibuprofen 200 MG Oral Tablet"]}
    )
    auth = {"Authorization": f"Bearer {sandbox_token(private, 'http://localhost' + SERVICE)}"}
    answer = client.post(SERVICE, json=body, headers=auth)
    assert answer.status_code == 200, answer.get_json()
    card = answer.get_json()["cards"][0]
    overridden = {"card": card["uuid"], "outcome": "overridden", "outcomeTimestamp": "2026-11-26T10:00:00Z"}
    report = {"feedback": [overridden]}
    # The hook call's token is not valid for feedback: aud is the exact endpoint, /feedback included.
    wrong_aud = {"Authorization": f"Bearer {sandbox_token(private, 'http://localhost' + SERVICE)}"}
    refused = client.post(f"{SERVICE}/feedback", json=report, headers=wrong_aud)
    assert refused.status_code == 401 and "aud" in refused.get_json()["issue"][0]["diagnostics"]
    auth = {"Authorization": f"Bearer {sandbox_token(private, f'http://localhost{SERVICE}/feedback')}"}
    recorded = client.post(f"{SERVICE}/feedback", json=report, headers=auth)
    assert recorded.status_code == 200, recorded.get_json()
    assert recorded.get_json() == {"received": 1, "recorded": 1}


@pytest.mark.parametrize(
    "jku",
    [
        "https://attacker.test/.well-known/jwks.json",
        "https://sandbox.cds-hooks.org/.well-known/jwks.json?x",
        ["https://sandbox.cds-hooks.org/.well-known/jwks.json"],
    ],
)
def test_sandbox_token_naming_another_key_set_is_refused(make_app, sandbox, jku):
    private, path = sandbox
    client = make_app(CDS_CLIENTS=path).test_client()
    t = sandbox_token(private, "http://localhost/cds-services", jku=jku)
    response = client.get("/cds-services", headers={"Authorization": f"Bearer {t}"})
    assert response.status_code == 401
    assert "jku" in response.get_json()["issue"][0]["diagnostics"]


def test_jwks_url_client_accepts_its_url_and_listed_jku_only(make_app, tmp_path):
    """`jwks_url` mode: keys fetched from the configured URL; a jku equal to it, or listed, is accepted."""
    private, jwk = signing_key()
    body = json.dumps({"keys": [jwk]}).encode()

    class Jwks(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Jwks)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}/jwks.json"
    path = tmp_path / "clients.json"
    alias = "https://ehr.example.test/keys"
    path.write_text(json.dumps({"clients": [{"iss": ISS, "jwks_url": url, "jku": [alias]}]}))
    try:
        client = make_app(CDS_CLIENTS=str(path)).test_client()
        now = int(time.time())

        def call(jku):
            claims = {"iss": ISS, "aud": "http://localhost/cds-services", "iat": now, "exp": now + 60}
            claims["jti"] = str(uuid.uuid4())
            t = jwt.encode(claims, private, algorithm="ES384", headers={"kid": "k1", "jku": jku})
            return client.get("/cds-services", headers={"Authorization": f"Bearer {t}"}).status_code

        assert [call(url), call(alias), call("https://attacker.test/jwks")] == [200, 200, 401]
    finally:
        server.shutdown()


@pytest.mark.parametrize(
    "entry, message",
    [
        ({"jwks": {"keys": []}, "jku": "https://x.test/jwks"}, "clients[0].jku"),
        ({"jwks": {"keys": []}, "jku": [""]}, "clients[0].jku"),
        ({"jku": ["https://x.test/jwks"]}, "exactly one of jwks, jwks_url"),
    ],
)
def test_clients_file_errors_name_the_entry(tmp_path, entry, message):
    from cds_service.protocol.client_auth import load_clients

    path = tmp_path / "clients.json"
    path.write_text(json.dumps({"clients": [{"iss": ISS, **entry}]}))
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_clients(str(path))


@pytest.mark.parametrize(
    "claims",
    [{"iss": [ISS]}, {"exp": 1e309}],
)
def test_odd_token_fields_are_401_not_500(make_app, keys, claims):
    private, path = keys
    client = make_app(CDS_CLIENTS=path).test_client()
    now = int(time.time())
    payload = {"iss": ISS, "aud": "http://localhost/cds-services", "iat": now, "exp": now + 60, "jti": "j"}
    # Signed as bytes: PyJWT's own encode refuses such claims, a hostile or buggy client need not.
    raw = json.dumps({**payload, **claims}).encode()
    t = jwt.api_jws.encode(raw, private, algorithm="ES384", headers={"kid": "k1"})
    response = client.get("/cds-services", headers={"Authorization": f"Bearer {t}"})
    assert response.status_code == 401, response.get_json()
