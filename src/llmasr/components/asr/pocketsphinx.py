"""PocketSphinx first pass: a small CPU-only recogniser that gives real N-best lists and forced alignment.

Facts about the pocketsphinx 5 Python API this relies on (checked against 5.1.1):

* `Decoder.nbest()` walks the lattice with A*; each entry's `score` is `logmath_exp` of the integer path
  score (base 1.0001), so `math.log(score)` is already the natural-log score. The path score is the lattice
  acoustic score *plus* the language-model score scaled by the language weight (and insertion penalties),
  and acoustic scores are normalised by the best senone of each frame, so it is only comparable between
  hypotheses of the same audio. Entries come out roughly, not strictly, best first, repeat texts that differ
  only in pronunciation variants or fillers, may be `None`, and `nbest()` itself is `None` without a lattice.
* `Decoder.hyp()` (best path) is not always one of the N-best texts; its `score` is on another scale.
* `Decoder.seg()` gives word, start_frame, end_frame (inclusive) at 100 frames/s; `None` without a result.
* `Decoder.set_align_text(text)` switches to the `_align` search (raises RuntimeError for words missing from
  the dictionary); decoding then makes `seg()` the forced alignment; `activate_search()` restores the LM.
* `process_raw(b"")` raises IndexError, so empty audio is never passed to it.
* The front end keeps noise / cepstral-mean estimates across utterances (even with `cmn="batch"`, and the
  `remove_noise` keyword is overridden), so scores depend on what was decoded before; `reinit_feat()` before
  each utterance makes every call deterministic.
"""

from __future__ import annotations

import math
import os
import re
import sys
import threading
from collections.abc import Sequence

import numpy as np

from llmasr.core.audio import SAMPLE_RATE
from llmasr.core.errors import ModelError
from llmasr.core.types import Hypothesis, Word

FRAME_RATE = 100  # pocketsphinx frames per second

#: natural log of the smallest positive double: the score given when `logmath_exp` underflowed to 0.0
MIN_LN_SCORE = math.log(sys.float_info.min * sys.float_info.epsilon)

_VARIANT = re.compile(r"\(\d+\)$")
_STRIP = re.compile(r"[^a-z0-9']+")


def _is_filler(word: str) -> bool:
    return word.startswith("<") or word.startswith("[") or word.startswith("++")


def clean_words(hypstr: str) -> list[str]:
    """Words of a pocketsphinx result without fillers (<sil>, [NOISE], <s>) and variant markers ("(2)")."""
    return [_VARIANT.sub("", w).lower() for w in hypstr.split() if not _is_filler(w)]


def _normalise(token: str) -> str:
    return _STRIP.sub("", token.lower()).strip("'")


def to_pcm16(audio: np.ndarray) -> bytes:
    """Float audio in [-1, 1] to the 16-bit little-endian PCM pocketsphinx reads."""
    x = np.asarray(audio, dtype=np.float32)
    if x.ndim != 1:
        if x.ndim == 2 and 1 in x.shape:
            x = x.reshape(-1)
        else:
            raise ValueError(f"expected mono audio (1-D array), got shape {x.shape}")
    return (np.clip(x, -1.0, 1.0) * 32767.0).astype("<i2").tobytes()


def uniform_words(tokens: Sequence[str], duration: float) -> list[Word]:
    """Fallback timings: the words spread evenly over the segment, when forced alignment is impossible."""
    if not tokens:
        return []
    step = max(duration, 0.0) / len(tokens)
    return [Word(tok, round(i * step, 3), round((i + 1) * step, 3)) for i, tok in enumerate(tokens)]


