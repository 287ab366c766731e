"""Deep-fusion inference: a trained SpeechLLM checkpoint as a recogniser, and long audio to a Transcript.

A checkpoint folder (written by `llmasr train`) holds only the trained weights and the resolved
recipe; the base encoder and LLM are loaded by the names the recipe gives, so the folder stays small.
`deep_transcript` ends in the same `Transcript` as the shallow pipeline, so writers, evaluation and
the server need no change.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from llmasr.components.speech.speechllm import SpeechLLM
from llmasr.core import vad
from llmasr.core.audio import SAMPLE_RATE
from llmasr.core.errors import ModelError
from llmasr.core.types import Segment, Transcript


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint folder itself, a run folder (then its newest checkpoint), or the name of a deep
    model shipped inside llmasr (`assets/adapters/<name>/`)."""
    from llmasr.models.registry import adapter_dir
    from llmasr.train.trainer import WEIGHTS, latest_checkpoint

    p = Path(path).expanduser()
    if not p.exists():
        shipped = adapter_dir(str(path))
        if (shipped / WEIGHTS).is_file() and (shipped / "recipe.yaml").is_file():
            return shipped
        raise ModelError(
            f"'{path}': not a checkpoint or run folder, and not a deep model shipped with llmasr "
            "(the D1/D3/D4 recipes need GPU training first: docs/deep.md)"
        )
    if (p / WEIGHTS).is_file() and (p / "recipe.yaml").is_file():
        return p
    found = latest_checkpoint(p) if p.is_dir() else None
    if found is None:
        raise ModelError(f"{p}: no deep-model checkpoint here (expected {WEIGHTS} + recipe.yaml)")
    return found


class DeepRecognizer:
    """Audio segments (16 kHz float32, at most `window` seconds each) to text with a SpeechLLM."""

    #: longest segment the encoder takes (Whisper's 30 s window)
    window: float = 30.0

    def __init__(
        self,
        model: SpeechLLM,
        *,
        name: str = "speechllm",
        batch_size: int = 16,
        max_new_tokens: int = 128,
        bf16: bool = False,
    ) -> None:
        self.model = model.eval()
        self.name = name
        self.batch_size = max(1, batch_size)
        self.max_new_tokens = max_new_tokens
        self.bf16 = bf16

    @classmethod
    def load(
        cls, path: str | Path, *, device: str = "cpu", batch_size: int = 16, bf16: bool | None = None
    ) -> DeepRecognizer:
        """Build the recipe's model, load the checkpoint's weights. `bf16` defaults to the recipe's
        mixed precision on CUDA (CPU autocast in bf16 is slow on most CPUs, so off there)."""
        from safetensors.torch import load_file

        from llmasr.train.config import load_recipe
        from llmasr.train.model import build_model, set_trainable

        folder = resolve_checkpoint(path)
        recipe = load_recipe(folder / "recipe.yaml")
        model = build_model(recipe.model, device=device)
        set_trainable(model, recipe.trained_parts())  # so a strict load checks every trained weight
        model.load_trainable(load_file(str(folder / "model.safetensors")), strict=True)
        set_trainable(model, ())
        if bf16 is None:
            bf16 = device.startswith("cuda") and recipe.run.mixed_precision == "bf16"
        return cls(
            model,
            name=str(folder),
            batch_size=batch_size,
            max_new_tokens=recipe.model.max_new_tokens,
            bf16=bf16,
        )

    def _autocast(self) -> contextlib.AbstractContextManager:
        if not self.bf16:
            return contextlib.nullcontext()
        return torch.autocast(self.model.device.type, dtype=torch.bfloat16)

    def transcribe(
        self,
        audio_segments: Sequence[np.ndarray],
        prompt: str | None = None,
        terms: Sequence[str] | None = None,
        segment_terms: Sequence[Sequence[str]] | None = None,
    ) -> list[str]:
        """One transcript per segment, in order; decoded `batch_size` at a time, similar lengths together.

        `terms` is one list for every segment; `segment_terms` one list per segment (retrieved entities).
        """
        texts = [""] * len(audio_segments)
        order = sorted(
            (i for i, a in enumerate(audio_segments) if len(a)), key=lambda i: len(audio_segments[i])
        )
        shared = list(terms) if terms else None
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            pieces = [np.asarray(audio_segments[i], dtype=np.float32) for i in idx]
            features = self.model.encoder.features(pieces)
            lengths = torch.tensor([len(a) for a in pieces], dtype=torch.long)
            batch_terms: Any = [list(segment_terms[i]) for i in idx] if segment_terms is not None else shared
            with self._autocast():
                out = self.model.generate(
                    features, prompt, terms=batch_terms, lengths=lengths, max_new_tokens=self.max_new_tokens
                )
            for i, text in zip(idx, out):
                texts[i] = text
        return texts


