"""Task: train a token CTC head (components.speech.ctc_head) on cached encoder states (`kind: ctc_head`).

The head learns, with CTC, to emit the LLM tokenizer's ids of each normalised transcript from frozen
encoder states computed once per corpus (`llmasr data states --trim-tail 1.0`), so a step costs no encoder
and no LLM forward: only the small transformer and one (frames x vocabulary) product with the LLM's frozen
embeddings. Dev metric: WER of the head's greedy output (and tokens emitted per reference token: a head
that deletes shows it here first).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from llmasr.components.speech.ctc_head import (
    CtcHeadConfig,
    TokenCtcHead,
    ctc_targets,
    lm_vocabulary,
    load_head,
)
from llmasr.data.states import encoder_setup, read_states
from llmasr.train.config import OptimRecipe, RecipeError, RunRecipe, StageRecipe
from llmasr.train.loop import length_batches

HEAD_PARTS = ("head",)


@dataclass
class StatesDataRecipe:
    """Folders of cached encoder states (`llmasr data states`): training folders are pooled."""

    train: list[str] = field(default_factory=list)
    dev: list[str] = field(default_factory=list)
    #: padded encoder frames per micro-batch (longest x count; Whisper: 50 frames per second)
    batch_frames: int = 8000
    num_buckets: int = 10
    #: longer utterances are left out (frames)
    max_frames: int = 1500
    max_dev_utterances: int = 200
    #: sampled softmax in training: the batch's targets, this many of the most frequent training tokens
    #: and this many random others (0 and 0: the whole vocabulary; inference always uses all of it)
    frequent_tokens: int = 3000
    random_tokens: int = 1000
    #: SpecAugment-style time masks on the states in training: this many spans of up to this many frames
    time_masks: int = 2
    time_mask_frames: int = 10


@dataclass
class CtcHeadRecipe:
    kind: str = "ctc_head"
    model: CtcHeadConfig = field(default_factory=CtcHeadConfig)
    data: StatesDataRecipe = field(default_factory=StatesDataRecipe)
    stages: list[StageRecipe] = field(
        default_factory=lambda: [StageRecipe(name="ctc", epochs=6, lr=1e-3, train=["head"], warmup=200)]
    )
    optim: OptimRecipe = field(default_factory=OptimRecipe)
    #: start from a trained head (its folder, a run of one, or a shipped name such as ctc-head-tiny)
    #: instead of random weights: fine-tuning, e.g. on new voices; `model` must describe the same head
    init: str | None = None
    run: RunRecipe = field(
        default_factory=lambda: RunRecipe(
            output_dir="runs/ctc_head", log_every=25, eval_every=500, save_every=250
        )
    )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def validate(self) -> CtcHeadRecipe:
        if self.kind != "ctc_head":
            raise RecipeError(f"kind '{self.kind}': this recipe type is ctc_head")
        if not self.data.train:
            raise RecipeError("data.train: folders of encoder states (llmasr data states) are required")
        if not self.stages:
            raise RecipeError("a recipe needs at least one stage")
        for i, s in enumerate(self.stages):
            if s.train != ["head"]:
                raise RecipeError(f"stages.{i}.train: {s.train}; a ctc_head recipe trains [head]")
            if s.steps <= 0 and s.epochs <= 0:
                raise RecipeError(f"stages.{i} ({s.name}): set steps or epochs")
        if self.model.stack < 1 or self.model.layers < 0:
            raise RecipeError("model.stack must be >= 1 and model.layers >= 0")
        return self


@dataclass
class StatesExample:
    id: str
    text: str
    states: np.ndarray  # (T, D) float16
    targets: list[int]


def load_state_examples(
    folders: list[str], tokenizer: Any, config: CtcHeadConfig, max_frames: int, limit: int | None = None
) -> list[StatesExample]:
    """Every cached utterance of `folders` with its CTC targets; checks the states match the head's
    encoder setup (a head trained on trimmed states must be fed trimmed states)."""
    out: list[StatesExample] = []
    for folder in folders:
        setup = encoder_setup(folder)
        if setup.get("trim_tail") != config.trim_tail:
            raise RecipeError(
                f"{folder}: states made with trim_tail={setup.get('trim_tail')}, the head expects "
                f"{config.trim_tail} (llmasr data states --trim-tail)"
            )
        for u in read_states(folder):
            if len(u.states) > max_frames or len(u.states) == 0:
                continue
            targets = ctc_targets(tokenizer, u.text)
            if not targets or len(targets) * 2 > -(-len(u.states) // config.stack):  # CTC needs room
                continue
            out.append(StatesExample(u.id, u.text, u.states, targets))
            if limit is not None and len(out) >= limit:
                return out
    return out


def pad_states(batch: list[StatesExample]) -> tuple[torch.Tensor, torch.Tensor]:
    items = [torch.from_numpy(np.asarray(x.states, dtype=np.float32)) for x in batch]
    return nn.utils.rnn.pad_sequence(items, batch_first=True), torch.tensor([len(x) for x in items])


def grow_head(head: TokenCtcHead, start: TokenCtcHead) -> None:
    """Load `start`'s weights into `head`, which may have more trunk layers: its first layers take
    `start`'s, each extra layer (appended after them) starts as the identity (its attention output and
    second feed-forward projections zeroed: a pre-norm layer then adds nothing to its residual), so the
    grown head computes what `start` did and training adds depth from there (progressive stacking, as
    in Gong et al., "Efficient Training of BERT by Progressively Stacking", ICML 2019, with identity
    rather than copied layers).

    Raises RecipeError if `head` has fewer layers than `start`."""
    have, want = start.config.layers, head.config.layers
    if want < have:
        raise RecipeError(f"a head of {have} layers cannot start a head of {want}")
    state = start.state_dict()
    missing, unexpected = head.load_state_dict(state, strict=False)
    extra = {f"trunk.layers.{i}." for i in range(have, want)}
    if unexpected or any(not any(k.startswith(e) for e in extra) for k in missing):
        raise RecipeError(f"init: weights do not match (missing {missing[:3]}, unexpected {unexpected[:3]})")
    with torch.no_grad():
        for i in range(have, want):
            layer = head.trunk.layers[i]
            for lin in (layer.self_attn.out_proj, layer.linear2):
                lin.weight.zero_()
                lin.bias.zero_()


class CtcHeadTask:
    """The token CTC head as a training plug-in (see llmasr.train.loop.Task)."""

    metrics = ("dev_wer", "dev_token_ratio")
    num_workers = 0

    def __init__(self, recipe: CtcHeadRecipe) -> None:
        self.recipe = recipe.validate()
        self.embeddings, self.tokenizer = lm_vocabulary(recipe.model.lm)
        d = recipe.data
        self.train = load_state_examples(d.train, self.tokenizer, recipe.model, d.max_frames)
        self.dev = load_state_examples(
            d.dev, self.tokenizer, recipe.model, d.max_frames, d.max_dev_utterances
        )
        if not self.train:
            raise RecipeError(f"{d.train}: no usable training utterances")
        self.recipe.model.input_dim = int(self.train[0].states.shape[1])
        self._lengths = [len(x.states) for x in self.train]
        counts: dict[int, int] = {}
        for x in self.train:
            for t in x.targets:
                counts[t] = counts.get(t, 0) + 1
        self._frequent = sorted(counts, key=lambda t: -counts[t])[: d.frequent_tokens]
        self._rng = np.random.default_rng(recipe.run.seed)
        #: what the head may emit: every token of the training transcripts (normalised text)
        self.vocabulary = np.array(sorted(counts), dtype=np.int64)

    def build(self, device: torch.device) -> nn.Module:
        head = TokenCtcHead(self.recipe.model, self.embeddings)
        allowed = self.vocabulary.tolist()
        if self.recipe.init:
            start = load_head(self.recipe.init, self.embeddings)
            mine, theirs = asdict(self.recipe.model), asdict(start.config)
            # every field but dropout fixes the weights' shapes or meaning (input_dim: the states' width);
            # `layers` may grow (grow_head)
            differ = [
                k
                for k in mine
                if k != "dropout" and mine[k] != theirs.get(k) and not (k == "layers" and mine[k] > theirs[k])
            ]
            if differ:
                raise RecipeError(
                    f"init '{self.recipe.init}': a head of another setup than `model` ("
                    + ", ".join(f"{k}: {theirs.get(k)} vs {mine[k]}" for k in differ)
                    + ")"
                )
            grow_head(head, start)
            allowed += torch.nonzero(start.allowed).flatten().tolist()  # keep what it could emit
        head = head.to(device)
        head.allow(allowed)
        head.requires_grad_(False)
        return head

    def epoch_batches(self, epoch: int, rank: int, world: int) -> list[Any]:
        d, r = self.recipe.data, self.recipe.run
        idx = length_batches(
            self._lengths,
            d.batch_frames,
            seed=r.seed,
            epoch=epoch,
            rank=rank,
            world=world,
            num_buckets=d.num_buckets,
        )
        return [[self.train[i] for i in b] for b in idx]

    def collate(self, items: list[StatesExample]) -> list[StatesExample]:
        return items  # padding happens in `loss`, after the time masks

    def set_stage(self, model: nn.Module, stage: StageRecipe) -> None:
        for p in model.parameters():
            p.requires_grad_(True)

    def loss(self, model: nn.Module, batch: list[StatesExample]) -> tuple[torch.Tensor, dict[str, float]]:
        head = _unwrap(model)
        states, lengths = pad_states(batch)
        self._mask_time(states, lengths)
        device = head.embeddings.device
        hidden, out_lengths = head.hidden(states.to(device), lengths.to(device))
        loss = head.ctc_loss(hidden, out_lengths, [x.targets for x in batch], self._negatives())
        return loss, {"examples": len(batch)}

    def _mask_time(self, states: torch.Tensor, lengths: torch.Tensor) -> None:
        """Zero a few random spans of each utterance's frames, in place (SpecAugment's time masks, Park et
        al. 2019, applied to the frozen encoder's states)."""
        d = self.recipe.data
        for row, n in enumerate(lengths.tolist()):
            for _ in range(d.time_masks):
                width = int(self._rng.integers(0, d.time_mask_frames + 1))
                if 0 < width < n:
                    start = int(self._rng.integers(0, n - width))
                    states[row, start : start + width] = 0.0

    def _negatives(self) -> list[int] | None:
        """The sampled softmax's extra columns: the most frequent training tokens, plus random others."""
        d = self.recipe.data
        if d.frequent_tokens <= 0 and d.random_tokens <= 0:
            return None
        extra = self._rng.choice(
            self.vocabulary, size=min(d.random_tokens, len(self.vocabulary)), replace=False
        )
        return [*self._frequent, *extra.tolist()]

    @torch.no_grad()
    def evaluate(self, model: nn.Module) -> dict[str, float]:
        from llmasr.core.metrics import wer

        if not self.dev:
            return {}
        head = _unwrap(model)
        refs, hyps, emitted, wanted = [], [], 0, 0
        for i in range(0, len(self.dev), 32):
            batch = self.dev[i : i + 32]
            states, lengths = pad_states(batch)
            logits, out_lengths = head(states.to(head.embeddings.device), lengths.to(head.embeddings.device))
            for x, path in zip(batch, head.greedy(logits, out_lengths)):
                ids = [tok for tok, _, _ in path]
                hyps.append(self.tokenizer.decode(ids))
                refs.append(x.text)
                emitted, wanted = emitted + len(ids), wanted + len(x.targets)
        return {"dev_wer": wer(refs, hyps), "dev_token_ratio": emitted / max(1, wanted)}

    def state_dict(self, model: nn.Module) -> dict[str, torch.Tensor]:
        return _unwrap(model).state_dict()

    def load_state_dict(self, model: nn.Module, state: dict[str, torch.Tensor]) -> None:
        head = _unwrap(model)
        state.setdefault("allowed", head.allowed)
        head.load_state_dict(state)

    def export(self, model: nn.Module, folder: Path) -> Path:
        return _unwrap(model).save(folder)


def _unwrap(model: nn.Module) -> TokenCtcHead:
    return getattr(model, "module", model)  # type: ignore[return-value]
