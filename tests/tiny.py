"""Tiny randomly initialised language models and word-level tokenizers, built offline for unit tests."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

SPECIALS = ["<pad>", "<s>", "</s>", "<unk>"]  # ids 0..3: pad, bos, eos, unk


def word_tokenizer(words: Sequence[str], lowercase: bool = False) -> object:
    """A whitespace word-level tokenizer over SPECIALS + words, as a transformers fast tokenizer."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.normalizers import Lowercase
    from tokenizers.pre_tokenizers import Whitespace
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate([*SPECIALS, *words])}
    tk = Tokenizer(WordLevel(vocab=vocab, unk_token="<unk>"))
    if lowercase:
        tk.normalizer = Lowercase()
    tk.pre_tokenizer = Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=tk, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )


def tiny_llama(vocab_size: int, sharpen: float = 4.0, seed: int = 0, tie: bool = False) -> torch.nn.Module:
    """2 layers, hidden 32; weights scaled up so that the near-uniform init gives clear-cut choices;
    `tie`: the output layer is the input embeddings (as SmolLM2's)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=vocab_size,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=256,
            bos_token_id=1,
            eos_token_id=2,
            pad_token_id=0,
            tie_word_embeddings=tie,
        )
    )
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.mul_(sharpen)
    return model


def save_tiny_lm(
    folder: Path,
    words: Sequence[str],
    *,
    unused_ids: int = 0,
    sharpen: float = 4.0,
    lowercase: bool = False,
    tie: bool = False,
) -> Path:
    """A tiny Llama + its tokenizer saved as a transformers folder (`unused_ids`: ids never produced)."""
    tiny_llama(len(SPECIALS) + len(words) + unused_ids, sharpen, tie=tie).save_pretrained(folder)
    word_tokenizer(words, lowercase).save_pretrained(folder)
    return folder


def save_tiny_whisper(folder: Path) -> Path:
    """A tiny random Whisper (1 encoder layer, width 16, 80 mel bins) saved as a transformers folder."""
    from transformers import WhisperConfig, WhisperModel

    WhisperModel(
        WhisperConfig(
            vocab_size=64,
            num_mel_bins=80,
            d_model=16,
            encoder_layers=1,
            encoder_attention_heads=2,
            encoder_ffn_dim=32,
            decoder_layers=1,
            decoder_attention_heads=2,
            decoder_ffn_dim=32,
            max_source_positions=1500,
            max_target_positions=32,
            pad_token_id=0,
            bos_token_id=1,
            eos_token_id=2,
            decoder_start_token_id=1,
        )  # fmt: skip
    ).save_pretrained(folder)
    return folder


def write_nbest(path: Path, rows: Sequence[tuple[str, Sequence[str]]]) -> Path:
    """An N-best JSONL (the `llmasr data nbest` format): (reference, hypotheses), AM scores falling."""
    import json

    with open(path, "w", encoding="utf-8") as fh:
        for i, (ref, hyps) in enumerate(rows):
            nbest = [{"text": h, "am_score": -1.0 - 0.1 * j} for j, h in enumerate(hyps)]
            fh.write(json.dumps({"id": f"u{i}", "reference": ref, "nbest": nbest}) + "\n")
    return path