def deep_transcript(
    recognizer: DeepRecognizer,
    audio: np.ndarray,
    source_name: str,
    *,
    prompt: str | None = None,
    terms: Sequence[str] | None = None,
    max_seconds: float | None = None,
    finder: Any = None,
    max_terms: int = 0,
) -> Transcript:
    """Long audio -> VAD spans (at most the encoder's window) -> batched transcripts -> Transcript.

    Segments carry start, end and text (also as `first_pass_text`: a deep model decodes in one pass,
    so evaluation's first-pass and oracle columns equal its WER). `words` stays empty: a SpeechLLM
    has no alignment, and invented word times would mislead; subtitle writers then share a segment's
    time out over its cues by length, as they do for any unaligned text.

    With a `finder` (the speech-to-entity retriever, D5), a term list longer than `max_terms` is narrowed
    per segment to the `max_terms` entities the retriever finds in that segment's audio.
    """
    started = time.perf_counter()
    audio = np.asarray(audio, dtype=np.float32)
    spans = vad.split(audio, max_seconds=max_seconds or recognizer.window)
    pieces = [audio[s:e] for s, e in spans]
    if finder is not None and terms and 0 < max_terms < len(terms):
        found = finder.top(pieces, list(terms), max_terms) if pieces else []
        texts = recognizer.transcribe(
            pieces, prompt=prompt, segment_terms=[[r.entity for r in f] for f in found]
        )
    else:
        texts = recognizer.transcribe(pieces, prompt=prompt, terms=terms)
    segments = [
        Segment(round(s / SAMPLE_RATE, 3), round(e / SAMPLE_RATE, 3), t.strip(), first_pass_text=t.strip())
        for (s, e), t in zip(spans, texts)
        if t.strip()
    ]
    duration = len(audio) / SAMPLE_RATE
    elapsed = time.perf_counter() - started
    info = {
        "mode": "deep",
        "deep_model": recognizer.name,
        "seconds": {"total": round(elapsed, 3)},
        "rtfx": round(duration / elapsed, 2) if elapsed > 0 else None,
    }
    return Transcript(source=source_name, duration=duration, segments=segments, info=info)


class DeepPipeline:
    """The shallow `Pipeline`'s interface over a DeepRecognizer, so `llmasr.apps.evaluate.evaluate` and the
    CLI's per-file loop take a deep model unchanged: `transcribe(source, prompt=, terms=, name=)`."""

    def __init__(self, recognizer: DeepRecognizer, options: object | None = None) -> None:
        from llmasr.decoding.options import Options

        self.recognizer = recognizer
        self.options = options if options is not None else Options(asr=recognizer.name, lm=None)
        self._finder: Any = None

    def transcribe(
        self,
        source: str | Path | bytes | np.ndarray,
        *,
        prompt: str | None = None,
        terms: list[str] | None = None,
        name: str | None = None,
    ) -> Transcript:
        from llmasr.core.audio import load_input

        label, decoded = load_input(
            source, name=name, max_duration=getattr(self.options, "max_duration", None)
        )
        audio = decoded.samples
        prompt = prompt if prompt is not None else getattr(self.options, "prompt", None)
        terms = terms if terms is not None else (getattr(self.options, "terms", None) or None)
        finder = None
        if getattr(self.options, "term_retrieval", "text") == "speech":
            if self._finder is None:
                from llmasr.components.entities.retriever import shared_finder

                self._finder = shared_finder(self.options.retriever)  # type: ignore[attr-defined]
            finder = self._finder
        limit = int(getattr(self.options, "max_terms", 0) or 0)
        return deep_transcript(
            self.recognizer, audio, label, prompt=prompt, terms=terms, finder=finder, max_terms=limit
        )
