"""A tiny random-weight chat model, built offline in the test session (no download, seconds).

Byte-level BPE trained on a few sentences, a 2-layer Llama config, saved as a Hugging Face folder; the
tests then run it through the real `model prepare` path (optimum-cli export to OpenVINO INT8).
"""

from __future__ import annotations

from pathlib import Path

from cds_service.reasoning.preparation.prepare import CHATML_TEMPLATE

SENTENCES = [
    "The patient takes warfarin and ibuprofen.",
    "Potassium is 5.9 mmol/L.",
    "Metformin with eGFR 24.",
    "Review the medication list.",
    "Consider acetaminophen instead.",
    "Bleeding risk is high.",
    "system user assistant",
    "You summarise a patient's record for a busy clinician.",
]


def build_tiny_hf_model(out: Path) -> Path:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE(unk_token="<|endoftext|>"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(SENTENCES * 20, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|im_end|>",
        unk_token="<|endoftext|>",
    )
    tokenizer.chat_template = CHATML_TEMPLATE
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
