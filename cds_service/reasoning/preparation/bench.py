"""``cds-service model bench``: same model, same prompts, same run — PyTorch FP32 vs OpenVINO FP32/INT8/INT4.

Each backend runs in its own subprocess (so peak RSS is its own), loads the model (timed), warms up on
an unrelated prompt, then answers every benchmark prompt with greedy decoding and a fixed number of
new tokens. Prompts are distinct clinical records of 300-600 tokens built from the bundled Synthea
patients, so prefix caching cannot flatter the figures. Reported per backend: load time, median time
to first token, median decode tokens/s, peak RSS, and the memory-bandwidth bound for decode (all
weights are read once per generated token: bound = measured copy bandwidth / weight bytes).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

from ...content import default_content_dir
from .prepare import default_hf_dir, default_model_dir, prepare

TARGET_SPEEDUP = 2.5
TARGET_RSS_RATIO = 0.5


# ------------------------------------------------------------------------------------------------
# Prompts
# ------------------------------------------------------------------------------------------------


def build_prompts(count: int, tokenizer_dir: Path) -> list[list[dict]]:
    from tokenizers import Tokenizer

    from ...clinical.facts import FactsBuilder
    from ...clinical.terminology import load_terminology
    from ...settings import Settings
    from ..prompts import EXPLAIN_SYSTEM, SUMMARY_SYSTEM, fact_lines

    tokenizer = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))
    settings = Settings.load({"llm": "off"})
    builder = FactsBuilder(load_terminology(settings.fhir_dir / "terminology"))
    samples = sorted((default_content_dir() / "fhir" / "samples" / "synthea-r4").glob("*.json"))
    prompts = []
    for i, path in enumerate(samples):
        if len(prompts) >= count:
            break
        bundle = json.loads(path.read_text())
        resources = [e["resource"] for e in bundle["entry"]]
        patient = next(r for r in resources if r["resourceType"] == "Patient")
        facts = builder.build(resources, patient_id=patient["id"], today=date(2021, 6, 1))
        system = SUMMARY_SYSTEM if i % 2 == 0 else EXPLAIN_SYSTEM
        # Grow the record (more history each step) until the prompt is 300-600 tokens.
        for items in range(6, 200, 2):
            lines = fact_lines(facts, max_items=items, lab_days=3650) + _history_lines(facts, items)
            text = "Facts:\n" + "\n".join(lines) + "\nWrite the summary."
            n = len(tokenizer.encode(system + text).ids)
            if n >= 300:
                break
        if 300 <= n <= 600:
            prompts.append([{"role": "system", "content": system}, {"role": "user", "content": text}])
    if len(prompts) < count:
        raise RuntimeError(f"only {len(prompts)} sample records give 300-600 token prompts")
    return prompts


def _history_lines(facts, items: int) -> list[str]:
    """Older history, only to reach benchmark prompt lengths (production prompts stay short)."""
    past = sorted({c.name for c in facts.conditions if not c.active})[:items]
    meds = sorted({m.name for m in facts.medications if not m.is_active})[:items]
    labs = [
        f"{o.name} {o.value:g}{(' ' + o.unit) if o.unit else ''} ({o.when.date().isoformat()})"
        for o in facts.observations
        if o.value is not None and o.when is not None
    ][:items]
    return [
        f"Past problems: {'; '.join(past) or 'none'}.",
        f"Past medications: {'; '.join(meds) or 'none'}.",
        f"Earlier results: {'; '.join(labs) or 'none'}.",
    ]


# ------------------------------------------------------------------------------------------------
# Workers (subprocesses)
# ------------------------------------------------------------------------------------------------


def _peak_rss_mb() -> float:
    """This process image's peak RSS. VmHWM, not ru_maxrss: Linux carries ru_maxrss across exec, so a
    worker would inherit the parent's peak (the bandwidth probe's arrays) and every backend would look
    alike."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def worker_openvino(model_dir: Path, prompts: list, new_tokens: int) -> dict:
    import openvino_genai

    started = time.perf_counter()
    pipe = openvino_genai.LLMPipeline(str(model_dir), "CPU")
    load_s = time.perf_counter() - started
    tokenizer = pipe.get_tokenizer()
    config = openvino_genai.GenerationConfig()
    config.max_new_tokens = config.min_new_tokens = new_tokens
    config.do_sample = False
    config.apply_chat_template = False
    pipe.generate(["Warm-up: list three colours."], config)
    ttft, decode, prompt_tokens = [], [], []
    for messages in prompts:
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True)
        result = pipe.generate([text], config)
        metrics = result.perf_metrics
        ttft.append(metrics.get_ttft().mean / 1000.0)
        decode.append(1000.0 / metrics.get_tpot().mean)
        prompt_tokens.append(metrics.get_num_input_tokens())
    return {
        "load_s": load_s,
        "ttft_s": ttft,
        "decode_tok_s": decode,
        "prompt_tokens": prompt_tokens,
        "weight_bytes": (model_dir / "openvino_model.bin").stat().st_size,
        "peak_rss_mb": _peak_rss_mb(),
    }


