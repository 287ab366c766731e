"""Loading any audio input as 16 kHz mono float32, with errors a user can act on.

Every recogniser in llmasr takes the same array, so decoding, downmixing and resampling happen once,
here. soundfile (libsndfile) reads wav/flac/ogg/mp3 quickly and tells the duration from the header,
so over-long files are rejected before anything is decoded; PyAV (bundled with faster-whisper) is the
fallback for containers libsndfile does not know (m4a, mp4, webm, ...).
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import BinaryIO

import numpy as np
import soundfile as sf
import soxr

from llmasr.asr.base import SAMPLE_RATE
from llmasr.errors import AudioError

#: default longest input (seconds); protects memory (4 h of float32 at 16 kHz is ~0.9 GB)
MAX_DURATION = 4 * 3600.0
#: peak amplitude below which audio counts as silent (digital silence, or a muted microphone)
SILENCE_PEAK = 1e-4
#: suffixes read as headerless 16 kHz 16-bit little-endian mono PCM (as in pocketsphinx test data)
RAW_SUFFIXES = (".raw", ".pcm")

AudioSource = str | os.PathLike | bytes | BinaryIO


def load_audio(
    source: AudioSource,
    *,
    max_duration: float | None = MAX_DURATION,
    name: str | None = None,
    allow_silent: bool = False,
) -> np.ndarray:
    """Decode `source` (a path, the file's bytes, or a binary file object) to 16 kHz mono float32.

    `name` is what errors call the input (default: the path, or the file object's name).
    `max_duration` (seconds, None for no limit) is checked from the header before decoding when the
    format has one. Silent audio is an error unless `allow_silent`, because recognisers invent text
    for silence; callers that want to decide later can use `check_not_silent`.
    Raises AudioError naming the input and the problem.
    """
    label = name or _label(source)
    raw = label.lower().endswith(RAW_SUFFIXES)
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.exists():
            raise AudioError(label, "file not found", "missing")
        if path.is_dir():
            raise AudioError(label, "is a directory", "missing")
        if path.stat().st_size == 0:
            raise AudioError(label, "empty file (0 bytes)", "empty")
        raw = raw or path.suffix.lower() in RAW_SUFFIXES
        if raw:
            with open(path, "rb") as f:
                audio, rate = _read_raw(f.read(), label, max_duration), SAMPLE_RATE
        else:
            audio, rate = _decode(str(path), label, max_duration)
    else:
        data = bytes(source) if isinstance(source, (bytes, bytearray, memoryview)) else _read_stream(source)
        if not data:
            raise AudioError(label, "empty file (0 bytes)", "empty")
        if raw:
            audio, rate = _read_raw(data, label, max_duration), SAMPLE_RATE
        else:
            audio, rate = _decode(data, label, max_duration)

    if audio.ndim == 2:
        audio = audio.mean(axis=1, dtype=np.float32) if audio.shape[1] > 1 else audio[:, 0]
    if audio.size == 0:
        raise AudioError(label, "empty audio (0 samples)", "empty")
    if not np.all(np.isfinite(audio)):
        raise AudioError(label, "audio contains NaN or infinite sample values")
    if rate != SAMPLE_RATE:
        audio = soxr.resample(audio, rate, SAMPLE_RATE, quality="HQ")
    audio = np.ascontiguousarray(audio, dtype=np.float32)
    _check_duration(label, audio_duration(audio), max_duration)
    if not allow_silent:
        check_not_silent(audio, label)
    return audio


def check_not_silent(audio: np.ndarray, source: str) -> None:
    """Raise AudioError if the peak amplitude is below SILENCE_PEAK: there is nothing to transcribe."""
    peak = float(np.max(np.abs(audio))) if audio.size else 0.0
    if peak < SILENCE_PEAK:
        raise AudioError(source, f"audio is silent (peak amplitude below {SILENCE_PEAK:g})", "silent")


def audio_duration(audio: np.ndarray) -> float:
    """Seconds of 16 kHz audio."""
    return len(audio) / SAMPLE_RATE


def _label(source: AudioSource) -> str:
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source)
    if isinstance(source, (bytes, bytearray, memoryview)):
        return "<bytes>"
    stream_name = getattr(source, "name", None)
    return stream_name if isinstance(stream_name, str) else "<stream>"


def _read_stream(stream: BinaryIO) -> bytes:
    # Read once into memory: both decoders need to seek, and a socket or pipe cannot.
    data = stream.read()
    if not isinstance(data, bytes):
        raise TypeError(f"expected a binary file object, got one returning {type(data).__name__}")
    return data


def _check_duration(label: str, seconds: float, max_duration: float | None) -> None:
    if max_duration is not None and seconds > max_duration:
        raise AudioError(
            label,
            f"too long: {seconds:.1f} s, the limit is {max_duration:g} s (set max_duration)",
            "too_long",
        )


def _read_raw(data: bytes, label: str, max_duration: float | None) -> np.ndarray:
    n = len(data) // 2
    _check_duration(label, n / SAMPLE_RATE, max_duration)
    return np.frombuffer(data[: 2 * n], dtype="<i2").astype(np.float32) / 32768.0


def _decode(src: str | bytes, label: str, max_duration: float | None) -> tuple[np.ndarray, int]:
    """soundfile first (fast, header duration); PyAV for everything libsndfile cannot open."""
    try:
        info = sf.info(src if isinstance(src, str) else io.BytesIO(src))
    except (sf.SoundFileError, RuntimeError) as exc:
        sf_reason = _short_reason(exc)
    else:
        if info.frames > 0 and info.samplerate > 0:
            _check_duration(label, info.frames / info.samplerate, max_duration)
        try:
            audio, rate = sf.read(
                src if isinstance(src, str) else io.BytesIO(src), dtype="float32", always_2d=True
            )
            return audio, int(rate)
        except (sf.SoundFileError, RuntimeError) as exc:
            sf_reason = _short_reason(exc)
    return _decode_av(src, label, max_duration, sf_reason), SAMPLE_RATE


def _decode_av(src: str | bytes, label: str, max_duration: float | None, sf_reason: str) -> np.ndarray:
    """FFmpeg (PyAV) for what libsndfile cannot open. Samples are counted while decoding, so a stream
    whose container states no duration (browser WebM, some Ogg) still cannot decode into gigabytes."""
    try:
        import av
    except ImportError:  # pragma: no cover - PyAV comes with faster-whisper
        raise AudioError(label, f"not a readable audio file ({sf_reason})", "unreadable") from None
    limit = None if max_duration is None else int(max_duration * SAMPLE_RATE)
    chunks: list[np.ndarray] = []
    total = 0
    try:
        with av.open(src if isinstance(src, str) else io.BytesIO(src), metadata_errors="ignore") as container:
            if not container.streams.audio:
                raise AudioError(label, "not a readable audio file (no audio stream)", "unreadable")
            if container.duration is not None:  # microseconds
                _check_duration(label, container.duration / 1e6, max_duration)
            resampler = av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
            for frame in container.decode(audio=0):
                for out in [*resampler.resample(frame)]:
                    chunk = out.to_ndarray().reshape(-1)
                    chunks.append(chunk)
                    total += len(chunk)
                    if limit is not None and total > limit:
                        raise AudioError(
                            label,
                            f"too long: over {max_duration:g} s, the limit (set max_duration)",
                            "too_long",
                        )
            for out in resampler.resample(None):  # flush
                chunks.append(out.to_ndarray().reshape(-1))
    except AudioError:
        raise
    except Exception as exc:  # PyAV raises FFmpegError subclasses, ValueError, OSError, IndexError...
        raise AudioError(label, f"not a readable audio file ({sf_reason})", "unreadable") from exc
    if not chunks:
        return np.zeros(0, dtype=np.float32)
    return np.concatenate(chunks).astype(np.float32) / 32768.0


def _short_reason(exc: BaseException) -> str:
    """libsndfile's own words without the path ("Format not recognised.")."""
    text = str(exc)
    if "': " in text:
        text = text.split("': ", 1)[1]
    elif text.startswith("Error opening <") and ">: " in text:  # an in-memory file object
        text = text.split(">: ", 1)[1]
    return text.strip().rstrip(".") or type(exc).__name__


def load_input(
    source: AudioSource | np.ndarray, *, name: str | None = None, max_duration: float | None = MAX_DURATION
) -> tuple[str, np.ndarray]:
    """What every pipeline takes: a path, bytes or a 16 kHz float32 array -> (label for messages, audio).

    Silent audio is refused here too: recognisers invent text for silence.
    """
    label = name or (str(source) if isinstance(source, (str, os.PathLike)) else "<audio>")
    if isinstance(source, np.ndarray):
        audio = source.astype(np.float32, copy=False)
    else:
        audio = load_audio(source, max_duration=max_duration, name=label)
    check_not_silent(audio, label)
    return label, audio
