"""A trusted CDS client for tests: an ES384 key, the clients file that trusts it, tokens it signs."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import jwt
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

ISS = "https://ehr.example.test"


def signing_key(kid: str = "k1") -> tuple[ec.EllipticCurvePrivateKey, dict]:
    """A new P-384 private key and its public JWK (ES384, `kid`)."""
    private = ec.generate_private_key(ec.SECP384R1())
    jwk = json.loads(ECAlgorithm.to_jwk(private.public_key()))
    jwk.update({"kid": kid, "alg": "ES384", "use": "sig"})
    return private, jwk


def write_clients(folder: Path, entries: list[dict]) -> str:
    """A CDS_CLIENTS file listing `entries`; returns its path."""
    path = folder / "clients.json"
    path.write_text(json.dumps({"clients": entries}))
    return str(path)


def client_keys(folder: Path) -> tuple[ec.EllipticCurvePrivateKey, str]:
    """(private key, path of a CDS_CLIENTS file trusting its public key as kid k1 of ISS)."""
    private, jwk = signing_key()
    return private, write_clients(folder, [{"iss": ISS, "jwks": {"keys": [jwk]}, "tenant": "hospital-a"}])


def token(private, aud, **changes):
    """A fresh token for `aud`; `changes` override claims (None removes one)."""
    now = int(time.time())
    claims = {"iss": ISS, "aud": aud, "iat": now, "exp": now + 300, "jti": str(uuid.uuid4())}
    claims.update(changes)
    headers = {"kid": "k1", "typ": "JWT"}
    return jwt.encode(
        {k: v for k, v in claims.items() if v is not None}, private, algorithm="ES384", headers=headers
    )
