"""gunicorn, embedded: ``cds-service serve`` runs the app with the production WSGI server.

`CdsThreadWorker` is gunicorn's gthread worker with new connections spread over the workers
(least connections first, protocol/balancing.py) and two changes for hostile clients:
- errors gunicorn's own HTTP parser answers before the app sees a request (bad request line, 414,
  431, 417, a bad chunk size) leave as the same FHIR OperationOutcome every other error has, not as
  gunicorn's HTML page;
- every read from a client socket has a timeout (CDS_REQUEST_READ_TIMEOUT): gunicorn already waits
  for a connection's first bytes off the thread pool, but a client that sends part of its headers or
  body and then stalls would hold a thread for good; it gets a 408 instead. A reverse proxy in front
  (compose.yaml: nginx) buffers whole requests and is the real defence against many slow clients.
"""

from __future__ import annotations

import gc
import json
import logging
import time

from gunicorn import util
from gunicorn.app.base import BaseApplication
from gunicorn.workers.gthread import TConn, ThreadWorker

from ..errors import clip
from . import arrival
from .balancing import RECHECK_S, ConnectionTable

log = logging.getLogger(__name__)

_read_timeout_s = 10.0  # set by run() before the workers fork; a 5 MB body takes < 1 s on a LAN
_connections: ConnectionTable | None = None  # made by run() before the workers fork
_ISSUE_CODES = {
    400: "invalid",
    408: "timeout",
    413: "too-costly",
    414: "too-long",
    417: "not-supported",
    431: "too-long",
    501: "not-supported",
}
SECURITY_HEADERS = {"X-Content-Type-Options": "nosniff", "Cache-Control": "no-store"}


def write_operation_outcome(sock, status_int: int, reason: str, mesg: str) -> None:
    """gunicorn's `util.write_error`, answering an OperationOutcome (application/fhir+json)."""
    code = _ISSUE_CODES.get(status_int, "invalid" if status_int < 500 else "exception")
    text = f"{reason}: {mesg}" if mesg else reason
    body = json.dumps(
        {
            "resourceType": "OperationOutcome",
            "issue": [{"severity": "error", "code": code, "diagnostics": clip(text, 200)}],
        }
    ).encode("utf-8")
    head = [f"HTTP/1.1 {status_int} {reason}", "Connection: close", "Content-Type: application/fhir+json"]
    head += [f"{k}: {v}" for k, v in SECURITY_HEADERS.items()]
    head.append(f"Content-Length: {len(body)}")
    util.write_nonblock(sock, ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body)


class RequestReadTimeout(Exception):
    """The client stalled while sending its request line or headers."""


class _TimedParser:
    """gunicorn's request parser, with a socket timeout turned into RequestReadTimeout: as an OSError
    it would be logged as a socket fault and the connection dropped without an answer."""

    def __init__(self, parser):
        self._parser = parser

    def __iter__(self):
        return self

    def __next__(self):
        try:
            return next(self._parser)
        except TimeoutError as exc:
            raise RequestReadTimeout() from exc

    def __getattr__(self, name):
        return getattr(self._parser, name)


_gthread_init = TConn.init


def _init_with_read_timeout(conn: TConn) -> None:
    _gthread_init(conn)  # runs once per connection; the timeout is set again for each request
    conn.sock.settimeout(_read_timeout_s)
    if conn.parser is not None and not isinstance(conn.parser, _TimedParser):
        conn.parser = _TimedParser(conn.parser)


