"""The sequence-scorer protocol shared by causal LLMs and n-gram models."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable


@runtime_checkable
class Scorer(Protocol):
    name: str

    def score(self, texts: Sequence[str], context: str = "") -> list[float]:
        """Total natural-log probability of each text given `context`; only the text is scored."""
        ...

    def count_tokens(self, text: str) -> int:
        """Length of `text` in the scorer's units, to budget the context carried between segments."""
        ...
