"""Score hypotheses with any causal LM from transformers.

The shared context (domain prompt, term list, previous segments) is run once and its KV cache
is reused for every hypothesis of the segment; the hypotheses then go through the model as one
padded batch, and the output projection is applied only at the positions that are scored,
which is most of the cost for LMs with large vocabularies (gemma-3: 262k tokens).
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Sequence

import torch

from llmasr.core.errors import ModelError


def pick_dtype(dtype: str, device: str) -> torch.dtype:
    """'auto': bfloat16 where the hardware multiplies it natively (GPUs, CPUs with AMX or AVX512-BF16,
    where it halves LM time), else float32. Scores move by ~0.2%, which does not change choices."""
    if dtype != "auto":
        try:
            return getattr(torch, dtype)
        except AttributeError:
            raise ModelError(f"unknown dtype '{dtype}': use auto, float32, bfloat16 or float16") from None
    if device.startswith("cuda"):
        return torch.bfloat16
    try:
        native = torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported()
    except AttributeError:  # older torch: no way to ask
        native = False
    return torch.bfloat16 if native else torch.float32


def load_causal_lm(
    location: str, *, name: str | None = None, device: str = "cpu", dtype: str = "auto"
) -> tuple[torch.nn.Module, object]:
    """(model, tokenizer) of a causal LM folder or Hugging Face id: the one loading path shared by the
    scorer, SpeechLLM and the rescorer trainer. Errors name the model."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    try:
        tokenizer = AutoTokenizer.from_pretrained(location)
        model = AutoModelForCausalLM.from_pretrained(location, dtype=pick_dtype(dtype, device))
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot load causal LM '{name or location}': {exc}") from exc
    return model.to(device), tokenizer


def start_token(tokenizer: object, name: str) -> int:
    """The token every scored text starts after: BOS, else EOS (GPT-style LMs have no BOS)."""
    start = getattr(tokenizer, "bos_token_id", None)
    if start is None:
        start = getattr(tokenizer, "eos_token_id", None)
    if start is None:
        raise ModelError(f"{name}: the tokenizer has neither a BOS nor an EOS token to start from")
    return int(start)


def hypothesis_ids(tokenizer: object, text: str, after_context: bool) -> list[int]:
    """Tokens of a hypothesis: it continues the context after a space, or starts the document."""
    text = text.strip()
    return tokenizer.encode((" " + text) if after_context else text, add_special_tokens=False)  # type: ignore[attr-defined]


def context_ids(tokenizer: object, start: int, context: str, max_tokens: int) -> list[int]:
    """The start token, then the most recent `max_tokens - 1` context tokens (history closest to the
    hypothesis matters most). Scoring and rescorer training both use this rule."""
    context = context.rstrip()
    ids = tokenizer.encode(context, add_special_tokens=False) if context else []  # type: ignore[attr-defined]
    return [start, *(ids[-(max_tokens - 1) :] if max_tokens > 1 else [])]


