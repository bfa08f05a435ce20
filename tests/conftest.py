from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from fhir_fake import FakeFhirServer
from shared import bundled_content, fresh_postgres_schema

from cds_service.protocol.app import create_app
from cds_service.runtime import Runtime
from cds_service.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"


@pytest.fixture(autouse=True)
def _isolated_environment(monkeypatch, tmp_path):
    """A developer's CDS_* variables must not leak into tests; state goes to a temp folder."""
    for key in list(os.environ):
        if key.startswith("CDS_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))


@pytest.fixture(scope="session")
def content():
    return bundled_content()


@pytest.fixture
def make_app(tmp_path):
    apps = []

    def factory(**overrides):
        config = {"CDS_DATA_DIR": str(tmp_path / "data"), "CDS_LLM": "off", **overrides}
        settings = Settings.load(config)
        # Storage is per test (tmp_path); the shipped content is read-only, so it is loaded once per session.
        shared = bundled_content() if "CDS_CONTENT_DIR" not in overrides else None
        app = create_app(runtime=Runtime.load(settings, content=shared))
        app.testing = True
        apps.append(app)
        return app

    yield factory
    for app in apps:
        app.extensions["cds_runtime"].close()


@pytest.fixture
def app(make_app):
    return make_app()


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def sandbox_client(make_app, tmp_path):
    """A test client of an app serving the sandbox, set up as `serve --sandbox` sets it up, but for
    CDS_CLIENTS: a test client has no HTTP server for the JWKS URL (test_sandbox_api's round trip against
    `serve --sandbox` covers trust over HTTP)."""
    from cds_service.sandbox.trust import prepare

    overrides = prepare(tmp_path / "data", "http://localhost").settings_overrides(())
    del overrides["CDS_CLIENTS"]
    return make_app(**overrides).test_client()


@pytest.fixture
def redis_url():
    """The machine's Redis (127.0.0.1:6379, db 0); tests key their data uniquely and never flush it."""
    import redis

    url = "redis://127.0.0.1:6379/0"
    try:
        redis.Redis.from_url(url, socket_connect_timeout=1).ping()
    except redis.RedisError as exc:
        pytest.skip(f"Redis on 127.0.0.1:6379 not reachable: {type(exc).__name__}")
    return url


@pytest.fixture
def fake_fhir():
    server = FakeFhirServer().start()
    yield server
    server.stop()


def load_fixture(name: str) -> dict:
    return json.loads((FIXTURES / name).read_text())


@pytest.fixture
def postgres_url():
    with fresh_postgres_schema() as url:
        yield url
