from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from llmasr.core.audio import PcmFormat, audio_duration, check_not_silent, load_audio, read_audio
from llmasr.core.errors import AudioError

GOFORWARD = "/usr/share/pocketsphinx/test/data/goforward.raw"


def tone(seconds: float, rate: int, freq: float = 440.0, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def problem(excinfo: pytest.ExceptionInfo[AudioError]) -> str:
    return excinfo.value.problem


def test_16k_mono_wav_round_trip(tmp_path):
    path = tmp_path / "a.wav"
    x = tone(1.0, 16000)
    sf.write(path, x, 16000, subtype="FLOAT")
    audio = load_audio(path)
    assert audio.dtype == np.float32 and audio.ndim == 1
    np.testing.assert_allclose(audio, x, atol=1e-6)
    assert audio_duration(audio) == pytest.approx(1.0)


@pytest.mark.parametrize("rate", [8000, 44100])
def test_resampled_to_16k_with_right_duration(tmp_path, rate):
    path = tmp_path / f"a{rate}.wav"
    sf.write(path, tone(2.0, rate), rate)
    audio = load_audio(path)
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert len(audio) == pytest.approx(32000, abs=2)
    # a 440 Hz tone stays a 440 Hz tone
    spectrum = np.abs(np.fft.rfft(audio))
    assert np.argmax(spectrum) * 16000 / len(audio) == pytest.approx(440, abs=2)


def test_stereo_44k_is_downmixed_by_averaging(tmp_path):
    path = tmp_path / "stereo.flac"
    left = tone(1.5, 44100, amp=0.6)
    right = np.zeros_like(left)
    sf.write(path, np.stack([left, right], axis=1), 44100)
    audio = load_audio(path)
    assert audio.ndim == 1 and len(audio) == pytest.approx(24000, abs=2)
    assert audio_duration(audio) == pytest.approx(1.5, abs=1e-3)
    # average of 0.6-amplitude tone and silence peaks near 0.3
    assert np.max(np.abs(audio[1000:-1000])) == pytest.approx(0.3, abs=0.01)


def test_bytes_and_file_object(tmp_path):
    path = tmp_path / "a.wav"
    sf.write(path, tone(0.5, 16000), 16000)
    data = path.read_bytes()
    from_bytes = load_audio(data)
    with open(path, "rb") as f:
        from_stream = load_audio(f)
    assert len(from_bytes) == len(from_stream) == 8000
    np.testing.assert_array_equal(from_bytes, from_stream)
    with pytest.raises(AudioError) as e:
        load_audio(io.BytesIO(b"not audio at all" * 20), name="upload.wav")
    assert e.value.source == "upload.wav"


def test_headerless_audio_is_refused_without_a_declared_format(tmp_path):
    path = tmp_path / "call.raw"
    path.write_bytes((tone(0.75, 8000) * 32767).astype("<i2").tobytes())
    with pytest.raises(AudioError) as e:
        load_audio(path)
    assert e.value.source == str(path) and "headerless" in problem(e) and "--raw-format" in problem(e)


@pytest.mark.parametrize(
    ("encoding", "dtype", "scale"),
    [("s16le", "<i2", 32767), ("s16be", ">i2", 32767), ("s32le", "<i4", 2**31 - 1), ("f32le", "<f4", 1.0)],
)
@pytest.mark.parametrize("rate", [8000, 16000, 48000])
def test_declared_raw_formats_read_at_their_true_rate_and_scale(tmp_path, encoding, dtype, scale, rate):
    x = tone(0.75, rate, freq=300.0)
    path = tmp_path / "a.raw"
    path.write_bytes((x * scale).astype(dtype).tobytes())
    audio = load_audio(path, raw=PcmFormat(rate, encoding))
    assert len(audio) == pytest.approx(12000, abs=2)
    assert np.max(np.abs(audio)) == pytest.approx(0.5, abs=0.01)
    spectrum = np.abs(np.fft.rfft(audio))
    assert np.argmax(spectrum) * 16000 / len(audio) == pytest.approx(300, abs=3)


def test_mulaw_and_stereo_raw(tmp_path):
    x = tone(1.0, 8000, amp=0.5)
    mulaw = tmp_path / "a.ulaw"
    sf.write(mulaw, x, 8000, format="RAW", subtype="ULAW")
    audio = load_audio(mulaw, raw=PcmFormat.parse("mulaw:8000"))
    assert len(audio) == 16000 and np.max(np.abs(audio)) == pytest.approx(0.5, abs=0.03)
    stereo = tmp_path / "b.pcm"
    stereo.write_bytes((np.stack([x, -x], axis=1) * 32767).astype("<i2").tobytes())
    audio = read_audio(stereo, raw=PcmFormat.parse("s16le:8000:2"))
    assert audio.channels == 2 and audio.downmix.startswith("channel 1 of 2")
    assert np.max(np.abs(audio.samples)) == pytest.approx(0.5, abs=0.02)


def test_pcm_format_parsing():
    assert PcmFormat.parse("8000") == PcmFormat(8000, "s16le", 1)
    assert PcmFormat.parse("MULAW:8000") == PcmFormat(8000, "mulaw", 1)
    assert PcmFormat.parse("f32le:48000:2") == PcmFormat(48000, "f32le", 2)
    for bad in ("s16le", "pcm:8000", "s16le:8k", "s16le:8000:0", "s16le:50"):
        with pytest.raises(ValueError):
            PcmFormat.parse(bad)


@pytest.mark.skipif(not os.path.exists(GOFORWARD), reason="no pocketsphinx test data")
def test_pocketsphinx_raw():
    audio = load_audio(GOFORWARD, raw=PcmFormat(16000))
    assert audio_duration(audio) == pytest.approx(os.path.getsize(GOFORWARD) / 32000)
    assert 1.0 < audio_duration(audio) < 10.0
    assert np.max(np.abs(audio)) > 0.01


def test_mp3_via_soundfile(tmp_path):
    path = tmp_path / "a.mp3"
    sf.write(path, tone(1.0, 16000), 16000)
    audio = load_audio(path)
    assert audio_duration(audio) == pytest.approx(1.0, abs=0.1)


def test_m4a_falls_back_to_pyav(tmp_path):
    av = pytest.importorskip("av")
    path = tmp_path / "a.m4a"
    rate = 22050
    x = tone(2.0, rate, amp=0.3)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=rate)
        stream.layout = "mono"
        for i in range(0, len(x), 1024):
            frame = av.AudioFrame.from_ndarray(x[None, i : i + 1024], format="flt", layout="mono")
            frame.sample_rate = rate
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    with pytest.raises(sf.SoundFileError):
        sf.info(path)  # really the fallback path
    audio = load_audio(path)
    assert audio.dtype == np.float32
    assert audio_duration(audio) == pytest.approx(2.0, abs=0.15)
    assert np.max(np.abs(audio)) == pytest.approx(0.3, abs=0.05)
    with pytest.raises(AudioError) as e:
        load_audio(path, max_duration=1.0)
    assert problem(e).startswith("too long: 2.")


