"""Auditor credentials, separate from CDS clients: random bearer tokens whose SHA-256 hashes are listed
in ``CDS_AUDIT_TOKENS`` (a file of ``name:sha256hex`` lines, written by ``cds-service audit token
create``). Only hashes are stored.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from pathlib import Path


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create_token(path: Path, name: str) -> str:
    if not name or ":" in name or "\n" in name:
        raise ValueError("token name: non-empty, without ':'")
    token = secrets.token_urlsafe(32)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(f"{name}:{token_hash(token)}\n")
    path.chmod(0o600)
    return token


class AuditorTokens:
    def __init__(self, path: str):
        self.hashes: dict[str, str] = {}
        if path:
            for line in Path(path).read_text(encoding="utf-8").splitlines():
                line = line.strip()
                if line and not line.startswith("#"):
                    name, _, digest = line.partition(":")
                    self.hashes[digest.strip()] = name.strip()

    @property
    def enabled(self) -> bool:
        return bool(self.hashes)

    def auditor(self, authorization: str | None) -> str | None:
        if not authorization or not authorization.lower().startswith("bearer "):
            return None
        digest = token_hash(authorization.split(None, 1)[1].strip())
        for known, name in self.hashes.items():
            if hmac.compare_digest(known, digest):
                return name
        return None
