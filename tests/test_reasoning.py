"""On-premises LLM: preparation, generation, the grounding guard, the deadline, the cache, CDS_LLM=off.

Uses a tiny random-weight model built and exported in this session; real-model checks are marked
`real_model` and skipped when the SmolLM2 model has not been prepared.
"""

from __future__ import annotations

import threading
import time

import builders
import pytest
from fake_llm_server import serve_chat, url_of
from tiny_model import build_tiny_hf_model

from cds_service.reasoning.backends import GenAiBackend, Generation, RemoteBackend
from cds_service.reasoning.capabilities import Capabilities, read_manifest_section
from cds_service.reasoning.grounding import GroundingGuard, tidy
from cds_service.reasoning.model_cache import default_model_dir
from cds_service.reasoning.preparation.prepare import prepare, read_manifest

ORDER_SIGN = "/cds-services/medication-order-check"
WARFARIN_CASE = {
    "patient": {"age": 74, "gender": "female"},
    "medications": ["Warfarin Sodium 5 MG Oral Tablet"],
    "observations": [{"code": "loinc|6301-6", "value": 2.8, "daysAgo": 6}],
    "draftOrders": ["Ibuprofen 400 MG Oral Tablet"],
}


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    hf = build_tiny_hf_model(root / "hf")
    return prepare(root / "ov", source=hf, weight_format="int8", name="tiny-llama", progress=False)


@pytest.fixture(scope="module")
def terminology():
    from cds_service.clinical.terminology import load_terminology
    from cds_service.settings import Settings

    return load_terminology(Settings.load({"llm": "off"}).fhir_dir / "terminology")


# -- preparation ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_prepare_writes_manifest_and_is_idempotent(tiny_model, tmp_path):
    manifest = tiny_model.manifest
    assert manifest["id"].startswith("tiny-llama@int8-") and manifest["weightFormat"] == "int8"
    assert manifest["source"]["kind"] == "huggingface" and len(manifest["source"]["sha256"]) == 64
    assert {
        "openvino_model.xml",
        "openvino_model.bin",
        "openvino_tokenizer.xml",
        "openvino_detokenizer.xml",
    } <= set(manifest["files"])
    assert all(len(f["sha256"]) == 64 for f in manifest["files"].values())
    assert {"openvino", "optimum-intel", "transformers", "nncf"} <= set(manifest["libraries"])
    assert "--weight-format" in manifest["exportCommand"]
    again = prepare(
        tiny_model.path, source=_hf_of(tiny_model), weight_format="int8", name="tiny-llama", progress=False
    )
    assert again.reused and again.model_id == tiny_model.model_id


def _hf_of(prepared):
    from pathlib import Path

    return Path(prepared.manifest["source"]["path"])


@pytest.mark.slow
def test_an_exported_openvino_folder_is_a_source_too(tiny_model, tmp_path):
    copied = prepare(tmp_path / "copy", source=tiny_model.path, name="tiny-copy", progress=False)
    assert copied.manifest["source"]["kind"] == "openvino"
    assert (
        copied.manifest["files"]["openvino_model.bin"]["sha256"]
        == tiny_model.manifest["files"]["openvino_model.bin"]["sha256"]
    )
    assert read_manifest(copied.path)["id"].startswith("tiny-copy@as-provided-")


# -- generation ------------------------------------------------------------------------------------


@pytest.mark.slow
def test_genai_backend_generates_bounded_text(tiny_model):
    backend = GenAiBackend(tiny_model.path)
    assert backend.model_id == tiny_model.model_id
    result = backend.generate([{"role": "user", "content": "Potassium is 5.9 mmol/L."}], max_new_tokens=8)
    assert isinstance(result.text, str) and result.seconds >= 0
    if result.new_tokens is not None:
        assert result.new_tokens <= 8


@pytest.mark.slow
def test_genai_choose_answers_only_allowed_options(tiny_model):
    from cds_service.reasoning.tasks import ASSERTION_OPTIONS, assertion_messages

    backend = GenAiBackend(tiny_model.path)
    sentences = [
        ("She denies any cough.", "cough"),
        ("History of stroke.", "stroke"),
        ("Potassium is 5.9 mmol/L.", "Potassium"),
    ]
    answers = [backend.choose(assertion_messages(s, p), ASSERTION_OPTIONS).text for s, p in sentences]
    assert set(answers) <= set(ASSERTION_OPTIONS)  # random weights, yet never anything else
    odd = ("a.b", "x|y", "(z)", "a much longer answer than eight tokens")
    assert all(
        backend.choose([{"role": "user", "content": f"Pick {i}."}], odd, max_new_tokens=1).text in odd
        for i in range(3)
    )  # the budget grows to the longest option: an answer is never cut short


