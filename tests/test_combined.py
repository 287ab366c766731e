"""Two recognisers as one (components/asr/combined.py): merged lists, cross-scores, agreement."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest

from llmasr.components.asr.base import Recognizer
from llmasr.components.asr.combined import CombinedRecognizer, TextScoring, merge_nbest
from llmasr.core.errors import ModelError
from llmasr.core.types import Hypothesis, Word
from llmasr.decoding.rescore import NbestRescorer, Weights, candidates


class FakeRecognizer:
    """Fixed N-best lists; scores any text by a table (unknown texts: -20 nats)."""

    window = 30.0
    max_nbest = 8

    def __init__(self, name: str, nbest: list[tuple[str, float]], table: dict[str, float],
                 accepts_prompt: bool = True) -> None:  # fmt: skip
        self.name = name
        self._nbest = nbest
        self.table = table
        self.accepts_prompt = accepts_prompt
        self.prompts: list[str | None] = []
        self.asked: list[int] = []

    def nbest(
        self, segments: Sequence[np.ndarray], n: int, prompt: str | None = None
    ) -> list[list[Hypothesis]]:
        self.prompts.append(prompt)
        self.asked.append(n)
        return [[Hypothesis(t, s, tokens=[1, 2]) for t, s in self._nbest[:n]] for _ in segments]

    def align(self, audio: np.ndarray, hypothesis: Hypothesis) -> list[Word]:
        return [Word(w, 0.0, 0.1) for w in hypothesis.text.split()]

    def score_texts(self, audio: np.ndarray, texts: Sequence[str], prompt: str | None = None) -> list[float]:
        return [self.table.get(t, -20.0) for t in texts]


class NoScoring:
    name = "ps"
    window = 30.0
    accepts_prompt = False
    max_nbest = 1

    def nbest(
        self, segments: Sequence[np.ndarray], n: int, prompt: str | None = None
    ) -> list[list[Hypothesis]]:
        return [[] for _ in segments]

    def align(self, audio: np.ndarray, hypothesis: Hypothesis) -> list[Word]:
        return []


def test_fakes_follow_the_protocols() -> None:
    fake = FakeRecognizer("a", [], {})
    assert isinstance(fake, Recognizer) and isinstance(fake, TextScoring)
    assert not isinstance(NoScoring(), TextScoring)


def test_merge_dedupes_after_normalising_and_keeps_the_first_pick_first() -> None:
    # "10 of clubs" is "ten of clubs" once normalised (numbers spelled out)
    a = [Hypothesis("Ten of clubs.", -1.0, tokens=[5]), Hypothesis("Ten of club", -1.2, tokens=[6])]
    b = [Hypothesis("10 of clubs", -0.5, tokens=[9]), Hypothesis("Tent of clubs.", -2.0, tokens=[8])]
    merged = merge_nbest([a, b])
    assert [h.text for h in merged] == ["Ten of clubs.", "Ten of club", "Tent of clubs."]
    # the second recogniser's token ids mean nothing to the first: dropped
    assert merged[0].tokens == [5] and merged[2].tokens == []
    # both first picks say "ten of clubs": cross-system agreement by word
    assert merged[0].cross_agreement == 1.0
    assert merged[1].cross_agreement == pytest.approx(2 / 3)  # "club" in neither pick
    assert merged[2].cross_agreement == pytest.approx(2 / 3)
    assert merge_nbest([[], []]) == []


def test_combined_scores_every_candidate_with_every_recogniser() -> None:
    tiny = FakeRecognizer(
        "tiny",
        [("please call stella", -2.0), ("please call stela", -2.5)],
        {"please call stella": -2.1, "please call stela": -2.4, "please call stella now": -2.6},
    )
    base = FakeRecognizer("base", [("please call stella now", -1.0), ("please call stella", -3.0)],
                          {"please call stella": -3.0, "please call stela": -9.0,
                           "please call stella now": -1.0},
                          accepts_prompt=False)  # fmt: skip
    combined = CombinedRecognizer([tiny, base])
    assert (combined.name, combined.accepts_prompt, combined.max_nbest) == ("tiny,base", True, 8)
    [merged] = combined.nbest([np.zeros(1600, dtype=np.float32)], 2, prompt="Stella")
    assert tiny.prompts == ["Stella"] and base.prompts == [None]
    assert [h.text for h in merged] == ["please call stella", "please call stela", "please call stella now"]
    assert [h.am_score for h in merged] == [-2.1, -2.4, -2.6]  # the first recogniser's score of each text
    assert [h.other_am for h in merged] == [-3.0, -9.0, -1.0]
    # the second recogniser's hypothesis wins once its score counts; the features reach the candidates
    cands = candidates(merged)
    assert [c.other_am for c in cands] == [-3.0, -9.0, -1.0]
    assert NbestRescorer(None, Weights()).choose(merged).text == "please call stella"
    assert NbestRescorer(None, Weights(other_am_weight=1.0)).choose(merged).text == "please call stella now"
    assert combined.align(np.zeros(10), merged[2])[-1].word == "now"


def test_a_one_best_recogniser_adds_its_pick_to_a_longer_list() -> None:
    """A greedy CTC head (max_nbest 1) beside a beam: the combination gives the beam's length, each
    recogniser is asked for at most what it gives, and the head's pick joins the list."""
    beam = FakeRecognizer("llm", [("Ten of clubs, including", -1.0), ("Ten of clubs.", -1.5)], {})
    head = FakeRecognizer("head", [("ten of clove", -2.0), ("then of clubs", -3.0)], {})
    head.max_nbest = 1
    combined = CombinedRecognizer([beam, head])
    assert combined.max_nbest == 8
    [merged] = combined.nbest([np.zeros(1600, dtype=np.float32)], 4)
    assert (beam.asked, head.asked) == ([4], [1])
    assert [h.text for h in merged] == ["Ten of clubs, including", "Ten of clubs.", "ten of clove"]


