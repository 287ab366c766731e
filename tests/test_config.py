"""Option layering and profiles (config.py); the shipped layer is controlled with monkeypatch."""

from __future__ import annotations

import re
from dataclasses import asdict, fields
from pathlib import Path

import pytest
import yaml

from llmasr.core.errors import LlmasrError
from llmasr.decoding import options as config
from llmasr.decoding.options import (
    DEFAULT_ASR,
    DEFAULT_LM,
    make_options,
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
    assert opts.decoding == make_options().decoding and opts.context == make_options().context
    assert opts.rescoring.lm is None and opts.profile is None and opts.given == {"lm"}
    assert opts.decoding.asr == DEFAULT_ASR
    assert opts.rescoring.weights == Weights()
    assert shipped.asked == [(DEFAULT_ASR, None)]


def test_untuned_lm_gets_generic_weights(shipped) -> None:
    """An LM with no shipped profile (an HF id, a folder) still rescores, with the generic weights."""
    opts = resolve_options(lm="someone/some-llm")
    assert opts.rescoring.lm == "someone/some-llm"
    assert opts.rescoring.weights == Weights(**config.UNTUNED_LM_WEIGHTS)
    assert opts.rescoring.weights.lm_weight > 0
    assert (
        resolve_options(lm="someone/some-llm", weights={"lm_weight": 0.7}).rescoring.weights.lm_weight == 0.7
    )


def test_shipped_profile_layer(shipped) -> None:
    shipped.data = {"nbest": 5, "weights": {"lm_weight": 0.3, "word_bonus": 1.0}, "tuned": {"wer": 0.1}}
    opts = resolve_options(lm="gemma-3-270m")
    assert opts.decoding.nbest == 5
    assert opts.rescoring.weights == Weights(lm_weight=0.3, word_bonus=1.0, agreement_weight=0.0)
    assert opts.profile == str(shipped.path)
    assert opts.rescoring.context_tokens == make_options().rescoring.context_tokens


def test_user_profile_beats_shipped_and_weights_merge(shipped, tmp_path: Path) -> None:
    shipped.data = {"nbest": 5, "context_tokens": 32, "weights": {"lm_weight": 0.3, "word_bonus": 1.0}}
    user = write(
        tmp_path / "user.yaml",
        {"lm": "gemma-3-270m", "nbest": 4, "weights": {"word_bonus": 2.0}, "tuned": {"x": 1}},
    )
    opts = resolve_options(str(user))
    assert opts.decoding.nbest == 4
    assert opts.rescoring.context_tokens == 32
    assert opts.rescoring.weights == Weights(lm_weight=0.3, word_bonus=2.0, agreement_weight=0.0)
    assert opts.profile == str(user)


def test_explicit_overrides_beat_everything(shipped, tmp_path: Path) -> None:
    shipped.data = {"nbest": 5, "weights": {"lm_weight": 0.3, "word_bonus": 1.0}}
    user = write(
        tmp_path / "user.yaml",
        {"lm": "gemma-3-270m", "nbest": 4, "prompt": "from user", "weights": {"word_bonus": 2.0}},
    )
    opts = resolve_options(
        str(user), nbest=3, weights={"agreement_weight": 4.0}, prompt=None, terms=["Foo"], threads=None
    )
    assert opts.decoding.nbest == 3
    assert opts.context.prompt == "from user"  # None means "not given"
    assert opts.context.terms == ["Foo"]
    assert opts.decoding.threads == make_options().decoding.threads
    assert opts.rescoring.weights == Weights(lm_weight=0.3, word_bonus=2.0, agreement_weight=4.0)


def test_explicit_weights_object_replaces_profile_weights(shipped) -> None:
    shipped.data = {"weights": {"lm_weight": 0.3, "word_bonus": 1.0}}
    opts = resolve_options(lm="gemma-3-270m", weights=Weights(agreement_weight=2.0))
    assert opts.rescoring.weights == Weights(lm_weight=0.0, word_bonus=0.0, agreement_weight=2.0)


def test_shipped_lookup_uses_the_resolved_pair(shipped, tmp_path: Path) -> None:
    user = write(tmp_path / "user.yaml", {"asr": "whisper-base", "lm": "smollm2-135m-instruct"})
    opts = resolve_options(str(user))
    assert shipped.asked == [("whisper-base", "smollm2-135m-instruct")]
    assert (opts.decoding.asr, opts.rescoring.lm) == ("whisper-base", "smollm2-135m-instruct")
    shipped.asked.clear()
    resolve_options(str(user), lm="en-us-3gram")
    assert shipped.asked == [("whisper-base", "en-us-3gram")]


@pytest.mark.parametrize("lm", ["none", "None", "NONE"])
def test_lm_none_turns_the_lm_off(shipped, lm: str) -> None:
    shipped.data = {"weights": {"lm_weight": 0.5, "word_bonus": 1.0}}
    opts = resolve_options(lm=lm)
    assert opts.rescoring.lm is None
    assert opts.rescoring.weights.lm_weight == 0.0
    assert opts.rescoring.weights.word_bonus == 1.0
    assert shipped.asked == [(DEFAULT_ASR, None)]
    with pytest.raises(LlmasrError, match="--lm-weight has no effect without an LM"):
        resolve_options(lm=lm, weights={"lm_weight": 0.9})  # asked for explicitly: an error, not ignored


def test_lm_none_from_user_profile(shipped, tmp_path: Path) -> None:
    user = write(tmp_path / "user.yaml", {"lm": None, "weights": {"lm_weight": 0.5}})
    opts = resolve_options(str(user))
    assert opts.rescoring.lm is None and opts.rescoring.weights.lm_weight == 0.0


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
    assert resolve_options(str(path)).decoding.nbest == make_options().decoding.nbest


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
    with pytest.raises(LlmasrError, match="unknown option.*no_such_option"):
        resolve_options(no_such_option=1)


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ({"lm": "none", "lm_weight": 0.4}, "--lm-weight has no effect without an LM"),
        ({"lm": "none", "lm_dtype": "bfloat16"}, "--lm-dtype has no effect without an LM"),
        ({"corrector": "smollm2-135m-instruct"}, "--corrector acts only with --correct"),
        ({"correct_max_change": 0.2}, "--correct-max-change acts only with --correct"),
        ({"retriever": "x", "term_retrieval": "text"}, "--retriever acts only with --term-retrieval"),
        ({"lm_dtype": "int4"}, "--lm-dtype 'int4': choose one of"),
        ({"raw_format": "s16le:8k"}, "--raw-format"),
    ],
)
def test_options_that_cannot_act_are_errors(shipped, given: dict, message: str) -> None:
    """An explicit option the chosen configuration would ignore fails with a message saying why."""
    with pytest.raises(LlmasrError, match=re.escape(message)):
        resolve_options(**given)
    resolve_options(correct=True, corrector="smollm2-135m-instruct", correct_max_change=0.2)