@pytest.mark.slow
def test_pytorch_choose_answers_only_allowed_options(tiny_model):
    from cds_service.reasoning.preparation.torch_choice import TorchChooser
    from cds_service.reasoning.tasks import ASSERTION_OPTIONS, assertion_messages

    chooser = TorchChooser(_hf_of(tiny_model))
    for sentence, phrase in (("She denies any cough.", "cough"), ("Mother had diabetes.", "diabetes")):
        out = chooser.choose(assertion_messages(sentence, phrase), ASSERTION_OPTIONS)
        assert out.text in ASSERTION_OPTIONS and out.prompt_tokens > 50


@pytest.mark.slow
def test_model_evaluate_on_a_tiny_kit_sample_writes_capabilities(tiny_model, tmp_path):
    from click.testing import CliRunner

    from cds_service.cli import main
    from cds_service.reasoning.preparation.negex import find_kit

    model = prepare(tmp_path / "copy", source=tiny_model.path, name="tiny-eval", progress=False)
    kit = tmp_path / "kit.txt"
    kit.write_text("\n".join(find_kit().read_text().splitlines()[:40]) + "\n")
    result = CliRunner().invoke(
        main,
        [
            "model",
            "evaluate",
            "--model-dir",
            str(model.path),
            "--kit",
            str(kit),
            "--sample",
            "20",
            "--texts",
            "2",
        ],
    )
    assert result.exit_code == 0, result.output
    section = read_manifest_section(model.path)
    assertion, free_text = section["assertion"], section["freeText"]
    assert section["modelId"] == model.model_id and "openvino-genai" in section["libraries"]
    assert assertion["measured"] and assertion["sample"]["sentences"] == 20
    assert assertion["kit"]["rows"] == 40 and len(assertion["kit"]["sha256"]) == 64
    assert sum(assertion["llm"]["answers"].values()) + assertion["llm"]["errors"] == 20
    for component in ("baseline", "llm", "combination"):
        assert set(assertion[component]["labels"]) == {
            "negation",
            "historical",
            "hypothetical",
            "experiencer",
        }
    assert assertion["decision"]["component"] == "baseline"  # 20 sentences prove nothing
    assert free_text["texts"] == 2 and free_text["decision"]["enabled"] is False
    assert "assertion component: baseline" in result.output and "free text: off" in result.output
    # The manifest still identifies the model; the service reads the gates from it.
    assert read_manifest(model.path)["files"] == model.manifest["files"]
    assert GenAiBackend(model.path).manifest["capabilities"] == section


@pytest.mark.slow
def test_prepare_evaluates_a_model_without_capabilities_unless_told_not_to(tiny_model, tmp_path):
    from click.testing import CliRunner

    from cds_service.cli import main

    out = tmp_path / "prepared"
    args = ["model", "prepare", "--source", str(tiny_model.path), "--output", str(out)]
    result = CliRunner().invoke(main, [*args, "--no-evaluate"])
    assert result.exit_code == 0, result.output
    assert read_manifest_section(out) is None
    result = CliRunner().invoke(main, args)  # reused, but not measured yet: measures now
    assert result.exit_code == 0, result.output
    assert "reused " in result.output and read_manifest_section(out)["assertion"]["measured"]
    assert read_manifest_section(out)["assertion"]["sample"]["sentences"] >= 140  # prepare's bounded sample


def test_remote_openai_compatible_backend():
    seen = []
    server = serve_chat(lambda request: "Bleeding risk is high.", seen)
    try:
        backend = RemoteBackend(url_of(server), model="smollm2")
        out = backend.generate([{"role": "user", "content": "x"}], max_new_tokens=16)
    finally:
        server.shutdown()
    assert out.text == "Bleeding risk is high." and out.new_tokens == 5
    assert seen[0]["max_tokens"] == 16 and seen[0]["temperature"] == 0 and seen[0]["model"] == "smollm2"


# -- the grounding guard -------------------------------------------------------------------------------

PROMPT = (
    "Patient: 74 years old, female.\nActive problems: Hypertension.\nActive medications: Warfarin Sodium 5 "
    "MG "
    "Oral Tablet.\nRecent labs: INR 2.8 on 2026-11-20.\nAlert: Ibuprofen 400 MG Oral Tablet with Warfarin "
    "Sodium "
    "5 MG Oral Tablet: major bleeding risk"
)


def test_guard_accepts_grounded_text(terminology):
    text = "Warfarin with ibuprofen raises bleeding risk at an INR of 2.8. Consider a different pain plan."
    assert GroundingGuard(terminology).check(text, PROMPT).accepted
    causal = PROMPT.replace("Hypertension", "Anemia due to chronic kidney disease")
    assert (
        GroundingGuard(terminology)
        .check("She has anemia due to chronic kidney disease and takes warfarin.", causal)
        .accepted
    )


