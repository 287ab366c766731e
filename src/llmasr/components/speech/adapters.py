"""Adapters: map speech-encoder states (B, T, D) to a shorter sequence of LLM input embeddings.

Every adapter follows one contract, so that SpeechLLM and the training loop never care which one
is used: `forward(hidden, lengths) -> AdapterOutput`. Frames at or past an example's length are
zeroed before any frame is mixed with its neighbours, so an example gives the same embeddings
whether it is padded in a batch or run alone.

- StackAdapter: k consecutive frames concatenated, then a projection (Fathullah et al. 2023); over a
  trained token CTC head it stacks the head's posterior-weighted LLM embeddings.
- ConvAdapter: strided 1-D convolution, then an MLP (the downsampler of cross-attention models).
- CtcCompressor: over a trained token CTC head (components.speech.ctc_head): blank frames dropped, one
  posterior-weighted LLM embedding per emitted token (LegoSLM, Ma et al. 2025; CTC compression as in
  Speech-LLaMA, Wu et al. 2023).
- CharCtcCompressor: its own character CTC head on the encoder states; blank frames dropped, runs of one
  label averaged (the speech side of the entity retriever).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
from torch import nn
from torch.nn import functional as F

from llmasr.core.metrics import normalize


@dataclass
class AdapterOutput:
    """What an adapter hands the LLM side.

    `embeds` (B, T', H) is valid up to `lengths` (B,) per row; `ctc_logits` (B, T, V) with
    `ctc_lengths` (B,) is set only by adapters that carry a CTC head (for the auxiliary CTC loss).
    """

    embeds: torch.Tensor
    lengths: torch.Tensor
    ctc_logits: torch.Tensor | None = None
    ctc_lengths: torch.Tensor | None = None
    #: CTC compressors: the head frame where each output vector's run starts (B, T'), for word timing
    frames: torch.Tensor | None = None


@runtime_checkable
class Adapter(Protocol):
    """Encoder states in, LLM-sized embeddings out; `out_dim` is the LLM hidden size."""

    in_dim: int
    out_dim: int

    def __call__(self, hidden: torch.Tensor, lengths: torch.Tensor) -> AdapterOutput: ...


def length_mask(lengths: torch.Tensor, size: int) -> torch.Tensor:
    """(B, size) bool, True where the position is inside the example."""
    return torch.arange(size, device=lengths.device).unsqueeze(0) < lengths.unsqueeze(1)


def _zero_padding(hidden: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Padding frames can hold anything an encoder left there; zero them so they never leak."""
    return hidden * length_mask(lengths, hidden.shape[1]).unsqueeze(-1).to(hidden.dtype)


def _projection(in_dim: int, out_dim: int, hidden_dim: int | None) -> nn.Module:
    """Linear, or Linear-GELU-Linear when a hidden size is given (the usual speech-LLM projector)."""
    if not hidden_dim:
        return nn.Linear(in_dim, out_dim)
    return nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, out_dim))


