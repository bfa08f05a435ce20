"""A JWT is usable once, whichever worker or instance of the service receives it (protocol/replay.py)."""

from __future__ import annotations

import http.client
import signal
import time

import psutil
import pytest
from jwt_client import ISS, client_keys, token
from sqlalchemy import func, insert, select
from test_serve import free_port, start_serve, wait_ready

from cds_service.audit.storage import jwt_replay, make_engine
from cds_service.protocol.replay import DatabaseReplayCache


@pytest.fixture
def signer(tmp_path):
    """Fresh ES384 tokens of a trusted client (tests/jwt_client.py), and its clients file."""
    private, path = client_keys(tmp_path)

    def sign(aud: str) -> str:
        return token(private, aud)

    sign.clients = path
    return sign


def discovery(app, token: str):
    return app.test_client().get("/cds-services", headers={"Authorization": f"Bearer {token}"})


def assert_second_instance_refuses(make_app, signer, **shared):
    first, second = (make_app(CDS_CLIENTS=signer.clients, **shared) for _ in range(2))
    assert first.extensions["cds_runtime"] is not second.extensions["cds_runtime"]
    token = signer("http://localhost/cds-services")
    assert discovery(first, token).status_code == 200
    replay = discovery(second, token)
    assert replay.status_code == 401 and "replay" in replay.get_json()["issue"][0]["diagnostics"]
    assert discovery(first, token).status_code == 401
    assert discovery(second, signer("http://localhost/cds-services")).status_code == 200


def test_two_instances_sharing_the_sqlite_decision_log_refuse_a_replay(make_app, signer):
    assert_second_instance_refuses(make_app, signer)  # make_app: one CDS_DATA_DIR per test


@pytest.mark.postgres
def test_two_instances_sharing_postgresql_refuse_a_replay(make_app, signer, postgres_url):
    assert_second_instance_refuses(make_app, signer, CDS_DECISION_LOG=postgres_url)


def test_two_instances_sharing_redis_refuse_a_replay(make_app, signer, redis_url):
    assert_second_instance_refuses(make_app, signer, CDS_REDIS_URL=redis_url)


def test_unreachable_redis_refuses_the_token_rather_than_risk_a_replay(make_app, signer):
    app = make_app(CDS_CLIENTS=signer.clients, CDS_REDIS_URL=f"redis://127.0.0.1:{free_port()}/0")
    response = discovery(app, signer("http://localhost/cds-services"))
    assert response.status_code == 503
    assert "replay cache (Redis) is unavailable" in response.get_json()["issue"][0]["diagnostics"]


def test_expired_entries_are_purged_and_an_expired_jti_is_not_a_replay(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'r.sqlite3'}")
    jwt_replay.create(engine)
    now = int(time.time())
    with engine.begin() as conn:
        conn.execute(
            insert(jwt_replay),
            [{"key": f"{i:064x}", "issuer": ISS, "expires_at": now - 1} for i in range(50)],
        )
    cache = DatabaseReplayCache(engine)
    assert cache.first_use(ISS, "a", now + 300)
    assert not cache.first_use(ISS, "a", now + 300)
    assert cache.first_use("https://other.test", "a", now + 300)  # jtis are per issuer
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(jwt_replay)).scalar() == 2
    assert cache.first_use(ISS, "old", now - 5)  # stored already expired: the next use takes the row over
    assert cache.first_use(ISS, "old", now + 300)


def _worker_serving(workers: list[psutil.Process], server_port: int, client_port: int) -> int:
    """The pid of the gunicorn worker holding our keep-alive connection."""
    for worker in workers:
        for conn in worker.net_connections(kind="tcp"):
            if (
                conn.laddr
                and conn.laddr.port == server_port
                and conn.raddr
                and conn.raddr.port == client_port
            ):
                return worker.pid
    raise AssertionError("no worker holds the connection")


@pytest.mark.slow
def test_a_replay_is_refused_by_every_worker_of_serve(tmp_path, signer):
    """`serve --workers 2`: the token is used once; each replay, on a new connection, reaches either worker
    (the test goes on until both have answered one) and is refused."""
    port = free_port()
    proc = start_serve(
        port, tmp_path / "data", "--workers", "2", "--threads", "2", CDS_CLIENTS=signer.clients
    )
    try:
        wait_ready(f"http://127.0.0.1:{port}")
        workers = [  # the gunicorn workers (the master's other child is the decision-log writer)
            c for c in psutil.Process(proc.pid).children() if "log_writer" not in " ".join(c.cmdline())
        ]
        assert len(workers) == 2
        token = signer(f"http://127.0.0.1:{port}/cds-services")
        answered_by: dict[int, list[int]] = {w.pid: [] for w in workers}
        for attempt in range(60):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            conn.connect()
            conn.request("GET", "/cds-services", headers={"Authorization": f"Bearer {token}"})
            status = conn.getresponse()
            status.read()
            pid = _worker_serving(workers, port, conn.sock.getsockname()[1])
            conn.close()
            answered_by[pid].append(status.status)
            if attempt > 0 and all(len(s) >= 2 for s in answered_by.values()):
                break
        assert all(len(s) >= 2 for s in answered_by.values()), f"a worker answered < 2: {answered_by}"
        statuses = [s for answers in answered_by.values() for s in answers]
        assert statuses.count(200) == 1 and statuses.count(401) == len(statuses) - 1, answered_by
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
