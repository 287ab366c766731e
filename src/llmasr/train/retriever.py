"""Train the speech-to-entity retriever on cached encoder states (`llmasr data states`).

Two stages, as a recipe (`kind: retriever`): `ctc_head` learns characters with the CTC loss (the
compressor needs it to know which frames carry a character), then `retriever` trains the projections,
the self-attention layer and the entity-side projection contrastively, the CTC head frozen.

Training entities are the words of each transcript that a term list would hold (long or capitalised
words, and pairs of such words in a row); an utterance's own entities are its positives, the other
utterances' entities in the batch its negatives (and the reverse: each entity against the utterances).

Output (`run.output_dir`): `retriever/` (what ships: safetensors + config), `recipe.yaml`, `log.csv`,
`summary.json`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from llmasr.components.entities.retriever import RetrieverConfig, SpeechEntityRetriever, char_tensor
from llmasr.core.metrics import normalize
from llmasr.data.states import read_states
from llmasr.train.config import OptimRecipe, RecipeError, RunRecipe, StageRecipe
from llmasr.train.loop import shuffled_batches

RETRIEVER_PARTS = ("ctc_head", "retriever")
CSV_FIELDS = ("step", "stage", "epoch", "loss", "lr", "elapsed", "dev_recall_at_5", "dev_cer")


@dataclass
class RetrieverDataRecipe:
    """Folders of cached encoder states; dev: a held-out folder, or the last `dev_size` of train."""

    train: str = ""
    dev: str | None = None
    dev_size: int = 200
    batch_size: int = 32


@dataclass
class RetrieverRecipe:
    kind: str = "retriever"
    model: RetrieverConfig = field(default_factory=RetrieverConfig)
    data: RetrieverDataRecipe = field(default_factory=RetrieverDataRecipe)
    stages: list[StageRecipe] = field(
        default_factory=lambda: [
            StageRecipe(name="ctc", epochs=6, lr=3e-3, train=["ctc_head"], warmup=20),
            StageRecipe(name="retriever", epochs=10, lr=1e-3, train=["retriever"], warmup=20),
        ]
    )
    optim: OptimRecipe = field(default_factory=OptimRecipe)
    run: RunRecipe = field(
        default_factory=lambda: RunRecipe(
            output_dir="runs/retriever", log_every=20, eval_every=0, save_every=200, eval_each_stage=True
        )
    )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def validate(self) -> RetrieverRecipe:
        if self.kind != "retriever":
            raise RecipeError(f"kind '{self.kind}': this recipe type is retriever")
        if not self.data.train:
            raise RecipeError("data.train: a folder of encoder states (llmasr data states) is required")
        if not self.stages:
            raise RecipeError("a recipe needs at least one stage")
        for i, s in enumerate(self.stages):
            if len(s.train) != 1 or s.train[0] not in RETRIEVER_PARTS:
                raise RecipeError(f"stages.{i}.train: {s.train}; one of {', '.join(RETRIEVER_PARTS)}")
            if s.steps <= 0 and s.epochs <= 0:
                raise RecipeError(f"stages.{i} ({s.name}): set steps or epochs")
        if self.data.batch_size < 2:
            raise RecipeError("data.batch_size must be at least 2 (the other utterances are the negatives)")
        return self


def entity_words(text: str) -> list[str]:
    """What a term list would hold from this transcript: long or capitalised words, and runs of two."""
    words = [w.strip(".,;:!?\"'()") for w in text.split()]
    flags = [len(w) >= 6 or (w[:1].isupper() and len(w) > 2 and i > 0) for i, w in enumerate(words)]
    out = [w for w, f in zip(words, flags) if f]
    out += [f"{a} {b}" for (a, fa), (b, fb) in zip(zip(words, flags), zip(words[1:], flags[1:])) if fa and fb]
    seen: dict[str, None] = {}
    for e in out:
        if normalize(e):
            seen.setdefault(e, None)
    return list(seen)


def positives(batch: Sequence[Example], entities: Sequence[str]) -> torch.Tensor:
    """(B, E): which utterance mentions which entity (its own, or one it happens to say as well)."""
    keys = [f" {normalize(e)} " for e in entities]
    return torch.tensor([[e in x.entities or k in x.spoken for e, k in zip(entities, keys)] for x in batch])


@dataclass
class Example:
    states: np.ndarray
    text: str
    entities: list[str]
    chars: list[int]
    #: the normalised text between spaces, for whole-word entity matching
    spoken: str = ""


def load_examples(folder: str) -> list[Example]:
    from llmasr.components.speech.adapters import char_ids

    out = []
    for u in read_states(folder):
        ents = list(u.entities) or entity_words(u.text)
        out.append(Example(u.states, u.text, ents, char_ids(u.text), f" {normalize(u.text)} "))
    if not out:
        raise RecipeError(f"{folder}: no encoded utterances")
    return out


def _pad(batch: Sequence[Example]) -> tuple[torch.Tensor, torch.Tensor]:
    items = [torch.from_numpy(np.asarray(x.states, dtype=np.float32)) for x in batch]
    return nn.utils.rnn.pad_sequence(items, batch_first=True), torch.tensor([len(x) for x in items])


def contrastive_loss(scores: torch.Tensor, positive: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """InfoNCE both ways over a (B, E) score matrix; each positive is scored against the negatives only
    (the same row's or column's other positives are left out)."""
    logits = scores * scale.exp().clamp(max=100)
    rows, cols = positive.nonzero(as_tuple=True)
    neg_inf = torch.finfo(logits.dtype).min
    by_row = logits[rows].masked_fill(positive[rows], neg_inf)  # (P, E) negatives of the utterance
    by_row = torch.cat([logits[rows, cols].unsqueeze(1), by_row], 1)
    by_col = logits[:, cols].T.masked_fill(positive[:, cols].T, neg_inf)  # (P, B) negatives of the entity
    by_col = torch.cat([logits[rows, cols].unsqueeze(1), by_col], 1)
    target = torch.zeros(len(rows), dtype=torch.long, device=scores.device)
    return 0.5 * (F.cross_entropy(by_row, target) + F.cross_entropy(by_col, target))


@torch.no_grad()
def recall_at_k(
    model: SpeechEntityRetriever, examples: Sequence[Example], vectors: dict[str, np.ndarray], k: int = 5
) -> float:
    """Share of each utterance's entities found in its top-k among all the examples' entities."""
    names = sorted({e for x in examples for e in x.entities})
    if not names:
        return 0.0
    ents = model.entities(torch.from_numpy(np.stack([vectors[n] for n in names])), char_tensor(names))
    found = total = 0
    for i in range(0, len(examples), 32):
        batch = examples[i : i + 32]
        frames, mask = model.speech(*_pad(batch))
        top = torch.topk(model.scores(frames, mask, ents), min(k, len(names)), dim=1).indices
        for x, idx in zip(batch, top):
            got = {names[int(j)] for j in idx}
            found += sum(e in got for e in x.entities)
            total += len(x.entities)
    return found / max(1, total)


@torch.no_grad()
def ctc_cer(model: SpeechEntityRetriever, examples: Sequence[Example]) -> float:
    """Character error rate of the CTC head's greedy output (how well compression knows characters)."""
    from llmasr.components.asr.ctc import greedy_ctc
    from llmasr.components.speech.adapters import CHAR_VOCAB
    from llmasr.core.metrics import char_errors

    errors = chars = 0
    for i in range(0, len(examples), 32):
        batch = examples[i : i + 32]
        states, lengths = _pad(batch)
        logits = model.ctc_logits(states)
        for x, row, n in zip(batch, logits, lengths):
            text, _ = greedy_ctc(row, int(n), CHAR_VOCAB, model.config.blank)
            e, c = char_errors(normalize(x.text), text)
            errors, chars = errors + e, chars + c
    return errors / max(1, chars)