class StackAdapter(nn.Module):
    """Frame stacking + projection (Fathullah et al.): k frames -> one embedding, k x shorter.

    With a trained token CTC `head`, the frames stacked are the head's posterior-weighted LLM embeddings
    (blank frames ~0), and a linear projection starts as their sum: the LLM first reads ~the embeddings
    of the tokens said in each k-frame window, and training refines that.
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        stack: int = 4,
        hidden_dim: int | None = None,
        head: nn.Module | None = None,
    ) -> None:
        super().__init__()
        if stack < 1:
            raise ValueError(f"stack must be >= 1, got {stack}")
        self.head = head
        if head is not None:
            in_dim = int(head.embeddings.shape[1])
        self.in_dim, self.out_dim, self.stack = in_dim, out_dim, stack
        self.proj = _projection(in_dim * stack, out_dim, hidden_dim)
        if head is not None and not hidden_dim and in_dim == out_dim:
            with torch.no_grad():
                self.proj.weight.copy_(torch.eye(out_dim).repeat(1, stack))
                self.proj.bias.zero_()

    def forward(self, hidden: torch.Tensor, lengths: torch.Tensor) -> AdapterOutput:
        logits = head_lengths = None
        if self.head is not None:
            logits, head_lengths = self.head(hidden, lengths)
            hidden, lengths = self.head.posterior_embeddings(logits), head_lengths
        b, t, d = hidden.shape
        k = self.stack
        out_t = math.ceil(t / k)
        x = F.pad(_zero_padding(hidden, lengths), (0, 0, 0, out_t * k - t))  # zero frames fill the tail
        x = x.reshape(b, out_t, k * d)
        return AdapterOutput(
            self.proj(x),
            torch.div(lengths + k - 1, k, rounding_mode="floor"),
            ctc_logits=logits,
            ctc_lengths=head_lengths,
        )


class CtcCompressor(nn.Module):
    """CTC compression over a trained token CTC head: one LLM-space vector per emitted token.

    The head (llmasr.components.speech.ctc_head.TokenCtcHead) drops blank frames and merges runs; each
    kept run becomes the mean of its frames' posterior-weighted LLM input embeddings (LegoSLM), so the
    LLM receives about one embedding per token it would have read, in its own embedding space. A
    residual MLP (`hidden_dim`; its output layer starts at zero) lets training correct that input; with
    the head frozen it is the only adapter weight.
    """

    def __init__(self, in_dim: int, out_dim: int, head: nn.Module, hidden_dim: int | None = 1024) -> None:
        super().__init__()
        width = int(head.embeddings.shape[1])
        if width != out_dim:
            raise ValueError(f"the head's LLM embeddings are {width}-wide, the LLM takes {out_dim}")
        self.in_dim, self.out_dim = in_dim, out_dim
        self.head = head
        self.refine: nn.Module | None = None
        if hidden_dim:
            out = nn.Linear(hidden_dim, out_dim)
            nn.init.zeros_(out.weight)
            nn.init.zeros_(out.bias)
            self.refine = nn.Sequential(nn.LayerNorm(out_dim), nn.Linear(out_dim, hidden_dim), nn.GELU(), out)

    def forward(self, hidden: torch.Tensor, lengths: torch.Tensor) -> AdapterOutput:
        logits, head_lengths = self.head(hidden, lengths)
        vectors, out_lengths, starts = self.head.compress(logits, head_lengths)
        if self.refine is not None:
            vectors = vectors + self.refine(vectors)
        return AdapterOutput(vectors, out_lengths, ctc_logits=logits, ctc_lengths=head_lengths, frames=starts)


class ConvAdapter(nn.Module):
    """Strided Conv1d downsampling, then GELU and an MLP to the LLM size.

    Output frame j sees input frames [j*stride, j*stride + kernel); the input is zero-padded on the
    right so that there are ceil(T / stride) outputs, which is also the length of every example.
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        stride: int = 4,
        kernel_size: int | None = None,
        hidden_dim: int | None = None,
    ) -> None:
        super().__init__()
        kernel_size = kernel_size or stride
        if stride < 1 or kernel_size < stride:
            raise ValueError(f"need 1 <= stride <= kernel_size, got stride={stride}, kernel={kernel_size}")
        self.in_dim, self.out_dim, self.stride, self.kernel_size = in_dim, out_dim, stride, kernel_size
        hidden_dim = hidden_dim or out_dim
        self.conv = nn.Conv1d(in_dim, hidden_dim, kernel_size, stride=stride)
        self.mlp = nn.Sequential(nn.GELU(), nn.Linear(hidden_dim, hidden_dim), nn.GELU())
        self.out = nn.Linear(hidden_dim, out_dim)

    def forward(self, hidden: torch.Tensor, lengths: torch.Tensor) -> AdapterOutput:
        t = hidden.shape[1]
        s, k = self.stride, self.kernel_size
        out_t = max(math.ceil(t / s), 1)
        x = _zero_padding(hidden, lengths).transpose(1, 2)  # (B, D, T)
        x = F.pad(x, (0, (out_t - 1) * s + k - t))
        y = self.conv(x).transpose(1, 2)  # (B, out_t, hidden)
        return AdapterOutput(self.out(self.mlp(y)), torch.div(lengths + s - 1, s, rounding_mode="floor"))


