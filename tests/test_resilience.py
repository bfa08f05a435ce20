"""Resilience under load, through the real server (`cds-service serve`, 2 workers × 4 threads).

Each scenario puts one fault behind the service — a FHIR server that is down, slow past the deadline,
answering 500 or garbage; an LLM backend that hangs, drops connections or answers garbage — drives a
bounded concurrent load from loopback clients, and checks every answer: 200 with cards (the data-quality
card saying what could not be fetched) or the CDS Hooks 412 where indispensable prefetch data cannot be
had; never a 5xx; each call within the configured deadline plus a generous margin (a bound, not a
benchmark: the machine is shared). 6 clients on 2 × 4 threads: even when one worker holds every
keep-alive connection (gthread keeps a connection on the worker that accepted it), a call waits for at
most one other call's deadline, so deadline + 2 s holds. The service must then stop on SIGTERM cleanly:
exit code 0 before graceful_timeout (a worker still busy then is killed). `test_sigterm_during_load`
checks the graceful shutdown itself; two fast tests pin the LLM defects these scenarios found.

The fetch path's single-call behaviour (each hostile answer, the one deadline) is in test_fhir_fetch.py;
here it is the same faults under concurrency, across processes and thread pools.
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import builders
import pytest
import requests
from fhir_fake import FakeFhirServer, Reply, searchset
from test_serve import CDS_SERVICE, free_port, wait_ready

from cds_service.audit.decision_log import DecisionLog
from cds_service.audit.storage import make_engine
from cds_service.reasoning.backends import LlmError, RemoteBackend
from cds_service.reasoning.cache import LlmStore
from cds_service.reasoning.capabilities import Capabilities
from cds_service.reasoning.grounding import GroundingGuard
from cds_service.reasoning.reasoner import Reasoner
from cds_service.settings import Settings

CLIENTS, CALLS = 6, 20  # per scenario: 120 calls, 6 at a time
FHIR_DEADLINE_MS = 500
RESPONSE_BUDGET_MS = 450
MARGIN_S = 2.0  # generous: two shared cores, the load generator on the same machine
GRACEFUL_TIMEOUT_S = 20  # wsgi_server.run: gunicorn graceful_timeout
SERVICE = builders.ORDER_SIGN_SERVICE
WARFARIN_NSAID = {
    "medications": ["Warfarin Sodium 5 MG Oral Tablet"],
    "draftOrders": ["Ibuprofen 400 MG Oral Tablet"],
}
REQUIRED_KEYS = ("patient", "medications", "allergies")  # policy fail: 412 without them
SKIP_KEYS = {"statements", "dispenses", "administrations", "conditions", "labs", "notes", "reports"}
AUTH = {
    "access_token": "tok-resilience",
    "token_type": "Bearer",
    "expires_in": 300,
    "scope": "user/*.read",
    "subject": "cds",
}


# -- the server ---------------------------------------------------------------------------------------


@dataclass
class Served:
    proc: subprocess.Popen
    base: str
    port: int
    data_dir: Path
    log_path: Path

    def stop(self) -> tuple[int, float]:
        """SIGTERM to the master; (exit code, seconds until it exited)."""
        started = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=GRACEFUL_TIMEOUT_S + 15)
        return code, time.monotonic() - started

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def decision_log(self) -> DecisionLog:
        return DecisionLog(make_engine(Settings.load({"data_dir": self.data_dir}).decision_log_url))


@contextmanager
def serving(tmp_path: Path, **env: str) -> Iterator[Served]:
    """`cds-service serve --workers 2 --threads 4`, its output in a file (a pipe nobody reads would fill
    under load and stall the server). Killed here if the test did not stop it."""
    port = free_port()
    data_dir = tmp_path / "data"
    data_dir.mkdir(exist_ok=True)
    log_path = tmp_path / "serve.log"
    environ = {k: v for k, v in os.environ.items() if not k.startswith("CDS_")}
    # No rate limit: the load comes from one address and is the point here.
    environ.update({"CDS_DATA_DIR": str(data_dir), "CDS_LLM": "off", "CDS_RATE_LIMIT_PER_MINUTE": "0", **env})
    with open(log_path, "wb") as out:
        proc = subprocess.Popen(
            [str(CDS_SERVICE), "serve", "--host", "127.0.0.1", "--port", str(port)]
            + ["--workers", "2", "--threads", "4"],
            env=environ,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    served = Served(proc, f"http://127.0.0.1:{port}", port, data_dir, log_path)
    try:
        wait_ready(served.base)
        yield served
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def assert_clean_stop(served: Served, scenario: str) -> float:
    code, seconds = served.stop()
    output = served.log()
    print(f"[{scenario}] SIGTERM to exit: {seconds:.2f} s, exit code {code}")
    assert code == 0, output[-3000:]
    assert seconds < GRACEFUL_TIMEOUT_S, f"shutdown took {seconds:.1f} s: a worker outlived its grace"
    assert "SIGKILL" not in output and "Traceback" not in output, output[-3000:]
    assert output.count("Worker exiting") >= 2, output[-3000:]
    return seconds


# -- the load -----------------------------------------------------------------------------------------


@dataclass
class Outcome:
    kind: str
    tag: str
    started: float  # time.monotonic()
    seconds: float
    status: int | None = None  # None: no HTTP answer
    body: dict | None = None
    decision_id: str | None = None
    error: str | None = None
    server_timing: str = ""  # the call's own stages, without queueing in the server

    @property
    def server_seconds(self) -> float | None:
        for metric in self.server_timing.split(","):
            name, _, params = metric.strip().partition(";")
            if name == "total" and params.startswith("dur="):
                return float(params[4:]) / 1000
        return None


Request = tuple[str, str, dict]  # (kind, tag, body)


def drive(
    base: str,
    request: Callable[[int, int], Request],
    clients: int = CLIENTS,
    calls: int = CALLS,
    timeout: float = 30.0,
    keep_alive: bool = True,
) -> list[Outcome]:
    """`clients` threads, each sending `calls` requests one after another (fewer once the server is gone)
    on its own keep-alive connection, or on a new one each time. `request(client, i)` builds each."""
    outcomes: list[Outcome] = []
    lock = threading.Lock()

    def client(c: int) -> None:
        session = requests.Session()
        failures = 0
        for i in range(calls):
            kind, tag, body = request(c, i)
            started = time.monotonic()
            outcome = Outcome(kind, tag, started, 0.0)
            try:
                r = (session.post if keep_alive else requests.post)(
                    f"{base}/cds-services/{SERVICE}", json=body, timeout=timeout
                )
                outcome.status, outcome.decision_id = r.status_code, r.headers.get("X-Decision-Id")
                outcome.server_timing = r.headers.get("Server-Timing", "")
                try:
                    outcome.body = r.json()
                except ValueError:
                    outcome.body = {"unparsed": r.text[:200]}
            except requests.RequestException as exc:
                outcome.error = f"{type(exc).__name__}: {exc}"[:300]
                failures += 1
            outcome.seconds = time.monotonic() - started
            with lock:
                outcomes.append(outcome)
            if failures >= 3:  # the server is going away (SIGTERM test): stop knocking
                return

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=calls * timeout + 30)
    return outcomes


def timing(outcomes: list[Outcome]) -> str:
    seconds = sorted(o.seconds for o in outcomes)
    p95 = seconds[min(len(seconds) - 1, int(0.95 * len(seconds)))]
    own = [o.server_seconds for o in outcomes if o.server_seconds is not None]
    said = f"n={len(seconds)} p50={statistics.median(seconds):.3f}s p95={p95:.3f}s max={seconds[-1]:.3f}s"
    return said + (f"; in the service (Server-Timing) max={max(own):.3f}s" if own else "")


def assert_answered(outcomes: list[Outcome], bound: float, scenario: str) -> None:
    """Every call answered, none with a 5xx, none slower than `bound` seconds."""
    print(f"[{scenario}] wall time per call: {timing(outcomes)} (bound {bound:.1f} s)")
    slowest = max(outcomes, key=lambda o: o.seconds)
    print(f"[{scenario}] slowest call: {slowest.seconds:.3f} s, Server-Timing: {slowest.server_timing}")
    assert len(outcomes) == CLIENTS * CALLS
    unanswered = [o.error for o in outcomes if o.status is None]
    assert not unanswered, unanswered[:3]
    failed = [(o.status, o.body) for o in outcomes if o.status >= 500]
    assert not failed, f"{len(failed)} answers were 5xx: {failed[:2]}"
    assert slowest.seconds < bound, f"a call took {slowest.seconds:.2f} s, over the bound of {bound:.1f} s"


def rule_ids(body: dict) -> list[str]:
    return [c["extension"]["org.cds-service.rule"]["id"] for c in body["cards"]]


def data_quality(body: dict) -> dict | None:
    return next((c for c in body["cards"] if "org.cds-service.data-quality" in c.get("extension", {})), None)


# -- FHIR server faults ---------------------------------------------------------------------------------

# fault: (reply for every request, what the data-quality card says about each key that could not be had)
FHIR_FAULTS = {
    "slow past the deadline": (Reply(200, searchset([]), delay=3 * FHIR_DEADLINE_MS / 1000), "deadline"),
    "answering 500": (Reply(500, b"<html>Internal Server Error</html>"), "HTTP 500"),
    "not JSON": (Reply(200, b"<html><body>maintenance</body></html>"), "not JSON"),
    "truncated JSON": (
        Reply(200, b'{"resourceType": "Bundle", "type": "searchset", "entry": [{"reso'),
        "not JSON",
    ),
    "not a Bundle": (Reply(200, {"resourceType": "Basic", "id": "b"}), "not a Bundle"),
}


def fake_fhir(default: Reply | Callable[[str], Reply]) -> FakeFhirServer:
    server = FakeFhirServer()
    server.default = default
    # A real server's accept backlog, not http.server's 5: 16 fetch threads connecting at once would
    # otherwise see SYNs dropped and retried after 1 s, and every fault would look like "slow".
    server.httpd.socket.listen(128)
    return server.start()


@contextmanager
def fhir_fault(fault: str) -> Iterator[str]:
    """The fhirServer URL of a server with the fault."""
    if fault == "down":  # nothing listens there: connection refused
        yield f"http://127.0.0.1:{free_port()}/fhir"
        return
    server = fake_fhir(FHIR_FAULTS[fault][0])
    try:
        yield server.base_url
    finally:
        server.stop()


def fhir_requests(fhir_server: str) -> Callable[[int, int], Request]:
    """Alternately: the indispensable keys prefetched, the rest to fetch (expect 200 with cards); and
    nothing prefetched (expect the spec's 412)."""

    def request(c: int, i: int) -> Request:
        if (c + i) % 2 == 0:
            kind, keys = "partial", REQUIRED_KEYS
        else:
            kind, keys = "bare", ()
        body = builders.order_sign(
            WARFARIN_NSAID, prefetch_keys=keys, fhirServer=fhir_server, fhirAuthorization=AUTH
        )
        return kind, f"{c}-{i}", body

    return request


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["down", *FHIR_FAULTS])
def test_fhir_fault_under_load(tmp_path, fault):
    """Calls with the indispensable data prefetched get the rule cards plus a data-quality card naming every
    key the server could not give and why; calls without it get 412 naming the keys; all within the FHIR
    deadline plus the margin; no 5xx."""
    expected_problem = "could not connect" if fault == "down" else FHIR_FAULTS[fault][1]
    with fhir_fault(fault) as fhir_server:
        allowed = fhir_server.rsplit("/fhir", 1)[0] + "/fhir"
        with serving(
            tmp_path, CDS_FHIR_ALLOWED_SERVERS=allowed, CDS_FHIR_DEADLINE_MS=str(FHIR_DEADLINE_MS)
        ) as served:
            outcomes = drive(served.base, fhir_requests(fhir_server))
            assert_answered(outcomes, FHIR_DEADLINE_MS / 1000 + MARGIN_S, f"FHIR {fault}")
            named_fault: list[bool] = []
            for o in outcomes:
                if o.kind == "bare":
                    assert o.status == 412, (o.status, o.body)
                    assert o.body["resourceType"] == "OperationOutcome"
                    named = {e for issue in o.body["issue"] for e in issue.get("expression", [])}
                    assert {f"prefetch.{k}" for k in REQUIRED_KEYS} <= named, o.body
                    continue
                assert o.status == 200, (o.status, o.body)
                assert "ddi-warfarin-nsaid" in rule_ids(o.body)  # the rules ran on what was had
                card = data_quality(o.body)
                assert card is not None and card["indicator"] == "info", o.body
                assert set(card["extension"]["org.cds-service.data-quality"]["unavailable"]) == SKIP_KEYS
                assert "`conditions` could not be retrieved: " in card["detail"]
                # the FHIR deadline counts from the request's arrival: a call that waited for a thread
                # under this load may reach it before the server's fault shows
                assert expected_problem in card["detail"] or "deadline" in card["detail"], card["detail"]
                named_fault.append(expected_problem in card["detail"])
            assert any(named_fault), f"no call named the fault ({expected_problem})"
            log = served.decision_log()
            answered = [o.decision_id for o in outcomes]
            assert all(answered) and all(log.get(d) is not None for d in answered)  # 412s are recorded too
            assert log.verify().ok
            assert_clean_stop(served, f"FHIR {fault}")


