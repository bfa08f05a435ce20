"""The JWT `jti` replay cache, shared by every worker and every instance of the service.

A token's `jti` is recorded the first time the token is accepted and kept until the token expires; a
second use is refused wherever it arrives. Two stores, both atomic across processes and hosts:

- the decision-log database (default; SQLite or PostgreSQL): one row per (issuer, jti) under a unique
  key, ``INSERT ... ON CONFLICT`` decides first use; expired rows are purged as new ones come in;
- Redis (``CDS_REDIS_URL``): ``SET NX`` with the token's expiry, so Redis drops the key itself.

Either store failing refuses the token (503): accepting it would reopen the replay.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from typing import Protocol

from sqlalchemy import delete
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from ..audit.storage import dialect_insert, jwt_replay
from ..errors import HttpError

log = logging.getLogger(__name__)

PURGE_EVERY_S = 60.0  # how often one process deletes expired rows (each worker purges on its own)


class ReplayCache(Protocol):
    def first_use(self, issuer: str, jti: str, expires_at: float) -> bool:
        """Record (issuer, jti) until `expires_at`; False when it is already recorded and not expired."""


def replay_key(issuer: str, jti: str) -> str:
    # A fixed-length key: jti is any string the client chose; the issuer keeps two clients' jtis apart.
    return hashlib.sha256(f"{issuer}\n{jti}".encode("utf-8", "surrogatepass")).hexdigest()


class StoreUnavailable(HttpError):
    def __init__(self, store: str):
        super().__init__(
            503, f"the JWT replay cache ({store}) is unavailable; the token cannot be checked, try again"
        )


class DatabaseReplayCache:
    """Seen jtis in the service's database (table ``jwt_replay``)."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self._next_purge = 0.0
        self._lock = threading.Lock()

    def first_use(self, issuer: str, jti: str, expires_at: float) -> bool:
        now = time.time()
        insert = dialect_insert(self.engine)  # reads only .dialect.name, which an Engine has too
        key = replay_key(issuer, jti)
        statement = insert(jwt_replay).values(key=key, issuer=issuer, expires_at=int(expires_at))
        # A conflicting row that has expired is taken over (the old token can no longer be used anyway);
        # a live one makes the statement change nothing: no row returned is the replay (RETURNING rather
        # than rowcount, which psycopg does not report for upserts).
        statement = statement.on_conflict_do_update(
            index_elements=[jwt_replay.c.key],
            set_={"issuer": statement.excluded.issuer, "expires_at": statement.excluded.expires_at},
            where=jwt_replay.c.expires_at < int(now),
        ).returning(jwt_replay.c.key)
        try:
            with self.engine.begin() as conn:
                first = conn.execute(statement).first() is not None
                if self._purge_due(now):
                    conn.execute(delete(jwt_replay).where(jwt_replay.c.expires_at < int(now)))
        except SQLAlchemyError as exc:
            log.error("JWT replay cache (database) failed: %s", type(exc).__name__)
            raise StoreUnavailable("database") from exc
        return first

    def _purge_due(self, now: float) -> bool:
        with self._lock:
            if now < self._next_purge:
                return False
            self._next_purge = now + PURGE_EVERY_S
            return True


class RedisReplayCache:
    """Seen jtis as Redis keys that expire with the token."""

    PREFIX = "cds:jti:"

    def __init__(self, url: str):
        import redis  # optional dependency: pip install 'cds-service[redis]'

        self._errors = (redis.RedisError, OSError)
        self.client = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)

    def first_use(self, issuer: str, jti: str, expires_at: float) -> bool:
        exat = max(int(expires_at) + 1, int(time.time()) + 1)
        try:
            return bool(self.client.set(self.PREFIX + replay_key(issuer, jti), issuer, nx=True, exat=exat))
        except self._errors as exc:
            log.error("JWT replay cache (Redis) failed: %s", type(exc).__name__)
            raise StoreUnavailable("Redis") from exc

    def close(self) -> None:
        self.client.close()


def open_replay_cache(redis_url: str, engine: Engine) -> DatabaseReplayCache | RedisReplayCache:
    return RedisReplayCache(redis_url) if redis_url else DatabaseReplayCache(engine)
