"""Generative error correction (GER, HyPoradise 2023): an instruct LLM reads the N-best list and writes
the transcript, so it can fix errors no single hypothesis avoids, not only choose among them.

An LLM asked to "correct" text may also rewrite text that was right. The guard keeps only outputs that
stay close to some hypothesis (word edit distance over that hypothesis's length at most `max_change`)
and are not simply another hypothesis than the rescored choice; anything else, and empty output, falls
back to the rescored best hypothesis.

The prompt and answer token rules here are shared by training (`llmasr.train.corrector`) and inference,
so a trained adapter sees at inference exactly what it was trained on.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from llmasr.core.metrics import normalize, word_errors

if TYPE_CHECKING:
    import torch

SYSTEM = "You correct the output of a speech recogniser."
INSTRUCTION = (
    "These are the {n} best guesses of a speech recogniser for one utterance, most likely first. "
    "Write the true transcript, with casing and punctuation, and nothing else."
)
#: hypotheses shown to the LLM (longer lists add prompt tokens, rarely information)
MAX_HYPOTHESES = 5
#: the guard's limit: word edits to the closest hypothesis, over that hypothesis's words. Tuned on the
#: synthetic dev N-best lists with the shipped smollm2 corrector (first hypothesis 11.83% WER; with the
#: guard 0.05: 11.83%, 0.1: 12.30%, 0.2 and more: 12.54%): a small LLM's rewrites rarely help.
MAX_CHANGE = 0.05


def correction_prompt(hypotheses: Sequence[str], context: str = "") -> str:
    """The user message: optional context (domain prompt, terms, previous segment), then the list."""
    lines = [INSTRUCTION.format(n=len(hypotheses))]
    if context.strip():
        lines.append(f"Context: {context.strip()}")
    lines += [f"{i}. {h.strip()}" for i, h in enumerate(hypotheses, 1)]
    return "\n".join(lines)


def _has_chat(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def prompt_ids(tokenizer: Any, hypotheses: Sequence[str], context: str = "") -> list[int]:
    """Token ids up to where the answer starts: the chat template where the LLM has one, else plain
    text ending in "Transcript:" (base LMs)."""
    content = correction_prompt(hypotheses, context)
    if _has_chat(tokenizer):
        messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": content}]
        ids = tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=True)
        if isinstance(ids, dict) or hasattr(ids, "input_ids"):  # BatchEncoding in newer transformers
            ids = ids["input_ids"]
        return [int(t) for t in ids]
    start = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    return start + tokenizer.encode(f"{SYSTEM}\n{content}\nTranscript:", add_special_tokens=False)


def end_token(tokenizer: Any) -> int:
    """The token that closes an answer (chat models: the end-of-turn token, which is their EOS)."""
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no EOS token to end an answer with")
    return int(tokenizer.eos_token_id)


def answer_ids(tokenizer: Any, text: str) -> list[int]:
    """Token ids of a target transcript, closed by the end token."""
    lead = "" if _has_chat(tokenizer) else " "
    return tokenizer.encode(lead + text.strip(), add_special_tokens=False) + [end_token(tokenizer)]


def change(output: str, hypotheses: Sequence[str]) -> float:
    """Word edits from `output` to the closest hypothesis, over that hypothesis's words."""
    best = float("inf")
    for h in hypotheses:
        errors, words = word_errors(h, output)
        best = min(best, errors / max(1, words))
    return best


@dataclass
class Correction:
    text: str
    #: what the LLM wrote (before the guard)
    generated: str
    change: float
    #: False when the guard fell back to the best hypothesis
    accepted: bool


def guard(
    generated: str, hypotheses: Sequence[str], fallback: str, max_change: float = MAX_CHANGE
) -> Correction:
    """Keep the LLM's output only if it is non-empty, within `max_change` of some hypothesis, and not
    merely another hypothesis than `fallback` (choosing among the hypotheses is the tuned rescorer's
    job; the corrector is there to write what none of them holds, or to format the chosen one)."""
    text = generated.strip()
    if not normalize(text) or not hypotheses:
        return Correction(fallback, generated, float("inf"), False)
    c = change(text, hypotheses)
    if c > max_change:
        return Correction(fallback, generated, c, False)
    if c == 0 and normalize(text) != normalize(fallback):
        return Correction(fallback, generated, c, False)
    return Correction(text, generated, c, True)


