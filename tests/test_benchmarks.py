"""The benchmark scripts run and print their figures (timings are read, never asserted here)."""

from __future__ import annotations

import importlib.util
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
