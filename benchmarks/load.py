"""Load benchmark: `cds-service serve` against the bare web stack it runs on (the floor), in one run.

Loopback only, bounded in count and time. Each target is started as a subprocess on a free port, loaded,
and stopped before the next (never two at once):
  floor  Flask + gunicorn gthread, the same workers x threads, a view that parses the JSON body and
         answers no cards (benchmarks/load_floor.py): what the web stack itself costs;
  rules  `cds-service serve` (CDS_LLM=off), a fresh data directory, rate limit off;
  llm    the same with CDS_LLM=embedded, when `cds-service model prepare` has been run (else skipped).
Workloads, each with a complete prefetch built from a sample chart (fhir/samples) the way the sandbox EHR
prefetches (every template rendered and searched): order-sign (medication-order-check, draft orders)
and patient-view (patient-chart-review); with `--charts N` one body per sample chart, sent in turn (the
13 Synthea charts come first, then 24 small hand-made ones). Each at 1, 4 and 16 concurrent keep-alive
clients for a fixed time after a warm-up. The clients run in their own process
(benchmarks/load_generator.py, aiohttp).

Prints throughput, p50/p95/p99, the ratio to the floor, the generator's and the server's CPU, peak RSS
of the master and the workers, and the targets of issue 13 as met / not met.

    .venv/bin/python benchmarks/load.py [--duration 10] [--clients 1,4,16] [--workers 1,2] [--threads 4]
        [--workloads order-sign,patient-view] [--targets floor,rules,llm] [--charts N] [--serve-arg=--preload]
        [--json out.json]

`--fetch-path` measures the other way data arrive: every service that declares prefetch is called
WITHOUT prefetch against Medplum's in-memory FHIR router (tests/medplum, `make medplum`) loaded with the
sample charts; it reports per service the `prefetch` stage (Server-Timing) and the whole call, and times
each prefetch query directly against Medplum to show which dominate.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import date
from importlib.metadata import version
from pathlib import Path
from urllib.parse import parse_qsl

import psutil
import requests

ROOT = Path(__file__).resolve().parents[1]
HERE = ROOT / "benchmarks"
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # the Medplum router helper lives beside the tests that use it

from medplum_router import MedplumRouter, unavailable_reason  # noqa: E402

from cds_service.clinical.rule_cases import USER, CaseBuilder  # noqa: E402
from cds_service.ehr.prefetch import token_root  # noqa: E402
from cds_service.reasoning.model_cache import default_model_dir  # noqa: E402
from cds_service.runtime import Content  # noqa: E402
from cds_service.sandbox.fhir_api import searchset  # noqa: E402
from cds_service.sandbox.samples import SampleChart, sample_charts, synthea_charts  # noqa: E402
from cds_service.sandbox.store import SandboxStore  # noqa: E402
from cds_service.settings import Settings  # noqa: E402

WORKLOADS = {"order-sign": "medication-order-check", "patient-view": "patient-chart-review"}
TARGETS = ("floor", "rules", "llm")
TARGET_NAMES = {"floor": "floor", "rules": "serve rules-only", "llm": "serve LLM on"}
# Takes warfarin, digoxin, verapamil and naproxen: the ibuprofen order draws cards (they are rendered).
DEFAULT_PATIENT = "Mafalda_Turcotte"
DRAFTS = ["Ibuprofen 400 MG Oral Tablet"]
PLACEHOLDER = "00000000-0000-4000-8000-000000000000"  # hookInstance, made unique per request
PREFETCH_BASE = "https://ehr.example.org/fhir"  # fullUrl of prefetched entries only; never called
BUDGET_MS = Settings.model_fields["response_budget_ms"].default
TARGET_RATIO, TARGET_TAIL = 0.3, 4.0  # issue 13, rules only at 16 clients
FETCH_TOKEN = "load-benchmark-token"  # Medplum's router checks none; never logged


# --- machine and processes ------------------------------------------------------------------------


def machine_info() -> dict:
    cpu = platform.processor() or "?"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            cpu = next((line.split(":", 1)[1].strip() for line in info if line.startswith("model name")), cpu)
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memoryGiB": round(psutil.virtual_memory().total / 2**30, 1),
        "os": platform.platform(),
        "python": platform.python_version(),
        "versions": {name: version(name) for name in ("gunicorn", "flask", "aiohttp")},
        "loadAverage": [round(x, 2) for x in os.getloadavg()],
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _mb(n: int) -> float:
    return round(n / 2**20, 1)


class Target:
    """One server under test, started by us: a gunicorn master (the process started) and its workers."""

    def __init__(self, kind: str, argv: list[str], env: dict, log_path: Path, port: int):
        self.kind, self.port, self.log_path = kind, port, log_path
        self.base = f"http://127.0.0.1:{port}"
        self._log = log_path.open("w")
        self.process = subprocess.Popen(
            argv, env=env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.peak = {"masterMB": 0.0, "workerMB": 0.0, "workersTotalMB": 0.0, "workers": 0}

    def wait_ready(self, seconds: float = 180) -> None:
        deadline = time.time() + seconds
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.kind} exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                if requests.get(f"{self.base}/readyz", timeout=2).status_code == 200:
                    return
            except requests.RequestException:  # not listening yet, or still loading
                pass
            time.sleep(0.2)
        raise RuntimeError(f"{self.kind} not ready within {seconds:.0f} s:\n{self.log_tail()}")

    def _processes(self) -> tuple[psutil.Process | None, list[psutil.Process]]:
        try:
            master = psutil.Process(self.process.pid)
            return master, master.children(recursive=False)
        except psutil.NoSuchProcess:
            return None, []

    def sample_memory(self) -> None:
        master, workers = self._processes()
        if master is None:
            return
        rss = []
        for worker in workers:
            try:
                if "cds_service.audit.log_writer" in " ".join(worker.cmdline()):  # not a gunicorn worker
                    self.peak["writerMB"] = max(self.peak.get("writerMB", 0.0), _mb(worker.memory_info().rss))
                    continue
                rss.append(worker.memory_info().rss)
            except psutil.NoSuchProcess:
                pass
        try:
            self.peak["masterMB"] = max(self.peak["masterMB"], _mb(master.memory_info().rss))
        except psutil.NoSuchProcess:
            return
        if rss:
            self.peak["workerMB"] = max(self.peak["workerMB"], _mb(max(rss)))
            self.peak["workersTotalMB"] = max(self.peak["workersTotalMB"], _mb(sum(rss)))
            self.peak["workers"] = max(self.peak["workers"], len(rss))

    def cpu_seconds(self) -> float:
        """CPU time of the master and its workers so far (a worker restarted meanwhile is lost: rare)."""
        master, workers = self._processes()
        total = 0.0
        for p in ([master] if master else []) + workers:
            try:
                times = p.cpu_times()
                total += times.user + times.system
            except psutil.NoSuchProcess:
                pass
        return total

    def log_tail(self, chars: int = 3000) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")[-chars:]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)  # gunicorn: graceful, stops its workers
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                _, workers = self._processes()
                for p in workers:
                    p.kill()
                self.process.kill()
                self.process.wait()
        self._log.close()


CDS_SERVICE = Path(sys.executable).with_name("cds-service")


def serve_env(data_dir: Path, llm: str, options) -> dict:
    """The developer's CDS_* settings left out (figures must not depend on them), --serve-env added."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CDS_")}
    # The per-address rate limit (600/min by default) would answer 429 to a load generator.
    env.update(CDS_DATA_DIR=str(data_dir), CDS_LLM=llm, CDS_RATE_LIMIT_PER_MINUTE="0")
    if llm == "embedded" and options.llm_model_dir:
        env["CDS_MODEL_DIR"] = str(options.llm_model_dir)
    for pair in options.serve_env:
        key, _, value = pair.partition("=")
        env[key] = value
    return env


