"""Loading any audio input as 16 kHz mono float32, with errors a user can act on.

Every recogniser in llmasr takes the same array, so decoding, down-mixing and resampling happen once,
here, under one contract: every input is read at its true sample rate and scale, or refused with an
`AudioError` that names the input and the problem. Nothing is guessed:

* files with a header (WAV of any width, mu-law/A-law, FLAC, Ogg, MP3, AIFF, ...) are read by soundfile
  (libsndfile), which also tells the duration from the header, so over-long files are refused before
  anything is decoded; PyAV (bundled with faster-whisper) reads the containers libsndfile does not know
  (m4a, mp4, webm, video files), keeping every channel for the down-mix below;
* headerless PCM (``.raw``, ``.pcm``, ``.ulaw`` ...) has no rate or sample format to read, so it is read
  only with a declared `PcmFormat` (CLI ``--raw-format s16le:8000``, server field ``raw_format``, Python
  ``raw=``); without one it is refused, never read at a guessed rate;
* arrays are taken as they are, at the `rate` the caller states (16 kHz unless told).

Down-mix rule (`downmix`): channels are averaged, unless averaging cancels the speech (a channel wired
with inverted polarity, or two microphones out of phase): when the average keeps less than a fifth of
the loudest channel's energy, the loudest channel is used alone and `Audio.downmix` says which.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import soundfile as sf
import soxr

from llmasr.core.errors import AudioError

#: the rate every model in llmasr takes (Hz)
SAMPLE_RATE = 16000
#: default longest input (seconds); protects memory (4 h of float32 at 16 kHz is ~0.9 GB)
MAX_DURATION = 4 * 3600.0
#: peak amplitude below which audio counts as silent (digital silence, or a muted microphone)
SILENCE_PEAK = 1e-4
#: the average of the channels must keep this share of the loudest channel's energy, else that channel
#: is used alone (polarity-inverted or out-of-phase channels average to near silence)
DOWNMIX_MIN_ENERGY = 0.2
#: file suffixes of headerless audio: read only with a declared PcmFormat
RAW_SUFFIXES = (".raw", ".pcm", ".s16", ".sln", ".ulaw", ".ul", ".alaw", ".al", ".u8", ".s8", ".f32")
#: headerless sample formats: name -> (soundfile subtype, endianness)
PCM_ENCODINGS = {
    "s8": ("PCM_S8", "FILE"),
    "u8": ("PCM_U8", "FILE"),
    "s16le": ("PCM_16", "LITTLE"),
    "s16be": ("PCM_16", "BIG"),
    "s24le": ("PCM_24", "LITTLE"),
    "s24be": ("PCM_24", "BIG"),
    "s32le": ("PCM_32", "LITTLE"),
    "s32be": ("PCM_32", "BIG"),
    "f32le": ("FLOAT", "LITTLE"),
    "f32be": ("FLOAT", "BIG"),
    "f64le": ("DOUBLE", "LITTLE"),
    "mulaw": ("ULAW", "FILE"),
    "alaw": ("ALAW", "FILE"),
}
_BYTES_PER_SAMPLE = {"s8": 1, "u8": 1, "mulaw": 1, "alaw": 1, "s24le": 3, "s24be": 3, "f64le": 8}
#: leading bytes of containers that say their own format (a declared PcmFormat never overrides them)
_MAGIC = (b"RIFF", b"RIFX", b"RF64", b"fLaC", b"OggS", b"ID3", b"FORM", b"caff", b".snd", b"\x1aE\xdf\xa3")

AudioSource = str | os.PathLike | bytes | BinaryIO


@dataclass(frozen=True)
class PcmFormat:
    """What a headerless PCM input cannot say about itself: rate (Hz), sample encoding, channels."""

    rate: int
    encoding: str = "s16le"
    channels: int = 1

    def __post_init__(self) -> None:
        if self.encoding not in PCM_ENCODINGS:
            raise ValueError(f"raw encoding '{self.encoding}': choose one of {', '.join(PCM_ENCODINGS)}")
        if not 1000 <= self.rate <= 384000:
            raise ValueError(f"raw sample rate {self.rate} Hz: expected 1000-384000")
        if not 1 <= self.channels <= 32:
            raise ValueError(f"raw channel count {self.channels}: expected 1-32")

    @classmethod
    def parse(cls, text: str) -> PcmFormat:
        """`ENCODING:RATE[:CHANNELS]` (`s16le:8000`, `mulaw:8000`, `f32le:48000:2`) or just `RATE`
        (16-bit little-endian mono). Raises ValueError saying what is wrong."""
        parts = [p.strip().lower() for p in text.strip().split(":")]
        if len(parts) == 1:
            parts = ["s16le", parts[0]]
        if len(parts) not in (2, 3) or not all(p.isdigit() for p in parts[1:]):
            raise ValueError(
                f"raw format '{text}': expected ENCODING:RATE[:CHANNELS], e.g. s16le:8000 or mulaw:8000"
            )
        return cls(int(parts[1]), parts[0], int(parts[2]) if len(parts) == 3 else 1)

    @property
    def frame_bytes(self) -> int:
        return _BYTES_PER_SAMPLE.get(self.encoding, 4 if self.encoding.startswith(("s32", "f32")) else 2) * (
            self.channels
        )


@dataclass
class Audio:
    """A decoded input: 16 kHz mono float32 `samples`, and what it was before."""

    samples: np.ndarray
    source_rate: int
    channels: int
    #: how the channels were combined: None (mono), "average", or "channel K of N (...)"
    downmix: str | None = None

    @property
    def duration(self) -> float:
        return len(self.samples) / SAMPLE_RATE

    def describe(self) -> dict[str, object]:
        """For Transcript.info["input"]."""
        return {"sample_rate": self.source_rate, "channels": self.channels, "downmix": self.downmix}


def display_name(source: object) -> str:
    """A path or name as it can be printed: bytes that are not UTF-8 (a Latin-1 file name arrives as
    surrogates in Python) are shown as \\xNN escapes instead of breaking the output."""
    text = os.fsdecode(source) if isinstance(source, (str, bytes, os.PathLike)) else str(source)
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def read_audio(
    source: AudioSource | np.ndarray,
    *,
    rate: int | None = None,
    raw: PcmFormat | None = None,
    max_duration: float | None = MAX_DURATION,
    name: str | None = None,
    allow_silent: bool = False,
) -> Audio:
    """Decode `source` (a path, the file's bytes, a binary file object, or an array) to an `Audio`.

    `rate`: the sample rate (Hz) of an array `source` (default 16 kHz); an array may be (n,) or
    (n, channels). `raw`: the format of a headerless input (required for `.raw`/`.pcm`-named files;
    inputs whose header names their own format ignore it). `name` is what errors call the input
    (default: the path, or the file object's name). `max_duration` (seconds, None for no limit) is
    checked from the header before decoding when the format has one. Silent audio is an error unless
    `allow_silent`, because recognisers invent text for silence.
    Raises AudioError naming the input and the problem.
    """
    label = display_name(name if name is not None else _label(source))
    if isinstance(source, np.ndarray):
        data, src_rate = np.asarray(source, dtype=np.float32), int(rate or SAMPLE_RATE)
        if data.ndim == 1:
            data = data[:, None]
        if data.ndim != 2:
            raise AudioError(label, f"expected a 1-D or (samples, channels) array, got shape {source.shape}")
        _check_duration(label, len(data) / max(src_rate, 1), max_duration)
    else:
        data, src_rate = _decode_source(source, label, raw, max_duration)
    channels = int(data.shape[1]) if data.ndim == 2 else 1
    if data.size == 0:
        raise AudioError(label, "empty audio (0 samples)", "empty")
    if not np.all(np.isfinite(data)):
        raise AudioError(label, "audio contains NaN or infinite sample values")
    mono, how = downmix(data)
    samples = resample(mono, src_rate)
    _check_duration(label, len(samples) / SAMPLE_RATE, max_duration)
    if not allow_silent:
        check_not_silent(samples, label)
    return Audio(samples, src_rate, channels, how)


def load_audio(
    source: AudioSource | np.ndarray,
    *,
    rate: int | None = None,
    raw: PcmFormat | None = None,
    max_duration: float | None = MAX_DURATION,
    name: str | None = None,
    allow_silent: bool = False,
) -> np.ndarray:
    """`read_audio(...).samples`: 16 kHz mono float32 (n,). Raises AudioError (see `read_audio`)."""
    return read_audio(
        source, rate=rate, raw=raw, max_duration=max_duration, name=name, allow_silent=allow_silent
    ).samples


def downmix(data: np.ndarray) -> tuple[np.ndarray, str | None]:
    """(samples, channels) -> (mono (n,), how): the average ("average"), or the loudest channel alone
    ("channel K of N ...") when averaging would cancel it (module docstring); how is None for mono."""
    if data.ndim == 1 or data.shape[1] == 1:
        return np.ascontiguousarray(data.reshape(-1), dtype=np.float32), None
    mean = data.mean(axis=1, dtype=np.float32)
    energy = (data.astype(np.float64) ** 2).mean(axis=0)
    loudest = int(np.argmax(energy))
    if (
        energy[loudest] > 0
        and float(np.mean(mean.astype(np.float64) ** 2)) < DOWNMIX_MIN_ENERGY * energy[loudest]
    ):
        note = f"channel {loudest + 1} of {data.shape[1]} (the channels cancel when averaged)"
        return np.ascontiguousarray(data[:, loudest], dtype=np.float32), note
    return mean, "average"


def resample(audio: np.ndarray, rate: int) -> np.ndarray:
    """Mono float32 at `rate` Hz -> 16 kHz (soxr, high quality); unchanged when already 16 kHz."""
    audio = np.ascontiguousarray(audio, dtype=np.float32)
    if rate != SAMPLE_RATE:
        audio = soxr.resample(audio, rate, SAMPLE_RATE, quality="HQ")
    return np.ascontiguousarray(audio, dtype=np.float32)


def check_not_silent(audio: np.ndarray, source: str) -> None:
    """Raise AudioError if the peak amplitude is below SILENCE_PEAK: there is nothing to transcribe."""
    peak = float(np.max(np.abs(audio))) if audio.size else 0.0
    if peak < SILENCE_PEAK:
        raise AudioError(source, f"audio is silent (peak amplitude below {SILENCE_PEAK:g})", "silent")


def audio_duration(audio: np.ndarray) -> float:
    """Seconds of 16 kHz audio."""
    return len(audio) / SAMPLE_RATE


def is_headerless(name: str) -> bool:
    """True for file names whose suffix marks headerless PCM (RAW_SUFFIXES)."""
    return name.lower().endswith(RAW_SUFFIXES)


def _label(source: AudioSource | np.ndarray) -> str:
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source)  # type: ignore[return-value]
    if isinstance(source, (bytes, bytearray, memoryview)):
        return "<bytes>"
    if isinstance(source, np.ndarray):
        return "<audio>"
    stream_name = getattr(source, "name", None)
    return stream_name if isinstance(stream_name, str) else "<stream>"


def check_path(path: str | os.PathLike[str], label: str | None = None) -> None:
    """Raise AudioError (named by `label`, default the path as `display_name` prints it) when `path` is
    missing, a directory or empty: what can be told of an audio file before any model loads or any byte is
    decoded."""
    path, label = Path(path), label or display_name(path)
    if not path.exists():
        raise AudioError(label, "file not found", "missing")
    if path.is_dir():
        raise AudioError(label, "is a directory", "missing")
    if path.stat().st_size == 0:
        raise AudioError(label, "empty file (0 bytes)", "empty")


def _decode_source(
    source: AudioSource, label: str, raw: PcmFormat | None, max_duration: float | None
) -> tuple[np.ndarray, int]:
    """The header's decoder, or the declared raw format; (samples x channels, rate)."""
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        check_path(path, label)

        def opener() -> BinaryIO:  # open() takes any name the OS does, undecodable bytes included
            try:
                return open(path, "rb")
            except OSError as exc:
                raise AudioError(label, f"cannot read ({exc.strerror or exc})", "unreadable") from None

        headerless = is_headerless(os.fsdecode(path.name))
    else:
        data = bytes(source) if isinstance(source, (bytes, bytearray, memoryview)) else _read_stream(source)
        if not data:
            raise AudioError(label, "empty file (0 bytes)", "empty")

        def opener() -> BinaryIO:
            return io.BytesIO(data)

        headerless = is_headerless(label)
    with opener() as fh:
        head = fh.read(12)
    has_header = head[:4].startswith(_MAGIC) or head[4:8] == b"ftyp"
    if raw is not None and not has_header:
        return _read_raw(opener, raw, label, max_duration), raw.rate
    if headerless and not has_header:
        raise AudioError(
            label,
            "headerless audio: its sample rate and format cannot be read from the file; declare them "
            "(CLI --raw-format s16le:16000, server field raw_format, Python raw=PcmFormat(...))",
            "invalid",
        )
    return _decode(opener, label, max_duration)


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


def _read_raw(
    opener: Callable[[], BinaryIO], fmt: PcmFormat, label: str, max_duration: float | None
) -> np.ndarray:
    """Headerless PCM in the declared format (soundfile's RAW reader: every width, endianness, G.711)."""
    with opener() as fh:
        size = fh.seek(0, io.SEEK_END)
        frames = size // fmt.frame_bytes
        if frames == 0:
            raise AudioError(label, f"empty audio (fewer bytes than one {fmt.encoding} frame)", "empty")
        _check_duration(label, frames / fmt.rate, max_duration)
        fh.seek(0)
        subtype, endian = PCM_ENCODINGS[fmt.encoding]
        try:
            audio, _ = sf.read(
                fh,
                frames=frames,
                dtype="float32",
                always_2d=True,
                format="RAW",
                subtype=subtype,
                endian=endian,
                samplerate=fmt.rate,
                channels=fmt.channels,
            )
        except (sf.SoundFileError, RuntimeError) as exc:
            reason = _short_reason(exc)
            raise AudioError(label, f"cannot read as {fmt.encoding} PCM ({reason})", "unreadable") from None
    return audio


def _decode(opener: Callable[[], BinaryIO], label: str, max_duration: float | None) -> tuple[np.ndarray, int]:
    """soundfile first (fast, header duration); PyAV for everything libsndfile cannot open."""
    with opener() as fh:
        try:
            info = sf.info(fh)
        except (sf.SoundFileError, RuntimeError) as exc:
            sf_reason = _short_reason(exc)
        else:
            if info.frames > 0 and info.samplerate > 0:
                _check_duration(label, info.frames / info.samplerate, max_duration)
            try:
                fh.seek(0)
                audio, rate = sf.read(fh, dtype="float32", always_2d=True)
                return audio, int(rate)
            except (sf.SoundFileError, RuntimeError) as exc:
                sf_reason = _short_reason(exc)
    with opener() as fh:
        return _decode_av(fh, label, max_duration, sf_reason)


def _decode_av(
    fh: BinaryIO, label: str, max_duration: float | None, sf_reason: str
) -> tuple[np.ndarray, int]:
    """FFmpeg (PyAV) for what libsndfile cannot open, every channel kept, resampled to 16 kHz float.
    Samples are counted while decoding, so a stream whose container states no duration (browser WebM,
    some Ogg) still cannot decode into gigabytes."""
    try:
        import av
    except ImportError:  # pragma: no cover - PyAV comes with faster-whisper
        raise AudioError(label, f"not a readable audio file ({sf_reason})", "unreadable") from None
    limit = None if max_duration is None else int(max_duration * SAMPLE_RATE)
    chunks: list[np.ndarray] = []
    total = 0
    try:
        with av.open(fh, metadata_errors="ignore") as container:
            if not container.streams.audio:
                raise AudioError(label, "not a readable audio file (no audio stream)", "unreadable")
            if container.duration is not None:  # microseconds
                _check_duration(label, container.duration / 1e6, max_duration)
            stream = container.streams.audio[0]
            resampler = None
            for frame in container.decode(stream):
                if resampler is None:  # planar float at 16 kHz, the stream's own channel layout
                    resampler = av.AudioResampler(format="fltp", layout=frame.layout, rate=SAMPLE_RATE)
                for out in [*resampler.resample(frame)]:
                    chunk = out.to_ndarray()  # (channels, n)
                    chunks.append(chunk)
                    total += chunk.shape[1]
                    if limit is not None and total > limit:
                        raise AudioError(
                            label,
                            f"too long: over {max_duration:g} s, the limit (set max_duration)",
                            "too_long",
                        )
            for out in resampler.resample(None) if resampler is not None else []:  # flush
                chunks.append(out.to_ndarray())
    except AudioError:
        raise
    except Exception as exc:  # PyAV raises FFmpegError subclasses, ValueError, OSError, IndexError...
        raise AudioError(label, f"not a readable audio file ({sf_reason})", "unreadable") from exc
    if not chunks:
        return np.zeros((0, 1), dtype=np.float32), SAMPLE_RATE
    return np.concatenate(chunks, axis=1).T.astype(np.float32), SAMPLE_RATE


def _short_reason(exc: BaseException) -> str:
    """libsndfile's own words without the path ("Format not recognised.")."""
    text = str(exc)
    if "': " in text:
        text = text.split("': ", 1)[1]
    elif text.startswith("Error opening <") and ">: " in text:  # an in-memory file object
        text = text.split(">: ", 1)[1]
    return text.strip().rstrip(".") or type(exc).__name__


def load_input(
    source: AudioSource | np.ndarray,
    *,
    name: str | None = None,
    max_duration: float | None = MAX_DURATION,
    raw: PcmFormat | None = None,
    rate: int | None = None,
) -> tuple[str, Audio]:
    """What every pipeline takes: a path, bytes, a file object or an array (at `rate`, default 16 kHz)
    -> (label for messages, decoded Audio). Silent audio is refused: recognisers invent text for it."""
    label = display_name(name if name is not None else _label(source))
    return label, read_audio(source, rate=rate, raw=raw, max_duration=max_duration, name=label)
