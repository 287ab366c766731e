"""N-best rescoring with long-form context and domain prompts: a log-linear choice over the
recogniser, the LM and simple list features.

score = am + lm_weight * lm + word_bonus * words + agreement_weight * agreement
      + am_norm_weight * am / am_tokens + lm_norm_weight * lm / lm_tokens + lm_word_weight * lm / words
      - shortfall_weight * shortfall + coverage_weight * coverage - dropped_weight * dropped
      + other_am_weight * other_am + cross_agreement_weight * cross_agreement + term_weight * term_hits

`am` is the recogniser's total log-probability, `lm` the scorer's total log-probability of the
hypothesis given the context, `words` the number of written words (counters the LM's taste for short
text; counted on the text as written, since "111751" is one word to the LM, six once spelled out),
and `agreement` the share of the N-best that contains each of the hypothesis's words, averaged
(ROVER-style voting; the one feature measured to make a small LLM useful here, see findings).
The length-normalised scores (per recogniser token, per LM token, per word) let the tuner trade
total against average likelihood; their weights are 0 unless cross-validated tuning finds them useful.

Truncation features see a hypothesis that stops early (beam search keeps short hypotheses that an LM,
with its taste for short generic text, then prefers: "montreal forced a liner" -> "montreal"):
`shortfall`, how far the hypothesis falls short of the list's expected length (the larger of the
N-best's median length and the first pass's, in normalised words; 0 for one as long or longer);
`coverage`, the share of the list's confident words (N-best word posterior >= 0.5) it contains; and
`dropped`, the summed posterior of the confident words it leaves out (the acoustic evidence it throws
away, in words). Word posteriors are the softmax of the recogniser's scores over the list.

With two recognisers (`--asr A,B`), `am` is the first one's score of the text, `other_am` the sum of
the others' scores of the same text (each recogniser scores every merged candidate) and
`cross_agreement` the share of the recognisers' own first picks that contain each word, averaged
(ROVER-style voting across systems, Fiscus 1997).

With a term list, `term_hits` counts the segment's terms the hypothesis spells exactly as listed (whole
words, normalised): a contextual-biasing bonus applied at rescoring time, on top of the terms the LM and
the recogniser's prompt already see.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from llmasr.components.lm.base import Scorer
from llmasr.core.metrics import normalize
from llmasr.core.types import Hypothesis
from llmasr.decoding.context import build_context, trim_history
from llmasr.decoding.terms import term_hits


@dataclass
class Weights:
    lm_weight: float = 0.0
    word_bonus: float = 0.0
    agreement_weight: float = 0.0
    am_norm_weight: float = 0.0
    lm_norm_weight: float = 0.0
    lm_word_weight: float = 0.0
    shortfall_weight: float = 0.0
    coverage_weight: float = 0.0
    dropped_weight: float = 0.0
    other_am_weight: float = 0.0
    cross_agreement_weight: float = 0.0
    term_weight: float = 0.0


#: a word is "confident" when its N-best posterior reaches this
CONFIDENT = 0.5


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
    #: share of the expected length it lacks, in [0, 1] (1: an empty hypothesis)
    shortfall: float = 0.0
    #: share of the list's confident words it contains, in [0, 1]
    coverage: float = 1.0
    #: summed posterior of the confident words it leaves out (words)
    dropped: float = 0.0
    #: the other recognisers' total log-probability of the text (nats; 0 with one recogniser)
    other_am: float = 0.0
    #: cross-system agreement in [0, 1] (1 with one recogniser)
    cross_agreement: float = 1.0
    #: the segment's terms it spells as listed (set by NbestRescorer.featurise)
    term_hits: int = 0

    def without_lm(self, w: Weights) -> float:
        """Every term of the score but the LM's."""
        per_token = self.am / max(1, self.am_tokens)
        return (
            self.am
            + w.word_bonus * self.words
            + w.agreement_weight * self.agreement
            + w.am_norm_weight * per_token
            - w.shortfall_weight * self.shortfall
            + w.coverage_weight * self.coverage
            - w.dropped_weight * self.dropped
            + w.other_am_weight * self.other_am
            + w.cross_agreement_weight * self.cross_agreement
            + w.term_weight * self.term_hits
        )

    def lm_coefficient(self, w: Weights) -> float:
        """The score is linear in `lm`: total = without_lm + lm_coefficient * lm (what training uses)."""
        return w.lm_weight + w.lm_norm_weight / max(1, self.lm_tokens) + w.lm_word_weight / max(1, self.words)

    def total(self, w: Weights) -> float:
        return self.without_lm(w) + self.lm_coefficient(w) * self.lm


def candidates(nbest: Sequence[Hypothesis]) -> list[Candidate]:
    """Deduplicate after normalising (many hypotheses differ only in casing or punctuation), with the
    list features of each distinct text. `nbest[0]` is the first pass."""
    norms = [normalize(h.text) for h in nbest]
    best: dict[str, Hypothesis] = {}
    for key, h in zip(norms, nbest):
        if key not in best or h.am_score > best[key].am_score:
            best[key] = h
    bags = [set(key.split()) for key in norms]
    posterior = word_posteriors(norms, [h.am_score for h in nbest])
    confident = {w: p for w, p in posterior.items() if p >= CONFIDENT}
    lengths = sorted(len(key.split()) for key in norms)
    expected = max(lengths[len(lengths) // 2], len(norms[0].split())) if norms else 0
    out = []
    for key, h in best.items():
        words = key.split()
        share = [sum(w in bag for bag in bags) / len(bags) for w in words]
        agreement = sum(share) / len(share) if share else 0.0
        has = set(words)
        missing = [p for w, p in confident.items() if w not in has]
        out.append(
            Candidate(
                hypothesis=h,
                norm=key,
                am=h.am_score,
                words=written_words(h.text),
                agreement=agreement,
                am_tokens=len(h.tokens) or len(words) + 1,
                shortfall=max(0, expected - len(words)) / max(1, expected),
                coverage=1.0 - len(missing) / len(confident) if confident else 1.0,
                dropped=sum(missing),
                other_am=h.other_am,
                cross_agreement=h.cross_agreement,
            )
        )
    return out


def word_posteriors(texts: Sequence[str], scores: Sequence[float]) -> dict[str, float]:
    """N-best word posteriors: for each word, the summed posterior (softmax of the recogniser's total
    log-probabilities, nats) of the hypotheses that contain it (Evermann & Woodland 2000, on a list)."""
    if not texts:
        return {}
    top = max(scores)
    mass = [math.exp(s - top) for s in scores]
    total = sum(mass)
    out: dict[str, float] = {}
    for text, m in zip(texts, mass):
        for w in set(text.split()):
            out[w] = out.get(w, 0.0) + m / total
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
        if self.terms:
            for c in cands:
                c.term_hits = term_hits(c.norm, self.terms)
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
