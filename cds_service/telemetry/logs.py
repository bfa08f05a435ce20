"""Structured logs: one JSON object per line (python-json-logger), each carrying the request id of the
request it belongs to.

The request id is the client's ``X-Request-Id`` when it is a safe token (at most 128 characters of
``[A-Za-z0-9._:-]``: it goes into logs and the decision record), else a new uuid4. It is echoed in the
response's ``X-Request-Id``, put on every log line of the request (a contextvar, read by
`RequestIdFilter` on the handler) and stored in the decision record as ``requestId``.

Tokens never reach a log line by construction (the FHIR client and the authenticator never log them);
as a last guard, anything that looks like a bearer token in a message is masked.

``CDS_LOG_FORMAT``: ``json`` (one object per line: time, level, logger, pid, message, request_id, and
any ``extra`` fields) or ``text`` (one readable line).
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Mapping
from contextvars import ContextVar
from typing import Any

from flask import Flask, Response, g, request
from pythonjsonlogger.json import JsonFormatter

REQUEST_ID_HEADER = "X-Request-Id"
_request_id: ContextVar[str | None] = ContextVar("cds_request_id", default=None)
_SAFE_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_BEARER = re.compile(r"(?i)\b(bearer\s+)[^\s\"',;}]+")


def request_id_from(header: str | None) -> str:
    """The client's id when it is safe to log and store as it is; a new one otherwise."""
    if header and _SAFE_ID.fullmatch(header):
        return header
    return str(uuid.uuid4())


def current_request_id() -> str | None:
    return _request_id.get()


def redact(text: str) -> str:
    return _BEARER.sub(r"\1[redacted]", text)


class RequestIdFilter(logging.Filter):
    """Puts `request_id` on each record a handler emits: the current request's; for gunicorn's access
    line, written after the request is over, the X-Request-Id its response carried (and the line's
    parts as fields)."""

    def filter(self, record: logging.LogRecord) -> bool:
        rid = _request_id.get()
        if record.name == "gunicorn.access" and isinstance(record.args, Mapping):
            atoms = record.args  # gunicorn's access-log atoms; no query string, no headers but this one
            rid = atoms.get("{x-request-id}o") or rid
            record.method, record.path, record.status = atoms.get("m"), atoms.get("U"), atoms.get("s")
            record.duration_ms = atoms.get("M")
        if rid is not None:
            record.request_id = rid
        return True


class JsonLogFormatter(JsonFormatter):
    def __init__(self) -> None:
        super().__init__(
            "%(levelname)s %(name)s %(process)d %(message)s %(request_id)s",
            rename_fields={"levelname": "level", "name": "logger", "process": "pid"},
        )

    def add_fields(self, log_data: dict[str, Any], record: logging.LogRecord, message_dict: dict) -> None:
        log_data["time"] = _utc(record.created)  # first, for people reading the lines
        super().add_fields(log_data, record, message_dict)

    def process_log_record(self, log_data: dict[str, Any]) -> dict[str, Any]:
        for key in ("message", "exc_info", "stack_info"):
            if isinstance(log_data.get(key), str):
                log_data[key] = redact(log_data[key])
        return log_data


class TextLogFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__(
            "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s", defaults={"request_id": "-"}
        )

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


def _utc(created: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created)) + f".{int(created % 1 * 1000):03d}Z"


def formatter(log_format: str) -> logging.Formatter:
    return JsonLogFormatter() if log_format == "json" else TextLogFormatter()


def make_handler(log_format: str, stream=None) -> logging.Handler:
    """A handler (stderr by default) in `log_format` whose records carry the request id."""
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter(log_format))
    handler.addFilter(RequestIdFilter())
    return handler


def configure(log_format: str, level: str) -> None:
    """Root logging for the app, like `logging.basicConfig`: nothing is changed when the root logger
    already has handlers (gunicorn's JSON configuration under `serve`, pytest's log capture)."""
    root = logging.getLogger()
    if root.handlers:
        return
    root.addHandler(make_handler(log_format))
    root.setLevel(level)


def gunicorn_logconfig(level: str) -> dict:
    """gunicorn's `logconfig_dict` for JSON: the app's loggers, gunicorn's error log (stderr) and its
    access log (stdout) all through the same formatter and request-id filter."""

    def stream(name: str) -> dict:
        return {
            "class": "logging.StreamHandler",
            "formatter": "json",
            "filters": ["request_id"],
            "stream": f"ext://sys.{name}",
        }

    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"request_id": {"()": RequestIdFilter}},
        "formatters": {"json": {"()": JsonLogFormatter}},
        "handlers": {"stderr": stream("stderr"), "stdout": stream("stdout")},
        "root": {"level": level, "handlers": ["stderr"]},
        "loggers": {
            "gunicorn.error": {"level": "INFO", "handlers": ["stderr"], "propagate": False},
            "gunicorn.access": {"level": "INFO", "handlers": ["stdout"], "propagate": False},
        },
    }


# -- Flask: one request id per request ------------------------------------------------------------------


def init_app(app: Flask) -> None:
    """Registered before the other request hooks, so that their log lines carry the id too."""
    app.before_request(_bind_request_id)
    app.after_request(_echo_request_id)
    app.teardown_request(_unbind_request_id)


def _bind_request_id() -> None:
    g.cds_request_id_token = _request_id.set(request_id_from(request.headers.get(REQUEST_ID_HEADER)))


def _echo_request_id(response: Response) -> Response:
    rid = _request_id.get()
    if rid is not None:
        response.headers[REQUEST_ID_HEADER] = rid
    return response


def _unbind_request_id(_exc: BaseException | None) -> None:
    token = g.pop("cds_request_id_token", None)
    if token is not None:
        try:
            _request_id.reset(token)
        except ValueError:  # set in another context: the id must not outlive its request anyway
            _request_id.set(None)
