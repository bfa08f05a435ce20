"""Trusting CDS clients (CDS Hooks §Trusting CDS Clients): signed JWT bearer tokens.

``CDS_CLIENTS`` names a JSON file of trusted clients::

    {"clients": [{"iss": "https://ehr.example.org", "jwks_url": "https://ehr.example.org/.well-known/jwks.json"},
                 {"iss": "https://sandbox.cds-hooks.org", "jwks": {"keys": [...]}, "tenant": "optional",
                  "jku": ["https://sandbox.cds-hooks.org/.well-known/jwks.json"]}]}

Each client's keys come from exactly one of ``jwks`` (pinned here, nothing is fetched) or ``jwks_url``.
``jku`` lists the ``jku`` header values accepted from that issuer (with ``jwks_url``, that URL is always
accepted); a token naming any other ``jku`` is refused, and no key is ever fetched from a URL the token
chose.

Checks: asymmetric algorithm only (never ``none`` or HMAC), ``kid`` present, ``iss`` listed, ``jku`` (if
any) listed, ``aud`` = the URL of the endpoint called, ``exp``/``iat`` present and current, ``jti`` present
and not seen before by any worker or instance (protocol/replay.py, kept until the token expires).
With no ``CDS_CLIENTS`` the service runs unauthenticated (local sandbox only; a warning is logged).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import jwt
from jwt import PyJWKClient, PyJWKSet

from ..errors import Unauthorized
from .rate_limit import note_verified_client
from .replay import ReplayCache

log = logging.getLogger(__name__)

ALLOWED_ALGORITHMS = ["RS256", "RS384", "RS512", "ES256", "ES384", "ES512", "PS256", "PS384", "PS512"]
MAX_LIFETIME_S = 3600
LEEWAY_S = 30


@dataclass(frozen=True)
class ClientIdentity:
    id: str | None  # iss
    tenant: str | None
    authenticated: bool
    jti: str | None = None

    def as_record(self) -> dict:
        out = {"id": self.id, "authenticated": self.authenticated}
        if self.tenant:
            out["tenant"] = self.tenant
        return out


ANONYMOUS = ClientIdentity(None, None, False)


@dataclass
class TrustedClient:
    iss: str
    jwks_url: str | None
    tenant: str | None
    jku: frozenset[str]  # jku header values accepted; the keys never come from them
    _static: PyJWKSet | None
    _remote: PyJWKClient | None

    def key_for(self, kid: str):
        if self._static is not None:
            for key in self._static.keys:
                if key.key_id == kid:
                    return key
            raise Unauthorized(f"no key with kid {kid!r} for issuer {self.iss}")
        try:
            return self._remote.get_signing_key(kid)
        except jwt.PyJWKClientError as exc:
            raise Unauthorized(f"signing key {kid!r} not found for issuer {self.iss}") from exc


def load_clients(path: str) -> dict[str, TrustedClient]:
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    out: dict[str, TrustedClient] = {}
    for i, entry in enumerate(data.get("clients") or []):
        iss = entry.get("iss")
        if not isinstance(iss, str) or not iss:
            raise ValueError(f"{path}: clients[{i}].iss is required")
        if bool(entry.get("jwks")) == bool(entry.get("jwks_url")):
            raise ValueError(f"{path}: clients[{i}] needs exactly one of jwks, jwks_url")
        jku = entry.get("jku", [])
        if not isinstance(jku, list) or not all(isinstance(u, str) and u for u in jku):
            raise ValueError(f"{path}: clients[{i}].jku must be a list of URLs")
        try:
            static = PyJWKSet.from_dict(entry["jwks"]) if entry.get("jwks") else None
        except jwt.PyJWTError as exc:
            raise ValueError(f"{path}: clients[{i}].jwks: {exc}") from exc
        remote = (
            PyJWKClient(entry["jwks_url"], cache_keys=True, lifespan=300, timeout=5)
            if entry.get("jwks_url")
            else None
        )
        accepted = frozenset(jku) | ({entry["jwks_url"]} if entry.get("jwks_url") else set())
        out[iss] = TrustedClient(iss, entry.get("jwks_url"), entry.get("tenant"), accepted, static, remote)
    return out


class ClientAuthenticator:
    def __init__(self, clients: dict[str, TrustedClient], replay: ReplayCache | None = None):
        if clients and replay is None:
            raise ValueError("trusted clients need a replay cache")
        self.clients = clients
        self.replay = replay

    @property
    def enabled(self) -> bool:
        return bool(self.clients)

    def claimed_client(self, authorization: str | None) -> str | None:
        """The `iss` of a bearer JWT when it names a trusted client, NOT verified: only for choosing a
        rate-limit bucket before the token is checked (protocol/rate_limit.py)."""
        token = _bearer_token(authorization) if self.enabled else None
        if not token:
            return None
        try:
            iss = jwt.decode(token, options={"verify_signature": False}).get("iss")
        except (jwt.PyJWTError, ValueError):
            return None
        return iss if isinstance(iss, str) and iss in self.clients else None

    def authenticate(self, authorization: str | None, audience: str) -> ClientIdentity:
        if not self.enabled:
            return ANONYMOUS
        token = _bearer_token(authorization)
        if not token:
            raise Unauthorized(
                "a signed JWT is required: Authorization: Bearer <JWT>", expression="Authorization"
            )
        try:
            header = jwt.get_unverified_header(token)
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError as exc:
            raise Unauthorized(f"malformed JWT: {exc}", expression="Authorization") from exc
        alg = header.get("alg")
        if alg not in ALLOWED_ALGORITHMS:
            raise Unauthorized(
                f"JWT alg {alg!r} is not accepted (asymmetric algorithms only)", expression="Authorization"
            )
        if not header.get("kid"):  # PyJWT has already refused a kid that is not a string
            raise Unauthorized("JWT header needs a kid", expression="Authorization")
        iss = unverified.get("iss")
        client = self.clients.get(iss) if isinstance(iss, str) else None
        if client is None:
            raise Unauthorized("JWT issuer is not a trusted CDS client", expression="Authorization")
        jku = header.get("jku")
        if jku is not None and (not isinstance(jku, str) or jku not in client.jku):
            raise Unauthorized(
                "JWT jku is not a key set URL accepted for this issuer", expression="Authorization"
            )
        key = client.key_for(header["kid"])
        try:
            claims = jwt.decode(
                token,
                key=key.key,
                algorithms=[alg],
                audience=audience,
                issuer=client.iss,
                leeway=LEEWAY_S,
                options={"require": ["iss", "aud", "exp", "iat", "jti"]},
            )
        except jwt.InvalidAudienceError as exc:
            raise Unauthorized(f"JWT aud must be {audience}", expression="Authorization") from exc
        except jwt.PyJWTError as exc:
            raise Unauthorized(f"JWT rejected: {exc}", expression="Authorization") from exc
        now = time.time()
        if claims["exp"] - claims["iat"] > MAX_LIFETIME_S or claims["iat"] > now + LEEWAY_S:
            raise Unauthorized("JWT lifetime is too long or iat is in the future", expression="Authorization")
        if not self.replay.first_use(client.iss, claims["jti"], claims["exp"] + LEEWAY_S):
            raise Unauthorized("JWT jti was already used (replay)", expression="Authorization")
        note_verified_client(client.iss)
        tenant = claims.get("tenant") if isinstance(claims.get("tenant"), str) else client.tenant
        return ClientIdentity(client.iss, tenant, True, claims["jti"])


def _bearer_token(authorization: str | None) -> str | None:
    scheme, _, token = (authorization or "").partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None