def worker_pytorch(hf_dir: Path, prompts: list, new_tokens: int) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    started = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(hf_dir)
    model = AutoModelForCausalLM.from_pretrained(hf_dir, torch_dtype=torch.float32)
    model.eval()
    load_s = time.perf_counter() - started
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    ttft, decode, prompt_tokens = [], [], []
    with torch.inference_mode():
        warm = tokenizer("Warm-up: list three colours.", return_tensors="pt")
        model.generate(**warm, max_new_tokens=4, do_sample=False)
        for messages in prompts:
            text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            inputs = tokenizer(text, return_tensors="pt")
            prompt_tokens.append(int(inputs["input_ids"].shape[1]))
            t0 = time.perf_counter()
            model.generate(**inputs, max_new_tokens=1, do_sample=False)
            first = time.perf_counter() - t0
            t0 = time.perf_counter()
            model.generate(**inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
            total = time.perf_counter() - t0
            ttft.append(first)
            decode.append((new_tokens - 1) / max(total - first, 1e-9))
    return {
        "load_s": load_s,
        "ttft_s": ttft,
        "decode_tok_s": decode,
        "prompt_tokens": prompt_tokens,
        "weight_bytes": weight_bytes,
        "peak_rss_mb": _peak_rss_mb(),
    }


def _worker_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--kind", choices=["openvino", "pytorch"], required=True)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--prompts", type=Path, required=True)
    parser.add_argument("--new-tokens", type=int, required=True)
    args = parser.parse_args(argv)
    prompts = json.loads(args.prompts.read_text())
    run = worker_openvino if args.kind == "openvino" else worker_pytorch
    print(json.dumps(run(args.model, prompts, args.new_tokens)))


# ------------------------------------------------------------------------------------------------
# Parent
# ------------------------------------------------------------------------------------------------


def memory_bandwidth_gbs(size_mb: int = 256, repeats: int = 5) -> float:
    """Best-of-N copy bandwidth (bytes read + written) with NumPy, single thread."""
    import numpy as np

    src = np.ones(size_mb * 1024 * 1024 // 8, dtype=np.float64)
    dst = np.empty_like(src)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - t0)
    return 2 * src.nbytes / best / 1e9


def _model_dirs(backends: list[str]) -> dict[str, Path]:
    dirs = {}
    for backend in backends:
        kind, _, fmt = backend.partition("-")
        if kind == "openvino":
            dirs[backend] = prepare(default_model_dir(fmt), weight_format=fmt, progress=False).path
        elif kind == "pytorch":
            dirs[backend] = default_hf_dir()
        else:
            raise ValueError(f"unknown backend {backend!r}")
    return dirs


