"""A word n-gram Scorer (pocketsphinx's en-us 3-gram by default): a cheap, offline baseline for rescoring."""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence

from llmasr.core.errors import ModelError

#: pocketsphinx returns integer log probabilities in base 1.0001; multiply by this to get natural log
LOG_BASE_TO_LN = math.log(1.0001)

#: what `NGramModel.prob` returns for a word outside the vocabulary (logmath's "zero", not a real probability)
OOV_RAW = -536870912

_WORD = re.compile(r"[a-z0-9]+(?:'[a-z0-9]+)*")


def tokenize(text: str) -> list[str]:
    """Lowercase words with punctuation stripped (apostrophes inside words kept), as the LM was trained."""
    return _WORD.findall(text.lower())


def default_lm_path() -> str:
    import pocketsphinx

    return os.path.join(pocketsphinx.get_model_path(), "en-us", "en-us.lm.bin")


class NgramScorer:
    """Scores texts with an ARPA / binary n-gram LM through `pocketsphinx.NGramModel`.

    Each text is scored as a sentence: history starts at `<s>` (preceded by the last words of `context`)
    and, when `eos` is true, the probability of `</s>` after the last word is added.

    OOV words (names, digits, casing the LM never saw) get a finite penalty, `oov_logprob` nats per
    word (default -20): the raw `NGramModel.prob` value is logmath's zero (about -53686 nats), which would
    make every text with one OOV word lose. `oov_logprob=None` keeps the raw value. An OOV word in the
    history makes the model back off.
    """

    name = "en-us-3gram"

    def __init__(
        self,
        path: str | None = None,
        eos: bool = True,
        oov_logprob: float | None = -20.0,
        name: str | None = None,
    ) -> None:
        import pocketsphinx

        self.path = path or default_lm_path()
        if not os.path.exists(self.path):
            raise ModelError(f"n-gram LM not found: {self.path}")
        try:
            self._lm = pocketsphinx.NGramModel.readfile(self.path)
        except (ValueError, RuntimeError) as exc:
            raise ModelError(f"cannot load n-gram LM {self.path}: {exc}") from exc
        if name is not None:
            self.name = name
        elif path is not None:
            self.name = os.path.basename(self.path)
        self.order = int(self._lm.size())
        self.eos = eos
        self.oov_logprob = oov_logprob
        self._has_bos = self._raw(["<s>"]) != OOV_RAW
        self._has_eos = self._raw(["</s>"]) != OOV_RAW
        self._cache: dict[tuple[str, ...], int] = {}

    def _raw(self, words: list[str]) -> int:
        # NGramModel.prob takes [word, previous, the one before, ...] (most recent history first) and
        # returns an integer log-1.0001 probability. Its binding mallocs only len(words) bytes for the
        # pointer array, so never pass more words than the model order (3 fits the allocator's minimum).
        return int(self._lm.prob(words))

    def logprob(self, word: str, history: Sequence[str]) -> float:
        """Natural-log P(word | history); `history` is oldest first."""
        n = max(1, min(self.order, 3))
        key = (word, *reversed(history[-(n - 1) :] if n > 1 else []))
        raw = self._cache.get(key)
        if raw is None:
            raw = self._raw(list(key))
            if len(self._cache) < 1_000_000:
                self._cache[key] = raw
        if raw <= OOV_RAW and self.oov_logprob is not None:
            return float(self.oov_logprob)
        return raw * LOG_BASE_TO_LN

    def _history(self, context: str) -> list[str]:
        words = tokenize(context)
        history = ["<s>"] if self._has_bos else []
        return (history + words)[-(max(min(self.order, 3), 2) - 1) :]

    def score(self, texts: Sequence[str], context: str = "") -> list[float]:
        """Total natural-log probability of each text given `context`; only the text's words are scored."""
        start = self._history(context)
        out = []
        for text in texts:
            history = list(start)
            total = 0.0
            for word in tokenize(text):
                total += self.logprob(word, history)
                history.append(word)
            if self.eos and self._has_eos:
                total += self.logprob("</s>", history)
            out.append(total)
        return out

    def count_tokens(self, text: str) -> int:
        """Number of words, the unit of this LM's history."""
        return len(tokenize(text))
