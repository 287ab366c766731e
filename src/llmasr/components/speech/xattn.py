"""Gated cross-attention from a frozen causal LM to the speech (Flamingo-style GATED XATTN-DENSE).

Blocks sit after every k-th decoder layer. Each block lets the layer's hidden states (queries: the prompt
and the transcript so far) attend to the adapter's output (keys and values: the downsampled speech),
then adds a feed-forward layer; both residual branches are scaled by tanh of a gate initialised at 0, so
the untrained model is exactly the bare LLM, and training opens the gates as far as the speech helps.

The blocks are attached with forward hooks, so the LLM's own modules, parameter names and LoRA targets
stay as they are, and `generate` with its KV cache works unchanged: each new token attends to the
speech, which does not change during decoding.

`init="lm"` starts each block's attention from the LLM's own: the query, key, value and output
projections and the input norm of the decoder layer that reads the block's output (after the last
layer: that last layer; grouped key/value heads repeated to every query head), and that norm also on the
speech, whose keys are then LLM embeddings read by a layer trained on a stream that carries them.
Measured (docs/deep.md): such blocks move the LLM at once but by content only (neither side has
positions), where random blocks, reading the unnormalised speech, barely move it. Llama-style layers
only (SmolLM2, Llama): layers with query/key norms or projection biases (Gemma 3, Qwen) are refused. The
gates still start at 0: the untrained model is the bare LLM either way.

`alignment="monotonic"` gives the blocks the order they lack: each attention head adds
-slope * |j - k| to the score of speech vector j for the query that predicts transcript token k (ALiBi's
linear distance bias, Press et al. 2022, laid between the two sequences). Over the CTC compressor's
speech (one vector per emitted token) j = k is about where that token was heard (the head's tokens are
normalised text, the LLM's transcript keeps case and punctuation: about 1.5 tokens more per synthetic
utterance, so the match drifts by a token or two toward the end; with `transcript_form: normalized` the
LLM writes the head's own form and it does not), so the bias points each query at its
token's speech before any training. The slopes (one per head, ALiBi-like: 2^(-8h/H) for h = 0..H-1,
from 1 down) are parameters, but at the blocks' learning rate they barely move (log-slopes by at most
0.09 in 300 updates, measured). The query's token index comes from the LLM's own position ids (left
padding in generation included) less the row's prompt length (`set_memory(..., starts=)`).

`copy_block=True` adds one block on the LLM's final norm, the stream its output layer reads: its value and
output projections start as the identity and its query/key projections at zero, so with the alignment
(slope 1: ~0.46 of the weight on the token's own vector, the rest on its neighbours) each query starts by
adding mostly the speech vector of the token it predicts, an LLM input embedding, to that stream; with the
output layer tied to the input embeddings (SmolLM2, Gemma) this raises that token's logit (a copy path).
The gate starts at 0, as all gates do. Its speech ends with the embedding of the LLM's end-of-text token
(`end_token`), so the query after the last token copies the end of the transcript, not its last word again
(without it: "not for forsaken for forsaken ...").
Measured (docs/deep.md): a block started from layer 0's attention before the first layer, on the token
embeddings, did not open its gate in 200 updates (tanh 0.003).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from llmasr.core.errors import ModelError

#: how blocks start: random projections, or the attention of the LLM layer after them
XATTN_INITS = ("random", "lm")
#: what orders the speech for the blocks: nothing, or a distance bias between token and speech index
XATTN_ALIGNMENTS = ("none", "monotonic")


def alibi_slopes(heads: int) -> torch.Tensor:
    """ALiBi-like per-head slopes (Press et al. 2022 use h = 1..heads): 2^(-8h/heads) for h = 0..heads-1,
    from 1 down. (heads,)"""
    return torch.pow(2.0, -8.0 * torch.arange(heads, dtype=torch.float32) / heads)


def monotonic_bias(slopes: torch.Tensor, query_index: torch.Tensor, frames: int) -> torch.Tensor:
    """Additive attention scores -slope_h * |j - k_i| (B, H, L, T) for queries that predict transcript
    tokens `query_index` (B, L) over `frames` speech vectors; `slopes` (H,) per head, >= 0."""
    j = torch.arange(frames, device=query_index.device, dtype=torch.float32)
    dist = (j.view(1, 1, -1) - query_index.float().unsqueeze(-1)).abs()  # (B, L, T), exact in float32
    return (-slopes.float().view(1, -1, 1, 1) * dist.unsqueeze(1)).to(slopes.dtype)


class GatedXAttnBlock(nn.Module):
    """x + tanh(g_attn) * XAttn(LN(x), speech); then x + tanh(g_ffn) * FFN(LN(x))."""

    def __init__(self, dim: int, heads: int = 8, ffn_mult: int = 2, alignment: str = "none") -> None:
        super().__init__()
        if alignment not in XATTN_ALIGNMENTS:
            choices = ", ".join(XATTN_ALIGNMENTS)
            raise ValueError(f"xattn alignment must be one of {choices}, got '{alignment}'")
        if dim % heads:
            raise ValueError(f"hidden size {dim} is not divisible by {heads} heads")
        self.norm = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.attn_gate = nn.Parameter(torch.zeros(1))
        self.ffn_norm = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn_mult * dim), nn.GELU(), nn.Linear(ffn_mult * dim, dim))
        self.ffn_gate = nn.Parameter(torch.zeros(1))
        #: the speech's own norm (identity unless the block starts from an LLM layer)
        self.memory_norm: nn.Module = nn.Identity()
        #: monotonic alignment: log of each head's distance slope (trained)
        self.align_log_slope = nn.Parameter(alibi_slopes(heads).log()) if alignment == "monotonic" else None

    def init_from_layer(self, layer: nn.Module) -> None:
        """Start from a Llama-style transformers decoder layer's attention (`self_attn.{q,k,v,o}_proj`, no
        biases, softmax scale 1/sqrt(head width)) and its `input_layernorm` (used on the queries and on the
        speech). Raises ValueError when the layer's heads or widths differ from this block's, or when its
        attention has query/key norms or biases that this block cannot copy."""
        attn = layer.self_attn
        projections = [
            getattr(m, "base_layer", m) for m in (attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj)
        ]
        if hasattr(attn, "q_norm") or hasattr(attn, "k_norm") or any(m.bias is not None for m in projections):
            raise ValueError(
                f"{type(attn).__name__}: query/key norms or biases cannot start a block (Llama-style only)"
            )
        weight = [m.weight for m in projections]
        dim, heads = self.attn.embed_dim, self.attn.num_heads
        head_dim = dim // heads
        own = getattr(attn, "head_dim", head_dim)
        if own != head_dim:
            raise ValueError(f"{heads} heads of {head_dim}: the LLM's attention heads are {own} wide")
        if weight[0].shape != (dim, dim) or weight[3].shape != (dim, dim) or weight[1].shape[0] % head_dim:
            raise ValueError(
                f"layer attention {tuple(weight[0].shape)} does not fit a {heads}-head block of {dim}"
            )
        kv_heads = weight[1].shape[0] // head_dim
        if heads % kv_heads:
            raise ValueError(f"{heads} heads cannot share {kv_heads} key/value heads")

        def widen(w: torch.Tensor) -> torch.Tensor:  # (kv_heads*head_dim, dim) -> (dim, dim)
            return (
                w.reshape(kv_heads, head_dim, dim).repeat_interleave(heads // kv_heads, 0).reshape(dim, dim)
            )

        with torch.no_grad():
            self.attn.in_proj_weight.copy_(torch.cat([weight[0], widen(weight[1]), widen(weight[2])]).float())
            self.attn.in_proj_bias.zero_()
            self.attn.out_proj.weight.copy_(weight[3].float())
            self.attn.out_proj.bias.zero_()
        norm = copy.deepcopy(layer.input_layernorm).float()
        for q in norm.parameters():
            q.requires_grad_(True)
        self.norm, self.memory_norm = norm, copy.deepcopy(norm)

    def init_copy(self) -> None:
        """Start as a copy path (module doc, `copy_block`): value and output projections the identity,
        query/key projections and the attention's biases zero (the alignment alone then places the
        attention; the FFN keeps its start, behind its gate at 0), every
        head's slope 1 (each head carries its own slice of the embedding: all of them must look at the
        token's speech, not ALiBi's spread of ranges), the norms as they are."""
        dim = self.attn.embed_dim
        with torch.no_grad():
            if self.align_log_slope is not None:
                self.align_log_slope.zero_()
            self.attn.in_proj_weight.zero_()
            self.attn.in_proj_weight[2 * dim :].copy_(torch.eye(dim))
            self.attn.in_proj_bias.zero_()
            self.attn.out_proj.weight.copy_(torch.eye(dim))
            self.attn.out_proj.bias.zero_()

    def forward(
        self,
        x: torch.Tensor,
        memory: torch.Tensor,
        memory_mask: torch.Tensor,
        query_index: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """`x` (B, L, D) in the LLM's dtype; `memory` (B, T, D); `memory_mask` (B, T) True where valid;
        `query_index` (B, L): the transcript token each query predicts (needed with monotonic alignment)."""
        dtype = self.attn_gate.dtype
        h = x.to(dtype)
        mem = self.memory_norm(memory.to(dtype))
        padding = ~memory_mask  # (B, T), True where there is no speech
        bias = None  # with alignment: (B*H, L, T) additive scores, the padding folded in as -inf
        if self.align_log_slope is not None:
            if query_index is None:
                raise ValueError("a monotonic-alignment block needs each query's transcript token index")
            scores = monotonic_bias(self.align_log_slope.exp(), query_index, mem.shape[1])
            scores = scores.masked_fill(padding[:, None, None, :], float("-inf"))
            bias = scores.reshape(-1, *scores.shape[2:]).to(dtype)
        attended, _ = self.attn(
            self.norm(h),
            mem,
            mem,
            key_padding_mask=padding if bias is None else None,  # one mask type: MultiheadAttention's rule
            attn_mask=bias,
            need_weights=False,
        )
        h = h + torch.tanh(self.attn_gate) * attended
        h = h + torch.tanh(self.ffn_gate) * self.ffn(self.ffn_norm(h))
        return h.to(x.dtype)


def decoder_layers(causal_lm: nn.Module) -> Sequence[nn.Module]:
    """The decoder layers of a transformers causal LM (Llama, Gemma, Qwen, SmolLM: `.model.layers`)."""
    layers = getattr(getattr(causal_lm, "model", None), "layers", None)
    if layers is None:
        raise ModelError(f"{type(causal_lm).__name__}: no `.model.layers`, cannot insert cross-attention")
    return layers


class XAttnFusion(nn.Module):
    """The blocks of one LLM, the hooks that run them, and the speech they attend to."""

    def __init__(
        self,
        causal_lm: nn.Module,
        every: int = 4,
        heads: int = 8,
        ffn_mult: int = 2,
        init: str = "random",
        alignment: str = "none",
        copy_block: bool = False,
        end_token: int | None = None,
    ) -> None:
        """Blocks after every `every`-th layer of `causal_lm`, and with `copy_block` one on its final norm;
        `init` "random" or "lm", `alignment` "none" or "monotonic" (module doc). Raises ValueError for a
        bad `every`/`init`/`alignment`, with "lm" heads that do not fit the LLM's, and with `copy_block`
        no `end_token` (the tokenizer's end-of-text id) or an LLM whose output layer is not tied to its
        input embeddings or that has no `.model.norm`."""
        super().__init__()
        if every < 1:
            raise ValueError("xattn every must be at least 1")
        if init not in XATTN_INITS:
            raise ValueError(f"xattn init must be one of {', '.join(XATTN_INITS)}, got '{init}'")
        layers = decoder_layers(causal_lm)
        dim = int(causal_lm.get_input_embeddings().embedding_dim)
        #: after layers every-1, 2*every-1, ...: the last layer always gets one when every divides the depth
        self.positions = [i for i in range(len(layers)) if (i + 1) % every == 0] or [len(layers) - 1]
        self.blocks = nn.ModuleList(GatedXAttnBlock(dim, heads, ffn_mult, alignment) for _ in self.positions)
        #: the block on the final norm (module doc), if any; apart from `blocks`, so that the after-layer
        #: blocks keep their names (`blocks.0` ...) with or without it
        self.copy_block: GatedXAttnBlock | None = None
        if init == "lm":
            for i, block in zip(self.positions, self.blocks):
                block.init_from_layer(layers[min(i + 1, len(layers) - 1)])  # the layer that reads its output
        self._memory: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
        #: the copy block's speech: the memory with the end token's embedding after each row's last vector
        self._copy_memory: tuple[torch.Tensor, torch.Tensor] | None = None
        #: the LLM's input embeddings (a list: not registered, so not saved twice) and the end token's id
        self._embeddings = [causal_lm.get_input_embeddings()]
        self._end_token = end_token
        #: the position ids the last decoder layer was called with (the final norm is not given them)
        self._positions: torch.Tensor | None = None
        self._handles = [
            layers[i].register_forward_hook(self._hook(block), with_kwargs=True)
            for i, block in zip(self.positions, self.blocks)
        ]
        if copy_block:
            final_norm = getattr(getattr(causal_lm, "model", None), "norm", None)
            if final_norm is None:
                raise ValueError(f"{type(causal_lm).__name__}: no `.model.norm` to put a copy block on")
            if not getattr(causal_lm.config, "tie_word_embeddings", False):
                raise ValueError(
                    f"{type(causal_lm).__name__}: a copy block needs an output layer tied to the input"
                    " embeddings"
                )
            if end_token is None:
                raise ValueError("a copy block needs the LLM's end-of-text token id (end_token)")
            self.copy_block = GatedXAttnBlock(dim, heads, ffn_mult, alignment)
            self.copy_block.init_copy()
            self._handles += [
                layers[-1].register_forward_pre_hook(self._keep_positions, with_kwargs=True),
                final_norm.register_forward_hook(
                    self._hook(self.copy_block, kept_positions=True), with_kwargs=True
                ),
            ]

    def set_memory(
        self,
        memory: torch.Tensor | None,
        lengths: torch.Tensor | None = None,
        starts: torch.Tensor | None = None,
    ) -> None:
        """Speech states (B, T, D) valid up to `lengths`; None detaches the blocks (plain LLM). `starts`
        (B,): each row's position id of its first transcript token (its prompt length; default 0), from
        which monotonic alignment reads which token a query predicts."""
        if memory is None:
            self._memory = self._copy_memory = None
            return
        rows, frames = memory.shape[:2]
        if lengths is None:
            lengths = torch.full((rows,), frames, device=memory.device)
        if starts is None:
            starts = torch.zeros(rows, dtype=torch.long, device=memory.device)
        mask = torch.arange(frames, device=memory.device).unsqueeze(0) < lengths.clamp(min=1).unsqueeze(1)
        self._memory = (memory, mask, starts.long())
        if self.copy_block is not None:
            end = self._embeddings[0].weight[self._end_token].to(memory.device, memory.dtype)
            rows_at = torch.arange(rows, device=memory.device)
            ended = torch.cat([memory, memory.new_zeros(rows, 1, memory.shape[2])], 1)
            ended = ended.index_put((rows_at, lengths.long()), end.expand(rows, -1))
            ended_mask = torch.arange(frames + 1, device=memory.device).unsqueeze(0) <= lengths.unsqueeze(1)
            self._copy_memory = (ended, ended_mask)

    def _attend(
        self, block: GatedXAttnBlock, module: nn.Module, hidden: torch.Tensor, positions: torch.Tensor | None
    ) -> torch.Tensor:
        """`block` applied to a module's hidden states (B, L, D), with the speech set last and the LLM's
        position ids (B or 1, L) the module was called with."""
        assert self._memory is not None
        memory, mask, starts = self._memory
        if block is self.copy_block and self._copy_memory is not None:
            memory, mask = self._copy_memory
        if hidden.shape[0] != memory.shape[0]:  # beam search repeats each row
            reps = hidden.shape[0] // memory.shape[0]
            memory, mask = memory.repeat_interleave(reps, 0), mask.repeat_interleave(reps, 0)
            starts = starts.repeat_interleave(reps, 0)
        query_index = None
        if block.align_log_slope is not None:
            if positions is None or positions.dim() != 2:
                raise ModelError(
                    f"{type(module).__name__}: monotonic alignment needs the (batch, length) position ids"
                    " the LLM passes its decoder layers; this LLM passes "
                    + ("none" if positions is None else f"a {positions.dim()}-D tensor")
                )
            # position p predicts token p - start + 1
            positions = positions.to(hidden.device).expand(hidden.shape[0], -1)
            query_index = (positions - starts.to(hidden.device).unsqueeze(1) + 1).clamp(min=0)
        return block(hidden, memory.to(hidden.device), mask.to(hidden.device), query_index)

    def _hook(self, block: GatedXAttnBlock, kept_positions: bool = False) -> Any:
        """A forward hook running `block` on a module's output, with the position ids the module was
        called with (a decoder layer) or, `kept_positions`, those the last decoder layer was (the final
        norm, which is given none)."""

        def hook(module: nn.Module, args: Any, kwargs: dict[str, Any], output: Any) -> Any:
            if self._memory is None:
                return output
            positions = self._positions if kept_positions else kwargs.get("position_ids")
            hidden = self._attend(
                block, module, output[0] if isinstance(output, tuple) else output, positions
            )
            return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

        return hook

    def _keep_positions(self, module: nn.Module, args: Any, kwargs: dict[str, Any]) -> None:
        self._positions = kwargs.get("position_ids")

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