def start_target(kind: str, workers: int, threads: int, options, workdir: Path, **env_extra) -> Target:
    port = free_port()
    log_path = workdir / f"{kind}-{workers}x{threads}.log"
    if kind == "floor":
        argv = [
            sys.executable,
            "-m",
            "gunicorn",
            "--chdir",
            str(HERE),
            "--bind",
            f"127.0.0.1:{port}",
            "--workers",
            str(workers),
            "--threads",
            str(threads),
            "--worker-class",
            "gthread",
            "--keep-alive",
            "5",  # as serve sets it (cds_service/protocol/wsgi_server.py)
            "--timeout",
            "60",
            "load_floor:app",
        ]
        env = {k: v for k, v in os.environ.items() if not k.startswith("CDS_")}
    else:
        data_dir = Path(tempfile.mkdtemp(prefix=f"{kind}-data-", dir=workdir))
        argv = [str(CDS_SERVICE), "serve", "--host", "127.0.0.1", "--port", str(port)]
        argv += ["--workers", str(workers), "--threads", str(threads), *options.serve_arg]
        env = serve_env(data_dir, "embedded" if kind == "llm" else "off", options)
        env.update(env_extra)
    return Target(kind, argv, env, log_path, port)


def model_ready(options) -> tuple[bool, str]:
    model_dir = Path(options.llm_model_dir) if options.llm_model_dir else default_model_dir("int8")
    if (model_dir / "manifest.json").is_file() and (model_dir / "openvino_model.xml").is_file():
        return True, str(model_dir)
    return False, f"no prepared model in {model_dir} (run `cds-service model prepare`, or --llm-model-dir)"


# --- one measured stage ---------------------------------------------------------------------------