# -- LLM backend faults ---------------------------------------------------------------------------------


class FaultyLlm:
    """An OpenAI-compatible endpoint on loopback that misbehaves as told: ``hang`` (reads the request, never
    answers until released), ``drop`` (closes the connection without a word), ``garbage`` (a different
    malformed answer each time). `stop()` takes it down; a stopped server refuses connections."""

    GARBAGE = (
        (200, b"this is not JSON"),
        (200, json.dumps({"choices": []}).encode()),
        (200, json.dumps({"choices": [{"message": {"content": "Warfarin."}}], "usage": "many"}).encode()),
        (200, json.dumps({"choices": [{"message": {"content": ["a", "b"]}}], "usage": None}).encode()),
        (
            200,
            json.dumps(
                {"choices": [{"message": {"content": "Ok."}}], "usage": {"completion_tokens": "5"}}
            ).encode(),
        ),
        (200, json.dumps(["choices"]).encode()),
        (500, b"<html>upstream error</html>"),
    )

    def __init__(self, mode: str, garbage: tuple[tuple[int, bytes], ...] = GARBAGE):
        self.mode, self.release, self.requests, self.garbage = mode, threading.Event(), 0, garbage
        counting = threading.Lock()
        llm = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with counting:
                    llm.requests += 1
                    n = llm.requests
                if llm.mode == "hang":
                    llm.release.wait(timeout=120)
                    self.close_connection = True
                    return
                if llm.mode == "drop":
                    self.close_connection = True
                    return  # no status line: the client sees the connection closed
                status, body = llm.garbage[n % len(llm.garbage)]
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.httpd.block_on_close = False
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def stop(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


def enable_free_text(data_dir: Path, llm_url: str) -> None:
    """The remote model's measured capabilities, as `cds-service model evaluate` writes them: free text
    on, so every order-sign call with a card asks the LLM for an explanation."""
    section = {"freeText": {"texts": 20, "passRate": 1.0, "specificity": 1.0}}
    (data_dir / "llm-capabilities.json").write_text(json.dumps({f"remote:default@{llm_url}": section}))


def llm_requests(c: int, i: int) -> Request:
    """Full prefetch (no FHIR access); a different age per call, so each call's prompt is new and goes
    to the backend rather than to the cache."""
    case = {**WARFARIN_NSAID, "patient": {"age": 30 + c * CALLS + i}}
    return "full", f"{c}-{i}", builders.order_sign(case)


@pytest.mark.parametrize("reply", FaultyLlm.GARBAGE, ids=range(len(FaultyLlm.GARBAGE)))
def test_a_malformed_llm_answer_is_an_llm_error_or_text_never_another_exception(reply):
    llm = FaultyLlm("garbage", garbage=(reply,))
    try:
        out = RemoteBackend(llm.url).generate([{"role": "user", "content": "x"}], max_new_tokens=16)
    except LlmError:
        return
    finally:
        llm.stop()
    assert isinstance(out.text, str)
    assert all(n is None or isinstance(n, int) for n in (out.prompt_tokens, out.new_tokens))


class BrokenBackend:
    """A backend with a defect: it raises what no backend is supposed to."""

    model_id = "broken-test-model"

    def generate(self, messages, max_new_tokens):
        raise AttributeError("a defect in the backend")


def test_a_backend_defect_is_a_failed_generation_not_a_500(make_app):
    app = make_app()
    rt = app.extensions["cds_runtime"]
    rt.reasoner = rt.registry.pipeline.reasoner = Reasoner(
        BrokenBackend(),
        LlmStore(rt.storage.engine),
        GroundingGuard(rt.content.terminology),
        budget_ms=5000,
        capabilities=Capabilities(free_text_enabled=True, free_text_reason="test"),
    )
    response = app.test_client().post(f"/cds-services/{SERVICE}", json=builders.order_sign(WARFARIN_NSAID))
    assert response.status_code == 200 and "ddi-warfarin-nsaid" in rule_ids(response.get_json())
    items = rt.storage.decision_log.get(response.headers["X-Decision-Id"])["llm"]["items"]
    assert items and all(i["guard"]["reasons"] == ["generation failed: AttributeError"] for i in items)
    assert not rt.reasoner._inflight  # nothing left waiting on a future that failed


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["hang", "drop", "garbage"])
def test_llm_fault_under_load(tmp_path, mode):
    """Rule cards never wait on the LLM: with the backend hanging, dropping connections (then gone
    altogether, as after a crash) or answering garbage, every call answers 200 with its rule card within the
    response budget plus the margin, and the service still stops cleanly on SIGTERM."""
    llm = FaultyLlm(mode)
    (tmp_path / "data").mkdir()
    enable_free_text(tmp_path / "data", llm.url)
    try:
        with serving(tmp_path, CDS_LLM=llm.url, CDS_RESPONSE_BUDGET_MS=str(RESPONSE_BUDGET_MS)) as served:
            assert (
                requests.get(f"{served.base}/readyz", timeout=5).json()["checks"]["llm"].startswith("remote:")
            )
            if mode == "drop":  # half the load against a backend that drops, half after it crashed
                first = drive(served.base, llm_requests, calls=CALLS // 2)
                llm.stop()
                second = drive(served.base, lambda c, i: llm_requests(c, i + CALLS // 2), calls=CALLS // 2)
                outcomes = first + second
            else:
                outcomes = drive(served.base, llm_requests)
            assert_answered(outcomes, RESPONSE_BUDGET_MS / 1000 + MARGIN_S, f"LLM {mode}")
            assert all(o.status == 200 and "ddi-warfarin-nsaid" in rule_ids(o.body) for o in outcomes)
            assert all("AI-generated" not in json.dumps(o.body) for o in outcomes)
            assert llm.requests > 0  # the backend was asked: the fault was in the path
            log = served.decision_log()
            items = [i for o in outcomes for i in (log.get(o.decision_id)["llm"] or {}).get("items", [])]
            assert items and all(i["status"] in ("pending", "generated", "cached") for i in items)
            assert log.verify().ok
            # A hanging backend still holds generations (one running, more queued) when SIGTERM comes.
            assert_clean_stop(served, f"LLM {mode}")
    finally:
        llm.stop()


# -- SIGTERM during load ------------------------------------------------------------------------------------


@pytest.mark.slow
def test_sigterm_during_load(tmp_path):
    """Calls in flight when SIGTERM comes complete with 200 and are in the decision log; a connection made
    after it is not served; the master exits 0 within gunicorn's graceful_timeout.

    In flight is made observable: each call fetches one key (`conditions`) from a FHIR server that answers
    after 0.5 s, at a per-call path (fhirServer .../fhir/<tag>), so a fetch the server has seen is a call
    the service was working on. Clients open a connection per call, so both workers take calls (a
    keep-alive connection stays on the worker that accepted it)."""
    seen: dict[str, float] = {}

    def slow_empty(relative: str) -> Reply:
        seen.setdefault(relative.split("/", 1)[0], time.monotonic())
        return Reply(200, searchset([]), delay=0.5)

    fhir = fake_fhir(slow_empty)
    prefetched = [k for k in builders.order_sign(WARFARIN_NSAID)["prefetch"] if k != "conditions"]

    def request(c: int, i: int) -> Request:
        tag = f"c{c}-{i}"
        url = f"{fhir.base_url}/{tag}"
        body = builders.order_sign(
            WARFARIN_NSAID, prefetch_keys=prefetched, fhirServer=url, fhirAuthorization=AUTH
        )
        return "partial", tag, body

    try:
        with serving(tmp_path, CDS_FHIR_ALLOWED_SERVERS=fhir.base_url) as served:
            outcomes: list[Outcome] = []
            load = threading.Thread(
                target=lambda: outcomes.extend(drive(served.base, request, calls=40, keep_alive=False))
            )
            load.start()
            time.sleep(2.0)  # load under way, calls in flight
            sent = time.monotonic()
            served.proc.send_signal(signal.SIGTERM)
            time.sleep(0.3)  # the workers stop accepting at once (gthread wakes its poller on SIGTERM)
            late = request(99, 0)[2]
            try:
                answer = requests.post(f"{served.base}/cds-services/{SERVICE}", json=late, timeout=30)
                late_answer: int | str = answer.status_code
            except requests.RequestException as exc:
                late_answer = type(exc).__name__
            late_seconds = time.monotonic() - sent - 0.3
            code = served.proc.wait(timeout=GRACEFUL_TIMEOUT_S + 15)
            exited = time.monotonic() - sent
            load.join(timeout=60)
            with pytest.raises(requests.ConnectionError):  # the master is gone: refused
                requests.get(f"{served.base}/healthz", timeout=5)
            output = served.log()
    finally:
        fhir.stop()

    by_tag = {o.tag: o for o in outcomes}
    in_flight = [  # the service had begun it, the client had no answer yet
        tag
        for tag, at in seen.items()
        if at < sent and (o := by_tag.get(tag)) and o.started + o.seconds > sent
    ]
    acknowledged = [o for o in outcomes if o.status == 200]
    after = [o for o in outcomes if o.started > sent + 0.3]
    print(
        f"[SIGTERM] {len(acknowledged)} calls answered 200 ({timing(acknowledged)}); {len(in_flight)} in "
        f"flight at SIGTERM; master exited {exited:.2f} s after it, code {code}; a call 0.3 s after it: "
        f"{late_answer} after {late_seconds:.2f} s; {len(after)} client calls after it, none answered"
    )
    assert len(acknowledged) >= 10 and len(in_flight) >= 3, "the load did not get going"
    assert all(o.status in (None, 200) for o in outcomes), [o.status for o in outcomes]
    unfinished = [(tag, by_tag[tag].error) for tag in in_flight if by_tag[tag].status != 200]
    assert not unfinished, f"calls in flight at SIGTERM did not complete: {unfinished}"
    assert isinstance(late_answer, str) and all(o.status is None for o in after), late_answer
    assert code == 0 and exited < GRACEFUL_TIMEOUT_S, (code, exited, output[-3000:])
    assert "Traceback" not in output, output[-3000:]
    log = served.decision_log()
    report = log.verify()
    assert report.ok, report
    lost = [o.decision_id for o in acknowledged if log.get(o.decision_id) is None]
    assert not lost, f"{len(lost)} acknowledged decisions are not in the log"