def test_write_profile_round_trip(shipped, tmp_path: Path) -> None:
    opts = make_options(
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
    assert data["weights"] == asdict(Weights(lm_weight=0.2, word_bonus=-0.5, agreement_weight=4.0))
    back = resolve_options(str(path))
    assert (back.decoding.asr, back.rescoring.lm, back.decoding.nbest, back.rescoring.context_tokens) == (
        "whisper-base",
        "smollm2-135m-instruct",
        6,
        64,
    )
    assert back.rescoring.weights == opts.rescoring.weights
    assert back.context.prompt is None
    assert back.profile == str(path)


def test_write_profile_round_trip_without_lm(shipped, tmp_path: Path) -> None:
    opts = make_options(lm=None, weights=Weights(word_bonus=1.5))
    path = write_profile(opts, tmp_path / "nolm.yaml")
    assert "tuned" not in read_profile(path)
    back = resolve_options(str(path))
    assert back.rescoring.lm is None and back.rescoring.weights == Weights(word_bonus=1.5)


def test_real_shipped_profile_lookup() -> None:
    assert config._profile_name("openai/whisper-small", None) == "openai_whisper-small+none.yaml"
    assert config._profile_name("whisper-tiny.en", "gemma-3-270m") == "whisper-tiny.en+gemma-3-270m.yaml"
    assert config.shipped_profile("no-such-asr", "no-such-lm") is None
    found = config.shipped_profile(DEFAULT_ASR, DEFAULT_LM)
    assert (
        found is not None and found.is_file() and found.name == "whisper-tiny.en+gemma-3-270m-rescorer.yaml"
    )
    ctc = resolve_options(asr="whisper-tiny.en-ctc")  # the CTC head: its 8-best, rescored by the default LM
    assert ctc.profile is not None and ctc.rescoring.lm == DEFAULT_LM and ctc.decoding.nbest == 8
    assert resolve_options(asr="whisper-tiny.en-ctc", lm="none").rescoring.weights.word_bonus > 0
    for name, preset in config.PRESETS.items():  # every preset runs with weights tuned for its pair
        opts = resolve_options(preset=name)
        assert opts.profile is not None, name
        assert all(opts.flat()[k] == v for k, v in preset.items()), name  # a profile does not undo it


def test_to_dict() -> None:
    d = make_options(weights=Weights(lm_weight=0.1)).to_dict()
    weights = d["rescoring"]["weights"]
    assert weights["lm_weight"] == 0.1 and set(weights) == {f.name for f in fields(Weights)}
    assert all(v == 0.0 for k, v in weights.items() if k != "lm_weight")
    assert d["decoding"]["asr"] == DEFAULT_ASR and d["given"] == []
    assert make_options(nbest=3).flat()["nbest"] == 3


def test_correction_and_retrieval_options(shipped, tmp_path: Path) -> None:
    opts = resolve_options()
    assert (opts.correction.enabled, opts.correction.corrector, opts.context.term_retrieval) == (
        False,
        config.DEFAULT_CORRECTOR,
        "speech",
    )
    profile = tmp_path / "p.yaml"
    profile.write_text("correct: true\nterm_retrieval: text\ncorrect_max_change: 0.2\n", encoding="utf-8")
    opts = resolve_options(profile=str(profile))
    assert (
        opts.correction.enabled
        and opts.context.term_retrieval == "text"
        and opts.correction.max_change == 0.2
    )
    with pytest.raises(LlmasrError, match="term retrieval 'audio': choose one of text, speech"):
        resolve_options(term_retrieval="audio")


def test_a_recogniser_tuned_only_without_an_lm_defaults_to_none(monkeypatch, tmp_path: Path) -> None:
    """A shipped profile for (asr, none) and none for (asr, the default LM): that tuned configuration is
    the default (a speech-LLM joined with its CTC head); an LM named, or a prompt, still chooses."""
    profile = write(tmp_path / "none.yaml", {"nbest": 4, "weights": {"other_am_weight": 1.5}})
    monkeypatch.setattr(config, "shipped_profile", lambda asr, lm: profile if lm is None else None)
    o = resolve_options(asr="speechllm-stack-tiny,whisper-tiny.en-ctc")
    assert o.rescoring.lm is None and o.decoding.nbest == 4 and o.rescoring.weights.other_am_weight == 1.5
    assert resolve_options(asr="a", lm="gemma-3-270m").rescoring.lm == "gemma-3-270m"
    assert resolve_options(asr="a", prompt="A clinic.").rescoring.lm == config.DEFAULT_CONTEXT_LM
    monkeypatch.setattr(config, "shipped_profile", lambda asr, lm: None)
    assert resolve_options(asr="a").rescoring.lm == config.DEFAULT_LM  # nothing tuned: the default LM


def test_default_lm_only_with_context(shipped) -> None:
    """The trained rescorer by default; the context LM when a prompt or term list is given and no LM is
    named; none with --lm none or the fast preset."""
    assert resolve_options().rescoring.lm == config.DEFAULT_LM == "gemma-3-270m-rescorer"
    assert resolve_options(lm="none").rescoring.lm is None
    assert resolve_options(terms=["apixaban"]).rescoring.lm == config.DEFAULT_CONTEXT_LM
    assert resolve_options(prompt="A cardiology clinic.").rescoring.lm == config.DEFAULT_CONTEXT_LM
    assert resolve_options(prompt="A cardiology clinic.", lm="none").rescoring.lm is None
    assert resolve_options(terms=["apixaban"], preset="fast").rescoring.lm is None
    assert resolve_options(terms=[]).rescoring.lm == config.DEFAULT_LM
    # the accurate preset names recognisers only: the same LM choice, with and without context
    assert resolve_options(preset="accurate").rescoring.lm == config.DEFAULT_LM
    assert resolve_options(terms=["apixaban"], preset="accurate").rescoring.lm == config.DEFAULT_CONTEXT_LM
