"""Build a SpeechLLM from a recipe, choose what trains per stage, and cut its checkpoint state.

Shared by the trainer and by `llmasr.decoding.deep_pipeline.DeepRecognizer`, so that a checkpoint is always
loaded into exactly the model it was trained as.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from llmasr.components.lm.lora import LoraSettings
from llmasr.components.speech.adapters import BLANK, CHAR_VOCAB
from llmasr.components.speech.speechllm import PromptTemplate, SpeechLLM
from llmasr.train.config import ModelRecipe


def build_model(recipe: ModelRecipe, device: str = "cpu", encoder: nn.Module | None = None) -> SpeechLLM:
    """The SpeechLLM a model recipe describes, everything frozen (the trainer unfreezes per stage).

    `encoder` replaces loading `recipe.encoder` by name (tests, or an encoder already in memory).
    """
    from llmasr.components.speech.encoders import load_encoder

    enc = encoder if encoder is not None else load_encoder(recipe.encoder)
    adapter_kw = dict(recipe.adapter_kw)
    if recipe.adapter == "ctc":
        adapter_kw.setdefault("vocab_size", len(CHAR_VOCAB))
        adapter_kw.setdefault("blank", BLANK)
    lora = None
    if recipe.lora is not None:
        lora = LoraSettings(
            r=recipe.lora.r,
            alpha=recipe.lora.alpha,
            dropout=recipe.lora.dropout,
            target_modules=tuple(recipe.lora.target_modules),
        )
    model = SpeechLLM.build(
        enc,
        recipe.lm,
        adapter=recipe.adapter,
        adapter_kw=adapter_kw,
        lora=lora,
        device=device,
        dtype=recipe.lm_dtype,
        template=PromptTemplate(recipe.template),
        ctc_weight=recipe.ctc_weight,
        loss_reduction=recipe.loss_reduction,
        fusion=recipe.fusion,
        xattn_every=recipe.xattn_every,
        xattn_heads=recipe.xattn_heads,
    )
    set_trainable(model, ())
    return model


def part_of(name: str) -> str:
    """Which recipe part a parameter / state key belongs to: adapter, ctc_head, xattn, lora, encoder or
    llm."""
    if name.startswith("encoder."):
        return "encoder"
    if name.startswith("xattn."):
        return "xattn"
    if name.startswith("adapter.ctc_head."):
        return "ctc_head"
    if name.startswith("adapter."):
        return "adapter"
    if "lora_" in name:
        return "lora"
    return "llm"


def set_trainable(model: SpeechLLM, parts: Iterable[str]) -> None:
    """Unfreeze exactly `parts` (see config.PARTS); the base LLM always stays frozen."""
    parts = set(parts)
    model.freeze(
        encoder="encoder" not in parts,
        llm=True,
        lora="lora" not in parts,
        adapter="adapter" not in parts,
        xattn="xattn" not in parts,
    )
    head = getattr(model.adapter, "ctc_head", None)
    if head is not None:
        for p in head.parameters():
            p.requires_grad_("ctc_head" in parts)


def checkpoint_state(model: SpeechLLM, parts: Iterable[str]) -> dict[str, torch.Tensor]:
    """The whole adapter and cross-attention blocks (new weights, buffers included) and whatever else a
    stage trains.

    The frozen encoder and LLM are left out: they are reloaded by name from the recipe.
    """
    parts = set(parts)
    return {
        k: v.detach().to("cpu", copy=True).contiguous()
        for k, v in model.state_dict().items()
        if k.startswith(("adapter.", "xattn.")) or part_of(k) in parts
    }
