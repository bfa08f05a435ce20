"""The PyTorch counterpart of ``choose``: the same closed-answer task on the FP32 Hugging Face model, for the
benchmark's OpenVINO-vs-PyTorch comparison. Preparation side only (torch and transformers are never
imported when serving).

Constrained greedy decoding through ``prefix_allowed_tokens_fn`` over the trie of the options, taken at
the level of text, as GenAI's regex grammar does: a token is allowed when the text generated so far plus
that token's text is still a prefix of some option, the end token once the text is an option. Only the
canonical tokenisation of each option would be a narrower task: a weak model often prefers a short token
("a") that the grammar then completes ("absent"), and the comparison would measure that difference, not
the backends'.
"""

from __future__ import annotations

import time
from pathlib import Path

from ..backends import Generation, LlmError


def allowed_next(
    generated: str, options: tuple[str, ...], by_text: dict[str, list[int]], eos: int
) -> list[int]:
    """Token ids that keep `generated` a prefix of an option; `eos` when it already is one."""
    allowed: set[int] = set()
    for option in options:
        if option == generated:
            allowed.add(eos)
        elif option.startswith(generated):
            rest = option[len(generated) :]
            for k in range(1, len(rest) + 1):
                allowed.update(by_text.get(rest[:k], ()))
    return sorted(allowed) or [eos]


class TorchChooser:
    def __init__(self, hf_dir: Path):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self._torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(hf_dir)
        self.model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
        self.model.eval()
        self.model_id = f"pytorch-fp32:{Path(hf_dir).name}"
        self._eos = self.tokenizer.convert_tokens_to_ids("<|im_end|>")
        if self._eos is None or self._eos == self.tokenizer.unk_token_id:
            self._eos = self.tokenizer.eos_token_id
        special = set(self.tokenizer.all_special_ids)
        self._by_text: dict[str, list[int]] = {}
        for token_id in range(len(self.tokenizer)):
            if token_id not in special:
                text = self.tokenizer.decode([token_id])
                if text:
                    self._by_text.setdefault(text, []).append(token_id)

    def choose(self, messages: list[dict], options: tuple[str, ...], max_new_tokens: int = 8) -> Generation:
        text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        inputs = self.tokenizer(text, return_tensors="pt", add_special_tokens=False)
        prompt_len = int(inputs["input_ids"].shape[1])

        def allowed(_batch: int, ids) -> list[int]:
            generated = self.tokenizer.decode(ids[prompt_len:].tolist(), skip_special_tokens=True)
            return allowed_next(generated, options, self._by_text, self._eos)

        started = time.perf_counter()
        with self._torch.inference_mode():
            out = self.model.generate(
                **inputs,
                # One byte per token at worst, as for GenAI: an answer is never cut short.
                max_new_tokens=max(max_new_tokens, max(len(o.encode()) for o in options) + 1),
                do_sample=False,
                prefix_allowed_tokens_fn=allowed,
                eos_token_id=self._eos,
                pad_token_id=self._eos,
            )
        seconds = time.perf_counter() - started
        new = out[0, prompt_len:].tolist()
        answer = self.tokenizer.decode(new, skip_special_tokens=True).strip()
        if answer not in options:
            raise LlmError(f"constrained answer {answer[:40]!r} is not an allowed option")
        return Generation(answer, prompt_len, len(new), seconds)
