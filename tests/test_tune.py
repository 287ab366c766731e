"""Weight search over cached features (shallow/tune.py) on hand-made items."""

from __future__ import annotations

import pytest

from llmasr.core.metrics import normalize, word_errors
from llmasr.decoding.rescore import Candidate, Weights
from llmasr.decoding.tune import TuneItem, grid_search, total_errors


def cand(text: str, am: float, lm: float = 0.0, agreement: float = 0.0) -> Candidate:
    from llmasr.core.types import Hypothesis

    norm = normalize(text)
    return Candidate(Hypothesis(text, am), norm, am=am, words=len(norm.split()), agreement=agreement, lm=lm)


def single(id: str, reference: str, cands: list[Candidate], precompute: bool = True) -> TuneItem:
    item = TuneItem(id=id, reference=reference, segments=[cands])
    if precompute:
        item.errors = [word_errors(reference, c.hypothesis.text)[0] for c in cands]
    return item


def lm_item() -> TuneItem:
    # AM prefers the wrong text; lm_weight 0.2 fixes it (-3.0 vs -2.7), 0.1 does not (-2.0 vs -2.1)
    return single(
        "lm",
        "the cat sat on the mat",
        [cand("the cat sat on a mat", -1.0, lm=-10.0), cand("the cat sat on the mat", -1.5, lm=-6.0)],
    )


def bonus_item() -> TuneItem:
    # AM prefers the truncated text; word_bonus 1.0 fixes it (3.0 vs 3.2), 0.5 does not (1.0 vs 0.7)
    return single(
        "bonus",
        "turn the lights off now",
        [cand("turn the lights off", -1.0, lm=-5.0), cand("turn the lights off now", -1.8, lm=-5.0)],
    )


def agreement_item() -> TuneItem:
    # agreement_weight 2.0 fixes it (-0.4 vs -0.3), 1.0 does not (-0.7 vs -0.9)
    return single(
        "agree",
        "call me tomorrow",
        [cand("call me to borrow", -1.0, agreement=0.3), cand("call me tomorrow", -1.5, agreement=0.6)],
    )


def test_am_only_is_wrong_and_lm_weight_fixes_it() -> None:
    items = [lm_item()]
    assert total_errors(items, Weights()) == (1, 6)
    best, wer, results = grid_search(
        items, lm_weights=(0.0, 0.1, 0.2, 0.5), word_bonuses=(0.0,), agreement_weights=(0.0,)
    )
    assert best == Weights(lm_weight=0.2, word_bonus=0.0, agreement_weight=0.0)
    assert wer == 0.0
    assert [(r[0].lm_weight, r[1]) for r in results] == [(0.0, 1 / 6), (0.1, 1 / 6), (0.2, 0.0), (0.5, 0.0)]


def test_word_bonus_fixes_it() -> None:
    best, wer, _ = grid_search(
        [bonus_item()], lm_weights=(0.0,), word_bonuses=(0.0, 0.5, 1.0, 2.0), agreement_weights=(0.0,)
    )
    assert best.word_bonus == 1.0 and wer == 0.0


def test_agreement_weight_fixes_it() -> None:
    # weight 1: -0.7 vs -0.9 (wrong); weight 2: -0.4 vs -0.3 (right)
    item = agreement_item()
    assert total_errors([item], Weights(agreement_weight=1.0))[0] > 0
    best, wer, _ = grid_search(
        [item], lm_weights=(0.0,), word_bonuses=(0.0,), agreement_weights=(0.0, 1.0, 2.0, 4.0)
    )
    assert best.agreement_weight == 2.0 and wer == 0.0


def test_ties_go_to_smallest_weights() -> None:
    # all candidates have the same length: the word bonus never matters, so it must come out 0;
    # lm weights 0.2, 0.5, 1.0 all fix it: the smallest wins, whatever the grid order
    best, wer, results = grid_search(
        [lm_item()],
        lm_weights=(1.0, 0.5, 0.2, 0.0),
        word_bonuses=(2.0, -0.5, 0.5, 0.0),
        agreement_weights=(4.0, 0.0),
    )
    assert best == Weights(lm_weight=0.2, word_bonus=0.0, agreement_weight=0.0)
    assert wer == 0.0
    assert len(results) == 4 * 4 * 2


