from __future__ import annotations

import math

import pytest

from llmasr.core.metrics import (
    WerCounts,
    counts,
    entity_recall,
    normalize,
    number_to_words,
    oracle_wer,
    rtfx,
    wer,
    word_errors,
    year_to_words,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Hello, World!", "hello world"),
        ("Don't stop -- it's 'quoted' text.", "don't stop it's quoted text"),
        ("Don\u2019t", "don't"),
        ("the students' books", "the students books"),
        ("state-of-the-art", "state of the art"),
        ("  many\t spaces\n here ", "many spaces here"),
        ("1,000 people", "one thousand people"),
        ("1,234,567", "one million two hundred thirty four thousand five hundred sixty seven"),
        ("in 1984", "in nineteen eighty four"),
        ("in 1905 and 1900", "in nineteen oh five and nineteen hundred"),
        ("2005 2010 2024", "two thousand five twenty ten twenty twenty four"),
        ("3.5 and 0.25", "three point five and zero point two five"),
        (
            "21st 2nd 3rd 12th 100th 20th 1st",
            "twenty first second third twelfth one hundredth twentieth first",
        ),
        ("50%", "fifty percent"),
        ("3.5% growth.", "three point five percent growth"),
        ("the 1990s", "the nineteen nineties"),
        ("0 7 13 40 99 101 110", "zero seven thirteen forty ninety nine one hundred one one hundred ten"),
        ("10000", "ten thousand"),
        ("007", "zero zero seven"),
        ("rock & roll", "rock and roll"),
        ("3:30", "three thirty"),
        ("Café Ünïcode", "café ünïcode"),
        ("", ""),
        ("?!...", ""),
    ],
)
def test_normalize(text, expected):
    assert normalize(text) == expected


def test_normalize_is_idempotent():
    text = "On March 21st, 1984, 3.5% of 1,000 people said: don't!"
    once = normalize(text)
    assert normalize(once) == once
    assert once == (
        "on march twenty first nineteen eighty four three point five percent "
        "of one thousand people said don't"
    )


def test_number_words():
    assert number_to_words(0) == "zero"
    assert number_to_words(1_000_001) == "one million one"
    assert number_to_words(2_000_000_000) == "two billion"
    assert year_to_words(1066) == "one thousand sixty six"
    assert year_to_words(1776) == "seventeen seventy six"


def test_word_errors_by_hand():
    # ref: the cat sat on the mat (6) / hyp: the cat sit on mat today -> 1 sub, 1 del, 1 ins
    assert word_errors("The cat sat on the mat.", "the cat sit on mat today") == (3, 6)
    assert word_errors("hello", "Hello!") == (0, 1)
    assert word_errors("in 1984", "in nineteen eighty-four") == (0, 4)


def test_counts_kinds():
    c = counts(["a b c d"], ["a x c d e"])
    assert (c.substitutions, c.deletions, c.insertions, c.ref_words) == (1, 0, 1, 4)
    assert c.errors == 2 and c.wer == 0.5


def test_corpus_wer_is_pooled_not_averaged():
    refs = ["one two three four", "five six"]
    hyps = ["one two three four", "five"]
    # 1 error over 6 words, not the mean of 0 and 0.5
    assert wer(refs, hyps) == pytest.approx(1 / 6)


def test_wer_empty_references():
    assert wer([""], [""]) == 0.0
    assert wer(["", "a b"], ["x y", "a b"]) == pytest.approx(2 / 2)  # two insertions over two words
    assert wer(["", ""], ["", "x"]) == 1.0  # no reference words: the insertion count
    assert wer(["a b"], [""]) == 1.0
    assert wer([], []) == 0.0
    assert word_errors("", "hello there") == (2, 0)
    assert word_errors("...", "") == (0, 0)


def test_wer_length_mismatch():
    with pytest.raises(ValueError):
        wer(["a"], ["a", "b"])


def test_entity_recall():
    hyp = "We met Dr. O'Brien at Kubernetes-Con in 2019 with Ann."
    entities = ["O'Brien", "kubernetes con", "Ann", "Anna", "2019", "met Dr", "brien", "..."]
    # found: o'brien, kubernetes con, ann, 2019 (twenty nineteen), met dr (both "met doctor")
    # not found: anna, brien (only inside o'brien); "..." normalises to nothing and is not counted
    assert entity_recall(entities, hyp) == (5, 7)
    assert entity_recall([], hyp) == (0, 0)


def test_oracle_wer():
    refs = ["the cat sat", "a b c d"]
    nbests = [["the hat sat", "the cat sat", "cat sat"], ["a b", "a x c d"]]
    # utterance 1: 0 errors, utterance 2: best is 1 error -> 1 / 7
    assert oracle_wer(refs, nbests) == pytest.approx(1 / 7)
    assert oracle_wer(["a b"], [[]]) == 1.0
    # the oracle is never worse than the first entry
    assert oracle_wer(refs, nbests) <= wer(refs, [n[0] for n in nbests])


def test_wer_counts_add():
    total = WerCounts(1, 2, 3, 10) + WerCounts(1, 0, 0, 5)
    assert total == WerCounts(2, 2, 3, 15)
    assert total.wer == pytest.approx(7 / 15)


def test_rtfx():
    assert rtfx(60.0, 2.0) == 30.0
    assert rtfx(10.0, 0.0) == math.inf
    assert rtfx(0.0, 0.0) == 0.0
    with pytest.raises(ValueError):
        rtfx(-1.0, 1.0)


def test_breakdown_groups_by_kind_not_parameters() -> None:
    from llmasr.apps.evaluate import Report, Row, group_label

    assert group_label("augmentation", "speed1.1+rir:sim3-rt0.63+gain-2.2dB") == "gain+rir+speed"
    assert group_label("augmentation", "rir:sim4-rt0.40+gain+1.6dB") == "gain+rir"
    assert group_label("augmentation", None) == "none"
    assert group_label("voice", "espeak:en-us@s0.94p63") == "espeak:en-us"
    rows = [
        Row("a", "x y", ref_words=2, errors=1, voice="flite:slt"),
        Row("b", "x y", ref_words=2, errors=0, voice="flite:slt"),
        Row("c", "x y z w", ref_words=4, errors=2, voice="espeak:en-us@s1.0p50"),
    ]
    by = Report(rows=rows).breakdown("voice")
    assert by["flite:slt"]["wer"] == 0.25 and by["flite:slt"]["utterances"] == 2
    assert by["espeak:en-us"]["wer"] == 0.5


def test_titles_are_spelled_out_as_said() -> None:
    """References spelled by hand ("MISTER") and recognisers that abbreviate ("Mr.") must agree."""
    from llmasr.core.metrics import normalize, wer

    assert (
        normalize("And Mr. John Dashwood")
        == normalize("AND MISTER JOHN DASHWOOD")
        == ("and mister john dashwood")
    )
    assert normalize("Mrs. Smith and Ms. Lee") == "missus smith and miz lee"
    assert normalize("Dr. Watson") == normalize("doctor watson") == "doctor watson"
    assert wer(["he met mister brown"], ["He met Mr. Brown."]) == 0.0
