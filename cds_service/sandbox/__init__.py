"""The sandbox for integration engineers: a mock-EHR page and a FHIR R4 endpoint over sample patients,
served by the same app when ``CDS_SANDBOX`` is on (``cds-service serve --sandbox``; `make run` does).

Never on in production: the sandbox signs client JWTs that this service trusts for anyone who can reach
the page, and serves synthetic charts without authentication.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import datetime

from flask import Flask

from ..clinical.terminology import RXNORM
from .samples import sample_charts
from .store import SandboxStore
from .trust import SandboxClient, sandbox_dir

log = logging.getLogger(__name__)


@dataclass
class Sandbox:
    store: SandboxStore
    client: SandboxClient
    products: list[dict]  # the medication picker: RxNorm products of the bundled terminology


def _products(fhir_dir) -> list[dict]:
    path = fhir_dir / "terminology" / "maps" / "rxnorm-products-to-ingredients.json"
    resource = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    seen, out = set(), []
    for group in resource.get("group") or []:
        for element in group.get("element") or []:
            code, display = element.get("code"), element.get("display")
            if code and display and code not in seen:
                seen.add(code)
                out.append({"system": RXNORM, "code": code, "display": display})
    return out


def init_app(app: Flask, runtime) -> None:
    """Register the sandbox's routes when CDS_SANDBOX is on; builds its data once per process."""
    settings = runtime.settings
    if not settings.sandbox:
        return
    from .api import sandbox_api
    from .fhir_api import sandbox_fhir

    directory = sandbox_dir(settings.data_dir)
    if not (directory / "sandbox.json").is_file():
        log.error(
            "CDS_SANDBOX is on but %s/sandbox.json is missing: start with `cds-service serve --sandbox`",
            directory,
        )
        return
    today = datetime.now().astimezone().date()
    app.extensions["cds_sandbox"] = Sandbox(
        SandboxStore(sample_charts(settings.fhir_dir, today)),
        SandboxClient(directory),
        _products(settings.fhir_dir),
    )
    app.register_blueprint(sandbox_fhir)
    app.register_blueprint(sandbox_api)
    log.warning("sandbox on: mock EHR at /sandbox/, FHIR endpoint at /sandbox/fhir (never in production)")
