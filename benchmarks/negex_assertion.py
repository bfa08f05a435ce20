"""Assertion status on the NegEx/ConText kit: the rule baseline, the LLM and their combination, side by side.

Per label (negation, historical, hypothetical = the kit's "Not particular", experiencer) precision, recall
and F1, macro F1 and exact-status accuracy, for the ConText baseline (cds_service/clinical/assertion.py),
for the LLM under constrained decoding (cds_service/reasoning/tasks.py) and for the combination (the
baseline where it found a trigger, else the LLM); time per sentence and per 1,000 tokens (prompt +
answer). Every backend answers the same sentences in one run, so OpenVINO INT8 vs FP32 vs PyTorch FP32
differences are the backends', not the sample's; the share of identical answers is printed too.

    .venv/bin/python benchmarks/negex_assertion.py                       # SmolLM2 INT8, 300 sentences
    .venv/bin/python benchmarks/negex_assertion.py --backends int8,fp32,pytorch --sample 300
    .venv/bin/python benchmarks/negex_assertion.py --all                 # the whole kit (2,376)
    .venv/bin/python benchmarks/negex_assertion.py --model-dir PATH      # another prepared model (--source)

int8/fp32 are `cds-service model prepare [--weight-format fp32]` (built when missing), pytorch is the
FP32 Hugging Face folder of the same model (prepare.default_hf_dir()).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cds_service.reasoning.preparation.evaluate import (  # noqa: E402
    DEFAULT_SAMPLE,
    combine,
    kit_sample,
    run_baseline,
    run_chooser,
)
from cds_service.reasoning.preparation.negex import (  # noqa: E402
    LABELS,
    context_labels,
    find_kit,
    score,
    score_dimensions,
)


def load_chooser(name: str):
    """`int8` / `fp32` / `fp16` / `int4`: the prepared SmolLM2 IR; `pytorch`: its FP32 HF folder; a path:
    a prepared OpenVINO folder."""
    if name == "pytorch":
        from cds_service.reasoning.preparation.prepare import default_hf_dir
        from cds_service.reasoning.preparation.torch_choice import TorchChooser

        return TorchChooser(default_hf_dir())
    from cds_service.reasoning.backends import GenAiBackend

    if Path(name).is_dir():
        return GenAiBackend(Path(name))
    from cds_service.reasoning.preparation.prepare import default_model_dir, prepare

    return GenAiBackend(prepare(default_model_dir(name), weight_format=name, progress=False).path)


def _cells(scores: dict) -> str:
    out = "".join(
        f"{m['precision']:>6.2f}{m['recall']:>6.2f}{m['f1']:>6.2f} " for m in scores["labels"].values()
    )
    return out + f"{scores['macroF1']:>7.2f}{scores['accuracy']:>6.2f}"


def print_table(result: dict) -> None:
    sample = result["sample"]
    print(
        f"NegEx/ConText kit: {sample['sentences']} sentences ({sample['method']}), gold statuses "
        f"{sample['strata']}; {sample['skippedPhraseNotInSentence']} rows skipped (phrase not in sentence)"
    )
    print(f"{'':<30}" + "".join(f"{label[:18]:<19}" for label in LABELS) + f"{'macro':>7}{'exact':>6}")
    header = (
        f"{'component':<30}"
        + "     P     R    F1 " * len(LABELS)
        + f"{'F1':>7}{'acc':>6}{'s/sent':>9}{'s/1k tok':>10}"
    )
    print(header)
    print("-" * len(header))
    per_sentence = result["baselineSecondsPerSentence"]
    print(f"{'baseline (ConText rules)':<30}{_cells(result['baseline'])}{per_sentence:>9.4f}")
    for name, run in result["backends"].items():
        if "error" in run:
            print(f"{name + ' LLM':<30}failed: {run['error']}")
            continue
        t = run["timing"]
        per_k = (
            f"{t['secondsPer1000Tokens']:>10.3f}" if t["secondsPer1000Tokens"] is not None else f"{'-':>10}"
        )
        print(f"{name + ' LLM':<30}{_cells(run['llm'])}{t['secondsPerSentence']:>9.4f}{per_k}")
        print(f"{name + ' combination':<30}{_cells(run['combination'])}")
    for name, run in result["backends"].items():
        if "error" not in run:
            print(
                f"{name}: load {run['loadSeconds']} s, {run['errors']} errors, answers {run['answers']}, "
                f"mean {run['timing']['meanTokensPerSentence']} tokens/sentence"
            )
    if result.get("agreement"):
        print(
            "identical answers: "
            + ", ".join(f"{pair} {share:.1%}" for pair, share in result["agreement"].items())
        )
    print(f"baseline found a trigger in {result['baselineTriggered']} of {sample['sentences']} sentences")
    if result.get("baselinePerDimension"):
        print(
            "baseline per ConText dimension (score_dimensions): "
            + ", ".join(f"{k} F1 {v['f1']:.2f}" for k, v in result["baselinePerDimension"].items())
        )


def _per_dimension(items, baseline) -> dict:
    """The baseline scored per ConText dimension (a row may be negated AND historical), as
    tests/test_assertion.py scores it: the baseline's own figure. The table above scores every component on
    its one status, as a mention carries it."""
    return score_dimensions([it.row for it in items], [context_labels(c) for c in baseline.contexts])


def run(backends: list[str], kit: Path, sample: int | None, seed: int = 0) -> dict:
    from cds_service.clinical.assertion import assess

    _, items, described = kit_sample(kit, sample, seed)
    gold = [it.row for it in items]
    baseline = run_baseline(items, assess)
    result = {
        "kit": str(kit),
        "baselinePerDimension": _per_dimension(items, baseline),
        "sample": described,
        "baseline": score(gold, baseline.statuses),
        "baselineSecondsPerSentence": baseline.seconds / max(1, len(items)),
        "baselineTriggered": sum(baseline.triggered),
        "backends": {},
    }
    answers: dict[str, list] = {}
    for name in backends:
        started = time.perf_counter()
        try:
            chooser = load_chooser(name)
        except Exception as exc:  # one backend failing to load must not lose the others' figures
            result["backends"][name] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
            continue
        load_s = time.perf_counter() - started
        chooser.choose([{"role": "user", "content": "Warm-up."}], ("yes", "no"))  # grammar/trie set-up
        llm = run_chooser(chooser, items)
        answers[name] = llm.statuses
        result["backends"][getattr(chooser, "model_id", name) if Path(name).is_dir() else name] = {
            "modelId": getattr(chooser, "model_id", name),
            "loadSeconds": round(load_s, 1),
            "llm": score(gold, llm.statuses),
            "combination": score(gold, combine(baseline, llm.statuses)),
            "timing": llm.timing(len(items)),
            "errors": llm.errors,
            "answers": dict(llm.answers),
        }
        del chooser
    names = list(answers)
    result["agreement"] = {
        f"{a} vs {b}": sum(x == y for x, y in zip(answers[a], answers[b], strict=True)) / max(1, len(items))
        for i, a in enumerate(names)
        for b in names[i + 1 :]
    }
    return result


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", default="int8", help="comma-separated: int8, fp32, fp16, int4, pytorch")
    parser.add_argument(
        "--model-dir",
        action="append",
        default=[],
        type=Path,
        help="a prepared OpenVINO model folder (repeatable)",
    )
    parser.add_argument(
        "--sample", type=int, default=DEFAULT_SAMPLE, help="kit sentences, stratified by status"
    )
    parser.add_argument("--all", action="store_true", help="the whole kit")
    parser.add_argument("--kit", type=Path, help="the kit file (default: benchmarks/negex/)")
    parser.add_argument("--json-out", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    kit = find_kit(args.kit)
    if kit is None:
        raise SystemExit("NegEx kit not found (benchmarks/negex/ or --kit PATH)")
    backends = [b.strip() for b in args.backends.split(",") if b.strip()] + [str(p) for p in args.model_dir]
    result = run(backends, kit, None if args.all else args.sample)
    print_table(result)
    if args.json_out:
        args.json_out.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
