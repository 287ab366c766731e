"""A trained speech-LLM (encoder -> adapter -> LLM) as a first-pass recogniser, like any other.

It gives N-best lists by beam search with each hypothesis's total log-probability (so it can be rescored
by another LM and corrected like Whisper's lists), and word timings from its token CTC head's alignment
(the head says at which frame each token was emitted; the LLM's words are matched to the head's words).
A model without a head gives no word timings (writers then share a segment's time over its text).

A checkpoint is a folder with `model.safetensors` + `recipe.yaml` (what `llmasr train` exports, or a model
shipped in `llmasr/assets/adapters/<name>/`), or a run folder (its `export/`, else its newest checkpoint).
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from llmasr.core.audio import SAMPLE_RATE
from llmasr.core.errors import ModelError
from llmasr.core.metrics import normalize
from llmasr.core.text import NO_REPEAT_NGRAM, is_decoder_loop, max_spoken_words
from llmasr.core.types import Hypothesis, Word

WEIGHTS = "model.safetensors"
RECIPE = "recipe.yaml"
#: LLM tokens per spoken word allowed (smollm2 spends ~1.3 on English text with punctuation)
TOKENS_PER_WORD = 2.0
#: weights of a training checkpoint (llmasr.train.loop), with the run's recipe.yaml one folder up
CHECKPOINT_WEIGHTS = "weights.safetensors"


def find_checkpoint(path: str | Path) -> tuple[Path, Path]:
    """(weights file, recipe file) of an export folder, a run folder (its export, else its newest
    checkpoint) or a checkpoint folder. Raises ModelError when `path` holds none."""
    p = Path(path).expanduser()
    if (p / WEIGHTS).is_file() and (p / RECIPE).is_file():
        return p / WEIGHTS, p / RECIPE
    if (p / "export" / WEIGHTS).is_file():
        return p / "export" / WEIGHTS, p / "export" / RECIPE
    steps = sorted(p.glob("checkpoints/step-*/" + CHECKPOINT_WEIGHTS)) if p.is_dir() else []
    if steps and (p / RECIPE).is_file():
        return steps[-1], p / RECIPE
    if (p / CHECKPOINT_WEIGHTS).is_file() and (p.parent.parent / RECIPE).is_file():
        return p / CHECKPOINT_WEIGHTS, p.parent.parent / RECIPE
    raise ModelError(f"{p}: no speech-LLM here (expected {WEIGHTS} + {RECIPE}, or a run of `llmasr train`)")


def read_checkpoint_recipe(path: Path) -> tuple[dict[str, Any], Any]:
    """(the whole recipe, its `model` as a SpeechLlmConfig) of a trained speech-LLM's `recipe.yaml`.
    Raises ModelError naming the file when its model section does not parse."""
    import yaml

    from llmasr.components.speech.speechllm import SpeechLlmConfig
    from llmasr.core.records import RecordError, build_record

    recipe = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    try:
        return recipe, build_record(SpeechLlmConfig, recipe.get("model", {}), "model")
    except RecordError as exc:
        raise ModelError(f"{path}: {exc}") from None


def _cut(text: str, words: int) -> str:
    """The first `words` words of a text (a decoder loop cut to what the audio can hold)."""
    parts = text.split()
    return text if len(parts) <= words else " ".join(parts[:words])


def is_speechllm(path: str | Path) -> bool:
    try:
        find_checkpoint(path)
    except ModelError:
        return False
    return True


class SpeechLlmRecognizer:
    """Audio segments (16 kHz float32, at most `window` seconds) -> N-best lists with a speech-LLM."""

    #: longest segment it is given (seconds): at most the encoder's (Whisper's 30 s window)
    window = 30.0

    def __init__(
        self,
        model: Any,
        *,
        name: str,
        accepts_prompt: bool,
        max_new_tokens: int = 128,
        window: float | None = None,
    ) -> None:
        self.model = model.eval()
        self.name = name
        #: longest segment it is given (seconds): at most the encoder's window, and no longer than the
        #: utterances it was trained on (`load`: its recipe's `data.max_duration`), since a speech-LLM
        #: trained on short utterances drops speech from a longer segment (the shipped D3 left out a
        #: sentence of the 25.8 s first segment of the bundled sample, D1 everything after 6.5 s)
        if window is not None and window <= 0:
            raise ModelError(f"{name}: its recipe's data.max_duration ({window}) must be positive")
        self.window = min(self.window, window) if window is not None else self.window
        #: whether its training data had domain prompts (else a prompt would only confuse it)
        self.accepts_prompt = accepts_prompt
        self.max_nbest = 32
        self.max_new_tokens = max_new_tokens

    @classmethod
    def load(
        cls, location: str | Path, *, name: str | None = None, device: str = "cpu"
    ) -> SpeechLlmRecognizer:
        """Rebuild the model its recipe describes (encoder and LLM by name) and load the trained weights."""
        from safetensors.torch import load_file

        from llmasr.components.speech.speechllm import build_speechllm

        weights, recipe_path = find_checkpoint(location)
        recipe, config = read_checkpoint_recipe(recipe_path)
        model = build_speechllm(config, device=device)
        model.load_trainable(load_file(str(weights)), strict=False)
        model.merge_lora()  # a recogniser only decodes
        data = recipe.get("data", {})
        accepts_prompt = bool(data.get("use_prompts", True)) and not data.get("states")
        return cls(
            model,
            name=name or str(location),
            accepts_prompt=accepts_prompt,
            max_new_tokens=config.max_new_tokens,
            window=data.get("max_duration"),
        )

    # ---- the Recognizer protocol ---------------------------------------------------------------

    @torch.no_grad()
    def nbest(
        self, segments: Sequence[np.ndarray], n: int, prompt: str | None = None
    ) -> list[list[Hypothesis]]:
        """Beam search with `n` beams; each hypothesis's `am_score` is its total log-probability.

        Segments are decoded as a batch (beam search: one batch per token limit below); each reads as
        it would alone.
        Loop guard: each segment's generation stops at TOKENS_PER_WORD tokens for each word it can hold
        (`core.text.max_spoken_words`), and its hypotheses are cut to that many words, so a decoder loop
        ("five five" -> "Five years ago, a young man, a young woman, ...") cannot run on to
        `max_new_tokens`. Greedy output that is a decoder loop (`core.text.is_decoder_loop`: it ran to the
        limit its audio sets, or it repeats itself past the words its audio can hold) is decoded again with
        repeated `NO_REPEAT_NGRAM`-grams banned, as Whisper's is (beams always ban them): "eleven
        seventeen fifty one" read "one seventeen fifty one one is one one one ..." before. Reaching
        `max_new_tokens` on a long segment is not a loop by itself (a second decoding stops there too)."""
        if not segments:
            return []
        features, lengths = self._inputs(segments)
        seconds = [len(a) / SAMPLE_RATE for a in segments]
        limits = [max_spoken_words(s) for s in seconds]
        tokens = [min(self.max_new_tokens, int(TOKENS_PER_WORD * w) + 1) for w in limits]
        prompt = prompt if self.accepts_prompt else None
        lists = self.model.generate_nbest(features, lengths, max(1, n), prompt, max_new_tokens=tokens)
        if n <= 1:
            loops = [
                i
                for i, hyps in enumerate(lists)
                if hyps
                and is_decoder_loop(
                    hyps[0][0],
                    seconds[i],
                    len(hyps[0][2]),
                    tokens[i] if tokens[i] < self.max_new_tokens else None,
                )
            ]
            if loops:
                again = self.model.generate_nbest(
                    features[loops],
                    lengths[loops],
                    1,
                    prompt,
                    max_new_tokens=[tokens[i] for i in loops],
                    no_repeat_ngram_size=NO_REPEAT_NGRAM,
                )
                for i, hyps in zip(loops, again):
                    lists[i] = hyps
        return [
            [Hypothesis(text=_cut(t, limit), am_score=s, tokens=ids) for t, s, ids in hyps if t]
            for hyps, limit in zip(lists, limits)
        ]

    def score_texts(self, audio: np.ndarray, texts: Sequence[str], prompt: str | None = None) -> list[float]:
        """Teacher-forced total log-probability (nats) of each text and its end given a 16 kHz mono
        segment (`SpeechLLM.score_texts`): any text's score, so that a speech-LLM can be combined
        with other recognisers (`--asr speechllm-stack-tiny,whisper-tiny.en-ctc`)."""
        features, lengths = self._inputs([audio])
        return self.model.score_texts(features, lengths, texts, prompt if self.accepts_prompt else None)

    @torch.no_grad()
    def align(self, audio: np.ndarray, hypothesis: Hypothesis) -> list[Word]:
        """Word times (seconds from the segment start) from the token CTC head's emissions: the head's
        words are matched to the hypothesis's by their spelling (`match_times`). No head: no timings."""
        head = self.model.head
        words = hypothesis.text.split()
        if head is None or not words:
            return []
        hidden, n_frames = self.model.encoder.encode([np.asarray(audio, dtype=np.float32)])
        logits, head_lengths = head(hidden, torch.tensor(n_frames, device=hidden.device))
        path = head.greedy(logits, head_lengths)[0]
        step = head.frame_seconds(self.model.encoder.frames_per_second)
        spoken = head_words(self.model.tokenizer, path, step)
        duration = len(audio) / SAMPLE_RATE
        return match_times(words, spoken, duration)

    # ---- helpers -------------------------------------------------------------------------------

    def _inputs(self, segments: Sequence[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        pieces = [np.asarray(a, dtype=np.float32) for a in segments]
        features = self.model.encoder.features(pieces)
        return features, torch.tensor([len(a) for a in pieces], dtype=torch.long)


def head_words(
    tokenizer: Any, path: Sequence[tuple[int, int, float]], step: float
) -> list[tuple[str, float, float]]:
    """(normalised word, start, end) from a head's emitted (token, frame, log-probability): a token whose
    text starts with a space starts a word; a word ends where the next one starts (or one frame on)."""
    words: list[list[Any]] = []
    for token, frame, _ in path:
        piece = tokenizer.decode([token])
        if not words or piece.startswith(" "):
            words.append([piece.strip(), frame * step, (frame + 1) * step])
        else:
            words[-1][0] += piece
            words[-1][2] = (frame + 1) * step
    for i in range(len(words) - 1):
        words[i][2] = max(words[i][2], min(words[i + 1][1], words[i][2] + 0.5))
    return [(normalize(w), s, e) for w, s, e in words if normalize(w)]


#: the longest a word is taken to last (seconds) where no word of the head's times it
MAX_WORD_SECONDS = 1.5


def _pair_by_spelling(words: Sequence[str], heard: Sequence[str]) -> list[int]:
    """For len(words) <= len(heard): the index in `heard` of each word, in order (a monotonic pairing),
    that maximises the summed character similarity (difflib ratio) of the pairs."""
    a, b = len(words), len(heard)
    sim = [[difflib.SequenceMatcher(a=w, b=h, autojunk=False).ratio() for h in heard] for w in words]
    best = [[0.0] * (b + 1) for _ in range(a + 1)]
    for i in range(1, a + 1):
        best[i][i - 1] = float("-inf")
        for j in range(i, b + 1):
            best[i][j] = max(best[i][j - 1], best[i - 1][j - 1] + sim[i - 1][j - 1])
    pairs, j = [], b
    for i in range(a, 0, -1):
        while j > i and best[i][j] == best[i][j - 1]:
            j -= 1
        pairs.append(j - 1)
        j -= 1
    return pairs[::-1]


def match_times(
    words: Sequence[str], spoken: Sequence[tuple[str, float, float]], duration: float
) -> list[Word]:
    """Times for `words` (as written) from the head's timed words, matched on normalised spelling
    (difflib's opcodes): a matched word takes its head word's time; in a run the head spelled otherwise,
    each word takes the time of the head word opposite it that it most resembles (or, with fewer head
    words than words, an even share of their span); a run opposite no head word is laid out word after
    word from its left neighbour (from its right one when it opens the segment). A word not matched
    lasts at most MAX_WORD_SECONDS, so a model that left out speech does not stretch its words over it
    (the shipped D3 timed "them," from 7.0 s to 22.5 s over a sentence it had dropped)."""
    keys = [normalize(w) for w in words]
    times: list[tuple[float, float] | None] = [None] * len(words)
    matcher = difflib.SequenceMatcher(a=keys, b=[w for w, _, _ in spoken], autojunk=False)
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag == "equal":
            for k in range(i2 - i1):
                times[i1 + k] = spoken[j1 + k][1:]
        elif tag == "replace" and i2 - i1 <= j2 - j1:
            heard = [w for w, _, _ in spoken[j1:j2]]
            for k, j in enumerate(_pair_by_spelling(keys[i1:i2], heard)):
                times[i1 + k] = spoken[j1 + j][1:]
        elif tag == "replace":
            s0, e0 = spoken[j1][1], spoken[j2 - 1][2]
            width = min(MAX_WORD_SECONDS, (e0 - s0) / (i2 - i1))
            for k in range(i2 - i1):
                times[i1 + k] = (s0 + k * width, s0 + (k + 1) * width)
    i = 0
    while i < len(words):  # a run opposite no head word
        if times[i] is not None:
            i += 1
            continue
        j = i
        while j < len(words) and times[j] is None:
            j += 1
        after = times[j][0] if j < len(words) else duration
        if i > 0:
            before = times[i - 1][1]
        elif j < len(words):  # the run opens the segment: laid out back from its right neighbour
            before = max(0.0, after - (j - i) * MAX_WORD_SECONDS)
        else:  # no word was timed
            before = 0.0
        width = min(MAX_WORD_SECONDS, max(0.0, after - before) / (j - i))
        for k in range(i, j):
            times[k] = (before + (k - i) * width, before + (k - i + 1) * width)
        i = j
    out = []
    for w, t in zip(words, times):
        s, e = t if t is not None else (0.0, 0.0)
        out.append(Word(w, round(min(s, duration), 3), round(min(max(e, s), duration), 3)))
    return out
