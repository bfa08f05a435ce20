"""``cds-service model evaluate``: measure the model on its two tasks and write the capability gates.

1. Assertion status (tasks.py) on a bounded, stratified sample of the NegEx/ConText kit: the rule baseline
   (clinical/assertion.py), the LLM under constrained decoding, and their combination (the baseline where
   it found a trigger, else the LLM), per label precision/recall/F1; plus time per sentence.
2. Free text (summary, explanation) on the bundled sample records: grounding pass rate and specificity
   (grounding_eval.py).

The figures, what was measured (sample, date, library versions) and the decisions go to the capabilities
section (capabilities.py: the model's manifest, or the data dir's file for a remote server).
"""

from __future__ import annotations

import hashlib
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..backends import LlmError
from ..capabilities import (
    FREE_TEXT_MIN_PASS_RATE,
    FREE_TEXT_MIN_SPECIFICITY,
    decide_assertion,
    decide_free_text,
    store_capabilities,
)
from ..tasks import ASSERTION_MAX_NEW_TOKENS, ASSERTION_OPTIONS, assertion_messages, assertion_status
from .negex import KIT_FILE, KitRow, find_kit, read_kit, score, stratified_sample

DEFAULT_SAMPLE = 300
DEFAULT_TEXTS = 20
# `model prepare` measures a new model with less, to stay under a minute and a half for SmolLM2 on two
# busy cores (~0.35 s a sentence, ~1.5 s a text): 150 sentences still hold >= 30 negated rows
# (capabilities.MIN_NEGATED) and 10 texts are capabilities.MIN_FREE_TEXTS. `model evaluate` measures more.
PREPARE_SAMPLE = 150
PREPARE_TEXTS = 10


@dataclass
class Located:
    """A kit row ready to run: the sentence in ordinary case and the target's offsets in it."""

    row: KitRow
    sentence: str
    start: int
    end: int


def locate(rows: list[KitRow]) -> tuple[list[Located], int]:
    out, skipped = [], 0
    for row in rows:
        where = row.located()
        if where is None:
            skipped += 1
        else:
            out.append(Located(row, *where))
    return out, skipped


@dataclass
class BaselineRun:
    contexts: list  # clinical.assertion.Context per item
    seconds: float

    @property
    def statuses(self) -> list[str]:
        return [c.status for c in self.contexts]

    @property
    def triggered(self) -> list[bool]:
        return [bool(c.triggers) for c in self.contexts]


def run_baseline(items: list[Located], assess: Callable) -> BaselineRun:
    started = time.perf_counter()
    contexts = [assess(it.sentence, it.start, it.end) for it in items]
    return BaselineRun(contexts, time.perf_counter() - started)


@dataclass
class ChooserRun:
    statuses: list[str | None]
    seconds: float = 0.0
    tokens: int = 0  # prompt + generated, where the backend reports them
    errors: int = 0
    answers: Counter = field(default_factory=Counter)

    def timing(self, n: int) -> dict:
        return {
            "secondsPerSentence": round(self.seconds / n, 4) if n else None,
            "secondsPer1000Tokens": round(1000 * self.seconds / self.tokens, 4) if self.tokens else None,
            "meanTokensPerSentence": round(self.tokens / n, 1) if n and self.tokens else None,
        }


def run_chooser(chooser, items: list[Located], on_item: Callable[[int], None] | None = None) -> ChooserRun:
    """The model's status for every item (None where it erred: counted, and scored as no label)."""
    run = ChooserRun([])
    for i, it in enumerate(items):
        messages = assertion_messages(it.sentence, it.sentence[it.start : it.end])
        started = time.perf_counter()
        try:
            out = chooser.choose(messages, ASSERTION_OPTIONS, ASSERTION_MAX_NEW_TOKENS)
            status = assertion_status(out.text)
        except (LlmError, KeyError):
            run.errors += 1
            run.statuses.append(None)
        else:
            run.tokens += (out.prompt_tokens or 0) + (out.new_tokens or 0)
            run.answers[out.text] += 1
            run.statuses.append(status)
        run.seconds += time.perf_counter() - started
        if on_item is not None:
            on_item(i)
    return run


def combine(baseline: BaselineRun, llm: list[str | None]) -> list[str | None]:
    """The baseline where a trigger decided, else the LLM (the LLM erring: the baseline)."""
    return [
        b if t or m is None else m for b, t, m in zip(baseline.statuses, baseline.triggered, llm, strict=True)
    ]


