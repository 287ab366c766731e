"""llmasr: large language models inside speech recognition, offline on a CPU.

>>> import llmasr
>>> transcript = llmasr.transcribe("talk.wav", prompt="A lecture on astronomy.")
>>> transcript.text, transcript.segments[0].words[0]
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from llmasr.core.errors import AudioError, LlmasrError, ManifestError, ModelError
from llmasr.core.types import Hypothesis, Segment, Transcript, Word

__version__ = "0.1.0"
__all__ = [
    "AudioError",
    "Hypothesis",
    "LlmasrError",
    "ManifestError",
    "ModelError",
    "Pipeline",
    "Segment",
    "Transcript",
    "Word",
    "transcribe",
]


def __getattr__(name: str) -> Any:
    if name == "Pipeline":  # imported lazily: it pulls in torch and CTranslate2
        from llmasr.decoding.pipeline import Pipeline

        return Pipeline
    raise AttributeError(name)


def transcribe(
    audio: str | Path | bytes | Any,
    *,
    asr: str | None = None,
    lm: str | None = None,
    nbest: int | None = None,
    prompt: str | None = None,
    terms: list[str] | None = None,
    profile: str | None = None,
    preset: str | None = None,
    raw: Any = None,
    **options: Any,
) -> Transcript:
    """Transcribe one input (a path, the file's bytes, or a 16 kHz float32 array) with any recogniser
    and LLM rescoring; `options` are the other flat option names (llmasr.decoding.options.FLAT, e.g.
    `correct=True`, `lm_weight=0.3`, `raw_format="s16le:8000"`); `raw` a `llmasr.core.audio.PcmFormat`
    for headerless audio; `preset` fast, default or accurate. For many inputs, build one `Pipeline` and
    reuse it. Raises LlmasrError."""
    from llmasr.decoding.options import resolve_options
    from llmasr.decoding.pipeline import Pipeline

    opts = resolve_options(
        profile=profile, preset=preset, asr=asr, lm=lm, nbest=nbest, prompt=prompt, terms=terms, **options
    )
    return Pipeline(opts).transcribe(audio, raw=raw)
