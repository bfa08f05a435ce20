"""CDS client authentication with signed JWTs (CDS Hooks §Trusting CDS Clients)."""

from __future__ import annotations

import json
import time
import uuid

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

ISS = "https://ehr.example.test"


@pytest.fixture
def keys(tmp_path):
    private = ec.generate_private_key(ec.SECP384R1())
    jwk = json.loads(ECAlgorithm.to_jwk(private.public_key()))
    jwk.update({"kid": "k1", "alg": "ES384", "use": "sig"})
    path = tmp_path / "clients.json"
    path.write_text(json.dumps({"clients": [{"iss": ISS, "jwks": {"keys": [jwk]}, "tenant": "hospital-a"}]}))
    return private, str(path)


def token(private, aud, **changes):
    now = int(time.time())
    claims = {"iss": ISS, "aud": aud, "iat": now, "exp": now + 300, "jti": str(uuid.uuid4())}
    claims.update(changes)
    headers = {"kid": "k1", "typ": "JWT"}
    return jwt.encode(
        {k: v for k, v in claims.items() if v is not None}, private, algorithm="ES384", headers=headers
    )


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
