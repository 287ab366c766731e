"""The first-pass recogniser protocol: every engine returns N-best lists and can time a chosen text.

Whisper (CTranslate2), pocketsphinx, the token CTC recogniser and trained speech-LLMs all implement it, so
one pipeline (llmasr.decoding.pipeline) takes any of them: long-form splitting, prompts and terms,
rescoring by an LM, generative correction and word timings work the same for each.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np

from llmasr.core.types import Hypothesis, Word


@runtime_checkable
class Recognizer(Protocol):
    name: str
    #: longest audio (seconds) one call can take; longer audio is split by VAD first
    window: float
    #: whether a text prompt (domain description, terms) conditions its decoding
    accepts_prompt: bool
    #: the most hypotheses it returns per segment (the CTC head: 8, by prefix beam search)
    max_nbest: int

    def nbest(
        self, segments: Sequence[np.ndarray], n: int, prompt: str | None = None
    ) -> list[list[Hypothesis]]:
        """N-best lists, best first, one per 16 kHz mono float32 segment. `Hypothesis.am_score` is the
        total log-probability (nats) of the text, so it combines log-linearly with an LM's."""
        ...

    def align(self, audio: np.ndarray, hypothesis: Hypothesis) -> list[Word]:
        """Word timings (seconds from the segment start) of a hypothesis, e.g. one chosen by rescoring;
        [] when the recogniser cannot time words (writers then share the segment's time out)."""
        ...
