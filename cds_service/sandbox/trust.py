"""The sandbox as a trusted CDS client, set up the way a hospital sets up an EHR.

`prepare()` runs once before the workers start (``cds-service serve --sandbox``) and writes
``<data dir>/sandbox/``:

- ``client-key.jwk.json``: the sandbox's own ES384 private key (0600), made once and kept, so a
  restarted sandbox is the same client;
- ``cds-clients.json``: the ``CDS_CLIENTS`` file, trusting the sandbox by its issuer and JWKS URL
  (``<base>/sandbox/.well-known/jwks.json``), plus every client of the operator's own ``CDS_CLIENTS``;
- ``auditor-tokens`` and ``auditor-token``: a sandbox auditor token (the hash in the ``CDS_AUDIT_TOKENS``
  file, with the operator's own lines; the token itself 0600 for the page to read the decision log);
- ``sandbox.json``: issuer, JWKS URL, FHIR base and listening address, which every worker reads.

The service verifies the sandbox's tokens like any other client's: it fetches the JWKS from the URL in
``CDS_CLIENTS``, never from the token's ``jku``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import jwt
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

from ..audit.auditors import token_hash

ALGORITHM = "ES384"
TOKEN_LIFETIME_S = 300  # as the official CDS Hooks Sandbox: exp = iat + 5 min
AUDITOR_NAME = "sandbox"


def sandbox_dir(data_dir: Path) -> Path:
    return data_dir / "sandbox"


def _write_private(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.replace(tmp, path)


def _thumbprint(jwk: dict) -> str:
    """RFC 7638 JWK thumbprint of an EC key: the key's id, stable across restarts."""
    canonical = json.dumps(
        {k: jwk[k] for k in ("crv", "kty", "x", "y")}, separators=(",", ":"), sort_keys=True
    )
    return base64.urlsafe_b64encode(hashlib.sha256(canonical.encode()).digest()).rstrip(b"=").decode()


def _ensure_key(directory: Path) -> dict:
    path = directory / "client-key.jwk.json"
    if not path.exists():
        key = ec.generate_private_key(ec.SECP384R1())
        jwk = ECAlgorithm.to_jwk(key, as_dict=True)
        jwk.update({"kid": _thumbprint(jwk), "alg": ALGORITHM, "use": "sig"})
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(jwk, handle)
        try:
            os.link(tmp, path)  # never replaces a key another process made first
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    return json.loads(path.read_text(encoding="utf-8"))


@dataclass(frozen=True)
class SandboxSetup:
    """What the service's settings need so the sandbox is trusted, audits and is fetched from."""

    directory: Path
    issuer: str
    jwks_url: str
    fhir_server: str
    clients_file: Path
    audit_tokens_file: Path

    def settings_overrides(self, allowed_servers: tuple[str, ...]) -> dict[str, str]:
        servers = list(allowed_servers)
        if self.fhir_server not in servers:
            servers.append(self.fhir_server)
        return {
            "CDS_SANDBOX": "true",
            "CDS_CLIENTS": str(self.clients_file),
            "CDS_AUDIT_TOKENS": str(self.audit_tokens_file),
            "CDS_FHIR_ALLOWED_SERVERS": ",".join(servers),
        }


def prepare(
    data_dir: Path, base_url: str, *, clients: str = "", audit_tokens: str = "", listen_url: str = ""
) -> SandboxSetup:
    """Write the sandbox's trust files for a service reached at `base_url` (and listening at `listen_url`,
    when that differs); `clients` and `audit_tokens` are the operator's own CDS_CLIENTS and CDS_AUDIT_TOKENS
    files, kept in the merged files."""
    directory = sandbox_dir(data_dir)
    directory.mkdir(parents=True, exist_ok=True)
    base = base_url.rstrip("/")
    issuer, fhir_server = f"{base}/sandbox", f"{base}/sandbox/fhir"
    jwks_url = f"{issuer}/.well-known/jwks.json"
    _ensure_key(directory)
    own = json.loads(Path(clients).read_text(encoding="utf-8")).get("clients", []) if clients else []
    entries = [c for c in own if c.get("iss") != issuer] + [{"iss": issuer, "jwks_url": jwks_url}]
    clients_file = directory / "cds-clients.json"
    _write_private(clients_file, json.dumps({"clients": entries}, indent=2) + "\n")
    token = base64.urlsafe_b64encode(os.urandom(32)).rstrip(b"=").decode()
    lines = Path(audit_tokens).read_text(encoding="utf-8").splitlines() if audit_tokens else []
    lines = [ln for ln in lines if ln.strip() and not ln.startswith(f"{AUDITOR_NAME}:")]
    tokens_file = directory / "auditor-tokens"
    _write_private(tokens_file, "\n".join([*lines, f"{AUDITOR_NAME}:{token_hash(token)}"]) + "\n")
    _write_private(directory / "auditor-token", token)
    config = {
        "issuer": issuer,
        "jwksUrl": jwks_url,
        "fhirServer": fhir_server,
        "listenUrl": listen_url or base,
    }
    _write_private(directory / "sandbox.json", json.dumps(config, indent=2) + "\n")
    return SandboxSetup(directory, issuer, jwks_url, fhir_server, clients_file, tokens_file)


def _hosts(issuer: str, listen_url: str) -> frozenset[str]:
    """The Host header values the sandbox answers to: its base URL's, its listening address's, and the
    loopback names with each one's port."""
    hosts = set()
    for url in (issuer, listen_url):
        parts = urlsplit(url) if url else None
        if parts and parts.hostname:
            hosts.add(parts.netloc.lower())
            port = parts.port
            for name in ("127.0.0.1", "localhost", "[::1]"):
                hosts.add(f"{name}:{port}" if port else name)
    return frozenset(hosts)


class SandboxClient:
    """The sandbox's signing side, in each worker: publishes its public key and signs client JWTs."""

    def __init__(self, directory: Path):
        config = json.loads((directory / "sandbox.json").read_text(encoding="utf-8"))
        self.issuer: str = config["issuer"]
        self.jwks_url: str = config["jwksUrl"]
        self.fhir_server: str = config["fhirServer"]
        self.clients_file = directory / "cds-clients.json"
        self.hosts = _hosts(self.issuer, config.get("listenUrl", ""))
        jwk = _ensure_key(directory)
        self.kid = jwk["kid"]
        self._key = ECAlgorithm.from_jwk(json.dumps(jwk))
        self.public_jwk = {k: jwk[k] for k in ("kty", "crv", "x", "y", "kid", "alg", "use")}
        token_path = directory / "auditor-token"
        self.auditor_token = token_path.read_text(encoding="utf-8").strip() if token_path.exists() else None

    def jwks(self) -> dict:
        return {"keys": [self.public_jwk]}

    def token(self, audience: str) -> tuple[str, dict, dict]:
        """A client JWT for one call to `audience` (the exact endpoint URL), as CDS Hooks asks."""
        now = int(time.time())
        claims = {
            "iss": self.issuer,
            "sub": "cds-service-sandbox",
            "aud": audience,
            "iat": now,
            "exp": now + TOKEN_LIFETIME_S,
            "jti": str(uuid.uuid4()),
        }
        header = {"alg": ALGORITHM, "typ": "JWT", "kid": self.kid, "jku": self.jwks_url}
        token = jwt.encode(
            claims, self._key, algorithm=ALGORITHM, headers={"jku": self.jwks_url, "kid": self.kid}
        )
        return token, header, claims

    def clients_config(self) -> dict:
        return json.loads(self.clients_file.read_text(encoding="utf-8")) if self.clients_file.exists() else {}
