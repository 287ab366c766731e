"""N-best rescoring features and choice (shallow/rescore.py) and the LLM context (shallow/context.py)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import pytest

from llmasr.components.lm.base import Scorer
from llmasr.core.errors import LlmasrError
from llmasr.core.text import read_terms
from llmasr.core.types import Hypothesis
from llmasr.decoding.context import build_context, trim_history
from llmasr.decoding.rescore import Candidate, NbestRescorer, Weights, candidates


class FakeScorer:
    """Fixed LM scores per text; records every call and the context it was given."""

    def __init__(self, table: dict[str, float] | None = None, default: float = -1.0) -> None:
        self.name = "fake-lm"
        self.table = table or {}
        self.default = default
        self.calls: list[tuple[list[str], str]] = []

    def score(self, texts: Sequence[str], context: str = "") -> list[float]:
        self.calls.append((list(texts), context))
        return [self.table.get(t, self.default) for t in texts]

    def count_tokens(self, text: str) -> int:
        return len(text.split())


def hyps(*pairs: tuple[str, float]) -> list[Hypothesis]:
    return [Hypothesis(text=t, am_score=a) for t, a in pairs]


def test_fake_is_a_scorer() -> None:
    assert isinstance(FakeScorer(), Scorer)


# --- candidates -----------------------------------------------------------------------------------


def test_dedupe_keeps_best_am_score() -> None:
    nb = hyps(("The cat sat.", -1.0), ("the cat sat", -0.5), ("The Cat, sat!", -3.0), ("a dog", -2.0))
    cands = candidates(nb)
    assert [c.norm for c in cands] == ["the cat sat", "a dog"]
    assert cands[0].hypothesis is nb[1]
    assert cands[0].am == -0.5
    assert cands[0].words == 3 and cands[1].words == 2


def test_dedupe_when_best_comes_first() -> None:
    nb = hyps(("I have 3 cats.", -0.2), ("i have three cats", -0.9))
    cands = candidates(nb)
    assert len(cands) == 1
    assert cands[0].hypothesis is nb[0]
    assert cands[0].norm == "i have three cats"


def test_agreement_by_hand() -> None:
    nb = hyps(("the cat sat", -1.0), ("the cat sang", -1.2), ("a dog sang", -0.9))
    # bags: {the cat sat}, {the cat sang}, {a dog sang}
    by_norm = {c.norm: c.agreement for c in candidates(nb)}
    assert by_norm["the cat sat"] == pytest.approx((2 / 3 + 2 / 3 + 1 / 3) / 3)  # 5/9
    assert by_norm["the cat sang"] == pytest.approx((2 / 3 + 2 / 3 + 2 / 3) / 3)  # 2/3
    assert by_norm["a dog sang"] == pytest.approx((1 / 3 + 1 / 3 + 2 / 3) / 3)  # 4/9


def test_agreement_counts_duplicates_and_repeated_words() -> None:
    # 4 entries, 2 of which normalise alike: the votes are over all 4 entries
    nb = hyps(("Go go now", -1.0), ("go go now", -2.0), ("go slow", -3.0), ("no", -4.0))
    by_norm = {c.norm: c.agreement for c in candidates(nb)}
    assert by_norm["go go now"] == pytest.approx((3 / 4 + 3 / 4 + 2 / 4) / 3)
    assert by_norm["go slow"] == pytest.approx((3 / 4 + 1 / 4) / 2)
    assert by_norm["no"] == pytest.approx(1 / 4)


def test_empty_text_candidate() -> None:
    cands = candidates(hyps(("...", -1.0), ("yes", -2.0)))
    empty = next(c for c in cands if c.norm == "")
    assert empty.words == 0 and empty.agreement == 0.0


def test_candidate_total() -> None:
    c = Candidate(Hypothesis("x", -2.0), "x", am=-2.0, words=3, agreement=0.5, lm=-4.0)
    w = Weights(lm_weight=0.25, word_bonus=0.5, agreement_weight=2.0)
    assert c.total(w) == pytest.approx(-2.0 - 1.0 + 1.5 + 1.0)
    assert c.total(Weights()) == -2.0


# --- choose ---------------------------------------------------------------------------------------


def test_choose_am_only_picks_best_am() -> None:
    nb = hyps(("one two", -2.0), ("three four", -1.0))
    assert NbestRescorer(None).choose(nb).text == "three four"
    assert NbestRescorer(FakeScorer({"one two": 0.0, "three four": -50.0})).choose(nb).text == "three four"


def test_lm_weight_flips_the_choice() -> None:
    nb = hyps(("the cat sat", -1.0), ("the cat sang", -2.0))
    fake = FakeScorer({"the cat sat": -10.0, "the cat sang": -5.0})
    assert NbestRescorer(fake, Weights(lm_weight=0.1)).choose(nb).text == "the cat sat"  # -2.0 vs -2.5
    chosen = NbestRescorer(fake, Weights(lm_weight=0.5)).choose(nb)  # -6.0 vs -4.5
    assert chosen.text == "the cat sang"
    assert chosen.lm_score == -5.0
    assert chosen.score == pytest.approx(-4.5)
    assert nb[0].lm_score == -10.0 and nb[0].score == pytest.approx(-6.0)


def test_word_bonus_flips_the_choice() -> None:
    nb = hyps(("the cat", -1.0), ("the cat sat down", -2.0))
    assert NbestRescorer(None, Weights(word_bonus=0.4)).choose(nb).text == "the cat"  # -0.2 vs -0.4
    assert NbestRescorer(None, Weights(word_bonus=0.6)).choose(nb).text == "the cat sat down"  # 0.2 vs 0.4
    assert NbestRescorer(None, Weights(word_bonus=-1.0)).choose(nb).text == "the cat"


def test_agreement_weight_flips_the_choice() -> None:
    nb = hyps(("the cat sat", -1.0), ("the cat sang", -1.2), ("a dog sang", -0.9))
    assert NbestRescorer(None).choose(nb).text == "a dog sang"
    # totals with weight 3: 5/9*3-1 = 0.667, 2/3*3-1.2 = 0.8, 4/9*3-0.9 = 0.433
    assert NbestRescorer(None, Weights(agreement_weight=3.0)).choose(nb).text == "the cat sang"
    # with weight 1: -0.444, -0.533, -0.456: the first
    assert NbestRescorer(None, Weights(agreement_weight=1.0)).choose(nb).text == "the cat sat"


def test_all_weights_combined() -> None:
    nb = hyps(("a b", -1.0), ("a b c", -1.5), ("x", -0.8))
    fake = FakeScorer({"a b": -4.0, "a b c": -3.0, "x": -9.0})
    w = Weights(lm_weight=0.2, word_bonus=0.1, agreement_weight=0.5)
    r = NbestRescorer(fake, w)
    chosen = r.choose(nb)
    totals = {h.text: h.score for h in nb}
    agree = {c.norm: c.agreement for c in candidates(nb)}
    want = {
        "a b": -1.0 + 0.2 * -4.0 + 0.1 * 2 + 0.5 * agree["a b"],
        "a b c": -1.5 + 0.2 * -3.0 + 0.1 * 3 + 0.5 * agree["a b c"],
        "x": -0.8 + 0.2 * -9.0 + 0.1 * 1 + 0.5 * agree["x"],
    }
    assert totals == pytest.approx(want)
    assert chosen.text == max(want, key=want.__getitem__)


def test_choose_empty_raises() -> None:
    with pytest.raises(ValueError):
        NbestRescorer(None).choose([])


def test_lm_not_called_when_weight_zero() -> None:
    fake = FakeScorer({"b": 100.0})
    r = NbestRescorer(fake, Weights(lm_weight=0.0, word_bonus=0.5))
    assert r.choose(hyps(("a", -1.0), ("b", -2.0))).text == "a"
    assert fake.calls == []
    cands = r.featurise(hyps(("a", -1.0), ("b", -2.0)))
    assert fake.calls == [] and all(c.lm == 0.0 for c in cands)


def test_featurise_with_lm_forces_the_lm() -> None:
    fake = FakeScorer({"a": -3.0, "b": -7.0})
    r = NbestRescorer(fake, Weights())
    cands = r.featurise(hyps(("a", -1.0), ("B.", -5.0), ("b", -2.0)), with_lm=True)
    assert len(fake.calls) == 1
    texts, _ = fake.calls[0]
    assert texts == ["a", "b"]  # one batch, one text per distinct candidate (best-AM spelling)
    assert {c.norm: c.lm for c in cands} == {"a": -3.0, "b": -7.0}
    # and with_lm=False overrides a non-zero weight
    NbestRescorer(fake, Weights(lm_weight=1.0)).featurise(hyps(("a", -1.0)), with_lm=False)
    assert len(fake.calls) == 1


def test_featurise_without_scorer_leaves_lm_zero() -> None:
    cands = NbestRescorer(None, Weights(lm_weight=1.0)).featurise(hyps(("a", -1.0)), with_lm=True)
    assert cands[0].lm == 0.0
    assert NbestRescorer(None).choose(hyps(("a", -1.0)))


def test_choose_without_scorer_sets_no_lm_score() -> None:
    nb = hyps(("a", -1.0), ("b", -2.0))
    NbestRescorer(None, Weights(word_bonus=1.0)).choose(nb)
    assert nb[0].lm_score is None and nb[0].score == pytest.approx(0.0)


# --- context layout -------------------------------------------------------------------------------


def test_context_given_to_scorer_has_prompt_terms_and_history() -> None:
    fake = FakeScorer()
    r = NbestRescorer(
        fake, Weights(lm_weight=1.0), prompt="  A talk about clusters. ", terms=["Kubernetes", "kubectl"]
    )
    r.choose(hyps(("deploy it", -1.0)), history=["we start now", "then we deploy"])
    assert fake.calls[0][1] == (
        "A talk about clusters.\nTerms: Kubernetes, kubectl.\nTranscript: we start now then we deploy"
    )


def test_context_history_is_trimmed_to_budget() -> None:
    fake = FakeScorer()
    r = NbestRescorer(fake, Weights(lm_weight=1.0), prompt="Topic.", context_tokens=3)
    r.choose(hyps(("x", -1.0)), history=["one two three", "four five"])
    assert fake.calls[0][1] == "Topic.\nTranscript: three four five"


def test_context_variants() -> None:
    fake = FakeScorer()
    assert NbestRescorer(fake).context(["hello there"]) == "hello there"
    assert NbestRescorer(fake).context([]) == ""
    assert NbestRescorer(fake, terms=["Foo"]).context([]) == "Terms: Foo.\nTranscript:"
    assert NbestRescorer(fake, prompt="P", context_tokens=0).context(["old words"]) == "P\nTranscript:"
    # no scorer: no history budget at all
    assert NbestRescorer(None, prompt="P").context(["old words"]) == "P\nTranscript:"


def test_build_context_layout() -> None:
    assert build_context(None, [], "  just history ") == "just history"
    assert build_context("  ", [], "h") == "h"
    assert build_context("Prompt", ["a", "b"], "") == "Prompt\nTerms: a, b.\nTranscript:"
    assert build_context(None, ["a"], "said this") == "Terms: a.\nTranscript: said this"


# --- trim_history ---------------------------------------------------------------------------------


def words_count(text: str) -> int:
    return len(text.split())


def test_trim_history_keeps_most_recent_words() -> None:
    history = ["one two three", "four five"]
    assert trim_history(history, 3, words_count) == "three four five"
    assert trim_history(history, 100, words_count) == "one two three four five"
    assert trim_history(history, 0, words_count) == ""
    assert trim_history(history, -5, words_count) == ""
    assert trim_history([], 10, words_count) == ""


def test_trim_history_respects_budget_with_multi_token_words() -> None:
    def two_per_word(text: str) -> int:
        return 2 * len(text.split())

    history = ["alpha beta gamma delta", "epsilon zeta eta theta iota kappa"]
    full = " ".join(history).split()
    for budget in range(1, 25):
        out = trim_history(history, budget, two_per_word)
        assert two_per_word(out) <= budget
        kept = out.split()
        assert kept == full[len(full) - len(kept) :]  # a suffix: the most recent words
    assert trim_history(history, 4, two_per_word) == "iota kappa"
    assert trim_history(history, 1, two_per_word) == ""


def test_trim_history_long_history_stays_under_budget() -> None:
    calls = []

    def chars(text: str) -> int:  # ~1 token per 3 characters
        calls.append(text)
        return (len(text) + 2) // 3

    history = [f"word{i} extra{i}" for i in range(500)]
    out = trim_history(history, 50, chars)
    assert 0 < chars(out) <= 50
    assert out.endswith("word499 extra499")
    assert len(calls) < 100


# --- read_terms -----------------------------------------------------------------------------------


def test_read_terms(tmp_path: Path) -> None:
    p = tmp_path / "terms.txt"
    p.write_text(
        "# domain terms\n\nKubernetes\n  kubectl  \n# Kubernetes\nKubernetes\netcd\n\n", encoding="utf-8"
    )
    assert read_terms(p) == ["Kubernetes", "kubectl", "etcd"]
    assert read_terms(str(p)) == ["Kubernetes", "kubectl", "etcd"]


def test_read_terms_empty_file(tmp_path: Path) -> None:
    p = tmp_path / "empty.txt"
    p.write_text("", encoding="utf-8")
    assert read_terms(p) == []


def test_read_terms_missing_file(tmp_path: Path) -> None:
    p = tmp_path / "nope.txt"
    with pytest.raises(LlmasrError, match="nope.txt"):
        read_terms(p)
    with pytest.raises(LlmasrError, match="not found"):
        read_terms(tmp_path)  # a directory is not a term list


def test_read_terms_not_utf8(tmp_path: Path) -> None:
    p = tmp_path / "latin1.txt"
    p.write_bytes("caf\u00e9\nna\u00efve\n".encode("latin-1"))
    with pytest.raises(LlmasrError, match="latin1.txt.*UTF-8"):
        read_terms(p)


def test_word_count_is_of_written_words() -> None:
    """Numbers spelled out by the normaliser must not inflate the word bonus ("111751" is one word)."""
    from llmasr.decoding.rescore import written_words

    cands = {
        c.hypothesis.text: c
        for c in candidates([Hypothesis("11, 17, 51", -1.0), Hypothesis("111751.", -1.5)])
    }
    assert cands["11, 17, 51"].words == 3
    assert cands["111751."].words == 1
    assert written_words("He said - well - ok.") == 4  # the dashes are not words


def test_normalised_lm_weights_alone_run_the_lm_and_count_its_tokens() -> None:
    fake = FakeScorer({"the cat sat": -6.0, "the cat": -5.0})
    nb = hyps(("the cat", -1.0), ("the cat sat", -1.2))
    # total LM prefers "the cat"; per word (-3 vs -2.5) prefers "the cat sat"
    chosen = NbestRescorer(fake, Weights(lm_word_weight=1.0)).choose(nb)
    assert len(fake.calls) == 1 and chosen.text == "the cat sat"
    cands = NbestRescorer(fake, Weights(lm_norm_weight=1.0)).featurise(nb)
    assert all(c.lm_tokens == fake.count_tokens(c.hypothesis.text) for c in cands)
    # with only the total-LM weight, no per-token lengths are computed on the inference path
    plain = NbestRescorer(fake, Weights(lm_weight=1.0)).featurise(nb)
    assert all(c.lm_tokens == 0 for c in plain)


# --- truncation features ----------------------------------------------------------------------------


def truncated_list() -> list[Hypothesis]:
    """Beam hypotheses of "montreal forced a liner" where one stops early: the LM likes "montreal"."""
    return hyps(
        ("Montreal forced a liner.", -3.0),
        ("Montreal forced aligner.", -3.4),
        ("Montreal forced a liner", -3.6),
        ("Montreal.", -4.0),
    )


def test_truncation_features_by_hand() -> None:
    cands = {c.norm: c for c in candidates(truncated_list())}
    # median normalised length of the 4 entries (4, 3, 4, 1) -> sorted [1, 3, 4, 4][2] = 4; first pass 4
    short, full, merged = (
        cands["montreal"],
        cands["montreal forced a liner"],
        cands["montreal forced aligner"],
    )
    assert short.shortfall == pytest.approx(3 / 4) and full.shortfall == 0.0
    assert merged.shortfall == pytest.approx(1 / 4)
    # confident words (posterior >= 0.5): montreal (1.0), forced (in 3 of 4), a + liner (entries 1 and 3)
    e = [math.exp(s) for s in (-3.0, -3.4, -3.6, -4.0)]
    p_forced = (e[0] + e[1] + e[2]) / sum(e)
    p_liner = (e[0] + e[2]) / sum(e)
    assert p_liner > 0.5
    assert full.coverage == 1.0 and full.dropped == 0.0
    assert short.coverage == pytest.approx(1 / 4)
    assert short.dropped == pytest.approx(p_forced + 2 * p_liner)
    assert merged.coverage == pytest.approx(2 / 4) and merged.dropped == pytest.approx(2 * p_liner)


def test_truncated_hypothesis_with_the_best_lm_score_loses_to_the_truncation_features() -> None:
    lm = FakeScorer(
        {"Montreal.": -10.0, "Montreal forced a liner.": -22.0, "Montreal forced aligner.": -20.0}
    )
    plain = NbestRescorer(lm, Weights(lm_weight=0.5, word_bonus=0.5))
    assert plain.choose(truncated_list()).text == "Montreal."
    for w in (Weights(shortfall_weight=8.0), Weights(coverage_weight=8.0), Weights(dropped_weight=4.0)):
        w.lm_weight, w.word_bonus = 0.5, 0.5
        assert NbestRescorer(lm, w).choose(truncated_list()).text != "Montreal."


def test_no_confident_words_means_full_coverage() -> None:
    cands = candidates(hyps(("alpha", -1.0), ("beta", -1.0), ("gamma", -1.0)))
    assert all(c.coverage == 1.0 and c.dropped == 0.0 for c in cands)


def test_longer_than_expected_has_no_shortfall() -> None:
    cands = {c.norm: c for c in candidates(hyps(("a b", -1.0), ("a b c d e", -2.0), ("a b", -1.5)))}
    assert cands["a b c d e"].shortfall == 0.0 and cands["a b"].shortfall == 0.0