@pytest.mark.parametrize(
    "text, reason",
    [
        ("Warfarin with ibuprofen raises bleeding risk; switch to apixaban.", "medications"),
        ("Her INR of 3.4 shows warfarin is too strong with ibuprofen here.", "numbers"),
        ("Because of her diabetes, warfarin with ibuprofen is dangerous for this patient.", "conditions"),
        ("Check her potassium before continuing warfarin with ibuprofen today.", "lab tests"),
        (
            "bleeding bleeding bleeding bleeding bleeding bleeding bleeding bleeding bleeding bleeding "
            "bleeding bleeding",
            "repetitive",
        ),
        ("Ok.", "short"),
        (
            "Warfarin with ibuprofen is risky because of her cardiomyopathy and bleeding history.",
            "conditions",
        ),
        ("Warfarin with ibuprofen is risky with ARVC; expect major bleeding.", "abbreviations"),
        ("Her hypertension is due to warfarin, so ibuprofen adds major bleeding risk.", "causes"),
    ],
)
def test_guard_rejects_fabrication(terminology, text, reason):
    verdict = GroundingGuard(terminology).check(text, PROMPT)
    assert not verdict.accepted and any(reason in r for r in verdict.reasons), verdict.reasons


def test_tidy_keeps_whole_sentences():
    assert tidy("First sentence. Second one is cut") == "First sentence."
    assert tidy("Complete.") == "Complete."


# -- deadline, cache, labelling ----------------------------------------------------------------------------


class GatedBackend:
    """Answers with grounded text, but only when the test opens the gate."""

    model_id = "gated-test-model"

    def __init__(self, text: str):
        self.text, self.gate, self.calls = text, threading.Event(), 0

    def generate(self, messages, max_new_tokens):
        self.calls += 1
        self.gate.wait(timeout=30)
        return Generation(self.text, 10, 10, 0.01)


FREE_TEXT_ON = Capabilities(free_text_enabled=True, free_text_reason="measured good enough (test)")


def _with_backend(app, backend, budget_ms=50):
    from cds_service.reasoning.cache import LlmStore
    from cds_service.reasoning.grounding import GroundingGuard
    from cds_service.reasoning.reasoner import Reasoner

    rt = app.extensions["cds_runtime"]
    rt.reasoner = Reasoner(
        backend,
        LlmStore(rt.storage.engine),
        GroundingGuard(rt.content.terminology),
        budget_ms=budget_ms,
        capabilities=FREE_TEXT_ON,
    )
    rt.registry.pipeline.reasoner = rt.reasoner
    return rt


def test_slow_backend_never_holds_back_rule_cards_and_text_arrives_on_the_next_call(make_app):
    app = make_app()
    backend = GatedBackend(
        "Warfarin with ibuprofen raises the bleeding risk for this patient. Prefer another plan."
    )
    rt = _with_backend(app, backend)
    client = app.test_client()
    body = builders.order_sign(WARFARIN_CASE)
    first = client.post(ORDER_SIGN, json=body)  # the backend is blocked: the gate is closed
    assert first.status_code == 200
    cards = first.get_json()["cards"]
    assert any(c["extension"]["org.cds-service.rule"]["id"] == "ddi-warfarin-nsaid" for c in cards)
    assert all("AI-generated" not in c.get("detail", "") for c in cards)
    record = rt.storage.decision_log.get(first.headers["X-Decision-Id"])
    assert record["llm"]["modelId"] == "gated-test-model"
    assert {i["status"] for i in record["llm"]["items"]} == {"pending"}
    backend.gate.set()
    deadline = time.time() + 10
    while rt.reasoner._inflight and time.time() < deadline:
        time.sleep(0.05)
    again = builders.order_sign(WARFARIN_CASE)
    again["prefetch"] = body["prefetch"]
    again["context"]["draftOrders"] = body["context"]["draftOrders"]
    second = client.post(ORDER_SIGN, json=again)
    card = next(
        c
        for c in second.get_json()["cards"]
        if c["extension"]["org.cds-service.rule"]["id"] == "ddi-warfarin-nsaid"
    )
    assert "AI-generated explanation" in card["detail"] and "gated-test-model" in card["detail"]
    assert card["indicator"] == "critical"  # unchanged by LLM text
    record = rt.storage.decision_log.get(second.headers["X-Decision-Id"])
    assert "cached" in {i["status"] for i in record["llm"]["items"]}
    assert backend.calls == len(
        record["llm"]["items"]
    )  # each prompt generated once, then served from the cache


