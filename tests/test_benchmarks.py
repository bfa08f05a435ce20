"""The benchmark scripts run and print their figures (timings are read, never asserted here)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_rules_speed_benchmark_runs(capsys):
    figures = _load("rules_speed").main(["--runs", "2", "--resources", "300", "--no-pin"])
    assert figures["resources"] == 300 and figures["active_rules"] > 0
    assert "median" in capsys.readouterr().out