class RetrieverTask:
    """The speech-to-entity retriever as a training plug-in (llmasr.train.loop.Task): stage `ctc_head`
    learns characters with the CTC loss (the compressor needs it to know which frames carry one), stage
    `retriever` trains the rest contrastively with that head frozen. Dev metric per stage: character
    error rate of the head, recall@5 of the utterances' entities."""

    num_workers = 0
    metrics = ("dev_cer", "dev_recall_at_5")

    def __init__(self, recipe: RetrieverRecipe) -> None:
        from llmasr.components.entities.embed import TextEmbedder

        r = self.recipe = recipe.validate()
        train = load_examples(r.data.train)
        if r.data.dev:
            dev = load_examples(r.data.dev)
        else:
            train, dev = train[: -r.data.dev_size], train[-r.data.dev_size :]
        if not train or not dev:
            raise RecipeError(f"{r.data.train}: too few utterances for a train/dev split")
        self.train, self.dev = train, dev
        embedder = TextEmbedder(r.model.embedder)
        names = sorted({e for x in train + dev for e in x.entities})
        self.vectors = dict(zip(names, embedder.embed(names)))
        self.part = "ctc_head"

    def build(self, device: torch.device) -> nn.Module:
        return SpeechEntityRetriever(self.recipe.model).to(device)

    def epoch_batches(self, epoch: int, rank: int, world: int) -> list[Any]:
        return shuffled_batches(
            self.train,
            self.recipe.data.batch_size,
            seed=self.recipe.run.seed,
            epoch=epoch,
            rank=rank,
            world=world,
        )

    def collate(self, items: list[Example]) -> list[Example]:
        return items

    def set_stage(self, model: nn.Module, stage: StageRecipe) -> None:
        self.part = stage.train[0]
        for name, p in model.named_parameters():
            p.requires_grad_(name.startswith("compressor.ctc_head.") == (self.part == "ctc_head"))

    def loss(self, model: nn.Module, batch: list[Example]) -> tuple[torch.Tensor, dict[str, float]]:
        states, lengths = _pad(batch)
        if self.part == "ctc_head":
            logp = torch.log_softmax(model.ctc_logits(states), -1).transpose(0, 1)
            targets = [torch.tensor(x.chars or [0]) for x in batch]
            loss = F.ctc_loss(
                logp,
                torch.cat(targets),
                lengths,
                torch.tensor([len(t) for t in targets]),
                blank=self.recipe.model.blank,
                zero_infinity=True,
            )
            return loss, {"examples": len(batch)}
        ents = sorted({e for x in batch for e in x.entities})
        frames, mask = model.speech(states, lengths)
        if not ents:  # nothing to contrast in this batch: a zero loss that keeps the graph
            return frames.sum() * 0.0, {"examples": len(batch)}
        ent_vectors = torch.from_numpy(np.stack([self.vectors[e] for e in ents]))
        scores = model.scores(frames, mask, model.entities(ent_vectors, char_tensor(ents)))
        return contrastive_loss(scores, positives(batch, ents), model.logit_scale), {"examples": len(batch)}

    @torch.no_grad()
    def evaluate(self, model: nn.Module) -> dict[str, float]:
        if self.part == "ctc_head":
            return {"dev_cer": ctc_cer(model, self.dev)}
        return {"dev_recall_at_5": recall_at_k(model, self.dev, self.vectors, 5)}

    def state_dict(self, model: nn.Module) -> dict[str, torch.Tensor]:
        return model.state_dict()

    def load_state_dict(self, model: nn.Module, state: dict[str, torch.Tensor]) -> None:
        model.load_state_dict(state)

    def export(self, model: nn.Module, folder: Path) -> Path:
        """`retriever.safetensors` + `retriever.json`: what ships as `retriever-tiny`."""
        return model.save(folder)
