"""Per-client rate limiting (protocol/rate_limit.py): keyed by the verified JWT issuer, else the address."""

from __future__ import annotations

import uuid

import pytest
from jwt_client import signing_key, token, write_clients
from test_serve import free_port

DISCOVERY = "/cds-services"


@pytest.fixture
def clients_file(tmp_path):
    """Two trusted clients with their own keys; issuers unique per test (Redis counters outlive a test)."""
    run = uuid.uuid4().hex[:8]
    signers, entries = {}, []
    for name in ("a", "b"):
        private, jwk = signing_key()
        iss = f"https://{name}-{run}.example.test"
        entries.append({"iss": iss, "jwks": {"keys": [jwk]}})
        signers[name] = (iss, private)
    return write_clients(tmp_path, entries), signers


def bearer(signer, key=None) -> dict:
    iss, private = signer
    return {"Authorization": f"Bearer {token(key or private, f'http://localhost{DISCOVERY}', iss=iss)}"}


def test_over_the_limit_is_429_with_retry_after_and_health_stays_open(make_app):
    client = make_app(CDS_RATE_LIMIT_PER_MINUTE=3).test_client()
    assert [client.get(DISCOVERY).status_code for _ in range(3)] == [200, 200, 200]
    refused = client.get(DISCOVERY)
    assert refused.status_code == 429
    outcome = refused.get_json()
    assert outcome["resourceType"] == "OperationOutcome" and outcome["issue"][0]["code"] == "throttled"
    assert "CDS_RATE_LIMIT_PER_MINUTE" in outcome["issue"][0]["diagnostics"]
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    assert client.get("/healthz").status_code == 200 and client.get("/readyz").status_code == 200
    assert client.options(DISCOVERY).status_code == 200  # CORS preflight
    other_address = client.get(DISCOVERY, environ_base={"REMOTE_ADDR": "10.0.0.2"})
    assert other_address.status_code == 200


def test_each_client_has_its_own_budget_and_forged_tokens_do_not_spend_it(make_app, clients_file):
    path, signers = clients_file
    client = make_app(CDS_CLIENTS=path, CDS_RATE_LIMIT_PER_MINUTE=3).test_client()
    forger, _ = signing_key()
    forged = [client.get(DISCOVERY, headers=bearer(signers["a"], key=forger)).status_code for _ in range(5)]
    assert forged == [401] * 5
    a = [client.get(DISCOVERY, headers=bearer(signers["a"])).status_code for _ in range(4)]
    assert a == [200, 200, 200, 429]
    assert client.get(DISCOVERY, headers=bearer(signers["b"])).status_code == 200  # same address, own budget


def test_without_redis_each_instance_counts_alone_with_redis_they_share(make_app, clients_file, redis_url):
    path, signers = clients_file
    for shared, expected in ((None, 200), (redis_url, 429)):
        settings = {"CDS_CLIENTS": path, "CDS_RATE_LIMIT_PER_MINUTE": 3}
        if shared:
            settings["CDS_REDIS_URL"] = shared
        one, two = (make_app(**settings).test_client() for _ in range(2))
        signer = signers["a"] if shared is None else signers["b"]
        assert [c.get(DISCOVERY, headers=bearer(signer)).status_code for c in (one, one, two)] == [200] * 3
        assert two.get(DISCOVERY, headers=bearer(signer)).status_code == expected


def test_limit_zero_turns_it_off_and_a_redis_outage_lets_requests_through(make_app):
    off = make_app(CDS_RATE_LIMIT_PER_MINUTE=0)
    assert not off.extensions["cds_runtime"].rate_limiter.enabled
    down = make_app(CDS_RATE_LIMIT_PER_MINUTE=1, CDS_REDIS_URL=f"redis://127.0.0.1:{free_port()}/0")
    client = down.test_client()
    assert [client.get(DISCOVERY).status_code for _ in range(3)] == [200, 200, 200]
