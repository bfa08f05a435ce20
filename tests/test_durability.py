"""Durability: SIGKILL the server under load; the chain still verifies and every 200 has its record."""

from __future__ import annotations

import os
import signal
import threading
import time

import builders
import pytest
import requests
from test_serve import free_port, start_serve, wait_ready

from cds_service.audit.decision_log import DecisionLog
from cds_service.audit.storage import make_engine

CASE = {"medications": ["Warfarin Sodium 5 MG Oral Tablet"], "draftOrders": ["Ibuprofen 400 MG Oral Tablet"]}


@pytest.mark.slow
def test_sigkill_under_load_loses_no_acknowledged_decision(tmp_path):
    port = free_port()
    server = start_serve(port, tmp_path, "--workers", "2", "--threads", "4")
    base = f"http://127.0.0.1:{port}"
    wait_ready(base)
    acknowledged: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()

    def load() -> None:
        session = requests.Session()
        for _ in range(150):  # bounded in count ...
            if stop.is_set():
                return
            try:
                r = session.post(
                    f"{base}/cds-services/medication-order-check", json=builders.order_sign(CASE), timeout=5
                )
            except requests.RequestException:
                return
            if r.status_code == 200:
                with lock:
                    acknowledged.append(r.headers["X-Decision-Id"])

    threads = [threading.Thread(target=load) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(2.0)  # ... and in time: kill mid-load
    os.killpg(server.pid, signal.SIGKILL)
    server.wait(timeout=10)
    stop.set()
    for t in threads:
        t.join(timeout=10)

    assert len(acknowledged) > 5, "the load did not get going before the kill"
    log = DecisionLog(make_engine(f"sqlite:///{tmp_path / 'decision-log.sqlite3'}"))
    report = log.verify()
    assert report.ok, report
    missing = [d for d in acknowledged if log.get(d) is None]
    assert not missing, f"{len(missing)} acknowledged decisions lost"
    assert report.checked >= len(acknowledged)