def kit_info(path: Path, rows: list[KitRow]) -> dict:
    return {
        "file": path.name,
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "rows": len(rows),
        "source": "NegEx/ConText kit (Chapman et al., Apache-2.0), benchmarks/negex/",
    }


def kit_sample(kit: Path, sample: int | None, seed: int = 0) -> tuple[list[KitRow], list[Located], dict]:
    """The kit's rows, the sentences measured (the whole kit, or a sample stratified by status, located),
    and a description of them for the figures."""
    rows = read_kit(kit)
    chosen = rows if sample is None else stratified_sample(rows, sample, seed)
    items, skipped = locate(chosen)
    described = {
        "sentences": len(items),
        "method": "whole kit" if sample is None else f"stratified by status, seed {seed}",
        "strata": dict(Counter(it.row.status for it in items)),
        "skippedPhraseNotInSentence": skipped,
    }
    return rows, items, described


def evaluate_assertion(
    chooser,
    kit: Path | None,
    *,
    sample: int | None = DEFAULT_SAMPLE,
    seed: int = 0,
    assess: Callable | None = None,
    on_item: Callable[[int], None] | None = None,
) -> dict:
    """The ``assertion`` section: figures for baseline, LLM and combination and the decision.
    `sample` None: the whole kit."""
    if kit is None:
        return {"measured": False, "reason": f"NegEx kit ({KIT_FILE}) not found: pass --kit PATH"}
    if assess is None:
        try:
            from ...clinical.assertion import assess
        except ImportError as exc:
            return {"measured": False, "reason": f"rule baseline unavailable ({exc})"}
    rows, items, described = kit_sample(kit, sample, seed)
    baseline = run_baseline(items, assess)
    llm = run_chooser(chooser, items, on_item)
    gold = [it.row for it in items]
    section = {
        "measured": True,
        "kit": kit_info(kit, rows),
        "sample": described,
        "baseline": {
            **score(gold, baseline.statuses),
            "secondsPerSentence": round(baseline.seconds / max(1, len(items)), 6),
        },
        "llm": {
            **score(gold, llm.statuses),
            **llm.timing(len(items)),
            "errors": llm.errors,
            "answers": dict(llm.answers),
        },
        "combination": {
            **score(gold, combine(baseline, llm.statuses)),
            "baselineDecided": sum(baseline.triggered),
        },
    }
    component, reason = decide_assertion(section)
    section["decision"] = {"component": component, "reason": reason}
    return section


def library_versions() -> dict:
    from .prepare import _versions

    return _versions()


def evaluate_model(
    backend,
    *,
    content,
    data_dir: Path | None,
    kit: Path | None = None,
    sample: int | None = DEFAULT_SAMPLE,
    texts: int = DEFAULT_TEXTS,
    max_new_tokens: int = 64,
    assess: Callable | None = None,
    progress: Callable[[str], None] = lambda _msg: None,
) -> tuple[dict, Path]:
    """Measure both tasks on `backend`, write the capabilities section, return it and where it went."""
    from ..grounding import GroundingGuard
    from .grounding_eval import evaluate_grounding

    started = time.time()
    kit = find_kit(kit)
    progress(f"assertion: {'kit ' + str(kit) if kit else 'no NegEx kit found'}")
    assertion = evaluate_assertion(
        backend,
        kit,
        sample=sample,
        assess=assess,
        on_item=lambda i: progress(f"  {i + 1} sentences answered") if (i + 1) % 100 == 0 else None,
    )
    progress(f"free text: up to {texts} texts on the bundled sample records")
    if texts > 0:
        free_text = evaluate_grounding(
            backend,
            GroundingGuard(content.terminology),
            content.facts_builder,
            max_texts=texts,
            max_new_tokens=max_new_tokens,
        )
    else:
        free_text = {"measured": False, "reason": "skipped (--texts 0)"}
    enabled, reason = decide_free_text(free_text)
    free_text["decision"] = {"enabled": enabled, "reason": reason}
    free_text["thresholds"] = {"passRate": FREE_TEXT_MIN_PASS_RATE, "specificity": FREE_TEXT_MIN_SPECIFICITY}
    section = {
        "modelId": backend.model_id,
        "measuredAt": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "libraries": library_versions(),
        "assertion": assertion,
        "freeText": free_text,
    }
    section["seconds"] = round(time.time() - started, 1)  # the evaluation's own duration
    return section, store_capabilities(backend, data_dir, section)
