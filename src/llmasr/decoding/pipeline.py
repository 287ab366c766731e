"""One pipeline for every recogniser: audio -> VAD segments -> N-best -> LLM rescoring -> correction.

Any `Recognizer` (Whisper, pocketsphinx, the token CTC recogniser, a trained speech-LLM) gives each segment
an N-best list; the rescoring LM chooses (conditioned on the domain prompt, the segment's terms and the
previous segments), an optional corrector rewrites the choice (guarded), and the recogniser times the
words of the final text. A `Pipeline` loads its models once and transcribes many inputs; the CLI, the
Python API, evaluation, tuning, batch transcription and the server all go through it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from llmasr.components.asr.base import Recognizer
from llmasr.components.asr.combined import CombinedRecognizer
from llmasr.components.asr.registry import LoadSettings, load_recognizer
from llmasr.components.lm.base import Scorer
from llmasr.components.lm.registry import load_scorer
from llmasr.core import vad
from llmasr.core.audio import SAMPLE_RATE, PcmFormat, load_input
from llmasr.core.errors import LlmasrError, ModelError
from llmasr.core.types import Hypothesis, Segment, Transcript, Word
from llmasr.decoding.context import build_context
from llmasr.decoding.options import LM_WEIGHT_NAMES, OptionError, Options, resolve_options
from llmasr.decoding.rescore import NbestRescorer, candidates
from llmasr.decoding.terms import TermRetriever, interleave
from llmasr.models.registry import resolve


def load_corrector(options: Options, log: Callable[[str], None] | None = None) -> Any:
    """The generative corrector `options.correction` names (an instruct causal LLM)."""
    from llmasr.decoding.correct import GenerativeCorrector

    name = options.correction.corrector
    kind, location = resolve(name, "lm", log=log)
    if kind != "causal-lm":
        raise ModelError(f"'{name}' is a {kind} model; generative correction needs a causal (instruct) LLM")
    return GenerativeCorrector(
        location,
        name=name,
        device=options.decoding.device,
        dtype=options.rescoring.lm_dtype,
        threads=options.decoding.threads,
        max_change=options.correction.max_change,
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
    """Transcription with any recogniser; see the module doc. Models are loaded in `__init__` (or given:
    tests, a server sharing one), and per-call prompt, terms, N-best size and raw format override the
    options."""

    def __init__(
        self,
        options: Options | None = None,
        *,
        recognizer: Recognizer | None = None,
        scorer: Scorer | None = None,
        corrector: Any = None,
        log: Callable[[str], None] | None = None,
        all_features: bool = False,
    ) -> None:
        """`all_features`: compute every rescoring feature, also those weighted 0 (for tuning); by
        default a recogniser combination this pipeline loads scores with the further recognisers
        only when their score (`other_am_weight`) counts."""
        self.options = options or resolve_options()
        o = self.options
        d = o.decoding
        if recognizer is None:
            recognizer = load_recognizer(
                d.asr, LoadSettings(device=d.device, threads=d.threads, workers=d.asr_workers), log=log
            )
            if isinstance(recognizer, CombinedRecognizer):
                recognizer.score_with_all = all_features or o.rescoring.weights.other_am_weight != 0.0
        self.recognizer = recognizer
        self._check_recognizer()
        lm = o.rescoring.lm
        if scorer is None and lm:
            if any(getattr(o.rescoring.weights, name) != 0.0 for name in LM_WEIGHT_NAMES):
                scorer = load_scorer(
                    lm, device=d.device, dtype=o.rescoring.lm_dtype, threads=d.threads, log=log
                )
            else:  # every LM weight 0: the LM is never run, but a wrong name is still an error
                resolve(lm, "lm", log=log)
        self.scorer = scorer
        self._finder: Any = None
        self._term_retriever: tuple[tuple[str, ...], TermRetriever] | None = None
        self.corrector = corrector
        if corrector is None and o.correction.enabled:
            self.corrector = load_corrector(o, log=log)

    def _check_recognizer(self) -> None:
        """Explicit options this recogniser cannot honour are errors, not silently dropped."""
        rec, o = self.recognizer, self.options
        cap = int(getattr(rec, "max_nbest", 32))
        if "nbest" in o.given and o.decoding.nbest > cap:
            raise OptionError(
                f"--nbest {o.decoding.nbest}: {rec.name} gives at most {cap} "
                f"{'hypothesis' if cap == 1 else 'hypotheses'} per segment"
            )
        if "asr_prompt" in o.given and o.context.asr_prompt and not getattr(rec, "accepts_prompt", True):
            raise OptionError(f"--asr-prompt: {rec.name} takes no text prompt (the LLM still reads it)")

    # ---- the first pass ------------------------------------------------------------------------

    def asr_prompt(self, prompt: str | None = None, terms: Sequence[str] | None = None) -> str | None:
        """The recogniser's text prompt: domain description, then terms; None when it takes none."""
        if not self.options.context.asr_prompt or not getattr(self.recognizer, "accepts_prompt", True):
            return None
        parts = [p.strip().rstrip(".") for p in [prompt, ", ".join(terms or [])] if p and p.strip()]
        return ". ".join(parts) or None

    def term_retriever(self, terms: list[str]) -> TermRetriever:
        """The text-side retriever of a term list, built once per list (every batch of segments of an
        input, and every request with the same list, share it)."""
        key = tuple(terms)
        cached = self._term_retriever  # one read: concurrent requests may replace it
        if cached is None or cached[0] != key:
            cached = self._term_retriever = (key, TermRetriever(terms))
        return cached[1]

    def entity_finder(self) -> Any:
        """The speech-to-entity retriever, loaded on first use."""
        if self._finder is None:
            from llmasr.components.entities.retriever import shared_finder

            self._finder = shared_finder(self.options.context.retriever)
        return self._finder

    def first_pass(
        self,
        audio: np.ndarray,
        prompt: str | None = None,
        terms: Sequence[str] | None = None,
        nbest: int | None = None,
    ) -> Iterator[SegmentResult]:
        """N-best lists of the VAD segments, decoded `batch_size` at a time, each padded with silence at
        its edges (vad.pad_edges).

        A term list longer than `max_terms` is narrowed per segment (Whisper keeps only ~223 prompt
        tokens, too few for a long list). `term_retrieval: text`: a first decoding with the domain prompt
        alone, `TermRetriever` picks the terms its N-best resembles, and the segment is decoded again with
        those. `speech`: the trained speech-to-entity retriever picks them from the audio, and the segment
        is decoded once. `both`: the two rankings interleaved (`terms.interleave`), decoded twice.
        """
        spans = vad.split(audio, max_seconds=self.recognizer.window)
        batch = max(1, self.options.decoding.batch_size)
        for i in range(0, len(spans), batch):
            chunk = [(audio, s, e) for s, e in spans[i : i + batch]]
            yield from self._decode_spans(chunk, prompt, list(terms or []), nbest)

    def _decode_spans(
        self,
        chunk: Sequence[tuple[np.ndarray, int, int]],
        prompt: str | None,
        terms: list[str],
        nbest: int | None,
    ) -> list[SegmentResult]:
        """One recogniser batch: (audio, start, end) spans, possibly of different inputs sharing a prompt
        and term list (see `first_pass` for the narrowing of long term lists)."""
        c = self.options.context
        limit = c.max_terms
        n = nbest or self.options.decoding.nbest
        padded = [vad.pad_edges(audio[s:e], self.recognizer.window) for audio, s, e in chunk]
        pieces = [p for p, _ in padded]
        narrow = bool(terms) and 0 < limit < len(terms) and c.asr_prompt
        if not narrow:
            lists = self.recognizer.nbest(pieces, n, prompt=self.asr_prompt(prompt, terms))
            picked = [list(terms) for _ in pieces]
        else:
            # each retrieval ranks the list's terms per segment; "both" interleaves the two rankings
            rankings: list[list[list[str]]] = []
            if c.term_retrieval in ("speech", "both"):
                found = self.entity_finder().top([audio[s:e] for audio, s, e in chunk], terms, limit)
                rankings.append([[r.entity for r in row] for row in found])
            first = None
            if c.term_retrieval in ("text", "both"):
                first = self.recognizer.nbest(pieces, n, prompt=self.asr_prompt(prompt, None))
                retriever = self.term_retriever(terms)
                rankings.append([retriever.top([h.text for h in nb], limit) for nb in first])
            picked = [interleave([r[i] for r in rankings], limit) for i in range(len(pieces))]
            redecode = getattr(self.recognizer, "accepts_prompt", True)
            lists = [
                self.recognizer.nbest([piece], n, prompt=self.asr_prompt(prompt, seg_terms))[0]
                if first is None or (seg_terms and redecode)
                else first[i]
                for i, (piece, seg_terms) in enumerate(zip(pieces, picked))
            ]
        return [
            SegmentResult(s / SAMPLE_RATE, e / SAMPLE_RATE, piece, nb, seg_terms, lead)
            for (_, s, e), (piece, lead), nb, seg_terms in zip(chunk, padded, lists, picked)
        ]

    # ---- one input -----------------------------------------------------------------------------

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
        """One input (a path, bytes, or a 16 kHz float32 array) to a Transcript; per-call prompt, terms,
        N-best size and headerless format override the options (the server shares one Pipeline).
        Raises AudioError for unusable audio (naming the input)."""
        started = time.perf_counter()
        job = self._job(source, name, prompt, terms, raw)
        t = time.perf_counter()
        for seg in self.first_pass(job.audio, job.prompt, job.terms, nbest):
            job.timings["first_pass"] += time.perf_counter() - t
            self._finish(job, seg)
            t = time.perf_counter()
        return self._transcript(job, started, nbest)

    def transcribe_many(
        self,
        sources: Sequence[str | Path | bytes | np.ndarray],
        *,
        names: Sequence[str | None] | None = None,
        prompts: Sequence[str | None] | None = None,
        terms: Sequence[list[str] | None] | None = None,
        nbest: int | None = None,
        raw: PcmFormat | None = None,
    ) -> list[Transcript | LlmasrError]:
        """Many inputs, decoded together: the segments of every input that shares a prompt and term list go
        through the recogniser `batch_size` at a time, and the LM scores one segment of every input in a
        single batch (`score_batch`; segment k of an input needs the text chosen for segment k - 1). The
        words are those of `transcribe` one input at a time. A bad input gives its LlmasrError in its place;
        the others complete."""
        started = time.perf_counter()
        count = len(sources)
        results: list[Transcript | LlmasrError | None] = [None] * count
        jobs: dict[int, _Job] = {}
        for i, source in enumerate(sources):
            try:
                jobs[i] = self._job(
                    source,
                    names[i] if names else None,
                    prompts[i] if prompts else None,
                    terms[i] if terms else None,
                    raw,
                )
            except LlmasrError as exc:
                results[i] = exc
        groups: dict[tuple[str | None, tuple[str, ...]], list[int]] = {}
        for i, job in jobs.items():
            groups.setdefault((job.prompt, tuple(job.terms)), []).append(i)
        segments: dict[int, list[SegmentResult]] = {i: [] for i in jobs}
        batch = max(1, self.options.decoding.batch_size)
        for (prompt, group_terms), members in groups.items():
            spans = [(i, s, e) for i in members for s, e in vad.split(jobs[i].audio, self.recognizer.window)]
            for k in range(0, len(spans), batch):
                chunk = spans[k : k + batch]
                t = time.perf_counter()
                decoded = self._decode_spans(
                    [(jobs[i].audio, s, e) for i, s, e in chunk], prompt, list(group_terms), nbest
                )
                share = (time.perf_counter() - t) / len(chunk)
                for (i, _, _), seg in zip(chunk, decoded):
                    segments[i].append(seg)
                    jobs[i].timings["first_pass"] += share
        rounds = max((len(v) for v in segments.values()), default=0)
        for r in range(rounds):
            todo = [(i, segments[i][r]) for i in jobs if r < len(segments[i]) and segments[i][r].nbest]
            scorers = self._round_scorers([(jobs[i], seg) for i, seg in todo])
            for (i, seg), scorer in zip(todo, scorers):
                self._finish(jobs[i], seg, scorer=scorer)
        for i, job in jobs.items():
            results[i] = self._transcript(job, started, nbest, elapsed_share=1.0 / max(1, len(jobs)))
        return results  # type: ignore[return-value]

    def _round_scorers(self, todo: Sequence[tuple[_Job, SegmentResult]]) -> list[Scorer | None]:
        """Scorers serving LM scores computed for a whole round in one `score_batch` call (when the scorer
        has one and the weights use the LM); the plain scorer otherwise."""
        w = self.options.rescoring.weights
        batched = getattr(self.scorer, "score_batch", None)
        if not callable(batched) or len(todo) < 2 or all(getattr(w, n) == 0.0 for n in LM_WEIGHT_NAMES):
            return [self.scorer] * len(todo)
        items = []
        for job, seg in todo:
            rescorer = self._rescorer(job.prompt, seg.terms)
            texts = [c.hypothesis.text for c in candidates(seg.nbest)]
            items.append((texts, rescorer.context(job.history)))
        t = time.perf_counter()
        scores = batched(items)
        share = (time.perf_counter() - t) / len(todo)
        for job, _ in todo:
            job.timings["rescoring"] += share
        return [
            _Precomputed(self.scorer, texts, context, values)
            for (texts, context), values in zip(items, scores)
        ]

    def _rescorer(
        self, prompt: str | None, terms: Sequence[str], scorer: Scorer | None = None
    ) -> NbestRescorer:
        r = self.options.rescoring
        return NbestRescorer(
            scorer if scorer is not None else self.scorer, r.weights, prompt, terms, r.context_tokens
        )

    def _job(
        self,
        source: str | Path | bytes | np.ndarray,
        name: str | None,
        prompt: str | None,
        terms: list[str] | None,
        raw: PcmFormat | None,
    ) -> _Job:
        o = self.options
        label, decoded = load_input(
            source, name=name, max_duration=o.decoding.max_duration, raw=raw or o.decoding.pcm_format()
        )
        return _Job(
            label=label,
            decoded=decoded,
            prompt=prompt if prompt is not None else o.context.prompt,
            terms=list(terms if terms is not None else o.context.terms),
        )

    def _transcript(
        self, job: _Job, started: float, nbest: int | None, elapsed_share: float = 1.0
    ) -> Transcript:
        o = self.options
        duration = len(job.audio) / SAMPLE_RATE
        elapsed = (time.perf_counter() - started) * elapsed_share
        info: dict[str, Any] = {
            "asr": o.decoding.asr,
            "lm": self.scorer.name if self.scorer is not None else None,
            "lm_dtype": str(getattr(getattr(self.scorer, "model", None), "dtype", "")).replace("torch.", "")
            or None,
            "weights": vars(o.rescoring.weights).copy(),
            "nbest": nbest or o.decoding.nbest,
            "corrector": self.corrector.name if self.corrector is not None else None,
            "corrections_accepted": job.corrections[0] if self.corrector is not None else None,
            "seconds": {k: round(v, 3) for k, v in {**job.timings, "total": elapsed}.items()},
            "rtfx": round(duration / elapsed, 2) if elapsed > 0 else None,
            "input": job.decoded.describe(),
        }
        return Transcript(source=job.label, duration=duration, segments=job.segments, info=info)

    def _finish(self, job: _Job, seg: SegmentResult, scorer: Scorer | None = None) -> None:
        """Rescore, correct and time one segment's N-best list, and add it to the job's transcript."""
        if not seg.nbest:
            return
        t = time.perf_counter()
        chosen = self._rescorer(job.prompt, seg.terms, scorer).choose(seg.nbest, job.history)
        job.timings["rescoring"] += time.perf_counter() - t
        if self.corrector is not None:
            t = time.perf_counter()
            context = build_context(job.prompt, seg.terms, job.history[-1] if job.history else "")
            fix = self.corrector.correct([h.text for h in seg.nbest], chosen.text, context)
            job.corrections[0] += fix.accepted
            job.corrections[1] += 1
            if fix.accepted and fix.text != chosen.text.strip():
                chosen = replace(chosen, text=fix.text, tokens=[], words=[])
            job.timings["correction"] += time.perf_counter() - t
        text = chosen.text.strip()
        if not text:
            return
        t = time.perf_counter()
        shift = seg.start - seg.lead

        def at(value: float) -> float:
            return round(min(max(value + shift, seg.start), seg.end), 3)

        words = [
            Word(w.word, at(w.start), at(w.end), w.probability)
            for w in self.recognizer.align(seg.audio, chosen)
        ]
        job.timings["alignment"] += time.perf_counter() - t
        job.history.append(text)
        job.segments.append(
            Segment(
                start=round(seg.start, 3),
                end=round(seg.end, 3),
                text=text,
                words=words,
                first_pass_text=seg.nbest[0].text.strip(),
                nbest=seg.nbest,
            )
        )


@dataclass
class _Job:
    """One input on its way through the pipeline."""

    label: str
    decoded: Any
    prompt: str | None
    terms: list[str]
    history: list[str] = field(default_factory=list)
    segments: list[Segment] = field(default_factory=list)
    corrections: list[int] = field(default_factory=lambda: [0, 0])
    timings: dict[str, float] = field(
        default_factory=lambda: {"first_pass": 0.0, "rescoring": 0.0, "correction": 0.0, "alignment": 0.0}
    )

    @property
    def audio(self) -> np.ndarray:
        return self.decoded.samples


class _Precomputed:
    """A Scorer that answers with scores computed beforehand (one `score_batch` for a round of segments)."""

    def __init__(self, scorer: Any, texts: Sequence[str], context: str, values: Sequence[float]) -> None:
        self._scorer = scorer
        self.name = getattr(scorer, "name", "lm")
        self._key = (tuple(texts), context)
        self._values = list(values)

    def score(self, texts: Sequence[str], context: str = "") -> list[float]:
        if (tuple(texts), context) != self._key:  # not what was batched: ask the scorer itself
            return self._scorer.score(texts, context)
        return list(self._values)

    def count_tokens(self, text: str) -> int:
        return self._scorer.count_tokens(text)