def run_bench(backends: list[str], prompt_count: int = 4, new_tokens: int = 64) -> dict:
    dirs = _model_dirs(backends)
    tokenizer_dir = dirs.get("pytorch-fp32") or next(iter(dirs.values()))
    prompts = build_prompts(prompt_count, tokenizer_dir)
    bandwidth = memory_bandwidth_gbs()
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        prompt_file = Path(tmp) / "prompts.json"
        prompt_file.write_text(json.dumps(prompts))
        for backend in backends:
            kind = backend.split("-")[0]
            proc = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "cds_service.reasoning.bench",
                    "--kind",
                    kind,
                    "--model",
                    str(dirs[backend]),
                    "--prompts",
                    str(prompt_file),
                    "--new-tokens",
                    str(new_tokens),
                ],
                capture_output=True,
                text=True,
                env=dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1"),
            )
            if proc.returncode != 0:
                results[backend] = {"error": proc.stderr[-800:]}
                continue
            raw = json.loads(proc.stdout.strip().splitlines()[-1])
            decode = statistics.median(raw["decode_tok_s"])
            bound = bandwidth * 1e9 / raw["weight_bytes"]
            results[backend] = {
                "load_s": round(raw["load_s"], 2),
                "ttft_s_median": round(statistics.median(raw["ttft_s"]), 3),
                "decode_tok_s_median": round(decode, 1),
                "peak_rss_mb": round(raw["peak_rss_mb"]),
                "weight_mb": round(raw["weight_bytes"] / 1e6, 1),
                "bandwidth_bound_tok_s": round(bound, 1),
                "fraction_of_bound": round(decode / bound, 2),
                "prompt_tokens": raw["prompt_tokens"],
            }
    figures = {
        "model": "SmolLM2-135M-Instruct",
        "prompts": prompt_count,
        "new_tokens": new_tokens,
        "memory_bandwidth_gb_s": round(bandwidth, 1),
        "cpu_count": os.cpu_count(),
        "backends": results,
    }
    base, int8 = results.get("pytorch-fp32", {}), results.get("openvino-int8", {})
    if "decode_tok_s_median" in base and "decode_tok_s_median" in int8:
        figures["int8_vs_pytorch_decode_speedup"] = round(
            int8["decode_tok_s_median"] / base["decode_tok_s_median"], 2
        )
        figures["int8_vs_pytorch_rss_ratio"] = round(int8["peak_rss_mb"] / base["peak_rss_mb"], 2)
    print_table(figures)
    print(json.dumps(figures))
    return figures


def print_table(figures: dict) -> None:
    print(
        f"model {figures['model']}: {figures['prompts']} distinct prompts, {figures['new_tokens']} new "
        f"tokens, "
        f"greedy; copy bandwidth {figures['memory_bandwidth_gb_s']} GB/s; {figures['cpu_count']} CPUs"
    )
    header = (
        f"{'backend':<15}{'load s':>8}{'TTFT s':>9}{'decode tok/s':>14}{'peak RSS MB':>13}"
        f"{'weights MB':>12}{'bound tok/s':>13}{'of bound':>10}"
    )
    print(header)
    print("-" * len(header))
    for name, r in figures["backends"].items():
        if "error" in r:
            print(f"{name:<15} failed: {r['error'].splitlines()[-1] if r['error'] else '?'}")
            continue
        print(
            f"{name:<15}{r['load_s']:>8}{r['ttft_s_median']:>9}{r['decode_tok_s_median']:>14}"
            f"{r['peak_rss_mb']:>13}{r['weight_mb']:>12}{r['bandwidth_bound_tok_s']:>13}"
            f"{r['fraction_of_bound']:>10.0%}"
        )
    if "int8_vs_pytorch_decode_speedup" in figures:
        speed, rss = figures["int8_vs_pytorch_decode_speedup"], figures["int8_vs_pytorch_rss_ratio"]
        print(
            f"OpenVINO INT8 vs PyTorch FP32: decode x{speed} (target >= {TARGET_SPEEDUP}: "
            f"{'met' if speed >= TARGET_SPEEDUP else 'NOT met'}), peak RSS x{rss} "
            f"(target <= {TARGET_RSS_RATIO}: {'met' if rss <= TARGET_RSS_RATIO else 'NOT met'})"
        )


if __name__ == "__main__":
    _worker_main(sys.argv[1:])