def test_tie_on_negative_bonus_goes_to_smaller_magnitude() -> None:
    # a negative word bonus is needed: the long wrong text must lose; -0.5 and -1.0 both do it
    item = single("neg", "yes", [cand("yes yes yes", -1.0), cand("yes", -1.5)])
    best, wer, _ = grid_search(
        [item], lm_weights=(0.0,), word_bonuses=(-1.0, -0.5, -0.1, 0.0), agreement_weights=(0.0,)
    )
    # -0.1: -1.3 vs -1.6 (wrong); -0.5: -2.5 vs -2.0 (right); -1.0 right too
    assert best.word_bonus == -0.5 and wer == 0.0


def test_several_items_need_several_weights() -> None:
    items = [lm_item(), bonus_item()]
    assert total_errors(items, Weights()) == (2, 11)
    best, wer, results = grid_search(
        items, lm_weights=(0.0, 0.1, 0.2), word_bonuses=(0.0, 0.5, 1.0), agreement_weights=(0.0,)
    )
    assert best == Weights(lm_weight=0.2, word_bonus=1.0, agreement_weight=0.0)
    assert wer == 0.0
    by_w = {(r[0].lm_weight, r[0].word_bonus): r[1] for r in results}
    assert by_w[(0.2, 0.0)] == pytest.approx(1 / 11)
    assert by_w[(0.0, 1.0)] == pytest.approx(1 / 11)
    assert by_w[(0.0, 0.0)] == pytest.approx(2 / 11)


def test_wer_hand_computed_with_unfixable_and_empty_items() -> None:
    empty = TuneItem(id="empty", reference="a b c")  # no segments: every reference word is deleted
    items = [lm_item(), bonus_item(), empty]
    best, wer, _ = grid_search(items, lm_weights=(0.0, 0.2), word_bonuses=(0.0,), agreement_weights=(0.0,))
    assert best.lm_weight == 0.2
    assert wer == pytest.approx((0 + 1 + 3) / (6 + 5 + 3))


def test_multi_segment_item_joins_the_chosen_texts() -> None:
    item = TuneItem(
        id="multi",
        reference="hello world good morning",
        segments=[
            [cand("hello word", -1.0, lm=-5.0), cand("hello world", -1.2, lm=-3.0)],
            [cand("good morning", -1.0, lm=-2.0), cand("could morning", -1.1, lm=-9.0)],
        ],
    )
    assert item.errors is None
    assert total_errors([item], Weights()) == (1, 4)
    assert total_errors([item], Weights(lm_weight=0.2)) == (0, 4)
    best, wer, _ = grid_search(
        [item], lm_weights=(0.0, 0.05, 0.2), word_bonuses=(0.0,), agreement_weights=(0.0,)
    )
    assert best.lm_weight == 0.2 and wer == 0.0


def test_multi_segment_errors_span_segment_boundaries() -> None:
    # the wrong choice in segment 2 is only wrong when the texts are joined and aligned as a whole
    item = TuneItem(
        id="multi2",
        reference="one two three four",
        segments=[[cand("one two", -1.0)], [cand("three", -1.0, lm=-1.0), cand("three four", -1.4, lm=-0.5)]],
    )
    assert total_errors([item], Weights()) == (1, 4)
    assert total_errors([item], Weights(lm_weight=1.0)) == (0, 4)


def test_precomputed_errors_are_used_for_single_segment_items() -> None:
    item = lm_item()
    item.errors = [7, 3]  # deliberately not the true counts
    assert total_errors([item], Weights()) == (7, 6)
    assert total_errors([item], Weights(lm_weight=0.5)) == (3, 6)


