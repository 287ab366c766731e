from __future__ import annotations

import glob

import numpy as np
import pytest
import soundfile as sf

from llmasr.core.vad import MIN_SPEECH_SECONDS, _pack, split

SR = 16000
LIBRIVOX = sorted(glob.glob("/usr/share/pocketsphinx/test/data/librivox/*.wav"))


def check_spans(spans: list[tuple[int, int]], n: int, max_seconds: float) -> None:
    assert spans, "no spans"
    for start, end in spans:
        assert 0 <= start < end <= n
        assert end - start <= max_seconds * SR
    for (_, end), (start, _) in zip(spans, spans[1:], strict=False):
        assert end <= start, "spans overlap or are out of order"


def covered(spans: list[tuple[int, int]], n: int) -> np.ndarray:
    mask = np.zeros(n, bool)
    for start, end in spans:
        mask[start:end] = True
    return mask


@pytest.fixture(scope="module")
def speech() -> tuple[np.ndarray, np.ndarray]:
    """Five LibriVox utterances with 2 s silences around them (~37 s), and a mask of loud frames."""
    if len(LIBRIVOX) < 3:
        pytest.skip("no pocketsphinx librivox test audio")
    gap = np.zeros(2 * SR, np.float32)
    parts = [gap]
    for path in LIBRIVOX:
        audio, rate = sf.read(path, dtype="float32")
        assert rate == SR
        parts += [audio, gap]
    signal = np.concatenate(parts)
    # speech = 20 ms frames well above the recording's noise floor
    frame = SR // 50
    rms = np.sqrt(np.mean(signal[: len(signal) // frame * frame].reshape(-1, frame) ** 2, axis=1))
    loud = np.repeat(rms > 0.1 * rms.max(), frame)
    loud = np.concatenate([loud, np.zeros(len(signal) - len(loud), bool)])
    return signal, loud


@pytest.mark.parametrize("max_seconds", [30.0, 10.0, 3.0])
def test_spans_cover_speech_within_limit(speech, max_seconds):
    signal, loud = speech
    assert len(signal) > 30 * SR
    spans = split(signal, max_seconds=max_seconds)
    check_spans(spans, len(signal), max_seconds)
    mask = covered(spans, len(signal))
    assert mask[loud].mean() > 0.99
    # the 2 s lead-in silence is not sent to the recogniser
    assert spans[0][0] > 1.0 * SR
    if max_seconds == 30.0:
        assert len(spans) >= 2
    if max_seconds == 3.0:
        assert len(spans) >= 9  # ~25 s of speech in pieces of at most 3 s


def test_short_audio_is_one_span_without_vad(monkeypatch):
    import faster_whisper.vad

    def boom(*args, **kwargs):
        raise AssertionError("VAD ran on short audio")

    monkeypatch.setattr(faster_whisper.vad, "get_speech_timestamps", boom)
    audio = np.zeros(20 * SR, np.float32)
    assert split(audio, max_seconds=30) == [(0, 20 * SR)]
    assert split(np.zeros(0, np.float32)) == []


def test_audio_too_short_for_a_word_has_no_spans():
    assert split(np.ones(int(0.1 * SR), np.float32)) == []
    assert split(np.ones(int(MIN_SPEECH_SECONDS * SR) - 1, np.float32)) == []
    n = int(MIN_SPEECH_SECONDS * SR)
    assert split(np.ones(n, np.float32)) == [(0, n)]


def test_long_silence_has_no_spans():
    assert split(np.zeros(40 * SR, np.float32)) == []
    noise = np.random.default_rng(0).normal(0, 1e-3, 40 * SR).astype(np.float32)
    assert split(noise) == []


def test_pack_merges_greedily_and_cuts_hard():
    max_len = 100
    chunks = [(0, 30), (40, 80), (90, 120), (130, 400), (410, 420)]
    spans = _pack(chunks, max_len, 1000)
    # pieces: (0,30) (40,80) (90,120) (130,230) (230,330) (330,400) (410,420)
    assert spans == [(0, 80), (90, 120), (130, 230), (230, 330), (330, 420)]


def test_pack_clips_and_removes_overlap():
    assert _pack([(50, 120), (-5, 60)], 1000, 100) == [(0, 100)]
    assert _pack([(0, 50), (40, 90)], 60, 100) == [(0, 50), (50, 90)]
    assert _pack([], 100, 1000) == []


def test_bad_max_seconds():
    with pytest.raises(ValueError):
        split(np.zeros(10, np.float32), max_seconds=0)
