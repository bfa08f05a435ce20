"""When the request being handled on this thread arrived, as the server saw it.

The response budget and the FHIR deadline count from the request's arrival, not from the moment the
pipeline starts: under load a request waits for a free thread, then its body is read, parsed and its
client authenticated, and the EHR's clock was running all along. gunicorn's worker (wsgi_server.py)
marks the time a connection is queued for a thread; the route takes it. Without a mark (the Flask test
client, another WSGI server) the route's own start is used.
"""

from __future__ import annotations

import threading
import time

_local = threading.local()


def mark(monotonic: float) -> None:
    """The server: the request this thread is about to handle arrived at `monotonic`."""
    _local.at = monotonic


def take() -> float:
    """The route: when this request arrived (time.monotonic()); now, when the server did not say."""
    at = getattr(_local, "at", None)
    _local.at = None
    return at if at is not None else time.monotonic()
