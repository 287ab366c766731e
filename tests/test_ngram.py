from __future__ import annotations

import math

import pocketsphinx
import pytest

from llmasr.components.lm.base import Scorer
from llmasr.components.lm.ngram import OOV_RAW, NgramScorer, default_lm_path, tokenize
from llmasr.core.errors import ModelError


@pytest.fixture(scope="module")
def scorer() -> NgramScorer:
    return NgramScorer()


@pytest.fixture(scope="module")
def raw_lm() -> pocketsphinx.NGramModel:
    return pocketsphinx.NGramModel.readfile(default_lm_path())


def test_protocol(scorer: NgramScorer) -> None:
    assert isinstance(scorer, Scorer)
    assert scorer.name == "en-us-3gram"
    assert scorer.order == 3


def test_tokenize() -> None:
    assert tokenize("Hello, World! I don't 'quote' it.") == ["hello", "world", "i", "don't", "quote", "it"]
    assert tokenize("  ") == []


def test_count_tokens(scorer: NgramScorer) -> None:
    assert scorer.count_tokens("I scream, for ice cream!") == 5
    assert scorer.count_tokens("") == 0


def test_grammatical_beats_shuffled(scorer: NgramScorer) -> None:
    good, bad = scorer.score(["he was not an ill disposed young man", "man young disposed ill an not was he"])
    assert good > bad + 5.0
    ice, scream = scorer.score(["i like ice cream", "i like eye scream"])
    assert ice > scream


def test_scores_are_negative_log_probs(scorer: NgramScorer) -> None:
    scores = scorer.score(["the", "the cat sat on the mat", ""])
    assert all(s < 0 for s in scores)
    # longer text, more (negative) log-probability mass
    assert scores[1] < scores[0]


def test_case_and_punctuation_ignored(scorer: NgramScorer) -> None:
    a, b = scorer.score(["I scream, for ICE cream.", "i scream for ice cream"])
    assert a == pytest.approx(b)


def test_context_changes_score(scorer: NgramScorer) -> None:
    plain = scorer.score(["cream"])[0]
    after_ice = scorer.score(["cream"], context="for ice")[0]
    after_hello = scorer.score(["cream"], context="hello")[0]
    assert after_ice > plain + 2.0
    assert after_ice != after_hello
    # only the last two context words matter to a trigram
    assert scorer.score(["cream"], context="blah blah for ice")[0] == pytest.approx(after_ice)


def test_natural_log_conversion(scorer: NgramScorer, raw_lm: pocketsphinx.NGramModel) -> None:
    ln_base = math.log(1.0001)
    # argument order of NGramModel.prob: [word, previous word, word before that]
    raw_cream = raw_lm.prob(["cream", "ice", "for"])
    assert raw_cream > raw_lm.prob(["cream", "for", "ice"])
    assert scorer.logprob("cream", ["for", "ice"]) == pytest.approx(raw_cream * ln_base)
    expected = (raw_lm.prob(["the", "<s>"]) + raw_lm.prob(["</s>", "the", "<s>"])) * ln_base
    assert scorer.score(["the"])[0] == pytest.approx(expected)
    # a probability, so the natural log of something in (0, 1)
    assert 0.0 < math.exp(scorer.logprob("the", ["<s>"])) < 1.0


def test_end_of_sentence_included(scorer: NgramScorer, raw_lm: pocketsphinx.NGramModel) -> None:
    no_eos = NgramScorer(eos=False)
    with_eos, without = scorer.score(["young man"])[0], no_eos.score(["young man"])[0]
    assert with_eos == pytest.approx(without + raw_lm.prob(["</s>", "man", "young"]) * math.log(1.0001))
    assert no_eos.score([""])[0] == 0.0


def test_oov(scorer: NgramScorer, raw_lm: pocketsphinx.NGramModel) -> None:
    assert raw_lm.prob(["zzqxw"]) == OOV_RAW
    raw = NgramScorer(oov_logprob=None)
    with_oov, without = raw.score(["the zzqxw said", "the man said"])
    assert with_oov < without - 1000  # NGramModel's "zero" probability
    soft_score = scorer.score(["the zzqxw said"])[0]  # default: a finite -20 nats per OOV word
    assert math.isfinite(soft_score) and -60.0 < soft_score < -20.0


def test_missing_model() -> None:
    with pytest.raises(ModelError):
        NgramScorer("/nonexistent/model.lm.bin")