def test_missing_file(tmp_path):
    with pytest.raises(AudioError) as e:
        load_audio(tmp_path / "nope.wav")
    assert problem(e) == "file not found"
    assert e.value.source == str(tmp_path / "nope.wav")


def test_directory(tmp_path):
    with pytest.raises(AudioError) as e:
        load_audio(tmp_path)
    assert problem(e) == "is a directory"


def test_empty_file(tmp_path):
    path = tmp_path / "empty.wav"
    path.write_bytes(b"")
    with pytest.raises(AudioError) as e:
        load_audio(path)
    assert problem(e) == "empty file (0 bytes)"


def test_check_path_names_an_undecodable_file_name_printably(tmp_path):
    """A Latin-1 file name (bytes that are not UTF-8) is named as display_name prints it (\\xe9), as the
    decoder names it, so a batch's message can be matched to its input and printed."""
    from llmasr.core.audio import check_path

    path = Path(os.fsdecode(bytes(tmp_path) + b"/caf\xe9.wav"))
    path.write_bytes(b"")
    with pytest.raises(AudioError) as e:
        check_path(path)
    assert str(e.value) == f"{tmp_path}/caf\\xe9.wav: empty file (0 bytes)"
    str(e.value).encode("utf-8")  # printable: no surrogates left


def test_wav_with_no_samples(tmp_path):
    path = tmp_path / "zero.wav"
    sf.write(path, np.zeros(0, np.float32), 16000)
    with pytest.raises(AudioError) as e:
        load_audio(path)
    assert problem(e) == "empty audio (0 samples)"


def test_text_file_renamed_wav(tmp_path):
    path = tmp_path / "notes.wav"
    path.write_text("this is a shopping list, not audio\n" * 20)
    with pytest.raises(AudioError) as e:
        load_audio(path, name="notes.wav")
    assert e.value.source == "notes.wav"
    assert problem(e).startswith("not a readable audio file (")
    assert "Format not recognised" in problem(e)


