"""`cds-service serve` runs the app under gunicorn and answers on 127.0.0.1."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import builders
import pytest
import requests


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(base: str, seconds: float = 60) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            if requests.get(f"{base}/readyz", timeout=1).status_code == 200:
                return
        except requests.RequestException:  # not listening yet, or still loading
            time.sleep(0.2)
    raise AssertionError("server did not become ready")


@pytest.mark.slow
def test_serve_with_several_workers_on_an_empty_data_dir(tmp_path):
    """`serve` creates the tables once, before the workers fork. Workers creating them together on an empty
    SQLite file can race ("table already exists") and one fails to boot, taking gunicorn down: seen once in
    a black-box run, timing-dependent, so this guards against it rather than reproducing it on demand."""
    port = free_port()
    env = {**os.environ, "CDS_DATA_DIR": str(tmp_path / "empty"), "CDS_LLM": "off"}
    exe = Path(sys.executable).with_name("cds-service")
    proc = subprocess.Popen(
        [str(exe), "serve", "--port", str(port), "--workers", "4"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base)
        body = builders.order_sign(
            {
                "medications": ["Acetaminophen 325 MG Oral Tablet"],
                "draftOrders": ["Acetaminophen 500 MG Oral Tablet"],
            }
        )
        answers = [
            requests.post(f"{base}/cds-services/medication-order-check", json=body, timeout=10)
            for _ in range(6)
        ]
        assert all(a.status_code == 200 and len(a.json()["cards"]) == 1 for a in answers)
        assert "gunicorn" in requests.get(f"{base}/healthz", timeout=5).headers.get("Server", "")
    finally:
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=30)
    assert f"{base}/cds-services" in output  # the URLs are printed
    assert output.count("Booting worker") == 4 and "failed to boot" not in output, output
