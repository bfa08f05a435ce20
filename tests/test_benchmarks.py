"""The benchmark scripts run and print their figures (timings are read, never asserted here)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_rules_speed_benchmark_runs(capsys):
    figures = _load("rules_speed").main(["--runs", "2", "--resources", "300", "--no-pin"])
    assert figures["resources"] == 300 and figures["active_rules"] > 0
    assert figures["review_rules"] > 0 and figures["review_active_medications"] > 0  # the chart review ran
    assert "median" in capsys.readouterr().out


@pytest.mark.real_model
def test_llm_grounding_benchmark_runs_on_the_prepared_model(capsys):
    from cds_service.reasoning.model_cache import default_model_dir

    if not (default_model_dir("int8") / "manifest.json").is_file():
        pytest.skip("SmolLM2 not prepared (cds-service model prepare)")
    figures = _load("llm_grounding").main([])
    assert figures["texts"] == 26 and 0 <= figures["accepted"] <= figures["texts"]
    assert 0 <= figures["specific"] <= figures["accepted"] and 0 <= figures["specificity"] <= 1
    assert "passed the grounding guard" in capsys.readouterr().out


@pytest.mark.real_model
def test_negex_assertion_benchmark_runs_on_the_prepared_model(capsys):
    from cds_service.reasoning.model_cache import default_model_dir

    if not (default_model_dir("int8") / "manifest.json").is_file():
        pytest.skip("SmolLM2 not prepared (cds-service model prepare)")
    result = _load("negex_assertion").main(["--backends", "int8", "--sample", "40"])
    run = result["backends"]["int8"]
    assert result["sample"]["sentences"] + result["sample"]["skippedPhraseNotInSentence"] == 40
    assert sum(run["answers"].values()) + run["errors"] == result["sample"]["sentences"]
    out = capsys.readouterr().out
    assert "baseline (ConText rules)" in out and "int8 LLM" in out and "int8 combination" in out


@pytest.mark.slow
def test_load_benchmark_measures_the_floor_and_the_service(capsys, tmp_path):
    """Tiny settings: one client, one second, order-sign, floor and rules-only serve."""
    out = tmp_path / "load.json"
    options = ["--duration", "1", "--warmup", "0.5", "--clients", "1", "--workloads", "order-sign"]
    results = _load("load").main([*options, "--targets", "floor,rules", "--json", str(out)])
    rows = {(r["target"], r["workload"], r["clients"]): r for r in results["rows"]}
    assert set(rows) == {("floor", "order-sign", 1), ("rules", "order-sign", 1)}
    assert all(r["requests"] > 0 and r["errors"] == 0 for r in rows.values()), rows
    assert rows[("rules", "order-sign", 1)]["floorRatio"] is not None
    assert "prefetch" in rows[("rules", "order-sign", 1)]["serverTimingP50"]  # the service answered
    (first,) = results["firstCalls"]
    assert first["status"] == 200 and first["cards"] >= 1  # the workload draws cards: rendering is measured
    (memory,) = results["memory"]
    assert memory["workers"] == 1 and memory["workerMB"] > 0 and memory["masterMB"] > 0
    table = capsys.readouterr().out.split("settings target", 1)[1]
    assert "floor" in table and "serve rules-only" in table and "errors: none" in table
    assert json.loads(out.read_text())["rows"] == results["rows"]


def test_load_benchmark_can_send_many_charts_in_turn(tmp_path):
    """`--charts N`: one body per sample chart, each for its own patient with its own prefetch."""
    from cds_service.runtime import Content
    from cds_service.settings import Settings

    load = _load("load")
    options = load.parse_args(["--charts", "3", "--workloads", "order-sign"])
    content = Content.load(Settings.load({"llm": "off"}))
    (workload,) = load.build_workloads(options.workloads, content, options, tmp_path).values()
    bodies = [json.loads(path.read_bytes()) for path in workload["bodies"]]
    patients = {b["context"]["patientId"] for b in bodies}
    assert len(bodies) == 3 and len(patients) == 3
    assert all(b["prefetch"]["patient"]["id"] == b["context"]["patientId"] for b in bodies)
    assert workload["chart"] == "3 sample charts in turn"
    single = load.parse_args(["--workloads", "order-sign"])
    (tmp_path / "one").mkdir()
    (one,) = load.build_workloads(single.workloads, content, single, tmp_path / "one").values()
    assert len(one["bodies"]) == 1 and one["chart"] == load.DEFAULT_PATIENT


@pytest.mark.slow
def test_load_benchmark_fetch_path_times_every_service_and_query(capsys):
    load = _load("load")
    if load.unavailable_reason():
        pytest.skip(load.unavailable_reason())
    results = load.main(["--fetch-path", "--fetch-patients", "1", "--fetch-rounds", "1"])["fetchPath"]
    assert results["services"] and results["queries"]
    for service in results["services"]:
        assert service["calls"] == 1 and service["errors"] == 0, service
        assert service["fetch"]["p50"] is not None, service  # the prefetch stage ran: data were fetched
    assert all(q["calls"] == 1 and q["errors"] == 0 for q in results["queries"])
    assert "the queries that dominate" in capsys.readouterr().out
