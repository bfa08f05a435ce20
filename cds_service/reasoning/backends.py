"""LLM backends: one model object per process, greedy and bounded generation.

- `GenAiBackend`: OpenVINO GenAI ``LLMPipeline`` on the CPU, built once at start-up. Chosen over
  optimum-intel's OVModelForCausalLM by measurement (docs FACTS; `cds-service model bench`): INT8
  decode ~70 tok/s vs ~52-62 tok/s, peak RSS ~460-480 MB vs ~1.1 GB, and no torch/transformers in the
  serving process. A pipeline serves one generation at a time, so calls are serialised by a lock
  (the CPU is the bottleneck anyway; the reasoner runs generations on its own worker thread).
- `RemoteBackend`: any OpenAI-compatible ``/v1/chat/completions`` server, e.g. OpenVINO Model Server in
  a scaled deployment (compose.yaml). Only for servers inside the hospital network.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import requests


class LlmError(RuntimeError):
    pass


@dataclass(frozen=True)
class Generation:
    text: str
    prompt_tokens: int | None
    new_tokens: int | None
    seconds: float


class LlmBackend(Protocol):
    model_id: str

    def generate(self, messages: list[dict], max_new_tokens: int) -> Generation: ...


class GenAiBackend:
    def __init__(self, model_dir: Path, device: str = "CPU"):
        import openvino_genai

        manifest_path = model_dir / "manifest.json"
        if not (model_dir / "openvino_model.xml").is_file():
            raise LlmError(f"no OpenVINO model in {model_dir}: run `cds-service model prepare`")
        manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
        self.model_id = manifest.get("id") or model_dir.name
        self.manifest = manifest
        self._pipe = openvino_genai.LLMPipeline(str(model_dir), device)
        self._tokenizer = self._pipe.get_tokenizer()
        self._lock = threading.Lock()
        self._genai = openvino_genai

    def generate(self, messages: list[dict], max_new_tokens: int) -> Generation:
        config = self._genai.GenerationConfig()
        config.max_new_tokens = max_new_tokens
        config.do_sample = False  # greedy: the same facts give the same text
        config.repetition_penalty = 1.1  # small models loop without it
        config.apply_chat_template = False  # applied below, once, with the model's own template
        prompt = self._tokenizer.apply_chat_template(messages, add_generation_prompt=True)
        with self._lock:
            started = time.perf_counter()
            result = self._pipe.generate([prompt], config)
            seconds = time.perf_counter() - started
        text = result.texts[0] if hasattr(result, "texts") else str(result)
        metrics = getattr(result, "perf_metrics", None)
        prompt_tokens = new_tokens = None
        if metrics is not None:
            try:
                prompt_tokens, new_tokens = metrics.get_num_input_tokens(), metrics.get_num_generated_tokens()
            except Exception:  # metrics differ between GenAI releases; they are informative only
                pass
        return Generation(text.strip(), prompt_tokens, new_tokens, seconds)


class RemoteBackend:
    def __init__(
        self, url: str, model: str = "", timeout: float = 30.0, session: requests.Session | None = None
    ):
        self.url = url.rstrip("/")
        self.model = model
        self.model_id = f"remote:{model or 'default'}@{self.url}"
        self.timeout = timeout
        self._session = session or requests.Session()

    def generate(self, messages: list[dict], max_new_tokens: int) -> Generation:
        endpoint = self.url if self.url.endswith("/chat/completions") else f"{self.url}/v1/chat/completions"
        body = {"messages": messages, "max_tokens": max_new_tokens, "temperature": 0, "stream": False}
        if self.model:
            body["model"] = self.model
        started = time.perf_counter()
        try:
            response = self._session.post(endpoint, json=body, timeout=(3.0, self.timeout))
            response.raise_for_status()
            data = response.json()
            text = data["choices"][0]["message"]["content"]
        except (requests.RequestException, ValueError, KeyError, IndexError, TypeError) as exc:
            raise LlmError(f"LLM server error: {type(exc).__name__}") from exc
        usage = data.get("usage") or {}
        return Generation(
            str(text).strip(),
            usage.get("prompt_tokens"),
            usage.get("completion_tokens"),
            time.perf_counter() - started,
        )