class GenerativeCorrector:
    """An instruct LLM (named model, folder or HF id; e.g. the shipped `smollm2-135m-corrector`) that
    rewrites N-best lists into transcripts, guarded, in left-padded batches with greedy decoding."""

    def __init__(
        self,
        location: str,
        *,
        name: str | None = None,
        device: str = "cpu",
        dtype: str = "auto",
        threads: int = 0,
        max_hypotheses: int = MAX_HYPOTHESES,
        max_change: float = MAX_CHANGE,
        batch_size: int = 8,
    ) -> None:
        import torch

        from llmasr.components.lm.causal import load_causal_lm

        if threads > 0:
            torch.set_num_threads(threads)
        self.name = name or location
        self.model, self.tokenizer = load_causal_lm(location, name=self.name, device=device, dtype=dtype)
        self.model.eval()
        self.device = device
        self.max_hypotheses = max_hypotheses
        self.max_change = max_change
        self.batch_size = max(1, batch_size)

    @classmethod
    def from_module(cls, model: torch.nn.Module, tokenizer: Any, **kwargs: Any) -> GenerativeCorrector:
        """Wrap a model already in memory (training's dev metric, tests)."""
        self = cls.__new__(cls)
        self.name = kwargs.get("name", "corrector")
        self.model, self.tokenizer = model, tokenizer
        self.device = str(next(model.parameters()).device)
        self.max_hypotheses = kwargs.get("max_hypotheses", MAX_HYPOTHESES)
        self.max_change = kwargs.get("max_change", MAX_CHANGE)
        self.batch_size = kwargs.get("batch_size", 8)
        return self

    def generate(self, lists: Sequence[Sequence[str]], contexts: Sequence[str] | None = None) -> list[str]:
        """The LLM's raw answer for each N-best list (no guard)."""
        import torch

        contexts = list(contexts or [""] * len(lists))
        out: list[str] = []
        end = end_token(self.tokenizer)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else end
        for i in range(0, len(lists), self.batch_size):
            chunk = [list(h[: self.max_hypotheses]) for h in lists[i : i + self.batch_size]]
            prompts = [
                prompt_ids(self.tokenizer, h, c) for h, c in zip(chunk, contexts[i : i + self.batch_size])
            ]
            width = max(len(p) for p in prompts)
            ids = torch.full((len(prompts), width), pad, dtype=torch.long)
            mask = torch.zeros((len(prompts), width), dtype=torch.long)
            for r, p in enumerate(prompts):  # left padding: every answer starts at the same column
                ids[r, width - len(p) :] = torch.tensor(p)
                mask[r, width - len(p) :] = 1
            longest = max(
                len(self.tokenizer.encode(h, add_special_tokens=False)) for hs in chunk for h in hs or [""]
            )
            with torch.no_grad():
                generated = self.model.generate(
                    input_ids=ids.to(self.device),
                    attention_mask=mask.to(self.device),
                    max_new_tokens=int(1.5 * longest) + 8,
                    do_sample=False,
                    eos_token_id=end,
                    pad_token_id=pad,
                )
            for row in generated[:, width:]:
                tokens = [int(t) for t in row if int(t) not in (end, pad)]
                out.append(self.tokenizer.decode(tokens, skip_special_tokens=True).strip())
        return out

    def correct_many(
        self,
        lists: Sequence[Sequence[str]],
        fallbacks: Sequence[str] | None = None,
        contexts: Sequence[str] | None = None,
    ) -> list[Correction]:
        """Guarded corrections; `fallbacks` (default: each list's first hypothesis) replace rejected ones."""
        fallbacks = list(fallbacks) if fallbacks is not None else [h[0] if h else "" for h in lists]
        texts = self.generate(lists, contexts)
        return [
            guard(t, hs[: self.max_hypotheses], fb, self.max_change)
            for t, hs, fb in zip(texts, lists, fallbacks)
        ]

    def correct(
        self, hypotheses: Sequence[str], fallback: str | None = None, context: str = ""
    ) -> Correction:
        fb = fallback if fallback is not None else (hypotheses[0] if hypotheses else "")
        return self.correct_many([hypotheses], [fb], [context])[0]