class CdsThreadWorker(ThreadWorker):
    _slot: int | None = None  # this worker's row in the shared connection table
    _connection_limit = 1000  # gunicorn's worker_connections

    def init_process(self):
        # This worker process only: gunicorn's error writer and the connection set-up.
        util.write_error = write_operation_outcome
        TConn.init = _init_with_read_timeout
        if _connections is not None:
            self._slot = _connections.claim(self.pid)
        super().init_process()  # runs the worker's loop until it stops

    # gthread's loop takes new connections while `nr_conns < worker_connections`, re-read on every turn:
    # read as a property, the limit also holds a worker back while another live worker holds fewer.
    @property
    def worker_connections(self) -> int:
        limit = self._connection_limit
        if self._slot is None or not self.alive or self.nr_conns >= limit:
            return limit
        return limit if _connections.may_accept(self._slot, self.nr_conns) else self.nr_conns

    @worker_connections.setter
    def worker_connections(self, value: int) -> None:
        self._connection_limit = value

    def wait_for_and_dispatch_events(self, timeout):
        if self._slot is not None and not self._accepting and self.nr_conns < self._connection_limit:
            timeout = min(timeout, RECHECK_S)  # held back: look again soon, not in a second
        super().wait_for_and_dispatch_events(timeout)

    def set_accept_enabled(self, enabled):
        if not enabled and not self.alive:
            self._leave_table()  # stopping: the others no longer wait for this worker to fill up
        super().set_accept_enabled(enabled)

    def _leave_table(self) -> None:
        if self._slot is not None:
            _connections.release(self._slot)
            self._slot = None

    def enqueue_req(self, conn):
        conn.cds_arrived = time.monotonic()  # a new connection, or a kept-alive one with a request waiting
        super().enqueue_req(conn)

    def handle(self, conn):
        arrival.mark(getattr(conn, "cds_arrived", time.monotonic()))  # this pool thread handles it now
        return super().handle(conn)

    def run(self):
        super().run()  # returns once the calls in flight are answered
        self._leave_table()
        # Left in this process's pools is only cache filling (LLM generations queued behind a hung
        # backend, fetches a call gave up on): cancel it, or the interpreter's exit joins those threads
        # and the master kills the worker after graceful_timeout.
        runtime = getattr(self.wsgi, "extensions", {}).get("cds_runtime")
        if runtime is not None:
            runtime.close()

    def handle_error(self, req, client, addr, exc):
        if isinstance(exc, (RequestReadTimeout, TimeoutError)):  # a client that stalled mid-request
            self.log.info("request read timed out after %ss", _read_timeout_s)
            try:
                write_operation_outcome(client, 408, "Request Timeout", "the request was not sent in time")
            except OSError:
                pass
            return
        super().handle_error(req, client, addr, exc)


class CdsGunicorn(BaseApplication):
    def __init__(self, options: dict, content=None):
        self.options = options
        self.content = content  # loaded once in the master; every worker forked from it shares the pages
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            if key in self.cfg.settings and value is not None:
                self.cfg.set(key, value)

    def load(self):
        # Each worker builds its own app: HTTP session, database pool and LLM pipeline per process (none
        # survives a fork); the read-only content comes from the master.
        from .app import create_app

        # `serve` upgraded the database schema before forking: workers only check it is current.
        app = create_app(strict=True, migrate=False, content=self.content)
        runtime = app.extensions["cds_runtime"]
        if runtime.registry is not None:  # before the worker takes its first call
            from .warm_up import warm_up

            warm_up(
                runtime.registry,
                runtime.storage.engine,
                samples=runtime.settings.fhir_dir / "samples" / "synthea-r4",
            )
        return app


def run(
    host: str,
    port: int,
    workers: int,
    threads: int,
    read_timeout: float = 10.0,
    telemetry: dict | None = None,
    content=None,
) -> None:
    """`telemetry`: gunicorn options from telemetry/serving.py (metrics hooks, JSON log configuration);
    `content`: hooks, rules and terminology already loaded by the master, shared by the workers."""
    global _read_timeout_s, _connections
    _read_timeout_s = read_timeout
    _connections = ConnectionTable()  # in memory the forked workers share
    if content is not None:
        # What the master built stays shared after fork only if the garbage collector leaves its objects'
        # headers alone: freezing moves them out of the collected generations.
        gc.collect()
        gc.freeze()
    CdsGunicorn(
        {
            "bind": f"{host}:{port}",
            "workers": workers,
            "worker_class": "cds_service.protocol.wsgi_server.CdsThreadWorker",
            "threads": threads,
            "timeout": 60,
            "graceful_timeout": 20,
            "keepalive": 5,
            # gunicorn's defaults, stated: request line 4094 bytes (414), 100 header fields of 8190 (431)
            "limit_request_line": 4094,
            "limit_request_fields": 100,
            "limit_request_field_size": 8190,
            "accesslog": "-",
            # No query strings or bodies in the access log: paths here carry no patient data.
            "access_log_format": '%(h)s "%(m)s %(U)s" %(s)s %(b)s %(M)sms',
            "preload_app": False,
            # gunicorn >= 25.1 opens a control socket at one path per user ($HOME/.gunicorn/gunicorn.ctl):
            # a second instance on the host takes it over, and stopping either deletes it. Nothing here
            # uses gunicornc; operators signal the master (SIGTERM, SIGHUP, TTIN/TTOU) instead.
            "control_socket_disable": True,
            **(telemetry or {}),
        },
        content,
    ).run()
