"""Train an instruct LLM for generative error correction (GER): LoRA, cross-entropy on the reference
given the N-best list (the prompt of `llmasr.decoding.correct`), on `llmasr data nbest` corpora.

Lists get the same made-up contexts as rescorer training (a previous segment, a term list holding some
of the reference's rarer words), so the corrector learns to use a term list without copying it. Lists
whose best hypothesis is already far from the reference (`data.max_oracle_wer`) are left out: they teach
the LLM to write text the audio does not support, which the guard would reject anyway.

Runs on the one training loop (llmasr.train.loop); `run.output_dir` gets `export/` (the peft LoRA files:
what ships), `recipe.yaml`, `log.csv`, `summary.json` and `checkpoints/step-N/` for `--resume`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from llmasr.decoding.correct import MAX_CHANGE, MAX_HYPOTHESES, GenerativeCorrector, answer_ids, prompt_ids
from llmasr.train.config import LoraRecipe, OptimRecipe, RecipeError, RunRecipe, StageRecipe
from llmasr.train.lora_text import LoraTextTask, load_lora_lm, validate_lora_recipe
from llmasr.train.rescorer import NbestList, RescorerDataRecipe, add_contexts, read_lists


@dataclass
class CorrectorModelRecipe:
    lm: str = "smollm2-135m-instruct"
    lora: LoraRecipe = field(default_factory=lambda: LoraRecipe(r=16, alpha=32))
    lm_dtype: str = "float32"
    max_hypotheses: int = MAX_HYPOTHESES
    #: the guard used for the dev WER (inference's default)
    max_change: float = MAX_CHANGE


@dataclass
class CorrectorRecipe:
    kind: str = "corrector"
    model: CorrectorModelRecipe = field(default_factory=CorrectorModelRecipe)
    data: RescorerDataRecipe = field(default_factory=lambda: RescorerDataRecipe(max_oracle_wer=0.4))
    stages: list[StageRecipe] = field(
        default_factory=lambda: [StageRecipe(name="lora", epochs=1.0, lr=3e-4, train=["lora"], warmup=20)]
    )
    optim: OptimRecipe = field(default_factory=lambda: OptimRecipe(grad_accum=8))
    run: RunRecipe = field(
        default_factory=lambda: RunRecipe(output_dir="runs/corrector", eval_every=100, eval_before=True)
    )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def validate(self) -> CorrectorRecipe:
        if self.kind != "corrector":
            raise RecipeError(f"kind '{self.kind}': this recipe type is corrector")
        validate_lora_recipe(self, ("lora",))
        if self.model.max_hypotheses < 1:
            raise RecipeError("model.max_hypotheses must be at least 1")
        return self


class AnswerLoss(torch.nn.Module):
    """Mean cross-entropy of the reference's tokens (and the end token) after the correction prompt."""

    def __init__(self, lm: torch.nn.Module, tokenizer: Any, max_hypotheses: int) -> None:
        super().__init__()
        self.lm = lm
        self.tokenizer = tokenizer
        self.max_hypotheses = max_hypotheses

    def forward(self, x: NbestList) -> torch.Tensor:
        hyps = [c.hypothesis.text for c in x.candidates[: self.max_hypotheses]]
        prompt = prompt_ids(self.tokenizer, hyps, x.context)
        answer = answer_ids(self.tokenizer, x.reference)
        device = self.lm.get_input_embeddings().weight.device  # type: ignore[operator]
        ids = torch.tensor([prompt + answer], device=device)
        labels = torch.tensor([[-100] * len(prompt) + answer], device=device)
        return self.lm(input_ids=ids, labels=labels).loss  # type: ignore[operator]


def corrected_wer(corrector: GenerativeCorrector, lists: Sequence[NbestList]) -> float:
    """Corpus WER of guarded corrections (fallback: the first hypothesis)."""
    from llmasr.core.metrics import word_errors

    hyps = [[c.hypothesis.text for c in x.candidates] for x in lists]
    out = corrector.correct_many(hyps, contexts=[x.context for x in lists])
    errors = sum(word_errors(x.reference, c.text)[0] for x, c in zip(lists, out))
    return errors / max(1, sum(x.ref_words for x in lists))


class CorrectorTask(LoraTextTask):
    """LoRA on an instruct LM; cross-entropy on the reference given the N-best list (a loop Task)."""

    def __init__(self, recipe: CorrectorRecipe, *, device: str = "cpu") -> None:
        r = self.recipe = recipe.validate()
        lists = read_lists(r.data.train, r.data.max_candidates)
        add_contexts(lists, r.data, r.run.seed)
        limit = r.data.max_oracle_wer
        self.examples = [x for x in lists if limit is None or min(x.errors) <= limit * max(1, x.ref_words)]
        dev = read_lists(r.data.dev, r.data.max_candidates) if r.data.dev else []
        self.dev_examples = dev[: r.run.max_dev_utterances] if r.run.max_dev_utterances > 0 else dev
        if not self.examples:
            raise RecipeError(f"{r.data.train}: no list within data.max_oracle_wer of its reference")
        lm, self.tokenizer = load_lora_lm(r.model.lm, r.model.lora, r.model.lm_dtype, device, "corrector")
        self.module = AnswerLoss(lm, self.tokenizer, r.model.max_hypotheses)

    def example_loss(self, model: torch.nn.Module, x: NbestList) -> tuple[torch.Tensor, dict[str, float]]:
        return model(x), {}

    def dev_wer(self, model: torch.nn.Module) -> float:
        m = self.recipe.model
        corrector = GenerativeCorrector.from_module(
            model.lm, self.tokenizer, max_hypotheses=m.max_hypotheses, max_change=m.max_change
        )
        return corrected_wer(corrector, self.dev_examples)
