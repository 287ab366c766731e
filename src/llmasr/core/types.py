"""Records shared by every stage: first pass, rescoring, deep models, writers, metrics."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class Word:
    word: str
    start: float
    end: float
    probability: float | None = None


@dataclass
class Hypothesis:
    """One N-best entry of the first pass.

    `am_score` is the recogniser's total natural-log score of the text (not length-normalised),
    so that it can be combined log-linearly with an LM score.
    """

    text: str
    am_score: float
    tokens: list[int] = field(default_factory=list)
    words: list[Word] = field(default_factory=list)
    lm_score: float | None = None
    score: float | None = None
    #: with several recognisers (`--asr A,B`): the others' total log-probability of the text (nats)
    other_am: float = 0.0
    #: with several recognisers: share of their first picks containing each word, averaged (1 with one)
    cross_agreement: float = 1.0


@dataclass
class Segment:
    start: float
    end: float
    text: str
    words: list[Word] = field(default_factory=list)
    first_pass_text: str = ""
    nbest: list[Hypothesis] = field(default_factory=list)


@dataclass
class Transcript:
    """What every mode produces; writers, metrics, CLI and server consume only this."""

    source: str
    duration: float
    segments: list[Segment] = field(default_factory=list)
    language: str = "en"
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def text(self) -> str:
        return " ".join(s.text.strip() for s in self.segments if s.text.strip())

    @property
    def first_pass_text(self) -> str:
        return " ".join(s.first_pass_text.strip() for s in self.segments if s.first_pass_text.strip())

    def to_dict(self, nbest: bool = False) -> dict[str, Any]:
        segments = []
        for seg in self.segments:
            d = asdict(seg)
            if not nbest:
                d.pop("nbest")
            else:
                for h in d["nbest"]:
                    h.pop("words", None)
            segments.append(d)
        return {
            "source": self.source,
            "text": self.text,
            "first_pass_text": self.first_pass_text,
            "duration": round(self.duration, 3),
            "language": self.language,
            "segments": segments,
            "info": self.info,
        }