def test_length_normalised_features_and_linearity_in_lm() -> None:
    from llmasr.core.types import Hypothesis

    c = Candidate(Hypothesis("a b", -2.0), "a b", am=-2.0, words=2, lm=-6.0, am_tokens=4, lm_tokens=3)
    w = Weights(lm_weight=0.5, am_norm_weight=2.0, lm_norm_weight=3.0, lm_word_weight=1.0)
    # -2 + 2 * (-2 / 4) + 0.5 * -6 + 3 * (-6 / 3) + 1 * (-6 / 2)
    assert c.total(w) == pytest.approx(-2.0 - 1.0 - 3.0 - 6.0 - 3.0)
    assert c.total(w) == pytest.approx(c.without_lm(w) + c.lm_coefficient(w) * c.lm)


def norm_item(i: int = 0) -> TuneItem:
    """Same words, same LM: only the recogniser's per-token score prefers the right text."""
    from llmasr.core.types import Hypothesis

    wrong = Candidate(Hypothesis("a x", -2.0), "a x", am=-2.0, words=2, am_tokens=2)
    right = Candidate(Hypothesis("a b", -2.2), "a b", am=-2.2, words=2, am_tokens=4)
    return single(f"norm{i}", "a b", [wrong, right])


def test_refine_finds_a_normalised_weight_the_basic_grid_lacks() -> None:
    from llmasr.decoding.tune import fit, refine

    items = [norm_item()]
    basic, basic_wer = fit(items, "basic", with_lm=True)
    assert basic_wer == 0.5
    w, wer = refine(items, basic, {"am_norm_weight": (0.0, 0.25, 0.5, 1.0)})
    assert wer == 0.0 and w.am_norm_weight == 0.5  # the smallest that fixes it


def test_auto_features_use_extra_weights_only_when_cross_validation_says_so() -> None:
    from llmasr.decoding.tune import tune_weights

    needs_norm = tune_weights([norm_item(i) for i in range(10)], with_lm=False, folds=5)
    assert needs_norm.features == "all" and needs_norm.wer == 0.0
    assert needs_norm.cv_wer["all"] == 0.0 < needs_norm.cv_wer["basic"]
    plain = tune_weights([lm_item() for _ in range(10)], with_lm=True, folds=5)
    assert plain.features == "basic" and plain.weights.am_norm_weight == 0.0 and plain.wer == 0.0
    with pytest.raises(Exception, match="unknown feature set"):
        tune_weights([lm_item()], with_lm=True, features="some")


def truncation_item(i: int = 0) -> TuneItem:
    """The LM and the recogniser prefer a hypothesis that stops early; only its shortfall gives it away."""
    from llmasr.core.types import Hypothesis
    from llmasr.decoding.rescore import candidates

    nbest = [Hypothesis("please call stella", -2.0), Hypothesis("please call stella now", -2.2),
             Hypothesis("please call stella now", -2.3), Hypothesis("please", -1.5)]  # fmt: skip
    cands = candidates(nbest)
    for c in cands:
        c.lm = {"please": -3.0}.get(c.norm, -9.0)
    return single(f"t{i}", "please call stella now", cands)


def insertion_item(i: int = 0) -> TuneItem:
    """A longer hypothesis (an inserted word) that any word bonus of 0.2 or more would pick."""
    from llmasr.core.types import Hypothesis
    from llmasr.decoding.rescore import candidates

    nbest = [
        Hypothesis("turn it off", -1.0),
        Hypothesis("turn it off off", -1.2),
        Hypothesis("turn it", -3.0),
    ]
    return single(f"i{i}", "turn it off", candidates(nbest))


def test_auto_features_choose_truncation_features_when_a_short_pick_wins() -> None:
    from llmasr.decoding.tune import tune_weights

    # insertion items keep the word bonus under 0.2, too small to rescue the truncated ones
    items = [truncation_item(i) if i % 2 else insertion_item(i) for i in range(10)]
    result = tune_weights(items, with_lm=True, folds=5)
    assert result.cv_wer["truncation"] < result.cv_wer["basic"]
    assert result.features == "truncation" and result.wer == 0.0
    w = result.weights
    assert w.shortfall_weight or w.coverage_weight or w.dropped_weight
    assert len(result.held_out) == 10 and sum(e for e, _ in result.held_out) == 0


