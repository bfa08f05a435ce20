"""How often the prepared model's text passes the grounding guard, on the bundled sample records.

For each Synthea sample patient: one summary prompt and one explanation prompt (a warfarin + ibuprofen
alert), greedy, 64 new tokens; prints accepted / total, the guard's reasons, and the median generation
time. Needs the prepared model (`cds-service model prepare`).

    .venv/bin/python benchmarks/llm_grounding.py [--show]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from collections import Counter
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cds_service.reasoning.grounding import tidy  # noqa: E402
from cds_service.reasoning.prompts import explanation_messages, prompt_text, summary_messages  # noqa: E402
from cds_service.runtime import Runtime  # noqa: E402
from cds_service.settings import Settings  # noqa: E402

ALERT = {"summary": "Ibuprofen 400 MG Oral Tablet with Warfarin Sodium 5 MG Oral Tablet: major bleeding risk"}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--show", action="store_true", help="print every text with its verdict")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        rt = Runtime.load(Settings.load({"data_dir": tmp, "llm": "embedded"}), strict=True)
        if rt.reasoner is None:
            raise SystemExit(f"no model: {rt.llm_status}")
        accepted, seconds, reasons = 0, [], Counter()
        total = 0
        for path in sorted((ROOT / "fhir" / "samples" / "synthea-r4").glob("*.json")):
            resources = [e["resource"] for e in json.loads(path.read_text())["entry"]]
            patient_id = next(r["id"] for r in resources if r["resourceType"] == "Patient")
            facts = rt.content.facts_builder.build(resources, patient_id=patient_id, today=date(2021, 6, 1))
            for task, messages in (
                ("summary", summary_messages(facts)),
                ("explanation", explanation_messages(facts, ALERT)),
            ):
                out = rt.reasoner.backend.generate(messages, rt.settings.llm_max_new_tokens)
                text = tidy(out.text)
                verdict = rt.reasoner.guard.check(text, prompt_text(messages))
                total += 1
                accepted += verdict.accepted
                seconds.append(out.seconds)
                reasons.update(r.split(":")[0] for r in verdict.reasons)
                if args.show:
                    print(f"[{'ok' if verdict.accepted else 'dropped'}] {task}: {text!r} {verdict.reasons}")
        model_id = rt.reasoner.model_id
        rt.close()
    figures = {
        "model": model_id,
        "texts": total,
        "accepted": accepted,
        "median_generation_s": round(statistics.median(seconds), 2),
        "drop_reasons": dict(reasons),
    }
    print(
        f"{model_id}: {accepted}/{total} texts passed the grounding guard; median generation "
        f"{figures['median_generation_s']} s; drop reasons: {dict(reasons.most_common())}"
    )
    return figures


if __name__ == "__main__":
    main()
