"""Option layering and profiles (config.py); the shipped layer is controlled with monkeypatch."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from llmasr.core.errors import LlmasrError
from llmasr.decoding import options as config
from llmasr.decoding.options import (
    DEFAULT_ASR,
    DEFAULT_LM,
    Options,
    read_profile,
    resolve_options,
    write_profile,
)
from llmasr.decoding.rescore import Weights


def write(path: Path, data: object) -> Path:
    path.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data, encoding="utf-8")
    return path


@pytest.fixture
def shipped(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """Set the shipped profile's content (None: no shipped profile); records the (asr, lm) asked for."""

    class Shipped:
        data: object = None
        asked: list[tuple[str, str | None]] = []
        path = tmp_path / "shipped" / "pair.yaml"

    Shipped.asked = []
    Shipped.path.parent.mkdir()

    def fake(asr: str, lm: str | None) -> Path | None:
        Shipped.asked.append((asr, lm))
        if Shipped.data is None:
            return None
        write(Shipped.path, Shipped.data)
        return Shipped.path

    monkeypatch.setattr(config, "shipped_profile", fake)
    return Shipped


def test_dataclass_defaults(shipped) -> None:
    opts = resolve_options(lm="none")
    assert opts == Options(lm=None, profile=None)
    assert opts.asr == DEFAULT_ASR
    assert opts.weights == Weights()
    assert shipped.asked == [(DEFAULT_ASR, None)]


def test_untuned_lm_gets_generic_weights(shipped) -> None:
    """An LM with no shipped profile (an HF id, a folder) still rescores, with the generic weights."""
    opts = resolve_options(lm="someone/some-llm")
    assert opts.lm == "someone/some-llm"
    assert opts.weights == Weights(**config.UNTUNED_LM_WEIGHTS)
    assert opts.weights.lm_weight > 0
    assert resolve_options(lm="someone/some-llm", weights={"lm_weight": 0.7}).weights.lm_weight == 0.7


def test_shipped_profile_layer(shipped) -> None:
    shipped.data = {"nbest": 5, "weights": {"lm_weight": 0.3, "word_bonus": 1.0}, "tuned": {"wer": 0.1}}
    opts = resolve_options()
    assert opts.nbest == 5
    assert opts.weights == Weights(lm_weight=0.3, word_bonus=1.0, agreement_weight=0.0)
    assert opts.profile == str(shipped.path)
    assert opts.context_tokens == Options().context_tokens


def test_user_profile_beats_shipped_and_weights_merge(shipped, tmp_path: Path) -> None:
    shipped.data = {"nbest": 5, "context_tokens": 32, "weights": {"lm_weight": 0.3, "word_bonus": 1.0}}
    user = write(tmp_path / "user.yaml", {"nbest": 4, "weights": {"word_bonus": 2.0}, "tuned": {"x": 1}})
    opts = resolve_options(str(user))
    assert opts.nbest == 4
    assert opts.context_tokens == 32
    assert opts.weights == Weights(lm_weight=0.3, word_bonus=2.0, agreement_weight=0.0)
    assert opts.profile == str(user)


def test_explicit_overrides_beat_everything(shipped, tmp_path: Path) -> None:
    shipped.data = {"nbest": 5, "weights": {"lm_weight": 0.3, "word_bonus": 1.0}}
    user = write(tmp_path / "user.yaml", {"nbest": 4, "prompt": "from user", "weights": {"word_bonus": 2.0}})
    opts = resolve_options(
        str(user), nbest=3, weights={"agreement_weight": 4.0}, prompt=None, terms=["Foo"], threads=None
    )
    assert opts.nbest == 3
    assert opts.prompt == "from user"  # None means "not given"
    assert opts.terms == ["Foo"]
    assert opts.threads == Options().threads
    assert opts.weights == Weights(lm_weight=0.3, word_bonus=2.0, agreement_weight=4.0)


def test_explicit_weights_object_replaces_profile_weights(shipped) -> None:
    shipped.data = {"weights": {"lm_weight": 0.3, "word_bonus": 1.0}}
    opts = resolve_options(weights=Weights(agreement_weight=2.0))
    assert opts.weights == Weights(lm_weight=0.0, word_bonus=0.0, agreement_weight=2.0)


def test_shipped_lookup_uses_the_resolved_pair(shipped, tmp_path: Path) -> None:
    user = write(tmp_path / "user.yaml", {"asr": "whisper-base", "lm": "smollm2-135m-instruct"})
    opts = resolve_options(str(user))
    assert shipped.asked == [("whisper-base", "smollm2-135m-instruct")]
    assert (opts.asr, opts.lm) == ("whisper-base", "smollm2-135m-instruct")
    shipped.asked.clear()
    resolve_options(str(user), lm="en-us-3gram")
    assert shipped.asked == [("whisper-base", "en-us-3gram")]


@pytest.mark.parametrize("lm", ["none", "None", "NONE"])
def test_lm_none_turns_the_lm_off(shipped, lm: str) -> None:
    shipped.data = {"weights": {"lm_weight": 0.5, "word_bonus": 1.0}}
    opts = resolve_options(lm=lm, weights={"lm_weight": 0.9})
    assert opts.lm is None
    assert opts.weights.lm_weight == 0.0
    assert opts.weights.word_bonus == 1.0
    assert shipped.asked == [(DEFAULT_ASR, None)]


