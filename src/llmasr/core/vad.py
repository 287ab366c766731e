"""Long-form splitting: cut audio into spans a recogniser with a fixed window (Whisper: 30 s) can take.

Splitting at pauses found by a voice activity detector keeps words whole and skips long silences,
where recognisers tend to invent text. The Silero VAD ONNX model bundled with faster-whisper runs on
the CPU with onnxruntime, so there is nothing to download.
"""

from __future__ import annotations

import numpy as np

from llmasr.core.audio import SAMPLE_RATE

#: audio or a speech chunk shorter than this holds no word (seconds): Silero VAD's default minimum speech
#: duration (250 ms; faster-whisper's `VadOptions.min_speech_duration_ms` is 0 since 1.1, so it is set
#: here). Given whole, a 0.1 s clip read "Transcribe the speech." (the speech-LLMs' own instruction) or
#: "c b c b c" where Whisper returns nothing.
MIN_SPEECH_SECONDS = 0.25


def split(
    audio: np.ndarray, max_seconds: float = 30.0, min_silence_ms: int = 500, pad_ms: int = 200
) -> list[tuple[int, int]]:
    """Sample spans (start, end), ordered and non-overlapping, covering the speech in 16 kHz `audio`.

    Each span is at most `max_seconds` long. Nearby speech chunks are merged greedily (with the pauses
    between them) up to that length, so the recogniser sees as much context as it can take; a speech
    chunk longer than that with no usable pause is cut hard. Audio no longer than `max_seconds` is
    returned whole without running the VAD; audio shorter than MIN_SPEECH_SECONDS (or empty) gives [], as
    does long audio with no speech.
    """
    if max_seconds <= 0:
        raise ValueError(f"max_seconds must be positive, got {max_seconds}")
    n = len(audio)
    max_len = int(max_seconds * SAMPLE_RATE)
    if n < MIN_SPEECH_SECONDS * SAMPLE_RATE:
        return []
    if n <= max_len:
        return [(0, n)]

    from faster_whisper.vad import VadOptions, get_speech_timestamps

    options = VadOptions(
        min_silence_duration_ms=min_silence_ms,
        min_speech_duration_ms=int(MIN_SPEECH_SECONDS * 1000),
        speech_pad_ms=pad_ms,
        # lets the VAD itself split over-long speech at its last pause (>98 ms) before we cut hard
        max_speech_duration_s=max_seconds,
    )
    chunks = get_speech_timestamps(np.ascontiguousarray(audio, dtype=np.float32), options, SAMPLE_RATE)
    return _pack([(int(c["start"]), int(c["end"])) for c in chunks], max_len, n)


#: silence added at both edges of a segment before recognition (seconds). Recognisers trained on 30 s
#: windows rarely saw speech start at the first sample: a tightly cut 0.53 s "Stop." read "It's tough."
#: bare and "Stop." with 0.2 s of silence around it (shared/cases/05).
EDGE_PAD = 0.2


def pad_edges(audio: np.ndarray, max_seconds: float, pad: float = EDGE_PAD) -> tuple[np.ndarray, float]:
    """`audio` with up to `pad` seconds of silence at each edge, staying within `max_seconds` in all;
    returns (padded audio, seconds added at the start), to subtract from times measured in it."""
    room = max(0, int(max_seconds * SAMPLE_RATE) - len(audio)) // 2
    n = min(int(pad * SAMPLE_RATE), room)
    if n == 0:
        return audio, 0.0
    return np.pad(np.asarray(audio, dtype=np.float32), (n, n)), n / SAMPLE_RATE


def _pack(chunks: list[tuple[int, int]], max_len: int, n: int) -> list[tuple[int, int]]:
    """Clip chunks to [0, n), cut each to at most `max_len`, then merge neighbours while they fit."""
    pieces: list[tuple[int, int]] = []
    last_end = 0
    for start, end in sorted(chunks):
        start, end = max(start, last_end, 0), min(end, n)
        while end - start > max_len:
            pieces.append((start, start + max_len))
            start += max_len
        if end > start:
            pieces.append((start, end))
        last_end = max(last_end, end)
    spans: list[tuple[int, int]] = []
    for start, end in pieces:
        if spans and end - spans[-1][0] <= max_len:
            spans[-1] = (spans[-1][0], end)
        else:
            spans.append((start, end))
    return spans
