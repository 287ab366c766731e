"""Term retrieval: which terms of a long list the first pass may have heard."""

from __future__ import annotations

from llmasr.decoding.terms import TermRetriever

TERMS = [
    "metoprolol",
    "apixaban",
    "warfarin",
    "heparin",
    "Betelgeuse",
    "kubectl",
    "atrial fibrillation",
    "CT",
]


def test_misheard_terms_are_found_and_unrelated_ones_not() -> None:
    r = TermRetriever(TERMS)
    got = r.top(["The patient was started on meta pro lol for her atrial fib relation."], k=5)
    assert got[:2] == ["metoprolol", "atrial fibrillation"] or set(got[:2]) == {
        "metoprolol",
        "atrial fibrillation",
    }
    assert "Betelgeuse" not in got and "kubectl" not in got


def test_all_hypotheses_count_and_k_limits() -> None:
    r = TermRetriever(TERMS)
    hyps = ["we switched him from war farin", "we switched him to a pick saban"]
    got = r.top(hyps, k=2)
    assert set(got) == {"warfarin", "apixaban"}
    assert len(r.top(hyps, k=1)) == 1
    assert r.top(["completely unrelated words here"], k=5) == []


def test_scores_are_similarities() -> None:
    r = TermRetriever(["kubectl"])
    assert r.scores(["kubectl"]) == [1.0]
    assert 0.0 <= r.scores(["cube control"])[0] < 1.0
    assert r.scores([""]) == [0.0]
    assert TermRetriever(["", "!!"]).terms == []  # nothing spellable