class PocketsphinxRecognizer:
    """Recognizer over pocketsphinx's en-us models; one Decoder reused (and locked) for every call.

    `nbest` returns, per segment, up to n distinct lowercase texts sorted by `am_score` (natural log of the
    A* path score, which includes the weighted LM score; see module docstring), best first. Audio with
    no recognised words (empty, silence, noise) gives an empty list. Only the hypothesis equal to the
    decoder's best path carries word timings; the others have `words=[]` (use `align`). `prompt` is ignored:
    pocketsphinx cannot be prompted.
    """

    accepts_prompt = False
    max_nbest = 32

    name = "pocketsphinx-en-us"
    window = 60.0

    def __init__(
        self,
        model_dir: str | None = None,
        lm: str | None = None,
        dict: str | None = None,  # same keyword as pocketsphinx
        beam: float = 1e-48,
        wbeam: float = 7e-29,
        pbeam: float = 1e-48,
        lw: float = 6.5,
        max_candidates: int = 100,
    ) -> None:
        import pocketsphinx

        base = pocketsphinx.get_model_path()
        self.hmm = model_dir or os.path.join(base, "en-us", "en-us")
        self.lm_path = lm or os.path.join(base, "en-us", "en-us.lm.bin")
        self.dict_path = dict or os.path.join(base, "en-us", "cmudict-en-us.dict")
        for what, path in (("acoustic model", self.hmm), ("language model", self.lm_path)):
            if not os.path.exists(path):
                raise ModelError(f"pocketsphinx {what} not found: {path}")
        if not os.path.exists(self.dict_path):
            raise ModelError(f"pocketsphinx dictionary not found: {self.dict_path}")
        #: raw N-best entries read per segment before de-duplication (A* repeats texts a lot)
        self.max_candidates = max_candidates
        try:
            self._decoder = pocketsphinx.Decoder(
                hmm=self.hmm,
                lm=self.lm_path,
                dict=self.dict_path,
                samprate=SAMPLE_RATE,
                beam=beam,
                wbeam=wbeam,
                pbeam=pbeam,
                lw=lw,
                loglevel="FATAL",
            )
        except (ValueError, RuntimeError) as exc:
            raise ModelError(f"cannot load pocketsphinx models ({self.hmm}): {exc}") from exc
        self._lock = threading.Lock()

    def _decode(self, pcm: bytes) -> None:
        dec = self._decoder
        # Noise and cepstral-mean estimates otherwise carry over from the previous utterance, which makes
        # results depend on call order; resetting the front end costs ~25 us.
        dec.reinit_feat()
        dec.start_utt()
        try:
            dec.process_raw(pcm, full_utt=True)
        finally:
            dec.end_utt()

    def _nbest_one(self, audio: np.ndarray, n: int) -> list[Hypothesis]:
        pcm = to_pcm16(audio)
        if not pcm:
            return []
        dec = self._decoder
        self._decode(pcm)
        best = dec.hyp()
        if best is None:
            return []
        best_text = " ".join(clean_words(best.hypstr))
        scores: dict[str, float] = {}
        nb = dec.nbest()
        if nb is not None:
            for i, entry in enumerate(nb):
                if i >= max(self.max_candidates, n):
                    break
                if entry is None:
                    continue
                text = " ".join(clean_words(entry.hypstr))
                if not text:
                    continue
                ln = math.log(entry.score) if entry.score > 0 else MIN_LN_SCORE
                if ln > scores.get(text, -math.inf):
                    scores[text] = ln
        if not scores and best_text:
            # No lattice: the best path alone, on its own (different) score scale.
            scores[best_text] = math.log(best.score) if best.score > 0 else MIN_LN_SCORE
        ranked = sorted(scores.items(), key=lambda kv: -kv[1])[:n]
        words = self._best_words() if best_text in dict(ranked) else []
        return [
            Hypothesis(text=text, am_score=score, words=list(words) if text == best_text else [])
            for text, score in ranked
        ]

    def _best_words(self) -> list[Word]:
        segs = self._decoder.seg()
        if segs is None:
            return []
        out = []
        for s in segs:
            if _is_filler(s.word):
                continue
            out.append(
                Word(
                    _VARIANT.sub("", s.word).lower(),
                    s.start_frame / FRAME_RATE,
                    (s.end_frame + 1) / FRAME_RATE,
                    probability=float(s.prob),
                )
            )
        return out

    def nbest(
        self, segments: Sequence[np.ndarray], n: int, prompt: str | None = None
    ) -> list[list[Hypothesis]]:
        """Up to n distinct hypotheses per segment, best first; [] for a segment with no words."""
        if n < 1:
            raise ValueError(f"n must be at least 1, got {n}")
        with self._lock:
            return [self._nbest_one(seg, n) for seg in segments]

    def align(self, audio: np.ndarray, hypothesis: Hypothesis) -> list[Word]:
        """Forced alignment of the hypothesis' words; uniform spread if a word is not in the dictionary
        or the decoder finds no path. `Word.word` keeps the hypothesis' own spelling."""
        pcm = to_pcm16(audio)
        duration = len(pcm) / 2 / SAMPLE_RATE
        # Display tokens; a token with nothing pronounceable (e.g. "-") is glued to its neighbour.
        tokens: list[str] = []
        norms: list[str] = []
        pending = ""
        for tok in hypothesis.text.split():
            norm = _normalise(tok)
            if not norm:
                if tokens:
                    tokens[-1] += " " + tok
                else:
                    pending = (pending + " " + tok).strip()
                continue
            tokens.append((pending + " " + tok).strip())
            norms.append(norm)
            pending = ""
        if not tokens:
            return []
        with self._lock:
            words = self._force_align(pcm, norms, duration)
        if words is None:
            return uniform_words(tokens, duration)
        return [Word(tok, w.start, w.end) for tok, w in zip(tokens, words, strict=True)]

    def _force_align(self, pcm: bytes, norms: list[str], duration: float) -> list[Word] | None:
        dec = self._decoder
        if not pcm or any(dec.lookup_word(w) is None for w in norms):
            return None
        try:
            dec.set_align_text(" ".join(norms))
            self._decode(pcm)
            segs = dec.seg()
            if segs is None:
                return None
            found = [s for s in segs if not _is_filler(s.word)]
        except RuntimeError:
            return None
        finally:
            dec.activate_search()
        if len(found) != len(norms):
            return None
        out = []
        for s in found:
            start = min(s.start_frame / FRAME_RATE, duration)
            end = min((s.end_frame + 1) / FRAME_RATE, duration)
            out.append(Word(_VARIANT.sub("", s.word), start, end))
        return out
