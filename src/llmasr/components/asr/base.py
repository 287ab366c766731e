"""The first-pass recogniser protocol: every engine returns N-best lists and can time a chosen text."""

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

    def nbest(
        self, segments: Sequence[np.ndarray], n: int, prompt: str | None = None
    ) -> list[list[Hypothesis]]:
        """N-best lists, best first, one per 16 kHz mono float32 segment."""
        ...

    def align(self, audio: np.ndarray, hypothesis: Hypothesis) -> list[Word]:
        """Word timings (seconds from the segment start) of a hypothesis, e.g. one chosen by rescoring."""
        ...
