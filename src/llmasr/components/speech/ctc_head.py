"""A CTC head over an LLM's own vocabulary, tied to the LLM's frozen input embeddings.

This is the "align before you fuse" stage of the speech-LLMs (after LegoSLM, Ma et al. 2025,
arXiv 2505.11352, and CTC-compressed speech-LLMs such as Wu et al. 2023, Speech-LLaMA): a small
transformer over frozen speech-encoder states predicts, frame by frame, either blank or one of the LLM's
tokens, with the LLM's input-embedding matrix E (V, H) as the output layer:

    h = Transformer(Linear(stack_k(states)))          (B, T/k, d)
    x = Linear(h)                                     (B, T/k, H)  in the LLM's embedding space
    logits = [scale * x @ E^T + token_bias, blank(h)] (B, T/k, V + 1); blank is the last column

so a non-blank frame lands near the embedding of the token said there. Trained with CTC on the LLM
tokenizer's ids of the normalised transcript it needs no LLM forward (cheap on a CPU), and one trained
head serves every later model: its greedy output is a first-pass transcript; `posterior_embeddings`
(sum_v p(v|frame) E_v, blank contributing nothing) feed the LLM in the LLM's own embedding space;
`compress` keeps one such embedding per emitted token (the CTC compressor); its alignment times words.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from llmasr.components.speech.adapters import length_mask
from llmasr.core.errors import ModelError
from llmasr.core.metrics import normalize

CONFIG = "ctc_head.json"
WEIGHTS = "ctc_head.safetensors"


@dataclass
class CtcHeadConfig:
    """What a head is: the encoder and LLM it sits between (by name), and its own sizes."""

    encoder: str = "whisper-tiny.en"
    #: the encoder's window: None = Whisper's full 30 s, a number = audio + that much silence
    trim_tail: float | None = 1.0
    lm: str = "smollm2-135m-instruct"
    #: encoder state width (set from the encoder when built)
    input_dim: int = 384
    #: encoder frames concatenated per head frame (Whisper: 50 frames/s, so 2 gives 25/s)
    stack: int = 2
    dim: int = 384
    layers: int = 2
    heads: int = 4
    ffn_dim: int = 1536
    dropout: float = 0.1
    #: posterior_embeddings keeps this many most likely tokens per frame (the rest is ~0)
    top_k: int = 8


def ctc_targets(tokenizer: object, text: str) -> list[int]:
    """The LLM tokenizer's ids of the normalised transcript (lowercase, no punctuation, numbers as
    words: what the audio itself says); the CTC targets of a head."""
    words = normalize(text)
    return list(tokenizer.encode(words, add_special_tokens=False)) if words else []  # type: ignore[attr-defined]


class TokenCtcHead(nn.Module):
    """Encoder states (B, T, input_dim) -> CTC logits over the LLM vocabulary + blank; see the module doc.

    `embeddings` (V, H) is the LLM's input-embedding matrix; it is a non-persistent buffer (never saved:
    `load` takes it from the LLM again) and never trains.
    """

    def __init__(self, config: CtcHeadConfig, embeddings: torch.Tensor) -> None:
        super().__init__()
        self.config = config
        vocab, width = embeddings.shape
        self.vocab_size = int(vocab)
        self.blank = int(vocab)  # the last column
        self.register_buffer("embeddings", embeddings.detach().float().clone(), persistent=False)
        self.inp = nn.Linear(config.input_dim * config.stack, config.dim)
        layer = nn.TransformerEncoderLayer(
            config.dim, config.heads, config.ffn_dim, config.dropout, batch_first=True, norm_first=True
        )
        self.trunk = nn.TransformerEncoder(layer, config.layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(config.dim)
        self.to_lm = nn.Linear(config.dim, int(width))
        self.blank_logit = nn.Linear(config.dim, 1)
        #: logits = exp(log_scale) * x @ E^T: E's rows are small (norm ~3), so start sharp enough to learn
        self.log_scale = nn.Parameter(torch.tensor(0.0))
        self.token_bias = nn.Parameter(torch.zeros(int(vocab)))
        #: the tokens the head may emit (those of normalised text: lowercase words, no punctuation); the
        #: rest of the LLM's vocabulary (code, capitals, other scripts) never trained and is masked out
        self.register_buffer("allowed", torch.ones(int(vocab), dtype=torch.bool))

    # ---- shapes ------------------------------------------------------------------------------

    def output_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        """Head frames from encoder frames: ceil(T / stack)."""
        k = self.config.stack
        return torch.div(lengths + k - 1, k, rounding_mode="floor")

    def frame_seconds(self, encoder_fps: float = 50.0) -> float:
        return self.config.stack / encoder_fps

    # ---- forward -----------------------------------------------------------------------------

    def hidden(self, states: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T, D) encoder states valid up to `lengths` -> ((B, T', d) head states, (B,) lengths)."""
        b, t, d = states.shape
        k = self.config.stack
        t_out = -(-t // k)
        x = states * length_mask(lengths, t).unsqueeze(-1).to(states.dtype)
        x = F.pad(x, (0, 0, 0, t_out * k - t)).reshape(b, t_out, k * d)
        out_lengths = self.output_lengths(lengths)
        x = self.inp(x.to(self.inp.weight.dtype))
        pad = ~length_mask(out_lengths, t_out)
        x = self.trunk(x, src_key_padding_mask=pad if bool(pad.any()) else None)
        return self.norm(x), out_lengths

    def logits(self, hidden: torch.Tensor, columns: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T', d) -> (B, T', V + 1) CTC logits, blank the last column; with `columns` (C,) token
        ids, only those tokens' logits (B, T', C + 1), blank still last."""
        x = self.to_lm(hidden)
        table, bias = self.embeddings, self.token_bias
        if columns is not None:
            table, bias = table[columns], bias[columns]
        tokens = self.log_scale.exp() * (x @ table.to(x.dtype).T) + bias.to(x.dtype)
        if columns is None:
            tokens = tokens.masked_fill(~self.allowed, float("-inf"))
        return torch.cat([tokens, self.blank_logit(hidden)], dim=-1)

    def allow(self, token_ids: Sequence[int]) -> None:
        """Restrict emissions to `token_ids` (the tokenizer's ids of normalised text)."""
        self.allowed.zero_()
        self.allowed[torch.as_tensor(sorted(set(token_ids)), dtype=torch.long)] = True

    def forward(self, states: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits (B, T', V + 1), lengths (B,))."""
        hidden, out_lengths = self.hidden(states, lengths)
        return self.logits(hidden), out_lengths

    # ---- training ----------------------------------------------------------------------------

    def ctc_loss(
        self,
        hidden: torch.Tensor,
        lengths: torch.Tensor,
        targets: Sequence[Sequence[int]],
        negatives: Sequence[int] | None = None,
    ) -> torch.Tensor:
        """Mean CTC loss (nats per target token) of a batch of head states; targets are LLM token ids.

        With `negatives` (token ids), the softmax runs over the blank, the batch's target tokens and those
        negatives only (a sampled softmax, Jean et al. 2015): the (frames x vocabulary) product is most of
        a step's cost, and a few thousand well-chosen columns (the frequent tokens, where confusions are)
        stand in for 49k. Without, over the whole vocabulary. Inference always uses the whole vocabulary.
        """
        wanted = {int(t) for row in targets for t in row}
        columns = sorted(wanted | {int(t) for t in negatives}) if negatives is not None else None
        cols = torch.tensor(columns, dtype=torch.long, device=hidden.device) if columns is not None else None
        logp = torch.log_softmax(self.logits(hidden, cols).float(), dim=-1)
        blank = logp.shape[-1] - 1
        if columns is None:
            flat = torch.tensor([int(t) for row in targets for t in row], dtype=torch.long)
        else:
            index = {tok: i for i, tok in enumerate(columns)}
            flat = torch.tensor([index[int(t)] for row in targets for t in row], dtype=torch.long)
        loss = _ctc_nll(logp, flat, lengths, targets, blank, reduction="sum", zero_infinity=True)
        return loss / max(1, sum(len(row) for row in targets))

    # ---- reading the output ------------------------------------------------------------------

    def sequence_logp(
        self, logits: torch.Tensor, lengths: torch.Tensor, targets: Sequence[Sequence[int]]
    ) -> torch.Tensor:
        """log p(tokens | audio) in nats of each row's token sequence: the CTC forward algorithm's sum
        over every alignment (Graves et al. 2006), as joint CTC/attention decoding scores a hypothesis
        (Watanabe et al. 2017). `logits` (B, T', V + 1) with `lengths` (B,); `targets` B lists of LLM
        token ids (`ctc_targets`). Returns (B,): -inf where no alignment fits (more tokens than frames
        allow, or a token the head may not emit)."""
        logp = torch.log_softmax(logits.detach().float(), dim=-1)
        flat = torch.tensor([int(t) for row in targets for t in row], dtype=torch.long)
        nll = _ctc_nll(logp, flat, lengths, targets, self.blank, reduction="none", zero_infinity=False)
        return torch.where(torch.isfinite(nll), -nll, torch.full_like(nll, float("-inf")))

    def score_sequences(
        self, hidden: torch.Tensor, lengths: torch.Tensor, targets: Sequence[Sequence[int]]
    ) -> list[float]:
        """Log-likelihood (nats) of each token sequence given one segment's head states (`hidden` (1, T',
        d) from `hidden()`, `lengths` (1,)): `sequence_logp` over the whole vocabulary, for the emission
        mask of `allow` is for decoding (a word the head never learned to emit still gets its
        likelihood). A sequence no alignment fits (more tokens than frames allow) gets a floor below
        every sequence that fits: the least likely path's log-probability, minus log(V + 1) per token."""
        if not targets:
            return []
        columns = torch.arange(self.vocab_size, device=hidden.device)
        logits = self.logits(hidden, columns)  # unmasked, blank still last
        rows = len(targets)
        scores = self.sequence_logp(logits.expand(rows, -1, -1), lengths.expand(rows), targets)
        logp = torch.log_softmax(logits[0, : int(lengths[0])].float(), dim=-1)
        worst = float(logp.min(-1).values.sum())
        per_token = math.log(logits.shape[-1])
        return [
            float(x) if math.isfinite(float(x)) else worst - per_token * len(t)
            for x, t in zip(scores, targets)
        ]

    def greedy(self, logits: torch.Tensor, lengths: torch.Tensor) -> list[list[tuple[int, int, float]]]:
        """Best path of each row: emitted (token id, head frame, log-probability), repeats merged."""
        logp = torch.log_softmax(logits.detach().float(), dim=-1)
        best, ids = logp.max(-1)
        out = []
        for row in range(logits.shape[0]):
            emitted: list[tuple[int, int, float]] = []
            prev = self.blank
            for frame in range(int(lengths[row])):
                tok = int(ids[row, frame])
                if tok != self.blank and tok != prev:
                    emitted.append((tok, frame, float(best[row, frame])))
                prev = tok
            out.append(emitted)
        return out

    def beam_search(
        self,
        logits: torch.Tensor,
        lengths: torch.Tensor,
        beam: int = 8,
        top_k: int = 8,
        blank_skip: float = 0.999,
    ) -> list[list[tuple[list[int], float]]]:
        """CTC prefix beam search (Hannun et al. 2014, arXiv 1408.2873): the `beam` most likely token
        sequences of each row, each with log p(sequence | audio) in nats summed over the alignments the
        search kept (the forward algorithm's sum, approximately), best first.

        `logits` (B, T', V + 1) with `lengths` (B,). Per frame only the `top_k` most likely tokens (and
        each prefix's last token, for merged repeats) extend a prefix; a frame whose blank probability
        exceeds `blank_skip` only extends by blank (1.0: never skipped). With a beam and `top_k` covering
        every path and `blank_skip` 1.0 the scores are the exact `sequence_logp`."""
        logp = torch.log_softmax(logits.detach().float(), dim=-1)
        k = min(top_k, logp.shape[-1] - 1)
        top_lp, top_ids = logp[..., : self.blank].topk(k, dim=-1)
        lae = np.logaddexp
        out = []
        for row in range(logp.shape[0]):
            row_lp = logp[row].numpy()  # a view: the repeat lookups below index it without torch
            blank_lp = row_lp[:, self.blank].tolist()
            cand_ids, cand_lp = top_ids[row].tolist(), top_lp[row].tolist()
            # prefix -> (log p ending in blank, log p ending in its last token)
            beams: dict[tuple[int, ...], tuple[float, float]] = {(): (0.0, -math.inf)}
            for t in range(int(lengths[row])):
                b_lp = blank_lp[t]
                nxt: dict[tuple[int, ...], list[float]] = {}
                add = functools.partial(_add_prefix, nxt)
                quiet = blank_skip < 1.0 and b_lp > math.log(blank_skip)
                frame_tokens = dict(zip(cand_ids[t], cand_lp[t], strict=True))
                for prefix, (pb, pnb) in beams.items():
                    total = lae(pb, pnb)
                    add(prefix, total + b_lp, -math.inf)
                    if quiet:
                        continue
                    tokens = frame_tokens
                    if prefix and prefix[-1] not in tokens:  # its repeat, for this prefix only
                        tokens = {**frame_tokens, prefix[-1]: float(row_lp[t, prefix[-1]])}
                    for tok, lp in tokens.items():
                        if prefix and tok == prefix[-1]:
                            add(prefix, -math.inf, pnb + lp)  # a repeat merges ...
                            add(prefix + (tok,), -math.inf, pb + lp)  # ... unless a blank parted them
                        else:
                            add(prefix + (tok,), -math.inf, total + lp)
                ranked = sorted(nxt.items(), key=lambda kv: -lae(kv[1][0], kv[1][1]))[:beam]
                beams = {prefix: (pb, pnb) for prefix, (pb, pnb) in ranked}
            out.append([(list(p), float(lae(pb, pnb))) for p, (pb, pnb) in beams.items()])  # ranked
        return out

    def posterior_embeddings(self, logits: torch.Tensor) -> torch.Tensor:
        """(B, T', V + 1) -> (B, T', H): sum over the top-k tokens of p(token | frame) * E[token].

        Blank contributes nothing, so a blank frame is ~0 and a confident token frame is ~its embedding:
        the LLM reads the speech in its own embedding space (LegoSLM)."""
        probs = torch.softmax(logits.float(), dim=-1)[..., : self.vocab_size]
        top, idx = probs.topk(min(self.config.top_k, self.vocab_size), dim=-1)
        rows = self.embeddings[idx]  # (B, T', k, H)
        return (top.unsqueeze(-1) * rows).sum(-2)

    def compress(
        self, logits: torch.Tensor, lengths: torch.Tensor, embeds: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """CTC compression: frames whose best label is blank are dropped, a run of one label becomes
        one vector (the mean of the run's `embeds`, default `posterior_embeddings`).

        Returns (vectors (B, N, H) valid up to `out_lengths`, out_lengths (B,), run start frames (B, N)).
        An example with no emitted token keeps its least-blank frame, so the LLM always hears something.
        """
        embeds = self.posterior_embeddings(logits) if embeds is None else embeds
        b, t, h = embeds.shape
        valid = length_mask(lengths, t)
        pred = logits.detach().argmax(-1)
        keep = valid & (pred != self.blank)
        cont = torch.zeros_like(keep)
        cont[:, 1:] = keep[:, 1:] & keep[:, :-1] & (pred[:, 1:] == pred[:, :-1])
        start = keep & ~cont
        empty = (start.sum(1) == 0) & (lengths > 0)
        if bool(empty.any()):
            blank_logp = torch.log_softmax(logits.detach().float(), -1)[..., self.blank]
            blank_logp = blank_logp.masked_fill(~valid, float("inf"))
            for row in empty.nonzero().flatten().tolist():
                j = int(blank_logp[row].argmin())
                keep[row, j] = start[row, j] = True
        run = torch.cumsum(start.long(), 1) - 1
        out_lengths = start.sum(1)
        n = max(int(out_lengths.max()) if b else 0, 1)
        rows = torch.arange(b, device=embeds.device).unsqueeze(1).expand(b, t)
        flat = (rows * n + run.clamp(min=0))[keep]
        sums = embeds.new_zeros(b * n, h).index_add(0, flat, embeds[keep])
        counts = embeds.new_zeros(b * n).index_add(0, flat, embeds.new_ones(flat.shape[0]))
        vectors = (sums / counts.clamp(min=1).unsqueeze(1)).reshape(b, n, h)
        starts = torch.zeros((b, n), dtype=torch.long, device=embeds.device)
        frames = torch.arange(t, device=embeds.device).unsqueeze(0).expand(b, t)
        starts.view(-1)[(rows * n + run.clamp(min=0))[start]] = frames[start]
        return vectors, out_lengths, starts

    # ---- files -------------------------------------------------------------------------------

    def save(self, folder: str | Path) -> Path:
        from safetensors.torch import save_file

        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        save_file(
            {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}, str(out / WEIGHTS)
        )
        (out / CONFIG).write_text(json.dumps(asdict(self.config), indent=1), encoding="utf-8")
        return out

    @staticmethod
    def is_saved(folder: str | Path) -> bool:
        return (Path(folder) / CONFIG).is_file() and (Path(folder) / WEIGHTS).is_file()

    @classmethod
    def load(cls, folder: str | Path, embeddings: torch.Tensor) -> TokenCtcHead:
        """A saved head; `embeddings` are the input embeddings of the LLM named in its config."""
        from safetensors.torch import load_file

        folder = Path(folder)
        if not cls.is_saved(folder):
            raise ModelError(f"{folder}: no CTC head here (expected {CONFIG} and {WEIGHTS})")
        config = CtcHeadConfig(**json.loads((folder / CONFIG).read_text(encoding="utf-8")))
        head = cls(config, embeddings)
        state = load_file(str(folder / WEIGHTS))
        state.setdefault("allowed", head.allowed)  # heads saved before the mask existed emit any token
        head.load_state_dict(state)
        return head.eval()


def _add_prefix(
    beams: dict[tuple[int, ...], list[float]], prefix: tuple[int, ...], pb: float, pnb: float
) -> None:
    """Add (log p ending in blank, log p ending in a token) to a prefix of a beam search step."""
    cur = beams.get(prefix)
    if cur is None:
        beams[prefix] = [pb, pnb]
    else:
        cur[0], cur[1] = np.logaddexp(cur[0], pb), np.logaddexp(cur[1], pnb)


def _ctc_nll(
    logp: torch.Tensor,
    flat: torch.Tensor,
    lengths: torch.Tensor,
    targets: Sequence[Sequence[int]],
    blank: int,
    *,
    reduction: str,
    zero_infinity: bool,
) -> torch.Tensor:
    """torch's CTC loss (nats) of log-probabilities `logp` (B, T', C) valid up to `lengths` (B,), for
    the rows of `targets` given as `flat` (their concatenated column indices)."""
    device = logp.device
    return F.ctc_loss(
        logp.transpose(0, 1),
        flat.to(device),
        lengths.to(device),
        torch.tensor([len(row) for row in targets], dtype=torch.long, device=device),
        blank=blank,
        reduction=reduction,
        zero_infinity=zero_infinity,
    )


def load_head(name_or_path: str, embeddings: torch.Tensor) -> TokenCtcHead:
    """A trained head by folder (its own, a training run's `export/`) or by the name of one shipped with
    llmasr (`assets/adapters/<name>/`); `embeddings` are the input embeddings of the LLM it is tied to.
    Raises ModelError naming the argument when there is no head there."""
    from llmasr.models.registry import adapter_dir

    path = Path(name_or_path).expanduser()
    for folder in (path, path / "export", adapter_dir(name_or_path)):
        if TokenCtcHead.is_saved(folder):
            head = TokenCtcHead.load(folder, embeddings.detach())
            head.requires_grad_(False)
            return head
    raise ModelError(f"'{name_or_path}': not a trained CTC head (a folder with {CONFIG}, or a shipped name)")


def lm_vocabulary(name: str) -> tuple[torch.Tensor, Any]:
    """(input-embedding matrix (V, H) float32, tokenizer) of a named/folder/HF causal LM."""
    from llmasr.components.lm.causal import load_causal_lm
    from llmasr.models.registry import resolve

    kind, folder = resolve(name, "lm")
    if kind != "causal-lm":
        raise ModelError(f"'{name}' is a {kind} model; a CTC head needs a causal LM's vocabulary")
    lm, tokenizer = load_causal_lm(folder, name=name, dtype="float32")
    return lm.get_input_embeddings().weight.detach().clone(), tokenizer