def test_lm_none_from_user_profile(shipped, tmp_path: Path) -> None:
    user = write(tmp_path / "user.yaml", {"lm": None, "weights": {"lm_weight": 0.5}})
    opts = resolve_options(str(user))
    assert opts.lm is None and opts.weights.lm_weight == 0.0


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ({"nbest": 3, "bogus_key": 1, "another": 2}, "unknown profile keys: another, bogus_key"),
        ("- a\n- b\n", "a profile is a YAML mapping"),
        ("nbest: [1, 2\nweights: {", "not a valid YAML profile"),
        ("just a string\n", "a profile is a YAML mapping"),
    ],
)
def test_bad_user_profile(shipped, tmp_path: Path, content: object, problem: str) -> None:
    path = write(tmp_path / "bad-profile.yaml", content)
    with pytest.raises(LlmasrError) as err:
        resolve_options(str(path))
    assert str(path) in str(err.value)
    assert problem in str(err.value)


def test_bad_shipped_profile_names_the_file(shipped) -> None:
    shipped.data = {"weightz": {}}
    with pytest.raises(LlmasrError) as err:
        resolve_options()
    assert str(shipped.path) in str(err.value) and "weightz" in str(err.value)


def test_missing_profile(shipped, tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(LlmasrError, match="nope.yaml.*not found"):
        resolve_options(str(path))
    with pytest.raises(LlmasrError, match="not found"):
        read_profile(tmp_path)  # a directory


def test_empty_profile_is_fine(shipped, tmp_path: Path) -> None:
    path = write(tmp_path / "empty.yaml", "")
    assert read_profile(path) == {}
    assert resolve_options(str(path)).nbest == Options().nbest


@pytest.mark.parametrize("nbest", [0, -2])
def test_nbest_below_one(shipped, tmp_path: Path, nbest: int) -> None:
    with pytest.raises(LlmasrError, match="nbest"):
        resolve_options(nbest=nbest)
    path = write(tmp_path / "p.yaml", {"nbest": nbest})
    with pytest.raises(LlmasrError, match="nbest"):
        resolve_options(str(path))


def test_bad_option_names(shipped) -> None:
    with pytest.raises(LlmasrError, match="bad option"):
        resolve_options(weights={"lm_wieght": 1.0})
    with pytest.raises(LlmasrError, match="bad option"):
        resolve_options(no_such_option=1)


def test_write_profile_round_trip(shipped, tmp_path: Path) -> None:
    opts = Options(
        asr="whisper-base",
        lm="smollm2-135m-instruct",
        nbest=6,
        weights=Weights(lm_weight=0.2, word_bonus=-0.5, agreement_weight=4.0),
        context_tokens=64,
        prompt="not saved",
    )
    path = write_profile(opts, tmp_path / "deep" / "er" / "p.yaml", tuned={"wer": 0.125, "items": 40})
    assert path.is_file()
    data = read_profile(path)
    assert data["tuned"] == {"wer": 0.125, "items": 40}
    assert data["weights"] == {
        "lm_weight": 0.2,
        "word_bonus": -0.5,
        "agreement_weight": 4.0,
        "am_norm_weight": 0.0,
        "lm_norm_weight": 0.0,
        "lm_word_weight": 0.0,
    }
    back = resolve_options(str(path))
    assert (back.asr, back.lm, back.nbest, back.context_tokens) == (
        "whisper-base",
        "smollm2-135m-instruct",
        6,
        64,
    )
    assert back.weights == opts.weights
    assert back.prompt is None
    assert back.profile == str(path)


def test_write_profile_round_trip_without_lm(shipped, tmp_path: Path) -> None:
    opts = Options(lm=None, weights=Weights(word_bonus=1.5))
    path = write_profile(opts, tmp_path / "nolm.yaml")
    assert "tuned" not in read_profile(path)
    back = resolve_options(str(path))
    assert back.lm is None and back.weights == Weights(word_bonus=1.5)


def test_real_shipped_profile_lookup() -> None:
    assert config._profile_name("openai/whisper-small", None) == "openai_whisper-small+none.yaml"
    assert config._profile_name("whisper-tiny.en", "gemma-3-270m") == "whisper-tiny.en+gemma-3-270m.yaml"
    assert config.shipped_profile("no-such-asr", "no-such-lm") is None
    found = config.shipped_profile(DEFAULT_ASR, DEFAULT_LM)
    assert found is None or (found.is_file() and found.name == "whisper-tiny.en+gemma-3-270m.yaml")


def test_to_dict() -> None:
    d = Options(weights=Weights(lm_weight=0.1)).to_dict()
    assert d["weights"] == {"lm_weight": 0.1, **dict.fromkeys(("word_bonus", "agreement_weight"), 0.0)} | {
        "am_norm_weight": 0.0,
        "lm_norm_weight": 0.0,
        "lm_word_weight": 0.0,
    }
    assert d["asr"] == DEFAULT_ASR


def test_correction_and_retrieval_options(shipped, tmp_path: Path) -> None:
    opts = resolve_options()
    assert (opts.correct, opts.corrector, opts.term_retrieval) == (False, config.DEFAULT_CORRECTOR, "text")
    profile = tmp_path / "p.yaml"
    profile.write_text("correct: true\nterm_retrieval: speech\ncorrect_max_change: 0.2\n", encoding="utf-8")
    opts = resolve_options(profile=str(profile))
    assert opts.correct and opts.term_retrieval == "speech" and opts.correct_max_change == 0.2
    with pytest.raises(LlmasrError, match="term retrieval 'audio': choose one of text, speech"):
        resolve_options(term_retrieval="audio")
