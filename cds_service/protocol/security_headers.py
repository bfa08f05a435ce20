"""Security headers on every response, errors included (OWASP REST Security Cheat Sheet).

The defaults suit JSON that carries patient data: never cached, never framed, never sniffed as HTML, no
referrer, a Content-Security-Policy that allows nothing. A route serving a page (the sandbox) relaxes
what it needs with `@relaxed_headers(...)`; the headers it names replace the defaults for that route only.

Strict-Transport-Security is sent on HTTPS requests, and on every request when ``CDS_PUBLIC_BASE_URL``
is https (TLS ends at a reverse proxy in front); ``CDS_HSTS_MAX_AGE=0`` turns it off.
"""

from __future__ import annotations

from collections.abc import Callable

from flask import Flask, Response, current_app, request

API_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": (
        "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
    ),
}
_RELAXED = "_cds_security_headers"


def relaxed_headers(**headers: str) -> Callable:
    """Route decorator: `Content_Security_Policy="default-src 'self'"` (underscores for dashes) replaces that
    header's default on this route."""
    chosen = {name.replace("_", "-"): value for name, value in headers.items()}
    unknown = set(chosen) - set(API_HEADERS)
    if unknown:
        raise ValueError(f"not a default security header: {sorted(unknown)}")

    def mark(view: Callable) -> Callable:
        setattr(view, _RELAXED, chosen)
        return view

    return mark


def init_app(app: Flask, *, hsts_max_age: int, public_base_url: str) -> None:
    always_hsts = public_base_url.lower().startswith("https://")

    @app.after_request
    def _security_headers(response: Response) -> Response:
        view = current_app.view_functions.get(request.endpoint) if request.endpoint else None
        headers = {**API_HEADERS, **getattr(view, _RELAXED, {})}
        if hsts_max_age > 0 and (always_hsts or request.is_secure):
            headers["Strict-Transport-Security"] = f"max-age={hsts_max_age}"
        for name, value in headers.items():
            response.headers[name] = value
        return response