class CharCtcCompressor(nn.Module):
    """CTC compression (Wu et al., Speech-LLaMA): keep one embedding per predicted CTC label.

    A linear CTC head scores each encoder frame; frames whose argmax is `blank` are dropped and a
    run of consecutive frames with the same label becomes one frame, the average of the run's
    encoder states (a label repeated after a blank starts a new run, as in CTC decoding). The
    averaged states are then projected to the LLM size, so gradients reach the projection and the
    encoder; the head itself learns from the CTC loss on `ctc_logits`.

    Fallback: an example with no non-blank frame (typical early in training, or silence) keeps its
    `fallback_frames` least-blank frames (lowest blank log-probability), in time order, each as its
    own run; the LLM always gets some audio, and an empty example (length 0) stays empty.
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        vocab_size: int,
        blank: int = 0,
        hidden_dim: int | None = None,
        fallback_frames: int = 4,
        head_hidden_dim: int | None = None,
    ) -> None:
        super().__init__()
        if not 0 <= blank < vocab_size:
            raise ValueError(f"blank id {blank} outside the CTC vocabulary of {vocab_size}")
        self.in_dim, self.out_dim, self.vocab_size, self.blank = in_dim, out_dim, vocab_size, blank
        self.fallback_frames = max(int(fallback_frames), 1)
        #: linear (the paper's), or an MLP when `head_hidden_dim` is given (a frozen encoder's states
        #: are not linearly separable into characters: whisper-tiny.en CER 35% linear)
        self.ctc_head = _projection(in_dim, vocab_size, head_hidden_dim)
        self.proj = _projection(in_dim, out_dim, hidden_dim)

    def forward(self, hidden: torch.Tensor, lengths: torch.Tensor) -> AdapterOutput:
        logits = self.ctc_head(hidden)
        pooled, out_lengths = self.compress(hidden, logits, lengths)
        return AdapterOutput(self.proj(pooled), out_lengths, ctc_logits=logits, ctc_lengths=lengths)

    def compress(
        self, hidden: torch.Tensor, logits: torch.Tensor, lengths: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Average encoder states over the CTC runs that `logits` (B, T, V) defines; (pooled, lengths)."""
        b, t, d = hidden.shape
        valid = length_mask(lengths, t)
        pred = logits.detach().argmax(-1)
        keep = valid & (pred != self.blank)
        cont = torch.zeros_like(keep)
        cont[:, 1:] = keep[:, 1:] & keep[:, :-1] & (pred[:, 1:] == pred[:, :-1])
        start = keep & ~cont
        empty = (start.sum(1) == 0) & (lengths > 0)
        if bool(empty.any()):
            blank_logp = torch.log_softmax(logits.detach().float(), dim=-1)[..., self.blank]
            blank_logp = blank_logp.masked_fill(~valid, float("inf"))
            for row in empty.nonzero().flatten().tolist():
                n = min(self.fallback_frames, int(lengths[row]))
                idx = torch.topk(blank_logp[row], n, largest=False).indices
                keep[row, idx] = True
                start[row, idx] = True
        run = torch.cumsum(start.long(), 1) - 1  # run index of each kept frame
        out_lengths = start.sum(1)
        out_t = max(int(out_lengths.max()) if b else 0, 1)
        rows = torch.arange(b, device=hidden.device).unsqueeze(1).expand(b, t)
        flat = (rows * out_t + run.clamp(min=0))[keep]
        sums = hidden.new_zeros(b * out_t, d).index_add(0, flat, hidden[keep])
        counts = hidden.new_zeros(b * out_t).index_add(0, flat, hidden.new_ones(flat.shape[0]))
        pooled = (sums / counts.clamp(min=1).unsqueeze(1)).reshape(b, out_t, d)
        return pooled, out_lengths


#: CTC label set of the CTC compressor: blank, a-z, apostrophe, space (normalised text only has these)
CHAR_VOCAB = ("<blank>", *"abcdefghijklmnopqrstuvwxyz", "'", " ")
BLANK = 0
_CHAR_ID = {c: i for i, c in enumerate(CHAR_VOCAB) if i != BLANK}


def char_ids(text: str) -> list[int]:
    """CTC targets of a transcript: normalised (llmasr.core.metrics.normalize), then one id per character.

    Characters outside the vocabulary (non-English letters) are dropped; digits never survive
    normalisation (they become words).
    """
    return [_CHAR_ID[c] for c in normalize(text) if c in _CHAR_ID]


ADAPTERS: dict[str, Callable[..., nn.Module]] = {
    "stack": StackAdapter,
    "conv": ConvAdapter,
    "ctc": CtcCompressor,
    "char_ctc": CharCtcCompressor,
}
#: adapters that read a trained token CTC head (the model config must name one)
HEAD_ADAPTERS = ("ctc",)


def build_adapter(kind: str, in_dim: int, out_dim: int, **kw: object) -> nn.Module:
    """Adapter by name: 'stack' (stack=4; head= optional), 'conv' (stride=4), 'ctc' (head=, a trained
    TokenCtcHead), 'char_ctc' (vocab_size=..., blank=0). Raises ValueError for an unknown name."""
    try:
        factory = ADAPTERS[kind]
    except KeyError:
        raise ValueError(f"unknown adapter '{kind}': choose one of {', '.join(sorted(ADAPTERS))}") from None
    return factory(in_dim, out_dim, **kw)
