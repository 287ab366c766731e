from __future__ import annotations

from pathlib import Path

from llmasr.core.metrics import normalize
from llmasr.data.text import build_corpus, build_text, clean_sentence, split_of, split_sentences


def _many(n: int) -> list[str]:
    words = "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima".split()
    return [
        f"The {words[i % 12]} {words[(i // 12) % 12]} {words[(i // 144) % 12]} went home." for i in range(n)
    ]


def test_splits_are_disjoint_and_deterministic() -> None:
    texts = _many(1500)
    a = build_corpus({"x": texts}, dev_fraction=0.1, test_fraction=0.1)
    keys = {s: {normalize(t) for t in a[s]} for s in a}
    assert (
        not keys["train"] & keys["dev"]
        and not keys["train"] & keys["test"]
        and not keys["dev"] & keys["test"]
    )
    assert sum(len(v) for v in a.values()) == 1500
    assert 50 < len(a["dev"]) < 250 and 50 < len(a["test"]) < 250
    assert a == build_corpus({"x": list(reversed(texts))}, dev_fraction=0.1, test_fraction=0.1)
    for s, items in a.items():
        assert all(split_of(normalize(t), 0.1, 0.1) == s for t in items)


def test_dedupe_after_normalisation_and_exclusion() -> None:
    reports: dict = {}
    out = build_corpus(
        {
            "a": ["The cat sat on the mat.", "The cat sat, on the mat!", "A dog ran in the park."],
            "b": ["The Cat sat on the mat?", "Birds sing in the early morning.", "STOP SHOUTING AT ME NOW."],
        },
        exclude={normalize("Birds sing in the early morning.")},
        reports=reports,
    )
    flat = [s for v in out.values() for s in v]
    assert sorted(flat) == ["A dog ran in the park.", "The cat sat on the mat."]
    assert reports["a"].duplicates == 1 and reports["b"].duplicates == 1  # across sources too
    assert reports["b"].rejected == 1  # all caps
    assert reports["b"].excluded == 1


def test_numbers_spelled_out_and_readable() -> None:
    assert clean_sentence("He paid $5 for 3 apples in 1984.") == (
        "He paid five dollars for three apples in nineteen eighty four."
    )
    assert (
        clean_sentence("It was the 21st time, 50% of it!")
        == "It was the twenty first time, fifty percent of it!"
    )
    assert clean_sentence("We met at 10:30 near the station.") is None  # times are ambiguous to read


def test_filters() -> None:
    assert clean_sentence("Too short.") is None
    assert clean_sentence("Just four words here.", min_words=4) is not None
    assert clean_sentence("Just four words here.", min_words=5) is None
    assert clean_sentence(" ".join(["word"] * 31).capitalize() + ".", max_words=30) is None
    assert clean_sentence("Visit http://example.com for more.") is None
    assert clean_sentence("no capital at the start here.") is None
    assert clean_sentence("No final punctuation in this one") is None
    assert split_sentences("Mr. Smith went to Washington. He met R. A. Heinlein there.") == [
        "Mr. Smith went to Washington.",
        "He met R. A. Heinlein there.",
    ]


def test_build_text_with_missing_source(tmp_path: Path) -> None:
    fortunes = tmp_path / "fortunes"
    fortunes.mkdir()
    (fortunes / "wisdom").write_text(
        "A lifetime isn't nearly long enough to figure it out.\n%\n"
        "Be kind to your neighbours. They know where you live.\n\t\t-- Anonymous\n%\n",
        encoding="utf-8",
    )
    logs: list[str] = []
    report = build_text(
        tmp_path / "out",
        sources=["fortunes", "nlp-corpus"],
        paths={"fortunes": fortunes, "nlp-corpus": tmp_path / "missing.tgz"},
        dev_fraction=0.0,
        test_fraction=0.0,
        log=logs.append,
    )
    assert not report.sources["nlp-corpus"].available and "not found" in report.sources["nlp-corpus"].message
    assert logs and "nlp-corpus" in logs[0]
    train = (tmp_path / "out" / "train.txt").read_text(encoding="utf-8").splitlines()
    assert sorted(train) == [
        "A lifetime isn't nearly long enough to figure it out.",
        "Be kind to your neighbours.",
        "They know where you live.",
    ]
    assert report.splits["train"].sentences == 3 and report.vocabulary > 10
    assert (tmp_path / "out" / "report.json").is_file()


def test_currency_before_a_comma() -> None:
    assert clean_sentence("Fair prices, around $6, unlike the others.") == (
        "Fair prices, around six dollars, unlike the others."
    )
    assert (
        clean_sentence("It cost $1,500 in all today.")
        == "It cost one thousand five hundred dollars in all today."
    )
