"""Pick, from a long term list, the few terms a segment may contain, for a second, better-prompted pass.

Whisper attends to at most 223 prompt tokens, so most of a 150-term list never reaches it (findings:
entities inside the kept window were recalled ~70%, the rest ~35%; ~90% when given only the utterance's
own terms). The first pass's N-best words are matched against every term by character trigrams, which
tolerates misspellings ("metoprolol" heard as "meta pro lol"), over windows of 1-3 consecutive words
joined without spaces.
"""

from __future__ import annotations

import functools
import math
import re
from collections import Counter
from collections.abc import Sequence

from llmasr.core.metrics import normalize

#: below this trigram cosine a term is not considered heard
MIN_SIMILARITY = 0.45


def _key(text: str) -> str:
    return re.sub(r"[^a-z0-9]", "", text.lower())


def _grams(key: str) -> Counter[str]:
    padded = f"#{key}#"
    return Counter(padded[i : i + 3] for i in range(len(padded) - 2))


def _cosine(a: Counter[str], b: Counter[str]) -> float:
    dot = sum(v * b[g] for g, v in a.items() if g in b)
    if not dot:
        return 0.0
    return dot / math.sqrt(sum(v * v for v in a.values()) * sum(v * v for v in b.values()))


class TermRetriever:
    """Ranks the terms of a list by how closely some stretch of the hypotheses spells them."""

    def __init__(self, terms: Sequence[str], max_window: int = 3) -> None:
        self.terms = [t for t in terms if _key(t)]
        self.max_window = max_window
        self._keys = [_key(t) for t in self.terms]
        self._grams = [_grams(k) for k in self._keys]

    def _windows(self, texts: Sequence[str]) -> dict[str, Counter[str]]:
        windows: dict[str, Counter[str]] = {}
        for text in texts:
            words = [_key(w) for w in normalize(text).split()]
            words = [w for w in words if w]
            for n in range(1, self.max_window + 1):
                for i in range(len(words) - n + 1):
                    key = "".join(words[i : i + n])
                    if key not in windows:
                        windows[key] = _grams(key)
        return windows

    def scores(self, texts: Sequence[str]) -> list[float]:
        """Best similarity of each term to any window of any hypothesis (0..1)."""
        windows = self._windows(texts)
        out = []
        for key, grams in zip(self._keys, self._grams):
            near = [g for w, g in windows.items() if 0.5 * len(key) <= len(w) <= 2 * len(key)]
            out.append(max((_cosine(grams, g) for g in near), default=0.0))
        return out

    def top(self, texts: Sequence[str], k: int, min_similarity: float = MIN_SIMILARITY) -> list[str]:
        """Up to k terms, most similar first, that resemble something in the hypotheses."""
        ranked = sorted(zip(self.scores(texts), range(len(self.terms))), key=lambda x: (-x[0], x[1]))
        return [self.terms[i] for s, i in ranked[:k] if s >= min_similarity]


def interleave(rankings: Sequence[Sequence[str]], k: int) -> list[str]:
    """Up to k distinct terms taking turns from each ranking (best first): the union of two retrievals
    that keeps each one's best."""
    out: list[str] = []
    for rank in range(max((len(r) for r in rankings), default=0)):
        for r in rankings:
            if rank < len(r) and r[rank] not in out:
                out.append(r[rank])
    return out[:k]


@functools.lru_cache(maxsize=8192)
def _normalized_term(term: str) -> str:
    return normalize(term)


def term_hits(norm_text: str, terms: Sequence[str]) -> int:
    """How many of `terms` a normalised text contains, each as whole words (spelled as in the list).
    Called for every candidate of every segment with the same list: each term is normalised once."""
    padded = f" {norm_text} "
    return sum(1 for t in {_normalized_term(t) for t in terms} if t and f" {t} " in padded)
