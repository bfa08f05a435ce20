"""What `cds-service serve` adds to gunicorn for telemetry: metrics shared by the workers, JSON logs.

prometheus_client chooses its multiprocess mode when it is first imported, from
PROMETHEUS_MULTIPROC_DIR. So the master makes the directory and sets the variable before anything
imports prometheus_client and before the workers fork; this module imports it only inside the hooks.
"""

from __future__ import annotations

import os
import shutil
import socket
import sys
from pathlib import Path

from . import MULTIPROC_ENV
from .logs import gunicorn_logconfig


def metrics_dir(data_dir: Path) -> Path:
    """This master's own directory: host and pid apart, instances sharing a data volume never mix
    (containers often all run as pid 1, hence the host name)."""
    return data_dir / "metrics" / f"{socket.gethostname()}-{os.getpid()}"


def gunicorn_options(data_dir: Path, log_format: str, log_level: str) -> dict:
    """gunicorn options for `serve`, made in the master before the workers fork: a fresh, empty metrics
    directory (values left by an earlier master of the same host and pid would be added in), the hooks
    that keep it, and the JSON log configuration."""
    if "prometheus_client" in sys.modules and os.environ.get(MULTIPROC_ENV) is None:
        raise RuntimeError(
            "prometheus_client was imported before PROMETHEUS_MULTIPROC_DIR was set: the workers would "
            "count on their own and /metrics would show one worker's values"
        )
    directory = metrics_dir(data_dir)
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    os.environ[MULTIPROC_ENV] = str(directory)
    options = {"child_exit": _child_exit, "on_exit": _on_exit}
    if log_format == "json":
        options["logconfig_dict"] = gunicorn_logconfig(log_level)
    return options


def _child_exit(_server, worker) -> None:
    """A worker is gone: its live gauges go (its counters and histograms stay: they are totals)."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def _on_exit(_server) -> None:
    directory = os.environ.get(MULTIPROC_ENV)
    if directory:
        shutil.rmtree(directory, ignore_errors=True)
