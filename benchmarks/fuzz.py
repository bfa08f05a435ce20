"""Benchmark: a mutation fuzzer against a live `cds-service serve`, over loopback.

Starts the service (gunicorn, CDS_LLM=off, a temporary data dir, FHIR fetching allowlisted to a closed
local port so the fetch and paging paths run offline) and sends --requests fuzzed requests built by
tests/fuzz_strategies.py, the same valid bases and the same edits as the hypothesis tests, drawn from
`random.Random` seeded with (--seed, i): request i can be rebuilt on its own (--show i). Then raw-socket
cases for the HTTP parser (what comes back: OperationOutcome, HTML or nothing), and a slow-client check.
Finally each distinct 5xx is replayed alone to name its cause from the server's traceback and to find
the smallest request (and the single edit) that shows it; each reproducer body is written to --out.

Prints requests, status classes, timeouts (hangs), connection errors, distinct 5xx causes (exception type
and innermost frame of ours, read from the server's stderr) with a reproducer each, answers that break
the error shape, latency and requests/s.

    .venv/bin/python benchmarks/fuzz.py [--requests 10000] [--seed 1] [--time-cap 900] [--concurrency 4]
        [--workers 1] [--threads 4] [--timeout 15] [--out DIR] [--json]
    .venv/bin/python benchmarks/fuzz.py --show 1234 [--seed 1] > body.json   # request 1234, edits on stderr
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import random
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # the strategies live beside the tests that use them

import fuzz_strategies as fz  # noqa: E402

from cds_service.runtime import Content  # noqa: E402
from cds_service.settings import Settings  # noqa: E402

CLOSED_FHIR = "http://127.0.0.1:9/fhir"
ODD_ROUTES = (
    "/cds-services/no-such-service",
    "/cds-services/..%2f..%2fetc%2fpasswd",
    "/cds-services/" + "a" * 3000,
    "/cds-services/medication-order-check/feedback/extra",
    "/cds-services/%00",
    "/cds-services/medication-order-check%20",
    "/cds-services/m%C3%A9dication",
)


# -- the requests --------------------------------------------------------------------------------------


@dataclass
class Corpus:
    hooks: list[fz.Base]
    orders: list[fz.Base]
    feedback: list[fz.Base]

    @classmethod
    def load(cls) -> "Corpus":
        hooks = fz.hook_bases(Content.load(Settings.load({"llm": "off"})).services)
        orders = [b for b in hooks if b.body.get("hook") in ("order-select", "order-sign")]
        return cls(hooks, orders, fz.feedback_bases())


def make_request(corpus: Corpus, seed: int, i: int) -> fz.FuzzRequest:
    """Request i of the run, from its own generator: the same (seed, i) gives the same request."""
    rng = random.Random(seed * 1_000_003 + i)
    ch = fz.RandomChooser(rng)
    roll = rng.random()
    if roll < 0.04:  # unchanged: the service must answer these 200
        return fz.FuzzRequest(ch.pick(corpus.hooks))
    if roll < 0.12:
        return fz.generate(ch, corpus.feedback, limits=fz.BENCHMARK_LIMITS, text_edit_percent=3)
    if roll < 0.14:  # odd URLs: routing and the 404 path
        base = ch.pick(corpus.hooks)
        return fz.FuzzRequest(fz.Base(f"route {base.name}", ch.pick(ODD_ROUTES), base.body))
    area = ch.pick(("envelope", "context", "prefetch", "prefetch", "draftOrders", "draftOrders", "anywhere"))
    return fz.generate(
        ch,
        corpus.orders if area == "draftOrders" else corpus.hooks,
        area=area,
        limits=fz.BENCHMARK_LIMITS,
        text_edit_percent=15 if area == "envelope" else 2,
        content_type_percent=3,
    )


# -- the server ----------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`cds-service serve` in a child process; its stderr (tracebacks) goes to a file we read."""

    def __init__(self, workers: int, threads: int, workdir: Path):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log_path = workdir / "server.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("CDS_")}
        env.update(
            CDS_DATA_DIR=str(workdir / "data"),
            CDS_LLM="off",
            CDS_FHIR_ALLOWED_SERVERS=CLOSED_FHIR,
            CDS_RATE_LIMIT_PER_MINUTE="0",  # one fuzzer is one client: per-client limits would answer 429
        )
        exe = Path(sys.executable).with_name("cds-service")
        self.log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [str(exe), "serve", "--host", "127.0.0.1", "--port", str(self.port)]
            + ["--workers", str(workers), "--threads", str(threads)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=self.log,
        )

    def wait_ready(self, seconds: float = 120) -> None:
        deadline = time.time() + seconds
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"the server exited ({self.proc.returncode}); see {self.log_path}")
            try:
                if requests.get(f"{self.base}/readyz", timeout=1).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.2)
        raise SystemExit(f"the server was not ready within {seconds} s; see {self.log_path}")

    def log_text(self, start: int = 0) -> str:
        self.log.flush()
        with self.log_path.open("rb") as f:
            f.seek(start)
            return f.read().decode("utf-8", "replace")

    def log_size(self) -> int:
        return self.log_path.stat().st_size

    def stop(self) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        return self.proc.returncode


