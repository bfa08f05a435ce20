"""How often the prepared model's text passes the grounding guard, and how specific it is, on the bundled
sample records.

For each Synthea sample patient: one summary prompt and one explanation prompt (a warfarin + ibuprofen
alert), greedy, the serving token budget; prints accepted / total, specific / accepted (the measure behind
the free-text gate: cds_service/reasoning/capabilities.py), the guard's reasons and the median generation
time. The measurement itself is cds_service/reasoning/preparation/grounding_eval.py, which
`cds-service model evaluate` also runs. Needs the prepared model (`cds-service model prepare`).

    .venv/bin/python benchmarks/llm_grounding.py [--show] [--texts N] [--model-dir PATH]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cds_service.reasoning.backends import GenAiBackend  # noqa: E402
from cds_service.reasoning.grounding import GroundingGuard  # noqa: E402
from cds_service.reasoning.model_cache import default_model_dir  # noqa: E402
from cds_service.reasoning.preparation.grounding_eval import evaluate_grounding  # noqa: E402
from cds_service.runtime import Content  # noqa: E402
from cds_service.settings import Settings  # noqa: E402


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--show", action="store_true", help="print every text with its verdict")
    parser.add_argument("--texts", type=int, default=30, help="at most this many texts (2 per sample record)")
    parser.add_argument("--model-dir", type=Path, help="a prepared OpenVINO model (default: SmolLM2 INT8)")
    args = parser.parse_args(argv)
    settings = Settings.load({"llm": "off"})
    content = Content.load(settings)
    backend = GenAiBackend(args.model_dir or default_model_dir("int8"))

    def show(task, text, verdict, specific):
        if args.show:
            mark = "specific" if specific else "ok" if verdict.accepted else "dropped"
            print(f"[{mark}] {task}: {text!r} {verdict.reasons}")

    figures = evaluate_grounding(
        backend,
        GroundingGuard(content.terminology),
        content.facts_builder,
        max_texts=args.texts,
        max_new_tokens=settings.llm_max_new_tokens,
        on_text=show,
    )
    figures["model"] = backend.model_id
    print(
        f"{backend.model_id}: {figures['accepted']}/{figures['texts']} texts passed the grounding guard "
        f"(pass rate {figures['passRate']:.2f}); {figures['specific']} of them specific (specificity "
        f"{figures['specificity']:.2f}); median generation {figures['medianGenerationS']} s; drop reasons: "
        f"{figures['dropReasons']}"
    )
    return figures


if __name__ == "__main__":
    main()
