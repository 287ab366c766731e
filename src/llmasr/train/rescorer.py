"""Train an LLM as a discriminative N-best rescorer (issue 7): LoRA, minimum-WER loss over each list.

The rescorer is the same log-linear choice `llmasr.decoding.rescore` makes at inference,

    score = am + lm_weight * lm + word_bonus * words + agreement_weight * agreement,

with `lm` the LLM's total log-probability of the hypothesis given its context. Training moves the
LLM (through LoRA; the base stays frozen) so that, under the softmax of these scores over a list, the
expected number of word errors falls (MWER, as in Prabhavalkar et al. 2018), plus a little
cross-entropy toward the list's best hypotheses. Lists whose candidates all make the same number of
errors carry no signal and are skipped.

The context is the one inference builds (`build_context`): some lists get another utterance as the
previous segment, some a term list that holds a few of the reference's rarer words among
distractors, so that carried-over context and term lists keep working after training.

Runs on the one training loop (llmasr.train.loop); `run.output_dir` gets `export/` (the peft LoRA files:
what ships), `recipe.yaml`, `log.csv`, `summary.json` and `checkpoints/step-N/` for `--resume`.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from llmasr.components.lm.lora import base_causal_lm
from llmasr.core.metrics import word_errors
from llmasr.data.nbest import record_hypotheses
from llmasr.decoding.context import build_context
from llmasr.decoding.rescore import Candidate, Weights, candidates
from llmasr.train.config import (
    LoraRecipe,
    OptimRecipe,
    RecipeError,
    RunRecipe,
    StageRecipe,
)
from llmasr.train.lora_text import LoraTextTask, load_lora_lm, validate_lora_recipe

#: what a rescorer stage can train
RESCORER_PARTS = ("lora",)
LOSSES = ("mwer", "listwise")


@dataclass
class RescorerModelRecipe:
    """The LLM (named model, folder or HF id), its LoRA, and the fixed log-linear feature weights."""

    lm: str = "gemma-3-270m"
    lora: LoraRecipe = field(default_factory=LoraRecipe)
    lm_dtype: str = "float32"
    #: weights of the other features while the LLM trains (the zero-shot profile's; re-tuned on dev after)
    weights: dict[str, float] = field(
        default_factory=lambda: {"lm_weight": 0.3, "word_bonus": 2.0, "agreement_weight": 8.0}
    )
    #: context tokens kept (the most recent), as the scorer's max_context_tokens
    max_context_tokens: int = 256


@dataclass
class RescorerDataRecipe:
    """N-best corpora (JSONL from `llmasr data nbest`) and how contexts are made up."""

    train: str = ""
    dev: str | None = None
    max_candidates: int = 8
    #: share of training lists given another utterance's reference as the previous segment
    history_rate: float = 0.25
    #: share of training lists given a term list: rarer reference words among distractors
    terms_rate: float = 0.25
    terms_per_list: int = 8
    #: training lists whose best candidate is worse than this (word errors / reference words) are left
    #: out: when every hypothesis is garbage (heavy noise), choosing among them teaches little
    max_oracle_wer: float | None = None


@dataclass
class LossRecipe:
    """mwer: expected word errors under softmax(score / temperature), minus the list mean;
    listwise: cross-entropy toward the list's best candidates only. `ce_weight` adds that term to mwer."""

    kind: str = "mwer"
    temperature: float = 1.0
    ce_weight: float = 0.1


@dataclass
class RescorerRecipe:
    kind: str = "rescorer"
    model: RescorerModelRecipe = field(default_factory=RescorerModelRecipe)
    data: RescorerDataRecipe = field(default_factory=RescorerDataRecipe)
    loss: LossRecipe = field(default_factory=LossRecipe)
    stages: list[StageRecipe] = field(
        default_factory=lambda: [StageRecipe(name="lora", epochs=1.0, lr=2e-4, train=["lora"], warmup=20)]
    )
    optim: OptimRecipe = field(default_factory=lambda: OptimRecipe(grad_accum=8))
    run: RunRecipe = field(
        default_factory=lambda: RunRecipe(output_dir="runs/rescorer", eval_every=100, eval_before=True)
    )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def validate(self) -> RescorerRecipe:
        if self.kind != "rescorer":
            raise RecipeError(f"kind '{self.kind}': this recipe type is rescorer")
        validate_lora_recipe(self, RESCORER_PARTS)
        if self.loss.kind not in LOSSES:
            raise RecipeError(f"loss.kind '{self.loss.kind}': choose one of {', '.join(LOSSES)}")
        if self.loss.temperature <= 0:
            raise RecipeError("loss.temperature must be positive")
        try:
            Weights(**self.model.weights)
        except TypeError:
            raise RecipeError(f"model.weights: keys are {', '.join(asdict(Weights()))}") from None
        return self


# --------------------------------------------------------------------------- data


