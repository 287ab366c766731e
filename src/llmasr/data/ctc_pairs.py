"""Training pairs for a CTC + LM correction decoder: (what a CTC recogniser writes, the reference).

Two sources, in the N-best JSONL format the corrector trainer reads (one hypothesis per record):
- speech: the CTC head's greedy output on cached encoder states of transcribed speech;
- text only: sentences of a text corpus, normalised (lowercase, no punctuation, numbers spelled) and
  given character slips like a CTC recogniser's (letters swapped for similar ones, dropped, doubled,
  word boundaries lost or added), so that text without audio also trains the decoder (the point of
  Ling et al. 2023's text-only path).
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Iterator
from pathlib import Path

from llmasr.core.metrics import normalize

#: letters a character CTC head confuses (similar sounds or spellings)
SIMILAR = {
    "a": "eo",
    "e": "ai",
    "i": "ey",
    "o": "au",
    "u": "o",
    "y": "i",
    "c": "ks",
    "k": "c",
    "s": "cz",
    "z": "s",
    "t": "d",
    "d": "t",
    "p": "b",
    "b": "p",
    "m": "n",
    "n": "m",
    "f": "v",
    "v": "f",
    "g": "k",
}


def ctc_like(text: str, rate: float, rng: random.Random) -> str:
    """The normalised text with about `rate` character slips per character."""
    out: list[str] = []
    for ch in normalize(text):
        r = rng.random()
        if r >= rate:
            out.append(ch)
            continue
        kind = rng.random()
        if ch == " ":
            if kind < 0.6:
                continue  # two words run together
            out.append(ch)
        elif kind < 0.45 and ch in SIMILAR:
            out.append(rng.choice(SIMILAR[ch]))
        elif kind < 0.75:
            continue  # dropped
        elif kind < 0.9:
            out.append(ch + ch)  # doubled
        else:
            out.append(ch + " ")  # a word split
    return " ".join("".join(out).split())


def _record(rid: str, reference: str, hypothesis: str) -> str:
    return json.dumps({"id": rid, "reference": reference, "nbest": [{"text": hypothesis, "am_score": 0.0}]})


def text_pairs(sentences: Iterable[tuple[str, str]], rate: float, seed: int = 0) -> Iterator[str]:
    """JSONL records (id, reference, one noised hypothesis) from (id, sentence) pairs."""
    rng = random.Random(seed)
    for rid, sentence in sentences:
        noisy = ctc_like(sentence, rate, rng)
        if noisy:
            yield _record(f"text-{rid}", sentence, noisy)


def speech_pairs(states_folder: str | Path, recognizer_folder: str | Path) -> Iterator[str]:
    """JSONL records of the CTC head's real greedy output on cached states (same encoder)."""
    import numpy as np
    import torch

    from llmasr.components.asr.ctc import greedy_ctc
    from llmasr.components.entities.retriever import SpeechEntityRetriever
    from llmasr.components.speech.adapters import CHAR_VOCAB
    from llmasr.data.states import read_states

    model = SpeechEntityRetriever.load(recognizer_folder)
    head = model.compressor.ctc_head.eval()
    with torch.no_grad():
        for u in read_states(states_folder):
            logits = head(torch.from_numpy(np.asarray(u.states, dtype=np.float32)))
            text, _ = greedy_ctc(logits, len(logits), CHAR_VOCAB, model.config.blank)
            if text:
                yield _record(f"speech-{u.id}", u.text, text)
