"""Telemetry: GET /metrics (one process, and added up over gunicorn workers), the request id, JSON logs,
and no token in any log line."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import date
from pathlib import Path

import builders
import pytest
import requests
from fhir_fake import Reply, searchset
from jwt_client import client_keys
from prometheus_client.parser import text_string_to_metric_families
from test_serve import CDS_SERVICE, free_port, wait_ready

from cds_service.audit.integrity import verify
from cds_service.clinical.rule_cases import PATIENT_ID, CaseBuilder
from cds_service.reasoning.backends import Generation
from cds_service.telemetry import logs

ROOT = Path(__file__).resolve().parents[1]
ORDER_SIGN = "/cds-services/medication-order-check"
SERVICE = "medication-order-check"
WARFARIN_NSAID = {
    "patient": {"age": 74, "gender": "female"},
    "medications": ["Warfarin Sodium 5 MG Oral Tablet"],
    "observations": [{"code": "loinc|6301-6", "value": 2.8, "daysAgo": 6}],
    "draftOrders": ["Ibuprofen 400 MG Oral Tablet"],
}
TOKEN = "tok-9c41e7-never-in-a-log"
AUTH = {
    "access_token": TOKEN,
    "token_type": "Bearer",
    "expires_in": 300,
    "scope": "user/*.read",
    "subject": "cds",
}
UUID4 = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")


def samples(text: str) -> dict[tuple[str, frozenset], float]:
    """Every sample of a /metrics answer, by name and labels (parsed by prometheus_client's own parser)."""
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def scrape(client) -> dict[tuple[str, frozenset], float]:
    response = client.get("/metrics")
    assert response.status_code == 200 and response.mimetype == "text/plain"
    return samples(response.get_data(as_text=True))


def value(scraped: dict, name: str, **labels: str) -> float:
    return scraped.get((name, frozenset(labels.items())), 0.0)


def grew(before: dict, after: dict, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


# -- one process --------------------------------------------------------------------------------------


def test_a_hook_call_shows_in_metrics(make_app):
    app = make_app()
    client = app.test_client()
    before = scrape(client)
    ok = client.post(ORDER_SIGN, json=builders.order_sign(WARFARIN_NSAID))
    bad = client.post(ORDER_SIGN, json={"hook": "order-sign"})
    assert ok.status_code == 200 and bad.status_code == 400
    response = client.get("/metrics")
    text = response.get_data(as_text=True)
    after = samples(text)
    count = "cds_hook_request_duration_seconds_count"
    assert grew(before, after, count, service=SERVICE, status="200") == 1
    assert grew(before, after, count, service=SERVICE, status="400") == 1
    # buckets around the 450 ms budget
    assert (
        "cds_hook_request_duration_seconds_bucket",
        frozenset({"service": SERVICE, "status": "200", "le": "0.45"}.items()),
    ) in after
    critical = sum(c["indicator"] == "critical" for c in ok.get_json()["cards"])
    assert critical >= 1
    assert grew(before, after, "cds_cards_issued_total", service=SERVICE, indicator="critical") == critical
    assert grew(before, after, "cds_rule_firings_total", rule="ddi-warfarin-nsaid", rule_status="active") == 1
    assert grew(before, after, "cds_decision_log_append_seconds_count") == 2  # the 400 is recorded too
    assert PATIENT_ID not in text and builders.USER not in text
    assert "_created" not in text


def test_a_shadow_rule_firing_is_counted_with_its_status(make_app, tmp_path):
    content = tmp_path / "content"
    for folder in ("hooks", "rules", "fhir"):
        shutil.copytree(ROOT / folder, content / folder)
    rule = content / "rules" / "drug-interactions" / "ddi-warfarin-nsaid.yaml"
    rule.write_text(rule.read_text().replace("status: active", "status: shadow", 1))
    client = make_app(CDS_CONTENT_DIR=str(content)).test_client()
    before = scrape(client)
    response = client.post(ORDER_SIGN, json=builders.order_sign(WARFARIN_NSAID))
    assert response.status_code == 200
    after = scrape(client)
    assert grew(before, after, "cds_rule_firings_total", rule="ddi-warfarin-nsaid", rule_status="shadow") == 1
    assert grew(before, after, "cds_rule_firings_total", rule="ddi-warfarin-nsaid", rule_status="active") == 0


def test_metrics_need_no_client_jwt(make_app, tmp_path):
    _, clients = client_keys(tmp_path)
    client = make_app(CDS_CLIENTS=clients).test_client()
    assert client.post(ORDER_SIGN, json=builders.order_sign(WARFARIN_NSAID)).status_code == 401
    assert client.get("/metrics").status_code == 200


def _fetching_call(fake_fhir, auth=AUTH) -> dict:
    return builders.order_sign(
        {"medications": ["Ibuprofen 200 MG Oral Tablet"], "draftOrders": ["Ibuprofen 600 MG Oral Tablet"]},
        prefetch_keys=("patient",),
        fhirServer=fake_fhir.base_url,
        fhirAuthorization=auth,
    )


def _serve_medications(fake_fhir) -> None:
    resources, _ = CaseBuilder(date.today()).build({"medications": ["Ibuprofen 200 MG Oral Tablet"]})
    active = [r for r in resources if r["resourceType"] == "MedicationRequest"]
    fake_fhir.routes[
        f"MedicationRequest?subject=Patient/{PATIENT_ID}&status=active&_count=200"
        "&_include=MedicationRequest:medication"
    ] = Reply(200, searchset(active))
    fake_fhir.default = Reply(200, searchset([]))


def test_fhir_fetches_are_timed_and_failures_counted_by_resource_type_only(make_app, fake_fhir):
    _serve_medications(fake_fhir)
    client = make_app(CDS_FHIR_ALLOWED_SERVERS=fake_fhir.base_url).test_client()
    before = scrape(client)
    assert client.post(ORDER_SIGN, json=_fetching_call(fake_fhir)).status_code == 200
    fake_fhir.routes.clear()
    fake_fhir.default = Reply(500, {"resourceType": "OperationOutcome"})
    failed = client.post(ORDER_SIGN, json=_fetching_call(fake_fhir))
    assert failed.status_code == 412
    response = client.get("/metrics")
    text = response.get_data(as_text=True)
    after = samples(text)
    fetched = "cds_fhir_fetch_duration_seconds_count"
    assert grew(before, after, fetched, resource_type="MedicationRequest") == 2
    assert (
        grew(
            before,
            after,
            "cds_fhir_fetch_errors_total",
            resource_type="MedicationRequest",
            error="FhirBadResponse",
        )
        == 1
    )
    types = {
        dict(labels)["resource_type"]
        for (name, labels) in after
        if name.startswith("cds_fhir_fetch") and "resource_type" in dict(labels)
    }
    assert types and all(re.fullmatch(r"[A-Z][A-Za-z]+", t) for t in types), types
    assert PATIENT_ID not in text and TOKEN not in text and fake_fhir.base_url not in text


class FakeLlm:
    """Answers with grounded text once the gate is open (it is unless the test closes it)."""

    model_id = "metrics-test-model"

    def __init__(self, text: str = "Warfarin with ibuprofen raises the bleeding risk. Prefer another plan."):
        self.text, self.gate, self.fail = text, threading.Event(), False
        self.gate.set()

    def generate(self, messages, max_new_tokens):
        self.gate.wait(timeout=30)
        if self.fail:
            raise RuntimeError("backend crashed")
        return Generation(self.text, 20, 7, 0.02)


def _with_llm(app, backend, budget_ms: int):
    from cds_service.reasoning.cache import LlmStore
    from cds_service.reasoning.capabilities import Capabilities
    from cds_service.reasoning.grounding import GroundingGuard
    from cds_service.reasoning.reasoner import Reasoner

    rt = app.extensions["cds_runtime"]
    rt.reasoner = Reasoner(
        backend,
        LlmStore(rt.storage.engine),
        GroundingGuard(rt.content.terminology),
        budget_ms=budget_ms,
        capabilities=Capabilities(free_text_enabled=True, free_text_reason="test"),
    )
    rt.registry.pipeline.reasoner = rt.reasoner
    return rt


def _drained(rt) -> None:
    deadline = time.time() + 30
    while rt.reasoner._inflight and time.time() < deadline:
        time.sleep(0.02)
    assert not rt.reasoner._inflight


def test_llm_generations_tokens_failures_and_deadline_misses(make_app):
    app = make_app()
    client = app.test_client()
    backend = FakeLlm()
    rt = _with_llm(app, backend, budget_ms=10_000)
    before = scrape(client)
    response = client.post(ORDER_SIGN, json=builders.order_sign(WARFARIN_NSAID))
    items = rt.storage.decision_log.get(response.headers["X-Decision-Id"])["llm"]["items"]
    generated = sum(i["status"] == "generated" for i in items)
    assert generated >= 1
    after = scrape(client)
    assert grew(before, after, "cds_llm_generation_duration_seconds_count", task="explanation") == generated
    assert grew(before, after, "cds_llm_tokens_generated_total", task="explanation") == 7 * generated
    assert grew(before, after, "cds_llm_deadline_misses_total", task="explanation") == 0

    backend.gate.clear()  # a backend that answers too late: the call goes on without it
    rt = _with_llm(app, backend, budget_ms=1)
    slow = client.post(ORDER_SIGN, json=builders.order_sign({**WARFARIN_NSAID, "patient": {"age": 80}}))
    items = rt.storage.decision_log.get(slow.headers["X-Decision-Id"])["llm"]["items"]
    assert {i["status"] for i in items} == {"pending"}
    backend.fail = True  # and then fails in the background
    backend.gate.set()
    _drained(rt)
    final = scrape(client)
    assert grew(after, final, "cds_llm_deadline_misses_total", task="explanation") == len(items)
    assert grew(after, final, "cds_llm_failures_total", task="explanation") == len(items)


# -- request id ---------------------------------------------------------------------------------------


def test_request_id_is_echoed_replaced_when_unsafe_and_recorded(make_app):
    app = make_app()
    client = app.test_client()
    log = app.extensions["cds_runtime"].storage.decision_log
    body = builders.order_sign(WARFARIN_NSAID)
    given = "req-42.a:b_C"
    response = client.post(ORDER_SIGN, json=body, headers={"X-Request-Id": given})
    assert response.headers["X-Request-Id"] == given
    assert log.get(response.headers["X-Decision-Id"])["requestId"] == given
    for unsafe in ("has space", "x" * 129, "<script>", "a;b", "ünï", ""):
        response = client.post(ORDER_SIGN, json=body, headers={"X-Request-Id": unsafe})
        made = response.headers["X-Request-Id"]
        assert UUID4.fullmatch(made), (unsafe, made)
        assert log.get(response.headers["X-Decision-Id"])["requestId"] == made
    none_sent = client.post(ORDER_SIGN, json=body)
    assert UUID4.fullmatch(none_sent.headers["X-Request-Id"])
    refused = client.post(ORDER_SIGN, json={"hook": "order-sign"}, headers={"X-Request-Id": "bad-one"})
    assert refused.status_code == 400 and refused.headers["X-Request-Id"] == "bad-one"
    assert log.get(refused.headers["X-Decision-Id"])["requestId"] == "bad-one"
    assert client.get("/nowhere", headers={"X-Request-Id": "r404"}).headers["X-Request-Id"] == "r404"
    cors = client.get("/healthz", headers={"Origin": "https://ehr.example.test"})
    assert "X-Request-Id" in cors.headers["Access-Control-Expose-Headers"]
    # the record changed shape (requestId): the log still verifies
    report = verify(log.engine)
    assert report.ok, report.problem


# -- logs ---------------------------------------------------------------------------------------------


@pytest.fixture
def json_logs(caplog):
    """What the app logs at DEBUG, through the JSON handler `serve` uses (and caplog's)."""
    stream = io.StringIO()
    handler = logs.make_handler("json", stream)
    root = logging.getLogger()
    root.addHandler(handler)
    caplog.set_level(logging.DEBUG)
    yield stream
    root.removeHandler(handler)


def test_log_lines_are_json_objects_with_the_request_id(make_app, json_logs):
    client = make_app().test_client()
    json_logs.seek(0)
    json_logs.truncate()  # what app creation logged
    client.post(ORDER_SIGN, json=builders.order_sign(WARFARIN_NSAID), headers={"X-Request-Id": "log-1"})
    client.post(ORDER_SIGN, json={"hook": "order-sign"}, headers={"X-Request-Id": "log-2"})
    lines = [json.loads(line) for line in json_logs.getvalue().splitlines() if line]
    ours = [line for line in lines if line["logger"].startswith("cds_service")]
    assert ours, lines
    for line in lines:
        assert {"time", "level", "logger", "pid", "message", "request_id"} <= set(line), line
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", line["time"])
    assert all(line["request_id"] in ("log-1", "log-2") for line in ours), ours
    decision = next(line for line in ours if line["message"].startswith("decision "))
    assert (
        decision["request_id"] == "log-1" and decision["level"] == "INFO" and decision["pid"] == os.getpid()
    )
    refusal = next(line for line in ours if "-> 400" in line["message"])
    assert refusal["request_id"] == "log-2"
    # outside a request: no id
    logging.getLogger("cds_service.test").warning("between requests")
    assert json.loads(json_logs.getvalue().splitlines()[-1])["request_id"] is None


def test_no_token_reaches_a_log_line(make_app, fake_fhir, tmp_path, json_logs, caplog):
    """fhirAuthorization's token and a client's Authorization header, on calls that succeed, that the FHIR
    server refuses and that are refused: at DEBUG, in JSON and caplog alike, never the token."""
    _serve_medications(fake_fhir)
    _, clients = client_keys(tmp_path)
    open_app = make_app(CDS_FHIR_ALLOWED_SERVERS=fake_fhir.base_url)
    guarded = make_app(CDS_CLIENTS=clients, CDS_FHIR_ALLOWED_SERVERS=fake_fhir.base_url)
    client = open_app.test_client()
    assert client.post(ORDER_SIGN, json=_fetching_call(fake_fhir)).status_code == 200
    assert all(s.headers.get("Authorization") == f"Bearer {TOKEN}" for s in fake_fhir.seen)
    routes = dict(fake_fhir.routes)
    fake_fhir.routes.clear()
    fake_fhir.default = Reply(401, {"resourceType": "OperationOutcome"})
    assert client.post(ORDER_SIGN, json=_fetching_call(fake_fhir)).status_code == 412
    fake_fhir.routes.update(routes)
    no_subject = {k: v for k, v in AUTH.items() if k != "subject"}
    assert client.post(ORDER_SIGN, json=_fetching_call(fake_fhir, no_subject)).status_code == 400
    odd_type = {**AUTH, "token_type": "MAC"}
    assert client.post(ORDER_SIGN, json=_fetching_call(fake_fhir, odd_type)).status_code in (200, 400)
    refused = guarded.test_client().post(
        ORDER_SIGN, json=_fetching_call(fake_fhir), headers={"Authorization": f"Bearer {TOKEN}"}
    )
    assert refused.status_code == 401
    captured = json_logs.getvalue()
    assert "decision " in captured and "-> 401" in captured  # the calls were logged...
    assert TOKEN not in captured and TOKEN not in caplog.text  # ...never their tokens


def test_a_bearer_token_in_a_message_is_masked():
    stream = io.StringIO()
    record = logging.makeLogRecord(
        {
            "name": "x",
            "levelno": logging.WARNING,
            "levelname": "WARNING",
            "msg": "sent %s",
            "args": ("Bearer abc.def",),
        }
    )
    logs.make_handler("json", stream).handle(record)
    logs.make_handler("text", stream).handle(record)
    assert "abc.def" not in stream.getvalue() and stream.getvalue().count("Bearer [redacted]") == 2


# -- gunicorn: several workers, one /metrics ----------------------------------------------------------


def _serve(port: int, data_dir: Path, log_file: Path, *options: str) -> subprocess.Popen:
    """`cds-service serve` like test_serve.start_serve, its output (JSON logs) going to `log_file`."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("CDS_")}
    environ.update(CDS_DATA_DIR=str(data_dir), CDS_LLM="off")
    with log_file.open("w") as out:
        return subprocess.Popen(
            [str(CDS_SERVICE), "serve", "--host", "127.0.0.1", "--port", str(port), *options],
            env=environ,
            start_new_session=True,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def _json_lines(log_file: Path) -> list[dict]:
    return [json.loads(line) for line in log_file.read_text().splitlines() if line.startswith("{")]


@pytest.mark.slow
def test_metrics_add_up_every_worker(tmp_path):
    port, data, log_file = free_port(), tmp_path / "data", tmp_path / "serve.log"
    proc = _serve(port, data, log_file, "--workers", "2", "--threads", "2")
    base = f"http://127.0.0.1:{port}"
    body = builders.order_sign(WARFARIN_NSAID)

    def call(n: int) -> requests.Response:  # a new connection each: the workers take turns accepting
        return requests.post(
            f"{base}{ORDER_SIGN}", json=body, headers={"X-Request-Id": f"mp-{n}"}, timeout=30
        )

    made, pids = 0, set()
    try:
        wait_ready(base)
        with ThreadPoolExecutor(6) as pool:
            for _ in range(20):  # until both workers have answered (each batch is 12 calls)
                answers = list(pool.map(call, range(made, made + 12)))
                made += len(answers)
                assert all(a.status_code == 200 for a in answers), [a.text for a in answers]
                pids = {
                    line["pid"]
                    for line in _json_lines(log_file)
                    if line["logger"] == "cds_service.protocol.pipeline"
                }
                if len(pids) == 2:
                    break
        assert len(pids) == 2, "every call went to one worker"
        scraped = samples(requests.get(f"{base}/metrics", timeout=10).text)
        assert (
            value(scraped, "cds_hook_request_duration_seconds_count", service=SERVICE, status="200") == made
        )
        assert value(scraped, "cds_decision_log_append_seconds_count") == made
        assert (
            value(scraped, "cds_rule_firings_total", rule="ddi-warfarin-nsaid", rule_status="active") == made
        )
        metrics_dir = data / "metrics" / f"{socket.gethostname()}-{proc.pid}"
        files = {p.name for p in metrics_dir.iterdir()}
        assert {f"histogram_{pid}.db" for pid in pids} <= files, files
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    assert not metrics_dir.exists()  # removed when the master exits

    lines = _json_lines(log_file)
    plain = [line for line in log_file.read_text().splitlines() if line and not line.startswith("{")]
    assert not any(text in p for p in plain for text in ("Booting worker", "decision ", "POST /")), plain
    assert any(line["logger"] == "gunicorn.error" and "Booting worker" in line["message"] for line in lines)
    access = {line["request_id"]: line for line in lines if line["logger"] == "gunicorn.access"}
    assert {f"mp-{n}" for n in range(made)} <= set(access)
    assert access["mp-0"]["path"] == ORDER_SIGN and access["mp-0"]["status"] == "200"
    decisions = {line["request_id"] for line in lines if line["message"].startswith("decision ")}
    assert decisions == {f"mp-{n}" for n in range(made)}
