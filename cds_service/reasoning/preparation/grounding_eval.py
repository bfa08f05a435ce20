"""How good the model's free text is, measured: grounding pass rate and specificity on the bundled records.

For each Synthea sample patient, one summary prompt and one explanation prompt (a warfarin + ibuprofen
alert), greedy, the serving token budget; each text goes through the serving grounding guard.

- pass rate: accepted texts / texts.
- specificity: of the accepted texts, the share that name the subject — the alert's drug or condition
  (for a summary, one of the patient's medications or problems) — AND at least one patient-specific value
  from the prompt's facts (a number: age, a lab value, a dose; dates do not count). Text can pass the
  guard by saying nothing ("Review the medication list."); that is not worth showing.
"""

from __future__ import annotations

import json
import re
import statistics
from collections import Counter
from datetime import date
from pathlib import Path

from ...content import default_content_dir
from ..grounding import _CONDITIONS, GroundingGuard, _numbers, tidy
from ..prompts import explanation_messages, prompt_text, summary_messages

ALERT = {"summary": "Ibuprofen 400 MG Oral Tablet with Warfarin Sodium 5 MG Oral Tablet: major bleeding risk"}
_DATE = re.compile(r"\b\d{4}-\d{2}-\d{2}\b")


def _subjects(text: str, terminology) -> set[str]:
    low = text.lower()
    names = set(terminology.ingredients([], [low]))
    names |= {f"class:{c}" for c in terminology.named_classes([low])}
    names |= {f"condition:{m.group(1)}" for m in _CONDITIONS.finditer(low)}
    return names


def _split_prompt(prompt: str) -> tuple[str, str | None]:
    """(the patient's facts, the alert line or None)."""
    facts, _, alert = prompt.partition("\nAlert: ")
    return facts, (alert.split("\n")[0] if alert else None)


def is_specific(text: str, prompt: str, terminology) -> bool:
    facts, alert = _split_prompt(prompt)
    subjects = _subjects(alert if alert is not None else facts, terminology)
    if not subjects & _subjects(text, terminology):
        return False
    return bool(
        _numbers(_DATE.sub(" ", text)) & _numbers(_DATE.sub(" ", facts.partition("Facts:")[2] or facts))
    )


def sample_records(samples_dir: Path | None = None) -> list[Path]:
    return sorted((samples_dir or default_content_dir() / "fhir" / "samples" / "synthea-r4").glob("*.json"))


def evaluate_grounding(
    backend,
    guard: GroundingGuard,
    facts_builder,
    *,
    max_texts: int = 20,
    max_new_tokens: int = 64,
    samples_dir: Path | None = None,
    today: date = date(2021, 6, 1),
    on_text=None,
) -> dict:
    """Generate up to `max_texts` texts (summary and explanation alternating per patient) and measure."""
    texts = accepted = specific = 0
    seconds: list[float] = []
    reasons: Counter = Counter()
    for path in sample_records(samples_dir):
        if texts >= max_texts:
            break
        resources = [e["resource"] for e in json.loads(path.read_text())["entry"]]
        patient_id = next(r["id"] for r in resources if r["resourceType"] == "Patient")
        facts = facts_builder.build(resources, patient_id=patient_id, today=today)
        for task, messages in (
            ("summary", summary_messages(facts)),
            ("explanation", explanation_messages(facts, ALERT)),
        ):
            if texts >= max_texts:
                break
            prompt = prompt_text(messages)
            out = backend.generate(messages, max_new_tokens)
            text = tidy(out.text)
            verdict = guard.check(text, prompt)
            good = verdict.accepted and is_specific(text, prompt, guard.terminology)
            texts += 1
            accepted += verdict.accepted
            specific += good
            seconds.append(out.seconds)
            reasons.update(r.split(":")[0] for r in verdict.reasons)
            if on_text is not None:
                on_text(task, text, verdict, good)
    return {
        "measured": texts > 0,
        **({} if texts else {"reason": "no sample records"}),
        "texts": texts,
        "accepted": accepted,
        "specific": specific,
        "passRate": round(accepted / texts, 4) if texts else 0.0,
        "specificity": round(specific / accepted, 4) if accepted else 0.0,
        "maxNewTokens": max_new_tokens,
        "medianGenerationS": round(statistics.median(seconds), 3) if seconds else None,
        "dropReasons": dict(reasons.most_common()),
    }