def head_logprobs(model: torch.nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """Log-probabilities from final hidden states (rows given only: the head is most of the cost),
    with the model's final-logit soft-cap (gemma) applied as its own forward would."""
    logits = model.get_output_embeddings()(hidden).float()
    softcap = getattr(model.config, "final_logit_softcapping", None)
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    return torch.log_softmax(logits, dim=-1)


def set_threads(threads: int) -> None:
    """Torch intra-op threads; with a busy second core, 1 thread can beat 2 by far."""
    if threads and threads > 0:
        torch.set_num_threads(threads)


class CausalLMScorer:
    """Total log-probability of each hypothesis's tokens under a causal LM, given a context."""

    def __init__(
        self,
        model: str,
        *,
        name: str | None = None,
        device: str = "cpu",
        dtype: str = "auto",
        threads: int = 0,
        max_context_tokens: int = 1024,
    ) -> None:
        set_threads(threads)
        self.model, self.tokenizer = load_causal_lm(model, name=name, device=device, dtype=dtype)
        self.model.eval()
        self.device = device
        self.name = name or str(model)
        self.max_context_tokens = max_context_tokens
        self._start = start_token(self.tokenizer, self.name)
        pad = self.tokenizer.pad_token_id
        self._pad = int(pad if pad is not None else self._start)
        # one-entry context cache: not thread-safe (the server lets one thread at a time score)
        self._cached: tuple[tuple[int, ...], object, torch.Tensor] | None = None
        # transformers 5 renamed `past_key_values` to `cache`; accept both generations
        params = inspect.signature(self.model.base_model.forward).parameters
        self._cache_arg = "cache" if "cache" in params else "past_key_values"

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer.encode(text, add_special_tokens=False))

    def _run_context(self, ids: list[int]) -> tuple[object, torch.Tensor]:
        key = tuple(ids)
        if self._cached is None or self._cached[0] != key:
            inp = torch.tensor([ids], device=self.device)
            out = self.model.base_model(input_ids=inp, use_cache=True)
            # the same head + soft-cap path as the hypotheses (the full model would cap once more)
            last = self._logp(out.last_hidden_state[0, -1])
            cache = getattr(out, "cache", None) or out.past_key_values
            self._cached = (key, cache, last)
        return self._cached[1], self._cached[2]

    def score(self, texts: Sequence[str], context: str = "") -> list[float]:
        if not texts:
            return []
        with torch.inference_mode():
            return self._score(texts, context)

    def score_batch(self, items: Sequence[tuple[Sequence[str], str]]) -> list[list[float]]:
        """`score` of many (texts, context) lists in one forward: every context + hypothesis sequence
        right-padded into one batch (what batched corpus decoding uses; on a GPU one large batch beats
        many small ones). Equal to calling `score` per item up to float rounding."""
        rows: list[tuple[int, int, list[int], list[int]]] = []  # (item, text, context ids, hypothesis ids)
        out = [[0.0] * len(texts) for texts, _ in items]
        for i, (texts, context) in enumerate(items):
            ctx = context_ids(self.tokenizer, self._start, context, self.max_context_tokens)
            for j, text in enumerate(texts):
                hyp = hypothesis_ids(self.tokenizer, text, bool(context.strip()))
                if hyp:
                    rows.append((i, j, ctx, hyp))
        if not rows:
            return out
        width = max(len(c) + len(h) for _, _, c, h in rows)
        inputs = torch.full((len(rows), width), self._pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for r, (_, _, ctx, hyp) in enumerate(rows):
            seq = ctx + hyp
            inputs[r, : len(seq)] = torch.tensor(seq)
            mask[r, : len(seq)] = 1
        with torch.inference_mode():
            hidden = self.model.base_model(
                input_ids=inputs.to(self.device), attention_mask=mask.to(self.device), use_cache=False
            ).last_hidden_state
            for r, (i, j, ctx, hyp) in enumerate(rows):
                positions = torch.arange(len(ctx) - 1, len(ctx) + len(hyp) - 1, device=hidden.device)
                logp = self._logp(hidden[r, positions])
                targets = torch.tensor(hyp, device=hidden.device).unsqueeze(1)
                out[i][j] = float(logp.gather(1, targets).sum())
        return out

    def _logp(self, hidden: torch.Tensor) -> torch.Tensor:
        return head_logprobs(self.model, hidden)

    def _continue(self, inputs: torch.Tensor, mask: torch.Tensor, start: int, cache: object) -> torch.Tensor:
        """Run `inputs` (batch, length) after `start` cached tokens; returns the final hidden states."""
        positions = torch.arange(start, start + inputs.shape[1]).unsqueeze(0).expand(inputs.shape[0], -1)
        return self.model.base_model(
            input_ids=inputs.to(self.device),
            attention_mask=mask.to(self.device),
            position_ids=positions.to(self.device),
            use_cache=True,
            **{self._cache_arg: cache},
        ).last_hidden_state

    def _score(self, texts: Sequence[str], context: str) -> list[float]:
        ctx = context_ids(self.tokenizer, self._start, context, self.max_context_tokens)
        # a hypothesis continues the context after a space, or starts the document
        encoded = [hypothesis_ids(self.tokenizer, t, bool(context.strip())) for t in texts]
        scores = [0.0] * len(encoded)
        rows = [i for i, ids in enumerate(encoded) if ids]
        if not rows:
            return scores
        cache, next_logp = self._run_context(ctx)
        cache = copy.deepcopy(cache)  # the cached context stays untouched for the next call
        start = len(ctx)
        # tokens every hypothesis shares are run once (batch 1), as if they were context;
        # each hypothesis keeps at least its last token to itself
        shared = _common_prefix([encoded[i] for i in rows])
        shared = shared[: min(len(encoded[i]) for i in rows) - 1]
        base = 0.0
        if shared:
            ids = torch.tensor([shared])
            hidden = self._continue(ids, torch.ones((1, start + len(shared)), dtype=torch.long), start, cache)
            logp = self._logp(hidden[0])
            base = float(next_logp[shared[0]]) + float(
                logp[:-1].gather(1, ids[0, 1:].unsqueeze(1).to(self.device)).sum()
            )
            next_logp = logp[-1]
            start += len(shared)
        suffixes = [encoded[i][len(shared) :] for i in rows]
        for i, suffix in zip(rows, suffixes):
            scores[i] = base + float(next_logp[suffix[0]])
        longest = max(len(x) for x in suffixes)
        if longest < 2:
            return scores
        batch = len(suffixes)
        inputs = torch.full((batch, longest), self._pad, dtype=torch.long)
        keep = torch.zeros((batch, longest), dtype=torch.bool)
        mask = torch.ones((batch, start + longest), dtype=torch.long)
        for r, suffix in enumerate(suffixes):
            inputs[r, : len(suffix)] = torch.tensor(suffix)
            keep[r, : len(suffix) - 1] = True  # position j predicts token j + 1
            mask[r, start + len(suffix) :] = 0
        cache.batch_repeat_interleave(batch)
        hidden = self._continue(inputs, mask, start, cache)
        logp = self._logp(hidden[keep.to(self.device)])
        targets = torch.cat([torch.tensor(x[1:], dtype=torch.long) for x in suffixes if len(x) > 1])
        token_logp = logp.gather(1, targets.unsqueeze(1).to(self.device)).squeeze(1).cpu()
        offset = 0
        for i, suffix in zip(rows, suffixes):
            n = len(suffix) - 1
            scores[i] += float(token_logp[offset : offset + n].sum())
            offset += n
        return scores


def _common_prefix(seqs: Sequence[Sequence[int]]) -> list[int]:
    first = seqs[0]
    n = min(len(s) for s in seqs)
    for j in range(n):
        if any(s[j] != first[j] for s in seqs[1:]):
            return list(first[:j])
    return list(first[:n])