@dataclass
class NbestList:
    """One training or dev list: distinct candidates with their features and word errors."""

    id: str
    reference: str
    candidates: list[Candidate]
    errors: list[int]
    ref_words: int
    context: str = ""

    @property
    def informative(self) -> bool:
        return len(set(self.errors)) > 1


def read_lists(path: str | Path, max_candidates: int = 8) -> list[NbestList]:
    """N-best JSONL records as lists; a corrupt line is an error naming the file and line."""
    out = []
    p = Path(path)
    if not p.is_file():
        raise RecipeError(f"{p}: N-best corpus not found (build one with `llmasr data nbest`)")
    with open(p, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                hyps = record_hypotheses(rec)
                ref = str(rec["reference"])
                rid = str(rec["id"])
            except (ValueError, KeyError, TypeError) as exc:
                raise RecipeError(f"{p}, line {n}: not an N-best record ({exc})") from None
            cands = candidates(hyps[:max_candidates])
            if not cands:
                continue
            errors = [word_errors(ref, c.hypothesis.text)[0] for c in cands]
            out.append(NbestList(rid, ref, cands, errors, word_errors(ref, "")[1]))
    return out


def _rare_words(text: str) -> list[str]:
    """Words a term list would hold: long or capitalised ones, as written."""
    words = [w.strip(".,;:!?\"'()") for w in text.split()]
    return [w for w in words if len(w) >= 6 or (w[:1].isupper() and len(w) > 2)]


def add_contexts(lists: Sequence[NbestList], data: RescorerDataRecipe, seed: int) -> None:
    """Give some lists a previous segment and some a term list (see the module doc); deterministic."""
    rng = random.Random(seed)
    pool = sorted({w for x in lists for w in _rare_words(x.reference)})
    for i, x in enumerate(lists):
        history = ""
        terms: list[str] = []
        if len(lists) > 1 and rng.random() < data.history_rate:
            j = rng.randrange(len(lists) - 1)
            history = lists[j + (j >= i)].reference  # any list but this one
        if pool and rng.random() < data.terms_rate:
            own = _rare_words(x.reference)
            rng.shuffle(own)
            keep = own[: rng.randint(1, 3)] if own else []
            k = max(0, data.terms_per_list - len(keep))
            terms = keep + rng.sample(pool, min(k, len(pool)))
            rng.shuffle(terms)
        x.context = build_context(None, terms, history)


# --------------------------------------------------------------------------- model


class ListScorer(torch.nn.Module):
    """A causal LM (with LoRA) that scores every candidate of a list in one padded batch, with gradient.

    Tokenisation, the start token, the context cut and the head's soft-cap are those of
    `llmasr.components.lm.causal.CausalLMScorer`, so a trained adapter scores the same way at inference.
    """

    def __init__(self, lm: torch.nn.Module, tokenizer: Any, name: str, max_context_tokens: int) -> None:
        super().__init__()
        from llmasr.components.lm.causal import start_token

        self.lm = lm
        self.tokenizer = tokenizer
        self.start = start_token(tokenizer, name)
        pad = tokenizer.pad_token_id
        self.pad = int(pad if pad is not None else self.start)
        self.max_context_tokens = max_context_tokens

    @property
    def causal_lm(self) -> torch.nn.Module:
        return base_causal_lm(self.lm)

    def forward(self, texts: Sequence[str], context: str = "", relative: bool = False) -> torch.Tensor:
        """Total log-probability of each text given `context`.

        `relative`: leave out the tokens every text starts with. Their log-probability is the same for
        all texts, so scores shift by one constant: the softmax over the list, its gradient and the
        argmax are unchanged, and the costly vocabulary head runs on fewer positions.
        """
        from llmasr.components.lm.causal import _common_prefix, context_ids, head_logprobs, hypothesis_ids

        ctx = context_ids(self.tokenizer, self.start, context, self.max_context_tokens)
        hyps = [hypothesis_ids(self.tokenizer, t, bool(context.strip())) for t in texts]
        device = self.causal_lm.get_input_embeddings().weight.device
        scores = torch.zeros(len(texts), device=device)
        rows = [i for i, h in enumerate(hyps) if h]
        if not rows:
            return scores
        shared = len(_common_prefix([hyps[i] for i in rows])) if relative and len(rows) > 1 else 0
        width = len(ctx) + max(len(hyps[i]) for i in rows)
        inputs = torch.full((len(rows), width), self.pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        pick_rows, pick_cols, targets, owner = [], [], [], []
        for r, i in enumerate(rows):
            seq = ctx + hyps[i]
            inputs[r, : len(seq)] = torch.tensor(seq)
            mask[r, : len(seq)] = 1
            for j, tok in enumerate(hyps[i]):
                if j < shared:
                    continue
                pick_rows.append(r)
                pick_cols.append(len(ctx) - 1 + j)  # position j predicts the hypothesis's token j
                targets.append(tok)
                owner.append(i)
        if not targets:
            return scores
        hidden = self.causal_lm.base_model(
            input_ids=inputs.to(device), attention_mask=mask.to(device)
        ).last_hidden_state
        sel = hidden[torch.tensor(pick_rows, device=device), torch.tensor(pick_cols, device=device)]
        logp = head_logprobs(self.causal_lm, sel)
        tok = logp.gather(1, torch.tensor(targets, device=device).unsqueeze(1)).squeeze(1)
        return scores.index_add(0, torch.tensor(owner, device=device), tok)


def list_scores(x: NbestList, lm: torch.Tensor, w: Weights) -> torch.Tensor:
    """The log-linear score of every candidate (as `Candidate.total`), differentiable in `lm`."""
    other = torch.tensor([c.without_lm(w) for c in x.candidates], device=lm.device)
    coef = torch.tensor([c.lm_coefficient(w) for c in x.candidates], device=lm.device)
    return other + coef * lm.float()


def list_loss(
    scores: torch.Tensor, errors: Sequence[int], loss: LossRecipe
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(total, mwer, ce) of one list."""
    logp = torch.log_softmax(scores / loss.temperature, dim=0)
    err = torch.tensor(errors, dtype=logp.dtype, device=logp.device)
    best = err == err.min()
    ce = -torch.logsumexp(logp[best], dim=0)
    mwer = (logp.exp() * (err - err.mean())).sum()
    if loss.kind == "listwise":
        return ce, mwer.detach(), ce.detach()
    return mwer + loss.ce_weight * ce, mwer.detach(), ce.detach()


def shift_invariant(w: Weights) -> bool:
    """True when every candidate's LM score has the same coefficient, so a common shift of the LM
    scores changes nothing (and `ListScorer(relative=True)` may leave shared tokens out)."""
    return w.lm_norm_weight == 0 and w.lm_word_weight == 0


def count_lm_tokens(lists: Sequence[NbestList], tokenizer: Any) -> None:
    """Set each candidate's LM token count (the per-token LM feature's length)."""
    for x in lists:
        for c in x.candidates:
            c.lm_tokens = len(tokenizer.encode(c.hypothesis.text, add_special_tokens=False))


@torch.no_grad()
def dev_wer(scorer: ListScorer, lists: Sequence[NbestList], w: Weights) -> float:
    """Corpus WER of the choices the current model makes on dev lists."""
    errors = words = 0
    for x in lists:
        lm = scorer([c.hypothesis.text for c in x.candidates], x.context, relative=shift_invariant(w))
        pick = int(torch.argmax(list_scores(x, lm, w)))
        errors += x.errors[pick]
        words += x.ref_words
    return errors / max(1, words)


# --------------------------------------------------------------------------- the task


class RescoringLmTask(LoraTextTask):
    """LoRA on a causal LM with the minimum-WER loss over N-best lists (llmasr.train.loop.Task)."""

    metrics = ("mwer", "ce", "dev_wer")

    def __init__(self, recipe: RescorerRecipe, *, device: str = "cpu") -> None:
        r = self.recipe = recipe.validate()
        self.weights = Weights(**r.model.weights)
        train_lists = read_lists(r.data.train, r.data.max_candidates)
        add_contexts(train_lists, r.data, r.run.seed)
        limit = r.data.max_oracle_wer
        self.examples = [
            x
            for x in train_lists
            if x.informative and (limit is None or min(x.errors) <= limit * max(1, x.ref_words))
        ]
        dev = read_lists(r.data.dev, r.data.max_candidates) if r.data.dev else []
        self.dev_examples = dev[: r.run.max_dev_utterances] if r.run.max_dev_utterances > 0 else dev
        if not self.examples:
            raise RecipeError(
                f"{r.data.train}: no list whose candidates differ in word errors: nothing to learn"
            )
        self.lists = len(train_lists)
        lm, tokenizer = load_lora_lm(r.model.lm, r.model.lora, r.model.lm_dtype, device, "trained rescorer")
        self.module = ListScorer(lm, tokenizer, r.model.lm, r.model.max_context_tokens)
        if not shift_invariant(self.weights):
            count_lm_tokens(train_lists + self.dev_examples, tokenizer)

    def example_loss(self, model: torch.nn.Module, x: NbestList) -> tuple[torch.Tensor, dict[str, float]]:
        w = self.weights
        lm_scores = model([c.hypothesis.text for c in x.candidates], x.context, relative=shift_invariant(w))
        loss, mwer, ce = list_loss(list_scores(x, lm_scores, w), x.errors, self.recipe.loss)
        return loss, {"mwer": float(mwer), "ce": float(ce)}

    def dev_wer(self, model: torch.nn.Module) -> float:
        return dev_wer(model, self.dev_examples, self.weights)  # type: ignore[arg-type]
