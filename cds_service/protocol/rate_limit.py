"""Per-client rate limiting (``CDS_RATE_LIMIT_PER_MINUTE``; 0 turns it off).

Each request is counted against one bucket: the CDS client whose JWT the request proved (its ``iss``),
else the remote address. The token is verified only inside the route (its ``aud`` is the route's URL), so
a request is admitted on the bucket of the trusted client its bearer token names (else its address) and
charged after the answer: to that client if the route verified the token, else to the address. A forged
token naming a trusted client is refused once that client is over its limit, but never spends the
client's budget; clients never share a budget with unauthenticated traffic from the same address (behind
a reverse proxy, every request has the proxy's address). The limit shares capacity fairly between
clients; it is no flood shield (that is the reverse proxy's job).

The counting and storage are the `limits` library's (sliding window counter). Counters live in each
worker's memory (so N workers allow up to N times the limit) unless ``CDS_REDIS_URL`` is set, when every
worker and instance shares them. If Redis fails, requests are let through (logged): the limit protects
capacity and must not take the safety checks down with it. Health endpoints and CORS preflights are
exempt. Being counted after the answer, concurrent requests can overshoot the limit by a few.
"""

from __future__ import annotations

import logging
import math
import time

from flask import Flask, current_app, g, has_request_context, request
from limits import RateLimitItemPerMinute
from limits.errors import StorageError
from limits.storage import storage_from_string
from limits.strategies import SlidingWindowCounterRateLimiter

from ..errors import TooManyRequests

log = logging.getLogger(__name__)

EXEMPT_ENDPOINTS = frozenset({"hooks_api.healthz", "hooks_api.readyz", "hooks_api.metrics"})
# The sandbox (mock EHR and its FHIR endpoint) is not a CDS client: the service's own fetches to it, and
# the page's requests, must not spend the CDS client's budget (blueprints named sandbox_*).
EXEMPT_BLUEPRINT_PREFIX = "sandbox_"
_WARN_EVERY_S = 60.0


class RateLimiter:
    def __init__(self, per_minute: int, redis_url: str = ""):
        self.per_minute = per_minute
        self.shared = bool(redis_url)
        self._item = RateLimitItemPerMinute(per_minute) if per_minute > 0 else None
        self._window = None
        if self._item is not None:
            storage = storage_from_string(redis_url or "memory://", wrap_exceptions=True)
            self._window = SlidingWindowCounterRateLimiter(storage)
        self._next_warning = 0.0

    @property
    def enabled(self) -> bool:
        return self._window is not None

    def admit(self, bucket: str) -> None:
        """Raise TooManyRequests when `bucket` has used its budget for the current window."""
        try:
            if self._window.test(self._item, bucket):
                return
            reset_at = self._window.get_window_stats(self._item, bucket).reset_time
        except StorageError as exc:
            self._storage_failed(exc)
            return
        raise TooManyRequests(
            f"rate limit of {self.per_minute} requests per minute reached (CDS_RATE_LIMIT_PER_MINUTE)",
            retry_after_s=max(1, math.ceil(reset_at - time.time())),
        )

    def charge(self, bucket: str) -> None:
        try:
            self._window.hit(self._item, bucket)
        except StorageError as exc:
            self._storage_failed(exc)

    def _storage_failed(self, exc: StorageError) -> None:
        now = time.monotonic()
        if now >= self._next_warning:  # once a minute, not once a request
            self._next_warning = now + _WARN_EVERY_S
            log.warning("rate limit storage unavailable, requests are not limited: %s", exc)


def note_verified_client(iss: str) -> None:
    """Called by client authentication once a token is verified: the request is that client's."""
    if has_request_context():
        g.cds_verified_client = iss


def init_app(app: Flask) -> None:
    app.before_request(_admit)
    app.after_request(_charge)


def _admit() -> None:
    rt = current_app.extensions["cds_runtime"]
    limiter: RateLimiter = rt.rate_limiter
    if not limiter.enabled or request.method == "OPTIONS" or request.endpoint in EXEMPT_ENDPOINTS:
        return
    if (request.blueprint or "").startswith(EXEMPT_BLUEPRINT_PREFIX):
        return
    claimed = rt.authenticator.claimed_client(request.headers.get("Authorization"))
    address = f"addr:{request.remote_addr}"
    limiter.admit(f"client:{claimed}" if claimed else address)
    g.cds_rate_address = address  # admitted: charged after the answer


def _charge(response):
    address = g.pop("cds_rate_address", None)
    if address is not None:
        client = g.get("cds_verified_client")
        current_app.extensions["cds_runtime"].rate_limiter.charge(f"client:{client}" if client else address)
    return response