def percentile(sorted_values: list[float], p: float) -> float | None:
    """Nearest-rank percentile of an ascending list."""
    if not sorted_values:
        return None
    rank = max(1, -(-len(sorted_values) * p // 100))
    return sorted_values[int(rank) - 1]


def summary(values: list[float]) -> dict:
    ordered = sorted(values)
    figures = {f"p{p}": _round(percentile(ordered, p)) for p in (50, 95, 99)}
    return figures | {"max": _round(max(values or [0]))}


def _round(x: float | None, digits: int = 1) -> float | None:
    return None if x is None else round(x, digits)


def run_stage(
    target: Target,
    path: str,
    bodies: list[Path],
    clients: int,
    workdir: Path,
    *,
    warmup: float,
    duration: float | None = None,
    max_requests: int | None = None,
) -> dict:
    """The generator process against `target`; samples the target's memory and CPU meanwhile."""
    out, err = workdir / "generator.json", workdir / "generator.err"
    spec = {
        "url": target.base + path,
        "bodies": [str(b) for b in bodies],
        "clients": clients,
        "warmup_s": warmup,
        "duration_s": duration,
        "max_requests": max_requests,
        "placeholder": PLACEHOLDER,
    }
    limit = warmup + (duration or 0) + (600 if max_requests else 90)
    with out.open("w") as stdout, err.open("w") as stderr:
        generator = subprocess.Popen(
            [sys.executable, str(HERE / "load_generator.py")],
            stdin=subprocess.PIPE,
            stdout=stdout,
            stderr=stderr,
            text=True,
        )
        generator.stdin.write(json.dumps(spec))
        generator.stdin.close()
        start = time.perf_counter()
        cpu_at, cpu_from = None, None
        while generator.poll() is None:
            target.sample_memory()
            if cpu_at is None and time.perf_counter() - start >= warmup:
                cpu_at, cpu_from = time.perf_counter(), target.cpu_seconds()
            if time.perf_counter() - start > limit:
                generator.kill()
                generator.wait()
                raise RuntimeError(f"the load generator ran past {limit:.0f} s")
            time.sleep(0.2)
        if cpu_at is None:
            cpu_at, cpu_from = start, 0.0
        server_cpu = 100 * (target.cpu_seconds() - cpu_from) / max(time.perf_counter() - cpu_at, 1e-9)
    if generator.returncode != 0:
        raise RuntimeError(f"the load generator failed: {err.read_text()[-2000:]}")
    result = json.loads(out.read_text())
    latencies = result.pop("latencies_ms")
    ok = len(latencies)
    return {
        "requests": result["requests"],
        "errors": sum(result["errors"].values()),
        "errorKinds": result["errors"],
        "errorSamples": result["error_samples"],
        "throughput": round(ok / result["elapsed_s"], 1) if result["elapsed_s"] > 0 else 0.0,
        **summary(latencies),
        "generatorCpuPct": round(result["cpu_pct"]),
        "serverCpuPct": round(server_cpu),
        "latencies": latencies,
        "serverTiming": result["server_timing"],
    }


# --- workloads: hook bodies with a complete prefetch -------------------------------------------------


def chart_named(charts: list[SampleChart], name: str) -> SampleChart:
    for chart in charts:
        if chart.patient_id == name or chart.source.startswith(name):
            return chart
    raise SystemExit(f"no sample chart named {name!r} (a file name prefix in fhir/samples/synthea-r4)")


def complete_prefetch(service, store: SandboxStore, context: dict) -> tuple[dict, dict[str, int]]:
    """What the sandbox EHR would send: each template rendered and run against the sample charts."""
    root, prefetch, counts = token_root(context), {}, {}
    for template in service.templates:
        url = template.render(root, {})
        if url is None:
            continue
        path, _, query = url.partition("?")
        if template.is_read:
            resource_type, _, resource_id = path.partition("/")
            prefetch[template.key] = store.read(resource_type, resource_id)
            counts[template.key] = int(prefetch[template.key] is not None)
        else:
            params = parse_qsl(query, keep_blank_values=True)
            result = store.search(path, params, base=PREFETCH_BASE)
            if result.next_offset is not None:
                print(f"  warning: prefetch key {template.key} holds only the first {result.count} matches")
            prefetch[template.key] = searchset(result, params, PREFETCH_BASE)
            counts[template.key] = len(result.matches) + len(result.included)
    return prefetch, counts


def hook_body(service, patient_id: str, today: date, prefetch: dict | None = None, **envelope) -> dict:
    context: dict = {"userId": USER, "patientId": patient_id}
    if service.hook in ("order-sign", "order-select"):
        _, drafts = CaseBuilder(today, patient_id=patient_id).build({"draftOrders": DRAFTS})
        context["draftOrders"] = {
            "resourceType": "Bundle",
            "type": "collection",
            "entry": [{"resource": d} for d in drafts],
        }
        if service.hook == "order-select":
            context["selections"] = [f"{drafts[0]['resourceType']}/{drafts[0]['id']}"]
    body = {"hook": service.hook, "hookInstance": PLACEHOLDER, "context": context, **envelope}
    if prefetch is not None:
        body["prefetch"] = prefetch
    return body


def build_workloads(names: list[str], content: Content, options, workdir: Path) -> dict[str, dict]:
    """One body per workload and chart: `--patient`'s chart, or with `--charts N` the first N sample
    charts (0: all), sent in turn so the caches by content hash meet many charts, not one."""
    today = date.today()
    charts = sample_charts(Settings.load({"llm": "off"}).fhir_dir, today)
    chosen = (
        [chart_named(charts, options.patient)] if options.charts is None else charts[: options.charts or None]
    )
    store = SandboxStore(charts)
    services = {s.id: s for s in content.services}
    workloads = {}
    for name in names:
        service = services[WORKLOADS[name]]
        bodies, sizes, counts = [], [], []
        for chart in chosen:
            context = {"userId": USER, "patientId": chart.patient_id}
            prefetch, per_key = complete_prefetch(service, store, context)
            body = json.dumps(hook_body(service, chart.patient_id, today, prefetch)).encode()
            path = workdir / f"{name}-{len(bodies)}.json"
            path.write_bytes(body)
            bodies.append(path)
            sizes.append(len(body))
            counts.append(per_key)
        workloads[name] = {
            "service": service.id,
            "body": bodies[0],
            "bodies": bodies,
            "bodyKB": round(sum(sizes) / len(sizes) / 1024, 1),
            "resources": round(sum(sum(c.values()) for c in counts) / len(counts)),
            "perKey": counts[0] if len(counts) == 1 else {},
            "chart": _chart_label(chosen[0]) if len(chosen) == 1 else f"{len(chosen)} sample charts in turn",
            "chartResources": round(sum(len(c.resources) for c in chosen) / len(chosen)),
        }
    return workloads


def _chart_label(chart: SampleChart) -> str:
    return chart.source.rsplit("_", 1)[0] if chart.origin == "synthea" else chart.patient_id


# --- the load run -----------------------------------------------------------------------------------


class Row:
    """One measured stage: a target under a workload at a client count (a plain class: the smoke test
    loads this file without registering it as a module, which dataclasses need)."""

    def __init__(self, settings: str, target: str, workload: str, clients: int, figures: dict):
        self.settings, self.target, self.workload, self.clients = settings, target, workload, clients
        self.figures = figures
        self.floor_ratio: float | None = None

    @property
    def tail(self) -> float | None:
        p50, p99 = self.figures.get("p50"), self.figures.get("p99")
        return round(p99 / p50, 1) if p50 and p99 else None


def _int_list(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def _name_list(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--workers", type=_int_list, default=[1], help="comma list (serve's default: 1)")
    parser.add_argument("--threads", type=_int_list, default=[4], help="comma list (serve's default: 4)")
    parser.add_argument("--clients", type=_int_list, default=[1, 4, 16])
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds per stage")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds per stage before measuring")
    parser.add_argument("--workloads", type=_name_list, default=list(WORKLOADS))
    parser.add_argument("--targets", type=_name_list, default=list(TARGETS), help="floor,rules,llm")
    parser.add_argument("--patient", default=DEFAULT_PATIENT, help="sample chart the bodies are built from")
    parser.add_argument(
        "--charts", type=int, help="instead: the first N sample charts, one body each, sent in turn (0: all)"
    )
    parser.add_argument("--llm-model-dir", help="prepared OpenVINO model (default: model prepare's)")
    parser.add_argument(
        "--serve-arg", action="append", default=[], help="passed to serve, e.g. --serve-arg=--preload"
    )
    parser.add_argument(
        "--serve-env", action="append", default=[], help="KEY=VALUE set for serve, e.g. CDS_DECISION_LOG=..."
    )
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--logs", type=Path, help="keep the servers' logs in this folder")
    fetch = parser.add_argument_group("fetch path (Medplum)")
    fetch.add_argument("--fetch-path", action="store_true", help="measure the fetch path instead")
    fetch.add_argument("--fetch-rounds", type=int, default=2, help="calls per service and patient")
    fetch.add_argument("--fetch-patients", type=int, default=0, help="at most this many (0: all Synthea)")
    fetch.add_argument("--fetch-clients", type=int, default=1, help="concurrent clients per service")
    fetch.add_argument("--fhir-samples", type=Path, help="folder of Synthea bundles (default: the bundled)")
    options = parser.parse_args(argv)
    unknown = [w for w in options.workloads if w not in WORKLOADS] + [
        t for t in options.targets if t not in TARGETS
    ]
    if unknown:
        parser.error(f"unknown workload or target: {', '.join(unknown)}")
    return options


def main(argv: list[str] | None = None) -> dict:
    options = parse_args(argv)
    machine = machine_info()
    workdir = Path(tempfile.mkdtemp(prefix="cds-load-"))
    try:
        print_machine(machine, workdir)
        content = Content.load(Settings.load({"llm": "off"}))
        if options.fetch_path:
            results = {"machine": machine, "fetchPath": fetch_path(options, content, workdir)}
        else:
            results = {"machine": machine, **load_run(options, content, workdir)}
        results["options"] = {k: str(v) if isinstance(v, Path) else v for k, v in vars(options).items()}
        results["machine"]["loadAverageAtEnd"] = [round(x, 2) for x in os.getloadavg()]
        print(f"\nload average at the end: {' '.join(map(str, results['machine']['loadAverageAtEnd']))}")
    finally:
        if options.logs:
            options.logs.mkdir(parents=True, exist_ok=True)
            for log in workdir.glob("*.log"):
                shutil.copy(log, options.logs / log.name)
        shutil.rmtree(workdir, ignore_errors=True)
    if options.json:
        options.json.write_text(json.dumps(results, indent=2, default=str))
        print(f"results written to {options.json}")
    return results


def print_machine(machine: dict, workdir: Path) -> None:
    versions = ", ".join(f"{k} {v}" for k, v in machine["versions"].items())
    mounts = sorted(psutil.disk_partitions(all=True), key=lambda p: -len(p.mountpoint))
    fs = next((p.fstype for p in mounts if str(workdir).startswith(p.mountpoint)), "?")
    print(f"machine: {machine['cpu']}, {machine['cores']} cores, {machine['memoryGiB']} GiB; {machine['os']}")
    print(f"python {machine['python']}; {versions}")
    print(f"load average (1/5/15 min) at the start: {' '.join(map(str, machine['loadAverage']))}")
    print(f"data directories under {workdir} ({fs})")


def load_run(options, content: Content, workdir: Path) -> dict:
    workloads = build_workloads(options.workloads, content, options, workdir)
    for name, w in workloads.items():
        keys = ", ".join(f"{k} {n}" for k, n in w["perKey"].items())
        mean = "" if len(w["bodies"]) == 1 else "mean "
        print(
            f"workload {name}: POST /cds-services/{w['service']}, {mean}{w['bodyKB']} kB; chart {w['chart']} "
            f"({mean}{w['chartResources']} resources), complete prefetch of {mean}{w['resources']} resources"
            + (f" ({keys})" if keys else "")
        )
    targets = list(options.targets)
    skipped = {}
    if "llm" in targets:
        ready, where = model_ready(options)
        if not ready:
            targets.remove("llm")
            skipped["llm"] = where
            print(f"LLM rows skipped: {where}")
        else:
            print(f"LLM on: embedded, model {where}")
    print(
        f"generator: aiohttp in its own process, one keep-alive connection per client; "
        f"{options.warmup:g} s warm-up then {options.duration:g} s per stage; stages run one after another"
    )
    print(
        "floor: gunicorn gthread, keepalive 5 s, no access log (benchmarks/load_floor.py); serve: its own "
        f"settings (CdsThreadWorker = gthread, access log on), rate limit off{_serve_extras(options)}"
    )
    rows: list[Row] = []
    memory, first_calls = [], []
    for workers in options.workers:
        for threads in options.threads:
            for kind in targets:
                measure_target(kind, workers, threads, workloads, options, workdir, rows, memory, first_calls)
    for row in rows:
        floor = next(
            (
                r
                for r in rows
                if r.target == "floor"
                and (r.settings, r.workload, r.clients) == (row.settings, row.workload, row.clients)
            ),
            None,
        )
        if floor is not None and floor.figures["throughput"]:
            row.floor_ratio = round(row.figures["throughput"] / floor.figures["throughput"], 2)
    print_table(rows)
    print_server_timing(rows)
    print_errors(rows)
    print_first_calls(first_calls)
    print_memory(memory, skipped)
    verdicts = judge(rows, options.clients)
    print_verdicts(verdicts, skipped)
    return {
        "workloads": {n: {k: v for k, v in w.items() if k != "body"} for n, w in workloads.items()},
        "rows": [
            {
                "settings": r.settings,
                "target": r.target,
                "workload": r.workload,
                "clients": r.clients,
                **{k: v for k, v in r.figures.items() if k not in ("latencies", "serverTiming")},
                "serverTimingP50": {
                    stage: summary(values)["p50"] for stage, values in r.figures["serverTiming"].items()
                },
                "floorRatio": r.floor_ratio,
                "p99OverP50": r.tail,
            }
            for r in rows
        ],
        "firstCalls": first_calls,
        "memory": memory,
        "skipped": skipped,
        "targets": verdicts,
    }


def measure_target(kind, workers, threads, workloads, options, workdir, rows, memory, first_calls) -> None:
    """Start one target, run every workload at every client count against it, stop it."""
    settings = f"{workers}x{threads}"
    before = os.getloadavg()[0]
    target = start_target(kind, workers, threads, options, workdir)
    try:
        target.wait_ready()
        if kind != "floor":
            _check_services(target, [w["service"] for w in workloads.values()])
            for name, w in workloads.items():
                call = _first_call(target, w)
                first_calls.append({"settings": settings, "target": kind, "workload": name, **call})
        for name, w in workloads.items():
            for clients in options.clients:
                path = f"/cds-services/{w['service']}"
                figures = run_stage(
                    target,
                    path,
                    w["bodies"],
                    clients,
                    workdir,
                    warmup=options.warmup,
                    duration=options.duration,
                )
                rows.append(Row(settings, kind, name, clients, figures))
                print(
                    f"  {settings} {TARGET_NAMES[kind]:17} {name:13} {clients:3} clients: "
                    f"{figures['throughput']:8.1f} req/s, p50 {figures['p50']} ms, p99 {figures['p99']} ms, "
                    f"errors {figures['errors']}"
                )
    finally:
        target.stop()
    if kind != "floor":
        peak = {**target.peak, "loadAverageBefore": round(before, 2)}
        memory.append({"settings": settings, "target": kind, **peak})


def _serve_extras(options) -> str:
    extras = [*options.serve_arg, *(p.split("=", 1)[0] + "=..." for p in options.serve_env)]
    return f"; extra: {' '.join(extras)}" if extras else ""


def _check_services(target: Target, service_ids: list[str]) -> None:
    listed = {s["id"] for s in requests.get(f"{target.base}/cds-services", timeout=10).json()["services"]}
    missing = [s for s in service_ids if s not in listed]
    if missing:
        raise RuntimeError(f"GET /cds-services does not list {', '.join(missing)}")


def _one_off(body: Path) -> bytes:
    """A body sent outside the generator, with a hookInstance of its own."""
    return body.read_bytes().replace(PLACEHOLDER.encode(), str(uuid.uuid4()).encode(), 1)


def _first_call(target: Target, workload: dict) -> dict:
    """The first call of a fresh server (one worker): what the first clinician waits."""
    body = _one_off(workload["body"])
    start = time.perf_counter()
    response = requests.post(
        f"{target.base}/cds-services/{workload['service']}",
        data=body,
        headers={"Content-Type": "application/json"},
        timeout=60,
    )
    ms = (time.perf_counter() - start) * 1000
    cards = len(response.json().get("cards", [])) if response.status_code == 200 else None
    return {
        "status": response.status_code,
        "ms": round(ms, 1),
        "cards": cards,
        "serverTiming": response.headers.get("Server-Timing", ""),
    }


def _fmt(value, spec: str = ".1f") -> str:
    return "-" if value is None else format(value, spec)


def print_table(rows: list[Row]) -> None:
    print(
        "\nsettings = workers x threads; ratio = throughput / floor's at the same settings, workload, clients"
    )
    print("gen/srv cpu = % of one core used by the load generator / by the server's processes")
    head = (
        f"{'settings':8} {'target':17} {'workload':13} {'clients':>7} {'requests':>8} {'errors':>6} "
        f"{'req/s':>8} {'p50 ms':>7} {'p95 ms':>7} {'p99 ms':>7} {'ratio':>6} {'p99/p50':>7} "
        f"{'gen cpu':>7} {'srv cpu':>7}"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        f = r.figures
        print(
            f"{r.settings:8} {TARGET_NAMES[r.target]:17} {r.workload:13} {r.clients:7d} {f['requests']:8d} "
            f"{f['errors']:6d} {f['throughput']:8.1f} {_fmt(f['p50']):>7} {_fmt(f['p95']):>7} "
            f"{_fmt(f['p99']):>7} {_fmt(r.floor_ratio, '.2f'):>6} {_fmt(r.tail):>7} "
            f"{f['generatorCpuPct']:6d}% {f['serverCpuPct']:6d}%"
        )


def print_server_timing(rows: list[Row]) -> None:
    """Where a served call's time goes, as the service itself reports it (stage p50s, ms)."""
    served = [r for r in rows if r.target != "floor" and r.figures["serverTiming"]]
    if not served:
        return
    stages = list(dict.fromkeys(stage for r in served for stage in r.figures["serverTiming"]))
    print("\nServer-Timing p50 per stage (ms), served rows:")
    names = " ".join(f"{stage:>8}" for stage in stages)
    print(f"{'settings':8} {'target':17} {'workload':13} {'clients':>7}  {names}")
    for r in served:
        timing = r.figures["serverTiming"]
        cells = " ".join(f"{_fmt(summary(timing[s])['p50'] if s in timing else None):>8}" for s in stages)
        print(f"{r.settings:8} {TARGET_NAMES[r.target]:17} {r.workload:13} {r.clients:7d}  {cells}")


def print_errors(rows: list[Row]) -> None:
    failing = [r for r in rows if r.figures["errors"]]
    if not failing:
        print("\nerrors: none (every response was 200)")
        return
    print("\nerrors (non-200 responses or failed requests):")
    for r in failing:
        kinds = ", ".join(f"{k} x{n}" for k, n in r.figures["errorKinds"].items())
        print(f"  {r.settings} {TARGET_NAMES[r.target]} {r.workload} {r.clients} clients: {kinds}")
        for sample in r.figures["errorSamples"][:2]:
            print(f"    {sample[:200]}")


def print_first_calls(first_calls: list[dict]) -> None:
    if not first_calls:
        return
    print("\nfirst call after start (one worker, before any warm-up):")
    for c in first_calls:
        print(
            f"  {c['settings']} {TARGET_NAMES[c['target']]:17} {c['workload']:13} {c['ms']:7.1f} ms, "
            f"status {c['status']}, {c['cards']} cards; Server-Timing: {c['serverTiming']}"
        )


def print_memory(memory: list[dict], skipped: dict) -> None:
    if not memory:
        return
    print("\npeak RSS over the target's run (psutil; RSS counts pages shared between processes in each):")
    for m in memory:
        print(
            f"  {m['settings']} {TARGET_NAMES[m['target']]:17} master {m['masterMB']:7.1f} MB, "
            f"largest worker {m['workerMB']:7.1f} MB, "
            f"{m['workers']} workers together {m['workersTotalMB']:7.1f} MB"
            + (f", decision-log writer {m['writerMB']:5.1f} MB" if m.get("writerMB") else "")
        )
    if "llm" in skipped:
        print(f"  {TARGET_NAMES['llm']}: not measured ({skipped['llm']})")


def judge(rows: list[Row], clients: list[int]) -> list[dict]:
    """Issue 13's targets: rules only at 16 clients, >= 0.3 x floor and p99 <= 4 x p50; LLM on, p95 within
    the response budget (every client count)."""
    verdicts = []
    for r in rows:
        if r.target == "rules" and r.clients == 16:
            errors = r.figures["errors"]
            verdicts.append(
                {
                    "settings": r.settings,
                    "workload": r.workload,
                    "target": f"throughput >= {TARGET_RATIO} x floor (16 clients, rules only)",
                    "value": r.floor_ratio,
                    "met": bool(r.floor_ratio is not None and r.floor_ratio >= TARGET_RATIO and not errors),
                }
            )
            verdicts.append(
                {
                    "settings": r.settings,
                    "workload": r.workload,
                    "target": f"p99 <= {TARGET_TAIL:g} x p50 (16 clients, rules only)",
                    "value": r.tail,
                    "met": bool(r.tail is not None and r.tail <= TARGET_TAIL and not errors),
                }
            )
        if r.target == "llm":
            verdicts.append(
                {
                    "settings": r.settings,
                    "workload": r.workload,
                    "target": f"p95 <= {BUDGET_MS} ms, CDS_RESPONSE_BUDGET_MS ({r.clients} clients, LLM on)",
                    "value": r.figures["p95"],
                    "met": bool(r.figures["p95"] is not None and r.figures["p95"] <= BUDGET_MS),
                }
            )
    return verdicts


def print_verdicts(verdicts: list[dict], skipped: dict) -> None:
    print("\ntargets (issue 13):")
    if not verdicts:
        print("  none measured (the rules-only targets need 16 in --clients and floor,rules in --targets)")
    for v in verdicts:
        print(
            f"  {v['settings']} {v['workload']:13} {v['target']:58} {_fmt(v['value'], 'g'):>6}  "
            f"{'met' if v['met'] else 'NOT MET'}"
        )
    if "llm" in skipped:
        print(f"  LLM on: p95 <= {BUDGET_MS} ms: not measured ({skipped['llm']})")


# --- the fetch path: Medplum -------------------------------------------------------------------------


def _template_label(text: str) -> str:
    return text.replace("Patient/{{context.patientId}}", "{pt}").replace("{{context.patientId}}", "{pt}")


def time_queries(
    medplum: MedplumRouter, templates: dict[str, object], patients: list[str], rounds: int
) -> dict:
    """Each distinct prefetch template, rendered for each patient, GET against Medplum as the service
    sends it (first page only; the service may follow `next` links or read Medication/<id> too)."""
    session = requests.Session()
    session.headers.update({"Authorization": f"Bearer {FETCH_TOKEN}", "Accept": "application/fhir+json"})
    out = {}
    for text, template in templates.items():
        times, matches, errors = [], [], 0
        for round_ in range(rounds + 1):  # the first round warms Medplum (V8 compiles its search code)
            for patient_id in patients:
                url = template.render(token_root({"userId": USER, "patientId": patient_id}), {})
                if url is None:
                    continue
                start = time.perf_counter()
                response = session.get(f"{medplum.base_url}/{url}", timeout=60)
                if round_ == 0:
                    continue
                times.append((time.perf_counter() - start) * 1000)
                if response.status_code != 200:
                    errors += 1
                    continue
                body = response.json()
                matches.append(1 if template.is_read else len(body.get("entry") or []))
        out[text] = {
            "calls": len(times),
            "errors": errors,
            **summary(times),
            "meanResources": round(sum(matches) / len(matches), 1) if matches else 0,
            "times": times,
        }
    return out


def _bundles_only(folder: Path, workdir: Path) -> Path:
    """The folder's Bundle files, linked into a folder of their own: synthea_charts reads every *.json,
    and a folder may hold other JSON too (shared/fhir-samples has an index.json list)."""
    linked = workdir / "synthea-bundles"
    linked.mkdir()
    for path in sorted(folder.glob("*.json")):
        content = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(content, dict) and content.get("resourceType") == "Bundle":
            (linked / path.name).symlink_to(path.resolve())
    return linked


def fetch_path(options, content: Content, workdir: Path) -> dict:
    reason = unavailable_reason()
    if reason:
        print(f"fetch path not measured: {reason}")
        return {"skipped": reason}
    today = date.today()
    fhir_dir = Settings.load({"llm": "off"}).fhir_dir
    folder = options.fhir_samples or fhir_dir / "samples" / "synthea-r4"
    synthea = synthea_charts(_bundles_only(folder, workdir), today)
    handmade = [c for c in sample_charts(fhir_dir, today) if c.origin == "hand-made"]
    types = {t.resource_type for s in content.services for t in s.templates} | {"Medication"}
    medplum = MedplumRouter(workdir)
    target = None
    try:
        start, loaded = time.perf_counter(), 0
        for chart in synthea + handmade:
            loaded += len(medplum.put_batch([r for r in chart.resources if r.get("resourceType") in types]))
        print(
            f"Medplum (in-memory FHIR router): {loaded} resources of {len(synthea) + len(handmade)} sample "
            f"charts ({len(synthea)} Synthea from {folder}, {len(handmade)} hand-made) loaded in "
            f"{time.perf_counter() - start:.1f} s; types the templates read, and Medication"
        )
        callers = synthea[: options.fetch_patients] if options.fetch_patients else synthea
        patients = [c.patient_id for c in callers]
        workers, threads = options.workers[0], options.threads[0]
        target = start_target(
            "rules", workers, threads, options, workdir, CDS_FHIR_ALLOWED_SERVERS=medplum.base_url
        )
        target.wait_ready()
        listed = requests.get(f"{target.base}/cds-services", timeout=10).json()["services"]
        with_prefetch = [s["id"] for s in listed if s.get("prefetch")]
        services = [s for s in content.services if s.id in with_prefetch]
        templates = {t.text: t for s in services for t in s.templates}
        print(
            f"serve rules-only {workers}x{threads}; {len(services)} services declare prefetch "
            f"({len(templates)} distinct queries); called WITHOUT prefetch for {len(patients)} Synthea "
            f"patients x {options.fetch_rounds} rounds, {options.fetch_clients} client(s)"
        )
        queries = time_queries(medplum, templates, patients, options.fetch_rounds)
        for text, q in queries.items():
            q["services"] = sum(1 for s in services if any(t.text == text for t in s.templates))
        auth = {
            "fhirServer": medplum.base_url,
            "fhirAuthorization": {
                "access_token": FETCH_TOKEN,
                "token_type": "Bearer",
                "expires_in": 300,
                "scope": "patient/*.read",
                "subject": "cds-service",
            },
        }
        per_service = []
        for service in services:
            bodies = []
            for i, patient_id in enumerate(patients):
                path = workdir / f"fetch-{service.id}-{i}.json"
                path.write_text(json.dumps(hook_body(service, patient_id, today, None, **auth)))
                bodies.append(path)
            url = f"/cds-services/{service.id}"
            requests.post(  # warm-up: compile the service's templates and rules in this worker
                target.base + url,
                data=_one_off(bodies[0]),
                headers={"Content-Type": "application/json"},
                timeout=60,
            )
            figures = run_stage(
                target,
                url,
                bodies,
                options.fetch_clients,
                workdir,
                warmup=0.0,
                max_requests=options.fetch_rounds * len(bodies),
            )
            fetch_ms = figures["serverTiming"].get("prefetch", [])
            own = {t.text: queries[t.text] for t in service.templates if t.text in queries}
            slowest = max(own, key=lambda text: own[text]["p50"] or 0) if own else None
            per_service.append(
                {
                    "service": service.id,
                    "hook": service.hook,
                    "calls": figures["requests"],
                    "errors": figures["errors"],
                    "errorKinds": figures["errorKinds"],
                    "fetch": summary(fetch_ms),
                    "call": {k: figures[k] for k in ("p50", "p95", "p99", "max")},
                    "overBudget": sum(1 for ms in figures["latencies"] if ms > BUDGET_MS),
                    "queries": len(own),
                    "sumOfQueryP50": round(sum(q["p50"] or 0 for q in own.values()), 1),
                    "slowestQuery": slowest,
                    "slowestQueryP50": own[slowest]["p50"] if slowest else None,
                }
            )
    finally:
        if target is not None:
            target.stop()
        medplum.stop()
    print_fetch_path(per_service, queries)
    for q in queries.values():
        q.pop("times")
    return {
        "patients": len(patients),
        "rounds": options.fetch_rounds,
        "clients": options.fetch_clients,
        "resourcesLoaded": loaded,
        "services": per_service,
        "queries": [{"template": text, **q} for text, q in queries.items()],
    }


def print_fetch_path(per_service: list[dict], queries: dict) -> None:
    print("\nfetch path per service (no prefetch sent; ms): fetch = Server-Timing 'prefetch' stage")
    head = (
        f"{'service':28} {'hook':13} {'calls':>5} {'errors':>6} {'fetch p50':>9} {'fetch p95':>9} "
        f"{'call p50':>8} {'call p95':>8} {f'>{BUDGET_MS}ms':>7} {'sum q p50':>9}  slowest query (p50 ms)"
    )
    print(head)
    print("-" * len(head))
    for s in per_service:
        slowest = _template_label(s["slowestQuery"] or "-").split("&_count")[0]
        print(
            f"{s['service']:28} {s['hook']:13} {s['calls']:5d} {s['errors']:6d} {_fmt(s['fetch']['p50']):>9} "
            f"{_fmt(s['fetch']['p95']):>9} {_fmt(s['call']['p50']):>8} {_fmt(s['call']['p95']):>8} "
            f"{s['overBudget']:7d} {s['sumOfQueryP50']:9.1f}  {slowest[:70]} ({_fmt(s['slowestQueryP50'])})"
        )
    for s in per_service:
        if s["errors"]:
            print(f"  errors in {s['service']}: {s['errorKinds']}")
    ordered = sorted(queries.items(), key=lambda kv: -(kv[1]["p50"] or 0))
    medians = sorted(q["p50"] for q in queries.values() if q["p50"] is not None)
    typical = percentile(medians, 50) or 0
    print(
        f"\nprefetch queries timed directly against Medplum, slowest first (ms; the median query takes "
        f"{typical:.1f} ms; {{pt}} = Patient/<id>):"
    )
    head = f"{'p50':>7} {'p95':>7} {'max':>7} {'calls':>5} {'resources':>9} {'services':>8}  query"
    print(head)
    print("-" * len(head))
    for text, q in ordered:
        print(
            f"{_fmt(q['p50']):>7} {_fmt(q['p95']):>7} {_fmt(q['max']):>7} {q['calls']:5d} "
            f"{q['meanResources']:9.1f} {q['services']:8d}  {_template_label(text)}"
        )
    print("\nthe queries that dominate:")
    for text, q in ordered[:3]:
        times = f"{q['p50'] / typical:.0f} x the median query" if typical else "-"
        print(f"  p50 {q['p50']} ms ({times}), used by {q['services']} service(s): {_template_label(text)}")
    for s in per_service:
        if s["slowestQueryP50"] and s["fetch"]["p50"]:
            share = s["slowestQueryP50"] / s["fetch"]["p50"]
            print(
                f"  {s['service']}: its slowest query alone is {share:.0%} of its fetch stage p50 "
                f"({s['slowestQueryP50']} of {s['fetch']['p50']} ms; all its queries one after another: "
                f"{s['sumOfQueryP50']} ms)"
            )


if __name__ == "__main__":
    main()
