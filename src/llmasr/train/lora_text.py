"""What the text-side LoRA tasks share (the trained rescoring LM, the generative corrector): a causal LM with
fresh LoRA weights, one N-best list per micro-batch with gradient accumulation, the peft adapter as the
checkpoint and the export. Each task adds its loss and its dev metric; the loop is llmasr.train.loop.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from llmasr.components.lm.lora import LoraSettings
from llmasr.core.errors import LlmasrError
from llmasr.train.config import PRECISIONS, RecipeError, StageRecipe
from llmasr.train.loop import shuffled_batches


def load_lora_lm(name: str, lora: LoraSettings, dtype: str, device: str, purpose: str) -> tuple[Any, Any]:
    """(peft model, tokenizer): a named/folder/HF causal LM, frozen, with fresh LoRA weights."""
    from llmasr.components.lm.causal import load_causal_lm
    from llmasr.components.lm.lora import with_lora
    from llmasr.models.registry import resolve

    kind, folder = resolve(name, "lm")
    if kind != "causal-lm":
        raise LlmasrError(f"'{name}' is a {kind} model; a {purpose} needs a causal LM")
    lm, tokenizer = load_causal_lm(folder, name=name, device=device, dtype=dtype)
    return with_lora(lm, lora), tokenizer


def validate_lora_recipe(recipe: Any, parts: Sequence[str]) -> None:
    """Checks every text-side LoRA recipe shares: data, stages, accumulation, precision."""
    if not recipe.data.train:
        raise RecipeError("data.train: an N-best JSONL (llmasr data nbest) is required")
    if not recipe.stages:
        raise RecipeError("a recipe needs at least one stage")
    for i, s in enumerate(recipe.stages):
        if not s.train or [p for p in s.train if p not in parts]:
            raise RecipeError(f"stages.{i}.train: {s.train}; a {recipe.kind} trains {', '.join(parts)}")
        if s.steps <= 0 and s.epochs <= 0:
            raise RecipeError(f"stages.{i} ({s.name}): set steps or epochs")
    if recipe.optim.grad_accum < 1:
        raise RecipeError("optim.grad_accum must be at least 1")
    if recipe.run.mixed_precision not in PRECISIONS:
        raise RecipeError(
            f"run.mixed_precision '{recipe.run.mixed_precision}': choose one of {', '.join(PRECISIONS)}"
        )


class LoraTextTask:
    """Base of the text-side LoRA tasks (llmasr.train.loop.Task). Subclasses set `self.module` (an
    nn.Module whose `.lm` is the peft model), `self.examples` and `self.dev_examples`, and implement
    `example_loss` and `dev_wer`."""

    num_workers = 0
    metrics: Sequence[str] = ("dev_wer",)
    module: nn.Module
    examples: list[Any]
    dev_examples: list[Any]

    def build(self, device: torch.device) -> nn.Module:
        return self.module.to(device)

    def epoch_batches(self, epoch: int, rank: int, world: int) -> list[Any]:
        """One list per micro-batch, shuffled by seed + epoch, every world-th for this process."""
        return shuffled_batches(
            self.examples, 1, seed=self.recipe.run.seed, epoch=epoch, rank=rank, world=world
        )

    def collate(self, items: list[Any]) -> Any:
        return items[0]

    def set_stage(self, model: nn.Module, stage: StageRecipe) -> None:
        for name, p in model.named_parameters():
            p.requires_grad_("lora_" in name)

    def loss(self, model: nn.Module, example: Any) -> tuple[torch.Tensor, dict[str, float]]:
        return self.example_loss(model, example)

    def example_loss(self, model: nn.Module, example: Any) -> tuple[torch.Tensor, dict[str, float]]:
        raise NotImplementedError

    @torch.no_grad()
    def evaluate(self, model: nn.Module) -> dict[str, float]:
        if not self.dev_examples:
            return {}
        return {"dev_wer": self.dev_wer(_unwrap(model))}

    def dev_wer(self, model: nn.Module) -> float:
        raise NotImplementedError

    def state_dict(self, model: nn.Module) -> dict[str, torch.Tensor]:
        from peft import get_peft_model_state_dict

        return get_peft_model_state_dict(_unwrap(model).lm)

    def load_state_dict(self, model: nn.Module, state: dict[str, torch.Tensor]) -> None:
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(_unwrap(model).lm, state)

    def export(self, model: nn.Module, folder: Path) -> Path:
        """The peft adapter (adapter_config.json + adapter_model.safetensors): what ships under
        `llmasr/assets/adapters/<name>/`."""
        _unwrap(model).lm.save_pretrained(str(folder))
        return folder

    recipe: Any


def _unwrap(model: nn.Module) -> nn.Module:
    return getattr(model, "module", model)