# -- the run -------------------------------------------------------------------------------------------


@dataclass
class Tally:
    statuses: collections.Counter = field(default_factory=collections.Counter)
    timeouts: list[int] = field(default_factory=list)
    connection_errors: list[tuple[int, int | None, str]] = field(default_factory=list)  # i, previous, why
    server_errors: dict[str, list[tuple[int, int]]] = field(default_factory=dict)  # signature -> (size, i)
    shape: dict[str, list[int]] = field(default_factory=dict)  # broken error shape -> request indexes
    latencies: list[float] = field(default_factory=list)
    slowest: list[tuple[float, int]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def send(session: requests.Session, base: str, request: fz.FuzzRequest, timeout: float):
    headers = {"Content-Type": request.content_type} if request.content_type else {}
    return session.post(
        base + request.base.url, data=request.encoded(), headers=headers, timeout=(5, timeout)
    )


def signature(response) -> str:
    """How a 5xx presents itself (the server names the exception type in its diagnostics)."""
    try:
        return f"{response.status_code} {response.json()['issue'][0]['diagnostics'][:80]}"
    except (ValueError, KeyError, IndexError, TypeError):
        return f"{response.status_code} {response.text[:80]!r}"


def fuzz_run(server: Server, corpus: Corpus, args) -> tuple[Tally, int, float]:
    tally = Tally()
    local = threading.local()
    in_flight = threading.BoundedSemaphore(args.concurrency * 2)
    started = time.monotonic()

    def one(i: int) -> None:
        try:
            request = make_request(corpus, args.seed, i)
            session = getattr(local, "session", None) or requests.Session()
            local.session = session
            t0 = time.monotonic()
            try:
                response = send(session, server.base, request, args.timeout)
            except requests.Timeout:
                with tally.lock:
                    tally.timeouts.append(i)
                return
            except requests.ConnectionError as exc:
                # the previous request on the same connection may be what left it closed
                previous, local.session, local.previous = getattr(local, "previous", None), None, None
                why = str(exc)[:160]
                with tally.lock:
                    tally.connection_errors.append((i, previous, why))
                return
            local.previous = i
            elapsed = time.monotonic() - t0
            problems = fz.answer_problems(
                request.base.kind,
                response.status_code,
                response.headers.get("Content-Type", ""),
                response.content,
            )
            with tally.lock:
                tally.statuses[response.status_code] += 1
                tally.latencies.append(elapsed)
                tally.slowest = sorted([*tally.slowest, (elapsed, i)], reverse=True)[:5]
                if response.status_code >= 500:
                    tally.server_errors.setdefault(signature(response), []).append(
                        (len(request.encoded()), i)
                    )
                elif problems:
                    tally.shape.setdefault(problems[0], []).append(i)
        finally:
            in_flight.release()

    sent = 0
    with ThreadPoolExecutor(max_workers=args.concurrency) as pool:
        for i in range(args.requests):
            if time.monotonic() - started > args.time_cap:
                break
            if server.proc.poll() is not None:
                print(f"the server exited ({server.proc.returncode}) after {i} requests", file=sys.stderr)
                break
            in_flight.acquire()
            pool.submit(one, i)
            sent += 1
            if args.progress and sent % args.progress == 0:
                print(f"  {sent} requests, {time.monotonic() - started:.0f} s", file=sys.stderr)
    return tally, sent, time.monotonic() - started


# -- naming each 5xx: replay alone, read the traceback, keep the smallest ----------------------------------


def replay_cause(server: Server, request: fz.FuzzRequest, timeout: float) -> tuple[int | None, str | None]:
    """Send one request alone; its status and the cause of the first traceback it logged."""
    mark = server.log_size()
    try:
        status = send(requests.Session(), server.base, request, timeout).status_code
    except requests.RequestException:
        status = None
    for _ in range(10):  # the worker writes its log record after answering
        causes = fz.causes_in_log(server.log_text(mark))
        if causes:
            return status, causes[0]
        time.sleep(0.05)
    return status, None


def triage(
    server: Server, corpus: Corpus, tally: Tally, logged: collections.Counter, args
) -> tuple[dict, list]:
    """cause -> {request: the smallest found (down to its single edit when one edit shows it), index}.
    Replays the 5xx requests alone, smallest first, taking each 5xx signature in turn, until every cause
    in the server log is named or --replays is spent. Also returns the requests that did not give a 5xx
    when sent alone (a cause that needs concurrency, or a state the run had left)."""
    groups = [sorted(hits) for hits in tally.server_errors.values()]
    order = [g[k] for k in range(max(map(len, groups), default=0)) for g in groups if k < len(g)]
    found: dict[str, dict] = {}
    not_alone: list[tuple[int, int | None]] = []
    for _size, i in order[: args.replays]:
        if logged and set(logged) <= set(found):
            break
        request = make_request(corpus, args.seed, i)
        status, cause = replay_cause(server, request, args.timeout)
        if status is None or status < 500:
            not_alone.append((i, status))
            continue
        cause = cause or f"{status} with no traceback logged"
        best = found.get(cause)
        if best is None or len(request.encoded()) < len(best["request"].encoded()):
            found[cause] = {"request": request, "index": i}
    for cause, entry in found.items():
        request = entry["request"]
        if len(request.mutations) > 1:
            for j in range(len(request.mutations)):
                single = request.without([j])
                if single.applies() and replay_cause(server, single, args.timeout)[1] == cause:
                    entry["request"] = single
                    break
    return found, not_alone


# -- the HTTP parser, over raw sockets -------------------------------------------------------------------

_HOOK = b"POST /cds-services/medication-order-check HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
RAW_CASES: list[tuple[str, bytes]] = [
    ("bad request line", b"GARBAGE\r\n\r\n"),
    ("method with spaces", b"G E T /healthz HTTP/1.1\r\nHost: x\r\n\r\n"),
    ("HTTP/3.0 request line", b"GET /healthz HTTP/3.0\r\nHost: x\r\n\r\n"),
    (
        "URL of 10,000 bytes (414)",
        b"GET /" + b"a" * 10_000 + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    ),
    (
        "header of 20,000 bytes (431)",
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20_000 + b"\r\n\r\n",
    ),
    (
        "200 headers",
        b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: 1\r\n" % n for n in range(200)) + b"\r\n",
    ),
    ("header without a colon", b"GET /healthz HTTP/1.1\r\nHost: x\r\nNoColon\r\nConnection: close\r\n\r\n"),
    (
        "NUL in a header value",
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\nConnection: close\r\n\r\n",
    ),
    ("folded header line", b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: a\r\n b\r\nConnection: close\r\n\r\n"),
    (
        "bad chunk size",
        _HOOK + b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\nzz\r\n{}\r\n0\r\n\r\n",
    ),
    (
        "chunk size overflow",
        _HOOK
        + b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        + b"f" * 24
        + b"\r\n{}\r\n0\r\n\r\n",
    ),
    (
        "chunk without its CRLF",
        _HOOK + b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n2\r\n{}XX0\r\n\r\n",
    ),
    (
        "Content-Length and chunked",
        _HOOK
        + b"Content-Length: 4\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
    ),
    ("Transfer-Encoding: gzip", _HOOK + b"Transfer-Encoding: gzip\r\nConnection: close\r\n\r\n{}"),
    ("Content-Length: abc", _HOOK + b"Content-Length: abc\r\nConnection: close\r\n\r\n{}"),
    ("Content-Length: -1", _HOOK + b"Content-Length: -1\r\nConnection: close\r\n\r\n{}"),
    ("two Content-Lengths", _HOOK + b"Content-Length: 2\r\nContent-Length: 3\r\nConnection: close\r\n\r\n{}"),
    ("body shorter than Content-Length", _HOOK + b"Content-Length: 100\r\nConnection: close\r\n\r\n{}"),
    (
        "Expect: 100-continue",
        _HOOK + b"Expect: 100-continue\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}",
    ),
    ("Expect: 200-ok", _HOOK + b"Expect: 200-ok\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}"),
    (
        "Expect: 100-continue, x",
        _HOOK + b"Expect: 100-continue, x\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}",
    ),
    (
        "Expect of 5,000 bytes",
        _HOOK + b"Expect: " + b"x" * 5_000 + b"\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}",
    ),
    (
        "bad percent-encoding in the path",
        b"GET /cds-services/%zz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    ),
    ("byte 0xFF in the path", b"GET /cds-services/\xff HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
    ("HTTP/1.0 without Host", b"GET /healthz HTTP/1.0\r\n\r\n"),
]


def describe_answer(data: bytes) -> dict:
    if not data:
        return {"status": None, "shape": "nothing (connection closed or timed out)"}
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ", 2)
    status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else None
    if status == 100:  # the interim answer to Expect: 100-continue; the real one follows
        return describe_answer(body)
    ctype = next(
        (h.split(b":", 1)[1].strip() for h in lines[1:] if h.lower().startswith(b"content-type:")), b""
    )
    try:
        parsed = json.loads(body) if body.strip() else None
    except ValueError:
        parsed = None
    if isinstance(parsed, dict) and parsed.get("resourceType") == "OperationOutcome":
        shape = "OperationOutcome"
    elif b"<html" in body.lower() or b"text/html" in ctype.lower():
        shape = "HTML"
    elif isinstance(parsed, dict):
        shape = "JSON" if status and status < 400 else "JSON (not an OperationOutcome)"
    else:
        shape = "empty" if not body.strip() else f"other ({ctype.decode('latin-1') or 'no content type'})"
    return {"status": status, "shape": shape}


def raw_exchange(port: int, data: bytes, timeout: float = 5.0, half_close: bool = True) -> bytes:
    chunks = []
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        try:
            sock.sendall(data)
            if half_close:
                sock.shutdown(socket.SHUT_WR)
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except (TimeoutError, ConnectionError):
            pass
    return b"".join(chunks)


def raw_cases(server: Server) -> list[dict]:
    out = []
    for name, data in RAW_CASES:
        mark = server.log_size()
        t0 = time.monotonic()
        answer = describe_answer(raw_exchange(server.port, data))
        answer.update(case=name, seconds=round(time.monotonic() - t0, 2))
        time.sleep(0.05)
        causes = fz.causes_in_log(server.log_text(mark))
        if causes:
            answer["cause"] = causes[0]
        out.append(answer)
    return out


def slow_clients(server: Server, threads: int) -> dict:
    """Connections that send half their headers and wait: is /healthz still answered?"""
    hanging = []
    try:
        for _ in range(threads + 2):
            sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
            sock.sendall(b"POST /cds-services/medication-order-check HTTP/1.1\r\nHost: x\r\nContent-Le")
            hanging.append(sock)
        time.sleep(0.5)
        t0 = time.monotonic()
        try:
            status = requests.get(f"{server.base}/healthz", timeout=10).status_code
        except requests.RequestException as exc:
            status = type(exc).__name__
        return {
            "half-open connections": len(hanging),
            "healthz": status,
            "seconds": round(time.monotonic() - t0, 2),
        }
    finally:
        for sock in hanging:
            sock.close()


# -- report --------------------------------------------------------------------------------------------


def reproducer(server_base: str, request: fz.FuzzRequest, path: Path) -> str:
    path.write_bytes(request.encoded())
    ctype = f" -H {shlex.quote('Content-Type: ' + request.content_type)}" if request.content_type else ""
    return f"curl -s -X POST{ctype} --data-binary @{path} {server_base}{request.base.url}"


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--time-cap", type=float, default=900, help="seconds; stops sending after this")
    parser.add_argument("--concurrency", type=int, default=4, help="client connections")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--timeout", type=float, default=15, help="seconds to wait for one answer")
    parser.add_argument("--replays", type=int, default=200, help="most 5xx requests replayed alone")
    parser.add_argument("--out", type=Path, help="folder for reproducer bodies and the server log")
    parser.add_argument("--progress", type=int, default=0, help="print progress every N requests")
    parser.add_argument("--no-raw", action="store_true", help="skip the raw-socket cases")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--show", type=int, help="print request N (body on stdout, edits on stderr) and exit")
    args = parser.parse_args(argv)

    corpus = Corpus.load()
    if args.show is not None:
        request = make_request(corpus, args.seed, args.show)
        print(
            f"{request.describe()}\nPOST {request.base.url}  Content-Type: {request.content_type}",
            file=sys.stderr,
        )
        sys.stdout.buffer.write(request.encoded())
        return {}

    out = args.out or Path(tempfile.mkdtemp(prefix="cds-fuzz-"))
    out.mkdir(parents=True, exist_ok=True)
    server = Server(args.workers, args.threads, out)
    try:
        server.wait_ready()
        tally, sent, elapsed = fuzz_run(server, corpus, args)
        logged = collections.Counter(fz.causes_in_log(server.log_text()))
        worker_timeouts = server.log_text().count("WORKER TIMEOUT")
        causes, not_alone = triage(server, corpus, tally, logged, args)
        raw = [] if args.no_raw else raw_cases(server)
        slow = {} if args.no_raw else slow_clients(server, args.threads)
        try:
            alive = requests.get(f"{server.base}/healthz", timeout=10).status_code == 200
        except requests.RequestException:
            alive = False
        base = server.base
    finally:
        exit_code = server.stop()

    classes = collections.Counter(f"{s // 100}xx" for s in tally.statuses.elements())
    figures = {
        "requests": sent,
        "answered": sum(tally.statuses.values()),
        "seconds": round(elapsed, 1),
        "requests_per_second": round(sent / elapsed, 1) if elapsed else 0,
        "status_classes": dict(sorted(classes.items())),
        "statuses": dict(sorted(tally.statuses.items())),
        "timeouts": len(tally.timeouts),
        "connection_errors": len(tally.connection_errors),
        "5xx": classes.get("5xx", 0),
        "tracebacks_logged": dict(logged),
        "worker_timeouts": worker_timeouts,
        "distinct_5xx_causes": {
            c: {
                "index": e["index"],
                "edits": e["request"].describe(),
                "curl": reproducer(base, e["request"], out / f"cause-{n}.json"),
            }
            for n, (c, e) in enumerate(causes.items(), 1)
        },
        "5xx_not_reproduced_alone": [{"index": i, "status": st} for i, st in not_alone],
        "logged_causes_not_reproduced_alone": sorted(set(logged) - set(causes)),
        "error_shape_problems": {k: {"count": len(v), "first": v[0]} for k, v in tally.shape.items()},
        "latency_ms": {
            "median": round(statistics.median(tally.latencies) * 1000, 1) if tally.latencies else 0,
            "p99": round(percentile(tally.latencies, 0.99) * 1000, 1),
            "max": round(max(tally.latencies, default=0) * 1000, 1),
        },
        "slowest": [{"seconds": round(t, 2), "index": i} for t, i in tally.slowest],
        "timed_out_requests": tally.timeouts[:10],
        "connection_error_requests": [
            {"index": i, "previous_on_connection": prev, "error": why}
            for i, prev, why in tally.connection_errors[:10]
        ],
        "raw_socket": raw,
        "slow_clients": slow,
        "alive_at_end": alive,
        "server_exit_code": exit_code,
        "seed": args.seed,
        "out": str(out),
    }
    if args.json:
        print(json.dumps(figures, indent=2, default=str))
    else:
        print_report(figures, corpus, args.seed)
    return figures


def print_report(f: dict, corpus: Corpus, seed: int) -> None:
    print(
        f"requests: {f['requests']} in {f['seconds']} s ({f['requests_per_second']} requests/s), seed {seed}"
    )
    print(f"status classes: {f['status_classes']}  (statuses: {f['statuses']})")
    print(
        f"timeouts (no answer in time): {f['timeouts']}; connection errors: {f['connection_errors']}; "
        f"gunicorn worker timeouts: {f['worker_timeouts']}"
    )
    lat = f["latency_ms"]
    print(f"latency: median {lat['median']} ms, p99 {lat['p99']} ms, max {lat['max']} ms")
    for s in f["slowest"]:
        edits = make_request(corpus, seed, s["index"]).describe()[:160]
        print(f"  slow: {s['seconds']} s  #{s['index']}: {edits}")
    for i in f["timed_out_requests"]:
        print(f"  timed out #{i}: {make_request(corpus, seed, i).describe()[:160]}")
    for entry in f["connection_error_requests"]:
        request = make_request(corpus, seed, entry["index"])
        size = len(request.encoded())
        limit = Settings.model_fields["max_request_bytes"].default  # the server runs with the default
        note = " (over the body limit: a 413 before the upload ends resets it)" if size > limit else ""
        print(f"  connection error #{entry['index']}, {size:,} bytes{note}: {entry['error']}")
        print(f"      request: {request.describe()[:140]}")
        if entry["previous_on_connection"] is not None:
            before = entry["previous_on_connection"]
            edits = make_request(corpus, seed, before).describe()[:140]
            print(f"      after #{before} on that connection: {edits}")
    print(f"5xx: {f['5xx']}; tracebacks in the server log: {sum(f['tracebacks_logged'].values())}")
    for cause, n in sorted(f["tracebacks_logged"].items(), key=lambda kv: -kv[1]):
        print(f"  {n:5d}  {cause}")
    print(f"distinct 5xx causes (replayed alone): {len(f['distinct_5xx_causes'])}")
    for cause, entry in f["distinct_5xx_causes"].items():
        print(f"  - {cause}\n      #{entry['index']}: {entry['edits'][:300]}\n      {entry['curl']}")
    if f["logged_causes_not_reproduced_alone"]:
        alone = f["5xx_not_reproduced_alone"]
        print(f"logged causes no single request reproduced ({len(alone)} replays answered < 500):")
        for cause in f["logged_causes_not_reproduced_alone"]:
            print(f"  - {cause}")
        for entry in alone[:3]:
            edits = make_request(corpus, seed, entry["index"]).describe()[:160]
            print(f"      e.g. #{entry['index']} ({entry['status']} alone): {edits}")
    if f["error_shape_problems"]:
        print("answers breaking the error shape:")
        for problem, entry in f["error_shape_problems"].items():
            print(f"  {entry['count']:5d}  {problem} (e.g. #{entry['first']})")
    if f["raw_socket"]:
        print("HTTP parser (raw sockets):")
        for r in f["raw_socket"]:
            extra = f"  [{r['cause']}]" if r.get("cause") else ""
            print(f"  {r['case']:<34} {r['status']!s:>5}  {r['shape']}  {r['seconds']} s{extra}")
    if f["slow_clients"]:
        s = f["slow_clients"]
        print(
            f"slow clients: {s['half-open connections']} half-sent requests, /healthz -> {s['healthz']} "
            f"in {s['seconds']} s"
        )
    print(f"server alive at the end: {f['alive_at_end']}; exit code {f['server_exit_code']}")
    print(f"server log and reproducer bodies: {f['out']}")


if __name__ == "__main__":
    main()
