"""Train the speech-to-entity retriever (D5) on cached encoder states (`llmasr data states`).

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

import json
import math
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from llmasr.components.entities.retriever import RetrieverConfig, SpeechEntityRetriever, char_tensor
from llmasr.core.metrics import normalize
from llmasr.data.states import read_states
from llmasr.train.config import OptimRecipe, RecipeError, RunRecipe, StageRecipe
from llmasr.train.runlog import CsvLog

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
    run: RunRecipe = field(default_factory=lambda: RunRecipe(output_dir="runs/retriever", log_every=20))

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


@dataclass
class RetrieverSummary:
    steps: int
    seconds: float
    train_utterances: int
    dev_utterances: int
    dev_recall_at_5: float | None
    dev_cer: float | None
    trainable: int
    output_dir: str
    retriever: str


def train_retriever(recipe: RetrieverRecipe, *, console: Any = None, **_: Any) -> RetrieverSummary:
    from llmasr.components.entities.embed import TextEmbedder
    from llmasr.train.loop import lr_factor, make_optimizer, stage_steps
    from llmasr.train.lora_loop import start_run

    r = recipe.validate()
    ctx = start_run(r, console)
    train = load_examples(r.data.train)
    if r.data.dev:
        dev = load_examples(r.data.dev)
    else:
        train, dev = train[: -r.data.dev_size], train[-r.data.dev_size :]
    if not train or not dev:
        raise RecipeError(f"{r.data.train}: too few utterances for a train/dev split")
    embedder = TextEmbedder(r.model.embedder)
    names = sorted({e for x in train + dev for e in x.entities})
    vectors = dict(zip(names, embedder.embed(names)))
    ctx.say(f"{len(train)} train / {len(dev)} dev utterances, {len(names)} distinct entities")
    model = SpeechEntityRetriever(r.model)
    log = CsvLog(ctx.out / "log.csv", CSV_FIELDS)
    rng = random.Random(r.run.seed)
    step, started = 0, time.perf_counter()
    recall = cer = None
    for stage in r.stages:
        part = stage.train[0]
        for name, p in model.named_parameters():
            p.requires_grad_(name.startswith("compressor.ctc_head.") == (part == "ctc_head"))
        model.train()
        batches_per_epoch = math.ceil(len(train) / r.data.batch_size)
        total = stage_steps(stage, batches_per_epoch, 1)
        optimizer = make_optimizer(model, stage, r.optim)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(stage, total))
        window: list[float] = []
        order: list[Example] = []
        for s in range(total):
            if not order:
                order = list(train)
                rng.shuffle(order)
            batch, order = order[: r.data.batch_size], order[r.data.batch_size :]
            states, lengths = _pad(batch)
            if part == "ctc_head":
                logp = torch.log_softmax(model.ctc_logits(states), -1).transpose(0, 1)
                targets = [torch.tensor(x.chars or [0]) for x in batch]
                loss = F.ctc_loss(
                    logp,
                    torch.cat(targets),
                    lengths,
                    torch.tensor([len(t) for t in targets]),
                    blank=r.model.blank,
                    zero_infinity=True,
                )
            else:
                ents = sorted({e for x in batch for e in x.entities})
                if not ents:
                    continue
                positive = positives(batch, ents)
                frames, mask = model.speech(states, lengths)
                ent_vectors = torch.from_numpy(np.stack([vectors[e] for e in ents]))
                scores = model.scores(frames, mask, model.entities(ent_vectors, char_tensor(ents)))
                loss = contrastive_loss(scores, positive, model.logit_scale)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], r.optim.grad_clip)
            optimizer.step()
            scheduler.step()
            step += 1
            window.append(float(loss.detach()))
            end = s == total - 1
            if step % max(1, r.run.log_every) == 0 or end:
                row = {
                    "step": step,
                    "stage": stage.name,
                    "epoch": round((s + 1) / batches_per_epoch, 2),
                    "loss": round(sum(window) / len(window), 5),
                    "lr": f"{scheduler.get_last_lr()[0]:.3e}",
                    "elapsed": round(time.perf_counter() - started, 1),
                }
                if end:
                    model.eval()
                    if part == "ctc_head":
                        cer = ctc_cer(model, dev)
                        row["dev_cer"] = round(cer, 5)
                    else:
                        recall = recall_at_k(model, dev, vectors, 5)
                        row["dev_recall_at_5"] = round(recall, 5)
                    model.train()
                log.write(row)
                extra = (f" dev CER {100 * cer:.2f}%" if "dev_cer" in row and cer is not None else "") + (
                    f" dev recall@5 {recall:.3f}" if "dev_recall_at_5" in row and recall is not None else ""
                )
                ctx.say(f"step {step} [{stage.name}] loss {row['loss']:.4f}{extra}")
                window = []
    model.eval()
    folder = model.save(ctx.out / "retriever")
    summary = RetrieverSummary(
        steps=step,
        seconds=round(time.perf_counter() - started, 1),
        train_utterances=len(train),
        dev_utterances=len(dev),
        dev_recall_at_5=recall,
        dev_cer=cer,
        trainable=sum(p.numel() for p in model.parameters()),
        output_dir=str(ctx.out),
        retriever=str(folder),
    )
    (ctx.out / "summary.json").write_text(json.dumps(asdict(summary), indent=2), encoding="utf-8")
    return summary