def test_truncated_wav(tmp_path):
    full = tmp_path / "full.wav"
    sf.write(full, tone(1.0, 16000), 16000, subtype="PCM_16")
    data = full.read_bytes()
    header_only = tmp_path / "header.wav"
    header_only.write_bytes(data[:30])  # cut inside the header
    with pytest.raises(AudioError) as e:
        load_audio(header_only)
    assert problem(e).startswith("not a readable audio file")
    cut_data = tmp_path / "cut.wav"
    cut_data.write_bytes(data[: 44 + 2 * 4000])  # cut inside the samples: what is there is usable
    assert len(load_audio(cut_data)) == 4000


def test_silence(tmp_path):
    path = tmp_path / "silence.wav"
    sf.write(path, np.zeros(16000, np.float32), 16000)
    with pytest.raises(AudioError) as e:
        load_audio(path)
    assert problem(e) == "audio is silent (peak amplitude below 0.0001)"
    audio = load_audio(path, allow_silent=True)
    assert len(audio) == 16000
    with pytest.raises(AudioError):
        check_not_silent(audio, "x")
    check_not_silent(tone(0.1, 16000, amp=1e-3), "x")


def test_too_long_rejected_from_header(tmp_path, monkeypatch):
    path = tmp_path / "long.wav"
    sf.write(path, tone(3.0, 8000), 8000)

    def no_decode(*args, **kwargs):
        raise AssertionError("decoded a file that the header says is too long")

    monkeypatch.setattr(sf, "read", no_decode)
    with pytest.raises(AudioError) as e:
        load_audio(path, max_duration=2)
    assert problem(e) == "too long: 3.0 s, the limit is 2 s (set max_duration)"


def test_max_duration_none_and_raw_limit(tmp_path):
    path = tmp_path / "a.raw"
    path.write_bytes((tone(3.0, 16000) * 32767).astype("<i2").tobytes())
    assert len(load_audio(path, max_duration=None, raw=PcmFormat(16000))) == 48000
    with pytest.raises(AudioError) as e:
        load_audio(path, max_duration=2.5, raw=PcmFormat(16000))
    assert problem(e).startswith("too long: 3.0 s")


def test_nan_rejected(tmp_path):
    path = tmp_path / "nan.wav"
    x = tone(0.5, 16000)
    x[100] = np.nan
    sf.write(path, x, 16000, subtype="FLOAT")
    with pytest.raises(AudioError) as e:
        load_audio(path)
    assert "NaN" in problem(e)


def test_load_input_labels_and_refuses_silence(tmp_path: Path) -> None:
    from llmasr.core.audio import load_input

    tone = (0.1 * np.sin(np.arange(16000) * 0.05)).astype(np.float32)
    assert load_input(tone)[0] == "<audio>"
    assert load_input(tone, name="mic")[0] == "mic"
    path = tmp_path / "t.wav"
    sf.write(path, tone, 16000)
    label, audio = load_input(path)
    assert label == str(path) and len(audio.samples) == 16000 and audio.source_rate == 16000
    assert len(load_input(tone[::2], rate=8000)[1].samples) == pytest.approx(16000, abs=2)
    with pytest.raises(AudioError, match="mic: audio is silent"):
        load_input(np.zeros(16000, np.float32), name="mic")


def test_stream_without_stated_duration_is_capped_while_decoding():
    """Browser recordings (WebM written to a pipe) state no duration: the limit holds while decoding."""
    av = pytest.importorskip("av")

    class Pipe(io.RawIOBase):
        def __init__(self) -> None:
            self.data = bytearray()

        def writable(self) -> bool:
            return True

        def seekable(self) -> bool:
            return False

        def write(self, b) -> int:
            self.data += b
            return len(b)

    x = tone(3.0, 16000, amp=0.3)
    pipe = Pipe()
    with av.open(pipe, "w", format="webm") as container:
        stream = container.add_stream("libopus", rate=48000)
        stream.layout = "mono"
        for i in range(0, len(x), 960):
            frame = av.AudioFrame.from_ndarray(x[None, i : i + 960], format="flt", layout="mono")
            frame.sample_rate = 16000
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    data = bytes(pipe.data)
    with av.open(io.BytesIO(data)) as c:
        assert c.duration is None  # really the case the limit must catch during decoding
    assert audio_duration(load_audio(data, name="rec.webm")) == pytest.approx(3.0, abs=0.1)
    with pytest.raises(AudioError) as e:
        load_audio(data, name="rec.webm", max_duration=1.0)
    assert e.value.kind == "too_long" and problem(e).startswith("too long: over 1 s")
