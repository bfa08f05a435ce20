"""Capability gates and the closed-answer task: the LLM is used only where measurement says it helps.

Pure gate functions, the remote backend's constrained answers (a fake OpenAI-compatible server), the
NegEx kit sampling and scoring, the reasoner's free-text gate and `decide_assertions` under a deadline.
Tiny-model checks (GenAI and PyTorch constrained decoding, `model evaluate`) are in test_reasoning.py,
which builds the model once.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import builders
import pytest
from fake_llm_server import serve_chat, url_of

from cds_service.clinical.mentions import NEGATED, STATUSES
from cds_service.reasoning.backends import Generation, LlmError, RemoteBackend, exact_option, options_regex
from cds_service.reasoning.capabilities import (
    REMOTE_FILE,
    Capabilities,
    decide_assertion,
    decide_free_text,
    from_section,
    load_capabilities,
    read_remote_section,
    store_capabilities,
)
from cds_service.reasoning.preparation.evaluate import evaluate_assertion
from cds_service.reasoning.preparation.grounding_eval import is_specific
from cds_service.reasoning.preparation.negex import KitRow, find_kit, read_kit, score, stratified_sample
from cds_service.reasoning.tasks import ASSERTION_LABELS, ASSERTION_OPTIONS, assertion_messages
from cds_service.runtime import Runtime
from cds_service.settings import Settings

ORDER_SIGN = "/cds-services/medication-order-check"

# -- the task ---------------------------------------------------------------------------------------


def test_every_option_maps_to_a_mention_status_and_the_prompt_ends_with_the_question():
    assert set(ASSERTION_LABELS.values()) == set(STATUSES)
    messages = assertion_messages("She  denies\nchest pain.", "chest pain")
    assert messages[0]["role"] == "system" and messages[-1]["role"] == "user"
    assert messages[-1]["content"] == 'Sentence: "She denies chest pain."\nPhrase: "chest pain"\nLabel:'
    examples = messages[0]["content"].split("Examples:\n")[1].splitlines()
    assert {line.rsplit(": ", 1)[1] for line in examples} == set(ASSERTION_OPTIONS)  # each label shown


def test_options_regex_escapes_metacharacters_but_not_spaces():
    assert options_regex(("other person", "a.b", "x|y")) == r"(other person|a\.b|x\|y)"
    with pytest.raises(ValueError):
        options_regex(("yes", ""))


def test_exact_option_accepts_case_and_space_only():
    assert exact_option("  Absent\n", ("present", "absent")) == "absent"
    with pytest.raises(LlmError):
        exact_option("absent.", ("present", "absent"))


# -- remote backend: response_format, and servers that ignore it ------------------------------------


def _fake_server(replies: list[str], seen: list[dict]):
    return serve_chat(lambda request: replies[len(seen) - 1], seen)


def test_remote_choose_sends_an_enum_schema_and_accepts_only_allowed_answers():
    replies = [
        '{"answer": "absent"}',  # honoured the schema
        '"past"',  # a bare JSON string
        "  Other Person ",  # ignored the schema, but said exactly an option
        "The answer is absent.",  # free text containing an option: not an answer
        '{"answer": "denied"}',  # JSON, but not an option
        '{"label": "absent"}',  # JSON without the answer field
    ]
    seen: list[dict] = []
    server = _fake_server(replies, seen)
    try:
        backend = RemoteBackend(url_of(server), model="smollm2")
        messages = assertion_messages("No fever.", "fever")
        answers = [backend.choose(messages, ASSERTION_OPTIONS).text for _ in range(3)]
        failures = []
        for _ in range(3):
            with pytest.raises(LlmError) as caught:
                backend.choose(messages, ASSERTION_OPTIONS)
            failures.append(str(caught.value))
    finally:
        server.shutdown()
    assert answers == ["absent", "past", "other person"]
    schema = seen[0]["response_format"]["json_schema"]["schema"]
    assert seen[0]["response_format"]["type"] == "json_schema"
    assert schema["properties"]["answer"]["enum"] == list(ASSERTION_OPTIONS)
    assert schema["required"] == ["answer"] and seen[0]["temperature"] == 0
    assert all("option" in f for f in failures)


# -- the gates, as pure functions -------------------------------------------------------------------


def _scores(negation: float, macro: float, support: int = 60) -> dict:
    return {
        "labels": {
            "negation": {"f1": negation, "support": support},
            "historical": {"f1": macro, "support": 40},
        },
        "macroF1": macro,
    }


def _assertion(baseline, llm, combination) -> dict:
    return {"measured": True, "baseline": baseline, "llm": llm, "combination": combination}


def test_llm_is_chosen_only_when_it_beats_the_baseline_on_negation_and_macro_f1():
    base = _scores(0.90, 0.70)
    assert decide_assertion(_assertion(base, _scores(0.95, 0.80), _scores(0.92, 0.75)))[0] == "llm"
    # Better macro F1 but worse negation F1: not good enough.
    assert decide_assertion(_assertion(base, _scores(0.85, 0.90), _scores(0.90, 0.70)))[0] == "baseline"
    # The combination is chosen when it, and not the LLM alone, beats the baseline.
    component, reason = decide_assertion(_assertion(base, _scores(0.40, 0.30), _scores(0.93, 0.72)))
    assert component == "combination" and "0.93" in reason
    # Losing on both: baseline, and the reason carries the figures.
    component, reason = decide_assertion(_assertion(base, _scores(0.10, 0.20), _scores(0.89, 0.69)))
    assert component == "baseline" and "0.10" in reason and "0.90" in reason


def test_a_small_sample_or_no_figures_keep_the_baseline():
    small = _assertion(_scores(0.5, 0.5, support=5), _scores(0.9, 0.9, 5), _scores(0.9, 0.9, 5))
    assert decide_assertion(small) == ("baseline", "sample too small (5 negated rows < 30)")
    assert decide_assertion(None)[0] == "baseline"
    assert decide_assertion({"measured": False, "reason": "kit absent"}) == ("baseline", "kit absent")
    assert decide_assertion({"measured": True, "baseline": {}})[0] == "baseline"  # unreadable


def test_free_text_needs_pass_rate_and_specificity_and_enough_texts():
    assert decide_free_text({"texts": 20, "passRate": 0.85, "specificity": 0.6})[0] is True
    off, reason = decide_free_text({"texts": 20, "passRate": 0.45, "specificity": 0.9})
    assert off is False and "pass rate 0.45" in reason
    assert decide_free_text({"texts": 20, "passRate": 0.9, "specificity": 0.3})[0] is False
    assert decide_free_text({"texts": 4, "passRate": 1.0, "specificity": 1.0})[0] is False
    assert decide_free_text(None)[0] is False


def test_no_capabilities_mean_baseline_and_no_free_text(tmp_path):
    for section in (None, {}, "garbage"):
        caps = from_section(section)
        assert caps.assertion_component == "baseline" and caps.free_text_enabled is False
    remote = RemoteBackend("http://127.0.0.1:9", model="m")
    assert load_capabilities(remote, tmp_path) == Capabilities()


def test_remote_capabilities_live_in_the_data_dir_by_model_id(tmp_path):
    remote = RemoteBackend("http://127.0.0.1:9", model="m")
    other = RemoteBackend("http://127.0.0.1:9", model="other")
    section = {
        "measuredAt": "2026-01-01T00:00:00Z",
        "assertion": _assertion(_scores(0.9, 0.7), _scores(0.95, 0.8), _scores(0.9, 0.7)),
        "freeText": {"texts": 20, "passRate": 0.9, "specificity": 0.7},
    }
    path = store_capabilities(remote, tmp_path, section)
    store_capabilities(other, tmp_path, {"freeText": {"texts": 20, "passRate": 0.1, "specificity": 0.1}})
    assert path == tmp_path / "llm-capabilities.json"
    assert read_remote_section(tmp_path, remote.model_id) == section
    caps = load_capabilities(remote, tmp_path)
    assert caps.assertion_component == "llm" and caps.free_text_enabled
    assert not load_capabilities(other, tmp_path).free_text_enabled
    assert caps.record()["measuredAt"] == "2026-01-01T00:00:00Z"


# -- the kit ----------------------------------------------------------------------------------------


def _row(sentence, phrase, negation="Affirmed", temporality="Recent", experiencer="Patient"):
    return KitRow(1, "", phrase, sentence, negation, temporality, experiencer)


def test_kit_rows_are_located_in_ordinary_case():
    assert _row("She denies any COUGH or sputum.", "cough").located() == (
        "She denies any cough or sputum.",
        15,
        20,
    )
    assert _row("LUNGS   WERE clear.", "lungs were").located() == ("Lungs   were clear.", 0, 12)
    assert _row("No adenopathy present.", "neck is supple.  No adenopathy present").located() is None


def test_vendored_kit_is_read_and_a_stratified_sample_represents_every_status():
    kit = find_kit()
    assert kit is not None and kit.parent.name == "negex"
    rows = read_kit(kit)
    assert len(rows) == 2376
    sample = stratified_sample(rows, 300)
    statuses = {r.status for r in sample}
    assert len(sample) == 300 and statuses == {
        "present",
        "negated",
        "historical",
        "hypothetical",
        "someone-else",
    }
    assert sum(r.status == "negated" for r in sample) >= 30
    assert stratified_sample(rows, 300) == sample  # deterministic


def test_score_counts_each_label_on_the_single_status():
    rows = [
        _row("A", "a", negation="Negated"),
        _row("B", "b", negation="Negated"),
        _row("C", "c", temporality="Historical"),
        _row("D", "d"),
    ]
    result = score(rows, [NEGATED, "present", NEGATED, "present"])
    negation = result["labels"]["negation"]
    assert (negation["tp"], negation["fp"], negation["fn"]) == (1, 1, 1)
    assert negation["precision"] == 0.5 and negation["recall"] == 0.5 and negation["f1"] == 0.5
    assert result["labels"]["historical"]["f1"] == 0.0 and result["labels"]["experiencer"]["support"] == 0
    assert result["macroF1"] == 0.25  # labels without gold rows are left out
    with pytest.raises(ValueError):
        score(rows, [NEGATED])


def test_without_a_kit_the_assertion_gate_stays_at_baseline():
    section = evaluate_assertion(object(), None)
    assert section["measured"] is False and "--kit" in section["reason"]
    assert decide_assertion(section)[0] == "baseline"


def test_specificity_needs_the_subject_and_a_patient_value(content):
    prompt = (
        "You are a clinical pharmacist.\nFacts:\nPatient: 74 years old, female.\n"
        "Active problems: Hypertension.\n"
        "Active medications: Warfarin Sodium 5 MG Oral Tablet.\nRecent labs: INR 2.8 on 2021-05-20.\n"
        "Alert: Ibuprofen 400 MG Oral Tablet with Warfarin Sodium 5 MG Oral Tablet: major bleeding risk\n"
        "Write the explanation."
    )
    terms = content.terminology
    assert is_specific(
        "With an INR of 2.8, adding ibuprofen to warfarin raises bleeding risk.", prompt, terms
    )
    assert not is_specific("Ibuprofen with warfarin raises bleeding risk.", prompt, terms)  # no patient value
    assert not is_specific("She is 74 years old.", prompt, terms)  # no drug or condition of the alert
    assert not is_specific("Ibuprofen 400 mg with warfarin.", prompt, terms)  # 400 is the alert's, not hers


# -- the reasoner -----------------------------------------------------------------------------------


class GatedChooser:
    """Answers `answer` to every closed question, and grounded text to open ones, when the gate opens."""

    model_id = "gated-chooser"

    def __init__(self, answer: str = "absent"):
        self.answer, self.gate, self.calls = answer, threading.Event(), 0

    def generate(self, messages, max_new_tokens):
        self.calls += 1
        self.gate.wait(timeout=30)
        return Generation("Warfarin with ibuprofen raises the bleeding risk for this patient.", 10, 10, 0.01)

    def choose(self, messages, options, max_new_tokens=8):
        self.calls += 1
        self.gate.wait(timeout=30)
        if self.answer == "server down":
            raise LlmError("LLM server error: ConnectionError")
        return Generation(self.answer, 40, 2, 0.01)  # even a non-option: a misbehaving backend


def _reasoner(rt, backend, capabilities=None):
    from cds_service.reasoning.cache import LlmStore
    from cds_service.reasoning.grounding import GroundingGuard
    from cds_service.reasoning.reasoner import Reasoner

    return Reasoner(
        backend,
        LlmStore(rt.storage.engine),
        GroundingGuard(rt.content.terminology),
        capabilities=capabilities,
    )


def _settle(reasoner, seconds: float = 10) -> None:
    deadline = time.time() + seconds
    while reasoner._inflight and time.time() < deadline:
        time.sleep(0.02)


def test_decide_assertions_is_pending_past_the_deadline_then_cached_on_the_next_call(make_app):
    rt = make_app().extensions["cds_runtime"]
    backend = GatedChooser("absent")
    reasoner = _reasoner(rt, backend)
    sentence = "She denies chest pain or fever."
    items = [(sentence, 11, 21), (sentence, 25, 30)]
    first = reasoner.decide_assertions(items, time.monotonic() + 0.05)
    assert [status for status, _ in first] == [None, None]
    assert {item["status"] for _, item in first} == {"pending"}
    assert all(item["task"] == "assertion" and len(item["promptHash"]) == 64 for _, item in first)
    assert first[0][1]["promptHash"] != first[1][1]["promptHash"]  # a different phrase, a different prompt
    backend.gate.set()
    _settle(reasoner)
    second = reasoner.decide_assertions(items, time.monotonic() + 0.05)
    assert [status for status, _ in second] == [NEGATED, NEGATED]
    assert [item["status"] for _, item in second] == ["cached", "cached"]
    assert second[0][1]["output"] == NEGATED and backend.calls == 2  # each prompt asked once
    reasoner.close()


def test_decide_assertions_waits_within_the_deadline_and_does_not_cache_failures(make_app):
    rt = make_app().extensions["cds_runtime"]
    backend = GatedChooser("server down")
    backend.gate.set()
    reasoner = _reasoner(rt, backend)
    [(status, item)] = reasoner.decide_assertions([("No rash.", 3, 7)], time.monotonic() + 5)
    assert status is None and item["status"] == "failed" and "LlmError" in item["reasons"][0]
    backend.answer = "maybe"  # answers, but not with an allowed label: as good as an error
    [(status, item)] = reasoner.decide_assertions([("No rash.", 3, 7)], time.monotonic() + 5)
    assert status is None and item["status"] == "failed" and not reasoner._inflight
    backend.answer = "present"
    [(status, item)] = reasoner.decide_assertions([("No rash.", 3, 7)], time.monotonic() + 5)
    assert status == "present" and item["status"] == "generated"  # asked again, not a cached failure
    reasoner.close()


WARFARIN_CASE = {
    "patient": {"age": 74, "gender": "female"},
    "medications": ["Warfarin Sodium 5 MG Oral Tablet"],
    "observations": [{"code": "loinc|6301-6", "value": 2.8, "daysAgo": 6}],
    "draftOrders": ["Ibuprofen 400 MG Oral Tablet"],
}


def test_free_text_off_adds_no_ai_text_and_records_why(make_app):
    app = make_app()
    rt = app.extensions["cds_runtime"]
    backend = GatedChooser()
    backend.gate.set()
    caps = from_section({"freeText": {"texts": 20, "passRate": 0.45, "specificity": 0.2}})
    rt.reasoner = _reasoner(rt, backend, caps)
    rt.registry.pipeline.reasoner = rt.reasoner
    response = app.test_client().post(ORDER_SIGN, json=builders.order_sign(WARFARIN_CASE))
    assert response.status_code == 200
    assert all("AI-generated" not in c.get("detail", "") for c in response.get_json()["cards"])
    llm = rt.storage.decision_log.get(response.headers["X-Decision-Id"])["llm"]
    assert llm["items"] == [] and backend.calls == 0
    assert (
        llm["freeText"].startswith("off: grounding pass rate 0.45") and "specificity 0.20" in llm["freeText"]
    )


def test_the_default_reasoner_writes_no_free_text(make_app):
    rt = make_app().extensions["cds_runtime"]
    reasoner = _reasoner(rt, GatedChooser())
    assert reasoner.capabilities.assertion_component == "baseline"
    cards, record = reasoner.enrich("summary", None, [], time.monotonic())
    assert cards == [] and record["freeText"].startswith("off: not measured")
    reasoner.close()


def test_model_evaluate_refuses_a_missing_kit_file(tmp_path):
    from click.testing import CliRunner

    from cds_service.cli import main

    result = CliRunner().invoke(main, ["model", "evaluate", "--kit", str(tmp_path / "nope.txt")])
    assert result.exit_code == 2 and "not a file" in result.output


def test_kit_readme_and_license_are_vendored_with_the_kit():
    folder = Path(find_kit()).parent
    assert "Apache License 2.0" in (folder / "README.md").read_text()
    assert "Apache License" in (folder / "LICENSE-Apache-2.0.txt").read_text()


def test_pytorch_counterpart_allows_what_the_grammar_allows():
    from cds_service.reasoning.preparation.torch_choice import allowed_next

    by_text = {"a": [1], "ab": [2], "abs": [3], "ent": [4], "bsent": [5], "p": [6], "present": [7], "x": [8]}
    options = ("absent", "present")
    assert allowed_next("", options, by_text, eos=0) == [1, 2, 3, 6, 7]  # any prefix, not one tokenisation
    assert allowed_next("a", options, by_text, eos=0) == [5]
    assert allowed_next("absent", options, by_text, eos=0) == [0]  # complete: only the end
    assert allowed_next("zz", options, by_text, eos=0) == [0]


def test_a_remote_server_that_reads_notes_well_is_measured_gated_in_and_used(tmp_path, monkeypatch):
    """The path for a capable model behind CDS_LLM: `model evaluate --url` measures it on the kit, writes
    its gates into the data dir, and a service started against that server lets it decide assertions.
    The fake server answers from the kit's own labels (a model better than the baseline by construction)."""
    from click.testing import CliRunner

    from cds_service.cli import main

    gold = {" ".join(row.raw_sentence.split()).lower(): row.status for row in read_kit(find_kit())}
    label_of = {status: label for label, status in ASSERTION_LABELS.items()}

    def oracle(request: dict) -> str:
        question = request["messages"][-1]["content"]
        sentence = question.split('Sentence: "', 1)[1].split('"\nPhrase:', 1)[0].lower()
        return json.dumps({"answer": label_of[gold.get(sentence, "present")]})

    server = serve_chat(oracle)
    url = url_of(server)
    monkeypatch.setenv("CDS_DATA_DIR", str(tmp_path))
    try:
        result = CliRunner().invoke(
            main, ["model", "evaluate", "--url", url, "--sample", "200", "--texts", "0"]
        )
        assert result.exit_code == 0, result.output
        assert (tmp_path / REMOTE_FILE).is_file()
        settings = Settings.load({"data_dir": str(tmp_path), "llm": url})
        rt = Runtime.load(settings)
        try:
            caps = rt.reasoner.capabilities
            assert caps.assertion_component in ("llm", "combination"), caps.assertion_reason
            assert not caps.free_text_enabled  # not measured: stays off
        finally:
            rt.close()
    finally:
        server.shutdown()
