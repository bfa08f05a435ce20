"""LLM backends: one model object per process, greedy and bounded generation.

- `GenAiBackend`: OpenVINO GenAI ``LLMPipeline`` on the CPU, built once at start-up. Chosen over
  optimum-intel's OVModelForCausalLM by measurement (docs FACTS; `cds-service model bench`): INT8
  decode ~70 tok/s vs ~52-62 tok/s, peak RSS ~460-480 MB vs ~1.1 GB, and no torch/transformers in the
  serving process. A pipeline serves one generation at a time, so calls are serialised by a lock
  (the CPU is the bottleneck anyway; the reasoner runs generations on its own worker thread).
- `RemoteBackend`: any OpenAI-compatible ``/v1/chat/completions`` server, e.g. OpenVINO Model Server in
  a scaled deployment (compose.yaml). Only for servers inside the hospital network.

`choose(messages, options)` is the constrained form: the answer is exactly one of `options` or an
LlmError, never free text. GenAI enforces it while decoding (a regex grammar: no other token can be
sampled); a remote server is sent a JSON schema whose answer is an enum, and its reply is checked anyway,
since a server may ignore ``response_format``.
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

    def choose(
        self, messages: list[dict], options: tuple[str, ...], max_new_tokens: int = 8
    ) -> Generation: ...


_REGEX_SPECIAL = set("\\.^$*+?()[]{}|")


def options_regex(options: tuple[str, ...]) -> str:
    """``(opt1|opt2|...)`` with every regex metacharacter escaped (by hand: ``re.escape`` also escapes
    spaces, which a grammar engine need not accept)."""
    if not options or any(not o for o in options):
        raise ValueError("options must be non-empty strings")
    return "(" + "|".join("".join("\\" + c if c in _REGEX_SPECIAL else c for c in o) for o in options) + ")"


def exact_option(text: str, options: tuple[str, ...]) -> str:
    """The option `text` is (after strip and lower case), else LlmError."""
    wanted = text.strip().lower()
    for option in options:
        if option.lower() == wanted:
            return option
    raise LlmError(f"answer is not one of the {len(options)} allowed options")


class GenAiBackend:
    def __init__(self, model_dir: Path, device: str = "CPU"):
        import openvino_genai

        manifest_path = model_dir / "manifest.json"
        if not (model_dir / "openvino_model.xml").is_file():
            raise LlmError(f"no OpenVINO model in {model_dir}: run `cds-service model prepare`")
        manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
        self.model_id = manifest.get("id") or model_dir.name
        self.model_dir = model_dir  # its manifest also holds the measured capabilities (capabilities.py)
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
        prompt_tokens, new_tokens = _token_counts(result)
        return Generation(text.strip(), prompt_tokens, new_tokens, seconds)

    def choose(self, messages: list[dict], options: tuple[str, ...], max_new_tokens: int = 8) -> Generation:
        config = self._genai.GenerationConfig()
        # The grammar admits any tokenisation of an option, down to one byte per token (a model with a
        # small vocabulary takes such paths): budget for that, so an answer is never cut short. Decoding
        # stops at the end of the option anyway.
        config.max_new_tokens = max(max_new_tokens, max(len(o.encode()) for o in options) + 1)
        config.do_sample = False
        config.apply_chat_template = False
        config.structured_output_config = self._genai.StructuredOutputConfig(regex=options_regex(options))
        prompt = self._tokenizer.apply_chat_template(messages, add_generation_prompt=True)
        with self._lock:
            started = time.perf_counter()
            result = self._pipe.generate([prompt], config)
            seconds = time.perf_counter() - started
        text = (result.texts[0] if hasattr(result, "texts") else str(result)).strip()
        if text not in options:  # cut short by max_new_tokens, or a grammar the engine did not enforce
            raise LlmError(f"constrained answer {text[:40]!r} is not an allowed option")
        prompt_tokens, new_tokens = _token_counts(result)
        return Generation(text, prompt_tokens, new_tokens, seconds)


def _token_counts(result) -> tuple[int | None, int | None]:
    metrics = getattr(result, "perf_metrics", None)
    if metrics is None:
        return None, None
    try:
        return metrics.get_num_input_tokens(), metrics.get_num_generated_tokens()
    except Exception:  # metrics differ between GenAI releases; they are informative only
        return None, None


class RemoteBackend:
    def __init__(
        self, url: str, model: str = "", timeout: float = 10.0, session: requests.Session | None = None
    ):
        # `timeout` bounds each read: a generation still running when a worker stops holds its exit this
        # long, so it stays well under gunicorn's graceful_timeout (20 s); text this late only fills a cache.
        self.url = url.rstrip("/")
        self.model = model
        self.model_id = f"remote:{model or 'default'}@{self.url}"
        self.timeout = timeout
        self._session = session or requests.Session()

    def _complete(self, body: dict) -> Generation:
        endpoint = self.url if self.url.endswith("/chat/completions") else f"{self.url}/v1/chat/completions"
        body = {**body, "temperature": 0, "stream": False}
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
        usage = data.get("usage")
        usage = usage if isinstance(usage, dict) else {}  # optional, and informative only: junk is absent
        return Generation(
            str(text).strip(),
            _token_count(usage.get("prompt_tokens")),
            _token_count(usage.get("completion_tokens")),
            time.perf_counter() - started,
        )

    def generate(self, messages: list[dict], max_new_tokens: int) -> Generation:
        return self._complete({"messages": messages, "max_tokens": max_new_tokens})

    def choose(self, messages: list[dict], options: tuple[str, ...], max_new_tokens: int = 8) -> Generation:
        schema = {
            "type": "object",
            "properties": {"answer": {"type": "string", "enum": list(options)}},
            "required": ["answer"],
            "additionalProperties": False,
        }
        out = self._complete(
            {
                "messages": messages,
                # The JSON wrapper {"answer": "..."} costs ~8 tokens more than the bare option.
                "max_tokens": max_new_tokens + 16,
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "choice", "schema": schema, "strict": True},
                },
            }
        )
        return Generation(_remote_answer(out.text, options), out.prompt_tokens, out.new_tokens, out.seconds)


def _token_count(value) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _remote_answer(text: str, options: tuple[str, ...]) -> str:
    """The option a remote reply names: the schema's ``answer`` (or a bare JSON string) when the server
    honoured ``response_format``; otherwise the reply must be exactly an option (after strip and lower
    case) — free text that merely contains one is not an answer."""
    try:
        parsed = json.loads(text)
    except ValueError:
        return exact_option(text, options)
    if isinstance(parsed, dict) and isinstance(parsed.get("answer"), str):
        return exact_option(parsed["answer"], options)
    if isinstance(parsed, str):
        return exact_option(parsed, options)
    raise LlmError("the server's JSON answer has no allowed option")
