"""Several recognisers as one: their N-best lists merged, each candidate scored by every recogniser.

`--asr whisper-tiny.en,whisper-base` decodes each segment with both models, merges the lists
(deduplicated after normalising; the first recogniser's pick stays first, so it remains the first
pass), and has every recogniser score every merged text (`TextScoring.score_texts`: Whisper and a
speech-LLM by teacher-forced log-probability, a token CTC head by its CTC log-likelihood), so a
hypothesis only one model proposed is still judged by both; a speech-LLM beside its own CTC head
(`--asr speechllm-stack-tiny,whisper-tiny.en-ctc`) is joint CTC/attention rescoring (Watanabe et
al. 2017). The rescorer combines the scores log-linearly (`am` from the first, `other_am` the sum of
the others) with cross-system agreement: for each word, the share of the recognisers whose own first
pick holds it (ROVER's vote, Fiscus 1997, used as a feature rather than a voting rule).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np

from llmasr.components.asr.base import Recognizer
from llmasr.core.errors import ModelError
from llmasr.core.metrics import normalize
from llmasr.core.types import Hypothesis, Word


@runtime_checkable
class TextScoring(Protocol):
    """A recogniser that can score any text against a segment."""

    def score_texts(self, audio: np.ndarray, texts: Sequence[str], prompt: str | None = None) -> list[float]:
        """Log-likelihood (nats) of each whole text given a 16 kHz mono segment (and the prompt)."""
        ...


class CombinedRecognizer:
    """Recognisers decoding the same segments; see the module doc."""

    #: teacher-force every merged text with every recogniser; False: with the first only (`other_am`
    #: stays 0), all that a choice with `other_am_weight` 0 reads: the same choice without the other
    #: models' scoring (a Pipeline sets it from its weights, `Pipeline(all_features=)`)
    score_with_all: bool = True

    def __init__(self, recognizers: Sequence[Recognizer]) -> None:
        if len(recognizers) < 2:
            raise ModelError("combining recognisers needs at least two")
        for r in recognizers:
            if not isinstance(r, TextScoring):
                raise ModelError(
                    f"'{r.name}' cannot score another recogniser's text, so it cannot be combined "
                    "(--asr A,B takes Whisper models, speech-LLMs and token CTC heads)"
                )
        self.recognizers = list(recognizers)
        self.name = ",".join(r.name for r in recognizers)
        self.window = min(r.window for r in recognizers)
        self.accepts_prompt = any(r.accepts_prompt for r in recognizers)
        #: the longest list any of them gives (each is asked for at most its own `max_nbest`, so a
        #: CTC head asked for 16 adds its 8-best to a Whisper model's 16)
        self.max_nbest = max(r.max_nbest for r in recognizers)

    def nbest(
        self, segments: Sequence[np.ndarray], n: int, prompt: str | None = None
    ) -> list[list[Hypothesis]]:
        lists = [
            r.nbest(segments, min(n, r.max_nbest), prompt if r.accepts_prompt else None)
            for r in self.recognizers
        ]
        return [self._merge(seg, [lst[i] for lst in lists], prompt) for i, seg in enumerate(segments)]

    def _merge(
        self, audio: np.ndarray, lists: Sequence[list[Hypothesis]], prompt: str | None
    ) -> list[Hypothesis]:
        merged = merge_nbest(lists)
        if not merged:
            return []
        texts = [h.text for h in merged]
        scorers = self.recognizers if self.score_with_all else self.recognizers[:1]
        scores = [
            r.score_texts(audio, texts, prompt if r.accepts_prompt else None)  # type: ignore[attr-defined]
            for r in scorers
        ]
        for j, h in enumerate(merged):
            h.am_score = scores[0][j]
            h.other_am = sum(s[j] for s in scores[1:])
        return merged

    def align(self, audio: np.ndarray, hypothesis: Hypothesis) -> list[Word]:
        return self.recognizers[0].align(audio, hypothesis)


def merge_nbest(lists: Sequence[Sequence[Hypothesis]]) -> list[Hypothesis]:
    """One list from several recognisers' N-best lists of one segment: distinct normalised texts, the
    first list's in its order, then each further list's new texts; each candidate's `cross_agreement`
    is set (see the module doc). Tokens are kept only for the first recogniser's hypotheses (another
    tokenizer's ids would mean nothing to it; the rescorer then counts words + 1 as their length).
    When the first list is empty (it heard no speech), the next list's pick leads. Scores are left for
    the caller to fill in."""
    picks = [set(normalize(lst[0].text).split()) for lst in lists if lst]
    out: list[Hypothesis] = []
    seen: set[str] = set()
    for k, lst in enumerate(lists):
        for h in lst:
            key = normalize(h.text)
            if key in seen:
                continue
            seen.add(key)
            words = key.split()
            votes = [sum(w in p for p in picks) / max(1, len(picks)) for w in words]
            out.append(
                Hypothesis(
                    text=h.text,
                    am_score=h.am_score,
                    tokens=list(h.tokens) if k == 0 else [],
                    cross_agreement=sum(votes) / len(votes) if votes else 0.0,
                )
            )
    return out
