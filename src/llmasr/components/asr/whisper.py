"""Whisper through CTranslate2: N-best lists from beam search, word times from cross-attention alignment.

faster-whisper supplies the feature extractor, tokenizer, prompt layout and DTW alignment;
we call CTranslate2's `generate` ourselves because faster-whisper returns only one hypothesis.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence

import numpy as np

from llmasr.core.audio import SAMPLE_RATE
from llmasr.core.errors import ModelError
from llmasr.core.text import NO_REPEAT_NGRAM, is_decoder_loop
from llmasr.core.types import Hypothesis, Word

#: faster-whisper's defaults for "this window holds no speech" and "this text repeats itself"
NO_SPEECH_THRESHOLD = 0.6
LOGPROB_THRESHOLD = -1.0
MAX_LENGTH = 448
#: Whisper attends to at most 223 prompt tokens (half its 448-token context)
MAX_PROMPT_TOKENS = 223
#: punctuation glued to the neighbouring word in word timings (faster-whisper's defaults)
PREPEND_PUNCTUATIONS = "\"'“¿([{-"
APPEND_PUNCTUATIONS = "\"'.。,，!！?？:：”)]}、"


def total_logprob(score: float, ids: Sequence[int]) -> float:
    """A beam hypothesis's total log-probability (nats) from CTranslate2's score: the sum of its tokens'
    and the end-of-text's log-probabilities divided by its length without the end-of-text
    (length_penalty=1; checked against teacher-forced `score_texts`)."""
    return float(score) * max(1, len(ids))


def _logsumexp(x: np.ndarray) -> np.ndarray:
    """Row-wise log-sum-exp of a (steps, vocabulary) array, kept as a column."""
    top = x.max(axis=-1, keepdims=True)
    return top + np.log(np.exp(x - top).sum(axis=-1, keepdims=True))


class WhisperRecognizer:
    """A CTranslate2 Whisper model (a named one, or any converted folder)."""

    window = 30.0
    accepts_prompt = True
    max_nbest = 32

    def __init__(
        self,
        model_dir: str,
        *,
        name: str = "whisper",
        device: str = "cpu",
        compute_type: str = "int8",
        threads: int = 0,
        workers: int = 1,
        beam_size: int = 8,
        language: str = "en",
    ) -> None:
        """`workers`: CTranslate2 model replicas, so that that many threads can decode at once (a
        server with concurrency > 1); each has `threads` intra-op threads."""
        from faster_whisper import WhisperModel
        from faster_whisper.tokenizer import Tokenizer

        try:
            self._fw = WhisperModel(
                model_dir,
                device=device,
                compute_type=compute_type,
                cpu_threads=threads,
                num_workers=max(1, workers),
                local_files_only=True,
            )
        except Exception as exc:  # CTranslate2 raises RuntimeError/ValueError with terse texts
            raise ModelError(f"cannot load Whisper model from {model_dir}: {exc}") from exc
        self.name = name
        self.model_dir = model_dir
        self.beam_size = beam_size
        multilingual = self._fw.model.is_multilingual
        self.tokenizer = Tokenizer(
            self._fw.hf_tokenizer,
            multilingual,
            task="transcribe",
            language=language if multilingual else None,
        )
        self._frames = self._fw.feature_extractor.nb_max_frames
        # encoder outputs of this thread's last batch, keyed by id() of the segment array (kept alive
        # here), so that aligning the chosen hypothesis, or decoding a segment again with retrieved
        # terms, does not run the encoder again; per thread, so a server's workers don't evict each other
        self._local = threading.local()

    # -- helpers -----------------------------------------------------------------------------
    def _features(self, audio: np.ndarray) -> np.ndarray:
        from faster_whisper.audio import pad_or_trim

        feats = self._fw.feature_extractor(audio)
        return pad_or_trim(feats, self._frames)

    def _encoded(self, segments: Sequence[np.ndarray]) -> np.ndarray:
        """Encoder outputs of `segments`, from this thread's cache when it holds the same arrays."""
        cache: dict[int, tuple[np.ndarray, np.ndarray]] = getattr(self._local, "cache", {})
        hits = [cache.get(id(s)) for s in segments]
        if all(h is not None and h[0] is s for h, s in zip(hits, segments)):
            return np.concatenate([h[1] for h in hits if h is not None])
        encoded = self._encode(segments)
        self._local.cache = {id(s): (s, encoded[i : i + 1]) for i, s in enumerate(segments)}
        return encoded

    def _encode(self, segments: Sequence[np.ndarray]) -> np.ndarray:
        import ctranslate2

        feats = np.stack([self._features(s) for s in segments]).astype(np.float32)
        out = self._fw.model.encode(ctranslate2.StorageView.from_array(feats), to_cpu=True)
        return np.array(out)

    def _prompt(self, prompt: str | None) -> list[int]:
        previous: list[int] = []
        if prompt and prompt.strip():
            previous = self.tokenizer.encode(" " + prompt.strip())[-MAX_PROMPT_TOKENS:]
        return self._fw.get_prompt(self.tokenizer, previous, without_timestamps=True)

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode([t for t in ids if t < self.tokenizer.eot]).strip()

    # -- protocol ----------------------------------------------------------------------------
    def nbest(
        self, segments: Sequence[np.ndarray], n: int, prompt: str | None = None
    ) -> list[list[Hypothesis]]:
        import ctranslate2

        if not segments:
            return []
        encoded = self._encoded(segments)
        prompt_ids = self._prompt(prompt)
        beam = max(self.beam_size, n)
        results = self._fw.model.generate(
            ctranslate2.StorageView.from_array(encoded),
            [prompt_ids] * len(segments),
            beam_size=beam,
            num_hypotheses=n,
            return_scores=True,
            return_no_speech_prob=True,
            max_length=MAX_LENGTH,
        )
        room = MAX_LENGTH - len(prompt_ids) - 1  # a hypothesis this long was cut by the length limit
        out: list[list[Hypothesis]] = []
        for i, res in enumerate(results):
            hyps = []
            for ids, score in zip(res.sequences_ids, res.scores):
                text = self._decode(ids)
                hyps.append(Hypothesis(text=text, am_score=total_logprob(score, ids), tokens=list(ids)))
            best_avg = float(res.scores[0]) if res.scores else 0.0
            if res.no_speech_prob > NO_SPEECH_THRESHOLD and best_avg < LOGPROB_THRESHOLD:
                out.append([])
                continue
            seconds = len(segments[i]) / SAMPLE_RATE
            clean = [h for h in hyps if not is_decoder_loop(h.text, seconds, len(h.tokens), room)]
            if not clean and hyps:
                clean = self._unloop(encoded[i : i + 1], prompt_ids, n)
            out.append([h for h in clean if h.text] or clean[:1])
        return out

    def _unloop(self, encoded: np.ndarray, prompt_ids: list[int], n: int) -> list[Hypothesis]:
        """Every hypothesis is a decoder loop: decode again forbidding repeated NO_REPEAT_NGRAM-grams."""
        import ctranslate2

        res = self._fw.model.generate(
            ctranslate2.StorageView.from_array(encoded),
            [prompt_ids],
            beam_size=max(self.beam_size, n),
            num_hypotheses=n,
            return_scores=True,
            no_repeat_ngram_size=NO_REPEAT_NGRAM,
            max_length=MAX_LENGTH,
        )[0]
        return [
            Hypothesis(text=self._decode(ids), am_score=total_logprob(s, ids), tokens=list(ids))
            for ids, s in zip(res.sequences_ids, res.scores)
        ]

    def score_texts(self, audio: np.ndarray, texts: Sequence[str], prompt: str | None = None) -> list[float]:
        """Teacher-forced total log-probability (nats) of each text and the end-of-text after it, given
        a 16 kHz mono segment and the prompt: any text's score, e.g. another recogniser's hypothesis.
        The text is forced as a decoding prefix and CTranslate2 returns the log-probabilities of each
        step (`return_logits_vocab`); no token is suppressed, so the end-of-text after a text that stops
        early is judged too."""
        import ctranslate2

        if not texts:
            return []
        encoded = self._encoded([audio])
        prompt_ids = self._prompt(prompt)
        ids = [self.tokenizer.encode(" " + t.strip()) if t.strip() else [] for t in texts]
        results = self._fw.model.generate(
            ctranslate2.StorageView.from_array(np.repeat(encoded, len(ids), axis=0)),
            [prompt_ids + x + [self.tokenizer.eot] for x in ids],
            beam_size=1,
            # CTranslate2 returns max_length // 2 steps here (measured): room for every forced token
            max_length=min(2 * MAX_LENGTH, 2 * (len(prompt_ids) + 2 + max(len(x) for x in ids))),
            return_logits_vocab=True,
            suppress_blank=False,
            suppress_tokens=[],
        )
        scores = []
        for x, res in zip(ids, results):
            logits = np.asarray(res.logits[0], dtype=np.float64)
            logp = logits - _logsumexp(logits)
            targets = x + [self.tokenizer.eot]
            # tokens past the decoder's reach (a text longer than it can emit) score as a uniform guess
            # (-log V each), so that one overlong text gets a low, finite score instead of failing the input
            steps = min(logp.shape[0], len(targets))
            missing = (len(targets) - steps) * math.log(logp.shape[1])
            scores.append(float(sum(logp[i, t] for i, t in enumerate(targets[:steps]))) - missing)
        return scores

    def align(self, audio: np.ndarray, hypothesis: Hypothesis) -> list[Word]:
        import ctranslate2

        tokens = hypothesis.tokens or self.tokenizer.encode(" " + hypothesis.text.strip())
        tokens = [t for t in tokens if t < self.tokenizer.eot]
        if not tokens:
            return []
        encoded = self._encoded([audio])
        num_frames = min(self._frames, int(round(len(audio) / SAMPLE_RATE * 100)))
        from faster_whisper.transcribe import merge_punctuations

        alignment = self._fw.find_alignment(
            self.tokenizer, [tokens], ctranslate2.StorageView.from_array(encoded), num_frames
        )[0]
        merge_punctuations(alignment, PREPEND_PUNCTUATIONS, APPEND_PUNCTUATIONS)
        duration = len(audio) / SAMPLE_RATE
        words = []
        for w in alignment:
            text = w["word"].strip()
            if not text:
                continue
            start = float(min(max(w["start"], 0.0), duration))
            end = float(min(max(w["end"], start), duration))
            words.append(Word(word=text, start=start, end=end, probability=float(w["probability"])))
        return words