def test_ungrounded_text_is_dropped_and_recorded(make_app):
    app = make_app()
    backend = GatedBackend("Stop warfarin and start apixaban 5 mg twice daily.")
    backend.gate.set()
    rt = _with_backend(app, backend, budget_ms=5000)
    response = app.test_client().post(ORDER_SIGN, json=builders.order_sign(WARFARIN_CASE))
    assert all("AI-generated" not in c.get("detail", "") for c in response.get_json()["cards"])
    item = rt.storage.decision_log.get(response.headers["X-Decision-Id"])["llm"]["items"][0]
    assert item["guard"]["accepted"] is False and any("apixaban" in r for r in item["guard"]["reasons"])
    assert item["output"].startswith("Stop warfarin")


def test_patient_view_summary_card_is_labelled_info(make_app):
    app = make_app()
    backend = GatedBackend("The patient is 74 years old and takes Warfarin Sodium 5 MG Oral Tablet.")
    backend.gate.set()
    _with_backend(app, backend, budget_ms=5000)
    body = builders.patient_view(
        {"patient": {"age": 74, "gender": "female"}, "medications": ["Warfarin Sodium 5 MG Oral Tablet"]}
    )
    cards = app.test_client().post("/cds-services/patient-chart-review", json=body).get_json()["cards"]
    summary = next(c for c in cards if c["extension"]["org.cds-service.rule"]["id"] == "llm-summary")
    assert summary["indicator"] == "info" and "AI-generated" in summary["summary"]
    assert "gated-test-model" in summary["source"]["label"]


def test_llm_off_means_no_model_and_no_llm_record(make_app):
    app = make_app(CDS_LLM="off")
    rt = app.extensions["cds_runtime"]
    assert rt.reasoner is None and rt.readiness()["checks"]["llm"] == "off"
    response = app.test_client().post(ORDER_SIGN, json=builders.order_sign(WARFARIN_CASE))
    assert response.status_code == 200
    assert rt.storage.decision_log.get(response.headers["X-Decision-Id"])["llm"] is None


def test_embedded_without_a_prepared_model_still_serves_rule_cards(make_app, tmp_path):
    app = make_app(CDS_LLM="embedded", CDS_MODEL_DIR=str(tmp_path / "nothing-here"))
    rt = app.extensions["cds_runtime"]
    assert rt.reasoner is None and rt.readiness()["checks"]["llm"].startswith("unavailable")
    assert app.test_client().post(ORDER_SIGN, json=builders.order_sign(WARFARIN_CASE)).status_code == 200


@pytest.mark.slow
def test_embedded_tiny_model_end_to_end(make_app, tiny_model):
    app = make_app(CDS_LLM="embedded", CDS_MODEL_DIR=str(tiny_model.path), CDS_RESPONSE_BUDGET_MS="20000")
    rt = app.extensions["cds_runtime"]
    assert rt.readiness()["checks"]["llm"] == tiny_model.model_id
    # Never measured: no free text, and the record says why.
    assert rt.reasoner.capabilities == Capabilities()
    response = app.test_client().post(ORDER_SIGN, json=builders.order_sign(WARFARIN_CASE))
    llm = rt.storage.decision_log.get(response.headers["X-Decision-Id"])["llm"]
    assert llm["items"] == [] and llm["freeText"].startswith("off: not measured")
    rt.reasoner.capabilities = FREE_TEXT_ON
    response = app.test_client().post(ORDER_SIGN, json=builders.order_sign(WARFARIN_CASE))
    items = rt.storage.decision_log.get(response.headers["X-Decision-Id"])["llm"]["items"]
    assert (
        items and items[0]["status"] == "generated" and "guard" in items[0]
    )  # random weights: verdict varies


# -- the real model (prepared by `make run` / `cds-service model prepare`) ---------------------------------


@pytest.mark.real_model
def test_real_smollm2_tokenizer_is_repaired():
    model_dir = default_model_dir("int8")
    if not (model_dir / "manifest.json").is_file():
        pytest.skip("SmolLM2 not prepared (cds-service model prepare)")
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    assert tok.eos_token == "<|im_end|>"
    ids = tok("the patient takes warfarin.")["input_ids"]
    assert tok.convert_ids_to_tokens(ids) == ["the", "Ġpatient", "Ġtakes", "Ġwar", "f", "arin", "."]
    assert tok.decode(ids) == "the patient takes warfarin."
    out = GenAiBackend(model_dir).generate(
        [{"role": "user", "content": "Name one colour."}], max_new_tokens=16
    )
    assert out.text and "<|im_end|>" not in out.text
