"""N-best rescoring with long-form context and domain prompts: a log-linear choice over the
recogniser, the LM and simple list features.

score = am + lm_weight * lm + word_bonus * words + agreement_weight * agreement
      + am_norm_weight * am / am_tokens + lm_norm_weight * lm / lm_tokens + lm_word_weight * lm / words

`am` is the recogniser's total log-probability, `lm` the scorer's total log-probability of the
hypothesis given the context, `words` the number of written words (counters the LM's taste for short
text; counted on the text as written, since "111751" is one word to the LM, six once spelled out),
and `agreement` the share of the N-best that contains each of the hypothesis's words, averaged
(ROVER-style voting; the one feature measured to make a small LLM useful here, see findings).
The length-normalised scores (per recogniser token, per LM token, per word) let the tuner trade
total against average likelihood; their weights are 0 unless cross-validated tuning finds them useful.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from llmasr.components.lm.base import Scorer
from llmasr.core.metrics import normalize
from llmasr.core.types import Hypothesis
from llmasr.decoding.context import build_context, trim_history


@dataclass
class Weights:
    lm_weight: float = 0.0
    word_bonus: float = 0.0
    agreement_weight: float = 0.0
    am_norm_weight: float = 0.0
    lm_norm_weight: float = 0.0
    lm_word_weight: float = 0.0


@dataclass
class Candidate:
    """A distinct normalised text of an N-best list, with its features."""

    hypothesis: Hypothesis
    norm: str
    am: float
    words: int
    agreement: float = 0.0
    lm: float = 0.0
    #: recogniser tokens of the hypothesis (its length for the AM's per-token score)
    am_tokens: int = 0
    #: LM tokens of the hypothesis (set with `lm`)
    lm_tokens: int = 0

    def without_lm(self, w: Weights) -> float:
        """Every term of the score but the LM's."""
        per_token = self.am / max(1, self.am_tokens)
        return (
            self.am
            + w.word_bonus * self.words
            + w.agreement_weight * self.agreement
            + w.am_norm_weight * per_token
        )

    def lm_coefficient(self, w: Weights) -> float:
        """The score is linear in `lm`: total = without_lm + lm_coefficient * lm (what training uses)."""
        return w.lm_weight + w.lm_norm_weight / max(1, self.lm_tokens) + w.lm_word_weight / max(1, self.words)

    def total(self, w: Weights) -> float:
        return self.without_lm(w) + self.lm_coefficient(w) * self.lm


def candidates(nbest: Sequence[Hypothesis]) -> list[Candidate]:
    """Deduplicate after normalising (many hypotheses differ only in casing or punctuation)."""
    norms = [normalize(h.text) for h in nbest]
    best: dict[str, Hypothesis] = {}
    for key, h in zip(norms, nbest):
        if key not in best or h.am_score > best[key].am_score:
            best[key] = h
    bags = [set(key.split()) for key in norms]
    out = []
    for key, h in best.items():
        words = key.split()
        share = [sum(w in bag for bag in bags) / len(bags) for w in words]
        agreement = sum(share) / len(share) if share else 0.0
        out.append(
            Candidate(
                hypothesis=h,
                norm=key,
                am=h.am_score,
                words=written_words(h.text),
                agreement=agreement,
                am_tokens=len(h.tokens) or len(words) + 1,
            )
        )
    return out


def written_words(text: str) -> int:
    """Words as written: whitespace-separated tokens holding a letter or digit."""
    return sum(any(ch.isalnum() for ch in tok) for tok in text.split())


@dataclass
class NbestRescorer:
    scorer: Scorer | None
    weights: Weights = field(default_factory=Weights)
    prompt: str | None = None
    terms: Sequence[str] = ()
    context_tokens: int = 128

    def context(self, history: Sequence[str]) -> str:
        past = trim_history(history, self.context_tokens, self.scorer.count_tokens) if self.scorer else ""
        return build_context(self.prompt, self.terms, past)

    def featurise(
        self, nbest: Sequence[Hypothesis], history: Sequence[str] = (), with_lm: bool | None = None
    ) -> list[Candidate]:
        """Candidates with LM scores; all hypotheses of a segment go through the LM in one batch.

        The LM runs only when one of its weights is non-zero, unless `with_lm` says otherwise (tuning).
        """
        cands = candidates(nbest)
        # per-token LM lengths: for tuning (an explicit with_lm) or a weight that reads them
        count = with_lm is not None or self.weights.lm_norm_weight != 0.0
        if with_lm is None:
            w = self.weights
            with_lm = w.lm_weight != 0.0 or w.lm_norm_weight != 0.0 or w.lm_word_weight != 0.0
        if self.scorer is not None and with_lm and cands:
            lm = self.scorer.score([c.hypothesis.text for c in cands], self.context(history))
            for c, s in zip(cands, lm):
                c.lm = s
                if count:
                    c.lm_tokens = self.scorer.count_tokens(c.hypothesis.text)
                c.hypothesis.lm_score = s
        return cands

    def choose(self, nbest: Sequence[Hypothesis], history: Sequence[str] = ()) -> Hypothesis:
        if not nbest:
            raise ValueError("cannot choose from an empty N-best list")
        cands = self.featurise(nbest, history)
        best = max(cands, key=lambda c: c.total(self.weights))
        for c in cands:
            c.hypothesis.score = c.total(self.weights)
        return best.hypothesis
