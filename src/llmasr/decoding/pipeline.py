"""Shallow fusion end to end: audio -> VAD segments -> N-best -> LLM rescoring -> Transcript.

A `Pipeline` loads its models once and transcribes many inputs; the CLI, the Python API,
evaluation, tuning and the server all go through it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from llmasr.components.asr.base import Recognizer
from llmasr.components.lm.base import Scorer
from llmasr.core import vad
from llmasr.core.audio import SAMPLE_RATE, PcmFormat, load_input
from llmasr.core.errors import ModelError
from llmasr.core.types import Hypothesis, Segment, Transcript, Word
from llmasr.decoding.context import build_context
from llmasr.decoding.options import Options, resolve_options
from llmasr.decoding.rescore import Rescorer
from llmasr.decoding.terms import TermRetriever
from llmasr.models.registry import resolve


def load_recognizer(name: str, options: Options, log: Callable[[str], None] | None = None) -> Recognizer:
    kind, location = resolve(name, "asr", log=log)
    if kind == "whisper":
        from llmasr.components.asr.whisper import WhisperRecognizer

        return WhisperRecognizer(
            location, name=name, device=options.device, threads=options.threads, workers=options.asr_workers
        )
    if kind == "ctc":
        from llmasr.components.asr.ctc import CtcRecognizer

        return CtcRecognizer(location, name=name, device=options.device)
    if kind == "pocketsphinx":
        from llmasr.components.asr.pocketsphinx import PocketsphinxRecognizer

        return PocketsphinxRecognizer()
    if kind == "hf-asr":  # a Hugging Face Whisper (hub id or transformers folder): converted once, cached
        from llmasr.components.asr.convert import convert_hf_whisper
        from llmasr.components.asr.whisper import WhisperRecognizer

        converted = convert_hf_whisper(location, log=log)
        return WhisperRecognizer(
            str(converted),
            name=name,
            device=options.device,
            threads=options.threads,
            workers=options.asr_workers,
        )
    raise ModelError(f"'{name}' resolved to an unknown recogniser kind '{kind}'")


def load_scorer(
    name: str | None, options: Options, log: Callable[[str], None] | None = None
) -> Scorer | None:
    if not name:
        return None
    kind, location = resolve(name, "lm", log=log)
    if kind == "ngram":
        from llmasr.components.lm.ngram import NgramScorer

        return NgramScorer(location, name=name)
    from llmasr.components.lm.causal import CausalLMScorer

    return CausalLMScorer(
        location, name=name, device=options.device, dtype=options.lm_dtype, threads=options.threads
    )


def load_corrector(name: str, options: Options, log: Callable[[str], None] | None = None) -> Any:
    from llmasr.decoding.correct import GenerativeCorrector

    kind, location = resolve(name, "lm", log=log)
    if kind != "causal-lm":
        raise ModelError(f"'{name}' is a {kind} model; generative correction needs a causal (instruct) LLM")
    return GenerativeCorrector(
        location,
        name=name,
        device=options.device,
        dtype=options.lm_dtype,
        threads=options.threads,
        max_change=options.correct_max_change,
    )


@dataclass
class SegmentResult:
    """First-pass output of one VAD segment, before rescoring."""

    start: float
    end: float
    audio: np.ndarray
    nbest: list[Hypothesis]
    #: the terms this segment was decoded with (narrowed from a long list by retrieval)
    terms: list[str] = field(default_factory=list)
    #: seconds of silence added before `audio` (vad.pad_edges): times in `audio` minus this are segment times
    lead: float = 0.0


class Pipeline:
    def __init__(
        self,
        options: Options | None = None,
        *,
        recognizer: Recognizer | None = None,
        scorer: Scorer | None = None,
        corrector: Any = None,
        log: Callable[[str], None] | None = None,
    ) -> None:
        self.options = options or resolve_options()
        self.recognizer = recognizer or load_recognizer(self.options.asr, self.options, log=log)
        if scorer is None and self.options.lm:
            if self.options.weights.lm_weight != 0.0:
                scorer = load_scorer(self.options.lm, self.options, log=log)
            else:  # weight 0: the LM is never run, but a wrong name is still an error
                resolve(self.options.lm, "lm", log=log)
        self.scorer = scorer
        self._finder: Any = None
        self.corrector = corrector
        if corrector is None and self.options.correct:
            self.corrector = load_corrector(self.options.corrector, self.options, log=log)

    def asr_prompt(self, prompt: str | None = None, terms: list[str] | None = None) -> str | None:
        if not self.options.asr_prompt:
            return None
        parts = [p.strip().rstrip(".") for p in [prompt, ", ".join(terms or [])] if p and p.strip()]
        return ". ".join(parts) or None

    def entity_finder(self) -> Any:
        """The speech-to-entity retriever (D5), loaded on first use."""
        if self._finder is None:
            from llmasr.components.entities.retriever import shared_finder

            self._finder = shared_finder(self.options.retriever)
        return self._finder

    def first_pass(
        self,
        audio: np.ndarray,
        prompt: str | None = None,
        terms: Sequence[str] | None = None,
        nbest: int | None = None,
    ) -> Iterator[SegmentResult]:
        """N-best lists of the VAD segments, decoded `batch_size` at a time.

        A term list longer than `max_terms` is narrowed per segment (Whisper keeps only ~223 prompt
        tokens, too few for a long list). `term_retrieval: text`: a first decoding with the domain prompt
        alone, `TermRetriever` picks the terms its N-best resembles, and the segment is decoded again with
        those. `speech`: the trained speech-to-entity retriever picks them from the audio, and the segment
        is decoded once.
        """
        terms = list(terms or [])
        limit = self.options.max_terms
        narrow = bool(terms) and 0 < limit < len(terms) and self.options.asr_prompt
        by_speech = narrow and self.options.term_retrieval == "speech"
        retriever = TermRetriever(terms) if narrow and not by_speech else None
        spans = vad.split(audio, max_seconds=self.recognizer.window)
        batch = max(1, self.options.batch_size)
        n = nbest or self.options.nbest
        for i in range(0, len(spans), batch):
            chunk = spans[i : i + batch]
            padded = [vad.pad_edges(audio[s:e], self.recognizer.window) for s, e in chunk]
            pieces = [p for p, _ in padded]
            leads = [lead for _, lead in padded]
            if by_speech:
                found = self.entity_finder().top(pieces, terms, limit)
                picked = [[r.entity for r in row] for row in found]
                lists = [
                    self.recognizer.nbest([piece], n, prompt=self.asr_prompt(prompt, seg_terms))[0]
                    for piece, seg_terms in zip(pieces, picked)
                ]
                for (s, e), piece, nb, seg_terms, lead in zip(chunk, pieces, lists, picked, leads):
                    yield SegmentResult(s / SAMPLE_RATE, e / SAMPLE_RATE, piece, nb, seg_terms, lead)
                continue
            lists = self.recognizer.nbest(
                pieces, n, prompt=self.asr_prompt(prompt, None if narrow else terms)
            )
            for (s, e), piece, nb, lead in zip(chunk, pieces, lists, leads):
                seg_terms = terms
                if retriever is not None:
                    seg_terms = retriever.top([h.text for h in nb], limit)
                    if seg_terms:
                        nb = self.recognizer.nbest([piece], n, prompt=self.asr_prompt(prompt, seg_terms))[0]
                yield SegmentResult(s / SAMPLE_RATE, e / SAMPLE_RATE, piece, nb, list(seg_terms), lead)

    def transcribe(
        self,
        source: str | Path | bytes | np.ndarray,
        *,
        prompt: str | None = None,
        terms: list[str] | None = None,
        name: str | None = None,
        nbest: int | None = None,
        raw: PcmFormat | None = None,
    ) -> Transcript:
        """One input (path, bytes or 16 kHz float32 array) to a Transcript; per-call prompt, terms and
        N-best size override the options (the server shares one Pipeline between requests)."""
        started = time.perf_counter()
        label, decoded = load_input(
            source, name=name, max_duration=self.options.max_duration, raw=raw or self.options.pcm_format()
        )
        audio = decoded.samples
        prompt = prompt if prompt is not None else self.options.prompt
        terms = terms if terms is not None else self.options.terms
        timings = {"first_pass": 0.0, "rescoring": 0.0, "correction": 0.0, "alignment": 0.0}
        corrections = [0, 0]  # accepted, tried
        segments: list[Segment] = []
        history: list[str] = []
        t = time.perf_counter()
        for seg in self.first_pass(audio, prompt, terms, nbest):
            timings["first_pass"] += time.perf_counter() - t
            if seg.nbest:
                t = time.perf_counter()
                o = self.options
                rescorer = Rescorer(self.scorer, o.weights, prompt, seg.terms, o.context_tokens)
                chosen = rescorer.choose(seg.nbest, history)
                timings["rescoring"] += time.perf_counter() - t
                if self.corrector is not None:
                    t = time.perf_counter()
                    context = build_context(prompt, seg.terms, history[-1] if history else "")
                    fix = self.corrector.correct([h.text for h in seg.nbest], chosen.text, context)
                    corrections[0] += fix.accepted
                    corrections[1] += 1
                    if fix.accepted and fix.text != chosen.text.strip():
                        chosen = Hypothesis(text=fix.text, am_score=chosen.am_score, lm_score=chosen.lm_score)
                    timings["correction"] += time.perf_counter() - t
                if chosen.text.strip():
                    t = time.perf_counter()
                    shift = seg.start - seg.lead

                    def at(t: float, shift: float = shift, seg: SegmentResult = seg) -> float:
                        return round(min(max(t + shift, seg.start), seg.end), 3)

                    words = [
                        Word(w.word, at(w.start), at(w.end), w.probability)
                        for w in self.recognizer.align(seg.audio, chosen)
                    ]
                    timings["alignment"] += time.perf_counter() - t
                    history.append(chosen.text.strip())
                    segments.append(
                        Segment(
                            start=round(seg.start, 3),
                            end=round(seg.end, 3),
                            text=chosen.text.strip(),
                            words=words,
                            first_pass_text=seg.nbest[0].text.strip(),
                            nbest=seg.nbest,
                        )
                    )
            t = time.perf_counter()
        duration = len(audio) / SAMPLE_RATE
        elapsed = time.perf_counter() - started
        info: dict[str, Any] = {
            "asr": self.options.asr,
            "lm": self.scorer.name if self.scorer is not None else None,
            "lm_dtype": str(getattr(getattr(self.scorer, "model", None), "dtype", "")).replace("torch.", "")
            or None,
            "weights": vars(self.options.weights).copy(),
            "nbest": nbest or self.options.nbest,
            "corrector": self.corrector.name if self.corrector is not None else None,
            "corrections_accepted": corrections[0] if self.corrector is not None else None,
            "seconds": {k: round(v, 3) for k, v in {**timings, "total": elapsed}.items()},
            "rtfx": round(duration / elapsed, 2) if elapsed > 0 else None,
            "input": decoded.describe(),
        }
        return Transcript(source=label, duration=duration, segments=segments, info=info)
