"""LLM reasoning around the rule cards, under a deadline, never in their way.

- patient-view (`summary`): one AI-generated information card summarising active problems,
  medications and notable recent labs.
- order-sign (`explanation`): a patient-specific explanation appended to the rule cards (the most
  severe first), labelled as AI-generated with the model id.

Rule cards are built first. Generation runs on this process's own worker thread; the hook call waits
for it only until the response budget (``CDS_RESPONSE_BUDGET_MS``, counted from the start of the call)
runs out. Text not ready by then finishes in the background and is stored under a key of (model, task,
prompt) — the prompt is a function of the patient's facts and findings — so a repeated call, from any
worker, shows it. Every text passes the grounding guard first; LLM text never changes a card's
indicator.

Free text is written only when the model's measured capabilities allow it (capabilities.py: grounding
pass rate and specificity); otherwise `enrich` adds nothing and its record says why, with the figures.

`decide_assertions` asks the model for the assertion status of note mentions (tasks.py), constrained to
the allowed labels, under the same deadline and cache. Whether its answers are used — LLM, combination
with the rule baseline, or the baseline alone — is `capabilities.assertion_component`, the caller's
decision.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from functools import partial

from ..audit.record import LLM_SUMMARY_RULE
from ..indicators import RANK
from ..telemetry import metrics
from .backends import LlmBackend, LlmError
from .cache import LlmStore, Stored
from .capabilities import Capabilities
from .grounding import GroundingGuard, tidy
from .prompts import explanation_messages, prompt_text, summary_messages
from .tasks import (
    ASSERTION_MAX_NEW_TOKENS,
    ASSERTION_OPTIONS,
    ASSERTION_TASK,
    assertion_messages,
    assertion_status,
)

log = logging.getLogger(__name__)
AI_LABEL = "AI-generated"


class Reasoner:
    def __init__(
        self,
        backend: LlmBackend,
        store: LlmStore,
        guard: GroundingGuard,
        *,
        budget_ms: int = 450,
        max_new_tokens: int = 64,
        max_cards: int = 2,
        capabilities: Capabilities | None = None,
    ):
        self.backend = backend
        self.capabilities = capabilities or Capabilities()  # none measured: baseline only, no free text
        self.store = store
        self.guard = guard
        self.budget_ms = budget_ms
        self.max_new_tokens = max_new_tokens
        self.max_cards = max_cards
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cds-llm")
        self._inflight: dict[str, Future] = {}
        self._lock = threading.Lock()

    @property
    def model_id(self) -> str:
        return self.backend.model_id

    def key(self, task: str, prompt: str) -> str:
        return hashlib.sha256(f"{self.model_id}\n{task}\n{prompt}".encode()).hexdigest()

    def _run(self, key: str, task: str, produce: Callable[[], Stored], keep_failures: bool) -> Stored:
        """Worker thread: produce, store. Never raises. A failed generation is stored only when
        `keep_failures` (free text: the record shows the failure; a closed answer is simply asked again)."""
        try:
            stored = produce()
        except Exception as exc:  # a backend's defect too: never a 500, never a key stuck in _inflight
            metrics.observe_llm_failure(task)
            stored = Stored(None, False, [f"generation failed: {type(exc).__name__}"], None)
        try:
            if stored.output is not None or keep_failures:
                self.store.put(key, self.model_id, task, stored)
        except Exception:  # storage trouble must not kill the worker; the text is simply not cached
            log.exception("could not store LLM output")
        finally:
            with self._lock:
                self._inflight.pop(key, None)
        return stored

    def _text(self, task: str, messages: list[dict], prompt: str) -> Stored:
        generation = self.backend.generate(messages, self.max_new_tokens)
        metrics.observe_generation(task, generation)
        text = tidy(generation.text)
        verdict = self.guard.check(text, prompt)
        return Stored(text, verdict.accepted, verdict.reasons, int(generation.seconds * 1000))

    def _assertion(self, messages: list[dict]) -> Stored:
        generation = self.backend.choose(messages, ASSERTION_OPTIONS, ASSERTION_MAX_NEW_TOKENS)
        metrics.observe_generation(ASSERTION_TASK, generation)
        try:
            status = assertion_status(generation.text)
        except KeyError:  # a backend that does not keep to the options is an erring backend
            raise LlmError("answer is not an allowed option") from None
        return Stored(status, True, [], int(generation.seconds * 1000))

    def _submit(
        self, key: str, task: str, produce: Callable[[], Stored], keep_failures: bool = True
    ) -> Future:
        with self._lock:
            future = self._inflight.get(key)
            if future is None:
                future = self._executor.submit(self._run, key, task, produce, keep_failures)
                self._inflight[key] = future
            return future

    def _obtain(self, task: str, messages: list[dict], deadline: float) -> tuple[Stored | None, dict]:
        prompt = prompt_text(messages)
        key = self.key(task, prompt)
        item = {"task": task, "promptHash": hashlib.sha256(prompt.encode()).hexdigest()}
        stored = self.store.get(key)
        if stored is not None:
            item["status"] = "cached"
        else:
            future = self._submit(key, task, partial(self._text, task, messages, prompt))
            remaining = deadline - time.monotonic()
            try:
                stored = future.result(timeout=max(0.0, remaining)) if remaining > 0 else None
                item["status"] = "generated"
            except TimeoutError:
                stored = None
            if stored is None:
                item["status"] = "pending"  # finishes in the background; the next call shows it
                metrics.observe_deadline_miss(task)
                return None, item
        item["guard"] = {
            "accepted": stored.accepted,
            **({"reasons": stored.reasons} if stored.reasons else {}),
        }
        if stored.output is not None:
            item["output"] = stored.output
        if stored.generation_ms is not None:
            item["generationMs"] = stored.generation_ms
        return (stored if stored.accepted else None), item

    def enrich(self, task: str, facts, cards: list[dict], started: float) -> tuple[list[dict], dict]:
        """Return the cards (explanations appended or a summary card added) and the decision-log entry.
        `started` is the time.monotonic() at which the hook call began."""
        deadline = started + self.budget_ms / 1000.0
        record = {"modelId": self.model_id, "task": task, "budgetMs": self.budget_ms, "items": []}
        caps = self.capabilities
        record["freeText"] = f"{'on' if caps.free_text_enabled else 'off'}: {caps.free_text_reason}"
        if not caps.free_text_enabled:
            return cards, record
        if task == "summary":
            stored, item = self._obtain("summary", summary_messages(facts), deadline)
            record["items"].append(item)
            if stored is not None:
                card = self._summary_card(stored.output)
                item["addedCard"] = card["uuid"]
                cards = cards + [card]
        elif task == "explanation" and cards:
            ranked = sorted(range(len(cards)), key=lambda i: -RANK.get(cards[i]["indicator"], 0))
            cards = [dict(c) for c in cards]
            for i in ranked[: self.max_cards]:
                stored, item = self._obtain("explanation", explanation_messages(facts, cards[i]), deadline)
                item["card"] = cards[i]["uuid"]
                record["items"].append(item)
                if stored is not None:
                    cards[i]["detail"] = (
                        cards[i].get("detail", "") + f"\n\n**{AI_LABEL} explanation** "
                        f"({self.model_id}; checked against the record, may still be wrong): " + stored.output
                    )
        return cards, record

    def decide_assertions(
        self, items: list[tuple[str, int, int]], deadline: float
    ) -> list[tuple[str | None, dict]]:
        """For each (sentence, start, end) — the mention's offsets within its sentence — the model's status
        (one of mentions.STATUSES) and a record item, or None with status ``pending`` when not ready by
        `deadline` (time.monotonic()): it finishes in the background and the next call finds it cached.
        ``failed``: the backend erred (not cached; asked again next time)."""
        waiting: list[tuple[int, Future]] = []
        out: list[tuple[str | None, dict]] = []
        for i, (sentence, start, end) in enumerate(items):
            messages = assertion_messages(sentence, sentence[start:end])
            prompt = prompt_text(messages)
            key = self.key(ASSERTION_TASK, prompt)
            item = {"task": ASSERTION_TASK, "promptHash": hashlib.sha256(prompt.encode()).hexdigest()}
            stored = self.store.get(key)
            if stored is not None and stored.output is not None:
                item.update(status="cached", output=stored.output)
                out.append((stored.output, item))
                continue
            # Submitted at once, awaited below: all of them share the one deadline.
            produce = partial(self._assertion, messages)
            waiting.append((i, self._submit(key, ASSERTION_TASK, produce, keep_failures=False)))
            out.append((None, item))
        for i, future in waiting:
            item = out[i][1]
            try:  # a timeout of 0 still collects an answer that is already there
                stored = future.result(timeout=max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                stored = None
            if stored is None:
                item["status"] = "pending"
                metrics.observe_deadline_miss(ASSERTION_TASK)
            elif stored.output is None:
                item.update(status="failed", reasons=stored.reasons)
            else:
                item.update(status="generated", output=stored.output, generationMs=stored.generation_ms)
                out[i] = (stored.output, item)
        return out

    def _summary_card(self, text: str) -> dict:
        return {
            "uuid": str(uuid.uuid4()),
            "summary": f"{AI_LABEL} record summary (review before relying on it)",
            "indicator": "info",  # AI text never raises an indicator
            "detail": (
                f"{text}\n\n*{AI_LABEL} by the on-premises model {self.model_id} from this record only; "
                "names and numbers were checked against the record.*"
            ),
            "source": {"label": f"{AI_LABEL}: on-premises LLM ({self.model_id})"},
            "extension": {"org.cds-service.rule": {"id": LLM_SUMMARY_RULE, "version": self.model_id}},
        }

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
