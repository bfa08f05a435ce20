"""Medplum's in-memory FHIR router (tests/medplum/server.mjs) on a free loopback port: a FHIR server
nobody here wrote, for the FHIR integration tests (tests/test_medplum.py) and the fetch-path benchmark
(benchmarks/load.py --fetch-path). Installed by `make medplum` (npm ci --prefix tests/medplum).
"""

from __future__ import annotations

import json
import selectors
import shutil
import subprocess
import time
from pathlib import Path

import requests

SERVER = Path(__file__).with_name("medplum") / "server.mjs"
MODULES = SERVER.parent / "node_modules" / "@medplum" / "fhir-router"


class MedplumUnavailable(RuntimeError):
    """Node or the router is missing, or the router did not start; the message says which."""


def unavailable_reason() -> str | None:
    if shutil.which("node") is None:
        return "node is not on PATH: Medplum's FHIR router cannot be started"
    if not MODULES.is_dir():
        return "Medplum is not installed: run `npm ci --prefix tests/medplum` (make test does)"
    return None


class MedplumRouter:
    def __init__(self, workdir: Path, start_timeout_s: float = 60):
        reason = unavailable_reason()
        if reason:
            raise MedplumUnavailable(reason)
        self.log_path = workdir / "medplum.log"
        self._log = self.log_path.open("w")
        started = time.perf_counter()
        self.process = subprocess.Popen(
            ["node", str(SERVER), "0"], stdout=subprocess.PIPE, stderr=self._log, cwd=SERVER.parent
        )
        selector = selectors.DefaultSelector()
        selector.register(self.process.stdout, selectors.EVENT_READ)
        line = self.process.stdout.readline() if selector.select(timeout=start_timeout_s) else b""
        if not line:
            self.stop()
            raise MedplumUnavailable(f"Medplum did not start: {self.log_path.read_text()[-2000:]}")
        self.base_url = f"http://127.0.0.1:{json.loads(line)['port']}/fhir"
        self.start_seconds = time.perf_counter() - started

    def put_batch(self, resources: list[dict], timeout: float = 120) -> list[dict]:
        """PUT each resource under its own id in one batch (urn:uuid references become Type/id); returns
        the resources as Medplum stored them. RuntimeError when any entry is refused."""
        bundle = {
            "resourceType": "Bundle",
            "type": "batch",
            "entry": [
                {
                    "fullUrl": f"urn:uuid:{r['id']}",
                    "resource": r,
                    "request": {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"},
                }
                for r in resources
            ],
        }
        answer = requests.post(self.base_url + "/", json=bundle, timeout=timeout).json()
        bad = [e["response"] for e in answer.get("entry", []) if not e["response"]["status"].startswith("20")]
        if answer.get("resourceType") != "Bundle" or bad:
            raise RuntimeError(f"Medplum refused the load: {answer.get('issue') or bad[:3]}")
        return [e["resource"] for e in answer["entry"]]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
