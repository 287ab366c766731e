"""Pipeline.transcribe end to end with a fake recogniser and a fake LM (no real models)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest

from llmasr.components.asr.base import Recognizer
from llmasr.core import vad
from llmasr.core.audio import SAMPLE_RATE
from llmasr.core.errors import AudioError
from llmasr.core.types import Hypothesis, Word
from llmasr.decoding.options import Options, make_options
from llmasr.decoding.pipeline import Pipeline
from llmasr.decoding.rescore import Weights

#: a 1 s segment as the recogniser gets it: with vad.EDGE_PAD of silence at both edges
PADDED = 16000 + 2 * int(vad.EDGE_PAD * SAMPLE_RATE)


class FakeRecognizer:
    """Hands out the given N-best lists in order, one per segment; records what it was asked."""

    name = "fake-asr"
    window = 30.0
    accepts_prompt = True
    max_nbest = 32

    def __init__(self, lists: list[list[tuple[str, float]]]) -> None:
        self.lists = list(lists)
        self.nbest_calls: list[tuple[list[int], int, str | None]] = []
        self.aligned: list[tuple[int, str]] = []

    def nbest(
        self, segments: Sequence[np.ndarray], n: int, prompt: str | None = None
    ) -> list[list[Hypothesis]]:
        self.nbest_calls.append(([len(s) for s in segments], n, prompt))
        out = []
        for _ in segments:
            pairs = self.lists.pop(0)
            out.append([Hypothesis(text=t, am_score=a) for t, a in pairs])
        return out

    def align(self, audio: np.ndarray, hypothesis: Hypothesis) -> list[Word]:
        self.aligned.append((len(audio), hypothesis.text))
        # speech starts after the silence the pipeline pads segments with (vad.EDGE_PAD)
        start = vad.EDGE_PAD
        return [
            Word(w, start + 0.5 * i, start + 0.5 * i + 0.4, 0.9)
            for i, w in enumerate(hypothesis.text.split())
        ]


class FakeScorer:
    def __init__(self, table: dict[str, float]) -> None:
        self.name = "fake-lm"
        self.table = table
        self.calls: list[tuple[list[str], str]] = []

    def score(self, texts: Sequence[str], context: str = "") -> list[float]:
        self.calls.append((list(texts), context))
        return [self.table.get(t, -20.0) for t in texts]

    def count_tokens(self, text: str) -> int:
        return len(text.split())


def noise(seconds: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (0.1 * rng.standard_normal(int(seconds * SAMPLE_RATE))).astype(np.float32)


def options(**kw) -> Options:
    base = dict(asr="fake-asr", lm="fake-lm", nbest=4, weights=Weights(lm_weight=1.0))
    base.update(kw)
    return make_options(**base)


@pytest.fixture
def two_spans(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    spans = [(0, 16000), (24000, 40000)]  # 0-1 s and 1.5-2.5 s of a 3 s input
    seen = []

    def fake_split(audio: np.ndarray, max_seconds: float = 30.0, **kw) -> list[tuple[int, int]]:
        seen.append(max_seconds)
        return list(spans)

    monkeypatch.setattr(vad, "split", fake_split)
    return spans


SEG1 = [("the cat sat", -1.0), ("the cat sang", -2.0)]
SEG2 = [("on the mat", -1.0), ("on a mat", -1.5)]
TABLE = {"the cat sat": -9.0, "the cat sang": -4.0, "on the mat": -3.0, "on a mat": -8.0}


def test_fakes_satisfy_protocols() -> None:
    assert isinstance(FakeRecognizer([]), Recognizer)


def test_single_segment_text_comes_from_the_rescored_choice() -> None:
    rec = FakeRecognizer([SEG1])
    lm = FakeScorer(TABLE)
    pipe = Pipeline(options(), recognizer=rec, scorer=lm)
    tr = pipe.transcribe(noise(1.0))
    assert tr.text == "the cat sang"  # -2 - 4 beats -1 - 9
    assert tr.first_pass_text == "the cat sat"
    assert len(tr.segments) == 1
    seg = tr.segments[0]
    assert (seg.start, seg.end) == (0.0, 1.0)
    assert [(w.word, w.start, w.end) for w in seg.words] == [
        ("the", 0.0, 0.4),
        ("cat", 0.5, 0.9),
        ("sang", 1.0, 1.0),  # times stay within the segment
    ]
    assert [h.text for h in seg.nbest] == ["the cat sat", "the cat sang"]
    assert rec.nbest_calls == [([PADDED], 4, None)]
    assert rec.aligned == [(PADDED, "the cat sang")]
    assert lm.calls == [(["the cat sat", "the cat sang"], "")]
    assert tr.duration == pytest.approx(1.0)
    assert tr.info["lm"] == "fake-lm"
    assert tr.info["weights"]["lm_weight"] == 1.0
    assert tr.source == "<audio>"


def test_lm_weight_small_keeps_first_pass() -> None:
    rec = FakeRecognizer([SEG1])
    tr = Pipeline(
        options(weights=Weights(lm_weight=0.1)), recognizer=rec, scorer=FakeScorer(TABLE)
    ).transcribe(noise(1.0), name="clip.wav")
    assert tr.text == "the cat sat" == tr.first_pass_text
    assert tr.source == "clip.wav"


@pytest.mark.parametrize("batch_size", [1, 8])
def test_two_segments_offsets_and_carry_over(two_spans, batch_size: int) -> None:
    rec = FakeRecognizer([SEG1, SEG2])
    lm = FakeScorer(TABLE)
    pipe = Pipeline(options(batch_size=batch_size), recognizer=rec, scorer=lm)
    tr = pipe.transcribe(noise(3.0))
    assert tr.text == "the cat sang on the mat"
    assert tr.first_pass_text == "the cat sat on the mat"
    assert [(s.start, s.end) for s in tr.segments] == [(0.0, 1.0), (1.5, 2.5)]
    assert [(w.word, w.start, w.end) for w in tr.segments[1].words] == [
        ("on", 1.5, 1.9),
        ("the", 2.0, 2.4),
        ("mat", 2.5, 2.5),
    ]
    assert tr.segments[0].words[0].start == 0.0
    # the 2nd segment is scored with the 1st segment's chosen (not first-pass) text as history
    assert [ctx for _, ctx in lm.calls] == ["", "the cat sang"]
    if batch_size == 1:
        assert rec.nbest_calls == [([PADDED], 4, None), ([PADDED], 4, None)]
    else:
        assert rec.nbest_calls == [([PADDED, PADDED], 4, None)]
    assert tr.duration == pytest.approx(3.0)


def test_prompt_and_terms_reach_both_passes(two_spans) -> None:
    rec = FakeRecognizer([SEG1, SEG2])
    lm = FakeScorer(TABLE)
    pipe = Pipeline(options(prompt="default prompt"), recognizer=rec, scorer=lm)
    pipe.transcribe(noise(3.0), prompt="Pets.", terms=["Tom", "Felix"])
    asr_prompt = rec.nbest_calls[0][2]
    assert asr_prompt.startswith("Pets.") and asr_prompt.endswith("Tom, Felix")
    assert [ctx for _, ctx in lm.calls] == [
        "Pets.\nTerms: Tom, Felix.\nTranscript:",
        "Pets.\nTerms: Tom, Felix.\nTranscript: the cat sang",
    ]


def test_options_prompt_used_when_call_gives_none() -> None:
    rec = FakeRecognizer([SEG1])
    lm = FakeScorer(TABLE)
    Pipeline(options(prompt="Cats", terms=["Felix"]), recognizer=rec, scorer=lm).transcribe(noise(1.0))
    assert rec.nbest_calls[0][2] == "Cats. Felix"
    assert lm.calls[0][1] == "Cats\nTerms: Felix.\nTranscript:"
    rec2 = FakeRecognizer([SEG1])
    Pipeline(options(prompt="Cats", asr_prompt=False), recognizer=rec2, scorer=lm).transcribe(noise(1.0))
    assert rec2.nbest_calls[0][2] is None


def test_carry_over_budget(two_spans) -> None:
    rec = FakeRecognizer([[("one two three four five", -1.0)], SEG2])
    lm = FakeScorer(TABLE)
    Pipeline(options(context_tokens=2), recognizer=rec, scorer=lm).transcribe(noise(3.0))
    assert lm.calls[1][1] == "four five"


def test_silent_audio_raises() -> None:
    rec = FakeRecognizer([SEG1])
    pipe = Pipeline(options(), recognizer=rec, scorer=FakeScorer(TABLE))
    with pytest.raises(AudioError, match="silent"):
        pipe.transcribe(np.zeros(SAMPLE_RATE, dtype=np.float32), name="quiet.wav")
    assert rec.nbest_calls == []


def test_empty_nbest_segment_is_skipped(two_spans) -> None:
    rec = FakeRecognizer([[], SEG2])
    lm = FakeScorer(TABLE)
    tr = Pipeline(options(), recognizer=rec, scorer=lm).transcribe(noise(3.0))
    assert len(tr.segments) == 1
    assert tr.text == "on the mat"
    assert tr.segments[0].start == 1.5
    assert [ctx for _, ctx in lm.calls] == [""]
    assert rec.aligned == [(PADDED, "on the mat")]


def test_blank_choice_is_dropped(two_spans) -> None:
    rec = FakeRecognizer([[("  ", -0.5)], SEG2])
    lm = FakeScorer(TABLE)
    tr = Pipeline(options(), recognizer=rec, scorer=lm).transcribe(noise(3.0))
    assert [s.text for s in tr.segments] == ["on the mat"]
    assert lm.calls[1][1] == ""  # nothing carried over from a blank segment


def test_without_scorer_keeps_am_best_and_never_loads_an_lm() -> None:
    rec = FakeRecognizer([SEG1])
    pipe = Pipeline(options(lm=None, weights=Weights()), recognizer=rec)
    assert pipe.scorer is None
    tr = pipe.transcribe(noise(1.0).astype(np.float64))
    assert tr.text == "the cat sat"
    assert tr.info["lm"] is None


def test_long_term_list_is_narrowed_per_segment() -> None:
    """Text retrieval: a list longer than max_terms is decoded with the prompt alone, the terms are
    retrieved from that decoding, and the segment is decoded again with few terms."""
    terms = ["metoprolol", "apixaban", "warfarin", "Betelgeuse", "kubectl", "atrial fibrillation"]
    rec = FakeRecognizer(
        [
            [("started on meta pro lol for her atrial fib relation", -3.0)],
            [("started on metoprolol for her atrial fibrillation", -2.0)],
        ]
    )
    scorer = FakeScorer({})
    opts = make_options(
        lm="fake", nbest=4, max_terms=3, prompt="Clinical notes", weights=Weights(lm_weight=0.5),
        term_retrieval="text",
    )  # fmt: skip
    tr = Pipeline(opts, recognizer=rec, scorer=scorer).transcribe(noise(1.0), terms=terms)
    first, second = (c[2] for c in rec.nbest_calls)
    assert first == "Clinical notes"
    assert second.startswith("Clinical notes. ")
    picked = second.removeprefix("Clinical notes. ").split(", ")
    assert set(picked) == {"metoprolol", "atrial fibrillation"}  # most similar first, at most max_terms
    assert tr.text == "started on metoprolol for her atrial fibrillation"
    assert f"Terms: {', '.join(picked)}." in scorer.calls[0][1]  # the LLM sees the same terms


def test_short_term_list_is_used_whole_in_one_pass() -> None:
    rec = FakeRecognizer([[("a b", -1.0)]])
    opts = make_options(lm=None, nbest=4, max_terms=3)
    Pipeline(opts, recognizer=rec).transcribe(noise(1.0), terms=["x", "y"])
    assert [c[2] for c in rec.nbest_calls] == ["x, y"]


class FakeCorrector:
    """Writes a fixed text for every list; the guard is the real one."""

    name = "fake-corrector"

    def __init__(self, text: str, max_change: float = 0.3) -> None:
        self.text = text
        self.max_change = max_change
        self.calls: list[tuple[list[str], str, str]] = []

    def correct(self, hypotheses, fallback=None, context=""):  # noqa: ANN001, ANN201
        from llmasr.decoding.correct import guard

        self.calls.append((list(hypotheses), fallback, context))
        return guard(self.text, hypotheses, fallback, self.max_change)


@pytest.mark.parametrize(
    ("written", "expected", "accepted"),
    [
        ("The cat sang!", "The cat sang!", 1),  # the chosen text, formatted
        ("The cat sat.", "the cat sang", 0),  # another hypothesis: the rescorer's choice stands
        ("a completely different sentence here", "the cat sang", 0),
    ],
)
def test_correction_after_rescoring_is_guarded(written: str, expected: str, accepted: int) -> None:
    rec = FakeRecognizer([SEG1])
    corrector = FakeCorrector(written)
    pipe = Pipeline(options(prompt="Pets."), recognizer=rec, scorer=FakeScorer(TABLE), corrector=corrector)
    tr = pipe.transcribe(noise(1.0))
    assert tr.text == expected
    assert corrector.calls == [(["the cat sat", "the cat sang"], "the cat sang", "Pets.\nTranscript:")]
    assert rec.aligned == [(PADDED, expected)]  # word times are those of the text written out
    assert tr.info["corrector"] == "fake-corrector" and tr.info["corrections_accepted"] == accepted


class FakeFinder:
    def __init__(self, picks: list[list[str]]) -> None:
        self.picks = list(picks)
        self.calls: list[tuple[int, list[str], int]] = []

    def top(self, audio, entities, k):  # noqa: ANN001, ANN201
        from llmasr.components.entities.retriever import Retrieved

        self.calls.append((len(audio), list(entities), k))
        return [[Retrieved(e, 1.0) for e in self.picks.pop(0)] for _ in audio]


def test_speech_term_retrieval_decodes_once_with_the_retrieved_terms() -> None:
    terms = ["metoprolol", "apixaban", "warfarin", "Betelgeuse", "kubectl", "atrial fibrillation"]
    rec = FakeRecognizer([[("started on metoprolol", -2.0)]])
    scorer = FakeScorer({})
    opts = make_options(
        lm="fake", nbest=4, max_terms=2, term_retrieval="speech", weights=Weights(lm_weight=0.5)
    )
    pipe = Pipeline(opts, recognizer=rec, scorer=scorer)
    pipe._finder = FakeFinder([["metoprolol", "warfarin"]])
    tr = pipe.transcribe(noise(1.0), terms=terms)
    assert [c[2] for c in rec.nbest_calls] == ["metoprolol, warfarin"]  # one decoding, retrieved terms
    assert pipe._finder.calls == [(1, terms, 2)]
    assert "Terms: metoprolol, warfarin." in scorer.calls[0][1]
    assert tr.text == "started on metoprolol"


def test_both_term_retrievals_interleave_speech_and_text_rankings() -> None:
    terms = ["metoprolol", "apixaban", "warfarin", "Betelgeuse", "kubectl", "atrial fibrillation"]
    # first decoding (prompt only) hears "meta pro lol" and "apixaban"; the second has the picked terms
    rec = FakeRecognizer(
        [[("started on meta pro lol and apixaban", -2.0)], [("started on metoprolol", -2.0)]]
    )
    opts = make_options(
        lm="fake",
        nbest=4,
        max_terms=3,
        term_retrieval="both",
        weights=Weights(lm_weight=0.5),
        prompt="Notes.",
    )
    pipe = Pipeline(opts, recognizer=rec, scorer=FakeScorer({}))
    pipe._finder = FakeFinder([["warfarin", "metoprolol"]])
    tr = pipe.transcribe(noise(1.0), terms=terms)
    prompts = [c[2] for c in rec.nbest_calls]
    # speech's best, text's best, then speech's second (already in) and text's second
    assert prompts == ["Notes", "Notes. warfarin, apixaban, metoprolol"]
    assert tr.text == "started on metoprolol"


def test_term_weight_prefers_the_listed_spelling() -> None:
    from llmasr.decoding.rescore import NbestRescorer
    from llmasr.decoding.terms import interleave, term_hits

    assert (
        term_hits("started on metoprolol for atrial fibrillation", ["Metoprolol", "atrial fibrillation"]) == 2
    )
    assert term_hits("started on metoprololol", ["metoprolol"]) == 0  # whole words only
    assert interleave([["a", "b"], ["b", "c", "d"]], 3) == ["a", "b", "c"] and interleave([], 3) == []
    nb = [Hypothesis("started on meta prolol", -1.0), Hypothesis("started on metoprolol", -1.5)]
    assert NbestRescorer(None, Weights(), terms=["metoprolol"]).choose(nb).text == "started on meta prolol"
    chosen = NbestRescorer(None, Weights(term_weight=1.0), terms=["metoprolol"]).choose(nb)
    assert chosen.text == "started on metoprolol"
