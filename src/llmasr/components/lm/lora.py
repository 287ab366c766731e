"""LoRA on a causal LM through peft: one settings record and one way to add it, for every trainer."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

from torch import nn

from llmasr.core.errors import ModelError


@dataclass
class LoraSettings:
    """LoRA on the LLM's attention projections (names as in Llama, Qwen, Gemma, SmolLM); the `lora:`
    section of every training recipe."""

    r: int = 8
    alpha: int = 16
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])


def base_causal_lm(model: nn.Module) -> nn.Module:
    """The transformers causal LM itself, inside the peft wrapper when LoRA is on."""
    get = getattr(model, "get_base_model", None)
    return get() if callable(get) else model


def with_lora(llm: nn.Module, settings: LoraSettings) -> nn.Module:
    """The LM wrapped by peft with fresh LoRA weights (B = 0: the output is unchanged until trained)."""
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError as exc:
        raise ModelError("LoRA needs the 'peft' package: pip install 'peft>=0.13'") from exc
    config = LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=list(settings.target_modules),
        bias="none",
        task_type="CAUSAL_LM",
    )
    with warnings.catch_warnings():
        # peft reads transformers' deprecated `is_gradient_checkpointing` (a FutureWarning on every load
        # with transformers 5): nothing a user can act on
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        return get_peft_model(llm, config)
