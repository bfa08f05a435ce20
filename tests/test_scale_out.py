"""Scale-out: two `cds-service serve` instances (separate gunicorn masters, two workers each) sharing one
PostgreSQL database, as behind a load balancer: one public URL, state only in the database (and Redis).

The instances are started once for the module (starting four workers is the slow part); the tests then
run in file order against them: start-up, load, feedback, LLM cache, JWT replay, and a last look at the
masters' output. The Redis replay store gets its own pair of instances.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import builders
import pytest
import requests
from fake_llm_server import serve_chat, url_of
from jwt_client import client_keys, token
from shared import fresh_postgres_schema
from sqlalchemy import func, select, text
from test_serve import CDS_SERVICE, free_port, wait_ready

from cds_service.audit.decision_log import DecisionLog
from cds_service.audit.pdca import collect
from cds_service.audit.schema_version import head_revision
from cds_service.audit.storage import decisions, feedback, jwt_replay, llm_outputs, make_engine
from cds_service.reasoning.capabilities import write_remote_section

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

SERVICE = builders.ORDER_SIGN_SERVICE
# What clients see behind the load balancer: one URL for every instance, so a JWT's `aud` fits them all.
PUBLIC = "https://cds.example.test"
DUPLICATE = {
    "medications": ["Acetaminophen 325 MG Oral Tablet"],
    "draftOrders": ["Acetaminophen 500 MG Oral Tablet"],
}
WARFARIN = {
    "patient": {"age": 74, "gender": "female"},
    "medications": ["Warfarin Sodium 5 MG Oral Tablet"],
    "observations": [{"code": "loinc|6301-6", "value": 3.1, "daysAgo": 4}],
    "draftOrders": ["Ibuprofen 400 MG Oral Tablet"],
}
# Grounded in WARFARIN's prompt (tests/test_reasoning.py), so the guard lets it into the card.
EXPLANATION = "Warfarin with ibuprofen raises the bleeding risk for this patient. Prefer another plan."
# Enough measured figures for capabilities.decide_free_text to switch free text on.
FREE_TEXT_MEASURED = {"freeText": {"texts": 20, "passRate": 1.0, "specificity": 1.0}}


@dataclass
class Instance:
    name: str
    base: str  # its own loopback address; clients sign for PUBLIC
    proc: subprocess.Popen
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def start_instance(name: str, folder: Path, workers: int = 2, **env: str) -> Instance:
    """`cds-service serve` with its own data directory; output to a file (a pipe nobody reads would
    fill up with access-log lines under load and stall the server)."""
    port = free_port()
    data_dir = folder / name
    data_dir.mkdir(parents=True, exist_ok=True)
    log = folder / f"{name}.log"
    environ = {k: v for k, v in os.environ.items() if not k.startswith("CDS_")}
    environ.update(
        XDG_DATA_HOME=str(folder / "xdg"), CDS_DATA_DIR=str(data_dir), CDS_PUBLIC_BASE_URL=PUBLIC, **env
    )
    command = [str(CDS_SERVICE), "serve", "--host", "127.0.0.1", "--port", str(port)]
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [*command, "--workers", str(workers)],
            env=environ,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return Instance(name, f"http://127.0.0.1:{port}", proc, log)


def stop(instances: list[Instance]) -> None:
    for inst in instances:
        if inst.proc.poll() is None:
            inst.proc.send_signal(signal.SIGTERM)
    for inst in instances:
        try:
            inst.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(inst.proc.pid, signal.SIGKILL)  # its own session: the master and its workers
            inst.proc.wait(timeout=10)


def start_together(folder: Path, workers: int = 2, **env: str) -> list[Instance]:
    """Two instances started at the same moment on one database; returns once both answer /readyz."""
    pair = [start_instance(name, folder, workers, **env) for name in ("a", "b")]
    try:
        for inst in pair:
            wait_ready(inst.base, seconds=180)
    except AssertionError:
        stop(pair)
        raise AssertionError("\n".join(f"--- {i.name}\n{i.output()[-3000:]}" for i in pair)) from None
    return pair


def boot_problems(inst: Instance, workers: int = 2) -> list[str]:
    out = inst.output()
    problems = [marker for marker in ("Traceback", "failed to boot") if marker in out]
    if out.count("Booting worker") != workers:
        problems.append(f"{out.count('Booting worker')} workers booted, not {workers}")
    return problems


def auth(private, path: str) -> dict:
    """A fresh token (new jti) for PUBLIC + path: what the EHR sends through the load balancer."""
    return {"Authorization": f"Bearer {token(private, PUBLIC + path)}"}


@dataclass
class Cluster:
    a: Instance
    b: Instance
    url: str  # the shared database
    private: object  # the trusted client's signing key
    llm_requests: list[dict]  # what the fake LLM server received

    def call(self, inst: Instance, body: dict, session=requests) -> requests.Response:
        path = f"/cds-services/{SERVICE}"
        return session.post(inst.base + path, json=body, headers=auth(self.private, path), timeout=30)


@pytest.fixture(scope="module")
def shared_schema():
    """One fresh PostgreSQL schema for the module's instances (conftest's postgres_url, module-scoped)."""
    with fresh_postgres_schema("cds_scale") as url:
        yield url


@pytest.fixture(scope="module")
def cluster(shared_schema, tmp_path_factory):
    folder = tmp_path_factory.mktemp("scale-out")
    private, clients = client_keys(folder)
    seen: list[dict] = []
    llm = serve_chat(lambda request: EXPLANATION, seen)
    llm_url = url_of(llm)
    for name in ("a", "b"):  # each instance's own measured gates for the shared remote model
        write_remote_section(folder / name, f"remote:default@{llm_url}", FREE_TEXT_MEASURED)
    env = {"CDS_DECISION_LOG": shared_schema, "CDS_CLIENTS": clients, "CDS_LLM": llm_url}
    try:
        a, b = start_together(folder, **env)
    except BaseException:
        llm.shutdown()
        raise
    yield Cluster(a, b, shared_schema, private, seen)
    stop([a, b])
    llm.shutdown()


@pytest.fixture(scope="module")
def engine(cluster):
    engine = make_engine(cluster.url)
    yield engine
    engine.dispose()


def test_two_instances_starting_together_migrate_the_empty_schema_once(cluster, engine):
    with engine.connect() as conn:
        versions = conn.execute(text("SELECT version_num FROM alembic_version")).scalars().all()
    assert versions == [head_revision()]
    for inst in (cluster.a, cluster.b):
        assert not boot_problems(inst), inst.output()


def test_concurrent_load_across_both_instances_keeps_one_linear_chain(cluster, engine):
    acknowledged: list[str] = []
    failures: list[str] = []
    lock = threading.Lock()

    def client(n: int) -> None:
        sessions = {inst.name: requests.Session() for inst in (cluster.a, cluster.b)}
        for i in range(25):
            inst = (cluster.a, cluster.b)[(n + i) % 2]
            r = cluster.call(inst, builders.order_sign(DUPLICATE), sessions[inst.name])
            with lock:
                if r.status_code == 200 and r.headers.get("X-Decision-Id"):
                    acknowledged.append(r.headers["X-Decision-Id"])
                else:
                    failures.append(f"{inst.name}: {r.status_code} {r.text[:200]}")

    started = time.perf_counter()
    threads = [threading.Thread(target=client, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    elapsed = time.perf_counter() - started
    print(f"\n200 calls over two instances in {elapsed:.1f} s ({200 / elapsed:.0f} calls/s)")

    assert not failures, failures[:5]
    assert len(acknowledged) == 200 and len(set(acknowledged)) == 200
    report = DecisionLog(engine, group_commit=False).verify()
    assert report.ok, report.problems[:5]
    with engine.connect() as conn:
        seqs = conn.execute(select(decisions.c.seq).order_by(decisions.c.seq)).scalars().all()
        found = set(
            conn.execute(select(decisions.c.id).where(decisions.c.id.in_(acknowledged))).scalars().all()
        )
    assert seqs == list(range(1, len(seqs) + 1))  # no seq repeated or skipped
    assert found == set(acknowledged)  # every acknowledged decision is in the log
    assert report.checked == len(seqs) >= 200


def test_feedback_sent_to_the_other_instance_is_linked_to_the_card(cluster, engine):
    issued = cluster.call(cluster.a, builders.order_sign(DUPLICATE))
    assert issued.status_code == 200
    card = issued.json()["cards"][0]
    path = f"/cds-services/{SERVICE}/feedback"
    payload = {
        "feedback": [
            {
                "card": card["uuid"],
                "outcome": "overridden",
                "outcomeTimestamp": "2026-11-26T10:00:00Z",
                "overrideReason": {"reason": card["overrideReasons"][0], "userComment": "scale-out"},
            }
        ]
    }
    to_b = requests.post(cluster.b.base + path, json=payload, headers=auth(cluster.private, path), timeout=30)
    assert to_b.status_code == 200 and to_b.json() == {"received": 1, "recorded": 1}
    # The same report through A is recognised as already recorded.
    to_a = requests.post(cluster.a.base + path, json=payload, headers=auth(cluster.private, path), timeout=30)
    assert to_a.json() == {"received": 1, "recorded": 0}

    with engine.connect() as conn:
        rows = conn.execute(select(feedback).where(feedback.c.card_uuid == card["uuid"])).mappings().all()
    assert len(rows) == 1
    assert rows[0]["decision_id"] == issued.headers["X-Decision-Id"]
    assert rows[0]["rule_id"] == "duplicate-ingredient" and rows[0]["user_comment"] == "scale-out"
    stats = [s for s in collect(engine) if s.rule_id == "duplicate-ingredient"]
    assert sum(s.overridden for s in stats) == 1  # what the PDCA review reads
    report = DecisionLog(engine, group_commit=False).verify()
    assert report.ok and report.counts.get("feedback") == 1, report


def _llm_rows(engine) -> int:
    with engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(llm_outputs)).scalar_one()


def _explained(response: requests.Response) -> bool:
    return any("AI-generated" in c.get("detail", "") for c in response.json()["cards"])


def test_text_generated_through_one_instance_is_served_from_cache_by_the_other(cluster, engine):
    body = builders.order_sign(WARFARIN)
    rows_before, asked_before = _llm_rows(engine), len(cluster.llm_requests)
    first = cluster.call(cluster.a, body)
    assert first.status_code == 200
    deadline = time.time() + 30  # the text may finish after A's response budget: wait for its row
    while _llm_rows(engine) == rows_before and time.time() < deadline:
        time.sleep(0.1)
    assert _llm_rows(engine) > rows_before, "instance A stored no LLM text"
    asked_by_a = len(cluster.llm_requests) - asked_before
    assert asked_by_a >= 1

    again = {**body, "hookInstance": str(uuid.uuid4())}  # the same patient and order: the same prompt
    second = cluster.call(cluster.b, again)
    assert second.status_code == 200
    assert len(cluster.llm_requests) == asked_before + asked_by_a  # B did not ask the model
    assert _explained(second)
    record = DecisionLog(engine, group_commit=False).get(second.headers["X-Decision-Id"])
    assert {item["status"] for item in record["llm"]["items"]} == {"cached"}
    assert DecisionLog(engine, group_commit=False).verify().ok  # llm_outputs is a chain too


def test_a_jwt_accepted_by_one_instance_is_refused_by_the_other(cluster):
    headers = auth(cluster.private, "/cds-services")
    assert requests.get(cluster.a.base + "/cds-services", headers=headers, timeout=30).status_code == 200
    replay = requests.get(cluster.b.base + "/cds-services", headers=headers, timeout=30)
    assert replay.status_code == 401 and "replay" in replay.json()["issue"][0]["diagnostics"]
    # B accepts a fresh token for the same audience: the refusal was the replay, not the audience.
    fresh = auth(cluster.private, "/cds-services")
    assert requests.get(cluster.b.base + "/cds-services", headers=fresh, timeout=30).status_code == 200


def test_no_worker_failed_or_raised_during_the_run(cluster):
    for inst in (cluster.a, cluster.b):
        assert inst.proc.poll() is None, f"instance {inst.name} exited"
        assert not boot_problems(inst), inst.output()
    # gunicorn's control socket defaults to one path per user: a second master on the host would take
    # the first's over (and delete it when stopping).
    control = re.compile(r"Control socket listening at ([^\s\"]+)")
    found = [set(control.findall(i.output())) for i in (cluster.a, cluster.b)]
    assert not found[0] & found[1], found


def test_a_jwt_replayed_to_the_other_instance_is_refused_with_the_redis_store(
    postgres_url, redis_url, tmp_path
):
    private, clients = client_keys(tmp_path)
    pair = start_together(
        tmp_path, CDS_DECISION_LOG=postgres_url, CDS_CLIENTS=clients, CDS_REDIS_URL=redis_url, CDS_LLM="off"
    )
    try:
        headers = auth(private, "/cds-services")
        assert requests.get(pair[0].base + "/cds-services", headers=headers, timeout=30).status_code == 200
        replay = requests.get(pair[1].base + "/cds-services", headers=headers, timeout=30)
        assert replay.status_code == 401 and "replay" in replay.json()["issue"][0]["diagnostics"]
    finally:
        stop(pair)
    engine = make_engine(postgres_url)
    try:
        with engine.connect() as conn:  # the jti went to Redis, not to the database
            assert conn.execute(select(func.count()).select_from(jwt_replay)).scalar_one() == 0
    finally:
        engine.dispose()
    assert not any(boot_problems(inst) for inst in pair), [inst.output() for inst in pair]