def test_first_pass_lists_round_trip(tmp_path) -> None:
    from llmasr.core.errors import LlmasrError
    from llmasr.core.types import Hypothesis, Word
    from llmasr.decoding.tune import Decoded, read_decoded, write_decoded

    lists = [
        Decoded("u1", "ten of clubs", "cards",
                [[Hypothesis("10 of clubs", -1.5, [7, 8], [Word("10", 0.0, 0.3, 0.9)], other_am=-2.5,
                             cross_agreement=0.5)]], [["clubs"]]),
        Decoded("u2", "", None, [], []),
    ]  # fmt: skip
    write_decoded(lists, tmp_path / "lists.jsonl", {"asr": "whisper-tiny.en", "nbest": 8})
    assert read_decoded(tmp_path / "lists.jsonl") == ({"asr": "whisper-tiny.en", "nbest": 8}, lists)
    (tmp_path / "bad.jsonl").write_text("{not json\n", encoding="utf-8")
    with pytest.raises(LlmasrError, match="bad.jsonl: not a file of first-pass lists"):
        read_decoded(tmp_path / "bad.jsonl")


def test_oracle_is_the_best_candidate_per_segment() -> None:
    from llmasr.decoding.tune import oracle_wer

    one = lm_item()  # best candidate exact: 0 errors of 6
    two = TuneItem(
        id="two",
        reference="call me tomorrow turn the lights off now",
        segments=[
            [cand("call me to borrow", -1.0), cand("call me tomorrow", -1.5)],
            [cand("turn the lights off", -1.0), cand("turn the light off now", -1.8)],
        ],
    )  # best: "call me tomorrow" + either second segment, 1 error of 8
    assert oracle_wer([one]) == 0.0
    assert oracle_wer([two]) == pytest.approx(1 / 8)
    assert oracle_wer([one, two]) == pytest.approx(1 / 14)
    assert oracle_wer([one, two]) <= total_errors([one, two], Weights())[0] / 14


def test_tune_from_kept_lists_checks_their_settings(tmp_path) -> None:
    """`llmasr tune --lists` tunes from a kept file without decoding, and refuses one decoded with other
    settings or holding utterances the manifest lacks."""
    import json
    import subprocess
    import sys

    from llmasr.core.types import Hypothesis
    from llmasr.decoding.tune import Decoded, write_decoded

    refs = {f"u{i}": "turn the lights off now" for i in range(6)}
    manifest = tmp_path / "dev.jsonl"
    manifest.write_text(
        "".join(json.dumps({"id": k, "audio": f"{k}.wav", "text": t}) + "\n" for k, t in refs.items()),
        encoding="utf-8",
    )
    decoded = [
        Decoded(k, t, None, [[Hypothesis("turn the lights off", -1.0), Hypothesis(t, -1.8)]], [[]])
        for k, t in refs.items()
    ]
    settings = {"asr": "whisper-tiny.en", "nbest": 8, "prompt": None, "terms": [], "asr_prompt": True,
                "max_terms": 12, "term_retrieval": "speech"}  # fmt: skip
    lists = tmp_path / "lists.jsonl"
    write_decoded(decoded, lists, settings)

    def tune(*args: str) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "llmasr", "tune", str(manifest), "--lm", "none", "--lists", str(lists)]
        return subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=300)

    ok = tune("--out", str(tmp_path / "p.yaml"), "--folds", "3")
    assert ok.returncode == 0, ok.stderr
    assert "word_bonus=1" in ok.stdout and "oracle of the lists: 0.00%" in ok.stdout
    other = tune("--out", str(tmp_path / "q.yaml"), "--asr", "whisper-base")
    assert other.returncode == 1 and "decoded with other settings: asr 'whisper-tiny.en'" in other.stderr
    assert "Traceback" not in other.stderr and not (tmp_path / "q.yaml").exists()
    write_decoded([*decoded, Decoded("stranger", "x", None, [], [])], lists, settings)
    stranger = tune("--out", str(tmp_path / "r.yaml"))
    assert stranger.returncode == 1 and "1 utterance(s) not in" in stranger.stderr