def test_combining_needs_two_recognisers_that_score_text() -> None:
    with pytest.raises(ModelError, match="at least two"):
        CombinedRecognizer([FakeRecognizer("a", [], {})])
    with pytest.raises(ModelError, match="'ps' cannot score"):
        CombinedRecognizer([FakeRecognizer("a", [], {}), NoScoring()])


def test_repeated_or_empty_names_are_refused() -> None:
    from llmasr.components.asr.registry import load_recognizer

    for name in ("whisper-tiny.en,whisper-tiny.en", "whisper-tiny.en,"):
        with pytest.raises(ModelError, match="distinct recognisers"):
            load_recognizer(name)


@pytest.mark.integration
def test_whisper_scores_any_text_as_its_beam_search_does() -> None:
    """A Whisper recogniser's teacher-forced score of its own hypotheses matches the beam's totals, and
    a text that stops early is judged by its end-of-text too."""
    from pathlib import Path

    from llmasr.components.asr.registry import load_recognizer
    from llmasr.core.audio import load_input
    from llmasr.data.real import TESTDATA

    wav = Path(TESTDATA) / "cards" / "001.wav"
    if not wav.exists():
        pytest.skip("Debian package pocketsphinx-testdata not installed")
    audio = load_input(wav)[1].samples
    whisper = load_recognizer("whisper-tiny.en")
    nbest = whisper.nbest([audio], 4)[0]
    scores = whisper.score_texts(audio, [h.text for h in nbest])
    for h, s in zip(nbest, scores):
        assert s == pytest.approx(h.am_score, rel=0.1, abs=0.3), h.text
    cut, full = whisper.score_texts(audio, [nbest[0].text.split()[0], nbest[0].text])
    assert cut < full - 1.0  # stopping after the first word costs the end-of-text's improbability
    assert len(whisper.score_texts(audio, ["", "ten"], prompt="Playing cards.")) == 2


def test_other_recognisers_score_only_when_their_score_counts(monkeypatch: pytest.MonkeyPatch) -> None:
    """With other_am_weight 0 (the accurate preset's tuned profile) a pipeline's recogniser combination
    teacher-forces with the first recogniser only: the same choice, one model's scoring less. Tuning
    (all_features) and a non-zero weight score with both."""
    import llmasr.decoding.pipeline as pipeline_mod
    from llmasr.decoding.options import make_options
    from llmasr.decoding.pipeline import Pipeline
    from tests.test_pipeline import noise

    calls: list[str] = []

    class Counting(FakeRecognizer):
        def score_texts(
            self, audio: np.ndarray, texts: Sequence[str], prompt: str | None = None
        ) -> list[float]:
            calls.append(self.name)
            return super().score_texts(audio, texts, prompt)

    def fakes(*args: object, **kwargs: object) -> CombinedRecognizer:
        table = {"please call stella": -2.0, "please call stella now": -2.5}
        return CombinedRecognizer([Counting("tiny", [("please call stella", -2.0)], table),
                                   Counting("base", [("please call stella now", -1.0)], table)])  # fmt: skip

    monkeypatch.setattr(pipeline_mod, "load_recognizer", fakes)
    picks = {}
    for label, weight, tuning in (("zero", 0.0, False), ("tuning", 0.0, True), ("weighted", 0.5, False)):
        calls.clear()
        opts = make_options(asr="tiny,base", lm=None, nbest=2, weights=Weights(other_am_weight=weight))
        pipe = Pipeline(opts, all_features=tuning)
        [seg] = pipe.transcribe(noise(1.0)).segments
        picks[label] = seg.text
        assert sorted(set(calls)) == (["tiny"] if label == "zero" else ["base", "tiny"]), label
        assert any(h.other_am != 0.0 for h in seg.nbest) == (label != "zero")
    assert picks["zero"] == picks["tuning"]  # other_am weighted 0: the same choice either way
